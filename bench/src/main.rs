//! The dtasks benchmark: runs the workloads of `WORKLOADS.md` (W1a chain latency, W1b
//! chain throughput, W2 fan-out/fan-in, W3 timers, W4 recovery) on the in-memory
//! transport and on RabbitMQ, with the raw lapin step hand-off baseline in the same run,
//! and prints one table with the ratios; M1, a long-lived task in the replay and the
//! snapshot model, E1, the signal round trip next to a raw request-reply, and E2, the
//! cancellation of a 100-child fan-out, in small tables of their own. See
//! `bench/README.md`.
//!
//! ```text
//! cargo run --release -p dtasks-bench -- [--quick] [--transport memory|amqp|all]
//! ```

mod args;
mod cancel;
mod counting;
mod env;
mod long;
mod probe;
mod raw;
mod recovery;
mod report;
mod restate;
mod signal;
mod stats;
mod stores;
mod sys;
mod tasks;
mod workloads;

/// The allocator of the whole process: the workers, the client and the raw baseline
/// alike (see `bench/README.md`, "The allocator").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::args::{parse_args, Args};
use crate::env::{fixed_queues, Env, Settings};
use crate::raw::RawSpec;
use crate::report::{Report, Set, Sizes};
use crate::sys::Admin;

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // lapin logs the broker's expected refusals (a passive declare of a queue that
        // does not exist yet) at error level: off unless RUST_LOG asks for it.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The settings of M1's workers: every resume goes through the transport.
fn m1_settings(s: &Settings) -> Settings {
    Settings {
        inline_steps: 0,
        ..s.clone()
    }
}

/// The run of median steps/s among `runs`, with the verification errors of all of them.
fn median_run(runs: Vec<workloads::Run>) -> Option<workloads::Run> {
    let errors: Vec<String> = runs.iter().flat_map(|r| r.errors.clone()).collect();
    let mut median = stats::median_by(&runs, workloads::Run::steps_per_s)?;
    median.errors = errors;
    Some(median)
}

/// A fresh tag for an M1 run.
fn next_tag() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn step(msg: &str) {
    eprintln!("[bench] {msg}");
}

async fn run_memory(a: &Args, z: &Sizes, notes: &mut Vec<String>) -> anyhow::Result<Set> {
    let s = &a.settings;
    let env = Env::memory(s)?;
    let mut set = Set::default();
    step("in-memory: warm-up");
    let warm = workloads::w1b(&env, None, s, 20, 900_000_000).await?;
    if !warm.errors.is_empty() {
        notes.push(format!("in-memory warm-up errors: {:?}", warm.errors));
    }
    if a.wants("w1b") {
        for rep in 0..z.reps {
            step(&format!("in-memory: W1b rep {}", rep + 1));
            set.w1b
                .push(workloads::w1b(&env, None, s, z.w1b, rep as u64 * 10_000_000).await?);
        }
    }
    if a.wants("call") {
        for rep in 0..z.reps {
            step(&format!("in-memory: W1b with call, rep {}", rep + 1));
            set.w1b_call.push(
                workloads::w1b_via(
                    &env,
                    None,
                    s,
                    z.w1b,
                    500_000_000 + rep as u64 * 10_000_000,
                    workloads::Via::Call,
                )
                .await?,
            );
        }
    }
    if a.wants("w1a") {
        step("in-memory: W1a");
        set.w1a = Some(workloads::w1a(&env, None, s, z.w1a).await?);
    }
    if a.wants("w2") {
        step("in-memory: W2");
        let mut runs = Vec::new();
        for _ in 0..z.reps {
            runs.push(workloads::w2(&env, None, s, z.w2_parents, z.w2_width).await?);
        }
        set.w2 = median_run(runs);
    }
    if a.wants("w3") {
        step("in-memory: W3");
        set.w3 = Some(workloads::w3(&env, None, z.w3, z.w3_delay_ms).await?);
    }
    if a.wants("e1") {
        step("in-memory: E1");
        let r = signal::run(&env, None, None, z.e1, 1_000_000).await?;
        step(&format!("in-memory: E1: {}", r.summary()));
        set.e1 = Some(r);
    }
    if a.wants("e2") {
        step("in-memory: E2");
        let r = cancel::run(&env, None, z.e2, z.e2_width, 2_000_000).await?;
        step(&format!("in-memory: E2: {}", r.summary()));
        set.e2 = Some(r);
    }
    if a.wants("m1") {
        let mut runs = Vec::new();
        for model in long::ORDER {
            let r = long::engine(model, z.m1, next_tag()).await;
            step(&format!(
                "engine alone: M1 {}: {}",
                model.label(),
                r.summary()
            ));
            runs.push(r);
        }
        set.m1.extend(long::merge(runs));
    }
    env.stop().await?;
    if a.wants("m1") {
        // M1 measures a resume through the transport: workers that run nothing inline.
        let env = Env::memory(&m1_settings(s))?;
        let mut runs = Vec::new();
        for model in long::ORDER {
            let r = long::transport(&env, "in-memory", model, z.m1, next_tag()).await?;
            step(&format!("in-memory: M1 {}: {}", model.label(), r.summary()));
            runs.push(r);
        }
        set.m1.extend(long::merge(runs));
        env.stop().await?;
    }
    Ok(set)
}

