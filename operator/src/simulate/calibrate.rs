//! `meshbench simulate --calibrate`: the worker's own costs measured on this machine, with
//! the worker program `meshbench run` would start, instead of the shipped release-build
//! figures ([`meshbench_analysis::capacity::Overhead`]).
//!
//! A worker's cost per request beyond its endpoint's configured CPU (HTTP, metrics, the
//! calls it makes) differs by an order of magnitude between a debug and a release build,
//! and with the machine; a model fed the wrong figure predicts latency that is off by
//! that much per hop. Two workers are started, a caller `a` and a callee `b` with no
//! work of their own but [`WORK`], and a paced sequence of requests is sent through `a` to `b`. Each
//! process's CPU time comes from the kernel (`/proc/PID/task/*/schedstat`); the hop's
//! wall time is what the median round trip leaves after that CPU.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::engine::Overheads;

/// Requests measured (after [`WARMUP`]): enough for a stable median and for the CPU
/// figure to be far above the scheduler's accounting granularity.
const REQUESTS: usize = 300;
/// Requests sent first and not measured: connection set-up, allocator and page warm-up.
const WARMUP: usize = 30;
/// CPU each calibration endpoint burns: an endpoint with CPU work runs it on the
/// worker's CPU threads, and the hand-over to and from them is part of the cost measured
/// (an endpoint without work skips it); subtracted from what is measured.
const WORK: Duration = Duration::from_millis(1);
/// Sending pace: the request rate of a light run, so the worker's threads park between
/// requests as they do in one (back-to-back requests would find them awake).
const PACE: Duration = Duration::from_millis(10);

/// Why the calibration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    /// The worker program could not be started or did not say where it listens.
    #[error("cannot start the worker {program}: {reason}")]
    Start {
        /// The program run.
        program: String,
        /// What went wrong.
        reason: String,
    },
    /// A calibration request failed.
    #[error("calibration request failed: {0}")]
    Request(String),
    /// The workers' CPU time could not be read, or is implausible.
    #[error("cannot measure the workers' CPU time: {0}")]
    Cpu(String),
    /// The async runtime could not be started.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// What was measured, per request.
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    /// CPU seconds of the caller (with its one call) beyond its configured work.
    pub caller_cpu: f64,
    /// CPU seconds of the callee beyond its configured work.
    pub callee_cpu: f64,
    /// Median round trip through both workers less their configured work, seconds.
    pub round_trip: f64,
}

impl Calibration {
    /// The model's figures: one CPU cost for every request (the mean of a worker that
    /// calls and one that does not), and the wall time of a hop beyond the CPU of the
    /// two hops measured.
    pub fn overheads(&self) -> Overheads {
        let cpu = self.caller_cpu + self.callee_cpu;
        Overheads {
            request_cpu: cpu / 2.0,
            hop: ((self.round_trip - cpu) / 2.0).max(0.0),
        }
    }
}

/// Measures the worker's costs with `program worker …` (the meshbench binary itself).
pub fn measure(program: &Path) -> Result<Calibration, CalibrateError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CalibrateError::Runtime)?
        .block_on(measure_async(program))
}

async fn measure_async(program: &Path) -> Result<Calibration, CalibrateError> {
    let work = WORK.as_micros() as u64;
    let callee = Worker::start(
        program,
        serde_json::json!({
            "version": 1, "service": "b", "endpoints": [{ "path": "/", "cpu_us": work }]
        }),
    )
    .await?;
    let caller = Worker::start(
        program,
        serde_json::json!({
            "version": 1, "service": "a",
            "endpoints": [{ "path": "/", "cpu_us": work,
                "call_groups": [[{ "url": callee.url, "path": "/" }]] }]
        }),
    )
    .await?;
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| CalibrateError::Request(e.to_string()))?;
    let url = format!("{}/", caller.url);
    for _ in 0..WARMUP {
        get(&client, &url).await?;
        tokio::time::sleep(PACE).await;
    }
    let (a0, b0) = (caller.cpu()?, callee.cpu()?);
    let mut trips = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let sent = Instant::now();
        get(&client, &url).await?;
        trips.push(sent.elapsed().as_secs_f64());
        tokio::time::sleep(PACE).await;
    }
    let n = REQUESTS as f64;
    let w = WORK.as_secs_f64();
    let (a, b) = (caller.cpu()? - a0, callee.cpu()? - b0);
    if a < REQUESTS as f64 * w || b < REQUESTS as f64 * w {
        // Less than the configured work itself: the kernel's accounting was not read.
        return Err(CalibrateError::Cpu(format!(
            "{a:.3} s and {b:.3} s of CPU for {REQUESTS} requests of {} ms each",
            WORK.as_millis()
        )));
    }
    trips.sort_by(f64::total_cmp);
    Ok(Calibration {
        caller_cpu: (a / n - w).max(0.0),
        callee_cpu: (b / n - w).max(0.0),
        round_trip: (trips[trips.len() / 2] - 2.0 * w).max(0.0),
    })
}

async fn get(client: &reqwest::Client, url: &str) -> Result<(), CalibrateError> {
    let resp = client
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| CalibrateError::Request(format!("{url}: {e}")))?;
    let status = resp.status();
    resp.bytes()
        .await
        .map_err(|e| CalibrateError::Request(format!("{url}: {e}")))?;
    if !status.is_success() {
        return Err(CalibrateError::Request(format!("{url}: status {status}")));
    }
    Ok(())
}

/// A worker process, killed when dropped.
struct Worker {
    child: Child,
    _stdout: BufReader<tokio::process::ChildStdout>,
    url: String,
}

impl Worker {
    async fn start(program: &Path, config: serde_json::Value) -> Result<Self, CalibrateError> {
        let fail = |reason: String| CalibrateError::Start {
            program: program.display().to_string(),
            reason,
        };
        let mut child = Command::new(program)
            .args(["worker", "--listen", "127.0.0.1:0", "--config-json"])
            .arg(config.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("no stdout".into()))?;
        // Kept open while the worker runs: a later line to a closed pipe would fail it.
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(fail("it did not print its `listening on` line".into())),
        }
        let addr = line
            .trim()
            .rsplit_once("listening on ")
            .map(|(_, a)| a.to_owned())
            .ok_or_else(|| fail(format!("unexpected first line {line:?}")))?;
        Ok(Worker {
            child,
            _stdout: stdout,
            url: format!("http://{addr}"),
        })
    }

    /// CPU seconds of the process's live threads so far (their threads live as long as
    /// the worker does).
    fn cpu(&self) -> Result<f64, CalibrateError> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| CalibrateError::Cpu("the worker exited".into()))?;
        let dir = format!("/proc/{pid}/task");
        let tasks =
            std::fs::read_dir(&dir).map_err(|e| CalibrateError::Cpu(format!("{dir}: {e}")))?;
        let ns: Vec<u64> = tasks
            .filter_map(Result::ok)
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .collect();
        if ns.is_empty() {
            return Err(CalibrateError::Cpu(format!(
                "no readable {dir}/*/schedstat"
            )));
        }
        Ok(ns.iter().sum::<u64>() as f64 / 1e9)
    }
}
