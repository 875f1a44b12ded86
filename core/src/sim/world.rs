//! [`World`]: the simulated broker, with worker processes and clients that a test drives
//! itself, outside [`Sim::run`](super::Sim::run)'s plans.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::broker::{lock, Broker, DeadLetter, Msg, QueueRef, Shared};
use super::conn::{settler, SimConn};
use super::faults::Faults;
use super::rng::Rng;
use crate::client::Client;
use crate::error::Error;
use crate::protocol::hooks;
use crate::protocol::InstanceId;
use crate::runtime::{Worker, WorkerConfig, WorkerStats};

/// The simulated broker with the processes a test starts on it: worker processes that
/// faults drawn from the seed crash (each replaced by a new one after a short pause), and
/// clients that faults spare. Time is tokio's clock, which must be paused: build it in a
/// current-thread runtime started paused (`#[tokio::test(start_paused = true)]`). Virtual
/// time then moves whenever every process waits, so delays cost nothing.
///
/// Where [`Sim::run`](super::Sim::run) runs a [`Plan`](super::Plan) for many seeds and
/// checks each run, a `World` is one seed's broker for a test written like any other: the
/// test starts workers and clients, calls and waits, and checks what it likes. The
/// conformance suite runs on it, so that the simulator and a real broker are held to the
/// same tests.
///
/// ```
/// use dtasks::sim::{Faults, World};
/// use dtasks::{dtask, WorkerConfig};
///
/// #[dtask]
/// async fn double(x: u64) -> u64 {
///     x * 2
/// }
///
/// # let rt = tokio::runtime::Builder::new_current_thread()
/// #     .enable_time().start_paused(true).build().unwrap();
/// # rt.block_on(async {
/// let world = World::new(7, Faults::default());
/// let workers = world.workers(2, WorkerConfig::new().register(double))?;
/// let client = world.client();
/// assert_eq!(client.start(double(21)).await?.result().await?, 42);
/// workers.stop().await?;
/// assert!(world.recorded_twice().is_empty());
/// # Ok::<(), dtasks::Error>(())
/// # }).unwrap();
/// ```
pub struct World {
    shared: Shared,
    procs: Arc<Mutex<Procs>>,
    seed: u64,
    tasks: Vec<JoinHandle<()>>,
    _hooks: hooks::sim::Installed,
    _clock: ClockGuard,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// The worker processes of the world, by connection.
struct Procs {
    rng: Rng,
    started: usize,
    skew_ms: u64,
    /// Crashed processes whose replacement is not started yet.
    replacing: usize,
    groups: Vec<Group>,
}

/// The processes one [`World::workers`] started, and those that replaced them.
struct Group {
    config: WorkerConfig,
    stop: watch::Sender<bool>,
    stopping: bool,
    /// Running processes: their worker and task.
    live: BTreeMap<u32, (Worker, JoinHandle<Result<(), Error>>)>,
    /// Every worker the group ran, crashed ones included (for their counters).
    all: Vec<Worker>,
    /// Processes that ended on their own (not crashed by a fault, not stopped).
    ended: Vec<String>,
}

fn locked(procs: &Mutex<Procs>) -> MutexGuard<'_, Procs> {
    procs.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    /// A simulated broker whose faults are drawn from `seed`: they are injected from now
    /// for [`Faults::window`], then stop. Call it inside a current-thread tokio runtime
    /// whose clock is paused, and keep the world on that thread.
    pub fn new(seed: u64, faults: Faults) -> Self {
        let installed = hooks::sim::install(seed, &[]);
        let (deaths_tx, deaths) = mpsc::unbounded_channel();
        let shared: Shared = Arc::new(Mutex::new(Broker::new(seed, faults, deaths_tx, settler)));
        let clock = ClockGuard::set(lock(&shared).epoch);
        let procs = Arc::new(Mutex::new(Procs {
            rng: Rng::new(seed ^ 0x5eed_0fc0_ffee),
            started: 0,
            skew_ms: faults.skew_ms,
            replacing: 0,
            groups: Vec::new(),
        }));
        let mut tasks = vec![tokio::spawn(supervise(
            shared.clone(),
            procs.clone(),
            deaths,
        ))];
        let begin = Instant::now();
        let mut rng = Rng::new(seed ^ 0x0b0b_cafe);
        for _ in 0..faults.restarts {
            let at = Duration::from_millis(rng.below(faults.window.as_millis() as u64 + 1));
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(begin + at).await;
                let mut b = lock(&shared);
                if b.faulty {
                    b.restart(&shared);
                }
            }));
        }
        let calm = shared.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(begin + faults.window).await;
            let mut b = lock(&calm);
            b.faulty = false;
            b.log("faults stop");
        }));
        Self {
            shared,
            procs,
            seed,
            tasks,
            _hooks: installed,
            _clock: clock,
        }
    }

    /// The seed the faults are drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Starts `n` worker processes with the settings of `config`, each on a connection of
    /// its own that faults may hit.
    pub fn workers(&self, n: usize, config: WorkerConfig) -> Result<SimWorkers, Error> {
        config.validate()?;
        let (stop, _) = watch::channel(false);
        let group = {
            let mut p = locked(&self.procs);
            p.groups.push(Group {
                config,
                stop,
                stopping: false,
                live: BTreeMap::new(),
                all: Vec::new(),
                ended: Vec::new(),
            });
            p.groups.len() - 1
        };
        for _ in 0..n {
            spawn_worker(&self.shared, &self.procs, group)?;
        }
        Ok(SimWorkers {
            shared: self.shared.clone(),
            procs: self.procs.clone(),
            group,
        })
    }

    /// A client on a connection of its own, which faults spare (like the client of a
    /// [`Plan`](super::Plan)).
    pub fn client(&self) -> Client {
        let conn = {
            let mut b = lock(&self.shared);
            let n = b.conns.len();
            b.connect(format!("client{n}"), false, 0)
        };
        Client::new(SimConn {
            shared: self.shared.clone(),
            id: conn,
        })
    }

    /// The true virtual time (the clock of a worker may be skewed from it).
    pub fn now(&self) -> SystemTime {
        lock(&self.shared).true_now()
    }

    /// Waits until no task message or doorbell is queued for a live process or held, no
    /// publish is on its way and no crashed process waits for its replacement (timers may
    /// still wait, and messages no process consumes). Virtual time moves meanwhile, as the
    /// processes wait.
    pub async fn wait_idle(&self) {
        loop {
            // What became ready runs first: a worker handed a delivery holds it at once.
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
            if locked(&self.procs).replacing == 0 && lock(&self.shared).idle() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Puts `body` on the task queue of the DTask `name`, as a broken or hostile publisher
    /// might.
    pub fn inject_raw(&self, name: &str, body: Vec<u8>) {
        let mut b = lock(&self.shared);
        b.log(format!("a raw message of {} bytes for {name}", body.len()));
        b.enqueue(
            QueueRef::Task(name.to_string()),
            Msg {
                body,
                message_id: None,
                redeliveries: 0,
                fault_returns: 0,
            },
        );
        b.dispatch(&self.shared);
    }

    /// Every message dead-lettered so far, in order.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.shared).dead_letters.clone()
    }

    /// The name under which [`DeadLetter::queue`] shows the task queue of the DTask `name`.
    pub fn task_queue(&self, name: &str) -> String {
        QueueRef::Task(name.to_string()).to_string()
    }

    /// Whether a mailbox of `instance` exists.
    pub fn has_mailbox(&self, instance: &InstanceId) -> bool {
        lock(&self.shared).has_queue(&QueueRef::Mailbox(instance.clone()))
    }

    /// How many live processes consume the task queue of the DTask `name`.
    pub fn consumers(&self, name: &str) -> u32 {
        lock(&self.shared).consumers(name)
    }

    /// The instances whose result the store took more than once (it must take each once).
    pub fn recorded_twice(&self) -> Vec<InstanceId> {
        lock(&self.shared)
            .results_taken
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Worker crashes injected so far.
    pub fn crashes(&self) -> u32 {
        lock(&self.shared).crashes
    }

    /// Deliveries beyond the first of a message so far (redeliveries and duplicates).
    pub fn extra_deliveries(&self) -> u64 {
        lock(&self.shared).extra_deliveries
    }

    /// Every event so far, in order, with its virtual time.
    pub fn trace(&self) -> Vec<String> {
        lock(&self.shared).trace.clone()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let mut p = locked(&self.procs);
        for g in &mut p.groups {
            g.stopping = true;
            for (_, (_, h)) in std::mem::take(&mut g.live) {
                h.abort();
            }
        }
    }
}

/// Worker processes a [`World`] started: stop them with [`SimWorkers::stop`].
pub struct SimWorkers {
    shared: Shared,
    procs: Arc<Mutex<Procs>>,
    group: usize,
}

impl std::fmt::Debug for SimWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimWorkers").finish_non_exhaustive()
    }
}