async fn cleanup(admin: &Admin, prefix: &str, mut names: Vec<String>) -> anyhow::Result<()> {
    names.extend(fixed_queues(prefix));
    names.extend(sys::listed_queues(prefix).unwrap_or_default());
    names.sort();
    names.dedup();
    let failed = admin.delete(&names).await?;
    if failed > 0 {
        eprintln!("warning: {failed} queues of {prefix} could not be deleted");
    }
    if let Some(left) = sys::listed_queues(prefix) {
        if !left.is_empty() {
            eprintln!("warning: queues left under {prefix}: {left:?}");
        }
    }
    Ok(())
}

struct AmqpOut {
    set: Set,
    raw: Vec<raw::RawRun>,
    w4: Option<recovery::Recovery>,
    w4_control: Option<recovery::Recovery>,
}

async fn run_amqp(
    a: &Args,
    z: &Sizes,
    admin: &Admin,
    prefix: &str,
    broker: Option<String>,
    notes: &mut Vec<String>,
) -> anyhow::Result<AmqpOut> {
    let s = &a.settings;
    let mut out = AmqpOut {
        set: Set::default(),
        raw: Vec::new(),
        w4: None,
        w4_control: None,
    };
    let needs_env = [
        "w1a", "w1b", "call", "w2", "w3", "e1", "e2", "s1", "s2", "s4",
    ]
    .iter()
    .any(|w| a.wants(w));
    // S1 and S4 on the stream store are W1b's runs (start and call).
    let (w1b, call) = (
        a.wants_any(&["w1b", "s1", "s4"]),
        a.wants_any(&["call", "s1"]),
    );
    let mut second = Vec::new();
    if needs_env || a.wants("raw") {
        let env = Env::amqp(s, prefix, admin, broker.clone()).await?;
        let raw_queue = |rep: usize| format!("{prefix}.raw.{rep}");
        let spec = RawSpec {
            url: sys::amqp_url(),
            queue: String::new(),
            chains: z.raw_chains,
            steps: s.steps,
            payload: s.payload,
            consumers: s.workers,
            prefetch: s.prefetch,
        };
        let result = async {
            if needs_env {
                step("RabbitMQ: warm-up");
                let warm = workloads::w1b(&env, Some(admin), s, 20, 900_000_000).await?;
                if !warm.errors.is_empty() {
                    notes.push(format!("RabbitMQ warm-up errors: {:?}", warm.errors));
                }
                env.delete_registers(Some(admin)).await?;
            }
            // The baseline and W1b alternate, so that both see the same machine.
            for rep in 0..z.reps {
                if a.wants("raw") {
                    step(&format!("RabbitMQ: raw hand-off baseline rep {}", rep + 1));
                    // A fresh queue each time: nothing left over from the previous rep.
                    let spec = RawSpec {
                        queue: raw_queue(rep),
                        ..spec.clone()
                    };
                    raw::declare(admin, &spec.queue).await?;
                    out.raw.push(raw::handoff(&spec, broker.as_deref()).await?);
                }
                // W1b with start and with call take turns going first (S1 compares them,
                // and the first of a pair runs right after the raw baseline).
                for via in workloads::Via::pair(rep) {
                    match via {
                        workloads::Via::Start if w1b => {
                            step(&format!("RabbitMQ: W1b rep {}", rep + 1));
                            let base = rep as u64 * 10_000_000;
                            out.set
                                .w1b
                                .push(workloads::w1b(&env, Some(admin), s, z.w1b, base).await?);
                            // Each rep and each raw baseline on the same broker: no
                            // registers left.
                            env.delete_registers(Some(admin)).await?;
                        }
                        workloads::Via::Call if call => {
                            step(&format!("RabbitMQ: W1b with call, rep {}", rep + 1));
                            let base = 500_000_000 + rep as u64 * 10_000_000;
                            out.set.w1b_call.push(
                                workloads::w1b_via(&env, Some(admin), s, z.w1b, base, via).await?,
                            );
                        }
                        _ => {}
                    }
                }
            }
            if a.wants("w1a") {
                step("RabbitMQ: W1a");
                out.set.w1a = Some(workloads::w1a(&env, Some(admin), s, z.w1a).await?);
                env.delete_registers(Some(admin)).await?;
            }
            if a.wants("w2") {
                step("RabbitMQ: W2");
                let mut runs = Vec::new();
                for rep in 0..z.reps {
                    step(&format!("RabbitMQ: W2 rep {}", rep + 1));
                    runs.push(workloads::w2(&env, Some(admin), s, z.w2_parents, z.w2_width).await?);
                    env.delete_registers(Some(admin)).await?;
                }
                out.set.w2 = median_run(runs);
                if let Some(program) = a.restate.program() {
                    step("Restate: W2 (bench/restate)");
                    let r = restate::run(&program, z.w2_parents, z.w2_width, s.payload as usize, z.reps)
                        .await
                        .context("measuring Restate's W2 (--restate off skips it)")?;
                    step(&format!(
                        "Restate: W2 median {:.0} steps/s ({})",
                        r.median_steps_per_s, r.server
                    ));
                    out.set.restate_w2 = Some(r);
                } else {
                    notes.push(
                        "Restate's W2 was not measured in this run (bench/restate not built, or --restate off): the fan-in target uses the reference figure of an earlier sitting".into(),
                    );
                }
            }
            if a.wants("w3") {
                step("RabbitMQ: W3");
                out.set.w3 = Some(workloads::w3(&env, Some(admin), z.w3, z.w3_delay_ms).await?);
            }
            if a.wants("e1") {
                step("RabbitMQ: E1, alternated with the raw request-reply");
                let mut rt = signal::RawRoundTrip::start(&spec.url, prefix, admin).await?;
                let r = signal::run(&env, Some(admin), Some(&mut rt), z.e1, 1_000_000).await;
                rt.stop().await;
                let r = r?;
                step(&format!("RabbitMQ: E1: {}", r.summary()));
                out.set.e1 = Some(r);
                env.delete_registers(Some(admin)).await?;
            }
            if a.wants("e2") {
                step("RabbitMQ: E2");
                let r = cancel::run(&env, Some(admin), z.e2, z.e2_width, 2_000_000).await?;
                step(&format!("RabbitMQ: E2: {}", r.summary()));
                out.set.e2 = Some(r);
                env.delete_registers(Some(admin)).await?;
            }
            if a.wants("s2") {
                step("RabbitMQ: S2, status by id on the stream store");
                let (r, q) = stores::s2(&env, admin, s, z.s2, None).await?;
                out.set.stores.status_stream = Some(r);
                second = q;
            }
            anyhow::Ok(())
        }
        .await;
        let declared = env.stop().await?;
        step("RabbitMQ: deleting the run's queues");
        let mut names = declared;
        names.append(&mut second);
        names.extend((0..z.reps).map(raw_queue));
        names.extend(signal::raw_queues(prefix));
        cleanup(admin, prefix, names).await?;
        result?;
    }
    if a.wants_any(&["s1", "s2", "s4"]) {
        let wants = |w: &str| a.wants(w);
        stores::pg_section(
            &a.settings,
            &wants,
            (z.w1b, z.reps, z.s2),
            admin,
            prefix,
            broker.clone(),
            &mut out.set.stores,
        )
        .await?;
    }
    if a.wants("call0") {
        // W1b with call on workers that run no step inline, under a prefix of their own.
        let p0 = format!("{prefix}-i0");
        let env = Env::amqp(&m1_settings(s), &p0, admin, broker.clone()).await?;
        let result = async {
            step("RabbitMQ: W1b with call, every step a delivery: warm-up");
            workloads::w1b_via(&env, Some(admin), s, 20, 800_000_000, workloads::Via::Call).await?;
            for rep in 0..z.reps {
                step(&format!(
                    "RabbitMQ: W1b with call, every step a delivery, rep {}",
                    rep + 1
                ));
                out.set.w1b_call0.push(
                    workloads::w1b_via(
                        &env,
                        Some(admin),
                        s,
                        z.w1b,
                        700_000_000 + rep as u64 * 10_000_000,
                        workloads::Via::Call,
                    )
                    .await?,
                );
            }
            anyhow::Ok(())
        }
        .await;
        let declared = env.stop().await?;
        cleanup(admin, &p0, declared).await?;
        result?;
    }
    if a.wants("m1") {
        // M1 measures a resume through the transport: workers that run nothing inline,
        // under a prefix of their own.
        let pm = format!("{prefix}-m1");
        let env = Env::amqp(&m1_settings(s), &pm, admin, broker.clone()).await?;
        let result = async {
            let mut runs = Vec::new();
            for model in long::ORDER {
                let r = long::transport(&env, "RabbitMQ", model, z.m1_amqp, next_tag()).await?;
                step(&format!("RabbitMQ: M1 {}: {}", model.label(), r.summary()));
                runs.push(r);
            }
            out.set.m1.extend(long::merge(runs));
            anyhow::Ok(())
        }
        .await;
        let declared = env.stop().await?;
        cleanup(admin, &pm, declared).await?;
        result?;
    }
    if a.wants("w4") {
        let p4 = format!("{prefix}-w4");
        let result = async {
            step("RabbitMQ: W4 without a kill (control)");
            let control = recovery::run(&p4, admin, s, z.w4, None, None, broker.as_deref()).await?;
            let kill_after = Duration::from_secs_f64((control.cpu.wall * 0.5).max(0.05));
            step(&format!(
                "RabbitMQ: W4 with a worker process SIGKILLed at {:.2} s",
                kill_after.as_secs_f64()
            ));
            let mut killed = recovery::run(
                &p4,
                admin,
                s,
                z.w4,
                Some(kill_after),
                None,
                broker.as_deref(),
            )
            .await?;
            // The control's completion gap after the same moment, for comparison.
            let mut control = control;
            if let Some(k) = killed.kill_at {
                let mut prev = k;
                let mut gap: f64 = 0.0;
                for t in control.done_at.iter().copied().filter(|t| *t >= k) {
                    gap = gap.max(t - prev);
                    prev = t;
                }
                control.stall = Some(gap);
            }
            let mut names = std::mem::take(&mut killed.queues);
            names.append(&mut control.queues);
            anyhow::Ok((control, killed, names))
        }
        .await;
        match result {
            Ok((control, killed, names)) => {
                out.w4_control = Some(control);
                out.w4 = Some(killed);
                cleanup(admin, &p4, names).await?;
            }
            Err(e) => {
                cleanup(admin, &p4, Vec::new()).await?;
                return Err(e);
            }
        }
    }
    if a.wants("s3") {
        stores::list_section(&mut out.set.stores).await?;
    }
    Ok(out)
}

