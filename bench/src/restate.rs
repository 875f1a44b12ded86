//! Restate's W2 in the same run: the program of `bench/restate` (one `restate-server`, the
//! Restate Rust SDK serving the same fan-out as [`crate::workloads::w2`]) run as a child
//! process right after this run's own W2, so that the fan-in target compares two figures of
//! one sitting.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context as _};
use serde::Deserialize;

/// Restate's W2, as `bench/restate` measured it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RestateW2 {
    /// `restate-server --version`.
    pub(crate) server: String,
    /// Steps/s of each repetition, in order.
    pub(crate) reps: Vec<f64>,
    /// The median repetition's steps/s (the lower middle for an even count).
    pub(crate) median_steps_per_s: f64,
    pub(crate) parents: usize,
    pub(crate) children: u32,
    pub(crate) payload: usize,
}

/// Where `bench/restate`'s program is when built in place (`cargo build --release` in that
/// folder).
pub(crate) fn default_program() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("restate/target/release/dtasks-bench-restate")
}

/// Runs Restate's W2 with `program`: `parents` fan-outs of `children` at once, `payload`
/// bytes per child, `reps` repetitions. Its log goes to this process's stderr.
pub(crate) async fn run(
    program: &Path,
    parents: usize,
    children: u32,
    payload: usize,
    reps: usize,
) -> anyhow::Result<RestateW2> {
    let out = tokio::process::Command::new(program)
        .args(["--parents", &parents.to_string()])
        .args(["--children", &children.to_string()])
        .args(["--payload", &payload.to_string()])
        .args(["--reps", &reps.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", program.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{} printed no result: {text:?}", program.display()))?;
    let r: RestateW2 = serde_json::from_str(line)
        .with_context(|| format!("reading {}'s result {line:?}", program.display()))?;
    if r.parents != parents || r.children != children || r.payload != payload {
        bail!(
            "{} ran {} × {} children of {} B, not the {parents} × {children} of {payload} B asked for",
            program.display(),
            r.parents,
            r.children,
            r.payload
        );
    }
    if r.reps.len() != reps || !r.median_steps_per_s.is_finite() || r.median_steps_per_s <= 0.0 {
        bail!("{} returned an unusable result: {line}", program.display());
    }
    Ok(r)
}
