//! The api binary on its own: OTLP export, logs, start-up errors, its `healthcheck`. The api and
//! the worker together are tested end to end in `system-tests`.

mod process;
