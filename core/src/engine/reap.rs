//! The keep-alives of mailboxes and the end of a mailbox: when a waiting instance's
//! mailbox is touched, what a finished instance leaves in it (its tombstone), and when the
//! mailbox is deleted, so that a finished instance leaves nothing behind on the transport.
//!
//! Keep-alives ("probes") are delayed `Touch` items: the first after [`Probes::first`],
//! each next one twice as late, up to a quarter of the mailbox retention. A probe is
//! published to [`Destination::Touch`](crate::transport::Destination::Touch), which
//! never creates a mailbox, so one that comes after the mailbox was deleted is dropped.
//!
//! A finished instance writes a tombstone that keeps the positions of the replies it still
//! awaits (`InstanceState::awaiting`: a `when_any` loser, a timer that lost a race, a
//! cancelled child) and the time from which its mailbox may be deleted: the finish plus
//! half the first probe's delay, a grace during which a copy of an earlier step (work
//! redone after a crash) still finds the tombstone. The replies that come are kept in the
//! mailbox beside it, and the drain that finds every awaited reply in, after the grace,
//! deletes the mailbox. A probe due after the grace is always parked at the finish, so
//! that drain comes even when every reply was in before.

use std::time::{Duration, SystemTime};

use tracing::{debug, warn};

use super::{Engine, MailboxPlan, Settlement};
use crate::protocol::outgoing::Outgoing;
use crate::protocol::state::{to_millis, InstanceState, Outcome, Seq, Signal};

/// The delay of the first keep-alive when the transport's mailboxes never expire (only
/// the probe that ends a finished instance's mailbox is then scheduled).
const FIRST_WITHOUT_RETENTION: Duration = Duration::from_secs(1);

/// The shortest first keep-alive when mailboxes expire.
const SHORTEST_FIRST: Duration = Duration::from_secs(1);

/// The first keep-alive's share of the mailbox retention.
const FIRST_SHARE: u32 = 1024;

/// When the probes of mailboxes come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Probes {
    /// The delay of a waiting instance's first keep-alive, and of the probe that deletes
    /// a finished instance's mailbox (its grace is half of it).
    pub(crate) first: Duration,
    /// The longest delay between two keep-alives: a quarter of the mailbox retention
    /// (`None`: mailboxes never expire, and waiting instances need no keep-alive).
    pub(crate) most: Option<Duration>,
}

impl Probes {
    /// The probes for a transport that deletes a mailbox unused for `retention`: the
    /// first after 1/1024 of it (about 10 minutes for 7 days; at least a second, at most
    /// a quarter of it), then twice as late each time, up to a quarter of it.
    pub(crate) fn for_retention(retention: Option<Duration>) -> Self {
        match retention {
            None => Self {
                first: FIRST_WITHOUT_RETENTION,
                most: None,
            },
            Some(r) => {
                let most = r / 4;
                Self {
                    first: (r / FIRST_SHARE).max(SHORTEST_FIRST).min(most),
                    most: Some(most),
                }
            }
        }
    }

    /// The delay of the keep-alive after one that waited `last_ms` (0: the first).
    fn next_ms(&self, last_ms: u64) -> Option<u64> {
        let most = to_ms(self.most?);
        let next = match last_ms {
            0 => to_ms(self.first),
            last => last.saturating_mul(2),
        };
        Some(next.min(most).max(1))
    }
}

impl Default for Probes {
    fn default() -> Self {
        Self::for_retention(None)
    }
}

fn to_ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl Engine {
    /// The keep-alive to schedule with a write of `state` to its mailbox, when none is
    /// pending: its due time, recorded in the state.
    pub(super) fn next_keepalive(
        &self,
        state: &mut InstanceState,
        now: SystemTime,
    ) -> Option<SystemTime> {
        if state.touch_at_ms > to_millis(now) {
            return None;
        }
        let every = self.probes.next_ms(state.touch_every_ms)?;
        let at = now + Duration::from_millis(every);
        state.touch_every_ms = every;
        state.touch_at_ms = to_millis(at);
        Some(at)
    }

    /// What a finished instance leaves in its mailbox: its tombstone and, unless the
    /// pending keep-alive comes after the grace, the probe that will delete the mailbox.
    pub(super) fn tombstone(&self, state: &InstanceState, now: SystemTime) -> Vec<Outgoing> {
        let reap_at = to_millis(now + self.probes.first / 2);
        let mut out = vec![Outgoing::tombstone(state, reap_at)];
        if state.touch_at_ms < reap_at {
            out.push(Outgoing::keepalive(state, now + self.probes.first));
        }
        out
    }
}

/// What to do with a drained mailbox whose newest state is the tombstone `tomb` (at
/// `state_at` among the drained items): keep the tombstone and the awaited replies that
/// came, drop everything else; or, once every awaited reply came and the grace is over,
/// delete the mailbox.
pub(super) fn after_the_end(
    tomb: &InstanceState,
    state_at: usize,
    events: &[(usize, Seq, Outcome)],
    signals: &[(usize, Signal)],
    mut settle: Vec<(Settlement, String)>,
    now: SystemTime,
) -> MailboxPlan {
    // Late results for a finished instance (e.g. `when_any` losers) are dropped, and so
    // are events it never waited for.
    for (_, signal) in signals {
        warn!(
            instance = %tomb.id, event = %signal.name,
            "an event for a finished instance is dropped"
        );
    }
    let came = |seq: &Seq| events.iter().any(|(_, s, _)| s == seq);
    if tomb.awaiting.iter().all(came) && to_millis(now) >= tomb.reap_at_ms {
        debug!(instance = %tomb.id, "the mailbox of a finished instance is deleted");
        return MailboxPlan {
            outputs: Vec::new(),
            settle,
            waiting_for_state: false,
            delete: true,
        };
    }
    // The mailbox keeps the tombstone, and one copy of each awaited reply that came: they
    // are its record of which came.
    settle[state_at].0 = Settlement::Requeue;
    let mut kept: Vec<Seq> = Vec::new();
    for (i, seq, _) in events {
        if tomb.awaiting.contains(seq) && !kept.contains(seq) {
            kept.push(*seq);
            settle[*i].0 = Settlement::Requeue;
        }
    }
    MailboxPlan {
        outputs: Vec::new(),
        settle,
        waiting_for_state: false,
        delete: false,
    }
}
