//! End-to-end: the real api and worker, in-process on port 0, against the test RabbitMQ and
//! PostgreSQL. Each test gets its own database and AMQP name prefix, so the suite runs in
//! parallel; each cleans up on drop, also when it fails.

mod accept;
mod access;
mod bad_input;
mod contract;
mod control;
mod faults;
mod flow;
mod helpers;
mod lifecycle;
mod listing;
mod long_jobs;
mod metrics;
mod resilience;
mod schedules;
mod telemetry;
mod workflows;
