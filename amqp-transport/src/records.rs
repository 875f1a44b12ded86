//! What a process remembers between broker operations, in bounded memory: the queues it
//! declared, the doorbells its shard consumers hold, and the mailbox messages it merged.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lapin::{BasicProperties, Channel};
use tracing::warn;

use crate::error::AmqpError;
use crate::pack::{Part, TaskPart};

/// How many queue declarations a process remembers (see [`Declared::remember`]), and
/// how many ids of merged mailbox messages.
pub(crate) const MAX_REMEMBERED: usize = 65_536;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The queues this process declared.
#[derive(Default)]
pub(crate) struct Declared {
    /// Queues declared by this process and not found missing since.
    declared: Mutex<HashSet<String>>,
    /// Every queue this process declared (the first [`MAX_REMEMBERED`]).
    ever_declared: Mutex<BTreeSet<String>>,
    /// Set once `ever_declared` is full.
    ever_full: AtomicBool,
}

impl Declared {
    /// Whether `queue` was declared and not found missing since: no declare before use.
    pub(crate) fn contains(&self, queue: &str) -> bool {
        lock(&self.declared).contains(queue)
    }

    /// Records that `queue` was declared. Both records are bounded: a process that starts
    /// or runs millions of instances (a queue or two each) must not grow without end.
    /// Forgetting a declaration costs one more (idempotent) declare.
    pub(crate) fn remember(&self, queue: &str) {
        let mut declared = lock(&self.declared);
        if declared.len() >= MAX_REMEMBERED {
            declared.clear();
        }
        declared.insert(queue.to_string());
        drop(declared);
        let mut ever = lock(&self.ever_declared);
        if ever.len() < MAX_REMEMBERED {
            ever.insert(queue.to_string());
        } else if !ever.contains(queue) && !self.ever_full.swap(true, Ordering::Relaxed) {
            warn!(
                limit = MAX_REMEMBERED,
                "declared_queues() lists only the first queues this process declared"
            );
        }
    }

    pub(crate) fn forget(&self, queue: &str) {
        lock(&self.declared).remove(queue);
    }

    /// Every queue this process declared, sorted (the first [`MAX_REMEMBERED`]).
    pub(crate) fn ever(&self) -> Vec<String> {
        lock(&self.ever_declared).iter().cloned().collect()
    }
}

/// The doorbells this process holds, and the mailbox messages it merged.
///
/// A held doorbell is recorded per delivery (by a token of this process), not per
/// instance: the same doorbell may be delivered to this process again, on a new channel,
/// while the merge under its first delivery still runs. Each drain follows its own
/// delivery: the stale merge finds its closed channel, the fresh delivery its open one.
pub(crate) struct Doorbells<C = Channel> {
    /// Per delivery held: its instance and the shard channel that holds it (its mailbox
    /// is drained on the same channel).
    held: Mutex<HashMap<u64, (String, C)>>,
    seq: AtomicU64,
    /// Ids of mailbox messages this process drained and acked: merged into a state that
    /// was confirmed first. A doorbell that announces only such messages has nothing to
    /// report and is acked without a drain (see [`Doorbells::merged`]).
    merged: Mutex<Generations>,
    /// Doorbells acked without a drain because they were spent.
    spent: AtomicU64,
    /// Doorbells handed to the worker: each one a drain and a merge.
    handed: AtomicU64,
    /// The shard queues this process's consumers are the active consumer of (known from
    /// a delivery), with how many of its sessions hold each (one, but for a moment during
    /// a hand-over between two sessions of the same process).
    shards: Mutex<BTreeMap<String, usize>>,
}

