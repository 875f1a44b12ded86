//! The statements of a store, made once for its schema.

use crate::row::{COLUMNS, WRITER_COLUMNS};

/// The fixed statements of a store in one schema (the filtered ones are built per call
/// by [`crate::select`]).
#[derive(Debug)]
pub(crate) struct Sql {
    /// `"schema".dtasks_instances`.
    pub(crate) instances: String,
    /// `"schema".dtasks_claims`.
    pub(crate) claims: String,
    /// The channel the writer notifies finished ids on.
    pub(crate) channel: String,
    /// One instance by id: `$1` the id.
    pub(crate) get: String,
    /// Inserts a `Pending` row for each id that has none (the state an instance has
    /// before its first fact applies): `$1` ids, `$2` names, `$3` times.
    pub(crate) insert_missing: String,
    /// Records starts alone, in one statement: inserts a `Pending` row for each id of
    /// `$1` that has none (names `$2`, parents `$3`, times `$4`, whether it records its
    /// children `$5`), and on a row that exists fills a missing parent, takes the earlier
    /// start time and sets `records_children` if the start does — what
    /// [`InstanceInfo::apply`](dtasks::store::InstanceInfo::apply) does with a start.
    pub(crate) start_rows: String,
    /// Locks and reads the rows of ids `$1`, in id order.
    pub(crate) lock_rows: String,
    /// Writes whole rows back (a result only where the row had none).
    pub(crate) write_back: String,
    /// Notifies each id of `$2` on channel `$1`.
    pub(crate) notify: String,
    /// Claims `$1` with nonce `$2` at `$3` unless it is claimed.
    pub(crate) claim_insert: String,
    /// The nonce that holds `$1`.
    pub(crate) claim_read: String,
    /// Removes up to `$2` rows finished before `$1`, with their claims; answers how
    /// many.
    pub(crate) expire: String,
    /// Removes claims made before `$1` whose instance is gone.
    pub(crate) expire_claims: String,
    /// `"schema".dtasks_payloads`.
    pub(crate) payloads: String,
    /// Stores a value out of band: `$1` key, `$2` instance, `$3` length, `$4` value, `$5`
    /// time (nothing when the key is there: the same key is the same value).
    pub(crate) payload_put: String,
    /// The value under `$1`.
    pub(crate) payload_get: String,
    /// A page of the values stored before `$1`, after (`$2` time, `$3` key) in that
    /// order, at most `$4`: key, instance.
    pub(crate) old_payloads: String,
    /// Which of the ids `$1` have a row.
    pub(crate) present: String,
    /// Removes the values under the keys `$1` stored before `$2`.
    pub(crate) drop_payloads: String,
}

