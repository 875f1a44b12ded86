//! The versioned envelope around every message body.
//!
//! Layout: the magic bytes `DT`, one byte of envelope version, one byte of kind, then the
//! MessagePack body. Decoding checks all three before touching the body and never panics
//! on untrusted bytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::message::{CancelRecord, MailboxItem, ResultRecord, Status, TaskMessage};
use super::payload::{resolve, PayloadRef};
use super::state::{Entry, InstanceId, InstanceState, Outcome, Seq, Signal, Snapshot};
use crate::error::Error;

const MAGIC: &[u8; 2] = b"DT";

/// The envelope revision this build writes, and the newest it reads.
///
/// The rules that let builds of different revisions run side by side (a rolling upgrade):
///
/// - A build reads every revision from [`OLDEST_ENVELOPE_VERSION`] to its own. Its types
///   only ever grow: fields are added at the end of a struct with `#[serde(default)]`,
///   variants at the end of an enum, kinds with new numbers, and nothing is removed,
///   reordered or retyped, so what an older build wrote still decodes.
/// - Every such addition bumps the revision, because an older build cannot read it (its
///   decoder refuses an array with more elements than it knows, and variants it does not
///   know). A message is stamped with the revision that last changed its kind (`stamp`):
///   the kinds a change leaves alone (results, say, when only the state grew) are still
///   read by the build before it. A build that receives a message of a newer revision does not dead-letter it:
///   it hands it back for a newer worker, and fails its instance visibly only when no
///   newer worker took it within its patience
///   ([`WorkerConfig::newer_message_patience`](crate::WorkerConfig::newer_message_patience)).
/// - To fail an instance without reading the rest of a newer message, a build reads a
///   task message's first fields, which never change: the variant `Step` (index 0) and
///   the state's `id`, `name`, `input`, `journal` and `reply` (its first five elements),
///   with the `reply` variants `Root`, `Mailbox` and `Client`, and its `notify` (the 21st:
///   the reply queue of the client waiting for a root).
///
/// Revision 1: the first. Revision 2: continue-as-new (`InstanceState::run`, `Fact::runs`),
/// replay patches (`Command::Patch`), code fingerprints in facts, the failure kinds added
/// with them, and values stored out of band (a reference, a MessagePack ext value, in a
/// value field).
#[cfg(not(feature = "next-revision"))]
pub const ENVELOPE_VERSION: u8 = 2;
/// The envelope revision this build writes, and the newest it reads: with the feature
/// `next-revision`, the revision after the current one, with a field added to the state,
/// as the next build that changes the wire format will be (for tests of rolling upgrades
/// only).
#[cfg(feature = "next-revision")]
pub const ENVELOPE_VERSION: u8 = 3;

/// The oldest envelope revision this build reads.
pub const OLDEST_ENVELOPE_VERSION: u8 = 1;

/// The revision of an envelope, `None` when `bytes` are not one.
pub(crate) fn revision(bytes: &[u8]) -> Option<u8> {
    (bytes.len() >= 4 && &bytes[..2] == MAGIC).then(|| bytes[2])
}

/// What an envelope holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Task = 1,
    Mailbox = 2,
    Result = 3,
    Status = 4,
    Cancel = 5,
    Fact = 6,
    Facts = 7,
}

pub(crate) trait Enveloped: Serialize + DeserializeOwned {
    const KIND: Kind;
}

impl Enveloped for TaskMessage {
    const KIND: Kind = Kind::Task;
}
impl Enveloped for MailboxItem {
    const KIND: Kind = Kind::Mailbox;
}
impl Enveloped for ResultRecord {
    const KIND: Kind = Kind::Result;
}
impl Enveloped for Status {
    const KIND: Kind = Kind::Status;
}
impl Enveloped for CancelRecord {
    const KIND: Kind = Kind::Cancel;
}

pub(crate) fn encode<T: Enveloped>(value: &T) -> Vec<u8> {
    encode_as(T::KIND, value)
}

