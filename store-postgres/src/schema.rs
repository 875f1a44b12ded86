//! The store's tables and their migrations.
//!
//! Each migration runs once per schema, in order, recorded in
//! `dtasks_schema_migrations`. All of them run in one transaction that first takes a
//! transaction-scoped advisory lock on the schema's name: of several processes starting
//! at once, one migrates and the others wait, then find nothing left to do.

use deadpool_postgres::Object;

use crate::error::PgError;

/// The first number of the advisory lock's key (`pg_advisory_xact_lock(int, int)`); the
/// second is a hash of the schema's name.
const LOCK_CLASS: i32 = 0x6474_6b73; // "dtks"

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`. `{s}` stands for the
/// quoted schema.
const MIGRATIONS: &[&str] = &[
    // 1: instances, their claims, and the indexes of listings and retention.
    r#"
    CREATE TABLE {s}.dtasks_instances (
        id text COLLATE "C" PRIMARY KEY,
        name text COLLATE "C" NOT NULL,
        parent text COLLATE "C",
        status text NOT NULL CHECK (status IN
            ('pending', 'running', 'suspended', 'succeeded', 'failed', 'cancelled')),
        waits jsonb NOT NULL DEFAULT '[]',
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        version bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
        result bytea,
        duplicate_results bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX dtasks_instances_newest ON {s}.dtasks_instances (created_at, id);
    CREATE INDEX dtasks_instances_status_newest
        ON {s}.dtasks_instances (status, created_at, id);
    CREATE INDEX dtasks_instances_name_newest ON {s}.dtasks_instances (name, created_at, id);
    CREATE INDEX dtasks_instances_finished ON {s}.dtasks_instances (updated_at)
        WHERE result IS NOT NULL;
    CREATE TABLE {s}.dtasks_claims (
        id text COLLATE "C" PRIMARY KEY,
        nonce bigint NOT NULL,
        claimed_at timestamptz NOT NULL
    );
    "#,
    // 2: the history of reported statuses and the journal summary (the timeline), and
    // listings by parent and of roots only.
    r#"
    ALTER TABLE {s}.dtasks_instances
        ADD COLUMN history jsonb NOT NULL DEFAULT '[]',
        ADD COLUMN history_dropped bigint NOT NULL DEFAULT 0,
        ADD COLUMN steps jsonb NOT NULL DEFAULT '[]';
    CREATE INDEX dtasks_instances_parent_newest
        ON {s}.dtasks_instances (parent, created_at, id) WHERE parent IS NOT NULL;
    CREATE INDEX dtasks_instances_roots_newest
        ON {s}.dtasks_instances (created_at, id) WHERE parent IS NULL;
    "#,
    // 3: the runs of an instance continued as new, and the fingerprint of the code that
    // saved a suspended snapshot machine (its bits as a signed number).
    r#"
    ALTER TABLE {s}.dtasks_instances
        ADD COLUMN runs bigint NOT NULL DEFAULT 1,
        ADD COLUMN fingerprint bigint;
    "#,
    // 4: values stored out of band (large arguments, results and event values), by key
    // (`<instance id>/<hash>`), with the instance that wrote them.
    r#"
    CREATE TABLE {s}.dtasks_payloads (
        key text COLLATE "C" PRIMARY KEY,
        instance text COLLATE "C" NOT NULL,
        len bigint NOT NULL,
        value bytea NOT NULL,
        created_at timestamptz NOT NULL
    );
    CREATE INDEX dtasks_payloads_instance ON {s}.dtasks_payloads (instance);
    CREATE INDEX dtasks_payloads_created ON {s}.dtasks_payloads (created_at);
    "#,
    // 5: whether an instance records its children (from its start), so that a listing
    // of the fingerprints in use can tell when children it cannot see may hold code.
    r#"
    ALTER TABLE {s}.dtasks_instances
        ADD COLUMN records_children boolean NOT NULL DEFAULT false;
    "#,
];

/// The schema version this code writes.
pub(crate) const VERSION: i32 = MIGRATIONS.len() as i32;

/// Whether `schema` holds the store's tables (its migrations table).
pub(crate) async fn exists(client: &Object, schema: &str) -> Result<bool, PgError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
             WHERE table_schema = $1 AND table_name = 'dtasks_schema_migrations')",
            &[&schema],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Creates the schema `schema` and its tables, or brings them to [`VERSION`]; refuses a
/// schema of a later version (written by newer code).
pub(crate) async fn migrate(client: &mut Object, schema: &str) -> Result<(), PgError> {
    let s = format!("\"{schema}\"");
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&LOCK_CLASS, &schema],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s}; \
         CREATE TABLE IF NOT EXISTS {s}.dtasks_schema_migrations (\
             version integer PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {s}.dtasks_schema_migrations"),
            &[],
        )
        .await?;
    let current: i32 = row.try_get(0)?;
    if current > VERSION {
        return Err(PgError::Corrupt(format!(
            "the schema `{schema}` is at version {current}, newer than this code's {VERSION}"
        )));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(&migration.replace("{s}", &s)).await?;
        tx.execute(
            &format!("INSERT INTO {s}.dtasks_schema_migrations (version) VALUES ($1)"),
            &[&version],
        )
        .await?;
        tracing::info!(schema, version, "instance store schema migrated");
    }
    tx.commit().await?;
    Ok(())
}

/// Whether `schema` can name the store's schema: 1 to 48 of lower-case ASCII letters,
/// digits and `_`, not starting with a digit (it is quoted in statements, and names the
/// notification channel `<schema>_finished`, which must stay under 64 bytes).
pub(crate) fn valid_schema(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 48
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::valid_schema;

    #[test]
    fn schema_names() {
        assert!(valid_schema("dtasks"));
        assert!(valid_schema("t_01"));
        assert!(!valid_schema(""));
        assert!(!valid_schema("1abc"));
        assert!(!valid_schema("Upper"));
        assert!(!valid_schema("a\"b"));
        assert!(!valid_schema(&"a".repeat(49)));
    }
}
