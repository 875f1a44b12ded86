//! The command line: options, and the sizes of the workloads they select.

use std::path::PathBuf;

use anyhow::{bail, Context as _};

use crate::env::Settings;
use crate::report::Sizes;

pub(crate) const USAGE: &str = "\
usage: dtasks-bench [--quick] [--transport memory|amqp|all] [options]

  --quick              smaller workloads, one repetition (under 2 minutes)
  --transport T        memory, amqp or all (default all)
  --only LIST          comma-separated subset of w1a,w1b,call,call0,w2,w3,w4,m1,e1,e2,
                       raw,s1,s2,s3,s4 (no results file; call: W1b with Client::call;
                       call0: the same with every step a delivery (no inline steps); e1: the
                       signal round trip; e2: the cancellation of a fan-out; s1: W1b with
                       start and with call on each instance store; s2: status by id; s3:
                       pages of a million instances; s4: store writes per root)
  --workers N          dtasks workers, and raw baseline consumers (default 2)
  --concurrency N      deliveries each worker handles at once (default 64)
  --prefetch N         task-queue prefetch per worker and raw consumer (default 64)
  --payload BYTES      user payload per step (default 256)
  --steps N            child steps per chain in W1a, W1b, W4 and raw (default 10)
  --chains N           W1b instances and raw chains (default 500)
  --inline N           steps a worker may run inline per delivery (default 32; 0: off)
  --reps N             repetitions of W1b and of the raw baseline (default 5, quick 1)
  --out DIR            where the results go (default bench/results)
  --no-write           print the table only
  --probe              measure the broker's CPU per kind of operation, print it, and stop
  --restate PATH|off   the program of bench/restate that measures Restate's W2 right after
                       W2 on RabbitMQ (default: bench/restate/target/release/dtasks-bench-
                       restate when built; off: the reference figure of an earlier sitting)

The broker is AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f).";

/// The command line.
#[derive(Debug)]
pub(crate) struct Args {
    pub(crate) quick: bool,
    pub(crate) memory: bool,
    pub(crate) amqp: bool,
    pub(crate) only: Option<Vec<String>>,
    pub(crate) settings: Settings,
    pub(crate) reps: Option<usize>,
    pub(crate) chains: Option<usize>,
    pub(crate) out: Option<PathBuf>,
    pub(crate) write: bool,
    pub(crate) worker_mode: bool,
    pub(crate) probe: bool,
    pub(crate) prefix: Option<String>,
    pub(crate) restate: Restate,
}

/// Whether Restate's W2 is measured in the run, and with what.
#[derive(Debug)]
pub(crate) enum Restate {
    /// With `bench/restate`'s program where it is built, else not.
    IfBuilt,
    /// With this program; a run where it fails fails.
    Program(PathBuf),
    /// Not measured.
    Off,
}

impl Restate {
    /// The program to run, if any.
    pub(crate) fn program(&self) -> Option<PathBuf> {
        match self {
            Restate::IfBuilt => Some(crate::restate::default_program()).filter(|p| p.is_file()),
            Restate::Program(p) => Some(p.clone()),
            Restate::Off => None,
        }
    }
}

/// The command line, parsed.
pub(crate) fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        quick: false,
        memory: true,
        amqp: true,
        only: None,
        settings: Settings {
            workers: 2,
            concurrency: 64,
            prefetch: 64,
            payload: 256,
            steps: 10,
            inline_steps: dtasks::DEFAULT_INLINE_STEPS,
        },
        reps: None,
        chains: None,
        out: None,
        write: true,
        worker_mode: false,
        probe: false,
        prefix: None,
        restate: Restate::IfBuilt,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--transport" => match value("--transport")?.as_str() {
                "memory" => (a.memory, a.amqp) = (true, false),
                "amqp" | "rabbitmq" => (a.memory, a.amqp) = (false, true),
                "all" => (a.memory, a.amqp) = (true, true),
                other => bail!("unknown transport `{other}`\n\n{USAGE}"),
            },
            "--only" => {
                let names: Vec<String> = value("--only")?
                    .split(',')
                    .map(|s| s.trim().to_lowercase())
                    .collect();
                const KNOWN: [&str; 15] = [
                    "w1a", "w1b", "call", "call0", "w2", "w3", "w4", "m1", "e1", "e2", "raw", "s1",
                    "s2", "s3", "s4",
                ];
                if let Some(bad) = names.iter().find(|n| !KNOWN.contains(&n.as_str())) {
                    anyhow::bail!(
                        "--only: unknown workload `{bad}` (known: {})",
                        KNOWN.join(",")
                    );
                }
                a.only = Some(names);
            }
            "--workers" => a.settings.workers = value("--workers")?.parse()?,
            "--concurrency" => a.settings.concurrency = value("--concurrency")?.parse()?,
            "--prefetch" => a.settings.prefetch = value("--prefetch")?.parse()?,
            "--payload" => a.settings.payload = value("--payload")?.parse()?,
            "--reps" => a.reps = Some(value("--reps")?.parse()?),
            "--steps" => a.settings.steps = value("--steps")?.parse()?,
            "--inline" => a.settings.inline_steps = value("--inline")?.parse()?,
            "--chains" => a.chains = Some(value("--chains")?.parse()?),
            "--out" => a.out = Some(value("--out")?.into()),
            "--no-write" => a.write = false,
            "--worker-mode" => a.worker_mode = true,
            "--probe" => a.probe = true,
            "--prefix" => a.prefix = Some(value("--prefix")?),
            "--restate" => {
                a.restate = match value("--restate")?.as_str() {
                    "off" => Restate::Off,
                    path => Restate::Program(path.into()),
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`\n\n{USAGE}"),
        }
    }
    if a.settings.workers == 0 || a.settings.concurrency == 0 || a.settings.prefetch == 0 {
        bail!("workers, concurrency and prefetch must be at least 1");
    }
    Ok(a)
}

impl Args {
    /// Whether the workload `w` runs (every one without `--only`).
    pub(crate) fn wants(&self, w: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|x| x == w))
    }

    /// Whether any of the workloads `ws` runs.
    pub(crate) fn wants_any(&self, ws: &[&str]) -> bool {
        ws.iter().any(|w| self.wants(w))
    }

    /// How big each workload is.
    pub(crate) fn sizes(&self) -> Sizes {
        let mut z = self.default_sizes();
        if let Some(n) = self.chains {
            z.w1b = n;
            z.raw_chains = n;
        }
        z
    }

    fn default_sizes(&self) -> Sizes {
        if self.quick {
            Sizes {
                w1a: 10,
                w1b: 500,
                w2_parents: 10,
                w2_width: 100,
                w3: 500,
                w3_delay_ms: 2_000,
                w4: 300,
                raw_chains: 500,
                m1: 1_000,
                m1_amqp: 200,
                reps: self.reps.unwrap_or(1).max(1),
                e1: 100,
                e2: 5,
                e2_width: 100,
                s2: 300,
            }
        } else {
            Sizes {
                w1a: 20,
                w1b: 500,
                w2_parents: 20,
                w2_width: 100,
                w3: 1_000,
                w3_delay_ms: 2_000,
                w4: 500,
                raw_chains: 500,
                m1: 1_000,
                m1_amqp: 1_000,
                reps: self.reps.unwrap_or(5).max(1),
                e1: 300,
                e2: 20,
                e2_width: 100,
                s2: 1_000,
            }
        }
    }
}
