//! `PgStore::from_env` (alone in its test binary: it sets the process's environment).

mod common;

use common::{id, started, TestSchema};
use dtasks::store::InstanceStore;
use dtasks_postgres::{PgStore, PgStoreBuilder, DATABASE_URL};

#[tokio::test]
async fn the_store_connects_to_the_database_named_by_database_url() {
    std::env::remove_var(DATABASE_URL);
    let err = PgStore::from_env().await.unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(err.to_string().contains(DATABASE_URL), "{err}");

    std::env::set_var(DATABASE_URL, common::url());
    let schema = TestSchema::new("env");
    let store = PgStoreBuilder::from_env()
        .unwrap()
        .schema(schema.name.clone())
        .connect()
        .await
        .unwrap();
    store
        .record(vec![started("e", "x", 0, None)])
        .await
        .unwrap();
    assert!(store.get(&id("e")).await.unwrap().is_some());
    assert_eq!(store.schema(), schema.name);
    drop(store);
    schema.drop_schema().await;
}
