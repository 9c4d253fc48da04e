//! The api binary: read config, set up telemetry, bind, serve until a signal.

use std::process::ExitCode;

use api::Config;
use shared::telemetry::{self, Settings};

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
