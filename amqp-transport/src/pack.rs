//! Packs: several messages of one queue carried by one AMQP message.
//!
//! - **Mailbox packs.** Under a fan-in, many children of one parent finish at about the
//!   same time on one worker, and each wrote its result to the parent's mailbox as a
//!   message of its own: a publish and a confirm each, and a `basic.get` and an ack each
//!   to drain. A process now writes the messages that reach one mailbox while an earlier
//!   write to it is on its way as one **pack** (`publish.rs`, `Shared::ring`), and a drain
//!   hands the parts out one by one, each with a settle of its own (`parts.rs`).
//! - **Task packs.** The task messages a process publishes to one task queue at about
//!   the same time (a fan-out's child starts in one batch; the hand-offs of many chains
//!   while an earlier round of the queue is on its way) travel in packs of up to
//!   [`AmqpConfig::with_task_packs`](crate::AmqpConfig::with_task_packs) messages
//!   (`publish.rs`, `Shared::task_round`, [`plan`]), and the consumer hands each part to
//!   the worker as a delivery of its own (`parts.rs`). A pack delivered again (its consumer died or
//!   put it back) is split into single messages first, so that a part that fails
//!   again and again counts its own redeliveries.
//!
//! The core never sees a pack. The body of a pack is framed like an envelope whose
//! revision no build before packs reads (`DT`, [`PACK_REVISION`], then `P` for a mailbox
//! pack, `T` for a task pack): an older worker that takes a pack takes it for a message
//! of a newer build and hands it back, as the envelope rules say, instead of failing its
//! instance. The parts follow as MessagePack, each with its message id, its trace context
//! and its body (an envelope of its own, as the core wrote it); a task part also names
//! its instance. The header [`H_PACK`] holds the number of parts.

use serde::{Deserialize, Serialize};

/// Header of a pack: how many messages it carries.
pub(crate) const H_PACK: &str = "x-dtasks-pack";

/// The revision byte of a pack's frame: newer than every revision a build without packs
/// reads (those read up to 2).
pub(crate) const PACK_REVISION: u8 = 3;

/// The frame of a mailbox pack's body.
const FRAME: [u8; 4] = [b'D', b'T', PACK_REVISION, b'P'];

/// The frame of a task pack's body.
const TASK_FRAME: [u8; 4] = [b'D', b'T', PACK_REVISION, b'T'];

/// The most body bytes one pack carries; a message past it goes alone.
pub(crate) const MAX_PACK_BYTES: usize = 256 * 1024;

/// One message of a pack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Part {
    /// The message id the core gave it.
    pub(crate) id: String,
    /// The W3C `traceparent` it was sent with; empty without one.
    pub(crate) traceparent: String,
    /// The `tracestate` that goes with it.
    pub(crate) tracestate: String,
    /// The message's body, an envelope.
    #[serde(with = "serde_bytes")]
    pub(crate) body: Vec<u8>,
}

/// The `traceparent` and `tracestate` a part keeps of `trace` (empty without one).
pub(crate) fn trace_fields(trace: Option<&dtasks::trace::TraceContext>) -> (String, String) {
    match trace {
        Some(t) => (
            t.traceparent().to_string(),
            t.tracestate().unwrap_or_default().to_string(),
        ),
        None => (String::new(), String::new()),
    }
}

/// One message of a task pack: the starts or resumes of several instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskPart {
    /// The message id the core gave it.
    pub(crate) id: String,
    /// The instance it is about.
    pub(crate) instance: String,
    /// The W3C `traceparent` it was sent with; empty without one.
    pub(crate) traceparent: String,
    /// The `tracestate` that goes with it.
    pub(crate) tracestate: String,
    /// The message's body, an envelope.
    #[serde(with = "serde_bytes")]
    pub(crate) body: Vec<u8>,
}

/// The body of a task pack of `parts`.
pub(crate) fn encode_tasks(parts: &[TaskPart]) -> Vec<u8> {
    framed(TASK_FRAME, parts)
}

/// The parts of a task pack's body; `None` when `body` is not one.
pub(crate) fn decode_tasks(body: &[u8]) -> Option<Vec<TaskPart>> {
    unframed(TASK_FRAME, body)
}

/// `parts` as MessagePack after `frame`.
fn framed<T: Serialize>(frame: [u8; 4], parts: &[T]) -> Vec<u8> {
    let mut out = frame.to_vec();
    // Writing plain data to a vector does not fail.
    rmp_serde::encode::write(&mut out, parts).expect("a pack encodes");
    out
}

/// The parts of `body` when it starts with `frame`.
fn unframed<T: serde::de::DeserializeOwned>(frame: [u8; 4], body: &[u8]) -> Option<Vec<T>> {
    rmp_serde::from_slice(body.strip_prefix(&frame[..])?).ok()
}