impl<C> Default for Doorbells<C> {
    fn default() -> Self {
        Self {
            held: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(1),
            merged: Mutex::new(Generations::default()),
            spent: AtomicU64::new(0),
            handed: AtomicU64::new(0),
            shards: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<C: Clone> Doorbells<C> {
    /// Records a delivery of `instance`'s doorbell, held on `ch`; returns its token, the
    /// delivery's tag for [`Doorbells::channel`] and [`Doorbells::done`].
    pub(crate) fn out(&self, instance: &str, ch: &C) -> u64 {
        let token = self.seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.held).insert(token, (instance.to_string(), ch.clone()));
        token
    }

    /// The delivery `token` was settled (or given up).
    pub(crate) fn done(&self, token: u64) {
        lock(&self.held).remove(&token);
    }

    /// The channel that holds the doorbell delivery `token` of `instance`, while it is
    /// held (the caller checks that the channel is still open).
    pub(crate) fn channel(&self, token: u64, instance: &str) -> Option<C> {
        lock(&self.held)
            .get(&token)
            .filter(|(i, _)| i == instance)
            .map(|(_, ch)| ch.clone())
    }

    /// How many doorbell deliveries are held.
    #[cfg(test)]
    fn held(&self) -> usize {
        lock(&self.held).len()
    }
    /// Records that the mailbox message `id` was drained and acked.
    pub(crate) fn mark_merged(&self, id: String) {
        lock(&self.merged).insert(id);
    }

    /// Whether every message a doorbell announces (`rings`, non-empty) was drained and
    /// acked by this process. Such a doorbell is spent: whatever else is in the mailbox
    /// has a doorbell of its own, or was there for the drain that acked these.
    pub(crate) fn merged(&self, rings: &[&str]) -> bool {
        let merged = lock(&self.merged);
        !rings.is_empty() && rings.iter().all(|id| merged.contains(id))
    }

    pub(crate) fn count_spent(&self) {
        self.spent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn spent(&self) -> u64 {
        self.spent.load(Ordering::Relaxed)
    }

    pub(crate) fn count_handed(&self) {
        self.handed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handed(&self) -> u64 {
        self.handed.load(Ordering::Relaxed)
    }

    /// Records that a session of this process became the active consumer of `shard`.
    pub(crate) fn hold_shard(&self, shard: &str) {
        *lock(&self.shards).entry(shard.to_string()).or_default() += 1;
    }

    /// Records that a session of this process no longer consumes `shard` actively.
    pub(crate) fn release_shard(&self, shard: &str) {
        let mut shards = lock(&self.shards);
        if let Some(n) = shards.get_mut(shard) {
            *n -= 1;
            if *n == 0 {
                shards.remove(shard);
            }
        }
    }

    /// The shards this process is the active consumer of, sorted.
    pub(crate) fn held_shards(&self) -> Vec<String> {
        lock(&self.shards).keys().cloned().collect()
    }
}

/// A bounded set in two generations: when the newer one is full, the older one is
/// dropped. A forgotten id only costs a drain that finds nothing new.
#[derive(Default)]
struct Generations {
    new: HashSet<String>,
    old: HashSet<String>,
}

impl Generations {
    fn insert(&mut self, id: String) {
        if self.new.len() >= MAX_REMEMBERED {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(id);
    }

    fn contains(&self, id: &str) -> bool {
        self.new.contains(id) || self.old.contains(id)
    }
}

/// The longest list of ids a doorbell carries (bytes): a longer one is left out, and such
/// a doorbell always drains.
pub(crate) const MAX_RINGS_LEN: usize = 4096;

pub(crate) type Waiter = tokio::sync::oneshot::Sender<std::result::Result<(), Arc<AmqpError>>>;

/// The mailbox messages of an instance to write in its next round, and who waits for the
/// doorbell that will announce them (`publish.rs`, `Shared::ring`).
#[derive(Default)]
pub(crate) struct Round {
    pub(crate) dtask: String,
    /// Messages to write, with the properties each has when it goes alone.
    pub(crate) parts: Vec<(Part, BasicProperties)>,
    /// Ids of mailbox messages already written (keep-alives) that the doorbell names.
    pub(crate) stored: Vec<String>,
    pub(crate) waiters: Vec<Waiter>,
    /// A round of this instance is being published; the next one waits for it.
    pub(crate) busy: bool,
}

/// What a round of publishes keeps for its loop (`publish.rs`): who waits for it, and
/// whether one of its key is on its way.
pub(crate) trait Pending: Default {
    fn waiters(&mut self) -> &mut Vec<Waiter>;
    fn busy(&mut self) -> &mut bool;
}

impl Pending for Round {
    fn waiters(&mut self) -> &mut Vec<Waiter> {
        &mut self.waiters
    }
    fn busy(&mut self) -> &mut bool {
        &mut self.busy
    }
}

impl Pending for TaskRound {
    fn waiters(&mut self) -> &mut Vec<Waiter> {
        &mut self.waiters
    }
    fn busy(&mut self) -> &mut bool {
        &mut self.busy
    }
}

/// Adds to the next round of `key` in `rounds` (with `add`) and its waiter `tx`; returns
/// whether the caller starts the loop of `key`'s rounds (none was on its way).
pub(crate) fn join_round<R: Pending>(
    rounds: &Mutex<HashMap<String, R>>,
    key: &str,
    tx: Waiter,
    add: impl FnOnce(&mut R),
) -> bool {
    let mut rounds = lock(rounds);
    let round = rounds.entry(key.to_string()).or_default();
    add(round);
    round.waiters().push(tx);
    !std::mem::replace(round.busy(), true)
}

/// Takes the next round of `key` from `rounds`, leaving an empty one marked on its way;
/// `None` (and `key` forgotten) when nobody waits for one.
pub(crate) fn next_round<R: Pending>(rounds: &Mutex<HashMap<String, R>>, key: &str) -> Option<R> {
    let mut rounds = lock(rounds);
    let round = rounds.get_mut(key)?;
    if round.waiters().is_empty() {
        rounds.remove(key);
        return None;
    }
    let mut next = R::default();
    *next.busy() = true;
    Some(std::mem::replace(round, next))
}

/// The task messages of one task queue to publish in its next round, and who waits for
/// them (`publish.rs`, `Shared::task_round`).
#[derive(Default)]
pub(crate) struct TaskRound {
    /// The DTask whose task queue it is.
    pub(crate) dtask: String,
    /// Messages to write, with the properties each has when it goes alone.
    pub(crate) parts: Vec<(TaskPart, BasicProperties)>,
    pub(crate) waiters: Vec<Waiter>,
    /// A round of this queue is being published; the next one waits for it.
    pub(crate) busy: bool,
}

/// The doorbells of one process being published, by instance: shared by the publishes
/// that wrote to one mailbox at about the same time (`publish.rs`, `Shared::ring`); and
/// likewise the task messages, by task queue (`Shared::task_round`).
#[derive(Default)]
pub(crate) struct Ringer {
    rounds: Mutex<HashMap<String, Round>>,
    tasks: Mutex<HashMap<String, TaskRound>>,
    /// Mailbox messages written in packs.
    packed: AtomicU64,
    /// Task messages written in packs.
    task_packed: AtomicU64,
}

impl Ringer {
    /// Counts `n` mailbox messages written in one pack.
    pub(crate) fn count_packed(&self, n: usize) {
        self.packed.fetch_add(n as u64, Ordering::Relaxed);
        ::metrics::counter!(crate::metrics::PACKED).increment(n as u64);
    }

    /// Counts `n` task messages written in one pack.
    pub(crate) fn count_task_packed(&self, n: usize) {
        self.task_packed.fetch_add(n as u64, Ordering::Relaxed);
        ::metrics::counter!(crate::metrics::TASK_PACKED).increment(n as u64);
    }

    /// Task messages written in packs so far.
    pub(crate) fn task_packed(&self) -> u64 {
        self.task_packed.load(Ordering::Relaxed)
    }

    /// Mailbox messages written in packs so far.
    pub(crate) fn packed(&self) -> u64 {
        self.packed.load(Ordering::Relaxed)
    }

    /// The mailbox rounds, by instance.
    pub(crate) fn rounds(&self) -> &Mutex<HashMap<String, Round>> {
        &self.rounds
    }

    /// The task rounds, by task queue.
    pub(crate) fn task_rounds(&self) -> &Mutex<HashMap<String, TaskRound>> {
        &self.tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_remembered_are_bounded() {
        let records = Declared::default();
        let n = MAX_REMEMBERED + 10;
        for i in 0..n {
            records.remember(&format!("p.result.{i}"));
        }
        let declared = lock(&records.declared).len();
        assert!(declared <= MAX_REMEMBERED, "{declared}");
        // The most recent one is still known: no declare before its next use.
        assert!(lock(&records.declared).contains(&format!("p.result.{}", n - 1)));
        assert_eq!(lock(&records.ever_declared).len(), MAX_REMEMBERED);
        assert!(records.ever_full.load(Ordering::Relaxed));
    }

    /// A channel that is open or closed, for the records of held doorbells.
    #[derive(Clone, Debug, PartialEq)]
    struct Ch(&'static str);

    #[test]
    fn a_drain_follows_its_own_doorbell_delivery() {
        let bells: Doorbells<Ch> = Doorbells::default();
        // The doorbell of `i` is delivered on channel a; a's connection is cut while
        // the merge under it runs, and the broker delivers the doorbell again to this
        // process, on channel b.
        let first = bells.out("i", &Ch("a"));
        let again = bells.out("i", &Ch("b"));
        assert_ne!(first, again);
        // The stale merge's drain finds its own (closed) channel, never b: it must not
        // drain. The fresh delivery drains on b.
        assert_eq!(bells.channel(first, "i"), Some(Ch("a")));
        assert_eq!(bells.channel(again, "i"), Some(Ch("b")));
        // A token names one instance's delivery only.
        assert_eq!(bells.channel(again, "j"), None);
        // The stale delivery's settle does not touch the fresh one's record.
        bells.done(first);
        assert_eq!(bells.channel(first, "i"), None);
        assert_eq!(bells.channel(again, "i"), Some(Ch("b")));
        bells.done(again);
        assert_eq!(bells.channel(again, "i"), None);
        assert_eq!(bells.held(), 0);
    }
}
