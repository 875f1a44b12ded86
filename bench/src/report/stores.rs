//! The S sections: the instance stores on RabbitMQ — S1, W1b with `start` next to `call`
//! on each store; S2, status reads by id; S3, pages of a million instances; S4, what a
//! root writes to its store — and their verdicts.

use std::fmt::Write as _;

use super::numbers::{f2, int};
use super::verdicts::Verdict;
use super::Report;
use crate::counting::FACT_KINDS;
use crate::raw::RawRun;
use crate::stats::{median_by, pct};
use crate::stores::{ListRun, StatusRun, StoreRuns, LIST_ROWS};
use crate::workloads::Run;

/// S1's target: start at least this fraction of call.
const START_VS_CALL: f64 = 0.9;
/// S2's target: a status read's p50 under this (ms).
const STATUS_P50_MS: f64 = 2.0;
/// S3's target: a page's p50 under this (ms).
const PAGE_P50_MS: f64 = 50.0;

/// One store's S1 runs.
struct S1<'a> {
    store: &'static str,
    start: &'a [Run],
    call: &'a [Run],
}

impl S1<'_> {
    fn medians(&self) -> Option<(Run, Run)> {
        Some((
            median_by(self.start, Run::steps_per_s)?,
            median_by(self.call, Run::steps_per_s)?,
        ))
    }

    /// Each repetition's start ÷ call, paired in order.
    fn per_rep(&self) -> Vec<f64> {
        self.start
            .iter()
            .zip(self.call)
            .map(|(s, c)| s.steps_per_s() / c.steps_per_s())
            .collect()
    }
}

/// A time in ms: three decimals under 1 ms, else two.
fn ms(x: f64) -> String {
    if x.is_finite() && x < 1.0 {
        format!("{x:.3}")
    } else {
        f2(x)
    }
}

fn p50_p99(v: &[f64]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    format!("{} / {}", ms(pct(v, 0.5)), ms(pct(v, 0.99)))
}

fn p50_max(v: &[f64]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    format!("{} / {}", ms(pct(v, 0.5)), ms(pct(v, 1.0)))
}

/// CPU ms per root of this process, of the broker and of the database server.
fn cpu(r: &Run) -> [f64; 3] {
    let roots = r.instances.max(1) as f64;
    [
        r.cpu.bench / roots * 1e3,
        r.cpu.broker.map_or(f64::NAN, |b| b / roots * 1e3),
        r.cpu.database.map_or(f64::NAN, |b| b / roots * 1e3),
    ]
}

impl Report {
    fn store_runs(&self) -> Option<&StoreRuns> {
        self.amqp.as_ref().map(|s| &s.stores)
    }

