//! External events (`DTask::event`, `Client::signal`), suspensions resumed by a token
//! (`DTask::suspend`, `Client::resume`) and waits with a timeout (`DTask::within`), in both
//! execution models, on the in-memory transport.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dtasks::{dtask, DTask, Handle, ResumeToken, Runtime, Status, WorkerConfig};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[dtask(name = "events.collect")]
async fn collect(n: u32) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(DTask::event::<String>("item").await);
    }
    got
}

#[dtask(snapshot, name = "events.collect_snap")]
async fn collect_snap(n: u32) -> Vec<String> {
    let mut got = Vec::new();
    let mut i = 0;
    while i < n {
        let item: String = DTask::event("item").await;
        got.push(item);
        i += 1;
    }
    got
}

#[dtask(name = "events.approval")]
async fn approval(timeout_ms: u64) -> String {
    let got = DTask::event::<bool>("approval")
        .within(Duration::from_millis(timeout_ms))
        .await;
    match got {
        Some(true) => "approved".into(),
        Some(false) => "rejected".into(),
        None => {
            // A late approval goes to the next wait, not to the retired one.
            let late: bool = DTask::event("approval").await;
            format!("expired, then {late}")
        }
    }
}

#[dtask(snapshot, name = "events.approval_snap")]
async fn approval_snap(timeout_ms: u64) -> String {
    let got = DTask::event::<bool>("approval")
        .within(Duration::from_millis(timeout_ms))
        .await;
    match got {
        Some(true) => "approved".to_string(),
        Some(false) => "rejected".to_string(),
        None => {
            let late: bool = DTask::event("approval").await;
            format!("expired, then {late}")
        }
    }
}

/// Two names raced: the loser's wait is retired and its event goes to the next wait.
#[dtask(name = "events.race")]
async fn race() -> (usize, u32, u32) {
    let (first, v) =
        DTask::when_any(vec![DTask::event::<u32>("a"), DTask::event::<u32>("b")]).await;
    let a: u32 = DTask::event("a").await;
    (first, v, a)
}

static TOKENS: Mutex<Vec<(String, ResumeToken)>> = Mutex::new(Vec::new());
static CALLBACKS: AtomicUsize = AtomicUsize::new(0);

async fn publish_token(tag: String, token: ResumeToken) {
    CALLBACKS.fetch_add(1, Ordering::SeqCst);
    TOKENS.lock().unwrap().push((tag, token));
}

#[dtask(name = "events.sign")]
async fn sign(tag: String) -> (String, u64) {
    let who: String = DTask::suspend(move |t| publish_token(tag, t)).await;
    // Work after the resume, then a second suspension.
    DTask::yield_now().await;
    let amount: u64 = DTask::suspend(|t| publish_token("second".into(), t)).await;
    (who, amount)
}

#[dtask(snapshot, name = "events.sign_snap")]
async fn sign_snap(tag: String) -> (String, u64) {
    let who: String = DTask::suspend(move |t| publish_token(tag, t)).await;
    DTask::yield_now().await;
    let amount: u64 = DTask::suspend(|t| publish_token("second-snap".into(), t)).await;
    (who, amount)
}

fn runtime(virtual_time: bool) -> Runtime {
    let config = WorkerConfig::new()
        .register(collect)
        .register(collect_snap)
        .register(approval)
        .register(approval_snap)
        .register(race)
        .register(sign)
        .register(sign_snap);
    let mut b = Runtime::builder(config).workers(2);
    if virtual_time {
        b = b.virtual_time();
    }
    b.build().expect("runtime")
}

