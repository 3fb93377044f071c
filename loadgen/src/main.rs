//! `meshbench-loadgen`: runs a load plan and writes its result.
//!
//! Exit codes:
//! - 0: the plan ran to the end; the result was written (and posted).
//! - 1: the run failed (Goose error, a file could not be written, ...).
//! - 2: invalid plan or command line; nothing was sent.
//! - 3: the preflight request failed (target unreachable); nothing else was sent.
//! - 4: stopped by SIGINT/SIGTERM; the partial result was written (and posted).
//! - 5: the result was written but posting it to `--results-url` failed.

use std::process::ExitCode;

use clap::Parser;
use meshbench_loadgen::{LoadgenArgs, run};
use tracing_subscriber::EnvFilter;

/// Goose-based open- and closed-loop load generator with exact merged latency.
#[derive(Debug, Parser)]
#[command(name = "meshbench-loadgen", version, about)]
struct Cli {
    #[command(flatten)]
    args: LoadgenArgs,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,goose=error")),
        )
        .init();
    let runtime = match meshbench_loadgen::runtime(cli.args.worker_threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.args)) {
        Ok(result) if result.partial => {
            eprintln!("stopped early: the partial result was written");
            ExitCode::from(4)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