impl Sql {
    /// The statements for the tables of `schema` (a validated identifier).
    pub(crate) fn new(schema: &str) -> Self {
        let instances = format!("\"{schema}\".dtasks_instances");
        let claims = format!("\"{schema}\".dtasks_claims");
        let payloads = format!("\"{schema}\".dtasks_payloads");
        Self {
            payload_put: format!(
                "INSERT INTO {payloads} (key, instance, len, value, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING"
            ),
            payload_get: format!("SELECT value FROM {payloads} WHERE key = $1"),
            old_payloads: format!(
                "SELECT key, instance, created_at FROM {payloads} WHERE created_at < $1 \
                 AND (created_at, key) > ($2, $3) ORDER BY created_at, key LIMIT $4"
            ),
            present: format!("SELECT id FROM {instances} WHERE id = ANY($1::text[])"),
            drop_payloads: format!(
                "DELETE FROM {payloads} WHERE key = ANY($1::text[]) AND created_at < $2"
            ),
            channel: format!("{schema}_finished"),
            get: format!("SELECT {COLUMNS} FROM {instances} WHERE id = $1"),
            insert_missing: format!(
                "INSERT INTO {instances} (id, name, parent, status, waits, created_at, \
                 updated_at, version, result, duplicate_results) \
                 SELECT u.id, u.name, NULL, 'pending', '[]', u.at, u.at, 0, NULL, 0 \
                 FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(id, name, at) \
                 ORDER BY u.id COLLATE \"C\" \
                 ON CONFLICT (id) DO NOTHING"
            ),
            start_rows: format!(
                "INSERT INTO {instances} AS i (id, name, parent, status, waits, created_at, \
                 updated_at, version, result, duplicate_results, records_children) \
                 SELECT u.id, u.name, u.parent, 'pending', '[]', u.at, u.at, 0, NULL, 0, \
                 u.records_children \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], \
                 $5::bool[]) AS u(id, name, parent, at, records_children) \
                 ORDER BY u.id COLLATE \"C\" \
                 ON CONFLICT (id) DO UPDATE SET \
                 parent = COALESCE(i.parent, EXCLUDED.parent), \
                 created_at = LEAST(i.created_at, EXCLUDED.created_at), \
                 records_children = i.records_children OR EXCLUDED.records_children \
                 WHERE (i.parent IS NULL AND EXCLUDED.parent IS NOT NULL) \
                 OR EXCLUDED.created_at < i.created_at \
                 OR (EXCLUDED.records_children AND NOT i.records_children)"
            ),
            lock_rows: format!(
                "SELECT {WRITER_COLUMNS} FROM {instances} WHERE id = ANY($1::text[]) \
                 ORDER BY id FOR UPDATE"
            ),
            write_back: format!(
                "UPDATE {instances} AS i SET parent = u.parent, status = u.status, \
                 waits = u.waits::jsonb, created_at = u.created_at, \
                 updated_at = u.updated_at, version = u.version, \
                 result = COALESCE(i.result, u.result), \
                 duplicate_results = u.duplicate_results, history = u.history::jsonb, \
                 history_dropped = u.history_dropped, steps = u.steps::jsonb, runs = u.runs, \
                 fingerprint = u.fingerprint, records_children = u.records_children \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                 $5::timestamptz[], $6::timestamptz[], $7::int8[], $8::bytea[], $9::int8[], \
                 $10::text[], $11::int8[], $12::text[], $13::int8[], $14::int8[], \
                 $15::bool[]) \
                 AS u(id, parent, status, waits, created_at, updated_at, version, result, \
                 duplicate_results, history, history_dropped, steps, runs, fingerprint, \
                 records_children) \
                 WHERE i.id = u.id"
            ),
            notify: "SELECT pg_notify($1, x) FROM unnest($2::text[]) AS x".to_owned(),
            claim_insert: format!(
                "INSERT INTO {claims} (id, nonce, claimed_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO NOTHING"
            ),
            claim_read: format!("SELECT nonce FROM {claims} WHERE id = $1"),
            // The values stored out of band go with their root and its children, as in a
            // purge: a value lives as long as its instance, whenever it was stored.
            expire: format!(
                "WITH gone AS (DELETE FROM {instances} WHERE id IN (SELECT id FROM \
                 {instances} WHERE result IS NOT NULL AND updated_at < $1 LIMIT $2) \
                 RETURNING id), \
                 claims AS (DELETE FROM {claims} WHERE id IN (SELECT id FROM gone)), \
                 values_gone AS (DELETE FROM {payloads} AS p USING gone WHERE p.instance = gone.id \
                 OR (starts_with(p.instance, gone.id || '.') AND \
                 substr(p.instance, length(gone.id) + 2) ~ '^[0-9]+(\\.[0-9]+)*$')) \
                 SELECT count(*) FROM gone"
            ),
            expire_claims: format!(
                "DELETE FROM {claims} AS c WHERE c.claimed_at < $1 AND NOT EXISTS \
                 (SELECT 1 FROM {instances} AS i WHERE i.id = c.id)"
            ),
            instances,
            claims,
            payloads,
        }
    }
}
