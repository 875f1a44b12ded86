//! The end of a mailbox: when the keep-alives come, what a finished instance's mailbox
//! keeps, and when it is deleted.

use std::time::Duration;

use super::*;
use crate::protocol::codec::encode;
use crate::protocol::message::MailboxItem;
use crate::protocol::outgoing::Destination;
use crate::protocol::state::{from_millis, InstanceId};

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn keepalives_double_from_a_short_first_to_a_quarter_of_the_retention() {
    let p = Probes::for_retention(Some(7 * DAY));
    assert_eq!(p.first, 7 * DAY / 1024);
    assert_eq!(p.most, Some(7 * DAY / 4));
    let engine = Engine::new(Registry::new(), DEFAULT_STATE_BUDGET).with_probes(p);
    let mut state = waiting();
    let mut now = from_millis(1_000_000);
    let mut delays = Vec::new();
    for _ in 0..14 {
        let at = engine
            .next_keepalive(&mut state, now)
            .expect("none pending");
        assert!(
            engine.next_keepalive(&mut state, now).is_none(),
            "one pending"
        );
        delays.push(at.duration_since(now).expect("later"));
        now = at;
    }
    assert_eq!(delays[0], Duration::from_millis(590_625));
    for w in delays.windows(2) {
        assert!(w[1] == w[0] * 2 || w[1] == 7 * DAY / 4, "{delays:?}");
    }
    assert_eq!(delays[13], 7 * DAY / 4);

    // A short retention: every keep-alive within a quarter of it.
    let p = Probes::for_retention(Some(Duration::from_secs(3)));
    assert_eq!(
        (p.first, p.most),
        (Duration::from_millis(750), Some(p.first))
    );
    // Mailboxes that never expire need no keep-alive; a finished one is still deleted a
    // second after its end.
    let p = Probes::for_retention(None);
    assert_eq!((p.first, p.most), (Duration::from_secs(1), None));
    let engine = Engine::new(Registry::new(), DEFAULT_STATE_BUDGET).with_probes(p);
    assert!(engine.next_keepalive(&mut waiting(), now).is_none());
}

/// A mailbox-mode instance that awaits the reply of its operation 3.
fn waiting() -> InstanceState {
    let mut s = InstanceState::new(
        InstanceId::new("fan-in").expect("valid"),
        "fan_in".into(),
        Vec::new(),
        ReplyTo::Root,
    );
    s.mailbox = true;
    s.version = 4;
    s.awaiting = vec![3];
    s
}

fn event(seq: Seq) -> Vec<u8> {
    encode(&MailboxItem::Event {
        seq,
        outcome: unit(),
    })
}

fn state_item(s: &InstanceState) -> Vec<u8> {
    encode(&MailboxItem::State(Box::new(s.clone())))
}

fn hows(plan: &MailboxPlan) -> Vec<Settlement> {
    plan.settle.iter().map(|(how, _)| *how).collect()
}

#[tokio::test]
async fn a_finished_mailbox_keeps_its_tombstone_and_awaited_replies_until_the_grace_is_over() {
    let engine = Engine::new(Registry::new(), DEFAULT_STATE_BUDGET)
        .with_probes(Probes::for_retention(Some(7 * DAY)));
    let first = engine.probes.first;
    let ended = from_millis(1_000_000);
    let state = waiting();
    // Finished with no keep-alive pending late enough: the tombstone, and a probe after
    // the grace.
    let out = engine.tombstone(&state, ended);
    assert_eq!(out.len(), 2);
    assert!(matches!(&out[0].destination, Destination::Mailbox { .. }));
    assert!(matches!(
        &out[1].destination,
        Destination::Delayed { at, .. } if *at == ended + first
    ));
    let tomb = out[0].body.clone();
    let Ok(MailboxItem::State(t)) = decode::<MailboxItem>(&tomb) else {
        panic!("a state");
    };
    assert!(t.finished);
    assert_eq!(t.awaiting, vec![3]);
    assert_eq!(t.reap_at_ms, to_millis(ended + first / 2));

    // Within the grace: a copy of an earlier state write (redone work), the awaited reply
    // twice, a reply nobody awaits and a keep-alive. The tombstone and one copy of the
    // awaited reply stay; the rest is dropped; nothing runs, nothing is deleted.
    let mut stale = state.clone();
    stale.version = 1;
    let items = vec![
        tomb.clone(),
        state_item(&stale),
        event(3),
        event(3),
        event(5),
        encode(&MailboxItem::Touch),
    ];
    let plan = engine
        .handle_mailbox(&items, ended + Duration::from_secs(1))
        .await
        .expect("no payload store");
    assert!(plan.outputs.is_empty() && !plan.delete);
    use Settlement::{Ack, Requeue};
    assert_eq!(hows(&plan), vec![Requeue, Ack, Requeue, Ack, Ack, Ack]);

    // After the grace, with the awaited reply in: deleted, everything drained with it.
    let items = vec![tomb.clone(), event(3), encode(&MailboxItem::Touch)];
    let plan = engine
        .handle_mailbox(&items, ended + first)
        .await
        .expect("no payload store");
    assert!(plan.outputs.is_empty() && plan.delete);
    assert_eq!(hows(&plan), vec![Ack, Ack, Ack]);

    // After the grace, without it: kept, for the reply still to come.
    let items = vec![tomb, encode(&MailboxItem::Touch)];
    let plan = engine
        .handle_mailbox(&items, ended + first)
        .await
        .expect("no payload store");
    assert!(plan.outputs.is_empty() && !plan.delete);
    assert_eq!(hows(&plan), vec![Requeue, Ack]);
}

#[test]
fn a_keepalive_pending_after_the_grace_is_the_one_that_deletes() {
    let engine = Engine::new(Registry::new(), DEFAULT_STATE_BUDGET)
        .with_probes(Probes::for_retention(Some(7 * DAY)));
    let ended = from_millis(1_000_000);
    let mut state = waiting();
    state.touch_at_ms = to_millis(ended + Duration::from_secs(3_600));
    let out = engine.tombstone(&state, ended);
    assert_eq!(out.len(), 1, "no second probe");
}

#[tokio::test]
async fn a_reply_to_a_position_with_a_result_is_still_no_longer_awaited() {
    // A race's loser replies after its position was resolved as cancelled: the state is
    // written back without the position in `awaiting`, so its tombstone will not wait.
    let engine = Engine::new(Registry::new(), DEFAULT_STATE_BUDGET);
    let mut state = waiting();
    state.journal = (0..4)
        .map(|_| crate::protocol::state::Entry {
            cmd: Command::Yield,
            result: Some(unit()),
            order: 1,
        })
        .collect();
    let now = from_millis(1_000_000);
    let plan = engine
        .handle_mailbox(&[state_item(&state), event(3)], now)
        .await
        .expect("no payload store");
    assert_eq!(hows(&plan), vec![Settlement::Ack, Settlement::Ack]);
    let [write] = &plan.outputs[..] else {
        panic!("one state write: {:?}", plan.outputs);
    };
    let Ok(MailboxItem::State(s)) = decode::<MailboxItem>(&write.body) else {
        panic!("a state");
    };
    assert!(s.awaiting.is_empty());
    assert_eq!(s.version, state.version + 1);
}