/// Which messages of a batch go together: `keys[i]` is the queue message `i` may be
/// packed for (`None`: it goes alone) and its body's size. Returns groups of indexes, in
/// the order of their first message: a message joins the open group of its queue while
/// that has fewer than `max_parts` messages and `max_bytes` of bodies with it (a message
/// past `max_bytes` alone opens a group of its own); otherwise it opens the next. A group
/// of one is a message sent as it is.
pub(crate) fn plan(
    keys: &[(Option<&str>, usize)],
    max_parts: usize,
    max_bytes: usize,
) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Vec<usize>, usize)> = Vec::new();
    // The open group of each queue: its index in `groups`.
    let mut open: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, (queue, len)) in keys.iter().enumerate() {
        let Some(queue) = queue.filter(|_| max_parts > 1) else {
            groups.push((vec![i], *len));
            continue;
        };
        if let Some(&g) = open.get(queue) {
            let (members, bytes) = &mut groups[g];
            if members.len() < max_parts && *bytes + len <= max_bytes {
                members.push(i);
                *bytes += len;
                continue;
            }
        }
        open.insert(queue, groups.len());
        groups.push((vec![i], *len));
    }
    groups.into_iter().map(|(members, _)| members).collect()
}

/// The body of a pack of `parts`.
pub(crate) fn encode(parts: &[Part]) -> Vec<u8> {
    framed(FRAME, parts)
}

/// The parts of a pack's body; `None` when `body` is not one.
pub(crate) fn decode(body: &[u8]) -> Option<Vec<Part>> {
    unframed(FRAME, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(i: usize) -> Part {
        Part {
            id: format!("i:e{i}"),
            traceparent: if i % 2 == 0 {
                format!("00-{i:032x}-{i:016x}-01")
            } else {
                String::new()
            },
            tracestate: String::new(),
            body: vec![b'D', b'T', 2, 1, i as u8],
        }
    }

    #[test]
    fn a_pack_gives_back_its_parts_in_order() {
        let parts: Vec<Part> = (0..5).map(part).collect();
        let body = encode(&parts);
        assert_eq!(decode(&body), Some(parts));
    }

    #[test]
    fn a_pack_reads_as_a_newer_envelope_to_a_build_without_packs() {
        let body = encode(&[part(1)]);
        // What every build reads first: the magic, then a revision it does not know yet.
        assert_eq!(&body[..2], b"DT");
        assert!(body[2] > 2);
    }

    fn task_part(i: usize) -> TaskPart {
        TaskPart {
            id: format!("c{i}:s"),
            instance: format!("root.{i}"),
            traceparent: String::new(),
            tracestate: String::new(),
            body: vec![b'D', b'T', 2, 0, i as u8],
        }
    }

    #[test]
    fn a_task_pack_gives_back_its_parts_and_is_not_a_mailbox_pack() {
        let parts: Vec<TaskPart> = (0..4).map(task_part).collect();
        let body = encode_tasks(&parts);
        assert_eq!(decode_tasks(&body), Some(parts));
        assert_eq!(decode(&body), None);
        assert_eq!(decode_tasks(&encode(&[part(1)])), None);
        assert_eq!(&body[..2], b"DT");
        assert!(body[2] > 2);
    }

    #[test]
    fn a_plan_packs_by_queue_in_order_within_the_limits() {
        let keys = [
            (Some("a"), 10),
            (None, 10),
            (Some("b"), 10),
            (Some("a"), 10),
            (Some("a"), 10),
            (Some("b"), 10),
            (Some("a"), 10),
        ];
        // At most 3 parts: the fourth message for `a` opens a group of its own.
        assert_eq!(
            plan(&keys, 3, 1000),
            vec![vec![0, 3, 4], vec![1], vec![2, 5], vec![6]]
        );
        // Packs off: every message alone, in order.
        assert_eq!(
            plan(&keys, 1, 1000),
            (0..keys.len()).map(|i| vec![i]).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_plan_keeps_packs_under_the_byte_limit() {
        let keys = [
            (Some("a"), 600),
            (Some("a"), 600),
            (Some("a"), 2000),
            (Some("a"), 100),
            (Some("a"), 100),
        ];
        // 1200 bytes fit in 1500, a third does not; a message past the limit goes alone
        // and the next ones start a pack after it.
        assert_eq!(plan(&keys, 16, 1500), vec![vec![0, 1], vec![2], vec![3, 4]]);
    }

    #[test]
    fn what_is_not_a_pack_is_refused() {
        assert_eq!(decode(b"DT\x02\x01\xc0"), None);
        assert_eq!(decode(b""), None);
        let mut cut = encode(&[part(1), part(2)]);
        cut.truncate(cut.len() - 3);
        assert_eq!(decode(&cut), None);
    }
}
