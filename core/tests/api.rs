//! What the embedded in-memory `Runtime` adds to the DTask API: virtual time over a month,
//! its builder's settings, its client and its shutdown. The DTask API's scenarios run on
//! every transport, this one included, in the conformance suite
//! (`integration-tests/src/conformance`).

use std::time::Duration;

use dtasks::{dtask, Call, DTask, Runtime, Status, Transport, WorkerConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[dtask]
async fn add_one(x: u64) -> u64 {
    x + 1
}

#[dtask]
async fn thirty_days() -> String {
    DTask::delay(Duration::from_secs(30 * 86_400)).await;
    "a month later".to_string()
}

#[tokio::test]
async fn a_30_day_delay_under_virtual_time() -> TestResult {
    let rt = Runtime::builder(WorkerConfig::new().register(thirty_days))
        .virtual_time()
        .build()?;
    let h = rt.client().start(thirty_days()).await?;
    rt.wait_idle().await;
    assert_eq!(h.status().await?, Status::Suspended);
    assert_eq!(rt.transport().pending_timers().await?, Some(1));
    // Not early: a second short of 30 days, nothing happens.
    rt.advance(Duration::from_secs(30 * 86_400 - 1));
    rt.wait_idle().await;
    assert_eq!(h.try_result().await?, None);
    rt.advance(Duration::from_secs(1));
    assert_eq!(h.result().await?, "a month later");
    Ok(())
}

/// A result of `kib` KiB: past the budget, the result itself is the message too large.
#[dtask]
async fn kibibytes(kib: usize) -> Vec<u8> {
    vec![7; kib * 1024]
}

#[tokio::test]
async fn the_runtime_gives_its_workers_the_state_budget() -> TestResult {
    let rt = Runtime::new(
        WorkerConfig::new()
            .register(kibibytes)
            .state_budget(16 * 1024),
    )?;
    let small = rt.client().start(kibibytes(3)).await?.result().await?;
    assert_eq!(small.len(), 3 * 1024);
    let err = rt
        .client()
        .start(kibibytes(100))
        .await?
        .result()
        .await
        .unwrap_err();
    let f = err.failure().expect("failed");
    assert!(f.is_state_too_large(), "{f}");
    assert!(f.message().contains("16384"), "{f}");
    Ok(())
}

#[tokio::test]
async fn the_runtime_checks_names_at_the_start_and_refuses_plain_functions() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register(add_one))?;
    // Its client knows the registered DTasks.
    let err = rt
        .client()
        .start_by_name("no_such_dtask", vec![0x90])
        .await
        .unwrap_err();
    assert!(err.is_unknown_dtask(), "{err}");
    assert!(err.to_string().contains("no_such_dtask"));
    // Registering a plain function that returns a call is refused, with every other
    // problem of the configuration. (Starting something that is not a call does not
    // compile: tests/ui/start_a_delay.rs.)
    fn not_a_dtask(x: u64) -> Call<u64> {
        add_one(x)
    }
    fn nor_this(x: u64) -> Call<u64> {
        add_one(x + 1)
    }
    let err = Runtime::new(
        WorkerConfig::new()
            .register(add_one)
            .register(not_a_dtask)
            .register(nor_this),
    )
    .unwrap_err();
    assert!(err.is_config(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("2 problems"), "{msg}");
    assert!(
        msg.contains("not_a_dtask") && msg.contains("nor_this"),
        "{msg}"
    );
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_the_workers() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register(add_one))?;
    assert_eq!(rt.client().start(add_one(1)).await?.result().await?, 2);
    rt.shutdown().await?;
    Ok(())
}
