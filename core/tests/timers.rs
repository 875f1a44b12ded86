//! A relative timer counts from the moment it is awaited, not from the start of the step
//! that awaits it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dtasks::{dtask, DTask, Runtime, WorkerConfig};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Does `work_ms` of local work, then waits `delay_ms`: returns when the work ended and
/// when the instance resumed.
#[dtask(name = "timers.work_then_wait")]
async fn work_then_wait(work_ms: u64, delay_ms: u64) -> (u64, u64) {
    let worked = DTask::run(move || async move {
        tokio::time::sleep(Duration::from_millis(work_ms)).await;
        now_ms()
    })
    .await;
    DTask::delay(Duration::from_millis(delay_ms)).await;
    let resumed = DTask::run(|| async { now_ms() }).await;
    (worked, resumed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_work_before_a_delay_does_not_shorten_it() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register(work_then_wait))?;
    let (worked, resumed) = rt.client().call(work_then_wait(300, 200)).await?;
    assert!(
        resumed >= worked + 200,
        "the timer fired {} ms after the work ended, not 200",
        resumed.saturating_sub(worked)
    );
    Ok(())
}
