//! [`AmqpConfig`]: where the broker is and how the topology is shaped.

use std::time::Duration;

/// The broker address used when `AMQP_URL` is not set.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The default of [`AmqpConfig::with_dead_letter_limit`]: how many messages the
/// dead-letter queue keeps.
pub const DEFAULT_DEAD_LETTERS: u32 = 10_000;

/// The default of [`AmqpConfig::with_task_packs`]: how many task messages one AMQP
/// message carries at most.
pub const DEFAULT_TASK_PACKS: u16 = 16;

/// The most bytes of bodies the dead-letter queue keeps (its `x-max-length-bytes`): past
/// it, the oldest letters are dropped.
pub const DEAD_LETTER_BYTES: u64 = 256 * 1024 * 1024;

/// The most bytes of one message's body kept in the dead-letter queue; a longer body is
/// cut there, and the letter says its full size ([`DeadLetter::truncated`]).
///
/// [`DeadLetter::truncated`]: crate::DeadLetter::truncated
pub const DEAD_LETTER_BODY: usize = 64 * 1024;

/// The default of [`AmqpConfig::with_timer_hop`]: 2^20 ms (about 17.5 minutes), the
/// longest a timer waits before a worker looks at it again, and so the longest a cancel
/// takes to reach an instance asleep on a timer.
pub const DEFAULT_TIMER_HOP: Duration = Duration::from_millis(1 << 20);

/// The longest timer hop: the longest delay level's TTL (2^32 ms).
pub(crate) const LONGEST_TIMER_HOP: Duration = Duration::from_millis(1 << 32);

/// The queue name prefix used when `DTASKS_PREFIX` is not set.
pub const DEFAULT_PREFIX: &str = "dtasks";

const DAY: Duration = Duration::from_secs(86_400);

/// Configures an [`AmqpTransport`](crate::AmqpTransport).
///
/// Every process that shares a prefix (workers and clients of one deployment) must use
/// the same prefix, shard count, task queue count, retention periods and mailbox type:
/// the shard and task queue counts route messages, and the retention periods and the mailbox type are queue arguments
/// that RabbitMQ refuses to change on an existing queue.
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
    /// The broker nodes, tried in turn (at least one).
    pub(crate) urls: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) shards: u16,
    pub(crate) mailbox_retention: Duration,
    pub(crate) register_retention: Duration,
    pub(crate) payload_retention: Duration,
    pub(crate) prefetch: u16,
    pub(crate) delay_prefetch: u16,
    pub(crate) publish_channels: usize,
    pub(crate) publish_timeout: Duration,
    pub(crate) timer_hold: Duration,
    pub(crate) timer_hop: Duration,
    pub(crate) redelivery_pause: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) reply_queues: bool,
    pub(crate) existing_only: bool,
    pub(crate) dead_letters: u32,
    pub(crate) quorum_mailboxes: bool,
    pub(crate) task_queues: u16,
    pub(crate) task_packs: u16,
    /// Variables [`AmqpConfig::from_env`] found set but could not read: reported by
    /// [`AmqpConfig::validate`], so that a mistyped setting is an error, not a default.
    pub(crate) env_problems: Vec<String>,
}