/// Encodes `value`, which must serialize exactly as a value of the kind `kind` does (a
/// borrowed mirror of one of the enveloped types; see [`TaskMessageRef`]).
/// The revision stamped on a message of `kind`: the revision that last changed what a
/// message of that kind holds, so that an older build still reads the kinds a newer one
/// left as they were (a client of the previous build reads the results of a newer
/// worker, unless their form changed).
const fn stamp(kind: Kind) -> u8 {
    match kind {
        #[cfg(feature = "next-revision")]
        Kind::Task | Kind::Mailbox => 3,
        _ => 2,
    }
}

pub(crate) fn encode_as<T: Serialize + ?Sized>(kind: Kind, value: &T) -> Vec<u8> {
    with_scratch(|buf| {
        buf.extend_from_slice(MAGIC);
        buf.push(stamp(kind));
        buf.push(kind as u8);
        // Writing our own types into a Vec cannot fail: every field is a plain serde type.
        rmp_serde::encode::write(buf, value).expect("encoding to a Vec cannot fail");
        buf.to_vec()
    })
}

/// Runs `f` with an empty buffer kept per thread, so that encoding grows one buffer once
/// instead of a fresh `Vec` for every message; the result is copied out at its exact size.
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// A larger buffer is not kept (one huge message should not pin its memory).
    const KEEP: usize = 64 * 1024;
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let r = f(&mut buf);
            if buf.capacity() > KEEP {
                *buf = Vec::new();
            }
            r
        }
        // Re-entered (a user `Serialize` that encodes a DTask call): a buffer of its own.
        Err(_) => f(&mut Vec::new()),
    })
}

/// A borrowed mirror of [`TaskMessage::Step`] that serializes to the same bytes, to encode
/// a step message of a state without cloning the state. `S` is [`InstanceState`] or its
/// mirror [`ChildStateRef`].
#[derive(Serialize)]
pub(crate) enum TaskMessageRef<'a, S = InstanceState> {
    Step {
        state: &'a S,
        completion: Option<(Seq, &'a Outcome)>,
    },
}

/// A borrowed mirror of [`MailboxItem`] (its first two variants) that serializes to the
/// same bytes.
#[derive(Serialize)]
pub(crate) enum MailboxItemRef<'a> {
    State(&'a InstanceState),
    Event { seq: Seq, outcome: &'a Outcome },
}

/// A borrowed mirror of a new child's [`InstanceState`] whose parent waits for it alone:
/// the parent's state rides in it by reference, so the child's start is encoded (and
/// checked against the state budget) while the parent still owns its state.
#[derive(Serialize)]
pub(crate) struct ChildStateRef<'a> {
    id: &'a InstanceId,
    name: &'a str,
    #[serde(with = "serde_bytes")]
    input: &'a [u8],
    journal: &'a [Entry],
    reply: ContinuationRef<'a>,
    mailbox: bool,
    version: u64,
    recorded: u32,
    finished: bool,
    snapshot: Option<&'a Snapshot>,
    base: Seq,
    touch_at_ms: u64,
    steps: u32,
    inbox: &'a [Signal],
    seen: &'a [String],
    shown_long: bool,
    claim: Option<u64>,
    cancelled: Option<&'a str>,
    cancel_scope: Option<InstanceId>,
    shielded: &'a [Seq],
    notify: Option<&'a str>,
    awaiting: &'a [Seq],
    touch_every_ms: u64,
    reap_at_ms: u64,
    drained: u64,
    records_children: bool,
    run: u32,
    #[cfg(feature = "next-revision")]
    next: Option<&'a str>,
}

/// A borrowed mirror of [`ReplyTo`](super::state::ReplyTo) up to its `Continuation`
/// variant (variant order is the wire format).
#[derive(Serialize)]
enum ContinuationRef<'a> {
    #[allow(dead_code)]
    Root,
    Continuation {
        parent: &'a InstanceState,
        seq: Seq,
    },
}

