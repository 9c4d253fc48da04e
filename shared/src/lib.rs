//! Mechanisms shared by the jobstack services; nothing here knows a job kind or an HTTP route.
//!
//! # Layout
//! - [`config`]: reading environment variables, one clear error per bad value.
//! - [`telemetry`]: JSON logs with trace ids, OTLP traces, trace-context propagation.
//! - [`metrics`]: the process-wide Prometheus recorder.
//! - [`amqp`]: connecting to RabbitMQ, the topology, confirmed publishing.
//! - [`backoff`]: capped exponential backoff with jitter.
//! - [`shutdown`]: the one cancellation token that SIGINT/SIGTERM trip.
//! - [`probe`]: the `healthcheck` sub-command: a client of the service's own `/readyz`, for
//!   container health checks.
//! - [`readiness`]: the `/readyz` answer, one shape for every service.
//! - [`admin`]: the admin router (`/healthz`, `/readyz`, `/metrics`) of a service.
//! - [`faults`]: the demo's fault switches (`/admin/faults`), behind a token.
//! - [`secret`]: comparing secrets in constant time.

pub mod admin;
pub mod amqp;
pub mod backoff;
pub mod config;
pub mod faults;
pub mod metrics;
pub mod probe;
pub mod readiness;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
