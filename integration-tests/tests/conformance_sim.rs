//! The conformance suite on the simulator (`dtasks::sim`): each scenario on a simulated
//! RabbitMQ of its own, under tokio's paused clock, with the faults of a seed derived from
//! its name (`DTASKS_SIM_SEED` overrides it) — or without faults for the scenarios that
//! count what faults change by design (`conformance::FAULT_FREE`).

dtasks_integration_tests::conformance_suite!(start_paused, |scenario| {
    dtasks_integration_tests::conformance::SimEnv::for_scenario(scenario)
});