impl AmqpConfig {
    /// A configuration for the broker at `url` (e.g. `amqp://user:pass@host:5672/%2f`),
    /// with the defaults for everything else.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            prefix: DEFAULT_PREFIX.to_string(),
            shards: 16,
            mailbox_retention: 7 * DAY,
            register_retention: 7 * DAY,
            payload_retention: 7 * DAY,
            prefetch: 64,
            delay_prefetch: 1024,
            publish_channels: 2,
            publish_timeout: Duration::from_secs(60),
            timer_hold: Duration::from_secs(1),
            timer_hop: DEFAULT_TIMER_HOP,
            redelivery_pause: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            reply_queues: true,
            existing_only: false,
            dead_letters: DEFAULT_DEAD_LETTERS,
            quorum_mailboxes: false,
            task_queues: 1,
            task_packs: DEFAULT_TASK_PACKS,
            env_problems: Vec::new(),
        }
    }

    /// A configuration from the environment: `AMQP_URL` (default [`DEFAULT_URL`]; the
    /// addresses of several nodes of a cluster separated by commas, see
    /// [`AmqpConfig::with_urls`]), `DTASKS_PREFIX` (default [`DEFAULT_PREFIX`]),
    /// `DTASKS_QUORUM_MAILBOXES` (`1` or `true`, `0` or `false`:
    /// [`AmqpConfig::with_quorum_mailboxes`]), `DTASKS_TASK_QUEUES`
    /// ([`AmqpConfig::with_task_queues`]), `DTASKS_TASK_PACKS`
    /// ([`AmqpConfig::with_task_packs`]) and `DTASKS_PUBLISH_CHANNELS`
    /// ([`AmqpConfig::with_publish_channels`]).
    ///
    /// A variable that is set but cannot be read (`DTASKS_TASK_QUEUES=abc`) is not
    /// ignored: [`AmqpTransport::connect`](crate::AmqpTransport::connect) then fails with
    /// an error that names it ([`Error::is_bad_input`](dtasks::Error::is_bad_input)), as
    /// it does for an address that is not an AMQP URL and for an invalid prefix.
    pub fn from_env() -> Self {
        let url = std::env::var("AMQP_URL")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        let urls: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect();
        let mut cfg = Self::new(DEFAULT_URL).with_urls(urls);
        if let Some(p) = std::env::var("DTASKS_PREFIX")
            .ok()
            .filter(|s| !s.is_empty())
        {
            cfg.prefix = p;
        }
        let mut problems = Vec::new();
        if let Some(v) = env_value("DTASKS_QUORUM_MAILBOXES") {
            match v.as_str() {
                "1" | "true" => cfg.quorum_mailboxes = true,
                "0" | "false" => cfg.quorum_mailboxes = false,
                _ => problems.push(format!(
                    "DTASKS_QUORUM_MAILBOXES is `{v}`: use 1, true, 0 or false"
                )),
            }
        }
        if let Some(n) = env_number::<u16>("DTASKS_TASK_QUEUES", &mut problems) {
            cfg.task_queues = n;
        }
        if let Some(n) = env_number::<u16>("DTASKS_TASK_PACKS", &mut problems) {
            cfg.task_packs = n;
        }
        if let Some(n) = env_number::<usize>("DTASKS_PUBLISH_CHANNELS", &mut problems) {
            cfg.publish_channels = n;
        }
        cfg.env_problems = problems;
        cfg
    }

    /// The addresses of several nodes of one RabbitMQ cluster, in the order to try them
    /// (an empty list is ignored). A connection goes to the first node that takes it,
    /// starting from the one that took the last connection; when that node goes away, the
    /// reconnect tries the others in turn, so workers and clients fail over to a live
    /// node. Queues are reached from any node of the cluster.
    ///
    /// ```
    /// use dtasks_amqp::AmqpConfig;
    ///
    /// let cfg = AmqpConfig::default().with_urls([
    ///     "amqp://guest:guest@10.0.0.1:5672/%2f",
    ///     "amqp://guest:guest@10.0.0.2:5672/%2f",
    ///     "amqp://guest:guest@10.0.0.3:5672/%2f",
    /// ]);
    /// assert_eq!(cfg.urls().len(), 3);
    /// assert_eq!(cfg.url(), "amqp://guest:guest@10.0.0.1:5672/%2f");
    /// ```
    pub fn with_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let urls: Vec<String> = urls.into_iter().map(Into::into).collect();
        if !urls.is_empty() {
            self.urls = urls;
        }
        self
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
    /// The shards spread over the consuming workers (each takes about
    /// `shards / workers`), so a deployment with more worker processes than shards
    /// leaves some of them without merges: use at least as many shards as workers.
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

    /// How long the RabbitMQ-only payload store keeps a value stored out of band
    /// (`x-max-age` of the stream `P.payloads`, default 7 days, as results): an instance
    /// that reads a value older than this (a long wait holding a large event or result)
    /// fails with the value missing, and a result older than this cannot be read
    /// ([`Error::is_payload_missing`](dtasks::Error::is_payload_missing)). The broker
    /// keeps the arguments of a stream it declared: change it on a new prefix, or with a
    /// policy.
    pub fn with_payload_retention(mut self, d: Duration) -> Self {
        self.payload_retention = d;
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

    /// The longest a timer waits in one delay level before a worker looks at it again
    /// (default [`DEFAULT_TIMER_HOP`], 2^20 ms: about 17.5 minutes), rounded down to a
    /// power of two of milliseconds; from 1 s to 2^32 ms (about 50 days).
    ///
    /// At each look, a timer of an instance that a cancel record may stop is brought to
    /// a worker before its time, and the sleep ends cancelled
    /// ([`Client::cancel`](dtasks::Client::cancel)): this bounds how long a cancel takes
    /// to stop an instance asleep on a timer. Each look costs a dead-letter and a
    /// confirmed publish, so a timer of `d` costs about `d / hop` more of them: shorter
    /// hops stop sleeping instances sooner, at the price of those hops for every timer
    /// that waits longer than one.
    pub fn with_timer_hop(mut self, d: Duration) -> Self {
        self.timer_hop = d;
        self
    }

    /// How many publisher channels are kept open (default 2). A channel is held only
    /// while a batch is being sent, not while it waits for its confirms, so a few carry
    /// any number of batches at once; more spread the publishes over more of the
    /// broker's channel processes, which can only help when one channel's process is the
    /// limit (not seen on the 2-core machine the benchmark runs on). Fewer channels mean
    /// more confirms per broker acknowledgement: there, 2 channels made the fan-in
    /// benchmark about a third faster than 16.
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

    /// Whether clients on this transport get a reply queue (default `true`): a classic
    /// queue per client, made by its first `Client::call` or start, that brings results
    /// back without a lookup and expires after the result retention without use. A
    /// short-lived process that starts a few instances and exits (a command-line tool)
    /// leaves one behind each time: without reply queues, `Client::call` is a start and a
    /// wait in the instance store, and a handle's result is read from the store.
    pub fn with_reply_queues(mut self, on: bool) -> Self {
        self.reply_queues = on;
        self
    }

    /// Whether [`AmqpTransport::connect`](crate::AmqpTransport::connect) only joins a
    /// deployment that exists (default `false`: it declares the deployment's shared
    /// queues, which a deployment's first process must do). With `true`, connect fails
    /// with [`Error::is_bad_input`](dtasks::Error::is_bad_input) when the prefix has no
    /// dead-letter queue (`P.dead`, declared by every process of a deployment), instead of
    /// making a new deployment under a mistyped prefix: for tools that read a deployment
    /// (the `dtasks` command line), not for its workers.
    pub fn with_existing_deployment(mut self, only: bool) -> Self {
        self.existing_only = only;
        self
    }

    /// Whether mailboxes are quorum queues (default `false`: classic queues). On a
    /// RabbitMQ cluster a classic queue lives on one node, and the fan-ins whose mailboxes
    /// live on a node that goes away wait until it comes back; a quorum mailbox is
    /// replicated (over 3 nodes, or all of a smaller cluster) and its fan-in goes on
    /// through the loss of a node. It costs more broker work per fan-in: each parent's
    /// mailbox is a replicated queue created, written and deleted. Every process of a
    /// deployment must use the same setting (the broker refuses to declare a queue again
    /// with another type).
    pub fn with_quorum_mailboxes(mut self, on: bool) -> Self {
        self.quorum_mailboxes = on;
        self
    }

    /// How many task queues each DTask has (default 1, at most 64). One queue is one
    /// queue leader: one Erlang process on one broker node carries every start and resume
    /// of the DTask, whatever the cluster's size. With `n > 1` a DTask's messages go to
    /// `P.task.<name>.<i>`, `i < n`, by a hash of the instance id, and every worker of the
    /// DTask consumes all `n`; with several broker URLs ([`AmqpConfig::with_urls`]), queue
    /// `i` is declared on node `i mod nodes` (leader locator `client-local`), so the
    /// leaders land on different nodes. Use one queue per broker node for a hot DTask.
    /// Every process of a deployment must use the same count (a client routes to the
    /// queues the workers consume); changing it leaves the messages in the old queues
    /// until workers with the old count take them.
    pub fn with_task_queues(mut self, n: u16) -> Self {
        self.task_queues = n;
        self
    }

    /// How many task messages one AMQP message may carry (default [`DEFAULT_TASK_PACKS`],
    /// 1 to 1024; 1: each alone). The task messages a process publishes to one task
    /// queue at about the same time travel together: those of one publish (a fan-out's
    /// child starts), and those published while an earlier round of the queue is on its
    /// way (the hand-offs of many chains on one worker), in **packs** of up to `n`
    /// messages and 256 KiB of bodies: one publish, one delivery and one ack for the pack
    /// instead of one each. A message with nothing to go with goes alone, at once. The
    /// consumer hands each message of a pack to its worker as a delivery of its own and
    /// acks the pack once every one of them is settled (those put back are published
    /// again alone). A pack is taken by one worker, so a fan-out of `k` children spreads
    /// over at most `k / n` workers at once; a pack delivered again (its worker died) is
    /// split into single messages, which spread. Packs go to a queue of their own per
    /// DTask (`P.packs.<name>`), consumed beside the task queue with a prefetch of twice
    /// [`AmqpConfig::with_prefetch`] in messages; a worker of this version or later
    /// consumes it whatever its own setting, and an older one does not (packs wait there
    /// for an upgraded worker: deploy workers first).
    pub fn with_task_packs(mut self, n: u16) -> Self {
        self.task_packs = n;
        self
    }

    /// How many messages the dead-letter queue `P.dead` keeps (default
    /// [`DEFAULT_DEAD_LETTERS`], at least 1): past it, the oldest is dropped (the queue's
    /// `x-max-length`, with `drop-head` overflow). The queue also keeps at most
    /// [`DEAD_LETTER_BYTES`] of bodies, and a body over [`DEAD_LETTER_BODY`] is cut there
    /// (the letter is then listed with its size and cannot be replayed), so that messages
    /// nobody can handle do not fill the broker. The queue's arguments are set when it is
    /// created: on a queue created by an earlier version, or with another limit, the
    /// transport uses the queue as it is and logs a warning (apply the limit with a
    /// policy, or delete the queue while no worker runs).
    pub fn with_dead_letter_limit(mut self, n: u32) -> Self {
        self.dead_letters = n.max(1);
        self
    }

    /// The prefix this configuration uses.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The broker address this configuration uses (the first, when it has several).
    pub fn url(&self) -> &str {
        &self.urls[0]
    }

    /// Every broker address this configuration uses, in the order they are tried.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The broker addresses for a log or a banner: separated by commas, each password
    /// replaced by `***`.
    ///
    /// ```
    /// use dtasks_amqp::AmqpConfig;
    ///
    /// let cfg = AmqpConfig::new("amqp://app:s3cret@10.0.0.1:5672/%2f");
    /// assert_eq!(cfg.urls_for_display(), "amqp://app:***@10.0.0.1:5672/%2f");
    /// ```
    pub fn urls_for_display(&self) -> String {
        self.urls
            .iter()
            .map(|u| without_password(u))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(problem) = self.env_problems.first() {
            return Err(problem.clone());
        }
        for (i, url) in self.urls.iter().enumerate() {
            // The parser's message, not the address: it may hold a password.
            if let Err(e) = url.parse::<lapin::uri::AMQPUri>() {
                return Err(format!(
                    "broker address {} of {} is not an AMQP URL \
                     (amqp://user:password@host:port/vhost): {e}",
                    i + 1,
                    self.urls.len()
                ));
            }
        }
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
        if self.task_queues == 0 || self.task_queues > 64 {
            return Err(format!(
                "{} task queues per DTask: use 1 to 64",
                self.task_queues
            ));
        }
        if self.task_packs == 0 || self.task_packs > 1024 {
            return Err(format!(
                "task packs of {} messages: use 1 to 1024 (1: each message alone)",
                self.task_packs
            ));
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
        if self.timer_hop < Duration::from_secs(1) || self.timer_hop > LONGEST_TIMER_HOP {
            return Err(format!(
                "a timer hop of {:?} is out of range (1 s to 2^32 ms, about 50 days)",
                self.timer_hop,
            ));
        }
        for (what, d) in [
            ("mailbox retention", self.mailbox_retention),
            ("result retention", self.register_retention),
            ("payload retention", self.payload_retention),
        ] {
            if d < Duration::from_secs(1) {
                return Err(format!("{what} of {d:?} is too short (at least 1 s)"));
            }
        }
        Ok(())
    }
}

/// `url` with the password of its user info (`user:password@`) replaced by `***`.
fn without_password(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let Some(at) = url[start..authority_end].rfind('@').map(|i| start + i) else {
        return url.to_string();
    };
    match url[start..at].find(':').map(|i| start + i) {
        Some(colon) => format!("{}***{}", &url[..=colon], &url[at..]),
        None => url.to_string(),
    }
}

/// The value of the environment variable `name`, when set and not empty.
fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

/// The number in the environment variable `name`, when set; a value that is not one is
/// noted in `problems`.
fn env_number<T: std::str::FromStr>(name: &str, problems: &mut Vec<String>) -> Option<T> {
    let v = env_value(name)?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            problems.push(format!("{name} is `{v}`, not a number"));
            None
        }
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
    fn addresses_are_shown_without_their_passwords() {
        for (url, shown) in [
            ("amqp://u:p@h:5672/%2f", "amqp://u:***@h:5672/%2f"),
            ("amqps://user@h/v", "amqps://user@h/v"),
            ("amqp://h:5672", "amqp://h:5672"),
            ("amqp://u:p@ss@h/v", "amqp://u:***@h/v"),
            ("amqp://h/v@x", "amqp://h/v@x"),
        ] {
            assert_eq!(without_password(url), shown, "{url}");
        }
        let two = AmqpConfig::new("x").with_urls(["amqp://a:1@h1", "amqp://b:2@h2"]);
        assert_eq!(two.urls_for_display(), "amqp://a:***@h1, amqp://b:***@h2");
    }

    #[test]
    fn an_unreadable_variable_or_address_is_refused_without_the_password() {
        let mut cfg = AmqpConfig::new("amqp://x");
        cfg.env_problems = vec!["DTASKS_TASK_QUEUES is `abc`, not a number".into()];
        let e = cfg.validate().expect_err("refused");
        assert!(e.contains("DTASKS_TASK_QUEUES"), "{e}");
        let e = AmqpConfig::new("amqp://x")
            .with_urls([
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "http://u:s3cret@h/",
            ])
            .validate()
            .expect_err("refused");
        assert!(e.contains("address 2 of 2"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        assert_eq!(
            AmqpConfig::new("amqps://u:p@h:5671/v").validate(),
            Ok(()),
            "amqps is an AMQP URL"
        );
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let base = || AmqpConfig::new("amqp://x");
        let refused = [
            base().with_prefix("has space"),
            base().with_shards(0),
            base().with_task_queues(0),
            base().with_task_queues(65),
            base().with_task_packs(0),
            base().with_task_packs(1025),
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

    #[test]
    fn the_timer_hop_is_within_range() {
        let base = || AmqpConfig::new(DEFAULT_URL);
        assert_eq!(
            base().with_timer_hop(Duration::from_secs(1)).validate(),
            Ok(())
        );
        assert_eq!(base().with_timer_hop(LONGEST_TIMER_HOP).validate(), Ok(()));
        for d in [
            Duration::from_millis(999),
            LONGEST_TIMER_HOP + Duration::from_millis(1),
        ] {
            let e = base().with_timer_hop(d).validate().unwrap_err();
            assert!(e.contains("timer hop"), "{e}");
        }
    }
}
