//! The RabbitMQ-only instance store on the real broker: facts appended to one stream and
//! read by every process that follows it, with the store's rules (a result once, a
//! status never backwards), read-your-confirmed-writes across processes, claims, waits,
//! pages and purges.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use dtasks::store::{Fact, FactKind, Filter, InstanceInfo, InstanceStore, Query, StepKind, Steps};
use dtasks::{InstanceId, Status, Wait};
use dtasks_amqp::StreamStore;
use dtasks_integration_tests::{wait_for, Broker};
use tokio::task::JoinHandle;

fn fact(id: &InstanceId, at: SystemTime, kind: FactKind) -> Fact {
    Fact::new(id.clone(), "probe", at, kind)
}

fn status(status: Status, version: u64) -> FactKind {
    FactKind::Status {
        status,
        waits: vec![Wait::Event("approval".into())],
        version,
    }
}

/// A finish with `value` as its result: the encoding a worker writes, taken from an
/// in-memory run (the record format is the core's business).
async fn finished_with(value: u64) -> anyhow::Result<FactKind> {
    #[dtasks::dtask(name = "stream_store.echo")]
    async fn echo(x: u64) -> u64 {
        x
    }
    let rt = dtasks::Runtime::new(dtasks::WorkerConfig::new().register(echo))?;
    let h = rt.client().start(echo(value)).await?;
    h.result().await?;
    let info = rt.client().instance(h.id()).await?;
    Ok(FactKind::Finished {
        status: info.status,
        result: info
            .result
            .clone()
            .expect("a finished instance has its result"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_written_by_one_process_are_read_by_another_by_the_rules() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let writer = b.transport().await?.instance_store();
    let reader = b.transport().await?.instance_store();
    let id = InstanceId::random();
    let t0 = SystemTime::now();
    // The reader follows before anything is written; it must still see each write once
    // confirmed.
    assert!(reader.get(&id).await?.is_none());
    writer
        .record(vec![fact(&id, t0, FactKind::Started { parent: None })])
        .await?;
    assert_eq!(
        reader.get(&id).await?.map(|i| i.status),
        Some(Status::Pending)
    );
    writer
        .record(vec![fact(&id, t0, status(Status::Suspended, 3))])
        .await?;
    // An older version is stale: the status stays, with what it waits for.
    writer
        .record(vec![fact(&id, t0, status(Status::Running, 1))])
        .await?;
    let info = reader.get(&id).await?.expect("known");
    assert_eq!(info.status, Status::Suspended);
    assert_eq!(info.waits, vec![Wait::Event("approval".into())]);
    // The first result wins; a second is counted and changes nothing.
    writer
        .record(vec![fact(&id, t0, finished_with(7).await?)])
        .await?;
    writer
        .record(vec![fact(&id, t0, finished_with(8).await?)])
        .await?;
    writer
        .record(vec![fact(&id, t0, status(Status::Running, 9))])
        .await?;
    let info = reader.get(&id).await?.expect("known");
    assert_eq!(info.status, Status::Succeeded);
    assert_eq!(info.result::<u64>().transpose()?, Some(7));
    assert_eq!(info.duplicate_results, 1);
    // A process started later reads the stream from its first record.
    let late = b.transport().await?.instance_store();
    let again = late.get(&id).await?.expect("known to a later process");
    assert_eq!(
        (again.status, again.duplicate_results),
        (Status::Succeeded, 1)
    );
    assert_eq!(again.result::<u64>().transpose()?, Some(7));
    b.cleanup().await
}

/// A wait for a finish under way: the stores of two transports (a writer and a
/// reader, as two processes), an instance the writer recorded as started, and the
/// reader's `wait_finished` for it.
async fn started_and_awaited(
    b: &Broker,
) -> anyhow::Result<(
    StreamStore,
    StreamStore,
    InstanceId,
    JoinHandle<Result<InstanceInfo, dtasks::Error>>,
)> {
    let writer = b.transport().await?.instance_store();
    let reader = b.transport().await?.instance_store();
    let id = InstanceId::random();
    writer
        .record(vec![fact(
            &id,
            SystemTime::now(),
            FactKind::Started { parent: None },
        )])
        .await?;
    let waiting = tokio::spawn({
        let (reader, id) = (reader.clone(), id.clone());
        async move { reader.wait_finished(&id).await }
    });
    Ok((writer, reader, id, waiting))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_wakes_on_a_finish_from_another_process_and_an_unknown_id_is_not_found(
) -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let (writer, reader, id, waiting) = started_and_awaited(&b).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a wait ended before the finish");
    writer
        .record(vec![fact(&id, SystemTime::now(), finished_with(5).await?)])
        .await?;
    let info = tokio::time::timeout(Duration::from_secs(10), waiting).await???;
    assert_eq!(info.result::<u64>().transpose()?, Some(5));
    let unknown = InstanceId::random();
    let err = tokio::time::timeout(Duration::from_secs(10), reader.wait_finished(&unknown))
        .await?
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_takes_one_nonce_of_many_at_once_and_keeps_it() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    // Eight processes claim one id at once, each with a nonce of its own.
    let mut stores = Vec::new();
    for _ in 0..8 {
        stores.push(b.transport().await?.instance_store());
    }
    let id = InstanceId::random();
    let claims = stores.iter().zip(1u64..).map(|(s, nonce)| {
        let id = &id;
        async move { s.claim(id, nonce).await.map(|ours| (nonce, ours)) }
    });
    let claimed = futures::future::try_join_all(claims).await?;
    let winners: Vec<u64> = claimed
        .iter()
        .filter(|(_, ours)| *ours)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(winners.len(), 1, "claims: {claimed:?}");
    let winner = winners[0];
    // The winner stands for every process, whatever it claims with; the winner's own
    // nonce, claimed again (by a worker for its client), holds.
    for s in &stores {
        assert!(s.claim(&id, winner).await?);
        assert!(!s.claim(&id, winner + 100).await?);
    }
    // The claim register holds no message (the nonce is an argument of the queue), and
    // other ids are free.
    let register = format!("{}.claim.{id}", b.prefix());
    assert_eq!(b.queue_len(&register).await?, Some(0));
    assert!(stores[0].claim(&InstanceId::random(), 7).await?);
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_run_newest_first_and_a_purge_is_seen_by_every_process() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let writer = b.transport().await?.instance_store();
    let reader = b.transport().await?.instance_store();
    let t0 = SystemTime::now();
    let mut facts = Vec::new();
    let mut ids = Vec::new();
    for i in 0..25u64 {
        let id = InstanceId::new(format!("page-{i:02}-{}", InstanceId::random()))?;
        let at = t0 + Duration::from_millis(i);
        facts.push(fact(&id, at, FactKind::Started { parent: None }));
        if i % 2 == 0 {
            facts.push(fact(&id, at, finished_with(i).await?));
        }
        ids.push(id);
    }
    writer.record(facts).await?;
    // All 25, newest first, in pages of 10.
    let mut query = Query::new(Filter::new().id_prefix("page-")).limit(10)?;
    let mut seen = Vec::new();
    loop {
        let page = reader.list(&query).await?;
        seen.extend(page.instances.iter().map(|i| i.id.clone()));
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    let newest_first: Vec<InstanceId> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    // Purged from one process: the 13 finished ones; the 12 pending stay, everywhere.
    let purged = writer.purge(&Filter::new().id_prefix("page-")).await?;
    assert_eq!(purged, 13);
    let left = reader
        .list(&Query::new(Filter::new().id_prefix("page-")).limit(100)?)
        .await?;
    assert_eq!(left.instances.len(), 12);
    assert!(left.instances.iter().all(|i| i.status == Status::Pending));
    assert!(reader.get(&ids[0]).await?.is_none());
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_id_can_be_claimed_again_and_a_running_ones_claim_stays() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let store = b.transport().await?.instance_store();
    let other = b.transport().await?.instance_store();
    let t0 = SystemTime::now();
    let done = InstanceId::new(format!("claimed-done-{}", InstanceId::random()))?;
    let running = InstanceId::new(format!("claimed-running-{}", InstanceId::random()))?;
    for id in [&done, &running] {
        assert!(store.claim(id, 1).await?);
        assert!(
            !other.claim(id, 2).await?,
            "a claim holds against another nonce"
        );
    }
    store
        .record(vec![
            fact(&done, t0, FactKind::Started { parent: None }),
            fact(&done, t0, finished_with(1).await?),
            fact(&running, t0, FactKind::Started { parent: None }),
        ])
        .await?;
    let purged = store.purge(&Filter::new().id_prefix("claimed-")).await?;
    assert_eq!(purged, 1);
    // Unknown afterwards, and free to be started again, from any process; the running
    // one is neither purged nor unclaimed.
    assert!(other.get(&done).await?.is_none());
    assert!(other.claim(&done, 3).await?);
    assert!(!other.claim(&running, 3).await?);
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_steps_and_parents_written_by_one_process_are_read_by_another() -> anyhow::Result<()>
{
    let b = Broker::start().await?;
    let writer = b.transport().await?.instance_store();
    let reader = b.transport().await?.instance_store();
    let root = InstanceId::new(format!("tree-{}", InstanceId::random()))?;
    let t0 = SystemTime::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let fan = |done: u32| {
        vec![
            Steps::new(0, 1, StepKind::Run).with_done(1, 0),
            Steps::new(1, 2, StepKind::Child("leaf".into())).with_done(done, 0),
        ]
    };
    let children: Vec<InstanceId> = (1..=2).map(|n| root.child(n)).collect();
    let mut facts = vec![fact(&root, ms(0), FactKind::Started { parent: None })];
    for child in &children {
        facts.push(fact(
            child,
            ms(1),
            FactKind::Started {
                parent: Some(root.clone()),
            },
        ));
    }
    facts.push(fact(&root, ms(2), status(Status::Suspended, 1)).with_steps(fan(0)));
    writer.record(facts).await?;
    // The same status again (a redone step), then the finish: two transitions.
    writer
        .record(vec![
            fact(&root, ms(3), status(Status::Suspended, 1)).with_steps(fan(0)),
            fact(&root, ms(4), finished_with(3).await?).with_steps(fan(2)),
        ])
        .await?;
    let info = reader.get(&root).await?.expect("known");
    let seen: Vec<(Status, u32)> = info.history.iter().map(|t| (t.status, t.steps)).collect();
    assert_eq!(seen, [(Status::Suspended, 3), (Status::Succeeded, 3)]);
    assert_eq!(info.history[0].waits, vec![Wait::Event("approval".into())]);
    assert_eq!(info.steps, fan(2));
    // Children by parent; roots alone.
    let of_root = reader
        .list(&Query::new(Filter::new().parent(root.clone())))
        .await?;
    let mut ids: Vec<InstanceId> = of_root.instances.iter().map(|i| i.id.clone()).collect();
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(ids, children);
    let roots = reader
        .list(&Query::new(Filter::new().roots().id_prefix("tree-")))
        .await?;
    let roots: Vec<&InstanceId> = roots.instances.iter().map(|i| &i.id).collect();
    assert_eq!(roots, [&root]);
    b.cleanup().await
}

/// A wait that reads nothing for a while probes the stream (a marker written and read
/// back: a stream consumer on a replica can miss a commit until the next write), and
/// still ends on the finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_probes_the_stream_and_still_ends_on_the_finish() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let stream = format!("{}.facts", b.prefix());
    let (writer, reader, id, waiting) = started_and_awaited(&b).await?;
    // The wait's own sync is in the stream once the reader found the instance.
    wait_for(Duration::from_secs(10), || async {
        Ok(reader.get(&id).await?.is_some())
    })
    .await?;
    let before = b.stream_messages(&stream).await?.len();
    // Nothing is written for longer than the probes' idle time (10 s).
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(!waiting.is_finished(), "a wait ended before the finish");
    let after = b.stream_messages(&stream).await?.len();
    assert!(
        after > before,
        "no probe of the stream during a quiet wait ({before} records before, {after} after)"
    );
    writer
        .record(vec![fact(&id, SystemTime::now(), finished_with(8).await?)])
        .await?;
    let info = tokio::time::timeout(Duration::from_secs(10), waiting).await???;
    assert_eq!(info.result::<u64>().transpose()?, Some(8));
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_messages_and_every_fact_arrives() -> anyhow::Result<()> {
    const WRITES: usize = 400;
    let b = Broker::start().await?;
    let writer = b.transport().await?.instance_store();
    let reader = b.transport().await?.instance_store();
    let t0 = SystemTime::now();
    let ids: Vec<InstanceId> = (0..WRITES)
        .map(|i| InstanceId::new(format!("batch-{i:03}-{}", InstanceId::random())))
        .collect::<Result<_, _>>()?;
    // Each write its own call, all at once, as concurrent starts and steps make them.
    let writes = ids.iter().map(|id| {
        let writer = writer.clone();
        let f = fact(id, t0, FactKind::Started { parent: None });
        async move { writer.record(vec![f]).await }
    });
    for r in futures::future::join_all(writes).await {
        r?;
    }
    // Every fact arrives, in another process, once confirmed.
    let listed = reader
        .list(&Query::new(Filter::new().id_prefix("batch-")).limit(1000)?)
        .await?;
    assert_eq!(listed.instances.len(), WRITES);
    assert!(listed.instances.iter().all(|i| i.status == Status::Pending));
    // Far fewer messages than writes: the writes that waited while a message was being
    // confirmed went out together (the reader's sync markers are records too).
    let records = b
        .stream_messages(&format!("{}.facts", b.prefix()))
        .await?
        .len();
    assert!(
        records <= WRITES / 4,
        "{records} records in the stream for {WRITES} writes"
    );
    println!("{WRITES} concurrent writes: {records} records in the stream");
    b.cleanup().await
}

/// The stream store of a worker, except that each finish is written after a pause, and
/// after the finish of an earlier run of the same step (as if a worker had appended it
/// and died before it acked).
struct EarlierRun {
    inner: StreamStore,
    earlier: FactKind,
}

impl InstanceStore for EarlierRun {
    fn record(
        &self,
        facts: Vec<Fact>,
    ) -> futures::future::BoxFuture<'_, Result<u64, dtasks::Error>> {
        Box::pin(async move {
            let finishes: Vec<Fact> = facts
                .iter()
                .filter(|f| matches!(f.kind, FactKind::Finished { .. }))
                .map(|f| fact(&f.instance, SystemTime::now(), self.earlier.clone()))
                .collect();
            if !finishes.is_empty() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                self.inner.record(finishes).await?;
            }
            self.inner.record(facts).await
        })
    }

    fn get<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> futures::future::BoxFuture<'a, Result<Option<InstanceInfo>, dtasks::Error>> {
        self.inner.get(id)
    }

    fn list<'a>(
        &'a self,
        query: &'a Query,
    ) -> futures::future::BoxFuture<'a, Result<dtasks::store::Listing, dtasks::Error>> {
        self.inner.list(query)
    }

    fn purge<'a>(
        &'a self,
        filter: &'a Filter,
    ) -> futures::future::BoxFuture<'a, Result<u64, dtasks::Error>> {
        self.inner.purge(filter)
    }

    fn claim<'a>(
        &'a self,
        id: &'a InstanceId,
        nonce: u64,
    ) -> futures::future::BoxFuture<'a, Result<bool, dtasks::Error>> {
        self.inner.claim(id, nonce)
    }

    fn replies_while_recording(&self) -> bool {
        self.inner.replies_while_recording()
    }
}

