//! The jobstack load generator: an open-loop job mix against the api, measured without
//! coordinated omission, optionally following every job to its end.
//!
//! # Layout
//! - [`args`]: the command line and the [`args::Plan`] it resolves to (scenario presets).
//! - [`schedule`]: arrival times by the clock, and the dispatcher that keeps to them.
//! - [`mix`]: the weighted job mix and the request bodies.
//! - [`api`]: `POST /jobs` and `GET /jobs/{id}`.
//! - [`telemetry`]: a trace per request, `traceparent`, OTLP export.
//! - [`stats`], [`progress`], [`report`]: counting, the live line, the final report.
//! - [`track`]: following accepted jobs to their end state.
//! - [`run`]: one run, start to summary.

pub mod api;
pub mod args;
pub mod mix;
pub mod progress;
pub mod report;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod telemetry;
pub mod track;