impl SimWorkers {
    /// The counters of every worker the group ran, crashed and replaced ones included, in
    /// the order they started.
    pub fn stats(&self) -> Vec<WorkerStats> {
        locked(&self.procs).groups[self.group]
            .all
            .iter()
            .map(Worker::stats)
            .collect()
    }

    /// Whether no process ended on its own: a crashed process counts as running, being
    /// replaced.
    pub fn running(&self) -> bool {
        let p = locked(&self.procs);
        let g = &p.groups[self.group];
        !g.stopping && g.ended.is_empty() && g.live.values().all(|(_, h)| !h.is_finished())
    }

    /// Stops the processes (gracefully: each finishes what it handles) and closes their
    /// connections; returns the first error a process ended with.
    pub async fn stop(self) -> Result<(), Error> {
        let live = {
            let mut p = locked(&self.procs);
            let g = &mut p.groups[self.group];
            g.stopping = true;
            let _ = g.stop.send(true);
            std::mem::take(&mut g.live)
        };
        let mut first = Ok(());
        for (conn, (_, mut handle)) in live {
            // A process may crash while it stops (a fault at its last acks): it then waits
            // forever, and is ended here rather than replaced.
            let ended = loop {
                tokio::select! {
                    ended = &mut handle => break ended,
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {
                        if lock(&self.shared).session(conn).is_none() {
                            handle.abort();
                            break Ok(Ok(()));
                        }
                    }
                }
            };
            match ended {
                Ok(Err(e)) if first.is_ok() => first = Err(e),
                Err(e) if e.is_panic() && first.is_ok() => {
                    first = Err(Error::transport(format!("a worker panicked: {e}")));
                }
                _ => {}
            }
            lock(&self.shared).disconnect(&self.shared, conn);
        }
        if let Some(why) = locked(&self.procs).groups[self.group].ended.first() {
            if first.is_ok() {
                first = Err(Error::transport(format!("a worker ended: {why}")));
            }
        }
        first
    }
}

