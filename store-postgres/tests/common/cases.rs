//! The semantics of an instance store, case by case, for any store: each case takes a
//! fresh, empty `&dyn InstanceStore`. `tests/conformance.rs` runs every case against
//! `MemoryStore` (the reference) and `PgStore`.

use std::time::Duration;

use dtasks::store::{Filter, InstanceInfo, InstanceStore, Query, StepKind, Steps};
use dtasks::{Status, Wait};

use super::{at, finished, id, started, status};

fn info(i: Option<InstanceInfo>) -> InstanceInfo {
    i.expect("the instance is known")
}

pub async fn started_makes_a_pending_instance(store: &dyn InstanceStore) {
    let dups = store
        .record(vec![started("s-1", "order", 10, Some("root-1"))])
        .await
        .unwrap();
    assert_eq!(dups, 0);
    let i = info(store.get(&id("s-1")).await.unwrap());
    assert_eq!(i.id, id("s-1"));
    assert_eq!(i.name, "order");
    assert_eq!(i.parent, Some(id("root-1")));
    assert_eq!(i.status, Status::Pending);
    assert!(i.waits.is_empty());
    assert_eq!(i.created_at, at(10));
    assert_eq!(i.updated_at, at(10));
    assert_eq!(i.version, 0);
    assert_eq!(i.result, None);
    assert_eq!(i.duplicate_results, 0);
    assert_eq!(i.finished_at(), None);
    assert!(store.get(&id("s-2")).await.unwrap().is_none());
}

pub async fn a_second_start_fills_a_missing_parent_and_an_earlier_start_only(
    store: &dyn InstanceStore,
) {
    store
        .record(vec![started("p-1", "a", 50, None)])
        .await
        .unwrap();
    // A later start with a parent: the parent fills in, the start time stays.
    store
        .record(vec![started("p-1", "a", 70, Some("root-a"))])
        .await
        .unwrap();
    let i = info(store.get(&id("p-1")).await.unwrap());
    assert_eq!(i.parent, Some(id("root-a")));
    assert_eq!(i.created_at, at(50));
    // An earlier start with another parent: the start time moves, the parent stays.
    store
        .record(vec![started("p-1", "a", 20, Some("root-b"))])
        .await
        .unwrap();
    let i = info(store.get(&id("p-1")).await.unwrap());
    assert_eq!(i.parent, Some(id("root-a")));
    assert_eq!(i.created_at, at(20));
    assert_eq!(i.updated_at, at(50));
    assert_eq!(i.status, Status::Pending);
}

pub async fn a_status_applies_unless_older_than_the_recorded_version(store: &dyn InstanceStore) {
    store
        .record(vec![started("v-1", "a", 0, None)])
        .await
        .unwrap();
    let waits = vec![Wait::Event("approval".into()), Wait::Timer { at_ms: 99 }];
    store
        .record(vec![status(
            "v-1",
            "a",
            30,
            Status::Suspended,
            3,
            waits.clone(),
        )])
        .await
        .unwrap();
    let i = info(store.get(&id("v-1")).await.unwrap());
    assert_eq!((i.status, i.version), (Status::Suspended, 3));
    assert_eq!(i.waits, waits);
    assert_eq!(i.updated_at, at(30));

    // Stale: an older version changes nothing.
    store
        .record(vec![status("v-1", "a", 40, Status::Running, 2, vec![])])
        .await
        .unwrap();
    let i = info(store.get(&id("v-1")).await.unwrap());
    assert_eq!((i.status, i.version), (Status::Suspended, 3));
    assert_eq!(i.waits, waits);
    assert_eq!(i.updated_at, at(30));

    // The same version applies; an older time does not move `updated_at` back.
    store
        .record(vec![status(
            "v-1",
            "a",
            25,
            Status::Running,
            3,
            vec![Wait::Yield],
        )])
        .await
        .unwrap();
    let i = info(store.get(&id("v-1")).await.unwrap());
    assert_eq!((i.status, i.version), (Status::Running, 3));
    assert_eq!(i.waits, vec![Wait::Yield]);
    assert_eq!(i.updated_at, at(30));
}

