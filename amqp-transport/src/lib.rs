//! RabbitMQ transport for dtasks (under construction).
