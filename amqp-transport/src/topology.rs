//! Queue names and arguments: the whole broker topology in one place.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::config::{AmqpConfig, DEAD_LETTER_BYTES};
use crate::error::{AmqpError, Result};

/// The highest delay level: `2^32` ms is about 49.7 days, so levels cover 1 ms to far
/// past 30 days (a longer delay passes through the top level several times).
pub(crate) const MAX_LEVEL: u8 = 32;

/// The segment size of the stream of cancel records.
const CANCELS_SEGMENT_BYTES: i64 = 1 << 20;

/// The segment size of the stream of payloads.
const PAYLOADS_SEGMENT_BYTES: i64 = 100 << 20;

/// What a queue is for; decides its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Task,
    Dead,
    DelayLevel(u8),
    DelayReady,
    Shard,
    Mailbox,
    Reply,
    /// A claim register, declared with the nonce of the start that claims it.
    Claim(u64),
    Cancels,
    /// The stream of instance facts.
    Facts,
    /// The stream of values stored out of band.
    Payloads,
    /// A mailbox as the destination of a keep-alive: never declared for it (a keep-alive
    /// must not create a mailbox); declared, it is a mailbox.
    Touch,
}

/// Names and declares the queues under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Topology {
    prefix: String,
    shards: u16,
    mailbox_expires: i64,
    register_expires: i64,
    dead_letters: u32,
    quorum_mailboxes: bool,
    task_queues: u16,
    payload_age: i64,
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Topology {
    pub(crate) fn new(cfg: &AmqpConfig) -> Self {
        Self {
            prefix: cfg.prefix.clone(),
            shards: cfg.shards,
            mailbox_expires: millis(cfg.mailbox_retention),
            register_expires: millis(cfg.register_retention),
            dead_letters: cfg.dead_letters,
            quorum_mailboxes: cfg.quorum_mailboxes,
            task_queues: cfg.task_queues,
            payload_age: millis(cfg.payload_retention),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn shards(&self) -> u16 {
        self.shards
    }

    /// The task queue of DTask `name` (its first, when it has several).
    pub(crate) fn task(&self, name: &str) -> String {
        if self.task_queues > 1 {
            self.task_part(name, 0)
        } else {
            format!("{}.task.{name}", self.prefix)
        }
    }

    fn task_part(&self, name: &str, i: u16) -> String {
        format!("{}.task.{name}.{i}", self.prefix)
    }

    /// The part `i` of `queue` when it is one of several task queues of a DTask
    /// (`P.task.<name>.<i>`); `None` otherwise.
    pub(crate) fn task_part_of(&self, queue: &str) -> Option<u16> {
        if self.task_queues <= 1 {
            return None;
        }
        let rest = queue.strip_prefix(&format!("{}.task.", self.prefix))?;
        let (_, i) = rest.rsplit_once('.')?;
        i.parse().ok().filter(|i| *i < self.task_queues)
    }

    /// Every task queue of DTask `name`: the one `P.task.<name>`, or `P.task.<name>.<i>`
    /// for each `i` below the count (`AmqpConfig::with_task_queues`).
    pub(crate) fn tasks(&self, name: &str) -> Vec<String> {
        if self.task_queues > 1 {
            (0..self.task_queues)
                .map(|i| self.task_part(name, i))
                .collect()
        } else {
            vec![self.task(name)]
        }
    }

    /// The task queue of DTask `name` that the messages of `instance` go to.
    pub(crate) fn task_for(&self, name: &str, instance: &str) -> String {
        if self.task_queues > 1 {
            let i = (fnv1a(instance.as_bytes()) % u64::from(self.task_queues)) as u16;
            self.task_part(name, i)
        } else {
            self.task(name)
        }
    }

    /// The queues task packs of DTask `name` go to (`pack.rs`): `P.packs.<name>`, or
    /// `P.packs.<name>.<i>` for each `i` below the count of task queues. Consumed with a
    /// prefetch of their own, so that a worker holds about as many messages of packs as
    /// it would hold single ones.
    pub(crate) fn packs(&self, name: &str) -> Vec<String> {
        if self.task_queues > 1 {
            (0..self.task_queues)
                .map(|i| format!("{}.packs.{name}.{i}", self.prefix))
                .collect()
        } else {
            vec![format!("{}.packs.{name}", self.prefix)]
        }
    }

    /// The pack queue of DTask `name` that a pack whose first message is about
    /// `instance` goes to.
    pub(crate) fn packs_for(&self, name: &str, instance: &str) -> String {
        if self.task_queues > 1 {
            let i = (fnv1a(instance.as_bytes()) % u64::from(self.task_queues)) as u16;
            format!("{}.packs.{name}.{i}", self.prefix)
        } else {
            format!("{}.packs.{name}", self.prefix)
        }
    }

    /// Due timers of a DTask: a queue of their own, so that a timer does not wait behind
    /// every start and step queued in the task queue.
    pub(crate) fn wake(&self, name: &str) -> String {
        format!("{}.wake.{name}", self.prefix)
    }

    pub(crate) fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub(crate) fn delay_level(&self, level: u8) -> String {
        format!("{}.delay.{level}", self.prefix)
    }

    pub(crate) fn delay_ready(&self) -> String {
        format!("{}.delay.ready", self.prefix)
    }

    pub(crate) fn shard(&self, i: u16) -> String {
        format!("{}.shard.{i}", self.prefix)
    }

    /// The shard queue of the doorbells of `instance`.
    pub(crate) fn shard_of(&self, instance: &str) -> String {
        self.shard((fnv1a(instance.as_bytes()) % u64::from(self.shards)) as u16)
    }

    /// The mailbox of `instance`: `P.mbox.<instance>`, or, when that is longer than the
    /// broker's 255 bytes (a child's id grows with its nesting), its first bytes, `~` and a
    /// 128-bit hash of the whole id (deterministic: every process names it alike).
    pub(crate) fn mailbox(&self, instance: &str) -> String {
        let name = format!("{}.mbox.{instance}", self.prefix);
        if name.len() <= MAX_NAME {
            return name;
        }
        let hash = format!(
            "~{:016x}{:016x}",
            fnv1a(instance.as_bytes()),
            fnv1a_from(FNV_SECOND_BASIS, instance.as_bytes())
        );
        // Ids are ASCII: any byte is a character boundary.
        let mut short = name;
        short.truncate(MAX_NAME - hash.len());
        short.push_str(&hash);
        short
    }

    /// The claim register of a root started under a chosen id.
    pub(crate) fn claim(&self, instance: &str) -> String {
        format!("{}.claim.{instance}", self.prefix)
    }

    /// The stream of cancel records, followed by every worker.
    pub(crate) fn cancels(&self) -> String {
        format!("{}.cancels", self.prefix)
    }

    /// The stream of instance facts (the RabbitMQ-only instance store).
    pub(crate) fn facts(&self) -> String {
        format!("{}.facts", self.prefix)
    }

    /// The stream of values stored out of band (the RabbitMQ-only payload store).
    pub(crate) fn payloads(&self) -> String {
        format!("{}.payloads", self.prefix)
    }

    /// The reply queue of a client (`Client::call`).
    pub(crate) fn reply(&self, client: &str) -> String {
        format!("{}.reply.{client}", self.prefix)
    }

    /// The kind of `queue` when it is one that workers consume (a task, wake, shard or
    /// mailbox queue, or the ready queue of timers) under this prefix: where a dead letter
    /// may be replayed to.
    pub(crate) fn consumed_kind(&self, queue: &str) -> Option<Kind> {
        let rest = queue.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let named = |p: &str| rest.strip_prefix(p).is_some_and(|n| !n.is_empty());
        if rest == "delay.ready" {
            Some(Kind::DelayReady)
        } else if named("task.") || named("wake.") || named("packs.") {
            Some(Kind::Task)
        } else if named("mbox.") {
            Some(Kind::Mailbox)
        } else if rest
            .strip_prefix("shard.")
            .and_then(|i| i.parse::<u16>().ok())
            .is_some_and(|i| i < self.shards)
        {
            Some(Kind::Shard)
        } else {
            None
        }
    }

    /// The options and arguments to declare the queue `queue` of `kind`: those of its kind,
    /// and for one of several task queues of a DTask, its leader on the node the declaring
    /// connection is to (`x-queue-leader-locator: client-local`; see
    /// `Shared::declare_uncached`).
    pub(crate) fn declaration_of(
        &self,
        queue: &str,
        kind: Kind,
    ) -> (QueueDeclareOptions, FieldTable) {
        let (opts, mut args) = self.declaration(kind);
        if kind == Kind::Task && self.task_part_of(queue).is_some() {
            args.insert(
                ShortString::from("x-queue-leader-locator"),
                text("client-local"),
            );
        }
        (opts, args)
    }

    /// The options and arguments to declare a queue of `kind`.
    pub(crate) fn declaration(&self, kind: Kind) -> (QueueDeclareOptions, FieldTable) {
        let mut args = FieldTable::default();
        let mut put = |k: &str, v: AMQPValue| {
            args.insert(ShortString::from(k), v);
        };
        let queue_type = match kind {
            Kind::Mailbox | Kind::Touch if self.quorum_mailboxes => "quorum",
            Kind::Mailbox | Kind::Touch | Kind::Reply | Kind::Claim(_) => "classic",
            Kind::Cancels | Kind::Facts | Kind::Payloads => "stream",
            _ => "quorum",
        };
        put("x-queue-type", text(queue_type));
        match kind {
            Kind::Task | Kind::DelayReady => {}
            // Bounded, so that messages nobody can handle do not fill the broker: the
            // oldest go first (bodies are cut to `DEAD_LETTER_BODY` when dead-lettered).
            Kind::Dead => {
                put(
                    "x-max-length",
                    AMQPValue::LongLongInt(i64::from(self.dead_letters)),
                );
                put(
                    "x-max-length-bytes",
                    AMQPValue::LongLongInt(DEAD_LETTER_BYTES as i64),
                );
                put("x-overflow", text("drop-head"));
            }
            Kind::DelayLevel(k) => {
                put(
                    "x-message-ttl",
                    AMQPValue::LongLongInt(1i64 << k.min(MAX_LEVEL)),
                );
                put("x-dead-letter-exchange", text(""));
                put("x-dead-letter-routing-key", text(&self.delay_ready()));
                // At-least-once dead-lettering keeps a timer through a broker crash at
                // the moment it moves; it requires reject-publish overflow.
                put("x-dead-letter-strategy", text("at-least-once"));
                put("x-overflow", text("reject-publish"));
            }
            Kind::Shard => put("x-single-active-consumer", AMQPValue::Boolean(true)),
            Kind::Mailbox | Kind::Touch => {
                put("x-expires", AMQPValue::LongLongInt(self.mailbox_expires))
            }
            // Removed when its client has been gone for the result retention.
            Kind::Reply => put("x-expires", AMQPValue::LongLongInt(self.register_expires)),
            Kind::Claim(nonce) => {
                // The claim is the queue's arguments, not a message: the broker compares
                // them when the queue is declared again, and refuses another nonce
                // (`registers.rs`). The queue never holds a message.
                put("x-max-length", AMQPValue::LongLongInt(claim_arg(nonce)));
                put("x-expires", AMQPValue::LongLongInt(self.register_expires));
            }
            // A record is kept as long as a result is: an instance that may still run
            // is never forgotten as cancelled. Small segments, since records are small
            // and the broker drops whole segments once they are past the age.
            // Facts are kept for the result retention too; the segments are the broker's
            // default size (facts are many), dropped whole once past the age.
            Kind::Facts => {
                let secs = (self.register_expires / 1000).max(1);
                put("x-max-age", text(&format!("{secs}s")));
            }
            // Values are kept for the payload retention; a segment (dropped whole once
            // past the age) holds about a hundred values of a MiB.
            Kind::Payloads => {
                let secs = (self.payload_age / 1000).max(1);
                put("x-max-age", text(&format!("{secs}s")));
                put(
                    "x-stream-max-segment-size-bytes",
                    AMQPValue::LongLongInt(PAYLOADS_SEGMENT_BYTES),
                );
            }
            Kind::Cancels => {
                let secs = (self.register_expires / 1000).max(1);
                put("x-max-age", text(&format!("{secs}s")));
                put(
                    "x-stream-max-segment-size-bytes",
                    AMQPValue::LongLongInt(CANCELS_SEGMENT_BYTES),
                );
            }
        }
        (QueueDeclareOptions::durable(), args)
    }
}

/// A claim nonce (in `1..2^62`) as a non-negative signed argument.
fn claim_arg(nonce: u64) -> i64 {
    (nonce & (i64::MAX as u64)) as i64
}

/// A queue name as the broker takes it.
pub(crate) fn short(s: &str) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|_| {
        AmqpError::Input(format!(
            "`{s}` is longer than 255 bytes, the broker's limit for names"
        ))
    })
}