pub async fn nothing_changes_a_finished_instance_but_the_count_of_duplicates(
    store: &dyn InstanceStore,
) {
    store
        .record(vec![started("f-1", "a", 0, None)])
        .await
        .unwrap();
    store
        .record(vec![status(
            "f-1",
            "a",
            5,
            Status::Suspended,
            1,
            vec![Wait::Children(2)],
        )])
        .await
        .unwrap();
    let dups = store
        .record(vec![finished("f-1", "a", 10, Status::Succeeded, b"first")])
        .await
        .unwrap();
    assert_eq!(dups, 0);
    let i = info(store.get(&id("f-1")).await.unwrap());
    assert_eq!(i.status, Status::Succeeded);
    assert!(i.waits.is_empty());
    assert_eq!(i.result.as_deref(), Some(&b"first"[..]));
    assert_eq!(i.finished_at(), Some(at(10)));

    // A status after the finish, even of a newer version, is ignored.
    store
        .record(vec![status("f-1", "a", 20, Status::Running, 9, vec![])])
        .await
        .unwrap();
    // A second and a third result are refused and counted.
    let dups = store
        .record(vec![
            finished("f-1", "a", 30, Status::Failed, b"second"),
            finished("f-1", "a", 31, Status::Cancelled, b"third"),
        ])
        .await
        .unwrap();
    assert_eq!(dups, 2);
    let i = info(store.get(&id("f-1")).await.unwrap());
    assert_eq!(i.status, Status::Succeeded);
    assert_eq!(i.version, 1);
    assert_eq!(i.result.as_deref(), Some(&b"first"[..]));
    assert_eq!(i.updated_at, at(10));
    assert_eq!(i.duplicate_results, 2);
}

pub async fn facts_without_a_start_make_the_instance(store: &dyn InstanceStore) {
    store
        .record(vec![status("m-1", "late", 40, Status::Running, 2, vec![])])
        .await
        .unwrap();
    let i = info(store.get(&id("m-1")).await.unwrap());
    assert_eq!((i.status, i.version), (Status::Running, 2));
    assert_eq!((i.created_at, i.updated_at), (at(40), at(40)));
    assert_eq!(i.name, "late");

    store
        .record(vec![finished("m-2", "late", 60, Status::Failed, b"boom")])
        .await
        .unwrap();
    let i = info(store.get(&id("m-2")).await.unwrap());
    assert_eq!(i.status, Status::Failed);
    assert_eq!(i.result.as_deref(), Some(&b"boom"[..]));
    assert_eq!(i.created_at, at(60));
    assert_eq!(i.duplicate_results, 0);

    // The start recorded late moves the start time back.
    store
        .record(vec![started("m-2", "late", 15, Some("up"))])
        .await
        .unwrap();
    let i = info(store.get(&id("m-2")).await.unwrap());
    assert_eq!(i.created_at, at(15));
    assert_eq!(i.parent, Some(id("up")));
    assert_eq!(i.status, Status::Failed);
}

pub async fn the_facts_of_one_record_apply_in_order(store: &dyn InstanceStore) {
    let dups = store
        .record(vec![
            started("o-1", "a", 0, None),
            status("o-1", "a", 1, Status::Running, 1, vec![]),
            started("o-2", "b", 2, None),
            status("o-1", "a", 3, Status::Suspended, 3, vec![Wait::Resume]),
            status("o-1", "a", 4, Status::Running, 2, vec![]),
            finished("o-2", "b", 5, Status::Succeeded, b"b"),
            finished("o-1", "a", 6, Status::Succeeded, b"a1"),
            finished("o-1", "a", 7, Status::Failed, b"a2"),
            status("o-1", "a", 8, Status::Running, 9, vec![]),
            finished("o-2", "b", 9, Status::Succeeded, b"b2"),
        ])
        .await
        .unwrap();
    assert_eq!(dups, 2);
    let a = info(store.get(&id("o-1")).await.unwrap());
    assert_eq!((a.status, a.version), (Status::Succeeded, 3));
    assert_eq!(a.result.as_deref(), Some(&b"a1"[..]));
    assert_eq!((a.created_at, a.updated_at), (at(0), at(6)));
    assert_eq!(a.duplicate_results, 1);
    let b = info(store.get(&id("o-2")).await.unwrap());
    assert_eq!(b.result.as_deref(), Some(&b"b"[..]));
    assert_eq!(b.duplicate_results, 1);
    assert_eq!(store.record(vec![]).await.unwrap(), 0);
}