async fn bench(a: Args) -> anyhow::Result<bool> {
    let z = a.sizes();
    let (date, time) = sys::utc_now();
    let (commit, dirty) = sys::commit();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut notes = Vec::new();
    let memory = if a.memory {
        Some(run_memory(&a, &z, &mut notes).await?)
    } else {
        None
    };
    let (mut amqp, mut raw, mut w4, mut w4_control, mut broker) =
        (None, Vec::new(), None, None, None);
    let broker_pid = sys::broker_pid();
    if a.amqp {
        let url = sys::amqp_url();
        let admin = Admin::connect(&url).await?;
        let version = sys::broker_version().unwrap_or_else(|| "(version unknown)".into());
        let files = broker_pid.as_deref().and_then(sys::broker_open_files);
        let node = std::env::var("RABBITMQ_NODENAME")
            .ok()
            .filter(|n| !n.is_empty())
            .map_or(String::new(), |n| format!("node `{n}`, "));
        broker = Some(match files {
            Some(n) => format!("{version} ({node}open-file limit {n})"),
            None if !node.is_empty() => format!("{version} ({})", node.trim_end_matches(", ")),
            None => version,
        });
        let prefix = format!(
            "dtbench-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let out = run_amqp(&a, &z, &admin, &prefix, broker_pid.clone(), &mut notes).await?;
        amqp = Some(out.set);
        raw = out.raw;
        w4 = out.w4;
        w4_control = out.w4_control;
    }
    let report = Report {
        quick: a.quick,
        date,
        time,
        commit,
        dirty,
        cores,
        broker,
        broker_cpu: broker_pid.is_some(),
        settings: a.settings.clone(),
        sizes: z,
        memory,
        amqp,
        raw,
        w4,
        w4_control,
        notes,
    };
    let text = report.render();
    println!("{text}");
    let complete =
        a.memory && a.amqp && a.only.is_none() && a.chains.is_none() && a.settings.steps == 10;
    if a.write && (complete || a.out.is_some()) {
        let dir = a
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
        std::fs::create_dir_all(&dir)?;
        let suffix = if a.quick { "-quick" } else { "" };
        let name = format!("{}-{}{suffix}.md", report.date, report.commit);
        std::fs::write(dir.join(&name), &text)?;
        std::fs::write(dir.join("latest.md"), &text)?;
        eprintln!("[bench] wrote {}", dir.join(name).display());
    }
    let errors = report.errors();
    if !errors.is_empty() {
        eprintln!("[bench] VERIFICATION FAILED: {} errors", errors.len());
    }
    Ok(errors.is_empty())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    init_logs();
    if a.worker_mode {
        let prefix = a.prefix.clone().context("--worker-mode needs --prefix")?;
        return recovery::worker_mode(&prefix, &a.settings).await;
    }
    if a.probe {
        let url = sys::amqp_url();
        let admin = Admin::connect(&url).await?;
        let prefix = format!(
            "dtbench-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let pid = sys::broker_pid();
        println!(
            "{}",
            probe::run(&url, &prefix, &admin, pid.as_deref()).await?
        );
        return Ok(());
    }
    if !bench(a).await? {
        std::process::exit(1);
    }
    Ok(())
}
