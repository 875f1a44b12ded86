//! Packs: several mailbox messages of one instance carried by one AMQP message.
//!
//! Under a fan-in, many children of one parent finish at about the same time on one
//! worker, and each wrote its result to the parent's mailbox as a message of its own: a
//! publish and a confirm each, and a `basic.get` and an ack each to drain. A process now
//! writes the messages that reach one mailbox while an earlier write to it is on its way
//! as one **pack** (`publish.rs`, `Shared::ring`), and a drain hands the parts out one by
//! one, each with a settle of its own (`mailbox.rs`). The core never sees a pack.
//!
//! The body of a pack is framed like an envelope whose revision no build before packs
//! reads (`DT`, [`PACK_REVISION`], `P`): an older worker that drains a pack takes it for
//! a message of a newer build and hands it back, as the envelope rules say, instead of
//! failing its instance. The parts follow as MessagePack, each with its message id, its
//! trace context and its body (an envelope of its own, as the core wrote it). The header
//! [`H_PACK`] holds the number of parts.

use serde::{Deserialize, Serialize};

/// Header of a pack: how many messages it carries.
pub(crate) const H_PACK: &str = "x-dtasks-pack";

/// The revision byte of a pack's frame: newer than every revision a build without packs
/// reads (those read up to 2).
pub(crate) const PACK_REVISION: u8 = 3;

/// The frame of a pack's body.
const FRAME: [u8; 4] = [b'D', b'T', PACK_REVISION, b'P'];

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

/// The body of a pack of `parts`.
pub(crate) fn encode(parts: &[Part]) -> Vec<u8> {
    let mut out = FRAME.to_vec();
    // Writing plain data to a vector does not fail.
    rmp_serde::encode::write(&mut out, parts).expect("a pack encodes");
    out
}

/// The parts of a pack's body; `None` when `body` is not one.
pub(crate) fn decode(body: &[u8]) -> Option<Vec<Part>> {
    let rest = body.strip_prefix(&FRAME[..])?;
    rmp_serde::from_slice(rest).ok()
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

    #[test]
    fn what_is_not_a_pack_is_refused() {
        assert_eq!(decode(b"DT\x02\x01\xc0"), None);
        assert_eq!(decode(b""), None);
        let mut cut = encode(&[part(1), part(2)]);
        cut.truncate(cut.len() - 3);
        assert_eq!(decode(&cut), None);
    }
}
