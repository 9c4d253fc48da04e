//! The api's integration tests: the real api and worker, in-process on port 0, against the
//! local RabbitMQ and PostgreSQL. Each test gets its own database and AMQP name prefix, so the
//! suite runs in parallel.

mod bad_input;
mod contract;
mod helpers;
mod lifecycle;
mod listing;
mod metrics;
mod otlp;
mod process;
mod resilience;
mod telemetry;