async fn suspended<T>(h: &Handle<T>) {
    for _ in 0..2000 {
        if h.status().await.expect("status") == Status::Suspended {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the instance never suspended");
}

async fn token(tag: &str) -> ResumeToken {
    for _ in 0..5000 {
        let found = {
            let mut t = TOKENS.lock().unwrap();
            t.iter().position(|(g, _)| g == tag).map(|i| t.remove(i).1)
        };
        if let Some(tok) = found {
            return tok;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("no token `{tag}` was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sent_before_and_after_the_wait_arrive_once_in_order() -> TestResult {
    for snapshot in [false, true] {
        let rt = runtime(false);
        let client = rt.client();
        let h = if snapshot {
            client.start(collect_snap(4)).await?
        } else {
            client.start(collect(4)).await?
        };
        // Two before the instance waits, two after it suspended.
        client.signal(h.id(), "item", "one").await?;
        client.signal(h.id(), "other", "not for this wait").await?;
        client.signal(h.id(), "item", "two").await?;
        suspended(&h).await;
        client.signal(h.id(), "item", "three").await?;
        client.signal(h.id(), "item", "four").await?;
        assert_eq!(
            h.result().await?,
            vec!["one", "two", "three", "four"],
            "snapshot model: {snapshot}"
        );
        let e = client.signal(h.id(), "item", "five").await.unwrap_err();
        assert!(e.is_finished(), "{e}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_delivered_twice_is_received_once() -> TestResult {
    let rt = Runtime::builder(WorkerConfig::new().register(collect))
        .duplicate_delivery()
        .build()?;
    let client = rt.client();
    let h = client.start(collect(3)).await?;
    for item in ["a", "b", "c"] {
        client.signal(h.id(), "item", item).await?;
    }
    assert_eq!(h.result().await?, vec!["a", "b", "c"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_of_the_wrong_type_fails_the_instance_naming_the_event() -> TestResult {
    let rt = runtime(false);
    let client = rt.client();
    let h = client.start(collect(1)).await?;
    client.signal(h.id(), "item", &42u64).await?;
    let e = h.result().await.unwrap_err();
    let f = e.failure().expect("a failure");
    assert!(f.is_bad_input(), "{f}");
    assert!(f.message().contains("event `item`"), "{f}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_to_unknown_instances_and_bad_names_are_errors() -> TestResult {
    let rt = runtime(false);
    let client = rt.client();
    let unknown = dtasks::InstanceId::new("nobody-here")?;
    let e = client.signal(&unknown, "item", "x").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let h = client.start(collect(1)).await?;
    let e = client.signal(h.id(), "", "x").await.unwrap_err();
    assert!(e.is_bad_input(), "{e}");
    client.signal(h.id(), "item", "x").await?;
    assert_eq!(h.result().await?, vec!["x"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_times_out_on_virtual_time_and_a_late_event_goes_to_the_next_wait() -> TestResult {
    for snapshot in [false, true] {
        let rt = runtime(true);
        let client = rt.client();
        let start = |ms| {
            let client = client.clone();
            async move {
                if snapshot {
                    client.start(approval_snap(ms)).await
                } else {
                    client.start(approval(ms)).await
                }
            }
        };
        // Approved in time.
        let h = start(60_000).await?;
        suspended(&h).await;
        client.signal(h.id(), "approval", &true).await?;
        assert_eq!(h.result().await?, "approved", "snapshot: {snapshot}");
        // No answer within the hour; the answer sent later reaches the second wait.
        let h = start(3_600_000).await?;
        suspended(&h).await;
        rt.advance(Duration::from_secs(3_599));
        rt.wait_idle().await;
        assert_eq!(h.status().await?, Status::Suspended, "not yet expired");
        rt.advance(Duration::from_secs(2));
        rt.wait_idle().await;
        client.signal(h.id(), "approval", &false).await?;
        assert_eq!(
            h.result().await?,
            "expired, then false",
            "snapshot: {snapshot}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_of_two_events_retires_the_losing_wait() -> TestResult {
    let rt = runtime(false);
    let client = rt.client();
    let h = client.start(race()).await?;
    suspended(&h).await;
    client.signal(h.id(), "b", &2u32).await?;
    rt.wait_idle().await;
    client.signal(h.id(), "a", &1u32).await?;
    assert_eq!(h.result().await?, (1, 2, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_is_resumed_by_its_token_once() -> TestResult {
    for snapshot in [false, true] {
        let rt = runtime(false);
        let client = rt.client();
        let tag = format!("first-{snapshot}");
        let before = CALLBACKS.load(Ordering::SeqCst);
        let h = if snapshot {
            client.start(sign_snap(tag.clone())).await?
        } else {
            client.start(sign(tag.clone())).await?
        };
        let first = token(&tag).await;
        assert_eq!(first.instance(), h.id());
        // The token survives its text form (e.g. a link in an e-mail).
        let first: ResumeToken = first.to_string().parse()?;
        client.resume(&first, "Ada").await?;
        let second = token(if snapshot { "second-snap" } else { "second" }).await;
        // The first token again: dropped, the suspension already has its value.
        client.resume(&first, "Mallory").await?;
        rt.wait_idle().await;
        client.resume(&second, &1200u64).await?;
        assert_eq!(
            h.result().await?,
            ("Ada".to_string(), 1200),
            "snapshot: {snapshot}"
        );
        // Each callback ran once (two suspensions).
        assert_eq!(CALLBACKS.load(Ordering::SeqCst) - before, 2);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_with_signal_starts_and_delivers_in_one_call() -> TestResult {
    for snapshot in [false, true] {
        let rt = runtime(false);
        let client = rt.client();
        let id = dtasks::InstanceId::new(format!("webhook-{snapshot}"))?;
        let h = if snapshot {
            client
                .start_with_signal(id, collect_snap(1), "item", "first delivery")
                .await?
        } else {
            client
                .start_with_signal(id, collect(1), "item", "first delivery")
                .await?
        };
        assert_eq!(
            h.result().await?,
            vec!["first delivery"],
            "snapshot: {snapshot}"
        );
    }
    Ok(())
}

#[dtask(name = "events.two_phase")]
async fn two_phase() -> u32 {
    let first: u32 = DTask::event("go").await;
    // Then only a child: the status shows the change.
    first + collect_count(1).await
}

#[dtask(name = "events.collect_count")]
async fn collect_count(n: u32) -> u32 {
    DTask::event::<u32>("inner").await + n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_shows_what_a_suspended_instance_waits_for() -> TestResult {
    let rt = Runtime::builder(
        WorkerConfig::new()
            .register(approval)
            .register(two_phase)
            .register(collect_count),
    )
    .virtual_time()
    .build()?;
    let client = rt.client();
    let h = client.start(approval(3_600_000)).await?;
    suspended(&h).await;
    let waits = client.waiting_for(h.id()).await?;
    assert_eq!(waits.len(), 2, "{waits:?}");
    assert_eq!(waits[0], dtasks::Wait::Event("approval".into()));
    assert!(
        matches!(waits[1], dtasks::Wait::Timer { at_ms } if at_ms > 0),
        "{waits:?}"
    );
    client.signal(h.id(), "approval", &true).await?;
    assert_eq!(h.result().await?, "approved");
    assert!(client.waiting_for(h.id()).await?.is_empty());

    let h = client.start(two_phase()).await?;
    suspended(&h).await;
    assert_eq!(
        client.waiting_for(h.id()).await?,
        vec![dtasks::Wait::Event("go".into())]
    );
    client.signal(h.id(), "go", &1u32).await?;
    rt.wait_idle().await;
    assert_eq!(
        client.waiting_for(h.id()).await?,
        vec![dtasks::Wait::Children(1)]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_with_signal_of_a_running_instance_only_signals_it() -> TestResult {
    let rt = runtime(false);
    let client = rt.client();
    let id = dtasks::InstanceId::new("webhook-twice")?;
    let h = client
        .start_with_signal(id.clone(), collect(2), "item", "first")
        .await?;
    suspended(&h).await;
    // The second delivery of the webhook: the instance runs already; it gets the event.
    let again = client
        .start_with_signal(id.clone(), collect(2), "item", "second")
        .await?;
    assert_eq!(again.id(), h.id());
    assert_eq!(h.result().await?, vec!["first", "second"]);
    let e = client
        .start_with_signal(id, collect(2), "item", "third")
        .await
        .unwrap_err();
    assert!(e.is_finished(), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_wait_for_an_event_stops_at_once() -> TestResult {
    for snapshot in [false, true] {
        let rt = runtime(false);
        let client = rt.client();
        let h = if snapshot {
            client.start(collect_snap(2)).await?
        } else {
            client.start(collect(2)).await?
        };
        client.signal(h.id(), "item", "one").await?;
        suspended(&h).await;
        assert!(client.cancel(h.id(), "customer left").await?);
        let e = h.result().await.unwrap_err();
        let f = e.failure().expect("a failure");
        assert!(f.is_cancelled(), "snapshot {snapshot}: {f}");
        assert_eq!(f.message(), "customer left");
        assert_eq!(h.status().await?, Status::Cancelled);
        let late = client.signal(h.id(), "item", "two").await.unwrap_err();
        assert!(late.is_finished(), "{late}");
    }
    Ok(())
}

static LATE_WORK: AtomicUsize = AtomicUsize::new(0);

#[dtask(name = "events.slow_job")]
async fn slow_job() -> u32 {
    DTask::delay(Duration::from_secs(3600)).await;
    // A cancelled instance stops at its next distributed await.
    DTask::yield_now().await;
    DTask::run(|| async { LATE_WORK.fetch_add(1, Ordering::SeqCst) as u32 }).await
}

#[dtask(name = "events.job_within")]
async fn job_within() -> Option<u32> {
    slow_job().within(Duration::from_secs(60)).await
}

#[dtask(snapshot, name = "events.job_within_snap")]
async fn job_within_snap() -> Option<u32> {
    let r = slow_job().within(Duration::from_secs(60)).await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_cancels_the_child_that_lost_to_the_timer() -> TestResult {
    for snapshot in [false, true] {
        let rt = Runtime::builder(
            WorkerConfig::new()
                .register(slow_job)
                .register(job_within)
                .register(job_within_snap),
        )
        .virtual_time()
        .build()?;
        let client = rt.client();
        let h = if snapshot {
            client.start(job_within_snap()).await?
        } else {
            client.start(job_within()).await?
        };
        suspended(&h).await;
        rt.advance(Duration::from_secs(61));
        rt.wait_idle().await;
        assert_eq!(h.result().await?, None, "snapshot: {snapshot}");
        // The child's timer fires later; cancelled, it does no more work.
        let before = LATE_WORK.load(Ordering::SeqCst);
        rt.advance(Duration::from_secs(3600));
        rt.wait_idle().await;
        assert_eq!(
            LATE_WORK.load(Ordering::SeqCst),
            before,
            "snapshot: {snapshot}"
        );
    }
    Ok(())
}