pub async fn a_purge_removes_finished_instances_only(store: &dyn InstanceStore) {
    store
        .record(vec![
            started("g-run", "job", 1, None),
            status("g-run", "job", 2, Status::Running, 1, vec![]),
            finished("g-ok", "job", 3, Status::Succeeded, b"1"),
            finished("g-bad", "job", 4, Status::Failed, b"2"),
            finished("g-other", "other", 5, Status::Succeeded, b"3"),
            finished("h-ok", "job", 6, Status::Cancelled, b"4"),
        ])
        .await
        .unwrap();
    // Running ones are never removed, whatever the filter says.
    let running = Filter::new().status(Status::Running);
    assert_eq!(store.purge(&running).await.unwrap(), 0);
    let by_name = Filter::new().name("job").id_prefix("g-");
    assert_eq!(store.purge(&by_name).await.unwrap(), 2);
    assert!(store.get(&id("g-ok")).await.unwrap().is_none());
    assert!(store.get(&id("g-bad")).await.unwrap().is_none());
    assert!(store.get(&id("g-run")).await.unwrap().is_some());
    assert_eq!(store.purge(&Filter::new()).await.unwrap(), 2);
    assert!(store.get(&id("g-other")).await.unwrap().is_none());
    assert!(store.get(&id("h-ok")).await.unwrap().is_none());
    assert!(store.get(&id("g-run")).await.unwrap().is_some());
    assert_eq!(store.purge(&Filter::new()).await.unwrap(), 0);
}

pub async fn runs_and_fingerprints_follow_the_statuses(store: &dyn InstanceStore) {
    // A snapshot fingerprint with the top bit set: the row keeps all 64 bits.
    let code: u64 = 0xfedc_ba98_7654_3210;
    store
        .record(vec![
            started("r-1", "loop", 10, None),
            status("r-1", "loop", 20, Status::Suspended, 3, vec![]).with_run(1, Some(code)),
        ])
        .await
        .unwrap();
    let i = info(store.get(&id("r-1")).await.unwrap());
    assert_eq!((i.runs, i.fingerprint), (1, Some(code)));
    // The next run, after a migration to other code.
    store
        .record(vec![status(
            "r-1",
            "loop",
            30,
            Status::Suspended,
            9,
            vec![],
        )
        .with_run(7, Some(5))])
        .await
        .unwrap();
    let i = info(store.get(&id("r-1")).await.unwrap());
    assert_eq!((i.runs, i.fingerprint), (7, Some(5)));
    // A stale status changes neither.
    store
        .record(vec![status(
            "r-1",
            "loop",
            40,
            Status::Suspended,
            5,
            vec![],
        )
        .with_run(3, Some(code))])
        .await
        .unwrap();
    let i = info(store.get(&id("r-1")).await.unwrap());
    assert_eq!((i.runs, i.fingerprint), (7, Some(5)));
    // The finish counts the last run and holds no machine.
    store
        .record(vec![
            finished("r-1", "loop", 50, Status::Succeeded, b"ok").with_run(8, None)
        ])
        .await
        .unwrap();
    let i = info(store.get(&id("r-1")).await.unwrap());
    assert_eq!(
        (i.status, i.runs, i.fingerprint),
        (Status::Succeeded, 8, None)
    );
    // An instance no fact told of runs has run once.
    store
        .record(vec![started("r-2", "loop", 10, None)])
        .await
        .unwrap();
    assert_eq!(info(store.get(&id("r-2")).await.unwrap()).runs, 1);
}

