//! Snapshot versioning beyond refusal: a migration the user writes from the locals the old
//! code saved to those the new code saves (`#[dtask(snapshot, migrate(..))]`), and the
//! listing of the fingerprints suspended instances hold (`Client::fingerprints`). Workers
//! of code A and B run one after another on one in-memory transport, like the deployments
//! of two builds.

use std::time::Duration;

use dtasks::{
    dtask, Client, DTask, InstanceId, MemoryTransport, Registry, SavedMachine, Status, Worker,
    WorkerConfig,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The fingerprint of `order_a`, as the refusal of a resume prints it (asserted below).
const CODE_A: &str = "68d067ec9fcb272b";

// Code A: the first deployment.
#[dtask(snapshot, name = "mig.order")]
async fn order_a(customer: String, amount: u64) -> String {
    let go: u64 = DTask::event("go").await;
    let done: u64 = DTask::event("done").await;
    format!("{customer} paid {amount} after {go}, {done}")
}

// Code B: keeps a currency across both awaits; machines of code A are migrated.
#[dtask(snapshot, name = "mig.order", migrate(from = "68d067ec9fcb272b", with = add_currency))]
async fn order_b(customer: String, amount: u64) -> String {
    let currency = "EUR".to_string();
    let go: u64 = DTask::event("go").await;
    let done: u64 = DTask::event("done").await;
    format!("{customer} paid {amount} {currency} after {go}, {done}")
}

/// What code A saves at its first await (point 0) ...
#[derive(Deserialize)]
struct AtGo {
    customer: String,
    amount: u64,
}

/// ... and at its second (point 1).
#[derive(Deserialize)]
struct AtDone {
    customer: String,
    amount: u64,
    go: u64,
}

#[derive(Serialize)]
struct AtGoB {
    customer: String,
    amount: u64,
    currency: String,
}

#[derive(Serialize)]
struct AtDoneB {
    customer: String,
    amount: u64,
    currency: String,
    go: u64,
}

fn add_currency(old: SavedMachine) -> Result<SavedMachine, String> {
    let currency = "EUR (migrated)".to_string();
    match old.point() {
        0 => {
            let AtGo { customer, amount } = old.locals()?;
            SavedMachine::new(
                0,
                &AtGoB {
                    customer,
                    amount,
                    currency,
                },
            )
        }
        1 => {
            let AtDone {
                customer,
                amount,
                go,
            } = old.locals()?;
            let new = AtDoneB {
                customer,
                amount,
                currency,
                go,
            };
            SavedMachine::new(1, &new)
        }
        p => Err(format!("code A has no await {p}")),
    }
}

// Code B', whose migration refuses.
#[dtask(snapshot, name = "mig.order", migrate(from = "68d067ec9fcb272b", with = refuse))]
async fn order_refusing(customer: String, amount: u64) -> String {
    let go: u64 = DTask::event("go").await;
    format!("{customer} {amount} {go}")
}

fn refuse(old: SavedMachine) -> Result<SavedMachine, String> {
    Err(format!("await {} cannot be migrated", old.point()))
}

/// A worker of one build on the shared transport.
struct Deployed(Option<oneshot::Sender<()>>, tokio::task::JoinHandle<()>);

impl Deployed {
    fn new(t: &MemoryTransport, config: WorkerConfig) -> Result<Self, dtasks::Error> {
        let worker = Worker::new(t.clone(), config)?;
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

/// Waits until the store shows `id` suspended with a machine of `code`.
async fn wait_held(client: &Client, id: &InstanceId, code: u64) -> TestResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = client.instance(id).await?;
        if info.status == Status::Suspended && info.fingerprint == Some(code) {
            return Ok(());
        }
        assert!(tokio::time::Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn fingerprint_of<F, M>(f: F) -> u64
where
    F: dtasks::DTaskFn<M>,
{
    let mut r = Registry::new();
    r.register(f).expect("a dtask");
    r.fingerprint("mig.order").expect("a snapshot DTask")
}

#[tokio::test]
async fn an_instance_suspended_under_a_finishes_under_b_through_the_migration() -> TestResult {
    let (a, b) = (fingerprint_of(order_a), fingerprint_of(order_b));
    assert_eq!(
        format!("{a:016x}"),
        CODE_A,
        "code A's fingerprint changed: update CODE_A"
    );
    assert_ne!(a, b);
    let t = MemoryTransport::new();
    let client = Client::new(t.clone());

    // Code A: three instances wait at their first await, two at their second.
    let worker_a = Deployed::new(&t, WorkerConfig::new().register(order_a))?;
    let mut at_go = Vec::new();
    for i in 0..5u64 {
        let h = client.start(order_a(format!("c{i}"), i)).await?;
        wait_held(&client, h.id(), a).await?;
        at_go.push(h.id().clone());
    }
    let at_done = at_go.split_off(3);
    for id in &at_done {
        client.signal(id, "go", &7u64).await?;
    }
    for id in &at_done {
        // Still suspended under code A, now at its second await.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while client.instance(id).await?.waits != [dtasks::Wait::Event("done".into())] {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    worker_a.stop().await;
    let found = client.fingerprints(Some("mig.order")).await?;
    let held = &found.held;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!((held[0].fingerprint, held[0].instances), (a, 5));
    // Started by a client that does not record children: a child of theirs would hold
    // code the listing cannot see, and it says so.
    assert_eq!(found.unrecorded_roots, 5);
    assert!(!found.counts_children());

    // Code B migrates them as they resume; each holds B's machine at its next suspension.
    let worker_b = Deployed::new(&t, WorkerConfig::new().register(order_b))?;
    for id in &at_go {
        client.signal(id, "go", &8u64).await?;
    }
    for id in &at_go {
        wait_held(&client, id, b).await?;
    }
    let fresh = client.start(order_b("new".into(), 9)).await?;
    wait_held(&client, fresh.id(), b).await?;
    let held = client.fingerprints(None).await?.held;
    let counts: Vec<(u64, u64)> = held.iter().map(|h| (h.fingerprint, h.instances)).collect();
    assert_eq!(
        counts,
        [(b, 4), (a, 2)],
        "three migrated and one new on B, two on A"
    );

    client.signal(fresh.id(), "go", &1u64).await?;
    for id in at_go.iter().chain(&at_done).chain([fresh.id()]) {
        client.signal(id, "done", &1u64).await?;
    }
    let mut results = Vec::new();
    for id in at_go.iter().chain(&at_done) {
        results.push(client.handle::<String>(id.clone()).result().await?);
    }
    assert_eq!(
        results,
        [
            "c0 paid 0 EUR (migrated) after 8, 1",
            "c1 paid 1 EUR (migrated) after 8, 1",
            "c2 paid 2 EUR (migrated) after 8, 1",
            "c3 paid 3 EUR (migrated) after 7, 1",
            "c4 paid 4 EUR (migrated) after 7, 1",
        ]
    );
    assert_eq!(fresh.result().await?, "new paid 9 EUR after 1, 1");
    // No suspended instance holds code A's machine any more: code A can go.
    let found = client.fingerprints(None).await?;
    assert!(
        found.held.is_empty() && found.counts_children(),
        "{found:?}"
    );
    worker_b.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_migration_that_refuses_fails_the_instance_as_code_changed() -> TestResult {
    let t = MemoryTransport::new();
    let client = Client::new(t.clone());
    let worker_a = Deployed::new(&t, WorkerConfig::new().register(order_a))?;
    let h = client.start(order_a("x".into(), 1)).await?;
    wait_held(&client, h.id(), fingerprint_of(order_a)).await?;
    worker_a.stop().await;
    let worker = Deployed::new(&t, WorkerConfig::new().register(order_refusing))?;
    client.signal(h.id(), "go", &1u64).await?;
    let err = h.result().await.unwrap_err();
    let f = err.failure().expect("a failure");
    assert!(f.is_code_changed(), "{f}");
    assert!(f.message().contains("await 0 cannot be migrated"), "{f}");
    worker.stop().await;
    Ok(())
}

/// The fingerprint of `child_c1`, as the refusal of a resume prints it (asserted below).
const CHILD_C1: &str = "4bf4f74372d6a97a";

// A snapshot child that waits for two events, under a snapshot parent that waits for it;
// code C2 of the child keeps its awaits and locals, and accepts machines of code C1.
#[dtask(snapshot, name = "mig.child")]
async fn child_c1(x: u64) -> u64 {
    let go: u64 = DTask::event("go").await;
    let done: u64 = DTask::event("done").await;
    x + go + done
}

#[dtask(snapshot, name = "mig.child", accepts = "4bf4f74372d6a97a")]
async fn child_c2(x: u64) -> u64 {
    let go: u64 = DTask::event("go").await;
    let done: u64 = DTask::event("done").await;
    x * 100 + go + done
}

#[dtask(snapshot, name = "mig.parent")]
async fn parent_of_child(x: u64) -> u64 {
    child_c1(x).await * 2
}

/// The fingerprint of the snapshot DTask `f` registers as `name`.
fn code_of<F, M>(f: F, name: &str) -> u64
where
    F: dtasks::DTaskFn<M>,
{
    let mut r = Registry::new();
    r.register(f).expect("a dtask");
    r.fingerprint(name).expect("a snapshot DTask")
}

/// `(name, fingerprint, instances)` of each entry of a listing.
fn entries(found: &dtasks::store::HeldCodes) -> Vec<(&str, u64, u64)> {
    found
        .held
        .iter()
        .map(|h| (h.name.as_str(), h.fingerprint, h.instances))
        .collect()
}

/// A suspended snapshot child is counted under its own code when its root records
/// children, and the listing says it cannot count children otherwise; when the child
/// moves to new code, the old code is no longer held by any child the store can see.
#[tokio::test]
async fn a_suspended_child_holds_its_code_when_children_are_recorded() -> TestResult {
    let parent = code_of(parent_of_child, "mig.parent");
    let (c1, c2) = (
        code_of(child_c1, "mig.child"),
        code_of(child_c2, "mig.child"),
    );
    assert_eq!(
        format!("{c1:016x}"),
        CHILD_C1,
        "the child's fingerprint changed: update CHILD_C1 and `accepts`"
    );
    assert_ne!(c1, c2);
    let t = MemoryTransport::new();
    let build_1 = WorkerConfig::new()
        .register(child_c1)
        .register(parent_of_child);
    let worker = Deployed::new(&t, build_1)?;

    // Recorded: the child is in the store, suspended with its own code, and counted.
    let client = Client::new(t.clone()).recording_children();
    let h = client.start(parent_of_child(3)).await?;
    let child = InstanceId::new(format!("{}.0", h.id()))?;
    wait_held(&client, h.id(), parent).await?;
    wait_held(&client, &child, c1).await?;
    // Its start, written with its parent's step, may be recorded after its status.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.instance(&child).await?.parent.as_ref() != Some(h.id()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{child} has no parent"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(client.instance(h.id()).await?.records_children);
    let found = client.fingerprints(None).await?;
    assert_eq!(
        entries(&found),
        [("mig.child", c1, 1), ("mig.parent", parent, 1)]
    );
    assert!(found.counts_children(), "{found:?}");
    // Asked for the child's DTask alone: only its code, and still complete.
    let found = client.fingerprints(Some("mig.child")).await?;
    assert_eq!(entries(&found), [("mig.child", c1, 1)]);
    assert!(found.counts_children(), "{found:?}");

    // Not recorded: the child writes nothing, its code is missing from the listing, and
    // the listing says it cannot count children; asked for the child's DTask alone, it
    // still counts the root of another DTask that hides one.
    let plain = Client::new(t.clone());
    let hidden = plain.start(parent_of_child(4)).await?;
    wait_held(&plain, hidden.id(), parent).await?;
    assert!(!plain.instance(hidden.id()).await?.records_children);
    let hidden_child = InstanceId::new(format!("{}.0", hidden.id()))?;
    let err = plain.instance(&hidden_child).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let found = plain.fingerprints(None).await?;
    assert_eq!(
        entries(&found),
        [("mig.child", c1, 1), ("mig.parent", parent, 2)]
    );
    assert_eq!(found.unrecorded_roots, 1);
    assert!(!found.counts_children());
    let found = plain.fingerprints(Some("mig.child")).await?;
    assert_eq!(entries(&found), [("mig.child", c1, 1)]);
    assert_eq!(found.unrecorded_roots, 1);

    // Build 2 replaces build 1: the recorded child resumes under C2, which accepts C1's
    // machine, and suspends again holding C2. No child the store sees holds C1 now, but
    // the hidden one still does: the listing cannot tell, and says so.
    worker.stop().await;
    let build_2 = WorkerConfig::new()
        .register(child_c2)
        .register(parent_of_child);
    let worker = Deployed::new(&t, build_2)?;
    client.signal(&child, "go", &4u64).await?;
    wait_held(&client, &child, c2).await?;
    let found = client.fingerprints(Some("mig.child")).await?;
    assert_eq!(entries(&found), [("mig.child", c2, 1)]);
    assert_eq!(found.unrecorded_roots, 1);

    // The recorded child finishes: no child code is held any more.
    client.signal(&child, "done", &5u64).await?;
    assert_eq!(h.result().await?, (300 + 4 + 5) * 2);
    // The child's finish is recorded with its own facts, which may come after the root's.
    assert_eq!(client.handle::<u64>(child.clone()).result().await?, 309);
    let found = client.fingerprints(Some("mig.child")).await?;
    assert!(found.held.is_empty(), "{found:?}");
    worker.stop().await;
    Ok(())
}
