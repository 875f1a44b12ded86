//! `DTask::continue_as_new`: an instance ends its run and continues as a fresh run of
//! itself (same id, new input, empty journal), in both execution models, on the in-memory
//! runtime and through the single-instance executor that measures the state.

use std::time::Duration;

use dtasks::test_util::{run_replay, run_snapshot, Op, World};
use dtasks::{dtask, DTask, Failure, InstanceId, Runtime, Status, WorkerConfig};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[dtask(name = "can.charge")]
async fn charge(month: u32) -> u64 {
    u64::from(month) * 10
}

/// A subscription billed every month: two charges and a timer per run, then the next
/// month is a run of its own.
#[dtask(name = "can.billing")]
async fn billing(month: u32, total: u64, until: u32) -> u64 {
    let a = charge(month).await;
    let b = charge(month + 1).await;
    DTask::delay(Duration::from_millis(1)).await;
    let total = total + a + b;
    if month >= until {
        return total;
    }
    DTask::continue_as_new(billing(month + 1, total, until)).await
}

#[dtask(snapshot, name = "can.billing_snap")]
async fn billing_snap(month: u32, total: u64, until: u32) -> u64 {
    let a = charge(month).await;
    let b = charge(month + 1).await;
    DTask::delay(Duration::from_millis(1)).await;
    let total = total + a + b;
    if month >= until {
        return total;
    }
    DTask::continue_as_new(billing_snap(month + 1, total, until)).await
}

/// The same work as `billing` in one run: its journal holds every month.
#[dtask(name = "can.billing_loop")]
async fn billing_loop(until: u32) -> u64 {
    let mut total = 0;
    for month in 1..=until {
        let a = charge(month).await;
        let b = charge(month + 1).await;
        DTask::delay(Duration::from_millis(1)).await;
        total += a + b;
    }
    total
}

/// The total of `billing(first, total, until)`.
fn billed(first: u32, total: u64, until: u32) -> u64 {
    total
        + (first..=until)
            .map(|m| u64::from(m) * 10 + u64::from(m + 1) * 10)
            .sum::<u64>()
}

fn expected(until: u32) -> u64 {
    billed(1, 0, until)
}

/// Answers child calls the way `charge` would, and everything else with `()`.
struct Charges;

impl World for Charges {
    fn resolve(&mut self, op: &Op) -> Result<Vec<u8>, Failure> {
        Ok(match &op.name {
            Some(_) => {
                let (month,): (u32,) = rmp_serde::from_slice(&op.input).expect("a month");
                rmp_serde::to_vec(&(u64::from(month) * 10))
            }
            None => rmp_serde::to_vec(&()),
        }
        .expect("encodes"))
    }
    fn pick(&mut self, _: &[u32]) -> usize {
        0
    }
}

const RUNS: u32 = 1_000;
/// The first month and total of the long loops: numbers whose MessagePack encoding is as
/// wide in the last run as in the first, so that sizes compare the runs' states only.
const FIRST: u32 = 100_000;
const TOTAL: u64 = 1 << 40;

fn long_input() -> Vec<u8> {
    rmp_serde::to_vec(&(FIRST, TOTAL, FIRST + RUNS - 1)).unwrap()
}

/// The state that starts run 1,000 is the size of the one that starts run 2, but for the
/// counters the instance keeps across runs (its operations' positions, its run, the
/// results it recorded and their order in the journal, its steps), whose MessagePack
/// encodings grow from one byte to three; the messages of the last run are those of the
/// second, within the same; and the same work in one run grows with every month.
fn assert_bounded(name: &str, trace: &dtasks::test_util::Trace, one_run: Option<usize>) {
    assert_eq!(
        trace.result,
        Ok(rmp_serde::to_vec(&billed(FIRST, TOTAL, FIRST + RUNS - 1)).unwrap()),
        "{name}"
    );
    assert_eq!(
        trace.run_sizes.len(),
        RUNS as usize - 1,
        "{name}: hand-offs"
    );
    let (second, last) = (trace.run_sizes[0], trace.run_sizes[RUNS as usize - 2]);
    println!("{name}: run 2 starts with {second} B, run {RUNS} with {last} B");
    assert!(
        last <= second + 8 && last >= second,
        "{name}: run {RUNS} starts with {last} B, run 2 with {second} B"
    );
    // Three suspensions per run, the same in run 2 and in the last run.
    let sizes = &trace.message_sizes;
    assert_eq!(sizes.len(), 3 * RUNS as usize, "{name}: suspensions");
    for k in 0..3 {
        let (a, b) = (sizes[3 + k], sizes[sizes.len() - 3 + k]);
        println!("{name}: suspension {k}: run 2 {a} B, run {RUNS} {b} B");
        assert!(
            b <= a + 12 && b >= a,
            "{name}: suspension {k}: run 2 {a} B, last run {b} B"
        );
    }
    if let Some(one_run) = one_run {
        println!("{name}: the same work in one run ends at {one_run} B");
        assert!(one_run > 100 * last, "{one_run} B in one run vs {last} B");
    }
}