/// Whether an instance records its children comes from its starts, whichever way they
/// are written (starts alone, or with other facts), and once set stays.
pub async fn whether_children_are_recorded_comes_from_the_starts(store: &dyn InstanceStore) {
    async fn records(store: &dyn InstanceStore, x: &str) -> bool {
        info(store.get(&id(x)).await.unwrap()).records_children
    }
    // Starts alone.
    store
        .record(vec![
            started("k-1", "root", 10, None).with_records_children(true),
            started("k-2", "root", 10, None),
        ])
        .await
        .unwrap();
    assert!(records(store, "k-1").await);
    assert!(!records(store, "k-2").await);
    // A later start that says so sets it; one that does not leaves it.
    store
        .record(vec![
            started("k-2", "root", 12, None).with_records_children(true)
        ])
        .await
        .unwrap();
    assert!(records(store, "k-2").await);
    store
        .record(vec![
            started("k-1", "root", 5, None),
            started("k-2", "root", 5, None),
        ])
        .await
        .unwrap();
    assert!(records(store, "k-1").await && records(store, "k-2").await);
    // A start with other facts in one call; a child whose status came before its start.
    store
        .record(vec![
            started("k-3", "root", 10, None).with_records_children(true),
            status("k-3", "root", 11, Status::Suspended, 1, vec![]).with_run(1, Some(7)),
            status("k-3.0", "leaf", 11, Status::Suspended, 1, vec![]).with_run(1, Some(9)),
        ])
        .await
        .unwrap();
    assert!(records(store, "k-3").await);
    assert!(!records(store, "k-3.0").await);
    store
        .record(vec![
            started("k-3.0", "leaf", 10, Some("k-3")).with_records_children(true)
        ])
        .await
        .unwrap();
    let child = info(store.get(&id("k-3.0")).await.unwrap());
    assert_eq!(child.parent, Some(id("k-3")));
    assert_eq!((child.records_children, child.fingerprint), (true, Some(9)));
    // Statuses and finishes leave it as the starts made it.
    store
        .record(vec![
            status("k-2", "root", 20, Status::Running, 2, vec![]),
            finished("k-1", "root", 20, Status::Succeeded, b"ok"),
        ])
        .await
        .unwrap();
    assert!(records(store, "k-1").await && records(store, "k-2").await);
    // An instance known from its finish alone does not.
    store
        .record(vec![finished("k-4", "root", 20, Status::Succeeded, b"ok")])
        .await
        .unwrap();
    assert!(!records(store, "k-4").await);
}

pub async fn a_claim_holds_the_first_nonce(store: &dyn InstanceStore) {
    let c = id("c-1");
    assert!(store.claim(&c, 41).await.unwrap());
    assert!(store.claim(&c, 41).await.unwrap(), "the same nonce again");
    assert!(!store.claim(&c, 42).await.unwrap());
    assert!(store.claim(&id("c-2"), 42).await.unwrap());
    assert!(store.claim(&c, (1 << 62) - 1).await.is_ok_and(|won| !won));
    // A purged instance's claim goes with it.
    store
        .record(vec![finished("c-1", "a", 1, Status::Succeeded, b"x")])
        .await
        .unwrap();
    assert_eq!(
        store.purge(&Filter::new().id_prefix("c-1")).await.unwrap(),
        1
    );
    assert!(store.claim(&c, 42).await.unwrap());
}

pub async fn a_wait_ends_at_the_finish_and_an_unknown_id_is_not_found(store: &dyn InstanceStore) {
    let err = store.wait_finished(&id("w-none")).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");

    store
        .record(vec![started("w-1", "a", 0, None)])
        .await
        .unwrap();
    let w1 = id("w-1");
    let waiting = store.wait_finished(&w1);
    let finishing = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        store
            .record(vec![status("w-1", "a", 1, Status::Running, 1, vec![])])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        store
            .record(vec![finished("w-1", "a", 2, Status::Succeeded, b"done")])
            .await
            .unwrap();
    };
    let (waited, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(waiting, finishing)
    })
    .await
    .expect("the wait ends");
    let i = waited.unwrap();
    assert_eq!(i.status, Status::Succeeded);
    assert_eq!(i.result.as_deref(), Some(&b"done"[..]));
    // A finished instance answers at once.
    let again = store.wait_finished(&id("w-1")).await.unwrap();
    assert_eq!(again, i);
}

/// Instances for listings: 30 starts over 12 milliseconds (ties of up to 3 in one
/// millisecond), three names, every status, and ids with `_` (a `LIKE` wildcard).
async fn listed(store: &dyn InstanceStore) -> Vec<InstanceInfo> {
    let mut facts = Vec::new();
    for n in 0..30u64 {
        let ms = 1000 + n / 3 + (n % 5) * 2;
        let name = ["alpha", "beta", "gamma"][(n % 3) as usize];
        let i = if n % 4 == 0 {
            format!("l_{n:02}")
        } else {
            format!("lx{n:02}")
        };
        facts.push(started(&i, name, ms, None));
        match n % 6 {
            0 => {}
            1 => facts.push(status(&i, name, ms + 1, Status::Running, 1, vec![])),
            2 => facts.push(status(
                &i,
                name,
                ms + 1,
                Status::Suspended,
                1,
                vec![Wait::Resume],
            )),
            3 => facts.push(finished(&i, name, ms + 1, Status::Succeeded, b"ok")),
            4 => facts.push(finished(&i, name, ms + 1, Status::Failed, b"no")),
            _ => facts.push(finished(&i, name, ms + 1, Status::Cancelled, b"stop")),
        }
    }
    store.record(facts).await.unwrap();
    let mut all = Vec::new();
    for n in 0..30u64 {
        let i = if n % 4 == 0 {
            format!("l_{n:02}")
        } else {
            format!("lx{n:02}")
        };
        all.push(info(store.get(&id(&i)).await.unwrap()));
    }
    dtasks::store::sort_newest_first(&mut all);
    all
}