    fn s1(&self) -> Vec<S1<'_>> {
        let Some(a) = self.amqp.as_ref() else {
            return Vec::new();
        };
        vec![
            S1 {
                store: "RabbitMQ-only stream store",
                start: &a.w1b,
                call: &a.w1b_call,
            },
            S1 {
                store: "PostgreSQL store",
                start: &a.stores.pg_start,
                call: &a.stores.pg_call,
            },
        ]
    }

    /// Whether any S section ran.
    fn stores_ran(&self) -> bool {
        self.store_runs().is_some_and(|s| {
            !s.pg_start.is_empty()
                || s.status_stream.is_some()
                || s.status_pg.is_some()
                || s.list_pg.is_some()
                || s.list_fold.is_some()
                || !s.skipped.is_empty()
        })
    }

    /// The S sections, when any ran.
    pub(super) fn render_stores(&self, o: &mut String, raw: &Option<RawRun>) {
        let Some(st) = self.store_runs() else { return };
        if !self.stores_ran() {
            return;
        }
        let _ = writeln!(o, "\n## S1–S4: the instance store on RabbitMQ\n");
        let _ = writeln!(
            o,
            "Where the facts of root instances (start, status, result) are kept: the RabbitMQ-only stream store (the transport's default: facts appended to one stream, folded in memory by each reading process) or the PostgreSQL store (`dtasks-postgres`, schema `{}` made anew by the run; one store, with connections and a writer of its own, per worker and for the client, as if each were a process of its own). Workers and client use the same store.\n",
            crate::stores::SCHEMA
        );
        self.render_s1(o, raw);
        self.render_s2(o, st);
        self.render_s3(o, st);
        self.render_s4(o);
        for n in &st.skipped {
            let _ = writeln!(o, "\n- {n}");
        }
    }

    fn render_s1(&self, o: &mut String, raw: &Option<RawRun>) {
        let rows: Vec<_> = self
            .s1()
            .into_iter()
            .filter(|r| r.medians().is_some())
            .collect();
        if rows.is_empty() {
            return;
        }
        let raw_sps = raw.as_ref().map_or(f64::NAN, RawRun::steps_per_s);
        let _ = writeln!(
            o,
            "### S1: W1b with `Client::start` + `Handle::result`, next to `Client::call`\n"
        );
        let _ = writeln!(
            o,
            "{} chains of {} steps at once, each way {} times (medians). On the stream store these are W1b's and W1b (call)'s runs (alternated with the raw baseline); on PostgreSQL a pair of runs per repetition after them; in each pair start goes first in odd repetitions and call in even ones. With `start` the client records the root's Started fact while it publishes the start; the result comes back on its reply queue once the worker has recorded the Finished fact (PostgreSQL: the reply then carries the recorded result, and the client reads nothing back) or while it appends it (stream store: the client then waits for the finish in the stream). `call` records nothing.\n",
            self.sizes.w1b, self.settings.steps, self.sizes.reps
        );
        let _ = writeln!(
            o,
            "| store | start steps/s | call steps/s | **start ÷ call** (target ≥ {START_VS_CALL:.2}) | start ÷ call per rep (min–max) | start ÷ raw | call ÷ raw | wall ms, start / call | `Client::start` p50 / p99 ms | CPU ms / root, start / call: this process | broker | PostgreSQL server |"
        );
        let _ = writeln!(
            o,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in rows {
            let Some((s, c)) = r.medians() else { continue };
            let per = r.per_rep();
            let lo = per.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = per.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sc = cpu(&s);
            let cc = cpu(&c);
            let _ = writeln!(
                o,
                "| {} | {} | {} | **{}** | {}–{} | {} | {} | {} / {} | {} | {} / {} | {} / {} | {} / {} |",
                r.store,
                int(s.steps_per_s()),
                int(c.steps_per_s()),
                f2(s.steps_per_s() / c.steps_per_s()),
                f2(lo),
                f2(hi),
                f2(s.steps_per_s() / raw_sps),
                f2(c.steps_per_s() / raw_sps),
                int(s.cpu.wall * 1e3),
                int(c.cpu.wall * 1e3),
                p50_p99(&s.samples_ms),
                f2(sc[0]),
                f2(cc[0]),
                f2(sc[1]),
                f2(cc[1]),
                f2(sc[2]),
                f2(cc[2])
            );
        }
    }

    fn render_s2(&self, o: &mut String, st: &StoreRuns) {
        let rows = [
            ("RabbitMQ-only stream store", &st.status_stream),
            ("PostgreSQL store", &st.status_pg),
        ];
        if rows.iter().all(|(_, r)| r.is_none()) {
            return;
        }
        let _ = writeln!(
            o,
            "\n### S2: status by id, from a client that started none of them\n"
        );
        let _ = writeln!(
            o,
            "The environment's client starts {} chains and waits for their results, and starts one instance that waits for an event. Then a second client, on a transport (connections) of its own and, on PostgreSQL, a store of its own (a new process would have both), reads `Client::status(id)` of each, one at a time: its first read alone (on the stream store it starts following the stream and reads all of it: the facts recorded under this prefix so far), then the others (finished: the stream store answers from its fold without a sync), then {} reads of the suspended instance (the stream store syncs first: a marker round trip).\n",
            self.sizes.s2,
            crate::stores::RUNNING_READS
        );
        let _ = writeln!(
            o,
            "| store | instances | first read ms (facts in the store then) | finished: p50 / p99 ms (target p50 < {STATUS_P50_MS} ms) | suspended: p50 / p99 ms |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|");
        for (label, r) in rows {
            let Some(r) = r else { continue };
            let _ = writeln!(
                o,
                "| {label} | {} | {} ({}) | {} | {} |",
                r.instances,
                ms(r.first_ms),
                int(r.facts_before as f64),
                p50_p99(&r.finished_ms),
                p50_p99(&r.running_ms)
            );
        }
    }

    fn render_s3(&self, o: &mut String, st: &StoreRuns) {
        let rows = [
            ("PostgreSQL store", &st.list_pg),
            ("stream store's fold (in memory)", &st.list_fold),
        ];
        if rows.iter().all(|(_, r)| r.is_none()) {
            return;
        }
        let _ = writeln!(
            o,
            "\n### S3: a page of 100 from {} instances\n",
            int(LIST_ROWS as f64)
        );
        let _ = writeln!(
            o,
            "PostgreSQL: the table of schema `{}` (made anew, dropped after) seeded with one `INSERT … SELECT generate_series` — one instance every 600 ms over a week, 7 DTask names, 91% succeeded, 2% failed, 1% cancelled, 2% running, 3% suspended (waiting for an event), 1% pending, a 48-byte result for each finished one — then `ANALYZE`; pages read with `Client::list`. The stream store's fold: the same instances applied as facts (a start, then a status or a finish) to a `MemoryStore` directly, as a reading process would hold them after following a stream of 2,000,000 facts (not published: the stream was not seeded), pages read with `MemoryStore::page`, what the stream store's `list` answers from after its sync (a marker round trip, not included; see S2's suspended reads). Each page read {} times after one untimed read; mid-listing: the page after the cursor of the 500,000th instance.\n",
            crate::stores::LIST_SCHEMA,
            crate::stores::LIST_READS
        );
        let _ = writeln!(
            o,
            "| store | filled in s | filter | first page p50 / max ms | mid-listing p50 / max ms |"
        );
        let _ = writeln!(o, "|---|---:|---|---:|---:|");
        for (label, r) in rows {
            let Some(r) = r else { continue };
            let mut filters: Vec<&str> = r.cases.iter().map(|c| c.what).collect();
            filters.dedup();
            for what in filters {
                let case = |deep: bool| {
                    r.cases
                        .iter()
                        .find(|c| c.what == what && c.deep == deep)
                        .map_or("—".into(), |c| p50_max(&c.ms))
                };
                let _ = writeln!(
                    o,
                    "| {label} | {} | {what} | {} | {} |",
                    f2(r.seed_s),
                    case(false),
                    case(true)
                );
            }
        }
    }

    fn render_s4(&self, o: &mut String) {
        let rows: Vec<_> = self
            .s1()
            .into_iter()
            .filter(|r| !r.start.is_empty())
            .collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(o, "\n### S4: store writes per root\n");
        let _ = writeln!(
            o,
            "Over every S1 run (W1b, chains of {} steps): `InstanceStore::record` calls (each a write its caller waits for) and facts, counted by a wrapper around the store of the workers and of the client; on PostgreSQL, the transactions its writers committed (`PgStore::write_stats`, all stores summed). A `call` root records nothing.\n",
            self.settings.steps
        );
        let _ = writeln!(
            o,
            "| store | way | roots | record calls / root | facts / root ({}) | record wait ms, mean: client's start / worker's | PostgreSQL transactions / root | facts / transaction |",
            FACT_KINDS[..3].join(" / ")
        );
        let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|");
        for r in rows {
            for (way, runs) in [("start", r.start), ("call", r.call)] {
                if runs.is_empty() {
                    continue;
                }
                let roots: u64 = runs.iter().map(|x| x.instances as u64).sum();
                let per = roots.max(1) as f64;
                let records: u64 = runs.iter().map(|x| x.counts.records).sum();
                let kind = |k: usize| runs.iter().map(|x| x.counts.facts[k]).sum::<u64>();
                let facts: u64 = (0..FACT_KINDS.len()).map(kind).sum();
                let tx: u64 = runs.iter().map(|x| x.pg.transactions).sum();
                let pg_facts: u64 = runs.iter().map(|x| x.pg.facts).sum();
                let pg = r.store.starts_with("PostgreSQL");
                // Mean wait of the record calls that began with a fact of kinds `ks`.
                let wait = |ks: &[usize]| {
                    let calls: u64 = ks
                        .iter()
                        .map(|k| runs.iter().map(|x| x.counts.record_calls[*k]).sum::<u64>())
                        .sum();
                    let us: u64 = ks
                        .iter()
                        .map(|k| runs.iter().map(|x| x.counts.record_us[*k]).sum::<u64>())
                        .sum();
                    if calls == 0 {
                        "—".to_string()
                    } else {
                        f2(us as f64 / calls as f64 / 1e3)
                    }
                };
                let _ = writeln!(
                    o,
                    "| {} | {way} | {} | {} | {} ({} / {} / {}) | {} / {} | {} | {} |",
                    r.store,
                    int(roots as f64),
                    f2(records as f64 / per),
                    f2(facts as f64 / per),
                    f2(kind(0) as f64 / per),
                    f2(kind(1) as f64 / per),
                    f2(kind(2) as f64 / per),
                    wait(&[0]),
                    wait(&[1, 2]),
                    if pg {
                        f2(tx as f64 / per)
                    } else {
                        "—".into()
                    },
                    if pg && tx > 0 {
                        f2(pg_facts as f64 / tx as f64)
                    } else {
                        "—".into()
                    }
                );
            }
        }
    }

    /// The verdicts of S1, S2 and S3 (only for what ran).
    pub(super) fn store_verdicts(&self) -> Vec<Verdict> {
        let mut v = Vec::new();
        let Some(st) = self.store_runs() else {
            return v;
        };
        for r in self.s1() {
            let target = format!(
                "S1: W1b with `start` on RabbitMQ + {} ≥ {START_VS_CALL:.2}× W1b with `call`",
                r.store
            );
            match r.medians() {
                Some((s, c)) if !r.store.starts_with("PostgreSQL") || !st.pg_start.is_empty() => {
                    let ratio = s.steps_per_s() / c.steps_per_s();
                    v.push(Verdict::new(
                        target,
                        format!(
                            "{}× ({} vs {} steps/s)",
                            f2(ratio),
                            int(s.steps_per_s()),
                            int(c.steps_per_s())
                        ),
                        Some(ratio >= START_VS_CALL),
                        format!(
                            "by {:.2}; start needs {:.2}× its throughput (see S1 and S4)",
                            START_VS_CALL - ratio,
                            START_VS_CALL / ratio
                        ),
                    ));
                }
                _ if !st.skipped.is_empty() && r.store.starts_with("PostgreSQL") => {
                    v.push(Verdict::new(target, "—", None, " (PostgreSQL not reached)"));
                }
                _ => {}
            }
        }
        for (label, r) in [
            ("the stream store", &st.status_stream),
            ("the PostgreSQL store", &st.status_pg),
        ] {
            let Some(r) = r else { continue };
            v.push(status_verdict(label, "finished", r, &r.finished_ms));
            v.push(status_verdict(label, "suspended", r, &r.running_ms));
        }
        if let Some(r) = &st.list_pg {
            v.push(page_verdict(r));
        }
        v
    }
}

