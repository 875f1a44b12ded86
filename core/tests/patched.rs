//! Replay versioning: `DTask::patched` lets changed replay code finish the instances the
//! old code started with the old branch while new instances take the new one, and
//! `DTask::deprecate_patch` retires the old branch. Workers of code A, B and C run one
//! after another on one in-memory transport, like the deployments of three builds.

use std::time::Duration;

use dtasks::{dtask, Client, DTask, InstanceId, MemoryTransport, Status, Worker, WorkerConfig};
use tokio::sync::oneshot;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[dtask(name = "ver.price")]
async fn price(x: u64) -> u64 {
    x * 10
}

#[dtask(name = "ver.price_with_tax")]
async fn price_with_tax(x: u64) -> u64 {
    x * 12
}

/// Code A: the first deployment.
#[dtask(name = "ver.order")]
async fn order_a(x: u64) -> String {
    let p = price(x).await;
    let go: u64 = DTask::event("go").await;
    format!("old {p} {go}")
}

/// Code B: the change behind a patch marker.
#[dtask(name = "ver.order")]
async fn order_b(x: u64) -> String {
    if DTask::patched("tax-1") {
        let p = price_with_tax(x).await;
        let go: u64 = DTask::event("go").await;
        format!("new {p} {go}")
    } else {
        let p = price(x).await;
        let go: u64 = DTask::event("go").await;
        format!("old {p} {go}")
    }
}

/// Code C: the old branch retired, once no instance of code A is left.
#[dtask(name = "ver.order")]
async fn order_c(x: u64) -> String {
    DTask::deprecate_patch("tax-1");
    let p = price_with_tax(x).await;
    let go: u64 = DTask::event("go").await;
    format!("new {p} {go}")
}

/// Code B without the marker: the change made without a patch.
#[dtask(name = "ver.order")]
async fn order_unpatched(x: u64) -> String {
    let p = price_with_tax(x).await;
    let go: u64 = DTask::event("go").await;
    format!("new {p} {go}")
}

/// A worker of one build on the shared transport, stopped when dropped.
struct Deployed(Option<oneshot::Sender<()>>, tokio::task::JoinHandle<()>);

impl Deployed {
    fn new(t: &MemoryTransport, config: WorkerConfig) -> Result<Self, dtasks::Error> {
        let worker = Worker::new(t.clone(), config.register(price).register(price_with_tax))?;
        let (tx, rx) = oneshot::channel::<()>();
        let run = tokio::spawn(async move {
            worker
                .run_until(async {
                    let _ = rx.await;
                })
                .await
                .expect("the worker runs");
        });
        Ok(Self(Some(tx), run))
    }

    async fn stop(mut self) {
        let _ = self.0.take().map(|tx| tx.send(()));
        let _ = (&mut self.1).await;
    }
}

async fn wait_suspended(client: &Client, id: &InstanceId) -> TestResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = client.instance(id).await?;
        if info.status == Status::Suspended && !info.waits.is_empty() {
            return Ok(());
        }
        assert!(tokio::time::Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn start_waiting(
    client: &Client,
    n: u64,
    code: fn(u64) -> dtasks::Call<String>,
) -> Result<Vec<InstanceId>, Box<dyn std::error::Error + Send + Sync>> {
    let mut ids = Vec::new();
    for x in 0..n {
        let h = client.start(code(x)).await?;
        wait_suspended(client, h.id()).await?;
        ids.push(h.id().clone());
    }
    Ok(ids)
}

async fn finish(
    client: &Client,
    ids: &[InstanceId],
    go: u64,
) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    let mut out = Vec::new();
    for id in ids {
        client.signal(id, "go", &go).await?;
    }
    for id in ids {
        let r = client.handle::<String>(id.clone()).result().await;
        out.push(match r {
            Ok(s) => s,
            Err(e) => format!("failed: {e}"),
        });
    }
    Ok(out)
}

#[tokio::test]
async fn instances_of_code_a_finish_on_code_b_with_the_old_branch() -> TestResult {
    let t = MemoryTransport::new();
    let client = Client::new(t.clone());

    let a = Deployed::new(&t, WorkerConfig::new().register(order_a))?;
    let old = start_waiting(&client, 3, order_a).await?;
    a.stop().await;

    let b = Deployed::new(&t, WorkerConfig::new().register(order_b))?;
    let new = start_waiting(&client, 3, order_b).await?;
    assert_eq!(
        finish(&client, &old, 1).await?,
        ["old 0 1", "old 10 1", "old 20 1"],
        "instances started on A replay the old branch on B"
    );
    // New instances on B took the new branch; some wait while C is deployed.
    let (now, later) = new.split_at(1);
    assert_eq!(finish(&client, now, 2).await?, ["new 0 2"]);
    b.stop().await;

    // Code C: the old branch is gone; instances started on B (with the marker) finish.
    let c = Deployed::new(&t, WorkerConfig::new().register(order_c))?;
    let fresh = start_waiting(&client, 1, order_c).await?;
    assert_eq!(finish(&client, later, 3).await?, ["new 12 3", "new 24 3"]);
    assert_eq!(finish(&client, &fresh, 4).await?, ["new 0 4"]);
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn without_a_patch_the_changed_code_fails_old_instances_as_non_determinism() -> TestResult {
    let t = MemoryTransport::new();
    let client = Client::new(t.clone());
    let a = Deployed::new(&t, WorkerConfig::new().register(order_a))?;
    let old = start_waiting(&client, 1, order_a).await?;
    a.stop().await;
    let b = Deployed::new(&t, WorkerConfig::new().register(order_unpatched))?;
    client.signal(&old[0], "go", &1u64).await?;
    let err = client
        .handle::<String>(old[0].clone())
        .result()
        .await
        .unwrap_err();
    let f = err.failure().expect("a failure");
    assert!(f.is_nondeterminism(), "{f}");
    b.stop().await;
    Ok(())
}

#[tokio::test]
async fn retiring_the_old_branch_early_fails_the_instances_that_need_it() -> TestResult {
    // Code C deployed while an instance of code A is still suspended: its journal has
    // no marker and the old call, which C no longer makes.
    let t = MemoryTransport::new();
    let client = Client::new(t.clone());
    let a = Deployed::new(&t, WorkerConfig::new().register(order_a))?;
    let old = start_waiting(&client, 1, order_a).await?;
    a.stop().await;
    let c = Deployed::new(&t, WorkerConfig::new().register(order_c))?;
    let out = finish(&client, &old, 1).await?;
    assert!(
        out[0].contains("non-determinism") || out[0].contains("recorded command"),
        "{out:?}"
    );
    c.stop().await;
    Ok(())
}