impl<'a> ChildStateRef<'a> {
    /// The child `id` = `name(input)` of `parent`, issued at `seq`.
    pub(crate) fn new(
        id: &'a InstanceId,
        name: &'a str,
        input: &'a [u8],
        parent: &'a InstanceState,
        seq: Seq,
    ) -> Self {
        Self {
            id,
            name,
            input,
            journal: &[],
            reply: ContinuationRef::Continuation { parent, seq },
            mailbox: false,
            version: 0,
            recorded: 0,
            finished: false,
            snapshot: None,
            base: 0,
            touch_at_ms: 0,
            steps: 0,
            inbox: &[],
            seen: &[],
            shown_long: false,
            claim: None,
            cancelled: None,
            cancel_scope: parent.child_scope(seq),
            shielded: &[],
            notify: None,
            awaiting: &[],
            touch_every_ms: 0,
            reap_at_ms: 0,
            drained: 0,
            records_children: parent.records_children,
            run: 0,
            #[cfg(feature = "next-revision")]
            next: None,
        }
    }
}

impl<S: Serialize> TaskMessageRef<'_, S> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode_as(Kind::Task, self)
    }
}

impl MailboxItemRef<'_> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode_as(Kind::Mailbox, self)
    }
}

pub(crate) fn decode<T: Enveloped>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() < 4 || &bytes[..2] != MAGIC {
        return Err(Error::decode("not a dtasks envelope (bad magic bytes)"));
    }
    if bytes[2] > ENVELOPE_VERSION {
        return Err(Error::newer(bytes[2]));
    }
    if bytes[2] < OLDEST_ENVELOPE_VERSION {
        return Err(Error::decode(format!(
            "unknown envelope version {} (this build reads revisions \
             {OLDEST_ENVELOPE_VERSION} to {ENVELOPE_VERSION})",
            bytes[2]
        )));
    }
    if bytes[3] != T::KIND as u8 {
        return Err(Error::decode(format!(
            "envelope holds kind {} where kind {} was expected",
            bytes[3],
            T::KIND as u8
        )));
    }
    let mut de = rmp_serde::Deserializer::from_read_ref(&bytes[4..]);
    de.set_max_depth(DECODE_DEPTH);
    T::deserialize(&mut de).map_err(|e| Error::decode(e.to_string()))
}

/// The task message `bytes` as the next envelope revision could write it: one more field
/// at the end of the step and of its state (the test utility `as_next_revision`).
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn as_next_revision(bytes: &[u8]) -> Option<Vec<u8>> {
    use rmpv::Value;
    let mut body = bytes.get(4..)?;
    let mut v = rmpv::decode::read_value(&mut body).ok()?;
    let Value::Map(m) = &mut v else { return None };
    let Value::Array(step) = &mut m.first_mut()?.1 else {
        return None;
    };
    let Value::Array(state) = step.first_mut()? else {
        return None;
    };
    state.push(Value::from("a field of the next revision"));
    step.push(Value::from(1));
    let mut out = vec![b'D', b'T', ENVELOPE_VERSION + 1, bytes[3]];
    rmpv::encode::write_value(&mut out, &v).ok()?;
    Some(out)
}

/// The deepest nesting of MessagePack values an envelope may hold. Decoding recurses once
/// per level, so this bounds the stack a message can take (about 1 MiB in a debug build,
/// within the 2 MiB of a tokio worker thread); a message this build writes stays far below
/// it (at most [`MAX_RIDING`](super::state::MAX_RIDING) nested states of a few levels
/// each). Deeper input is a decode error, like any corrupt message, never a stack overflow.
pub(crate) const DECODE_DEPTH: usize = 128;

/// Encodes a user value (arguments, results) as MessagePack.
pub(crate) fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    with_scratch(|buf| {
        rmp_serde::encode::write(buf, value).map_err(|e| e.to_string())?;
        Ok(buf.to_vec())
    })
}

