//! `meshbench-worker`: the generic meshbench microservice. Exit code 2 on an invalid
//! config (before binding), 1 on other failures, 0 after a SIGTERM drain.

use std::process::ExitCode;

use clap::Parser;
use meshbench_worker::WorkerArgs;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The generic meshbench microservice.
#[derive(Debug, Parser)]
#[command(name = "meshbench-worker", version, about)]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, env = "MESHBENCH_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshbench-worker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(meshbench_worker::run(cli.worker));
    // CPU burns of requests abandoned after the drain grace period run on blocking
    // threads; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshbench-worker: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
