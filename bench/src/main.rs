//! `bench`: measure, remove what the run made whatever happens (error, panic, Ctrl-C, SIGTERM),
//! write BENCHMARKS.md. Exit status 0 when the run completed, 1 when it did not.

use std::process::ExitCode;

use bench::config::Config;
use clap::Parser as _;

fn main() -> ExitCode {
    let cfg = Config::parse();
    // One thread: the bench only waits and samples; the load comes from its child processes.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    match rt.block_on(bench::run_to_end(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