/// Every page of `filter`, `size` at a time.
async fn pages(store: &dyn InstanceStore, filter: &Filter, size: usize) -> Vec<Vec<InstanceInfo>> {
    let mut out = Vec::new();
    let mut query = Query::new(filter.clone()).limit(size).unwrap();
    loop {
        let page = store.list(&query).await.unwrap();
        assert!(page.instances.len() <= size);
        out.push(page.instances);
        match page.next {
            Some(cursor) => {
                // The cursor's text form goes through command lines and URLs.
                let cursor = dtasks::store::Cursor::parse(&cursor.to_string()).unwrap();
                query = Query::new(filter.clone())
                    .limit(size)
                    .unwrap()
                    .after(cursor);
            }
            None => return out,
        }
    }
}

pub async fn pages_run_newest_first_through_filters_and_ties(store: &dyn InstanceStore) {
    let all = listed(store).await;
    let filters = [
        Filter::new(),
        Filter::new().status(Status::Running),
        Filter::new()
            .status(Status::Failed)
            .status(Status::Running)
            .status(Status::Pending),
        Filter::new().name("beta"),
        Filter::new().name("gamma").status(Status::Succeeded),
        Filter::new().id_prefix("l_"),
        Filter::new().id_prefix("lx1"),
        Filter::new()
            .started_after(at(1003))
            .started_before(at(1008)),
        Filter::new().name("alpha").started_after(at(1005)),
        Filter::new().name("nobody"),
    ];
    for filter in &filters {
        let expected: Vec<InstanceInfo> =
            all.iter().filter(|i| filter.matches(i)).cloned().collect();
        for size in [1, 4, 7, 100] {
            let pages = pages(store, filter, size).await;
            let got: Vec<InstanceInfo> = pages.iter().flatten().cloned().collect();
            assert_eq!(got, expected, "{filter:?}, pages of {size}");
            for page in &pages[..pages.len() - 1] {
                assert_eq!(page.len(), size, "only the last page may be short");
            }
        }
    }
    // The `_` of a prefix is no wildcard.
    let underscore = pages(store, &Filter::new().id_prefix("l_"), 100).await;
    assert_eq!(underscore[0].len(), 8);
    assert!(underscore[0]
        .iter()
        .all(|i| i.id.as_str().starts_with("l_")));
}

/// A small deterministic generator (xorshift), so that a failing sequence is the same on
/// every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// 600 random facts about 15 instances — starts with and without parents, recording
/// children or not, statuses of
/// random versions and waits, results of every final status, at random times, many of
/// them stale or duplicate, statuses with and without steps — recorded in calls of 1 to 12 facts, end as in `MemoryStore`
/// (the reference): every call's count of duplicates, every instance, every page.
pub async fn random_facts_end_as_in_the_reference(store: &dyn InstanceStore) {
    use dtasks::store::MemoryStore;
    let reference = MemoryStore::new();
    for seed in [7u64, 1234, 99_991] {
        let mut rng = Rng(seed);
        let prefix = format!("r{seed}-");
        let mut facts = Vec::new();
        for _ in 0..600 {
            let x = format!("{prefix}{}", rng.below(15));
            let ms = rng.below(50);
            let name = ["a", "b"][rng.below(2) as usize];
            facts.push(match rng.below(10) {
                0 | 1 => {
                    let parent = (rng.below(2) == 0).then(|| format!("up{}", rng.below(3)));
                    started(&x, name, ms, parent.as_deref())
                        .with_records_children(rng.below(2) == 0)
                }
                2..=6 => {
                    let st = [Status::Running, Status::Suspended][rng.below(2) as usize];
                    let waits = match rng.below(4) {
                        0 => vec![],
                        1 => vec![Wait::Children(rng.below(5) as u32)],
                        2 => vec![Wait::Event(format!("ev{}", rng.below(3))), Wait::Resume],
                        _ => vec![Wait::Timer {
                            at_ms: rng.below(1000),
                        }],
                    };
                    let steps = match rng.below(3) {
                        0 => vec![],
                        n => vec![Steps::new(0, n as u32, StepKind::Event("ev".into()))],
                    };
                    status(&x, name, ms, st, rng.below(8), waits).with_steps(steps)
                }
                _ => {
                    let st = [Status::Succeeded, Status::Failed, Status::Cancelled]
                        [rng.below(3) as usize];
                    let result = format!("res{}", rng.below(1000));
                    finished(&x, name, ms, st, result.as_bytes())
                }
            });
        }
        let mut rest = facts.as_slice();
        while !rest.is_empty() {
            let n = (1 + rng.below(12) as usize).min(rest.len());
            let (call, tail) = rest.split_at(n);
            rest = tail;
            let expected = reference.record(call.to_vec()).await.unwrap();
            assert_eq!(store.record(call.to_vec()).await.unwrap(), expected);
        }
        for n in 0..15 {
            let x = id(&format!("{prefix}{n}"));
            assert_eq!(
                store.get(&x).await.unwrap(),
                reference.get(&x).await.unwrap(),
                "{x}"
            );
        }
    }
    for filter in [
        Filter::new(),
        Filter::new()
            .status(Status::Failed)
            .status(Status::Suspended),
        Filter::new().name("b").id_prefix("r7-"),
        Filter::new().started_after(at(20)),
        Filter::new().roots(),
        Filter::new().parent(id("up1")).status(Status::Failed),
    ] {
        for size in [3, 50] {
            assert_eq!(
                pages(store, &filter, size).await,
                pages(&reference, &filter, size).await,
                "{filter:?}"
            );
        }
    }
}

