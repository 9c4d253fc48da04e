//! `loadgen`: drive a jobstack api with a job mix and report what it measured.
//! Exit status: 0 ok, 1 errors or lost jobs over --max-error-rate, 2 could not run.

use std::process::ExitCode;

use clap::Parser as _;
use loadgen::{args::Args, run, telemetry};

fn main() -> ExitCode {
    let args = Args::parse();
    let plan = args.plan().unwrap_or_else(|e| e.exit());
    let result = run::runtime(args.threads).block_on(async {
        let telemetry = telemetry::init()?;
        let summary = run::run(&args, plan).await;
        telemetry.shutdown().await;
        summary
    });
    match result {
        Ok(summary) => {
            summary.print(args.json);
            if summary.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}
