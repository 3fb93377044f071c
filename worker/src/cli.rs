//! Command-line entry point shared by the `meshbench-worker` binary and the
//! `meshbench worker` subcommand: both parse [`WorkerArgs`] and call [`main`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use meshbench_common::exit;
use meshbench_common::logging::{LogArgs, LogFormat};
use tokio::net::TcpListener;

use crate::config::{ConfigError, WorkerConfig};
use crate::health::{HealthError, HealthServer};
use crate::server::{self, ServerError, WorkerState};

/// Errors of a worker run.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config is missing (exit code 2) or invalid (exit code 1); nothing was bound.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The health listener (`--health-port`) could not be started.
    #[error(transparent)]
    Health(#[from] HealthError),
    /// Serving failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The signal handlers could not be installed.
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(std::io::Error),
}

impl CliError {
    /// Process exit code ([`meshbench_common::exit`]): usage (2) when no config was given,
    /// invalid input (1) for a config that cannot be read or is invalid, run failed (4)
    /// when the worker could not bind or serve.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(ConfigError::Missing) => exit::USAGE,
            CliError::Config(_) => exit::INVALID,
            _ => exit::RUN_FAILED,
        }
    }
}

/// Result alias for this module.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// Arguments of `meshbench-worker` / `meshbench worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Worker config file (JSON, see the `config` module docs).
    #[arg(long, env = "MESHBENCH_WORKER_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The config document itself, inline; used when --config is not given.
    #[arg(long, env = "MESHBENCH_WORKER_CONFIG_JSON", value_name = "JSON")]
    pub config_json: Option<String>,
    /// Listen address, overriding `0.0.0.0:<port>` from the config (e.g. 127.0.0.1:0).
    #[arg(long, env = "MESHBENCH_WORKER_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Also serve /live on this port (same IP as the listen address; 0 = any free port)
    /// from a dedicated thread that load on the main port cannot starve; point liveness
    /// probes here, as the operator's pods do. Without it, /live is on the main port only.
    #[arg(long, env = "MESHBENCH_WORKER_HEALTH_PORT", value_name = "PORT")]
    pub health_port: Option<u16>,
    /// Pod (replica) name, overriding the config's `pod`; default: hostname.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub pod: Option<String>,
    /// Validate the config, print it with defaults filled in, and exit.
    #[arg(long)]
    pub check: bool,
    /// `--log-format`; logs go to stderr, stdout carries the `listening on` lines.
    #[command(flatten)]
    pub log: LogArgs,
}

impl WorkerArgs {
    /// Loads and validates the config named by the arguments, applying `--pod`.
    pub fn load_config(&self) -> Result<WorkerConfig, ConfigError> {
        let mut config = match (&self.config, &self.config_json) {
            (Some(path), _) => WorkerConfig::from_file(path)?,
            (None, Some(json)) => WorkerConfig::from_json(json, "inline JSON")?,
            (None, None) => return Err(ConfigError::Missing),
        };
        if let Some(pod) = &self.pod {
            config.pod = Some(pod.clone());
        }
        Ok(config)
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn terminate_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(CliError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(CliError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = parent_gone() => tracing::warn!("parent process gone; shutting down"),
        }
    })
}

/// Environment variable naming the pid of a supervising process (the local runtime sets
/// it). The worker drains and exits when that process is gone, so no replica outlives a
/// runner that was SIGKILLed; a pod's container never has it set.
pub const PARENT_PID_ENV: &str = "MESHBENCH_PARENT_PID";

/// Resolves when the process named by [`PARENT_PID_ENV`] is no longer our parent (it died
/// and we were re-parented); never resolves when the variable is unset.
async fn parent_gone() {
    let parent = std::env::var(PARENT_PID_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    let Some(parent) = parent else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        if nix::unistd::getppid().as_raw() != parent {
            return;
        }
    }
}

/// Lets the process hold as many sockets as the hard limit allows, as a Go service does,
/// so thousands of concurrent requests do not fail on the usual soft limit of 1024.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!(error = %e, "cannot raise RLIMIT_NOFILE");
    }
}

/// The worker program, `meshbench-worker` and `meshbench worker` alike: sets up logging,
/// runs [`run`] on a multi-threaded runtime, and returns the exit code
/// ([`meshbench_common::exit`]): 0 after a SIGTERM/SIGINT drain (or `--check`), 1 for an
/// invalid config, 2 when none was given, 4 when the worker could not start or serve.
/// Errors are printed as `error: …` on stderr.
pub fn main(args: WorkerArgs) -> ExitCode {
    args.log.init(LogFormat::Text, "info");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            meshbench_common::error(format_args!("cannot start the async runtime: {e}"));
            return exit::code(exit::RUN_FAILED);
        }
    };
    let result = runtime.block_on(run(args));
    // CPU burns of requests abandoned after the drain grace period run on blocking
    // threads; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => exit::code(exit::OK),
        Err(e) => {
            meshbench_common::error(&e);
            exit::code(e.exit_code())
        }
    }
}

/// Runs a worker until SIGTERM/SIGINT, then drains: validates the config (before
/// binding), binds the main and (with `--health-port`) the health listener, prints
/// `meshbench-worker health on <addr>` when there is one, then
/// `meshbench-worker listening on <addr>` on stdout, and serves. The listening line comes
/// last, so a reader that stops at it has seen both.
pub async fn run(args: WorkerArgs) -> Result<()> {
    let config = args.load_config()?;
    if args.check {
        // Serializing a validated config cannot fail.
        println!(
            "{}",
            serde_json::to_string_pretty(&config).unwrap_or_default()
        );
        return Ok(());
    }
    raise_fd_limit();
    let addr = meshbench_common::pod_bind_addr(args.listen.unwrap_or_else(|| config.listen_addr()));
    let state = WorkerState::new(config)?;
    let shutdown = terminate_signal().await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| CliError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| CliError::Bind { addr, source })?;
    // Kept until the main server has drained: liveness must hold during the drain too.
    let health = args
        .health_port
        .map(|port| HealthServer::start(SocketAddr::new(local.ip(), port)))
        .transpose()?;
    let health_addr = health.as_ref().map(HealthServer::local_addr);
    state.start_background()?;
    tracing::info!(
        service = %state.config().service,
        pod = %state.pod(),
        addr = %local,
        health_addr = health_addr.map(|a| a.to_string()),
        endpoints = state.config().endpoints.len(),
        "worker listening"
    );
    if let Some(h) = health_addr {
        println!("meshbench-worker health on {h}");
    }
    println!("meshbench-worker listening on {local}");
    server::serve_state(state, listener, shutdown).await?;
    drop(health);
    Ok(())
}
