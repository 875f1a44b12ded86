//! Integration tests of dtasks against a real RabbitMQ.
