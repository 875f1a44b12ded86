//! At-least-once delivery: every message delivered twice still completes each instance
//! exactly once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use dtasks::{dtask, DTask, Runtime, WorkerConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// How many times each instance's final step ran its completion side effect, by key.
static COMPLETIONS: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

fn completions(key: &str) -> usize {
    COMPLETIONS
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(key).copied())
        .unwrap_or(0)
}

async fn record_completion(key: String) -> u64 {
    DTask::run(move || async move {
        *COMPLETIONS
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .entry(key)
            .or_default() += 1;
        1u64
    })
    .await
}

#[dtask]
async fn leaf(x: u64) -> u64 {
    x + 1
}

#[dtask]
async fn link(x: u64) -> u64 {
    leaf(x).await * 2
}

#[dtask]
async fn chain(key: String, x: u64) -> u64 {
    let v = link(x).await;
    DTask::yield_now().await;
    DTask::delay(Duration::from_millis(1)).await;
    record_completion(key).await;
    v
}

#[dtask]
async fn gather(key: String, n: u64) -> u64 {
    let handle = DTask::spawn(leaf(1000));
    let parts = DTask::when_all((0..n).map(leaf)).await;
    let extra = handle.await;
    record_completion(key).await;
    parts.iter().sum::<u64>() + extra
}

fn runtime(dedupe: bool, workers: usize) -> Result<Runtime, dtasks::Error> {
    let mut config = WorkerConfig::new()
        .register(leaf)
        .register(link)
        .register(chain)
        .register(gather);
    if !dedupe {
        config = config.dedupe_window(0);
    }
    Runtime::builder(config)
        .duplicate_delivery()
        .workers(workers)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_delivery_of_every_message_completes_each_instance_once() -> TestResult {
    let rt = runtime(true, 1)?;
    let c = rt.client();
    let mut chains = Vec::new();
    for i in 0..20u64 {
        chains.push((i, c.start(chain(format!("c{i}"), i)).await?));
    }
    let mut fans = Vec::new();
    for i in 0..5u64 {
        fans.push((i, c.start(gather(format!("g{i}"), 40)).await?));
    }
    for (i, h) in chains {
        assert_eq!(h.result().await?, (i + 1) * 2);
    }
    for (_, h) in fans {
        assert_eq!(h.result().await?, (1..=40).sum::<u64>() + 1001);
    }
    rt.wait_idle().await;
    for i in 0..20 {
        assert_eq!(completions(&format!("c{i}")), 1, "chain {i}");
    }
    for i in 0..5 {
        assert_eq!(completions(&format!("g{i}")), 1, "gather {i}");
    }
    assert!(rt.transport().dead_letters().is_empty());
    Ok(())
}

/// Without the worker's dedupe window, duplicates reach the engine itself and converge at
/// the durable merge points: a parent's mailbox merges each child result once, and a
/// root's result register takes the first result only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_converge_without_the_dedupe_window() -> TestResult {
    let rt = runtime(false, 2)?;
    let c = rt.client();
    let mut fans = Vec::new();
    for i in 0..4u64 {
        fans.push((i, c.start(gather(format!("nd-g{i}"), 30)).await?));
    }
    let h = c.start(chain("nd-c".into(), 5)).await?;
    for (_, f) in fans {
        assert_eq!(f.result().await?, (1..=30).sum::<u64>() + 1001);
    }
    assert_eq!(h.result().await?, 12);
    rt.wait_idle().await;
    // The fan-in parent resumed once for its final merge: its completion ran once.
    for i in 0..4 {
        assert_eq!(completions(&format!("nd-g{i}")), 1, "gather {i}");
    }
    // Duplicated chain steps were really executed, and their results were refused.
    assert!(
        completions("nd-c") > 1,
        "the duplicate mode duplicated nothing"
    );
    let stats = rt.stats();
    // Every extra completion of the chain root was refused by its result register (the
    // fan-in roots finished once each, so they add none).
    assert_eq!(
        stats.duplicate_results as usize,
        completions("nd-c") - 1,
        "{stats:?}"
    );
    assert!(rt.transport().dead_letters().is_empty());
    Ok(())
}
