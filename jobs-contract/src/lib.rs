//! What the jobstack services agree on, and nothing else: the messages on the queues and, per
//! job kind, its name, payload type, validation and JSON Schema.
//!
//! The api validates a job against this contract before it stores it; the worker runs handlers
//! written against its payload types. Neither depends on the other, and a worker written in
//! another language can validate what it receives against the exported schemas. No runtime
//! dependencies on purpose: no async runtime, no broker client, no HTTP.
//!
//! # Layout
//! - [`messages`]: job, event and control messages (JSON bodies on RabbitMQ).
//! - [`flow`]: the limits and uniqueness a kind may declare.
//! - [`kinds`]: the job kinds — one file per kind — and the [`Catalog`] of them.
//! - [`request`]: what a client sends to submit a job, and when it may run.
//! - [`strict`]: JSON read as its schema reads it (a struct only from an object).
//! - [`topology`]: the exchanges and queues, by name.

pub mod flow;
pub mod kinds;
pub mod messages;
pub mod request;
pub mod strict;
pub mod topology;

pub use kinds::{Catalog, JobKind};
pub use request::JobRequest;
pub use topology::Topology;
