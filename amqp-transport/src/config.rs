//! [`AmqpConfig`]: where the broker is and how the topology is shaped.

use std::time::Duration;

/// The broker address used when `AMQP_URL` is not set.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The queue name prefix used when `DTASKS_PREFIX` is not set.
pub const DEFAULT_PREFIX: &str = "dtasks";

const DAY: Duration = Duration::from_secs(86_400);

/// Configures an [`AmqpTransport`](crate::AmqpTransport).
///
/// Every process that shares a prefix (workers and clients of one deployment) must use
/// the same prefix, shard count and retention periods: the shard count routes doorbells,
/// and the retention periods are queue arguments that RabbitMQ refuses to change on an
/// existing queue.
///
/// ```
/// use std::time::Duration;
/// use dtasks_amqp::AmqpConfig;
///
/// let cfg = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .with_prefix("orders")
///     .with_shards(32)
///     .with_mailbox_retention(Duration::from_secs(30 * 86_400))
///     .with_prefetch(32);
/// assert_eq!(cfg.prefix(), "orders");
/// ```
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) shards: u16,
    pub(crate) mailbox_retention: Duration,
    pub(crate) register_retention: Duration,
    pub(crate) prefetch: u16,
    pub(crate) delay_prefetch: u16,
    pub(crate) publish_channels: usize,
    pub(crate) publish_timeout: Duration,
    pub(crate) timer_hold: Duration,
    pub(crate) redelivery_pause: Duration,
    pub(crate) max_backoff: Duration,
}

impl AmqpConfig {
    /// A configuration for the broker at `url` (e.g. `amqp://user:pass@host:5672/%2f`),
    /// with the defaults for everything else.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_string(),
            shards: 16,
            mailbox_retention: 7 * DAY,
            register_retention: 7 * DAY,
            prefetch: 64,
            delay_prefetch: 1024,
            publish_channels: 16,
            publish_timeout: Duration::from_secs(60),
            timer_hold: Duration::from_secs(1),
            redelivery_pause: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// A configuration from the environment: `AMQP_URL` (default
    /// [`DEFAULT_URL`]) and `DTASKS_PREFIX` (default [`DEFAULT_PREFIX`]).
    pub fn from_env() -> Self {
        let url = std::env::var("AMQP_URL")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        let mut cfg = Self::new(url);
        if let Some(p) = std::env::var("DTASKS_PREFIX")
            .ok()
            .filter(|s| !s.is_empty())
        {
            cfg.prefix = p;
        }
        cfg
    }

    /// The prefix of every queue name (default `dtasks`): 1 to 48 bytes of ASCII letters,
    /// digits and `-_.:`. Deployments with different prefixes share nothing.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How many doorbell shard queues there are (default 16, at most 1024). Doorbells of
    /// one instance always go to the same shard, whose single active consumer handles
    /// them one at a time; more shards allow more instances to be merged in parallel.
    pub fn with_shards(mut self, n: u16) -> Self {
        self.shards = n;
        self
    }

    /// How long an unused mailbox queue lives before the broker deletes it (`x-expires`,
    /// default 7 days): the clean-up of finished instances' mailboxes. Workers touch the
    /// mailbox of every waiting instance every quarter of this period, so a wait may last
    /// longer than it.
    pub fn with_mailbox_retention(mut self, d: Duration) -> Self {
        self.mailbox_retention = d;
        self
    }

    /// How long the result and status registers of an instance live unread, and the claim
    /// register of an id started with `Client::start_with_id` lives without a new start
    /// of the id (`x-expires`, default 7 days): after that the id can be started again.
    pub fn with_result_retention(mut self, d: Duration) -> Self {
        self.register_retention = d;
        self
    }

    /// How many unacknowledged task messages the broker sends to each task queue consumer
    /// (default 64).
    pub fn with_prefetch(mut self, n: u16) -> Self {
        self.prefetch = n;
        self
    }

    /// How many timer messages each consumer re-routes or holds at once (default 1024): a
    /// timer is held, unacked, for its last second.
    pub fn with_delay_prefetch(mut self, n: u16) -> Self {
        self.delay_prefetch = n;
        self
    }

    /// How long before its time a timer leaves the delay levels and is held by a worker,
    /// unacked, until it is due (default 1 s). Holding costs one prefetch slot of the
    /// ready queue's consumer ([`AmqpConfig::with_delay_prefetch`]) for that long and saves
    /// the hops through the short levels (one per level, each a dead-letter and a
    /// confirmed publish); a worker that dies while holding a timer puts it back, and
    /// another worker holds or fires it.
    pub fn with_timer_hold(mut self, d: Duration) -> Self {
        self.timer_hold = d;
        self
    }

    /// How many publisher channels are kept open (default 16): the number of batches
    /// published at the same time.
    pub fn with_publish_channels(mut self, n: usize) -> Self {
        self.publish_channels = n;
        self
    }

    /// How long a publish keeps retrying through connection failures before it returns an
    /// error (default 60 s).
    pub fn with_publish_timeout(mut self, d: Duration) -> Self {
        self.publish_timeout = d;
        self
    }

    /// The prefix this configuration uses.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The broker address this configuration uses.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let p = &self.prefix;
        let ok = !p.is_empty()
            && p.len() <= 48
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !ok {
            return Err(format!(
                "`{p}` is not a valid prefix (1-48 of A-Z a-z 0-9 - _ . :)"
            ));
        }
        if self.shards == 0 || self.shards > 1024 {
            return Err(format!("{} shards: use 1 to 1024", self.shards));
        }
        if self.prefetch == 0 || self.delay_prefetch == 0 || self.publish_channels == 0 {
            return Err("prefetch counts and publish channels must be at least 1".into());
        }
        if self.timer_hold > Duration::from_secs(3600) {
            return Err(format!(
                "a timer hold of {:?} is too long (at most 1 hour: a held timer takes a \
                 prefetch slot of the ready queue's consumer)",
                self.timer_hold
            ));
        }
        for (what, d) in [
            ("mailbox retention", self.mailbox_retention),
            ("result retention", self.register_retention),
        ] {
            if d < Duration::from_secs(1) {
                return Err(format!("{what} of {d:?} is too short (at least 1 s)"));
            }
        }
        Ok(())
    }
}

impl Default for AmqpConfig {
    /// The same as [`AmqpConfig::from_env`].
    fn default() -> Self {
        Self::from_env()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(AmqpConfig::new("amqp://x").validate(), Ok(()));
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let base = || AmqpConfig::new("amqp://x");
        let refused = [
            base().with_prefix("has space"),
            base().with_shards(0),
            base().with_prefetch(0),
            base().with_delay_prefetch(0),
            base().with_publish_channels(0),
            base().with_result_retention(Duration::from_millis(10)),
            base().with_timer_hold(Duration::from_secs(3601)),
        ];
        for cfg in refused {
            let e = cfg.validate().expect_err("refused");
            assert!(!e.is_empty());
        }
        let e = base()
            .with_timer_hold(Duration::from_secs(7200))
            .validate()
            .unwrap_err();
        assert!(e.contains("timer hold"), "{e}");
        assert_eq!(base().with_timer_hold(Duration::ZERO).validate(), Ok(()));
    }
}
