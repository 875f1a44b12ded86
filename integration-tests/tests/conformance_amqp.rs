//! The conformance suite on RabbitMQ: each scenario under a queue prefix of its own, with
//! in-process workers on connections of their own and real (short) delays.

dtasks_integration_tests::conformance_suite!(
    dtasks_integration_tests::conformance::AmqpEnv::start().await?
);