/// Calls of starts alone (what clients record before they publish), of one to five
/// starts each (recording children or not), some for ids already started or already
/// running and some repeating an id within the call, interleaved with calls of statuses: the same instances as in the
/// reference, `MemoryStore`.
pub async fn random_starts_end_as_in_the_reference(store: &dyn InstanceStore) {
    use dtasks::store::MemoryStore;
    let reference = MemoryStore::new();
    let mut rng = Rng(4242);
    for _ in 0..300 {
        let starts_only = rng.below(3) != 0;
        let n = 1 + rng.below(5) as usize;
        let mut call = Vec::new();
        for _ in 0..n {
            let x = format!("s-{}", rng.below(25));
            let ms = rng.below(100);
            if starts_only {
                let parent = (rng.below(2) == 0).then(|| format!("up{}", rng.below(3)));
                let records = rng.below(3) == 0;
                call.push(started(&x, "s", ms, parent.as_deref()).with_records_children(records));
            } else {
                call.push(status(&x, "s", ms, Status::Running, rng.below(5), vec![]));
            }
        }
        let expected = reference.record(call.clone()).await.unwrap();
        assert_eq!(store.record(call).await.unwrap(), expected);
    }
    for n in 0..25 {
        let x = id(&format!("s-{n}"));
        assert_eq!(
            store.get(&x).await.unwrap(),
            reference.get(&x).await.unwrap(),
            "{x}"
        );
    }
}

pub async fn the_history_keeps_each_reported_status_once_with_its_steps(store: &dyn InstanceStore) {
    let steps = |n: u32| {
        vec![
            Steps::new(0, 1, StepKind::Run).with_done(1, 0),
            Steps::new(1, n, StepKind::Child("leaf".into())).with_done(n - 1, 1),
        ]
    };
    store
        .record(vec![
            started("h-1", "tree", 10, None),
            status("h-1", "tree", 11, Status::Running, 0, vec![]),
            status(
                "h-1",
                "tree",
                12,
                Status::Suspended,
                1,
                vec![Wait::Children(3)],
            )
            .with_steps(steps(3)),
        ])
        .await
        .unwrap();
    // A redone step writes the same status again: one transition, not two.
    store
        .record(vec![status(
            "h-1",
            "tree",
            13,
            Status::Suspended,
            1,
            vec![Wait::Children(3)],
        )
        .with_steps(steps(3))])
        .await
        .unwrap();
    // A stale status is not history.
    store
        .record(vec![status("h-1", "tree", 14, Status::Running, 0, vec![])])
        .await
        .unwrap();
    store
        .record(vec![status(
            "h-1",
            "tree",
            20,
            Status::Suspended,
            5,
            vec![Wait::Timer { at_ms: 99 }],
        )])
        .await
        .unwrap();
    store
        .record(vec![
            finished("h-1", "tree", 30, Status::Succeeded, b"ok").with_steps(steps(4))
        ])
        .await
        .unwrap();
    // A second finish is a duplicate: no transition either.
    store
        .record(vec![finished("h-1", "tree", 31, Status::Failed, b"no")])
        .await
        .unwrap();
    let i = info(store.get(&id("h-1")).await.unwrap());
    let seen: Vec<(u64, Status, Vec<Wait>, u32)> = i
        .history
        .iter()
        .map(|t| (t.at_ms, t.status, t.waits.clone(), t.steps))
        .collect();
    let ms = |n: u64| dtasks::store::millis(at(n));
    assert_eq!(
        seen,
        vec![
            (ms(11), Status::Running, vec![], 0),
            (ms(12), Status::Suspended, vec![Wait::Children(3)], 4),
            // A status without steps keeps the count of the one before.
            (
                ms(20),
                Status::Suspended,
                vec![Wait::Timer { at_ms: 99 }],
                4
            ),
            (ms(30), Status::Succeeded, vec![], 5),
        ]
    );
    assert_eq!(i.history_dropped, 0);
    assert_eq!(i.steps, steps(4));
    assert_eq!(i.result.as_deref(), Some(&b"ok"[..]));
}

