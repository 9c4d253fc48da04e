//! The worker binary: read config, set up telemetry, bind the admin port, run until a signal.

use std::process::ExitCode;

use shared::telemetry::{self, Settings};
use worker::Config;

/// jemalloc, whose background threads give memory freed after a burst back to the OS within
/// seconds: with glibc's malloc an api that took 4000 requests/s for 20 s held 300 MiB (its
/// peak) long after the burst, and 33 MiB once trimmed.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Before any runtime: the probe is blocking, and a runtime inside a runtime panics.
    if let Some(code) = shared::probe::run_if_requested(Config::listen_addr) {
        return code;
    }
    serve()
}

#[tokio::main]
async fn serve() -> ExitCode {
    match start().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let telemetry = telemetry::init(&Settings::from_env("worker")?)?;
    let shutdown = shared::shutdown::on_signal();
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, concurrency = config.concurrency, "worker starting");
    let result = worker::run(listener, config, shutdown).await;
    telemetry.shutdown().await;
    result
}
