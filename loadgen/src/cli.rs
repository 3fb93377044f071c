//! Command-line arguments (`meshbench-loadgen`, `meshbench loadgen`), the program
//! ([`main`], which both call) and its async part [`run`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshbench_common::duration::parse as parse_duration;
use meshbench_common::exit;
use meshbench_common::logging::{LogArgs, LogFormat};
use tokio_util::sync::CancellationToken;

use crate::load_plan::{self, InstanceSpec, LoadModel, LoadPlan, PlanError, Stage, WarmUp};
use crate::result::LoadResult;
use crate::runner::{Pacing, Result, RunOptions, RunnerError, error_chain, run_plan};

/// Arguments of a load run: a plan file, or flags for a quick single-stage run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Load plan file (JSON or YAML, see `meshbench_loadgen::load_plan::LoadPlan`).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["url", "rate", "users"])]
    pub plan: Option<PathBuf>,
    /// Quick run: the URL to load (scheme, host, port, path and query).
    #[arg(long, value_name = "URL", required_unless_present = "plan")]
    pub url: Option<String>,
    /// Quick run: open loop at this many requests per second (over all instances).
    #[arg(long, value_name = "RPS", conflicts_with = "users")]
    pub rate: Option<f64>,
    /// Quick run: closed loop with this many users (over all instances).
    #[arg(long, value_name = "N")]
    pub users: Option<u32>,
    /// Quick run: stage duration (e.g. 30s).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Quick run: warm-up before the stage, measured apart.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub warm_up: Option<Duration>,
    /// Quick run: HTTP method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Quick run: open-loop in-flight bound.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_in_flight: u32,
    /// Quick run: open-loop drop limit (requests later than this are not sent).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_lateness: Option<Duration>,
    /// Quick run: closed-loop think time.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub think_time: Option<Duration>,
    /// Request timeout (overrides the plan's).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Skip the preflight request.
    #[arg(long)]
    pub no_preflight: bool,
    /// Where to write the result JSON; `-` is stdout.
    #[arg(long, value_name = "PATH", default_value = "-")]
    pub out: PathBuf,
    /// Indent the result JSON.
    #[arg(long)]
    pub pretty: bool,
    /// Index of this instance in a distributed run.
    #[arg(long, value_name = "I", env = "JOB_COMPLETION_INDEX")]
    pub index: Option<u32>,
    /// Number of instances in a distributed run.
    #[arg(long, value_name = "N", env = "MESHBENCH_LOADGEN_INSTANCES")]
    pub instances: Option<u32>,
    /// Start at this wall-clock time: RFC 3339 (`2026-01-01T12:00:00Z`) or unix milliseconds.
    #[arg(long, value_name = "TIME")]
    pub start_at: Option<String>,
    /// POST the result JSON here when done (how a cluster Job reports to the operator).
    #[arg(long, value_name = "URL", env = "MESHBENCH_RESULTS_URL")]
    pub results_url: Option<String>,
    /// Bearer token for the results URL.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MESHBENCH_RESULTS_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// How long to keep retrying the POST to `--results-url` while the receiver is
    /// unreachable or answers 5xx/429 (an operator restarting): 0.5 s doubling to 30 s.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub results_retry_for: Duration,
    /// Serve live Prometheus metrics at http://ADDR/metrics during the run.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Write every request's record as JSON lines to this file.
    #[arg(long, value_name = "PATH")]
    pub record_requests: Option<PathBuf>,
    /// Never print the per-second progress line (it is printed only on a terminal anyway).
    #[arg(long)]
    pub quiet: bool,
    /// Threads sending requests. One thread is the cheapest per request (no cross-thread
    /// wake-ups) and sustained about 0.6–0.7 × wrk's rate against a no-work target on a
    /// 2-core machine; more threads reach higher rates at a higher cost per request, as do
    /// more instances (`--instances`).
    #[arg(long, value_name = "N", env = "MESHBENCH_LOADGEN_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: u16,
    /// How open-loop sends wait for their planned times: `precise` (a timerfd on Linux,
    /// tens of µs late; elsewhere tokio's timer) or `coarse` (tokio's 1 ms timer: up to
    /// about 2 ms late, less CPU per request at thousands of requests per second). Latency
    /// is measured from the planned time either way.
    #[arg(long, value_enum, value_name = "HOW", env = "MESHBENCH_LOADGEN_PACING", default_value_t = Pacing::Precise)]
    pub pacing: Pacing,
    /// `--log-format`; logs go to stderr, which keeps stdout for the result (`--out -`).
    #[command(flatten)]
    pub log: LogArgs,
}