fn spawn_worker(shared: &Shared, procs: &Arc<Mutex<Procs>>, group: usize) -> Result<(), Error> {
    let mut p = locked(procs);
    p.started += 1;
    let skew = p.skew_ms;
    let skew = p.rng.below(2 * skew + 1) as i64 - skew as i64;
    let name = format!("w{}", p.started);
    let conn = lock(shared).connect(name, true, skew);
    let g = &mut p.groups[group];
    let worker = Worker::new(
        SimConn {
            shared: shared.clone(),
            id: conn,
        },
        g.config.clone(),
    )?;
    let mut stop = g.stop.subscribe();
    let (run, procs2) = (worker.clone(), procs.clone());
    let handle = tokio::spawn(async move {
        let r = run
            .run_until(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        let mut p = locked(&procs2);
        let g = &mut p.groups[group];
        if !g.stopping {
            g.live.remove(&conn);
            g.ended.push(match &r {
                Ok(()) => "it returned".to_string(),
                Err(e) => e.to_string(),
            });
        }
        r
    });
    g.all.push(worker.clone());
    g.live.insert(conn, (worker, handle));
    Ok(())
}

/// Replaces each crashed process after a short pause.
async fn supervise(
    shared: Shared,
    procs: Arc<Mutex<Procs>>,
    mut deaths: mpsc::UnboundedReceiver<u32>,
) {
    while let Some(conn) = deaths.recv().await {
        let found = {
            let mut p = locked(&procs);
            let pause = Duration::from_millis(1 + p.rng.below(50));
            let found = p.groups.iter_mut().enumerate().find_map(|(i, g)| {
                let (_, handle) = g.live.remove(&conn)?;
                handle.abort();
                (!g.stopping).then_some((i, pause))
            });
            if found.is_some() {
                p.replacing += 1;
            }
            found
        };
        if let Some((group, pause)) = found {
            let (shared, procs) = (shared.clone(), procs.clone());
            tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                let stopping = {
                    let mut p = locked(&procs);
                    p.replacing -= 1;
                    p.groups[group].stopping
                };
                if stopping {
                    return;
                }
                if let Err(e) = spawn_worker(&shared, &procs, group) {
                    lock(&shared).log(format!("the worker cannot be built: {e}"));
                }
            });
        }
    }
}

thread_local! {
    /// The epoch of the simulated run or world on this thread, and when it began.
    static CLOCK: std::cell::Cell<Option<(Instant, SystemTime)>> =
        const { std::cell::Cell::new(None) };
}

/// Sets the simulated clock of this thread until dropped.
pub(super) struct ClockGuard(Option<(Instant, SystemTime)>);

impl ClockGuard {
    pub(super) fn set(epoch: SystemTime) -> Self {
        Self(CLOCK.with(|c| c.replace(Some((Instant::now(), epoch)))))
    }
}

impl Drop for ClockGuard {
    fn drop(&mut self) {
        CLOCK.with(|c| c.set(self.0));
    }
}

/// The true time of the simulated run or [`World`] on this thread (the clock of no
/// worker in particular, so without skew); `None` on any other thread. A test's DTasks
/// read it (inside [`DTask::run`](crate::DTask::run)) to measure virtual time on the
/// simulator and fall back on the wall clock elsewhere.
pub fn now() -> Option<SystemTime> {
    CLOCK
        .with(|c| c.get())
        .map(|(start, epoch)| epoch + (Instant::now() - start))
}
