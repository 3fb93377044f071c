//! `meshbench-loadgen`: runs a load plan and writes its result; the same program as
//! `meshbench loadgen` ([`meshbench_loadgen::main`]).
//!
//! Exit codes (the README's table, `meshbench_common::exit`):
//! - 0: the plan ran to the end; the result was written (and posted).
//! - 1: invalid plan, or the plan file cannot be read; nothing was sent.
//! - 2: usage error (unknown flag, no plan or URL, malformed value); nothing was sent.
//! - 4: the run failed (the preflight request to the target, Goose, a file could not be
//!   written, ...), or was stopped by SIGINT/SIGTERM with the partial result written (and
//!   posted).
//! - 5: the result was written but posting it to `--results-url` failed.

use std::process::ExitCode;

use clap::Parser;
use meshbench_loadgen::LoadgenArgs;

/// Goose-based open- and closed-loop load generator with exact merged latency.
#[derive(Debug, Parser)]
#[command(name = "meshbench-loadgen", version, about)]
struct Cli {
    #[command(flatten)]
    args: LoadgenArgs,
}

fn main() -> ExitCode {
    meshbench_loadgen::main(Cli::parse().args)
}
