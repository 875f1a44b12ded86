//! The conformance suite: the DTask API's scenarios, written once, run on every transport.
//!
//! A transport conforms when every scenario of [`scenarios`] passes on it: calls and
//! chains of children, `when_all` / `when_any` / `join` / `spawn`, errors and panics of
//! children, delays that are never early, `run` executed once and replayed, detected
//! nondeterminism, retries of side effects and child calls in both execution models,
//! instances that can never wake, unknown names and bad input, the state budget, results
//! read by id from another client, a chosen id started once (concurrent starts, a client
//! that died before claiming its id), external events, resume tokens and waits with a
//! timeout, poison messages dead-lettered while the workers keep serving, and a graceful
//! stop.
//!
//! To run it on a new transport:
//!
//! 1. Implement [`Env`] for one scenario's corner of the transport: it starts in-process
//!    workers and clients there (the only place that builds them), lets time pass (see
//!    [`Clock`]), and shows dead letters and registers. What the transport cannot tell, it
//!    says so (`None` for a consumer count or a dead letter's queue, `false` from
//!    [`Env::wait_idle`] or [`Env::shares_deliveries`]), and the scenarios leave out just
//!    that check.
//! 2. Expand the suite in a test file of its own:
//!
//!    ```ignore
//!    //! The conformance suite on my transport.
//!    dtasks_integration_tests::conformance_suite!(my_crate::MyEnv::start().await?);
//!    ```
//!
//!    The expression is evaluated once per scenario, inside an `async fn` returning
//!    [`Outcome`] (so `.await?` works). That crate needs `tokio` (features `macros` and
//!    `rt-multi-thread`), and must not register its own DTasks with
//!    [`dtasks::Registry::all`]: the scenarios' DTasks keep their plain names (`add_one`,
//!    `ship`, ...), which the failure messages they check spell out.
//! 3. Run that test file: one test per scenario, named after it.
//!
//! Here the suite runs on the in-memory transport under virtual time ([`MemoryEnv`]:
//! `cargo test -p dtasks-integration-tests --test conformance_memory`, no broker, about a
//! second), on RabbitMQ ([`AmqpEnv`]: `--test conformance_amqp`, the broker at
//! `AMQP_URL`, real delays, about a minute), and on the simulator ([`SimEnv`]: `--test
//! conformance_sim`, no broker, under a second), so that the simulated RabbitMQ and the
//! real one are held to the same tests.
//!
//! On the simulator each scenario gets a simulated broker of its own (`dtasks::sim::World`)
//! whose worker processes are crashed at broker operations and replaced, whose messages
//! are duplicated, confirms lost, a connection dropped and the broker restarted once,
//! drawn from a seed derived from the scenario's name (`DTASKS_SIM_SEED=<n>` runs every
//! scenario under seed `n` instead; a failing scenario prints its seed, the command that
//! runs it again and the simulator's last events). Its time is tokio's paused clock: it
//! moves by itself whenever every process waits, and timers and publishes may arrive late,
//! so it is a [`Clock::Real`] whose delays cost nothing; the DTasks read it through
//! [`crate::tasks::now_ms`]. Its checks are the scenarios' own, plus the simulator's: no
//! result recorded twice. A few scenarios run without faults ([`FAULT_FREE`]): each counts
//! exactly what at-least-once delivery legitimately repeats (the runs of a `DTask::run`
//! side effect or of a body, retry attempts, duplicate starts dropped). The faults are
//! bounded so that no message can be returned to its queue more often than a worker's
//! redelivery budget (5) allows: 3 crashes, 1 dropped connection and 1 restart at most.
//! What it cannot tell it says as the others do: its dead letters name the simulated
//! queue (`task <name>`), it holds no result or status queues (`Registers::mailbox`
//! only), and it hands each message to a consumer the seed picks rather than in turn.

mod amqp;
mod memory;
pub mod scenarios;
mod sim;

