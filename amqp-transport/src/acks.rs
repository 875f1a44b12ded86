//! Acks of a consumer channel, coalesced: the acks asked for while the channel's previous
//! acks were being sent go together, as one `basic.ack` with `multiple` for those below
//! every delivery still open (each a single ack of its own otherwise). On a quorum queue
//! every ack frame is a settle command in the queue's log, replicated like a message: one
//! for a run of deliveries instead of one each.
//!
//! A `multiple` ack settles every delivery of the channel up to its tag that is still
//! unsettled, so it may only go up to below the first delivery that is not ours to ack
//! yet: one still being handled, one being put back (until its reject is sent), or one
//! the broker sent but this process has not seen (delivery tags count every delivery of
//! the channel, and the channel's consumers are read side by side, so a later tag can be
//! seen first).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use lapin::options::BasicAckOptions;
use lapin::Acker;
use tokio::sync::oneshot;

/// The acks of one channel (one per consumer session's task channel).
#[derive(Default)]
pub(crate) struct Acks {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Seen and neither acked nor put back yet.
    open: BTreeSet<u64>,
    /// Tags below `max_seen` that were not seen yet.
    missing: BTreeSet<u64>,
    /// The highest tag seen.
    max_seen: u64,
    /// Acks asked for and not sent yet.
    waiting: Vec<Waiting>,
    /// A task is sending the waiting acks.
    flushing: bool,
}

struct Waiting {
    tag: u64,
    acker: Acker,
    done: oneshot::Sender<lapin::Result<bool>>,
}

/// One round of sending: the waiting acks (or their tags), split.
#[derive(Debug, PartialEq, Eq)]
struct Round<T> {
    /// The ack sent with `multiple`: the highest of those below every open tag.
    top: Option<T>,
    /// The other acks below every open tag, which `top`'s multiple ack settles.
    covered: Vec<T>,
    /// The acks sent one by one.
    single: Vec<T>,
}

impl State {
    fn seen(&mut self, tag: u64) {
        if tag > self.max_seen {
            self.missing.extend(self.max_seen + 1..tag);
            self.max_seen = tag;
        } else {
            self.missing.remove(&tag);
        }
        self.open.insert(tag);
    }

    /// Below this tag, every delivery was seen and none is open.
    fn boundary(&self) -> u64 {
        let open = self.open.first().copied().unwrap_or(u64::MAX);
        let missing = self.missing.first().copied().unwrap_or(u64::MAX);
        open.min(missing).min(self.max_seen + 1)
    }

    /// Takes the waiting acks, split into a multiple ack and single ones.
    fn round(&mut self) -> Round<Waiting> {
        let boundary = self.boundary();
        split(boundary, std::mem::take(&mut self.waiting), |w| w.tag)
    }
}

/// Splits the acks `items` (with tags `tag`) when every delivery below `boundary` was
/// seen and none is open: those below it go as one multiple ack of the highest, the
/// others one by one.
fn split<T>(boundary: u64, items: Vec<T>, tag: impl Fn(&T) -> u64) -> Round<T> {
    let mut top: Option<T> = None;
    let mut covered = Vec::new();
    let mut single = Vec::new();
    for item in items {
        if tag(&item) >= boundary {
            single.push(item);
            continue;
        }
        match top.take() {
            Some(higher) if tag(&higher) > tag(&item) => {
                covered.push(item);
                top = Some(higher);
            }
            Some(lower) => {
                covered.push(lower);
                top = Some(item);
            }
            None => top = Some(item),
        }
    }
    Round {
        top,
        covered,
        single,
    }
}

impl Acks {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A delivery with `tag` came on the channel.
    pub(crate) fn seen(&self, tag: u64) {
        self.lock().seen(tag);
    }

    /// The delivery `tag` is no longer ours to ack: it was put back (its reject is sent)
    /// or its settle failed.
    pub(crate) fn closed(&self, tag: u64) {
        self.lock().open.remove(&tag);
    }