/// The async runtime a loadgen process runs on, as `--worker-threads` asks: one thread
/// runs everything on the calling thread.
pub fn runtime(worker_threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(worker_threads))
            .enable_all()
            .build()
    }
}

fn usage(msg: impl Into<String>) -> RunnerError {
    RunnerError::Usage(msg.into())
}

/// Parses `--start-at`: RFC 3339 or unix milliseconds.
pub fn parse_start_at(text: &str) -> Result<u64> {
    if let Ok(ms) = text.trim().parse::<u64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(text.trim()).map_err(|e| {
        usage(format!(
            "--start-at {text:?}: {e}; expected RFC 3339 (2026-01-01T12:00:00Z) or unix milliseconds"
        ))
    })?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0))
}

fn read_plan(path: &Path) -> Result<LoadPlan> {
    let text = std::fs::read_to_string(path).map_err(|source| RunnerError::PlanFile {
        path: path.to_owned(),
        source,
    })?;
    load_plan::from_yaml(&text)
        .map_err(|e| match e {
            PlanError::Parse(m) => PlanError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
        .map_err(RunnerError::from)
}

/// Builds the plan the arguments describe (file plus overrides, or a quick run).
pub fn plan_from_args(args: &LoadgenArgs) -> Result<LoadPlan> {
    let mut plan = match (&args.plan, &args.url) {
        (Some(path), _) => read_plan(path)?,
        (None, Some(url)) => quick_plan(args, url)?,
        (None, None) => return Err(usage("give --plan PATH, or --url with --rate or --users")),
    };
    if let Some(t) = args.timeout {
        plan.timeout = t;
    }
    if args.no_preflight {
        plan.preflight = false;
    }
    if args.index.is_some() || args.instances.is_some() {
        plan.instance = InstanceSpec {
            index: args.index.unwrap_or(plan.instance.index),
            count: args.instances.unwrap_or(plan.instance.count),
        };
    }
    if let Some(s) = &args.start_at {
        plan.start_at_unix_ms = Some(parse_start_at(s)?);
    }
    plan.validate()?;
    Ok(plan)
}

fn quick_plan(args: &LoadgenArgs, url: &str) -> Result<LoadPlan> {
    let parsed = reqwest::Url::parse(url).map_err(|e| usage(format!("--url {url:?}: {e}")))?;
    let target = parsed.origin().ascii_serialization();
    let (model, rate, users) = match (args.rate, args.users) {
        (Some(r), None) => (
            LoadModel::Open {
                max_in_flight: args.max_in_flight,
                max_lateness: args.max_lateness,
            },
            Some(r),
            None,
        ),
        (None, Some(u)) => (
            LoadModel::Closed {
                think_time: args.think_time.unwrap_or_default(),
            },
            None,
            Some(u),
        ),
        _ => {
            return Err(usage(
                "a quick run needs exactly one of --rate (open loop) or --users (closed loop)",
            ));
        }
    };
    let mut plan = LoadPlan::single_stage(
        target,
        model,
        Stage {
            name: None,
            duration: args.duration,
            rate,
            users,
        },
    );
    plan.request.method = args.method.clone();
    plan.request.path = parsed.path().to_owned();
    plan.request.query = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    plan.warm_up = args.warm_up.map(|duration| WarmUp {
        duration,
        rate: None,
        users: None,
    });
    Ok(plan)
}

/// Stops `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let io = |source| RunnerError::Io {
        path: PathBuf::from("<signal handler>"),
        source,
    };
    // Installed before Goose starts, so Goose's own Ctrl-C handler (which exits the process
    // on a second Ctrl-C) is refused and ours decides.
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => tracing::warn!("SIGINT: stopping, the result will be partial"),
            _ = term.recv() => tracing::warn!("SIGTERM: stopping, the result will be partial"),
        }
        token.cancel();
    });
    Ok(())
}

