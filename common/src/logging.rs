//! `--log-format` and the tracing set-up of every meshbench program.
//!
//! Logs go to stderr (stdout carries results: the loadgen's JSON, the worker's
//! `listening on` lines, `meshbench plan`'s table). The level comes from `RUST_LOG`, or
//! else from the program's default filter; the format from `--log-format` /
//! `MESHBENCH_LOG_FORMAT`, or else from the program's default (text; JSON for the
//! operator, which runs in a cluster).

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// The logging flags every meshbench program takes (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log format on stderr: text, or json for log collectors (default text; json for
    /// `meshbench operator`). The level comes from RUST_LOG.
    #[arg(long, value_enum, value_name = "FORMAT", env = "MESHBENCH_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl LogArgs {
    /// Installs the global tracing subscriber: `--log-format` or else `default_format`,
    /// `RUST_LOG` or else `default_filter` (e.g. `"info,goose=error"`). See [`init`].
    pub fn init(&self, default_format: LogFormat, default_filter: &str) {
        init(self.log_format.unwrap_or(default_format), default_filter);
    }
}

/// Installs the global tracing subscriber, writing to stderr in `format`, filtered by
/// `RUST_LOG` or else by `default_filter`. A subscriber already installed (by a test, or by
/// an embedding program) is kept: this one is then silently not installed.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
