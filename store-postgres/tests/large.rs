//! Pages of a table of a million instances: the indexes keep a page of 100 well under
//! 50 ms for the common filters (none, a status, a name), on the first page and deep in
//! the listing.

mod common;

use std::time::{Duration, Instant};

use common::TestSchema;
use dtasks::store::{millis, Cursor, Filter, InstanceStore, Query};
use dtasks::{InstanceId, Status};
use dtasks_postgres::PgStore;

const ROWS: i64 = 1_000_000;
/// The start of row `g` is `BASE_MS + g / 3` (ties of three).
const BASE_MS: i64 = 1_700_000_000_000;

/// The median time of five reads of `query`, and the last page read.
async fn timed(store: &PgStore, query: &Query) -> (Duration, dtasks::store::Listing) {
    let mut times = Vec::new();
    let mut page = None;
    for _ in 0..5 {
        let t = Instant::now();
        page = Some(store.list(query).await.unwrap());
        times.push(t.elapsed());
    }
    times.sort();
    (times[2], page.unwrap())
}

/// The cursor just after row `g`.
fn after_row(g: i64) -> Cursor {
    let ms = BASE_MS + g / 3;
    Cursor::parse(&format!("{ms}/big-{g:07}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_100_from_a_million_rows_is_read_from_an_index() {
    let schema = TestSchema::new("large");
    let store = schema.store().await;
    let client = schema.client().await;
    let load = Instant::now();
    client
        .batch_execute(&format!(
            "INSERT INTO \"{s}\".dtasks_instances (id, name, parent, status, waits, \
             created_at, updated_at, version, result, duplicate_results) \
             SELECT 'big-' || lpad(g::text, 7, '0'), 'task' || (g % 7), NULL, \
               (CASE g % 10 WHEN 0 THEN 'failed' WHEN 1 THEN 'running' \
                 WHEN 2 THEN 'suspended' WHEN 3 THEN 'pending' ELSE 'succeeded' END), \
               '[]', t, t, 1, \
               (CASE WHEN g % 10 IN (0, 4, 5, 6, 7, 8, 9) THEN '\\x01'::bytea END), 0 \
             FROM generate_series(1, {ROWS}) AS g, \
               LATERAL (SELECT to_timestamp(({BASE_MS} + g / 3) / 1000.0) AS t) AS x; \
             ANALYZE \"{s}\".dtasks_instances;",
            s = schema.name
        ))
        .await
        .unwrap();
    eprintln!("loaded {ROWS} rows in {:?}", load.elapsed());

    let mid = ROWS / 2;
    let cases = [
        ("no filter", Filter::new()),
        ("a status", Filter::new().status(Status::Failed)),
        ("a name", Filter::new().name("task3")),
        (
            "two statuses",
            Filter::new().status(Status::Failed).status(Status::Running),
        ),
        (
            "a name and a status",
            Filter::new().name("task3").status(Status::Suspended),
        ),
    ];
    for (what, filter) in cases {
        for (depth, query) in [
            ("first page", Query::new(filter.clone())),
            (
                "mid-listing",
                Query::new(filter.clone()).after(after_row(mid)),
            ),
        ] {
            let (took, page) = timed(&store, &query).await;
            eprintln!("{what}, {depth}: {took:?}");
            assert_eq!(page.instances.len(), 100, "{what}, {depth}");
            assert!(page.next.is_some());
            let keys: Vec<(u64, &InstanceId)> = page
                .instances
                .iter()
                .map(|i| (millis(i.created_at), &i.id))
                .collect();
            assert!(keys.windows(2).all(|w| w[0] > w[1]), "newest first");
            assert!(page.instances.iter().all(|i| filter.matches(i)));
            if let Some(cursor) = query.cursor() {
                let (ms, id) = cursor.parts();
                assert!(keys[0] < (ms, id), "after the cursor");
            } else if filter == Filter::new() {
                assert_eq!(page.instances[0].id.as_str(), format!("big-{ROWS:07}"));
            }
            assert!(
                took < Duration::from_millis(50),
                "{what}, {depth}: a page took {took:?}"
            );
        }
    }
    drop(store);
    schema.drop_schema().await;
}
