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
    parse(
        &String::from_utf8_lossy(&out.stdout),
        parents,
        children,
        payload,
        reps,
    )
    .with_context(|| format!("reading the result of {}", program.display()))
}

/// The result in the program's output `text` (its last line that holds a JSON object),
/// checked against what was asked for.
fn parse(
    text: &str,
    parents: usize,
    children: u32,
    payload: usize,
    reps: usize,
) -> anyhow::Result<RestateW2> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("no result in {text:?}"))?;
    let r: RestateW2 = serde_json::from_str(line).with_context(|| format!("in {line:?}"))?;
    if r.parents != parents || r.children != children || r.payload != payload {
        bail!(
            "it ran {} × {} children of {} B, not the {parents} × {children} of {payload} B asked for",
            r.parents,
            r.children,
            r.payload
        );
    }
    let usable = |x: f64| x.is_finite() && x > 0.0;
    if r.reps.len() != reps || !r.reps.iter().all(|&x| usable(x)) || !usable(r.median_steps_per_s) {
        bail!("{} repetitions asked for, an unusable result: {line}", reps);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::parse;

    const LINE: &str = r#"{"server":"restate-server 1.7.12","reps":[2927.8,3181.4,2941.8],"median_steps_per_s":2941.8,"parents":20,"children":100,"payload":256}"#;

    #[test]
    fn the_last_json_line_is_the_result() {
        let text = format!("warming up\n{LINE}\n");
        let r = parse(&text, 20, 100, 256, 3).expect("a result");
        assert_eq!(r.server, "restate-server 1.7.12");
        assert_eq!(r.reps, vec![2927.8, 3181.4, 2941.8]);
        assert_eq!(r.median_steps_per_s, 2941.8);
    }

    #[test]
    fn a_result_of_other_sizes_or_repetitions_is_refused() {
        assert!(parse(LINE, 10, 100, 256, 3).is_err());
        assert!(parse(LINE, 20, 50, 256, 3).is_err());
        assert!(parse(LINE, 20, 100, 64, 3).is_err());
        assert!(parse(LINE, 20, 100, 256, 5).is_err());
    }

    #[test]
    fn no_result_or_an_unusable_one_is_an_error() {
        assert!(parse("the server did not start\n", 20, 100, 256, 3).is_err());
        assert!(parse("{not json", 20, 100, 256, 3).is_err());
        let zero = LINE.replace("2941.8,\"parents", "0.0,\"parents");
        assert!(parse(&zero, 20, 100, 256, 3).is_err());
    }
}