use std::future::Future;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use dtasks::{Client, InstanceId, Registry, WorkerConfig};

pub use amqp::AmqpEnv;
pub use memory::MemoryEnv;
pub use sim::{SimEnv, FAULT_FREE};

use crate::{wait_for, Workers};

/// What a scenario (and a test the suite generates) returns.
pub type Outcome = anyhow::Result<()>;

/// How time passes in an [`Env`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Time moves only by [`Env::advance`]: a timer fires at exactly its time, and never
    /// while the clock stands still.
    Virtual,
    /// Time passes by itself: the wall clock, or the simulator's virtual clock that moves
    /// whenever every process waits (and whose timers may be late). [`Env::advance`]
    /// sleeps, and a check just short of a deadline needs a margin for the time the check
    /// itself takes.
    Real,
}

/// A message the transport moved to its dead letters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message's body.
    pub body: Vec<u8>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The queue it came from, when the transport records it (compare with
    /// [`Env::task_queue`]).
    pub queue: Option<String>,
}

/// The queues a transport holds for one instance id (the instance store keeps the facts
/// of roots without any: each must stay `false` for a root).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    /// A result queue of the id exists.
    pub result: bool,
    /// A status queue of the id exists.
    pub status: bool,
    /// A mailbox of the id exists.
    pub mailbox: bool,
}

/// One scenario's corner of a transport: what the scenarios need from it.
///
/// Every worker and client a scenario uses comes from here, so that a transport builds
/// them in one place.
pub trait Env: Send + Sync {
    /// How time passes here.
    fn clock(&self) -> Clock;

    /// The transport's current time (the one its timers go by).
    fn now(&self) -> SystemTime;

    /// Whether the consumers of one queue each get a share of its deliveries (a broker's
    /// round robin), rather than racing for them (where one may take them all).
    fn shares_deliveries(&self) -> bool;

    /// Starts `n` workers in this process, each with the settings of `config` (its DTasks
    /// among them), and returns once they take deliveries.
    fn workers(
        &self,
        n: usize,
        config: WorkerConfig,
    ) -> impl Future<Output = anyhow::Result<Workers>> + Send;

    /// A new client, as another process would have.
    fn client(&self) -> impl Future<Output = anyhow::Result<Client>> + Send;

    /// A new client that checks names and inputs against `registry` before starting.
    fn checking_client(
        &self,
        registry: Registry,
    ) -> impl Future<Output = anyhow::Result<Client>> + Send {
        async move { Ok(self.client().await?.with_registry(registry)) }
    }

    /// Lets `by` pass: moves a virtual clock (after what is queued ran, and running what
    /// became due), or sleeps.
    fn advance(&self, by: Duration) -> impl Future<Output = ()> + Send;

    /// Waits until nothing is queued or being handled, when the transport can tell (timers
    /// may still wait); returns whether it could.
    fn wait_idle(&self) -> impl Future<Output = bool> + Send;

    /// Puts `body` on the task queue of the DTask `name`, as a broken or hostile publisher
    /// might.
    fn inject_raw(
        &self,
        name: &str,
        body: Vec<u8>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Every message dead-lettered so far, in the order the transport shows them.
    fn dead_letters(&self) -> impl Future<Output = anyhow::Result<Vec<DeadLetter>>> + Send;

    /// The name of the task queue of the DTask `name`, when the transport names its queues.
    fn task_queue(&self, name: &str) -> Option<String>;

    /// The registers held for `id`. Looking must create nothing.
    fn registers(&self, id: &InstanceId) -> impl Future<Output = anyhow::Result<Registers>> + Send;

    /// How many consumers the task queue of `name` has, when the transport can tell.
    fn consumers(&self, name: &str) -> impl Future<Output = anyhow::Result<Option<u32>>> + Send;

    /// Removes what the scenario left on the transport. Stop the workers first.
    fn cleanup(self) -> impl Future<Output = Outcome> + Send;
}

/// Waits until `check` holds. Where the env can tell that nothing is moving any more,
/// `check` is asked once (nothing could change the answer later); otherwise it is polled
/// for up to `limit`.
pub async fn eventually<E, F, Fut>(env: &E, limit: Duration, what: &str, mut check: F) -> Outcome
where
    E: Env,
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    if env.wait_idle().await {
        anyhow::ensure!(check().await?, "{what}: not so once idle");
        return Ok(());
    }
    wait_for(limit, check).await.context(what.to_string())
}

