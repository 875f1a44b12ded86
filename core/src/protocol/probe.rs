//! What a build reads of a task message written by a newer build: the fields the envelope
//! rules freeze (see [`ENVELOPE_VERSION`](super::ENVELOPE_VERSION)), enough to fail its
//! instance visibly without understanding the rest.

use super::codec::DECODE_DEPTH;
use super::state::{InstanceId, ReplyTo};

/// The frozen fields of a task message's state.
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) id: InstanceId,
    pub(crate) name: String,
    /// Where its result goes, when that is one of the frozen variants (`Root`, `Client`,
    /// `Mailbox`); `None` for the others (a child whose parent rides in the message, one
    /// nobody waits for, or a variant this build does not know).
    pub(crate) reply: Option<ReplyTo>,
    /// The reply queue of the client that started a root and waits for its result.
    pub(crate) notify: Option<String>,
}

/// The position of `InstanceState::notify` among the state's fields.
const NOTIFY_AT: usize = 20;

/// Reads the frozen fields of the task message `bytes` (a whole envelope), whatever its
/// revision; `None` when it is not a `Step` or its first fields are not what every
/// revision writes there.
pub(crate) fn task(bytes: &[u8]) -> Option<Probe> {
    let mut body = bytes.get(4..)?;
    let value = rmpv::decode::read_value_with_max_depth(&mut body, DECODE_DEPTH).ok()?;
    // An enum variant is written as a map of one entry, the variant's name or index to its
    // fields.
    let (variant, fields) = single(&value)?;
    if !(variant.as_str() == Some("Step") || variant.as_u64() == Some(0)) {
        return None;
    }
    let state = fields.as_array()?.first()?.as_array()?;
    let id = InstanceId::from_message(state.first()?.as_str()?).ok()?;
    let name = state.get(1)?.as_str()?.to_string();
    let reply = state.get(4).and_then(|r| {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, r).ok()?;
        match rmp_serde::from_slice::<ReplyTo>(&buf).ok()? {
            r @ (ReplyTo::Root | ReplyTo::Client { .. } | ReplyTo::Mailbox { .. }) => Some(r),
            ReplyTo::Continuation { .. } | ReplyTo::Detached => None,
        }
    });
    let notify = state
        .get(NOTIFY_AT)
        .and_then(|n| n.as_str())
        .map(str::to_string);
    Some(Probe {
        id,
        name,
        reply,
        notify,
    })
}

fn single(v: &rmpv::Value) -> Option<(&rmpv::Value, &rmpv::Value)> {
    match v.as_map()?.as_slice() {
        [(k, v)] => Some((k, v)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::{as_next_revision, encode, encode_value};
    use crate::protocol::message::TaskMessage;
    use crate::protocol::state::InstanceState;

    fn as_newer(bytes: &[u8]) -> Vec<u8> {
        as_next_revision(bytes).expect("a step message")
    }

    #[test]
    fn the_frozen_fields_of_a_newer_root_are_read() {
        let mut state = InstanceState::new(
            InstanceId::new("root-1").unwrap(),
            "order".into(),
            encode_value(&1u8).unwrap(),
            ReplyTo::Client {
                client: "reply-9".into(),
            },
        );
        state.notify = Some("waiting-client".into());
        let newer = as_newer(&encode(&TaskMessage::Step {
            state: Box::new(state),
            completion: None,
        }));
        let p = task(&newer).expect("the frozen fields");
        assert_eq!(p.id.as_str(), "root-1");
        assert_eq!(p.name, "order");
        assert_eq!(
            p.reply,
            Some(ReplyTo::Client {
                client: "reply-9".into()
            })
        );
        assert_eq!(p.notify.as_deref(), Some("waiting-client"));
    }

    #[test]
    fn the_probe_reads_a_child_whose_parent_keeps_a_mailbox_and_skips_a_riding_one() {
        let parent = InstanceId::new("p").unwrap();
        let mailbox = InstanceState::new(
            InstanceId::from_message("p.1").unwrap(),
            "leaf".into(),
            Vec::new(),
            ReplyTo::Mailbox {
                parent: parent.clone(),
                parent_name: "fan".into(),
                seq: 1,
            },
        );
        let bytes = as_newer(&encode(&TaskMessage::Step {
            state: Box::new(mailbox.clone()),
            completion: None,
        }));
        let p = task(&bytes).unwrap();
        assert_eq!(p.reply, Some(mailbox.reply.clone()));
        let riding = InstanceState::new(
            InstanceId::from_message("p.2").unwrap(),
            "leaf".into(),
            Vec::new(),
            ReplyTo::Continuation {
                parent: Box::new(InstanceState::new(
                    parent,
                    "fan".into(),
                    Vec::new(),
                    ReplyTo::Root,
                )),
                seq: 2,
            },
        );
        let bytes = as_newer(&encode(&TaskMessage::Step {
            state: Box::new(riding),
            completion: None,
        }));
        let p = task(&bytes).unwrap();
        assert_eq!(p.id.as_str(), "p.2");
        assert_eq!(p.reply, None);
        assert!(task(b"DT\x09\x01\xc0").is_none());
    }
}