#[tokio::test]
async fn a_replay_loop_of_1000_runs_keeps_a_bounded_state() {
    let trace = run_replay("can.billing", long_input(), &mut Charges).await;
    let one_run = run_replay(
        "can.billing_loop",
        rmp_serde::to_vec(&(RUNS,)).unwrap(),
        &mut Charges,
    )
    .await;
    assert_eq!(
        one_run.result,
        Ok(rmp_serde::to_vec(&expected(RUNS)).unwrap())
    );
    assert_bounded("replay", &trace, Some(one_run.max_message));
}

#[tokio::test]
async fn a_snapshot_loop_of_1000_runs_keeps_a_bounded_state() {
    let trace = run_snapshot("can.billing_snap", long_input(), &mut Charges).await;
    assert_bounded("snapshot", &trace, None);
}

fn runtime() -> Result<Runtime, dtasks::Error> {
    Runtime::builder(
        WorkerConfig::new()
            .register(charge)
            .register(billing)
            .register(billing_snap)
            .register(counter)
            .register(counter_snap)
            .register(wrong_continue),
    )
    .workers(2)
    .build()
}

#[tokio::test]
async fn waiters_see_the_last_runs_result_and_the_store_counts_the_runs() -> TestResult {
    let rt = runtime()?;
    let client = rt.client();
    for (model, snapshot) in [("replay", false), ("snapshot", true)] {
        let until = 50;
        let call = || {
            if snapshot {
                billing_snap(1, 0, until)
            } else {
                billing(1, 0, until)
            }
        };
        // A call waits for the last run's result.
        assert_eq!(client.call(call()).await?, expected(until), "{model}");
        // So does a handle, and a read by id; the store counts the runs.
        let handle = client.start(call()).await?;
        assert_eq!(handle.result().await?, expected(until), "{model}");
        let info = client.instance(handle.id()).await?;
        assert_eq!(info.status, Status::Succeeded, "{model}");
        assert_eq!(info.runs, until, "{model}");
        assert_eq!(info.result::<u64>().transpose()?, Some(expected(until)));
        assert_eq!(info.duplicate_results, 0, "{model}");
        let again = client.handle::<u64>(handle.id().clone()).result().await?;
        assert_eq!(again, expected(until), "{model}");
    }
    Ok(())
}

/// Counts events across runs: each run takes one event and continues; events sent
/// before the next run waits are kept for it.
#[dtask(name = "can.counter")]
async fn counter(seen: u32, until: u32) -> u32 {
    let n: u32 = DTask::event("tick").await;
    let seen = seen + n;
    if seen >= until {
        return seen;
    }
    DTask::continue_as_new(counter(seen, until)).await
}

#[dtask(snapshot, name = "can.counter_snap")]
async fn counter_snap(seen: u32, until: u32) -> u32 {
    let n: u32 = DTask::event("tick").await;
    let seen = seen + n;
    if seen >= until {
        return seen;
    }
    DTask::continue_as_new(counter_snap(seen, until)).await
}

#[tokio::test]
async fn events_sent_during_a_hand_off_reach_the_next_run() -> TestResult {
    let rt = runtime()?;
    let client = rt.client();
    for snapshot in [false, true] {
        let call = if snapshot {
            counter_snap(0, 20)
        } else {
            counter(0, 20)
        };
        let handle = client.start(call).await?;
        for _ in 0..20u32 {
            client.signal(handle.id(), "tick", &1u32).await?;
        }
        assert_eq!(handle.result().await?, 20);
        let info = client.instance(handle.id()).await?;
        assert_eq!(info.runs, 20, "snapshot: {snapshot}");
        // While it waited, its status showed the run it was in.
        assert_eq!(info.status, Status::Succeeded);
    }
    Ok(())
}

#[tokio::test]
async fn a_suspended_instance_shows_its_run_in_its_status() -> TestResult {
    let rt = runtime()?;
    let client = rt.client();
    let handle = client.start(counter(0, 3)).await?;
    let id: InstanceId = handle.id().clone();
    for run in 1..=3u32 {
        // Wait until run `run` waits for its event.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let info = client.instance(&id).await?;
            if info.status == Status::Suspended && info.runs == run {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{info:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client.signal(&id, "tick", &1u32).await?;
    }
    assert_eq!(handle.result().await?, 3);
    assert_eq!(client.instance(&id).await?.runs, 3);
    Ok(())
}

#[dtask(name = "can.wrong")]
async fn wrong_continue() -> u64 {
    DTask::continue_as_new(charge(1)).await
}

#[tokio::test]
async fn continuing_as_another_dtask_fails_as_misuse() -> TestResult {
    let rt = runtime()?;
    let err = rt.client().call(wrong_continue()).await.unwrap_err();
    let failure = err.failure().expect("a failure");
    assert!(failure.is_misuse(), "{failure}");
    assert!(failure.message().contains("can.charge"), "{failure}");
    Ok(())
}