/// Milliseconds since the Unix epoch of `t`.
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Expands into one `#[tokio::test]` per scenario of
/// [`conformance::scenarios`](crate::conformance::scenarios), each running it on the
/// [`Env`](crate::conformance::Env) that `$env` makes (evaluated in every test, inside an
/// `async fn` returning [`Outcome`](crate::conformance::Outcome)), on a multi-thread
/// runtime.
///
/// ```ignore
/// dtasks_integration_tests::conformance_suite!(
///     dtasks_integration_tests::conformance::MemoryEnv::new()
/// );
/// ```
///
/// `start_paused, |scenario| $env` runs each test on a current-thread runtime whose clock
/// is paused (tokio's virtual time, which the simulator needs), with `scenario` bound to
/// the scenario's name while `$env` is evaluated:
///
/// ```ignore
/// dtasks_integration_tests::conformance_suite!(start_paused, |scenario| {
///     dtasks_integration_tests::conformance::SimEnv::for_scenario(scenario)
/// });
/// ```
#[macro_export]
macro_rules! conformance_suite {
    (@each #[$attr:meta] $name:ident => $env:expr; $($scenario:ident),* $(,)?) => {
        $(
            #[$attr]
            async fn $scenario() -> $crate::conformance::Outcome {
                let $name: &str = stringify!($scenario);
                let _ = $name;
                $crate::conformance::scenarios::$scenario($env).await
            }
        )*
    };
    (@list #[$attr:meta] $name:ident => $env:expr) => {
        // Every `pub async fn` of `conformance::scenarios`: one left out here would never
        // run (`tests/conformance_memory.rs` checks the list against the scenario files).
        $crate::conformance_suite!(@each #[$attr] $name => $env;
            a_call_returns_its_result,
            a_three_deep_chain_of_children,
            when_all_of_100_children_on_three_workers,
            when_all_of_nothing_is_empty,
            when_any_returns_the_first_and_leaves_the_rest_running,
            join_of_mixed_types,
            a_spawned_handle_is_awaited_after_a_delay,
            a_child_error_reaches_the_parent_as_a_value,
            a_child_panic_fails_the_parent_instead_of_hanging,
            a_delay_is_never_early,
            delay_until_a_deadline,
            run_executes_once_and_replays_the_recorded_result,
            ordinary_futures_work_inside_a_dtask,
            a_nondeterministic_dtask_is_detected,
            a_future_that_can_never_wake_fails_as_stuck,
            unknown_names_and_bad_input_are_clear_errors,
            a_state_past_the_budget_fails_clearly,
            results_by_id_from_a_second_client_and_status,
            a_chosen_id_starts_once_and_later_starts_are_refused,
            poison_messages_are_dead_lettered_and_the_worker_keeps_serving,
            shutdown_stops_the_workers_and_leaves_no_consumer,
            events_arrive_once_in_the_order_sent,
            a_token_resumes_its_suspension_from_another_client,
            an_event_within_a_timeout,
            retries_wait_between_attempts_and_count_them,
            exhausted_retries_report_the_attempts,
            cancel_stops_a_tree_and_race_losers,
        );
    };
    (start_paused, |$name:ident| $env:expr) => {
        $crate::conformance_suite!(@list #[::tokio::test(start_paused = true)] $name => $env);
    };
    ($env:expr) => {
        $crate::conformance_suite!(
            @list #[::tokio::test(flavor = "multi_thread", worker_threads = 2)] _scenario => $env
        );
    };
}
