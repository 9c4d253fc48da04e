//! The api binary: read config, set up telemetry, bind, serve until a signal.

use std::process::ExitCode;

use api::Config;
use shared::telemetry::{self, Settings};

/// jemalloc, whose background threads give memory freed after a burst back to the OS within
/// seconds: with glibc's malloc an api that took 4000 requests/s for 20 s held 300 MiB (its
/// peak) long after the burst, and 33 MiB once trimmed.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(request) = api::access::cli::requested(&args) {
        return create_key(request);
    }
    // Before any runtime: the probe is blocking, and a runtime inside a runtime panics. It also
    // refuses any other argument with its usage line.
    if let Some(code) = shared::probe::run_if_requested(Config::listen_addr) {
        return code;
    }
    serve()
}

/// `api create-key`: a deployment's first API key.
#[tokio::main]
async fn create_key(request: Result<api::access::cli::Request, String>) -> ExitCode {
    let made = async {
        let request = request.map_err(anyhow::Error::msg)?;
        api::access::cli::create(&Config::from_env()?, request).await
    };
    match made.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("api create-key: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve() -> ExitCode {
    match start().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("api: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let telemetry = telemetry::init(&Settings::from_env("api")?)?;
    let shutdown = shared::shutdown::on_signal();
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    let result = api::run(listener, config, shutdown).await;
    telemetry.shutdown().await;
    result
}