fn status_verdict(store: &str, which: &str, r: &StatusRun, v: &[f64]) -> Verdict {
    let p50 = pct(v, 0.5);
    Verdict::new(
        format!(
            "S2: `Client::status(id)` of a {which} instance on {store}, from a second client, p50 < {STATUS_P50_MS} ms"
        ),
        format!(
            "p50 {} ms, p99 {} ms ({} reads; first read {} ms)",
            ms(p50),
            ms(pct(v, 0.99)),
            v.len(),
            ms(r.first_ms)
        ),
        Some(p50 < STATUS_P50_MS),
        format!("by {} ms", ms(p50 - STATUS_P50_MS)),
    )
}

fn page_verdict(r: &ListRun) -> Verdict {
    let worst = r
        .cases
        .iter()
        .map(|c| (pct(&c.ms, 0.5), c))
        .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    match worst {
        Some((p50, c)) => Verdict::new(
            format!(
                "S3: a page of 100 from {} instances on PostgreSQL (no filter, a status, a name; first page and mid-listing) p50 < {PAGE_P50_MS} ms",
                int(r.rows as f64)
            ),
            format!(
                "slowest p50 {} ms ({}, {})",
                ms(p50),
                c.what,
                if c.deep { "mid-listing" } else { "first page" }
            ),
            Some(p50 < PAGE_P50_MS),
            format!("by {} ms", ms(p50 - PAGE_P50_MS)),
        ),
        None => Verdict::new("S3: a page of 100 on PostgreSQL p50 < 50 ms", "—", None, ""),
    }
}
