//! The semantics of the instance store, case by case, on `MemoryStore` (the reference)
//! and on `PgStore` (real PostgreSQL, each test in a schema of its own): the same cases,
//! the same assertions.

mod common;

use common::{cases, TestSchema};
use dtasks::store::MemoryStore;

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    cases::$case(&MemoryStore::new()).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let schema = TestSchema::new("conf");
                    let store = schema.store().await;
                    cases::$case(&store).await;
                    drop(store);
                    schema.drop_schema().await;
                }
            )*
        }
    };
}

on_both_stores!(
    started_makes_a_pending_instance,
    a_second_start_fills_a_missing_parent_and_an_earlier_start_only,
    a_status_applies_unless_older_than_the_recorded_version,
    nothing_changes_a_finished_instance_but_the_count_of_duplicates,
    facts_without_a_start_make_the_instance,
    the_facts_of_one_record_apply_in_order,
    a_purge_removes_finished_instances_only,
    a_claim_holds_the_first_nonce,
    runs_and_fingerprints_follow_the_statuses,
    whether_children_are_recorded_comes_from_the_starts,
    a_wait_ends_at_the_finish_and_an_unknown_id_is_not_found,
    pages_run_newest_first_through_filters_and_ties,
    random_facts_end_as_in_the_reference,
    random_starts_end_as_in_the_reference,
    the_history_keeps_each_reported_status_once_with_its_steps,
    a_long_history_keeps_its_latest_transitions,
    children_are_listed_by_parent_and_roots_alone,
);
