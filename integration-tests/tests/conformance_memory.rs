//! The conformance suite on the in-memory transport, under virtual time (no broker).

dtasks_integration_tests::conformance_suite!(
    dtasks_integration_tests::conformance::MemoryEnv::new()
);