pub async fn a_long_history_keeps_its_latest_transitions(store: &dyn InstanceStore) {
    let max = InstanceInfo::MAX_HISTORY as u64;
    let mut facts = vec![started("long-1", "loop", 0, None)];
    for v in 1..=max + 10 {
        let waits = vec![Wait::Timer { at_ms: v }];
        facts.push(status("long-1", "loop", v, Status::Suspended, v, waits));
    }
    store.record(facts).await.unwrap();
    let i = info(store.get(&id("long-1")).await.unwrap());
    assert_eq!(i.history.len(), InstanceInfo::MAX_HISTORY);
    assert_eq!(i.history_dropped, 10);
    assert_eq!(i.history[0].waits, vec![Wait::Timer { at_ms: 11 }]);
    assert_eq!(
        i.history.last().map(|t| t.waits.clone()),
        Some(vec![Wait::Timer { at_ms: max + 10 }])
    );
}

pub async fn children_are_listed_by_parent_and_roots_alone(store: &dyn InstanceStore) {
    let mut facts = vec![
        started("root-a", "tree", 100, None),
        started("root-b", "tree", 101, None),
    ];
    for n in 0..5u64 {
        facts.push(started(
            &format!("root-a.{n}"),
            "leaf",
            110 + n,
            Some("root-a"),
        ));
    }
    facts.push(started("root-b.0", "leaf", 120, Some("root-b")));
    facts.push(started("root-a.0.0", "leaf", 130, Some("root-a.0")));
    // A child whose finish came before its start (another worker's write won the race):
    // the start still brings its parent.
    facts.push(finished("root-a.9", "leaf", 140, Status::Succeeded, b"ok"));
    facts.push(started("root-a.9", "leaf", 115, Some("root-a")));
    store.record(facts).await.unwrap();

    let ids = |l: &[InstanceInfo]| l.iter().map(|i| i.id.to_string()).collect::<Vec<_>>();
    let of_a = pages(store, &Filter::new().parent(id("root-a")), 2).await;
    let of_a: Vec<InstanceInfo> = of_a.into_iter().flatten().collect();
    assert_eq!(
        ids(&of_a),
        ["root-a.9", "root-a.4", "root-a.3", "root-a.2", "root-a.1", "root-a.0"]
    );
    assert!(of_a.iter().all(|i| i.parent == Some(id("root-a"))));
    let roots = store
        .list(&Query::new(Filter::new().roots()))
        .await
        .unwrap();
    assert_eq!(ids(&roots.instances), ["root-b", "root-a"]);
    let done_children = store
        .list(&Query::new(
            Filter::new().parent(id("root-a")).status(Status::Succeeded),
        ))
        .await
        .unwrap();
    assert_eq!(ids(&done_children.instances), ["root-a.9"]);
    let grandchildren = store
        .list(&Query::new(Filter::new().parent(id("root-a.0"))))
        .await
        .unwrap();
    assert_eq!(ids(&grandchildren.instances), ["root-a.0.0"]);
    assert!(store
        .list(&Query::new(Filter::new().parent(id("nobody"))))
        .await
        .unwrap()
        .instances
        .is_empty());
}
