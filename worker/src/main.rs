//! `meshbench-worker`: the generic meshbench microservice, the same program as
//! `meshbench worker` ([`meshbench_worker::main`]). Exit codes: the README's table
//! (`meshbench_common::exit`): 0 after a SIGTERM drain, 1 invalid config (nothing bound),
//! 2 usage (no config given), 4 the worker could not start or serve.

use std::process::ExitCode;

use clap::Parser;
use meshbench_worker::WorkerArgs;

/// The generic meshbench microservice.
#[derive(Debug, Parser)]
#[command(name = "meshbench-worker", version, about)]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
}

fn main() -> ExitCode {
    meshbench_worker::main(Cli::parse().worker)
}
