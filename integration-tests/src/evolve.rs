//! The DTasks of the tests of long-lived instances and changing code: loops continued as
//! new ([`renew`], [`renew_snap`]), and two builds of one DTask in each model, chosen by
//! the worker process's `IT_CODE` (`a` or `b`, see [`code_registry`]): a replay DTask
//! changed behind [`DTask::patched`] and a snapshot DTask whose machines code B migrates.

use dtasks::{dtask, DTask, Registry, SavedMachine};
use serde::{Deserialize, Serialize};

use crate::tasks::tagged;

/// The environment variable that chooses the build of the versioned DTasks.
pub const CODE_ENV: &str = "IT_CODE";

/// A loop of `runs` runs, each a run of its own (continue-as-new): a [`tagged`] child,
/// a yield, then the next run. Returns `acc + runs - run + 1` and the process that ran
/// each run's child.
#[dtask(name = "it.renew")]
pub async fn renew(run: u32, runs: u32, acc: u64, pids: Vec<u32>) -> (u64, Vec<u32>) {
    let (next, pid) = tagged(acc).await;
    let mut pids = pids;
    pids.push(pid);
    DTask::yield_now().await;
    if run >= runs {
        return (next, pids);
    }
    DTask::continue_as_new(renew(run + 1, runs, next, pids)).await
}

/// [`renew`] in the snapshot model.
#[dtask(snapshot, name = "it.renew_snap")]
pub async fn renew_snap(run: u32, runs: u32, acc: u64, pids: Vec<u32>) -> (u64, Vec<u32>) {
    let (next, pid) = tagged(acc).await;
    let mut pids = pids;
    pids.push(pid);
    DTask::yield_now().await;
    if run >= runs {
        return (next, pids);
    }
    DTask::continue_as_new(renew_snap(run + 1, runs, next, pids)).await
}

/// Code A of `it.order`: a price, then the event `go`.
#[dtask(name = "it.order")]
pub async fn order_a(x: u64) -> String {
    let (price, _) = tagged(x * 10).await;
    let go: u64 = DTask::event("go").await;
    format!("old {price} {go}")
}

/// Code B of `it.order`: another price behind the patch `tax`; instances of code A keep
/// the old branch.
#[dtask(name = "it.order")]
pub async fn order_b(x: u64) -> String {
    if DTask::patched("tax") {
        let (price, _) = tagged(x * 12).await;
        let go: u64 = DTask::event("go").await;
        format!("new {price} {go}")
    } else {
        let (price, _) = tagged(x * 10).await;
        let go: u64 = DTask::event("go").await;
        format!("old {price} {go}")
    }
}

/// The fingerprint of code A of `it.deal` (asserted by the test that uses it).
pub const DEAL_A: &str = "329f20e769b14ae6";

/// Code A of `it.deal` (snapshot): waits for `go`, keeping the customer.
#[dtask(snapshot, name = "it.deal")]
pub async fn deal_a(customer: String) -> String {
    let go: u64 = DTask::event("go").await;
    format!("{customer} {go}")
}

/// Code B of `it.deal`: also keeps a currency across the wait; machines of code A are
/// migrated by [`add_currency`].
#[dtask(snapshot, name = "it.deal", migrate(from = "329f20e769b14ae6", with = add_currency))]
pub async fn deal_b(customer: String) -> String {
    let currency = "EUR".to_string();
    let go: u64 = DTask::event("go").await;
    format!("{customer} {go} {currency}")
}

#[derive(Deserialize)]
struct DealA {
    customer: String,
}

#[derive(Serialize)]
struct DealB {
    customer: String,
    currency: String,
}

/// Code A's machine at its wait to code B's.
pub fn add_currency(old: SavedMachine) -> Result<SavedMachine, String> {
    let DealA { customer } = old.locals()?;
    let currency = "EUR (migrated)".to_string();
    SavedMachine::new(old.point(), &DealB { customer, currency })
}

/// The versioned DTasks of build `code` (`"a"` or `"b"`).
pub fn code_registry(code: &str) -> Registry {
    let mut r = Registry::new();
    let done = match code {
        "b" => r.register(order_b).and_then(|r| r.register(deal_b)),
        _ => r.register(order_a).and_then(|r| r.register(deal_a)),
    };
    done.expect("#[dtask] functions");
    r
}
