//! The scenarios: each starts the workers it needs on the [`Env`] it is given,
//! makes its checks, stops the workers and cleans up. Their DTasks live next to them; the
//! few that several scenarios share live here.
//!
//! A scenario's delays are short (at most a few hundred milliseconds, 2.5 s for the
//! longest), since on a real clock they really pass.

mod calls;
mod cancel;
mod clients;
mod events;
mod retry;
mod time;

use std::time::Duration;

use dtasks::{dtask, DTask, Registry, WorkerConfig};
use serde::{Deserialize, Serialize};

use super::Env;
use crate::Workers;

pub use calls::*;
pub use cancel::*;
pub use clients::*;
pub use events::*;
pub use retry::*;
pub use time::*;

#[dtask]
async fn add_one(x: u64) -> u64 {
    x + 1
}

#[dtask]
async fn sleep_then(ms: u64, value: String) -> String {
    DTask::delay(Duration::from_millis(ms)).await;
    value
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Parcel {
    id: u32,
}

#[dtask]
async fn ship(p: Parcel) -> Parcel {
    p
}

/// The bound for what a real clock must see happen "soon".
const SOON: Duration = Duration::from_secs(5);

/// Starts `n` workers of `registry` with the default settings.
async fn workers<E: Env>(env: &E, n: usize, registry: Registry) -> anyhow::Result<Workers> {
    env.workers(n, WorkerConfig::new().registry(&registry))
        .await
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