/// On the stream store the worker replies while it appends the finish; the client that
/// has the reply still returns the result appended first, once it shows in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_sent_while_the_finish_is_appended_still_gives_the_result_recorded_first(
) -> anyhow::Result<()> {
    #[dtasks::dtask(name = "stream_store.plus_one")]
    async fn plus_one(x: u64) -> u64 {
        x + 1
    }
    let b = Broker::start().await?;
    let store = EarlierRun {
        inner: b.transport().await?.instance_store(),
        earlier: finished_with(99).await?,
    };
    assert!(store.replies_while_recording());
    let workers = b
        .workers_with(
            1,
            dtasks::WorkerConfig::new().register(plus_one).store(store),
        )
        .await?;
    let client = b.client().await?;
    let h = client.start(plus_one(5)).await?;
    let v = tokio::time::timeout(Duration::from_secs(30), h.result()).await??;
    // Not the 6 its reply carried: the finish appended first stands.
    assert_eq!(v, 99);
    // The worker's own finish, appended after the earlier one, is counted as a duplicate
    // once it shows in the stream (the result above did not wait for it).
    let seen = std::sync::Mutex::new(None);
    let (last, client) = (&seen, &client);
    let id = h.id();
    let waited = wait_for(Duration::from_secs(10), || async move {
        let info = client.instance(id).await?;
        *last.lock().unwrap() = Some((info.status, info.duplicate_results));
        Ok(info.duplicate_results > 0)
    })
    .await;
    let seen = seen.into_inner().unwrap();
    waited.with_context(|| format!("status and duplicates: {seen:?}"))?;
    assert_eq!(seen, Some((Status::Succeeded, 1)));
    workers.stop().await?;
    b.cleanup().await
}

