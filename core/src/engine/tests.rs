//! The engine alone: hand-offs kept for inline runs, the budget, early timers.

use std::time::Duration;

use super::*;
use crate::protocol::message::ResultRecord;
use crate::protocol::outgoing::Destination;
use crate::protocol::state::{from_millis, Entry, InstanceId};

fn timer_step(fire_at: SystemTime) -> TaskMessage {
    let mut state = InstanceState::new(
        InstanceId::new("early").expect("valid"),
        "sleeper".into(),
        Vec::new(),
        ReplyTo::Root,
    );
    state.journal.push(Entry {
        cmd: Command::Delay {
            millis: 1_000,
            fire_at_ms: to_millis(fire_at),
        },
        result: None,
        order: 0,
    });
    TaskMessage::Step {
        state: Box::new(state),
        completion: Some((0, Outcome::Ok(UNIT.to_vec()))),
    }
}

#[crate::dtask(name = "engine_test.inc")]
async fn inc(x: u64) -> u64 {
    x + 1
}

#[crate::dtask(name = "engine_test.chain")]
async fn chain(n: u64) -> u64 {
    let mut v = 0;
    for _ in 0..n {
        v = inc(v).await;
    }
    v
}

/// Follows a chain's hand-offs through the engine alone, checking at every step that
/// the message kept for an inline run is exactly what its published body decodes to.
#[tokio::test]
async fn a_kept_hand_off_equals_its_published_body() {
    let mut registry = Registry::new();
    registry
        .register(inc)
        .and_then(|r| r.register(chain))
        .expect("registered");
    let engine = Engine::new(registry, DEFAULT_STATE_BUDGET);
    let now = from_millis(1_700_000_000_000);
    let (name, input) = chain(3).into_parts();
    let state = InstanceState::new(
        InstanceId::new("root").expect("valid"),
        name,
        input.expect("encodes"),
        ReplyTo::Root,
    );
    let mut msg = TaskMessage::Step {
        state: Box::new(state),
        completion: None,
    };
    let mut kept = 0;
    let result = loop {
        let stepped = engine.handle_task_next(msg, now).await.expect("no store");
        let hand_offs: Vec<&Outgoing> = stepped
            .outputs
            .iter()
            .filter(|o| matches!(o.destination, Destination::Task { .. }))
            .collect();
        match stepped.next {
            Some(next) => {
                assert_eq!(hand_offs.len(), 1, "one hand-off per kept message");
                let decoded: TaskMessage = decode(&hand_offs[0].body).expect("decodes");
                assert_eq!(decoded, next);
                kept += 1;
                msg = next;
            }
            None => {
                assert!(hand_offs.is_empty());
                break stepped
                    .outputs
                    .into_iter()
                    .find(|o| matches!(o.destination, Destination::Store { .. }))
                    .expect("the root's result");
            }
        }
    };
    // Three children started and three resumes with their results.
    assert_eq!(kept, 6);
    let rec = finished(&result.body);
    assert_eq!(
        rec.outcome,
        Outcome::Ok(crate::protocol::codec::encode_value(&3u64).expect("encodes"))
    );
}

