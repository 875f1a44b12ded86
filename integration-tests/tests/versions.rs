//! Changing code under suspended instances, with worker processes of two builds (`IT_CODE`
//! = `a`, then `b`): replay instances started on A finish on B with the old branch of a
//! `DTask::patched` change while new ones take the new branch, and snapshot instances
//! suspended on A finish on B through the migration B declares; the fingerprints their
//! machines hold show when code A can go.

use std::time::Duration;

use dtasks::{Client, InstanceId, Registry, Status};
use dtasks_integration_tests::evolve::{deal_a, deal_b, order_a, order_b, DEAL_A};
use dtasks_integration_tests::{within, Broker};

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

async fn wait_waiting(c: &Client, id: &InstanceId) -> anyhow::Result<()> {
    within(Duration::from_secs(30), "a suspension", async {
        loop {
            let info = c.instance(id).await?;
            if info.status == Status::Suspended && !info.waits.is_empty() {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?
}

fn fingerprint(r: &mut Registry) -> u64 {
    r.fingerprint("it.deal").expect("a snapshot DTask")
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_started_on_build_a_finish_on_build_b() -> anyhow::Result<()> {
    let (code_a, code_b) = {
        let mut a = Registry::new();
        a.register(deal_a)?;
        let mut b = Registry::new();
        b.register(deal_b)?;
        (fingerprint(&mut a), fingerprint(&mut b))
    };
    assert_eq!(format!("{code_a:016x}"), DEAL_A, "update evolve::DEAL_A");
    let b = Broker::start().await?;
    let c = b.client().await?;

    // Build A: instances of both models wait for `go`.
    let w_a = b
        .worker_processes_with(WORKER, 2, &[("IT_CODE", "a")])
        .await?;
    let mut old_orders = Vec::new();
    let mut old_deals = Vec::new();
    for i in 0..4u64 {
        old_orders.push(c.start(order_a(i)).await?.id().clone());
        old_deals.push(c.start(deal_a(format!("old{i}"))).await?.id().clone());
    }
    for id in old_orders.iter().chain(&old_deals) {
        wait_waiting(&c, id).await?;
    }
    w_a.stop(Duration::from_secs(30)).await?;
    let held = c.fingerprints(Some("it.deal")).await?.held;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!((held[0].fingerprint, held[0].instances), (code_a, 4));

    // Build B: new instances, then every instance gets its event.
    let w_b = b
        .worker_processes_with(WORKER, 2, &[("IT_CODE", "b")])
        .await?;
    let mut new_orders = Vec::new();
    let mut new_deals = Vec::new();
    for i in 0..3u64 {
        new_orders.push(c.start(order_b(i)).await?.id().clone());
        new_deals.push(c.start(deal_b(format!("new{i}"))).await?.id().clone());
    }
    for id in new_orders.iter().chain(&new_deals) {
        wait_waiting(&c, id).await?;
    }
    // The listing counts what each suspended instance holds: the new ones code B, the
    // old ones code A until a worker of B resumes them. One may already be on B: a
    // delivery that build A took before it stopped may come back to a worker of B (at
    // least once), which then runs it under B, migrating the machine.
    let mut expected: std::collections::BTreeMap<u64, u64> = Default::default();
    let mut moved = 0;
    for id in old_deals.iter().chain(&new_deals) {
        let held = c.instance(id).await?.fingerprint;
        let Some(code) = held else {
            anyhow::bail!("{id} holds no code while suspended");
        };
        if new_deals.contains(id) {
            assert_eq!(code, code_b, "{id} was started on build B");
        } else {
            assert!(code == code_a || code == code_b, "{id} holds {code:016x}");
            moved += usize::from(code == code_b);
        }
        *expected.entry(code).or_default() += 1;
    }
    eprintln!("old instances already resumed on build B: {moved} of 4");
    let held = c.fingerprints(Some("it.deal")).await?.held;
    let counts: std::collections::BTreeMap<u64, u64> =
        held.iter().map(|h| (h.fingerprint, h.instances)).collect();
    assert_eq!(counts, expected);
    assert_eq!(counts.values().sum::<u64>(), 7);
    for id in old_orders
        .iter()
        .chain(&old_deals)
        .chain(&new_orders)
        .chain(&new_deals)
    {
        c.signal(id, "go", &5u64).await?;
    }
    let result = |id: &InstanceId| {
        let h = c.handle::<String>(id.clone());
        async move {
            let r: anyhow::Result<String> =
                Ok(within(Duration::from_secs(60), "a result", h.result()).await??);
            r
        }
    };
    for (i, id) in old_orders.iter().enumerate() {
        assert_eq!(result(id).await?, format!("old {} 5", i as u64 * 10 + 1));
    }
    for (i, id) in new_orders.iter().enumerate() {
        assert_eq!(result(id).await?, format!("new {} 5", i as u64 * 12 + 1));
    }
    for (i, id) in old_deals.iter().enumerate() {
        assert_eq!(result(id).await?, format!("old{i} 5 EUR (migrated)"));
    }
    for (i, id) in new_deals.iter().enumerate() {
        assert_eq!(result(id).await?, format!("new{i} 5 EUR"));
    }
    // No instance holds code A's machine any more.
    assert!(c.fingerprints(Some("it.deal")).await?.held.is_empty());
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    w_b.stop(Duration::from_secs(30)).await?;
    b.cleanup().await
}
