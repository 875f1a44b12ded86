//! Queue names and arguments: the whole broker topology in one place.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::config::AmqpConfig;
use crate::error::{AmqpError, Result};

/// The highest delay level: `2^32` ms is about 49.7 days, so levels cover 1 ms to far
/// past 30 days (a longer delay passes through the top level several times).
pub(crate) const MAX_LEVEL: u8 = 32;

/// The segment size of the stream of cancel records.
const CANCELS_SEGMENT_BYTES: i64 = 1 << 20;

/// What a queue is for; decides its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Task,
    Dead,
    DelayLevel(u8),
    DelayReady,
    Shard,
    Mailbox,
    Result,
    Status,
    Reply,
    /// A claim register, declared with the nonce of the start that claims it.
    Claim(u64),
    Cancels,
}

/// Names and declares the queues under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Topology {
    prefix: String,
    shards: u16,
    mailbox_expires: i64,
    register_expires: i64,
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
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn shards(&self) -> u16 {
        self.shards
    }

    pub(crate) fn task(&self, name: &str) -> String {
        format!("{}.task.{name}", self.prefix)
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

    pub(crate) fn mailbox(&self, instance: &str) -> String {
        format!("{}.mbox.{instance}", self.prefix)
    }

    pub(crate) fn result(&self, instance: &str) -> String {
        format!("{}.result.{instance}", self.prefix)
    }

    pub(crate) fn status(&self, instance: &str) -> String {
        format!("{}.status.{instance}", self.prefix)
    }

    /// The claim register of a root started under a chosen id.
    pub(crate) fn claim(&self, instance: &str) -> String {
        format!("{}.claim.{instance}", self.prefix)
    }

    /// The stream of cancel records, followed by every worker.
    pub(crate) fn cancels(&self) -> String {
        format!("{}.cancels", self.prefix)
    }

    /// The reply queue of a client (`Client::call`).
    pub(crate) fn reply(&self, client: &str) -> String {
        format!("{}.reply.{client}", self.prefix)
    }

    /// The options and arguments to declare a queue of `kind`.
    pub(crate) fn declaration(&self, kind: Kind) -> (QueueDeclareOptions, FieldTable) {
        let mut args = FieldTable::default();
        let mut put = |k: &str, v: AMQPValue| {
            args.insert(ShortString::from(k), v);
        };
        let queue_type = match kind {
            Kind::Mailbox | Kind::Result | Kind::Status | Kind::Reply | Kind::Claim(_) => "classic",
            Kind::Cancels => "stream",
            _ => "quorum",
        };
        put("x-queue-type", text(queue_type));
        match kind {
            Kind::Task | Kind::Dead | Kind::DelayReady => {}
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
            Kind::Mailbox => put("x-expires", AMQPValue::LongLongInt(self.mailbox_expires)),
            Kind::Result => {
                put("x-max-length", AMQPValue::LongLongInt(1));
                put("x-overflow", text("reject-publish"));
                put("x-expires", AMQPValue::LongLongInt(self.register_expires));
            }
            Kind::Status => {
                put("x-max-length", AMQPValue::LongLongInt(1));
                put("x-overflow", text("drop-head"));
                put("x-expires", AMQPValue::LongLongInt(self.register_expires));
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
        AmqpError::Invalid(format!(
            "`{s}` is longer than 255 bytes, the broker's limit for names"
        ))
    })
}

pub(crate) fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// 64-bit FNV-1a: a stable hash (the same in every process and build) for shard routing.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
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
    fn fnv1a_is_stable() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
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