/// A hand-off past the state budget fails the instance with its state intact: the
/// parent whose state rode in the child's start gets the failure.
#[tokio::test]
async fn a_kept_hand_off_past_the_budget_fails_the_instance() {
    let mut registry = Registry::new();
    registry
        .register(inc)
        .and_then(|r| r.register(chain))
        .expect("registered");
    let engine = Engine::new(registry, 60);
    let (name, input) = chain(2).into_parts();
    let state = InstanceState::new(
        InstanceId::new("root-with-a-long-enough-id").expect("valid"),
        name,
        input.expect("encodes"),
        ReplyTo::Root,
    );
    let msg = TaskMessage::Step {
        state: Box::new(state),
        completion: None,
    };
    let stepped = engine
        .handle_task_next(msg, from_millis(1_700_000_000_000))
        .await
        .expect("no store");
    assert!(stepped.next.is_none());
    let result = stepped
        .outputs
        .iter()
        .find(|o| {
            o.destination
                == Destination::Store {
                    instance: InstanceId::new("root-with-a-long-enough-id").expect("valid"),
                }
        })
        .expect("the root fails with a result");
    let rec = finished(&result.body);
    match rec.outcome {
        Outcome::Failed(f) => assert!(f.is_state_too_large(), "{f}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn an_early_timer_waits_again_under_a_fresh_message_id() {
    let engine = Engine::new(Registry::new(), DEFAULT_STATE_BUDGET);
    let now = from_millis(1_700_000_000_000);
    let fire_at = now + Duration::from_millis(1_000);
    let out = engine.handle_task(timer_step(fire_at), now).await;
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].destination,
        Destination::Delayed {
            name: "sleeper".into(),
            at: fire_at
        }
    );
    // The original message's id is `early:r0`; the worker's dedupe window has seen it.
    assert_ne!(out[0].message_id, "early:r0");
    // Early a second time (clock skew): yet another id.
    let again = decode::<TaskMessage>(&out[0].body).expect("decodes");
    let later = now + Duration::from_millis(10);
    let out2 = engine.handle_task(again, later).await;
    assert_eq!(out2.len(), 1);
    assert_ne!(out2[0].message_id, out[0].message_id);
}

/// The result record in the fact `body` (a root's finish).
fn finished(body: &[u8]) -> ResultRecord {
    let fact: crate::protocol::fact::Fact = decode(body).expect("a fact");
    match fact.kind {
        crate::protocol::fact::FactKind::Finished { result, .. } => {
            decode(&result).expect("a result record")
        }
        other => panic!("expected a finish, got {other:?}"),
    }
}

/// A merge by a worker that does not run the instance's DTask hands the merged state
/// over. A drain redone after its worker died before acking may take what the first took
/// and an event that came meanwhile, without recording another result: its hand-over has
/// an id of its own (else the worker that took the first drops it as a redelivery, and
/// the event, acked from the mailbox, is lost), while a drain redone with the same
/// messages hands over under the same id.
#[tokio::test]
async fn a_redone_drain_that_took_more_hands_over_under_another_id() {
    use crate::protocol::codec::encode;
    use crate::protocol::message::MailboxItem;
    use crate::protocol::state::Signal;
    let engine = Engine::new(Registry::new(), DEFAULT_STATE_BUDGET);
    let now = from_millis(1_700_000_000_000);
    let mut state = InstanceState::new(
        InstanceId::new("boxed").expect("valid"),
        "runs.elsewhere".into(),
        Vec::new(),
        ReplyTo::Root,
    );
    state.mailbox = true;
    state.version = 1;
    for input_hash in [1, 2] {
        state.journal.push(Entry {
            cmd: Command::Child {
                name: "c".into(),
                input_hash,
            },
            result: None,
            order: 0,
        });
    }
    let st = encode(&MailboxItem::State(Box::new(state)));
    let ev = encode(&MailboxItem::Event {
        seq: 0,
        outcome: Outcome::Ok(UNIT.to_vec()),
    });
    let sig = encode(&MailboxItem::Signal(Signal {
        id: "s1".into(),
        name: "go".into(),
        value: UNIT.to_vec(),
    }));
    let hand_over = |plan: MailboxPlan| {
        plan.outputs
            .into_iter()
            .find(|o| matches!(o.destination, Destination::Task { .. }))
            .map(|o| o.message_id)
            .expect("a hand-over")
    };
    let first = hand_over(
        engine
            .handle_mailbox(&[st.clone(), ev.clone()], now)
            .await
            .unwrap(),
    );
    let same = hand_over(
        engine
            .handle_mailbox(&[st.clone(), ev.clone()], now)
            .await
            .unwrap(),
    );
    let more = hand_over(engine.handle_mailbox(&[st, ev, sig], now).await.unwrap());
    assert_eq!(first, same);
    assert_ne!(first, more);
}