/// Writes `text` to `path` atomically (temporary name, then rename), or to stdout for `-`.
/// A path that names something other than a regular file (`/dev/null`, a FIFO) is written
/// in place: renaming over it would replace a device node with a plain file.
fn write_out(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    let io = |source| RunnerError::Io {
        path: path.to_owned(),
        source,
    };
    if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes()).map_err(io)?;
        out.write_all(b"\n").map_err(io)?;
        return out.flush().map_err(io);
    }
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return std::fs::write(path, format!("{text}\n")).map_err(io);
    }
    let tmp = path.with_extension(format!(
        "tmp.{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::write(&tmp, format!("{text}\n")).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// POSTs the result JSON to `url` with an optional bearer token, retrying for up to
/// `retry_for` while the receiver is unreachable or answers 5xx, 408 or 429 (what an
/// operator being restarted looks like). Any other answer is final. The receiver accepts
/// the same result twice, so a retry after a lost reply is harmless.
pub async fn post_result(
    url: &str,
    token: Option<&str>,
    body: String,
    retry_for: Duration,
) -> Result<()> {
    let fail = |reason: String| RunnerError::Upload {
        url: url.to_owned(),
        reason,
    };
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    // A Service name under the node agent (see meshbench_common::names).
    if let Ok(parsed) = reqwest::Url::parse(url)
        && let Some(host) = parsed.host_str()
        && let Some(ip) = meshbench_common::names::lookup(host)
    {
        let port = parsed.port_or_known_default().unwrap_or(80);
        builder = builder.resolve(host, std::net::SocketAddr::new(ip, port));
    }
    let client = builder.build().map_err(|e| fail(error_chain(&e)))?;
    let deadline = tokio::time::Instant::now() + retry_for;
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut rb = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let retryable = match rb.send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let s = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let reason = format!("the server answered {s}: {}", text.trim());
                if !(s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429) {
                    return Err(fail(reason));
                }
                reason
            }
            Err(e) => error_chain(&e),
        };
        let now = tokio::time::Instant::now();
        if now + backoff > deadline {
            return Err(fail(format!(
                "{retryable} (gave up after retrying for {retry_for:?})"
            )));
        }
        tracing::warn!(url, error = %retryable, retry_in = ?backoff, "posting the result failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// The load generator program, `meshbench-loadgen` and `meshbench loadgen` alike: sets up
/// logging, runs [`run`] on the runtime `--worker-threads` asks for, and returns the exit
/// code ([`meshbench_common::exit`]): 0 the plan ran to the end and the result was written
/// (and posted); 1 invalid plan; 2 usage; 4 the run failed (the preflight request
/// included) or was stopped by SIGINT/SIGTERM, the partial result written; 5 the result
/// was written but not posted. Errors are printed as `error: …` on stderr.
pub fn main(args: LoadgenArgs) -> ExitCode {
    args.log.init(LogFormat::Text, "info,goose=error");
    let rt = match runtime(args.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            meshbench_common::error(format_args!("cannot start the async runtime: {e}"));
            return exit::code(exit::RUN_FAILED);
        }
    };
    match rt.block_on(run(args)) {
        Ok(result) if result.partial => {
            meshbench_common::warning("stopped early: the partial result was written");
            exit::code(exit::RUN_FAILED)
        }
        Ok(_) => exit::code(exit::OK),
        Err(e) => {
            meshbench_common::error(&e);
            exit::code(e.exit_code())
        }
    }
}

/// Runs the load the arguments describe: builds and validates the plan, stops on
/// SIGINT/SIGTERM with a partial result, writes the result to `--out`, and POSTs it to
/// `--results-url` when given.
pub async fn run(args: LoadgenArgs) -> Result<LoadResult> {
    let plan = plan_from_args(&args)?;
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone())?;
    let mut opts = RunOptions {
        cancel: cancel.clone(),
        record_requests: args.record_requests.clone(),
        metrics_listen: args.metrics_listen,
        pacing: args.pacing,
        ..RunOptions::default()
    };
    if args.quiet {
        opts.progress = false;
    }
    let result = run_plan(&plan, opts).await;
    cancel.cancel();
    let result = result?;
    let text = if args.pretty {
        serde_json::to_string_pretty(&result)
    } else {
        serde_json::to_string(&result)
    }
    .map_err(|e| RunnerError::Goose(format!("cannot serialise the result: {e}")))?;
    write_out(&args.out, &text)?;
    if let Some(url) = &args.results_url {
        post_result(url, args.token.as_deref(), text, args.results_retry_for).await?;
    }
    Ok(result)
}