/// Two processes that write the first facts of a deployment at once: one creates the
/// stream while the other finds it declared. RabbitMQ 3.10 answers the second declaration
/// before the stream's leader is known, and closes the connection of a channel that
/// publishes to it then; each transport checks a new stream first, so that neither loses
/// a connection. Without the check, this fails within a few rounds here. Rounds run a
/// few at a time, each on a deployment of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_that_write_a_new_stream_at_once_keep_their_connections() -> anyhow::Result<()> {
    const ROUNDS: usize = 30;
    const AT_ONCE: usize = 5;
    let mut lost = Vec::new();
    for first in (0..ROUNDS).step_by(AT_ONCE) {
        let rounds = (first..(first + AT_ONCE).min(ROUNDS)).map(first_writes_at_once);
        for round in futures::future::try_join_all(rounds).await? {
            lost.extend(round);
        }
    }
    assert!(lost.is_empty(), "connections were lost: {lost:#?}");
    Ok(())
}

/// One round of the test above: what each of its two processes lost.
async fn first_writes_at_once(round: usize) -> anyhow::Result<Vec<String>> {
    let mut lost = Vec::new();
    let b = Broker::start().await?;
    let (ta, tb) = (b.transport().await?, b.transport().await?);
    let (a, bs) = (ta.instance_store(), tb.instance_store());
    let (ia, ib) = (InstanceId::random(), InstanceId::random());
    let t0 = SystemTime::now();
    let started = FactKind::Started { parent: None };
    let (ra, rb) = tokio::join!(
        a.record(vec![fact(&ia, t0, started.clone())]),
        bs.record(vec![fact(&ib, t0, started.clone())]),
    );
    ra?;
    rb?;
    // What the same write costs on a stream that is already there.
    let tc = b.transport().await?;
    tc.instance_store()
        .record(vec![fact(&InstanceId::random(), t0, started)])
        .await?;
    let usual = tc.connections_opened();
    anyhow::ensure!(usual >= 1, "round {round}: a write opens a connection");
    for (who, t) in [("first", &ta), ("second", &tb)] {
        if t.connections_opened() != usual {
            lost.push(format!(
                "round {round}: the {who} process opened {} connections, not {usual}",
                t.connections_opened()
            ));
        }
    }
    // Both facts are in the stream.
    for id in [&ia, &ib] {
        let status = a.get(id).await?.map(|i| i.status);
        anyhow::ensure!(
            status == Some(Status::Pending),
            "round {round}: {id} reads {status:?}"
        );
    }
    b.cleanup().await?;
    Ok(lost)
}