/// Decodes a user value from MessagePack; a reference to a value stored out of band
/// ([`PayloadRef`]) decodes the value the current step read for it.
pub(crate) fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match PayloadRef::decode(bytes) {
        Some(r) => {
            let value = resolve(&r)?;
            rmp_serde::from_slice(&value).map_err(|e| e.to_string())
        }
        None => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::error::{Failure, FailureKind};
    use crate::protocol::state::{Command, ReplyTo, MAX_RIDING};

    fn failure() -> impl Strategy<Value = Failure> {
        (0usize..8, ".{0,40}").prop_map(|(k, m)| {
            let kind = [
                FailureKind::Panic,
                FailureKind::NonDeterminism,
                FailureKind::ChildFailed,
                FailureKind::UnknownDTask,
                FailureKind::BadInput,
                FailureKind::StateTooLarge,
                FailureKind::Stuck,
                FailureKind::Misuse,
            ][k];
            Failure::new(kind, m)
        })
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Outcome::Ok),
            failure().prop_map(Outcome::Failed),
        ]
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            ("[a-z_.]{1,20}", any::<u64>())
                .prop_map(|(name, input_hash)| Command::Child { name, input_hash }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(millis, fire_at_ms)| Command::Delay { millis, fire_at_ms }),
            any::<u64>().prop_map(|at_ms| Command::DelayUntil { at_ms }),
            Just(Command::Yield),
            Just(Command::Run),
        ]
    }

    fn entry() -> impl Strategy<Value = Entry> {
        (command(), proptest::option::of(outcome()), any::<u32>())
            .prop_map(|(cmd, result, order)| Entry { cmd, result, order })
    }

    fn leaf_state() -> impl Strategy<Value = InstanceState> {
        (
            "[a-z0-9.]{1,30}",
            "[a-z_]{1,20}",
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(entry(), 0..12),
            any::<bool>(),
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(".{0,20}"),
            any::<bool>(),
            proptest::collection::vec(any::<u32>(), 0..3),
        )
            .prop_map(
                |(
                    id,
                    name,
                    input,
                    journal,
                    mailbox,
                    version,
                    recorded,
                    finished,
                    claim,
                    cancelled,
                    scoped,
                    shielded,
                )| {
                    let id = InstanceId::new(id).expect("valid id");
                    let mut s = InstanceState::new(id.clone(), name, input, ReplyTo::Root);
                    s.journal = journal;
                    s.mailbox = mailbox;
                    s.version = version;
                    s.recorded = recorded;
                    s.finished = finished;
                    s.claim = claim;
                    s.cancelled = cancelled;
                    s.cancel_scope = scoped.then_some(id);
                    s.shielded = shielded;
                    s
                },
            )
    }

    fn state() -> impl Strategy<Value = InstanceState> {
        leaf_state().prop_recursive(4, 16, 2, |inner| {
            (leaf_state(), inner, any::<u32>(), 0usize..3).prop_map(|(mut s, parent, seq, how)| {
                s.reply = match how {
                    0 => ReplyTo::Continuation {
                        parent: Box::new(parent),
                        seq,
                    },
                    1 => ReplyTo::Mailbox {
                        parent: parent.id.clone(),
                        parent_name: parent.name.clone(),
                        seq,
                    },
                    _ => ReplyTo::Detached,
                };
                s
            })
        })
    }

    proptest! {
        #[test]
        fn any_state_survives_encode_decode(s in state(), seq in any::<u32>(), o in outcome()) {
            let msg = TaskMessage::Step { state: Box::new(s.clone()), completion: Some((seq, o.clone())) };
            prop_assert_eq!(decode::<TaskMessage>(&encode(&msg)).unwrap(), msg);
            let item = MailboxItem::State(Box::new(s));
            prop_assert_eq!(decode::<MailboxItem>(&encode(&item)).unwrap(), item);
            let rec = ResultRecord { outcome: o };
            prop_assert_eq!(decode::<ResultRecord>(&encode(&rec)).unwrap(), rec);
        }

        #[test]
        fn borrowed_mirrors_encode_the_same_bytes(s in state(), seq in any::<u32>(), o in outcome()) {
            let owned = TaskMessage::Step { state: Box::new(s.clone()), completion: Some((seq, o.clone())) };
            let mirror = TaskMessageRef::Step { state: &s, completion: Some((seq, &o)) };
            prop_assert_eq!(mirror.encode(), encode(&owned));
            let owned = TaskMessage::Step { state: Box::new(s.clone()), completion: None };
            let mirror = TaskMessageRef::Step { state: &s, completion: None };
            prop_assert_eq!(mirror.encode(), encode(&owned));
            let owned = MailboxItem::State(Box::new(s.clone()));
            prop_assert_eq!(MailboxItemRef::State(&s).encode(), encode(&owned));
            let owned = MailboxItem::Event { seq, outcome: o.clone() };
            prop_assert_eq!(MailboxItemRef::Event { seq, outcome: &o }.encode(), encode(&owned));
            let child_id = s.id.child(seq);
            let input = vec![seq as u8; (seq % 7) as usize];
            let owned = TaskMessage::Step {
                state: Box::new(s.new_child(
                    seq,
                    "a.child".into(),
                    input.clone(),
                    ReplyTo::Continuation { parent: Box::new(s.clone()), seq },
                )),
                completion: None,
            };
            let child = ChildStateRef::new(&child_id, "a.child", &input, &s, seq);
            let mirror = TaskMessageRef::Step { state: &child, completion: None };
            prop_assert_eq!(mirror.encode(), encode(&owned));
        }

        #[test]
        fn user_values_encode_as_rmp_serde_does(v in proptest::collection::vec(any::<u8>(), 0..300), n in any::<u64>(), t in ".{0,40}") {
            let args = (n, serde_bytes::ByteBuf::from(v), t);
            prop_assert_eq!(encode_value(&args).unwrap(), rmp_serde::to_vec(&args).unwrap());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<TaskMessage>(&bytes);
            let _ = decode::<MailboxItem>(&bytes);
            let mut framed = vec![b'D', b'T', ENVELOPE_VERSION, Kind::Task as u8];
            framed.extend_from_slice(&bytes);
            let _ = decode::<TaskMessage>(&framed);
        }

        #[test]
        fn truncated_or_corrupted_states_give_errors_not_panics(s in state(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()) {
            let msg = TaskMessage::Step { state: Box::new(s), completion: None };
            let bytes = encode(&msg);
            let n = cut.index(bytes.len());
            let _ = decode::<TaskMessage>(&bytes[..n]);
            let mut corrupt = bytes.clone();
            let i = flip.index(corrupt.len());
            corrupt[i] ^= 0xff;
            let _ = decode::<TaskMessage>(&corrupt);
        }
    }

    #[test]
    fn envelope_checks_come_first() {
        assert!(decode::<TaskMessage>(b"")
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let e = decode::<TaskMessage>(&[b'D', b'T', 7, 1, 0xc0]).unwrap_err();
        assert!(e.is_newer() && e.to_string().contains("revision 7"), "{e}");
        let e = decode::<TaskMessage>(&[b'D', b'T', ENVELOPE_VERSION, 3, 0xc0]).unwrap_err();
        assert!(e.to_string().contains("kind 3"), "{e}");
    }

    #[test]
    fn a_state_written_before_the_claim_field_decodes_without_a_claim() {
        let s = InstanceState::new(
            InstanceId::new("older").expect("valid id"),
            "a.name".into(),
            vec![0x90],
            ReplyTo::Root,
        );
        // The fields of a state as written before `claim` was added, in their order.
        let older = (
            &s.id,
            &s.name,
            serde_bytes::Bytes::new(&s.input),
            &s.journal,
            &s.reply,
            s.mailbox,
            s.version,
            s.recorded,
            s.finished,
            &s.snapshot,
            s.base,
            s.touch_at_ms,
            s.steps,
        );
        let msg = TaskMessageRef::Step {
            state: &older,
            completion: None,
        };
        let decoded = decode::<TaskMessage>(&msg.encode()).expect("decodes");
        let TaskMessage::Step { state, .. } = decoded else {
            panic!("a step")
        };
        assert_eq!(state.claim, None);
        assert_eq!(*state, s);
    }

    #[test]
    fn deeply_nested_input_is_an_error_not_a_stack_overflow() {
        // 100k nested arrays: the decoder's depth limit must stop it.
        let mut bytes = vec![b'D', b'T', ENVELOPE_VERSION, Kind::Task as u8];
        bytes.extend(std::iter::repeat_n(0x91u8, 100_000));
        assert!(decode::<TaskMessage>(&bytes).is_err());
    }

    /// A chain of `n` states each riding in the next, every one with a journal entry
    /// holding a failure (the deepest values a state holds).
    fn riding_chain(n: usize) -> InstanceState {
        let mut state = InstanceState::new(
            InstanceId::new("root").expect("valid id"),
            "a.name".into(),
            vec![0x90],
            ReplyTo::Root,
        );
        for seq in 0..n as Seq {
            state.journal.push(Entry {
                cmd: Command::Child {
                    name: "a.name".into(),
                    input_hash: 1,
                },
                result: Some(Outcome::Failed(Failure::new(FailureKind::Panic, "x"))),
                order: 1,
            });
            let id = state.id.child(seq);
            state = InstanceState::new(
                id,
                "a.name".into(),
                vec![0x90],
                ReplyTo::Continuation {
                    parent: Box::new(state),
                    seq,
                },
            );
        }
        state
    }

    #[test]
    fn the_deepest_message_this_build_writes_decodes() {
        let state = riding_chain(MAX_RIDING);
        let bytes = TaskMessageRef::Step {
            state: &state,
            completion: Some((0, &Outcome::Failed(Failure::new(FailureKind::Panic, "x")))),
        }
        .encode();
        let TaskMessage::Step { state: back, .. } = decode::<TaskMessage>(&bytes).expect("decodes")
        else {
            panic!("a step")
        };
        assert_eq!(back.riding(), MAX_RIDING);
        assert_eq!(*back, state);
    }

    #[test]
    fn a_chain_past_the_depth_limit_is_a_decode_error() {
        // What an older build could write: far more states riding in one message. Decoding
        // it must fail cleanly (in a debug build it used to overflow the stack).
        let state = riding_chain(400);
        let bytes = TaskMessageRef::Step {
            state: &state,
            completion: None,
        }
        .encode();
        let e = decode::<TaskMessage>(&bytes).expect_err("too deep");
        assert!(e.is_decode(), "{e}");
        // The chain is dropped by a loop: a recursive drop of 400 states is what the limit
        // spares a worker, not a test.
        let mut next = Some(state);
        while let Some(mut s) = next.take() {
            if let ReplyTo::Continuation { parent, .. } =
                std::mem::replace(&mut s.reply, ReplyTo::Root)
            {
                next = Some(*parent);
            }
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Messages written by the build of envelope revision 1 (before continue-as-new and
    /// patches), kept byte for byte: this build must read them (rolling upgrades).
    mod revision_1 {
        pub(super) const TASK_START: &str = "4454010181a45374657092dc0014a76f726465722d31a56f72646572c4049207a1789081a6436c69656e7491a77265706c792d31c20000c2c00000009090c2c0c0c090c0";
        pub(super) const TASK_RESUME: &str = "4454010181a45374657092dc0014a76f726465722d31a56f72646572c4049207a178919381a54368696c6492a66368617267652ac000a4526f6f74c20000c2c00000009090c2c0c0c090920081a24f6bc40163";
        pub(super) const MAILBOX_EVENT: &str =
            "4454010281a54576656e74920381a64661696c656492a550616e6963a4626f6f6d";
        pub(super) const RESULT: &str = "445401039181a24f6bc405a4646f6e65";
        pub(super) const MAILBOX_STATE: &str = "4454010281a55374617465dc0014a76f726465722d31a56f72646572c4049207a178919381a54368696c6492a66368617267652ac000a4526f6f74c30500c2c00000009090c2c0c0c090";
    }

    #[test]
    fn what_the_first_revision_wrote_decodes() {
        let input = encode_value(&(7u32, "x")).unwrap();
        let TaskMessage::Step { state, completion } =
            decode::<TaskMessage>(&unhex(revision_1::TASK_START)).unwrap()
        else {
            panic!("a step")
        };
        assert_eq!(state.id.as_str(), "order-1");
        assert_eq!(state.name, "order");
        assert_eq!(state.input, input);
        assert_eq!(
            state.reply,
            ReplyTo::Client {
                client: "reply-1".into()
            }
        );
        assert!(state.journal.is_empty() && completion.is_none());
        assert_eq!(state.run, 0, "a field added later takes its default");

        let TaskMessage::Step { state, completion } =
            decode::<TaskMessage>(&unhex(revision_1::TASK_RESUME)).unwrap()
        else {
            panic!("a step")
        };
        assert_eq!(state.reply, ReplyTo::Root);
        assert_eq!(
            state.journal[0].cmd,
            Command::Child {
                name: "charge".into(),
                input_hash: 42
            }
        );
        assert_eq!(
            completion,
            Some((0, Outcome::Ok(encode_value(&99u64).unwrap())))
        );

        let MailboxItem::Event { seq, outcome } =
            decode::<MailboxItem>(&unhex(revision_1::MAILBOX_EVENT)).unwrap()
        else {
            panic!("an event")
        };
        assert_eq!(seq, 3);
        let Outcome::Failed(f) = outcome else {
            panic!("a failure")
        };
        assert!(f.is_panic() && f.message() == "boom", "{f:?}");

        let rec = decode::<ResultRecord>(&unhex(revision_1::RESULT)).unwrap();
        assert_eq!(rec.outcome, Outcome::Ok(encode_value(&"done").unwrap()));

        let MailboxItem::State(state) =
            decode::<MailboxItem>(&unhex(revision_1::MAILBOX_STATE)).unwrap()
        else {
            panic!("a state")
        };
        assert!(state.mailbox);
        assert_eq!(state.version, 5);
    }

    pub(crate) fn as_newer(bytes: &[u8]) -> Vec<u8> {
        as_next_revision(bytes).expect("a step message")
    }

    #[test]
    fn a_newer_revision_is_recognised() {
        let state = InstanceState::new(
            InstanceId::new("root-1").unwrap(),
            "order".into(),
            encode_value(&1u8).unwrap(),
            ReplyTo::Root,
        );
        let now = encode(&TaskMessage::Step {
            state: Box::new(state),
            completion: None,
        });
        let newer = as_newer(&now);
        let e = decode::<TaskMessage>(&newer).unwrap_err();
        assert!(e.is_newer() && e.is_decode(), "{e}");
        // Under this build's revision the same bytes do not decode: an added field needs
        // the next revision.
        let mut same = newer.clone();
        same[2] = ENVELOPE_VERSION;
        let e = decode::<TaskMessage>(&same).unwrap_err();
        assert!(!e.is_newer() && e.is_decode(), "{e}");
        // A revision below the oldest read is not "newer".
        let mut old = now.clone();
        old[2] = 0;
        let e = decode::<TaskMessage>(&old).unwrap_err();
        assert!(!e.is_newer() && e.is_decode(), "{e}");
        assert_eq!(revision(&newer), Some(ENVELOPE_VERSION + 1));
        assert_eq!(revision(b"xx"), None);
    }
}