pub(crate) fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The longest queue name the broker takes, in bytes.
pub(crate) const MAX_NAME: usize = 255;

/// The offset basis of the second hash of a shortened name: FNV-1a from another start, so
/// that the two 64-bit hashes together are a 128-bit one.
const FNV_SECOND_BASIS: u64 = 0x6c62_272e_07bb_0142;

/// 64-bit FNV-1a: a stable hash (the same in every process and build) for shard routing.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(0xcbf2_9ce4_8422_2325, bytes)
}

fn fnv1a_from(basis: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = basis;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The delay level a timer waits in at most: that of the hop
/// ([`AmqpConfig::with_timer_hop`]), rounded down to a power of two of milliseconds.
pub(crate) fn hop_level(cfg: &AmqpConfig) -> u8 {
    level_for(cfg.timer_hop.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// The delay level for a wait of `remaining_ms` (> 0): the largest `k` with
/// `2^k <= remaining_ms`, so a message never waits longer than it has left.
pub(crate) fn level_for(remaining_ms: u64) -> u8 {
    debug_assert!(remaining_ms > 0);
    (63 - remaining_ms.max(1).leading_zeros() as u8).min(MAX_LEVEL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_mailbox_name_is_shortened_deterministically() {
        let topo = Topology::new(&AmqpConfig::default().with_prefix("p".repeat(48)));
        let short = "a".repeat(40);
        assert_eq!(
            topo.mailbox(&short),
            format!("{}.mbox.{short}", "p".repeat(48))
        );
        // A child 150 levels down: `root.0.0...`.
        let deep: String = std::iter::once("r".repeat(32))
            .chain(std::iter::repeat_n("0".to_string(), 150))
            .collect::<Vec<_>>()
            .join(".");
        let name = topo.mailbox(&deep);
        assert_eq!(name.len(), MAX_NAME);
        assert!(name.starts_with(&format!("{}.mbox.rrrr", "p".repeat(48))));
        assert_eq!(name, topo.mailbox(&deep), "the same id, the same name");
        // Ids that differ only past the kept bytes get different names.
        let sibling = format!("{}.1", &deep[..deep.len() - 2]);
        assert_ne!(topo.mailbox(&sibling), name);
        assert_eq!(topo.mailbox(&sibling).len(), MAX_NAME);
        assert_eq!(topo.consumed_kind(&name), Some(Kind::Mailbox));
    }

    #[test]
    fn levels_never_overshoot() {
        assert_eq!(level_for(1), 0);
        assert_eq!(level_for(2), 1);
        assert_eq!(level_for(3), 1);
        assert_eq!(level_for(1024), 10);
        assert_eq!(level_for(1025), 10);
        assert_eq!(level_for(30 * 86_400_000), 31);
        assert_eq!(level_for(u64::MAX), MAX_LEVEL);
        for r in [1u64, 7, 100, 999, 65_537, 1 << 40] {
            let k = level_for(r);
            assert!(1u64 << k <= r, "level {k} overshoots {r}");
        }
    }

    #[test]
    fn the_hop_is_a_level() {
        let base = AmqpConfig::default;
        assert_eq!(hop_level(&base()), 20);
        // Rounded down to a power of two of milliseconds: 2 s waits in 1,024 ms levels.
        let two = base().with_timer_hop(Duration::from_secs(2));
        assert_eq!(hop_level(&two), 10);
        let longest = base().with_timer_hop(crate::config::LONGEST_TIMER_HOP);
        assert_eq!(hop_level(&longest), MAX_LEVEL);
    }

    #[test]
    fn fnv1a_is_stable() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_dtask_spread_over_task_queues_routes_each_instance_to_one() {
        let one = Topology::new(&AmqpConfig::new("amqp://x").with_prefix("p"));
        assert_eq!(one.tasks("t"), vec!["p.task.t".to_string()]);
        assert_eq!(one.task_for("t", "i-1"), "p.task.t");
        let three = Topology::new(
            &AmqpConfig::new("amqp://x")
                .with_prefix("p")
                .with_task_queues(3),
        );
        assert_eq!(three.tasks("t"), ["p.task.t.0", "p.task.t.1", "p.task.t.2"]);
        assert_eq!(one.packs("t"), vec!["p.packs.t".to_string()]);
        assert_eq!(
            three.packs("t"),
            ["p.packs.t.0", "p.packs.t.1", "p.packs.t.2"]
        );
        for id in ["a", "b", "c", "d"] {
            assert!(three.packs("t").contains(&three.packs_for("t", id)));
        }
        // Each part is declared with its leader where the declaring connection is (the
        // transport connects to node `i mod nodes` for part `i`); other queues are not.
        assert_eq!(three.task_part_of("p.task.it.tagged.2"), Some(2));
        assert_eq!(three.task_part_of("p.task.t.3"), None);
        assert_eq!(three.task_part_of("p.wake.t"), None);
        assert_eq!(one.task_part_of("p.task.t"), None);
        let locator = |t: &Topology, q: &str, kind| {
            t.declaration_of(q, kind)
                .1
                .inner()
                .get("x-queue-leader-locator")
                .cloned()
        };
        assert_eq!(
            locator(&three, "p.task.t.1", Kind::Task),
            Some(text("client-local"))
        );
        assert_eq!(locator(&three, "p.wake.t", Kind::Task), None);
        assert_eq!(locator(&one, "p.task.t", Kind::Task), None);
        let used: std::collections::BTreeSet<String> = (0..60)
            .map(|i| three.task_for("t", &format!("instance-{i}")))
            .collect();
        assert_eq!(used.len(), 3, "60 instances use every queue: {used:?}");
        assert_eq!(three.task_for("t", "x"), three.task_for("t", "x"));
        assert_eq!(three.consumed_kind("p.task.t.2"), Some(Kind::Task));
    }

    #[test]
    fn names() {
        let t = Topology::new(&AmqpConfig::new("amqp://x").with_prefix("p"));
        assert_eq!(t.task("add_one"), "p.task.add_one");
        assert_eq!(t.delay_level(5), "p.delay.5");
        assert!(t.shard_of("abc").starts_with("p.shard."));
        assert_eq!(t.shard_of("abc"), t.shard_of("abc"));
        assert_eq!(t.claim("order-1"), "p.claim.order-1");
    }

    #[test]
    fn dead_letters_replay_only_to_consumed_queues_of_the_prefix() {
        let t = Topology::new(&AmqpConfig::new("amqp://x").with_prefix("p").with_shards(4));
        assert_eq!(t.consumed_kind("p.task.add_one"), Some(Kind::Task));
        assert_eq!(t.consumed_kind("p.wake.add_one"), Some(Kind::Task));
        assert_eq!(t.consumed_kind("p.packs.add_one"), Some(Kind::Task));
        assert_eq!(t.consumed_kind("p.delay.ready"), Some(Kind::DelayReady));
        assert_eq!(t.consumed_kind("p.mbox.i-1"), Some(Kind::Mailbox));
        assert_eq!(t.consumed_kind("p.shard.3"), Some(Kind::Shard));
        for other in [
            "p.shard.4",
            "p.task.",
            "p.dead",
            "p.facts",
            "p.delay.3",
            "q.task.add_one",
            "ptask.x",
        ] {
            assert_eq!(t.consumed_kind(other), None, "{other}");
        }
    }

    #[test]
    fn a_claim_is_its_queue_arguments() {
        let t = Topology::new(&AmqpConfig::new("amqp://x"));
        let max_length = |nonce| {
            let (_, args) = t.declaration(Kind::Claim(nonce));
            args.inner().get("x-max-length").cloned()
        };
        assert_eq!(max_length(7), Some(AMQPValue::LongLongInt(7)));
        assert_ne!(max_length(7), max_length(8));
        // Every nonce the core makes (below 2^62) is a valid, distinct argument.
        assert_eq!(
            max_length((1 << 62) - 1),
            Some(AMQPValue::LongLongInt((1 << 62) - 1))
        );
    }
}