    /// Acks the delivery `tag` (whose acker is `acker`), with the others asked for
    /// meanwhile; resolves as `Acker::ack` does once its frame is sent.
    pub(crate) async fn ack(self: &Arc<Self>, tag: u64, acker: Acker) -> lapin::Result<bool> {
        let (done, result) = oneshot::channel();
        let start = {
            let mut s = self.lock();
            s.open.remove(&tag);
            s.waiting.push(Waiting { tag, acker, done });
            !std::mem::replace(&mut s.flushing, true)
        };
        if start {
            tokio::spawn(self.clone().flush());
        }
        // A flush that ended without answering (its task was dropped with the runtime):
        // the ack is not known to be sent.
        result.await.unwrap_or(Ok(false))
    }

    /// Sends the waiting acks, round after round, until none waits.
    async fn flush(self: Arc<Self>) {
        loop {
            let round = {
                let mut s = self.lock();
                if s.waiting.is_empty() {
                    s.flushing = false;
                    return;
                }
                s.round()
            };
            // Sent in order (lapin sends a channel's commands in the order they are made).
            let acks = round
                .single
                .iter()
                .map(|w| w.acker.ack(BasicAckOptions::default()));
            let results = futures::future::join_all(acks).await;
            for (w, r) in round.single.into_iter().zip(results) {
                let _ = w.done.send(r);
            }
            if let Some(top) = round.top {
                let multiple = !round.covered.is_empty();
                let r = top.acker.ack(BasicAckOptions { multiple }).await;
                for w in round.covered {
                    let _ = w.done.send(clone_result(&r));
                }
                let _ = top.done.send(r);
            }
        }
    }
}

fn clone_result(r: &lapin::Result<bool>) -> lapin::Result<bool> {
    match r {
        Ok(b) => Ok(*b),
        Err(e) => Err(e.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(seen: &[u64], open: &[u64], waiting: &[u64]) -> (State, Vec<u64>) {
        let mut s = State::default();
        for t in seen {
            s.seen(*t);
        }
        for t in seen {
            if !open.contains(t) {
                s.open.remove(t);
            }
        }
        (s, waiting.to_vec())
    }

    fn round(seen: &[u64], open: &[u64], waiting: &[u64]) -> Round<u64> {
        let (s, waiting) = state(seen, open, waiting);
        split(s.boundary(), waiting, |t| *t)
    }

    #[test]
    fn a_run_below_every_open_delivery_goes_as_one_multiple_ack() {
        let r = round(&[1, 2, 3, 4, 5], &[5], &[1, 2, 3, 4]);
        assert_eq!(r.top, Some(4));
        assert_eq!(r.covered, vec![1, 2, 3]);
        assert!(r.single.is_empty());
    }

    #[test]
    fn acks_asked_for_out_of_order_still_go_as_one_multiple_ack_of_the_highest() {
        let r = round(&[1, 2, 3, 4, 5, 6], &[6], &[3, 1, 5, 4, 2]);
        assert_eq!(r.top, Some(5));
        let mut covered = r.covered;
        covered.sort_unstable();
        assert_eq!(covered, vec![1, 2, 3, 4]);
        assert!(r.single.is_empty());
    }

    #[test]
    fn an_open_delivery_stops_the_run_and_later_acks_go_one_by_one() {
        let r = round(&[1, 2, 3, 4, 5], &[3], &[1, 2, 4, 5]);
        assert_eq!(r.top, Some(2));
        assert_eq!(r.covered, vec![1]);
        assert_eq!(r.single, vec![4, 5]);
    }

    #[test]
    fn a_tag_not_seen_yet_stops_the_run() {
        // 3 was delivered on another consumer of the channel and is not read yet.
        let r = round(&[1, 2, 4, 5], &[], &[1, 2, 4, 5]);
        assert_eq!(r.top, Some(2));
        assert_eq!(r.single, vec![4, 5]);
        // Seen late, it fills the gap.
        let (mut s, _) = state(&[1, 2, 4, 5], &[], &[]);
        s.seen(3);
        assert_eq!(s.boundary(), 3);
        s.open.remove(&3);
        assert_eq!(s.boundary(), 6);
    }

    #[test]
    fn nothing_below_the_boundary_means_no_multiple_ack() {
        let r = round(&[1, 2, 3], &[1], &[2, 3]);
        assert_eq!(r.top, None);
        assert_eq!(r.single, vec![2, 3]);
    }
}
