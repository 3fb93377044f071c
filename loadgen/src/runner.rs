//! Runs a [`LoadPlan`] with Goose and returns a [`LoadResult`].
//!
//! Goose provides the users, the transaction loop and the run's lifecycle. meshbench adds
//! what Goose lacks, inside its model:
//! - **Open loop** (Goose has no arrival-rate mode): the Goose users are the in-flight
//!   slots. A slot claims the next planned send time from a shared [`OpenSchedule`],
//!   sleeps until it, sends one request, measures latency from the planned time, and
//!   claims again — all inside one Goose transaction, since returning to Goose after each
//!   request costs its per-transaction bookkeeping. A claim made after its planned time
//!   (every slot was busy) is counted late, or dropped past `maxLateness`.
//! - **Closed loop**: Goose users looping one request, with think time; a user is active in
//!   a stage when its index is below the stage's user count, so stages change concurrency
//!   without restarting Goose.
//! - **Stages, timing, results**: one timeline from `t0` (all users started, or the plan's
//!   start time); every request's outcome is recorded into our own HDR histograms
//!   ([`Collector`]); Goose's own metrics are switched off (`--no-metrics`) because they
//!   time from the send, not from the planned time, and cost CPU. For the same reason
//!   requests go through [`LoadClient`] — hyper's HTTP/1.1 connections, a stack of idle
//!   ones shared by all users, the request built once — rather than through Goose's
//!   request path and the users' reqwest clients, which cost more CPU per request than
//!   everything else together.
//! - **Ending**: Goose checks its stop command only between transactions, so the run ends
//!   by Goose's killswitch plus a token every waiting transaction watches.
//!
//! Goose's killswitch is process-global: run one plan at a time per process (sequential
//! calls are fine).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use goose::GooseAttack;
use goose::config::GooseConfiguration;
use goose::goose::{GooseUser, Scenario, Transaction, TransactionResult};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::client::LoadClient;
use crate::collector::{Collector, Elapsed, Outcome, RequestRecord, SecondData, bucket};
use crate::live::{LiveMetrics, Progress};
use crate::load_plan::{LoadModel, LoadPlan, ModelKind, PlanError, ResolvedStage};
use crate::result::{
    Counts, InstanceReport, LoadResult, RESULT_VERSION, ResultError, SecondBucket, StageResult,
    StageSummary,
};
use crate::schedule::{OpenSchedule, StageClock, clocks};
use meshbench_common::pacer::Pacer;

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The plan is invalid; nothing was sent.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The preflight request failed; nothing else was sent.
    #[error("preflight failed: {method} {url}: {reason}")]
    Preflight {
        /// Method of the preflight request.
        method: String,
        /// URL of the preflight request.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// Goose refused the configuration or failed during the run.
    #[error("goose: {0}")]
    Goose(String),
    /// The plan file could not be read (invalid input, like an invalid plan).
    #[error("{path}: {source}")]
    PlanFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The live metrics endpoint could not listen.
    #[error("cannot listen for /metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Posting the result to the results URL failed (the result was still written).
    #[error("posting the result to {url} failed: {reason}")]
    Upload {
        /// The results URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Command-line usage error.
    #[error("{0}")]
    Usage(String),
    /// A result could not be built.
    #[error(transparent)]
    Result(#[from] ResultError),
}

impl RunnerError {
    /// Process exit code for this error ([`meshbench_common::exit`], the README's table):
    /// invalid input (1) for an invalid or unreadable plan, usage (2) for a command line
    /// that describes no run, upload failed (5) when the result was written but not
    /// posted, run failed (4) for everything else, the preflight request included.
    pub fn exit_code(&self) -> u8 {
        use meshbench_common::exit;
        match self {
            RunnerError::Plan(_) | RunnerError::PlanFile { .. } => exit::INVALID,
            RunnerError::Usage(_) => exit::USAGE,
            RunnerError::Upload { .. } => exit::UPLOAD_FAILED,
            RunnerError::Preflight { .. }
            | RunnerError::Goose(_)
            | RunnerError::Io { .. }
            | RunnerError::Metrics { .. }
            | RunnerError::Result(_) => exit::RUN_FAILED,
        }
    }
}

/// Result alias of this module.
pub type Result<T, E = RunnerError> = std::result::Result<T, E>;

/// Options of one run besides the plan.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Cancelling stops the run; the result then holds what was measured, marked partial.
    pub cancel: CancellationToken,
    /// Write every request's record as JSON lines to this file.
    pub record_requests: Option<PathBuf>,
    /// Serve live Prometheus metrics at `http://<addr>/metrics` during the run.
    pub metrics_listen: Option<SocketAddr>,
    /// Print a progress line per second to stderr.
    pub progress: bool,
    /// Receives one [`Tick`] per second of the run (for an embedding program's own
    /// progress display).
    pub ticks: Option<tokio::sync::mpsc::UnboundedSender<Tick>>,
    /// How open-loop sends wait for their planned times.
    pub pacing: Pacing,
}

/// How open-loop sends wait for their planned times. Latency is measured from the planned
/// time either way, so whatever the timer adds shows in the latency and the send delay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Pacing {
    /// A high-resolution timer (a timerfd on Linux): a request leaves tens of µs after its
    /// planned time, for one wake-up of the sending thread per request.
    #[default]
    Precise,
    /// tokio's 1 ms timer: requests leave up to about 2 ms late (the deadline rounded up
    /// to the next tick, then the tick's own delay), those due in the same millisecond
    /// together, which costs less CPU per request at thousands of requests per second
    /// (`cargo bench -p meshbench-loadgen --bench loadgen` measures both).
    Coarse,
}

impl Pacing {
    /// Lateness beyond which a send counts as late: what the timer alone can add.
    pub fn late_tolerance(self) -> Duration {
        match self {
            Pacing::Precise => LATE_TOLERANCE,
            Pacing::Coarse => COARSE_LATE_TOLERANCE,
        }
    }
}

/// What happened in the last second of a run, sent to [`RunOptions::ticks`].
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// Time since the run's start.
    pub elapsed: Duration,
    /// Position of the current stage, 0-based.
    pub stage: usize,
    /// Number of stages.
    pub stages: usize,
    /// The stage's name.
    pub stage_name: String,
    /// Seconds into the current stage.
    pub stage_elapsed: Duration,
    /// The stage's length.
    pub stage_duration: Duration,
    /// Target rate (open loop).
    pub target_rate: Option<f64>,
    /// Users (closed loop).
    pub users: Option<u32>,
    /// Requests sent in the last second.
    pub sent: u64,
    /// Successes in the last second.
    pub ok: u64,
    /// Failures (timeouts, connection errors, 4xx, 5xx) since the start.
    pub errors_total: u64,
    /// p99 latency of the last complete second's successes.
    pub p99: Duration,
    /// Requests in flight now.
    pub in_flight: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        use std::io::IsTerminal as _;
        Self {
            cancel: CancellationToken::new(),
            record_requests: None,
            metrics_listen: None,
            progress: std::io::stderr().is_terminal(),
            ticks: None,
            pacing: Pacing::Precise,
        }
    }
}

/// With precise pacing, a send later than this after its planned time counts as late (a
/// busy slot or a stalled sender). Every request's lateness, from 0, is in the lateness
/// histogram; the count leaves out the pacer's own jitter (tens of µs).
pub const LATE_TOLERANCE: Duration = Duration::from_micros(250);
/// The same with coarse pacing, whose timer alone leaves up to about 2 ms late.
pub const COARSE_LATE_TOLERANCE: Duration = Duration::from_micros(2500);
/// Pause of a user with nothing left to do, between Goose's checks for its stop command.
const IDLE: Duration = Duration::from_millis(20);
/// Time between all users started and `t0`, so the first requests are not late.
const LEAD: Duration = Duration::from_millis(50);
/// Longest wait for Goose to start all users.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct PreparedRequest {
    pub method: reqwest::Method,
    pub url: reqwest::Url,
    pub headers: HeaderMap,
    pub body: Option<String>,
}

pub(crate) fn prepare(plan: &LoadPlan) -> Result<PreparedRequest> {
    let r = &plan.request;
    let invalid = |field: &str, message: String| PlanError::Invalid {
        field: field.to_owned(),
        message,
    };
    let method = reqwest::Method::from_bytes(r.method.as_bytes())
        .map_err(|e| invalid("request.method", format!("{:?}: {e}", r.method)))?;
    let base = plan.target.trim_end_matches('/');
    let mut url = reqwest::Url::parse(&format!("{base}{}", r.path)).map_err(|e| {
        invalid(
            "target",
            format!("{:?} with path {:?}: {e}", plan.target, r.path),
        )
    })?;
    if !r.query.is_empty() {
        let mut q = url.query_pairs_mut();
        for (k, v) in &r.query {
            q.append_pair(k, v);
        }
    }
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| invalid(&format!("request.headers.{k}"), format!("bad name: {e}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|e| invalid(&format!("request.headers.{k}"), format!("bad value: {e}")))?;
        headers.append(name, value);
    }
    Ok(PreparedRequest {
        method,
        url,
        headers,
        body: r.body.clone(),
    })
}

/// The load client for the plan's request; a target it cannot speak to is a plan error.
fn load_client(req: &PreparedRequest, timeout: Duration) -> Result<LoadClient> {
    LoadClient::new(
        req.method.clone(),
        &req.url,
        &req.headers,
        req.body.as_deref(),
        timeout,
    )
    .map_err(|e| {
        RunnerError::Plan(PlanError::Invalid {
            field: "target".into(),
            message: e.to_string(),
        })
    })
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// Sends the plan's request once; an error when the target does not answer, a warning
/// when it answers with a non-2xx status.
async fn preflight(plan: &LoadPlan, req: &PreparedRequest) -> Result<Option<String>> {
    let fail = |reason: String| RunnerError::Preflight {
        method: req.method.to_string(),
        url: req.url.to_string(),
        reason,
    };
    // The same client as the load, so what the preflight accepts the run can send.
    let client = load_client(req, plan.timeout.min(Duration::from_secs(10)))?;
    let status = client.send().await.map_err(|e| fail(e.to_string()))?;
    Ok((!(200..300).contains(&status)).then(|| {
        format!(
            "preflight {} {} answered {status}; the run went ahead",
            req.method, req.url
        )
    }))
}

struct Shared {
    model: ModelKind,
    clocks: Vec<StageClock>,
    total: Duration,
    schedule: Option<OpenSchedule>,
    /// Sub-millisecond waits for the open loop's planned times (precise pacing).
    pacer: Option<Pacer>,
    /// Lateness beyond which a send counts as late, from the pacing.
    late_tolerance: Duration,
    max_lateness: Option<Duration>,
    think_time: Duration,
    timeout: Duration,
    /// The plan's request and the connections every slot sends through.
    client: LoadClient,
    collector: Collector,
    t0: watch::Receiver<Option<Instant>>,
    /// Stop now: abort waits and in-flight requests.
    stop: CancellationToken,
    /// The run is over: users go idle until Goose stops them.
    finish: CancellationToken,
    users: u32,
    next_user: AtomicU32,
    ready: AtomicU32,
    done_users: AtomicU32,
    all_done: Notify,
    in_flight: AtomicU64,
    killswitch_ours: AtomicBool,
}

#[derive(Clone, Copy)]
struct UserState {
    index: u32,
    done: bool,
}

impl Shared {
    async fn wait_t0(&self) -> Option<Instant> {
        let mut rx = self.t0.clone();
        tokio::select! {
            r = rx.wait_for(|t| t.is_some()) => r.ok().and_then(|t| *t),
            _ = self.finish.cancelled() => None,
            _ = self.stop.cancelled() => None,
        }
    }

    fn stage_at(&self, offset: Duration) -> Option<usize> {
        if offset >= self.total {
            return None;
        }
        Some(
            self.clocks
                .partition_point(|c| c.offset <= offset)
                .saturating_sub(1),
        )
    }
}

async fn user_step(user: &mut GooseUser, sh: &Shared) -> TransactionResult {
    let state = match user.get_session_data::<UserState>() {
        Some(s) => *s,
        None => {
            let s = UserState {
                index: sh.next_user.fetch_add(1, Ordering::Relaxed),
                done: false,
            };
            user.set_session_data(s);
            sh.ready.fetch_add(1, Ordering::Release);
            s
        }
    };
    if state.done || sh.finish.is_cancelled() || sh.stop.is_cancelled() {
        // A slot with nothing left to send waits for the run's end without waking up;
        // after it, Goose looks for its stop command between transactions, and a short
        // pause keeps the user from spinning until then.
        tokio::select! {
            _ = sh.finish.cancelled() => {}
            _ = sh.stop.cancelled() => {}
        }
        tokio::time::sleep(IDLE).await;
        return Ok(());
    }
    let Some(t0) = sh.wait_t0().await else {
        return Ok(());
    };
    let finished = match sh.model {
        ModelKind::Open => open_step(sh, t0).await,
        ModelKind::Closed => closed_step(sh, t0, state.index).await,
    };
    if finished {
        if let Some(s) = user.get_session_data_mut::<UserState>() {
            s.done = true;
        }
        if sh.done_users.fetch_add(1, Ordering::AcqRel) + 1 >= sh.users {
            sh.all_done.notify_one();
        }
    }
    Ok(())
}

/// A slot's view of the run's stop token, created once per slot.
type Stopped<'a, 'b> = std::pin::Pin<&'a mut tokio_util::sync::WaitForCancellationFuture<'b>>;

/// An open-loop slot: claims, waits and sends until the schedule is exhausted or the run
/// stops. The slot stays inside one Goose transaction for the whole run: returning to
/// Goose after every request would cost its per-transaction bookkeeping each time.
async fn open_step(sh: &Shared, t0: Instant) -> bool {
    // One stop future for the slot's life: registering a waiter per request costs two
    // locks of the token's shared waiter list on every send.
    let stopped = sh.stop.cancelled();
    tokio::pin!(stopped);
    loop {
        if sh.stop.is_cancelled() || sh.finish.is_cancelled() {
            return true;
        }
        if open_turn(sh, t0, stopped.as_mut()).await {
            return true;
        }
    }
}

/// One open-loop slot turn: claim, wait, send. Returns true when the schedule is exhausted.
async fn open_turn(sh: &Shared, t0: Instant, mut stopped: Stopped<'_, '_>) -> bool {
    let Some(schedule) = &sh.schedule else {
        return true;
    };
    loop {
        let Some(p) = schedule.claim() else {
            return true;
        };
        let planned = t0 + p.at;
        let now = Instant::now();
        let lateness = now.saturating_duration_since(planned);
        if let Some(max) = sh.max_lateness
            && lateness > sh.late_tolerance
            && lateness > max
        {
            sh.collector
                .dropped(p.stage, p.second, p.at.as_micros() as u64, lateness);
            continue;
        }
        if planned > now {
            let wait = async {
                match &sh.pacer {
                    Some(pacer) => pacer.sleep_until(planned).await,
                    None => tokio::time::sleep_until(planned.into()).await,
                }
            };
            tokio::select! {
                biased;
                () = wait => {}
                _ = stopped.as_mut() => return true,
            }
        }
        let left = Instant::now();
        let send_delay = left.saturating_duration_since(planned);
        // Counted in the second the request actually left, so a stall shows as a burst.
        let stage_start = t0 + sh.clocks[p.stage].offset;
        let sent_second = second_index(left.saturating_duration_since(stage_start));
        // How late it left: the claim's lateness (no free slot) and everything after it (the
        // pacing, a stalled sender), which the send delay already contains.
        let timing = SendTiming {
            planned_second: p.second,
            sent_second,
            send_delay: Some(send_delay),
            lateness: Some(send_delay.max(lateness)),
        };
        send(sh, stopped, p.stage, planned, p.at, timing).await;
        return false;
    }
}

/// A closed-loop user: sends, thinks and repeats until the timeline is over or the run
/// stops, inside one Goose transaction (as [`open_step`]).
async fn closed_step(sh: &Shared, t0: Instant, index: u32) -> bool {
    let stopped = sh.stop.cancelled();
    tokio::pin!(stopped);
    loop {
        if sh.stop.is_cancelled() || sh.finish.is_cancelled() {
            return true;
        }
        if closed_turn(sh, t0, index, stopped.as_mut()).await {
            return true;
        }
    }
}

/// One closed-loop user turn. Returns true when the run's timeline is over.
async fn closed_turn(sh: &Shared, t0: Instant, index: u32, mut stopped: Stopped<'_, '_>) -> bool {
    let now = Instant::now();
    let offset = now.saturating_duration_since(t0);
    if now < t0 {
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(t0.into()) => {}
            _ = stopped.as_mut() => return true,
        }
        return false;
    }
    let Some(stage) = sh.stage_at(offset) else {
        return true;
    };
    let c = &sh.clocks[stage];
    if index >= c.users {
        let end = t0 + c.offset + c.duration;
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(end.into()) => {}
            _ = stopped.as_mut() => return true,
        }
        return false;
    }
    let second = second_index(offset - c.offset);
    let timing = SendTiming {
        planned_second: second,
        sent_second: second,
        send_delay: None,
        lateness: None,
    };
    send(sh, stopped.as_mut(), stage, now, offset, timing).await;
    if !sh.think_time.is_zero() {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(sh.think_time) => {}
            _ = stopped.as_mut() => return true,
        }
    }
    false
}

/// When a request left, against its plan.
struct SendTiming {
    /// Second of the stage it was planned in (latency is attributed there).
    planned_second: u32,
    /// Second of the stage it actually left in (the sent counts are).
    sent_second: u32,
    /// Actual send minus planned time (open loop).
    send_delay: Option<Duration>,
    /// How late it left, from 0 (open loop): at least the send delay.
    lateness: Option<Duration>,
}

fn second_index(offset: Duration) -> u32 {
    offset.as_secs().min(u64::from(u32::MAX)) as u32
}

async fn send(
    sh: &Shared,
    stopped: Stopped<'_, '_>,
    stage: usize,
    start: Instant,
    at: Duration,
    timing: SendTiming,
) {
    // Through our own client rather than Goose's request path and the user's reqwest
    // client: Goose would build a request metric with the raw request's text for every
    // request, and reqwest's general-purpose path costs more CPU than the rest of the
    // request together (see `client.rs`).
    sh.collector.sent(
        stage,
        timing.sent_second,
        timing.send_delay,
        timing.lateness,
    );
    let sent_at = Instant::now();
    sh.in_flight.fetch_add(1, Ordering::Relaxed);
    let exchange = async {
        match sh.client.send().await {
            Ok(status) => Outcome::Status(status),
            Err(f) => f.outcome(),
        }
    };
    let outcome = tokio::select! {
        biased;
        o = exchange => o,
        _ = stopped => Outcome::Aborted,
    };
    let elapsed = Elapsed {
        from_planned: start.elapsed(),
        from_sent: sent_at.elapsed(),
    };
    sh.in_flight.fetch_sub(1, Ordering::Relaxed);
    sh.collector.finished(
        stage,
        timing.planned_second,
        outcome,
        elapsed,
        at.as_micros() as u64,
        timing.lateness.unwrap_or_default(),
    );
}

struct Timing {
    t0: Instant,
    t0_wall: SystemTime,
    /// Offset from `t0` at which the run was stopped early.
    stopped_at: Option<Duration>,
    deadline_hit: bool,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where the per-second status of a run goes: the progress line, the live metrics and the
/// embedding program's ticks.
struct Reporters {
    stages: Vec<ResolvedStage>,
    progress: Option<Progress>,
    live: Option<Arc<LiveMetrics>>,
    ticks: Option<tokio::sync::mpsc::UnboundedSender<Tick>>,
}

impl Reporters {
    /// Reports the second that just ended, `elapsed` after `t0`; returns the totals, the
    /// next call's `prev`.
    fn second(&mut self, sh: &Shared, elapsed: Duration, prev: &Counts) -> Counts {
        let stages = &self.stages;
        let stage = sh.stage_at(elapsed).unwrap_or(sh.clocks.len() - 1);
        let c = &sh.clocks[stage];
        let in_stage = elapsed.saturating_sub(c.offset).as_secs() as u32;
        let totals = sh.collector.totals();
        let (_, last) = sh.collector.snapshot(stage, in_stage.saturating_sub(1));
        let in_flight = sh.in_flight.load(Ordering::Relaxed);
        if let Some(p) = self.progress.as_mut() {
            p.line(
                elapsed,
                &stages[stage],
                stages.len(),
                prev,
                &totals,
                &last,
                in_flight,
            );
        }
        if let Some(l) = &self.live {
            l.update(&stages[stage], &totals, &last, in_flight);
        }
        if let Some(tx) = &self.ticks {
            let failed = |c: &Counts| {
                c.timeouts + c.connection_errors + c.other_errors + c.status_4xx + c.status_5xx
            };
            let _ = tx.send(Tick {
                elapsed,
                stage,
                stages: stages.len(),
                stage_name: stages[stage].name.clone(),
                stage_elapsed: elapsed.saturating_sub(c.offset),
                stage_duration: c.duration,
                target_rate: stages[stage].rate,
                users: stages[stage].users,
                sent: totals.sent.saturating_sub(prev.sent),
                ok: totals.ok.saturating_sub(prev.ok),
                errors_total: failed(&totals),
                p99: Duration::from_micros(last.p99_us),
                in_flight,
            });
        }
        totals
    }
}

/// Waits until every Goose user has started, at most [`READY_TIMEOUT`] or until stopped.
async fn wait_for_users(sh: &Shared) {
    let ready_by = Instant::now() + READY_TIMEOUT;
    while sh.ready.load(Ordering::Acquire) < sh.users && Instant::now() < ready_by {
        if sh.stop.is_cancelled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `t0` as an instant and a wall-clock time: the plan's start time when it lies more than
/// [`LEAD`] ahead, else [`LEAD`] from now.
fn choose_t0(start_at_unix_ms: Option<u64>) -> (Instant, SystemTime) {
    let (now_i, now_w) = (Instant::now(), SystemTime::now());
    match start_at_unix_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)) {
        Some(at) if at > now_w + LEAD => (now_i + at.duration_since(now_w).unwrap_or_default(), at),
        _ => (now_i + LEAD, now_w + LEAD),
    }
}

/// Seals every stage's seconds that ended more than a timeout (plus 2 s) before `elapsed`.
fn seal_settled(sh: &Shared, elapsed: Duration) {
    // Seconds older than a timeout can only change through very late requests.
    let settle = sh.timeout + Duration::from_secs(2);
    for (i, c) in sh.clocks.iter().enumerate() {
        let sealable = elapsed
            .saturating_sub(c.offset)
            .saturating_sub(settle)
            .as_secs();
        if sealable > 0 {
            sh.collector.seal_before(i, sealable as usize);
        }
    }
}

/// The run's clock: sets `t0` once the users are up, then once a second reports, seals
/// settled seconds and watches for the run's end (all done, stopped, or past the drain).
async fn supervise(
    sh: Arc<Shared>,
    t0_tx: watch::Sender<Option<Instant>>,
    start_at_unix_ms: Option<u64>,
    mut reporters: Reporters,
) -> Timing {
    wait_for_users(&sh).await;
    let (t0, t0_wall) = choose_t0(start_at_unix_ms);
    let _ = t0_tx.send(Some(t0));
    tracing::debug!(users = sh.users, "all users started; t0 set");
    let drain = sh.timeout + sh.total.max(Duration::from_secs(5));
    let hard_deadline = t0 + sh.total + drain;
    let mut timing = Timing {
        t0,
        t0_wall,
        stopped_at: None,
        deadline_hit: false,
    };
    let mut tick: u64 = 1;
    let mut prev = sh.collector.totals();
    loop {
        let next = t0 + Duration::from_secs(tick);
        tokio::select! {
            // Stop first: a stop ends every slot, which also signals `all_done`, and the
            // run must still be reported as stopped (partial), not as finished.
            biased;
            _ = sh.stop.cancelled() => {
                timing.stopped_at = Some(Instant::now().saturating_duration_since(t0));
                break;
            }
            _ = sh.all_done.notified() => {
                if sh.stop.is_cancelled() {
                    timing.stopped_at = Some(Instant::now().saturating_duration_since(t0));
                }
                break;
            }
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        if goose::is_killswitch_triggered() && !sh.killswitch_ours.load(Ordering::Acquire) {
            // Goose's own Ctrl-C handler fired (the embedding program installed none).
            timing.stopped_at = Some(Instant::now().saturating_duration_since(t0));
            sh.stop.cancel();
            break;
        }
        if Instant::now() >= hard_deadline {
            timing.stopped_at = Some(Instant::now().saturating_duration_since(t0));
            timing.deadline_hit = true;
            sh.stop.cancel();
            break;
        }
        let elapsed = Instant::now().saturating_duration_since(t0);
        prev = reporters.second(&sh, elapsed, &prev);
        seal_settled(&sh, elapsed);
        tick += 1;
    }
    timing
}

/// Runs `plan` to the end (or until `opts.cancel` fires) and returns its result.
///
/// Validates the plan and sends a preflight request first: an invalid plan or an
/// unreachable target is an error before any load. Can be called repeatedly in one process,
/// one run at a time.
pub async fn run_plan(plan: &LoadPlan, opts: RunOptions) -> Result<LoadResult> {
    quiet_goose_log();
    plan.validate()?;
    plan.check_start_at(SystemTime::now())?;
    let stages = plan.stages()?;
    let request = prepare(plan)?;
    let warnings = preflight_warnings(plan, &request, &opts.cancel).await?;
    let cpu_start = cpu_time();
    let started_wall = SystemTime::now();

    let clocks = clocks(&stages, &plan.instance);
    let slots = Slots::of(plan, &clocks);
    let (record_tx, record_thread) = match &opts.record_requests {
        Some(path) => {
            let (tx, thread) = spawn_record_writer(path.clone())?;
            (Some(tx), Some(thread))
        }
        None => (None, None),
    };
    let live = match opts.metrics_listen {
        Some(addr) => Some(
            crate::live::serve(
                meshbench_common::pod_bind_addr(addr),
                plan.instance.index,
                opts.cancel.clone(),
            )
            .await?,
        ),
        None => None,
    };

    let (t0_tx, t0_rx) = watch::channel(None);
    let collector = Collector::new(stages.len(), record_tx, opts.pacing.late_tolerance());
    let shared = Arc::new(Shared::new(
        plan, clocks, slots, &request, collector, t0_rx, &opts,
    )?);

    let mut timing = None;
    if !opts.cancel.is_cancelled() {
        timing = Some(execute(plan, &opts, &shared, t0_tx, &stages, live.clone()).await?);
    }
    join_records(&shared, record_thread)?;
    let result = conclude(
        plan,
        &stages,
        &shared,
        timing,
        cpu_start,
        started_wall,
        warnings,
    )?;
    if let Some(l) = &live {
        l.finish(&result);
    }
    Ok(result)
}

/// The preflight's warning, if any; no preflight when the plan turns it off, and none
/// awaited when the run is cancelled first.
async fn preflight_warnings(
    plan: &LoadPlan,
    request: &PreparedRequest,
    cancel: &CancellationToken,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    if plan.preflight {
        tokio::select! {
            r = preflight(plan, request) => warnings.extend(r?),
            _ = cancel.cancelled() => {
                tracing::warn!("stopped before the run started");
            }
        }
    }
    Ok(warnings)
}

/// How many Goose users a run has and how they pace themselves, by load model: in-flight
/// slots on the open schedule, or the largest stage's users with think time.
struct Slots {
    users: u32,
    schedule: Option<OpenSchedule>,
    max_lateness: Option<Duration>,
    think_time: Duration,
}

impl Slots {
    fn of(plan: &LoadPlan, clocks: &[StageClock]) -> Self {
        match &plan.model {
            LoadModel::Open {
                max_in_flight,
                max_lateness,
            } => Slots {
                users: *max_in_flight,
                schedule: Some(OpenSchedule::new(clocks.to_vec(), plan.instance)),
                max_lateness: *max_lateness,
                think_time: Duration::ZERO,
            },
            LoadModel::Closed { think_time } => Slots {
                users: clocks.iter().map(|c| c.users).max().unwrap_or(0).max(1),
                schedule: None,
                max_lateness: None,
                think_time: *think_time,
            },
        }
    }
}

impl Shared {
    /// The state of a run shared by its users; creates the pacer's timer (open loop) and
    /// the load client, either of which can fail.
    fn new(
        plan: &LoadPlan,
        clocks: Vec<StageClock>,
        slots: Slots,
        request: &PreparedRequest,
        collector: Collector,
        t0: watch::Receiver<Option<Instant>>,
        opts: &RunOptions,
    ) -> Result<Self> {
        Ok(Shared {
            model: plan.model.kind(),
            total: plan.total_duration(),
            clocks,
            pacer: match (&slots.schedule, opts.pacing) {
                (Some(_), Pacing::Precise) => Some(Pacer::start().map_err(|e| {
                    RunnerError::Goose(format!("cannot create the pacing timer: {e}"))
                })?),
                _ => None,
            },
            late_tolerance: opts.pacing.late_tolerance(),
            schedule: slots.schedule,
            max_lateness: slots.max_lateness,
            think_time: slots.think_time,
            timeout: plan.timeout,
            client: load_client(request, plan.timeout)?,
            collector,
            t0,
            stop: opts.cancel.child_token(),
            finish: CancellationToken::new(),
            users: slots.users,
            next_user: AtomicU32::new(0),
            ready: AtomicU32::new(0),
            done_users: AtomicU32::new(0),
            all_done: Notify::new(),
            in_flight: AtomicU64::new(0),
            killswitch_ours: AtomicBool::new(false),
        })
    }
}

/// Runs Goose beside the supervisor and returns the run's timing. A Goose failure stops
/// the users and is an error, as is a failed supervisor.
async fn execute(
    plan: &LoadPlan,
    opts: &RunOptions,
    shared: &Arc<Shared>,
    t0_tx: watch::Sender<Option<Instant>>,
    stages: &[ResolvedStage],
    live: Option<Arc<LiveMetrics>>,
) -> Result<Timing> {
    let attack = build_attack(plan, shared.users, shared.clone())?;
    let reporters = Reporters {
        stages: stages.to_vec(),
        progress: opts.progress.then(Progress::new),
        live,
        ticks: opts.ticks.clone(),
    };
    let supervisor = tokio::spawn(supervise(
        shared.clone(),
        t0_tx,
        plan.start_at_unix_ms,
        reporters,
    ));
    let supervisor_done = CancellationToken::new();
    let stopper = tokio::spawn(hold_killswitch(shared.clone(), supervisor_done.clone()));
    let sup = async {
        let t = supervisor.await;
        supervisor_done.cancel();
        t
    };
    let (goose_result, t) = tokio::join!(attack.execute(), sup);
    stopper.abort();
    goose::reset_killswitch();
    let t = t.map_err(|e| RunnerError::Goose(format!("supervisor failed: {e}")))?;
    if let Err(e) = goose_result {
        shared.stop.cancel();
        return Err(RunnerError::Goose(e.to_string()));
    }
    Ok(t)
}

/// Once the supervisor is done, ends the run for every user and keeps Goose's killswitch
/// set; runs until aborted.
async fn hold_killswitch(sh: Arc<Shared>, supervisor_done: CancellationToken) {
    supervisor_done.cancelled().await;
    sh.finish.cancel();
    // Goose resets its killswitch when a run starts: keep it set until Goose
    // has returned, in case the run ended before Goose was fully up.
    loop {
        sh.killswitch_ours.store(true, Ordering::Release);
        goose::trigger_killswitch("meshbench: load plan finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops forwarding request records and waits for their writer to finish the file.
fn join_records(sh: &Shared, record_thread: Option<RecordThread>) -> Result<()> {
    sh.collector.close_records();
    if let Some(thread) = record_thread {
        match thread.join() {
            Ok(r) => r?,
            Err(_) => return Err(RunnerError::Goose("request record writer panicked".into())),
        }
    }
    Ok(())
}

/// The run's result; `timing` is `None` when the run was cancelled before it started.
fn conclude(
    plan: &LoadPlan,
    stages: &[ResolvedStage],
    shared: &Shared,
    timing: Option<Timing>,
    cpu_start: Option<Duration>,
    started_wall: SystemTime,
    mut warnings: Vec<String>,
) -> Result<LoadResult> {
    let finished_wall = SystemTime::now();
    let cpu_time_ms = match (cpu_start, cpu_time()) {
        (Some(a), Some(b)) => Some((b - a).as_secs_f64() * 1000.0),
        _ => None,
    };
    let timing = timing.unwrap_or(Timing {
        t0: Instant::now(),
        t0_wall: started_wall,
        stopped_at: Some(Duration::ZERO),
        deadline_hit: false,
    });
    let _ = timing.t0;
    if timing.deadline_hit {
        warnings.push(format!(
            "the run did not drain within {:?} after the plan ended and was stopped",
            plan.timeout + plan.total_duration().max(Duration::from_secs(5))
        ));
    }
    assemble(
        plan,
        stages,
        shared,
        &timing,
        started_wall,
        finished_wall,
        cpu_time_ms,
        warnings,
    )
}

/// Goose logs through the `log` crate and, when no logger is installed, installs one that
/// prints to stdout (where our result may go) and warns once per failed request (costly
/// under overload). Install a logger first that forwards only errors to `tracing`; when the
/// embedding program already installed one (e.g. `tracing-log`), that one stays.
fn quiet_goose_log() {
    struct ErrorsToTracing;
    impl log::Log for ErrorsToTracing {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::Level::Error
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                tracing::error!(target: "goose", "{}", r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: ErrorsToTracing = ErrorsToTracing;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Error);
    }
}

fn build_attack(plan: &LoadPlan, users: u32, shared: Arc<Shared>) -> Result<GooseAttack> {
    let goose_err = |e: goose::GooseError| RunnerError::Goose(e.to_string());
    // Goose's run time is only a backstop: the supervisor ends the run through the
    // killswitch once the plan is done and drained.
    let backstop =
        plan.total_duration() * 2 + plan.timeout + READY_TIMEOUT + Duration::from_secs(60);
    let host = plan.target.trim_end_matches('/').to_owned();
    let args = [
        "--host".to_owned(),
        host,
        "--users".to_owned(),
        users.to_string(),
        "--increase-rate".to_owned(),
        // Start every slot at once: the schedule, not Goose's ramp, shapes the load.
        (u64::from(users) * 100).max(1000).to_string(),
        "--run-time".to_owned(),
        format!("{}s", backstop.as_secs() + 1),
        "--no-metrics".to_owned(),
        "--no-telnet".to_owned(),
        "--quiet".to_owned(),
    ];
    let config = GooseConfiguration::parse_args_default(&args).map_err(goose_err)?;
    let sh = shared;
    let transaction = Transaction::new(Arc::new(move |user: &mut GooseUser| {
        let sh = sh.clone();
        Box::pin(async move { user_step(user, &sh).await })
    }))
    .set_name("request");
    let attack = GooseAttack::initialize_with_config(config)
        .map_err(goose_err)?
        .set_client_builder_without_cookies(
            goose::client::GooseClientBuilder::new()
                .without_cookies()
                .timeout(plan.timeout)
                .user_agent(concat!("meshbench-loadgen/", env!("CARGO_PKG_VERSION"))),
        )
        .map_err(goose_err)?
        .register_scenario(Scenario::new("meshbench").register_transaction(transaction));
    Ok(attack)
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    plan: &LoadPlan,
    stages: &[ResolvedStage],
    sh: &Shared,
    timing: &Timing,
    started_wall: SystemTime,
    finished_wall: SystemTime,
    cpu_time_ms: Option<f64>,
    mut warnings: Vec<String>,
) -> Result<LoadResult> {
    let mut out = Vec::with_capacity(stages.len());
    for (i, s) in stages.iter().enumerate() {
        let stage = stage_result(i, s, sh, timing)?;
        warn_about_stage(s, &stage, sh.late_tolerance, &mut warnings);
        out.push(stage);
    }
    let partial = timing.stopped_at.is_some();
    let instance = InstanceReport {
        index: plan.instance.index,
        count: plan.instance.count,
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok()),
        started_unix_ms: unix_ms(timing.t0_wall),
        finished_unix_ms: unix_ms(finished_wall),
        partial,
        cpu_time_ms,
    };
    let _ = started_wall;
    Ok(LoadResult {
        version: RESULT_VERSION,
        plan: plan.clone(),
        model: plan.model.kind(),
        instances: vec![instance],
        started_unix_ms: unix_ms(timing.t0_wall),
        finished_unix_ms: unix_ms(finished_wall),
        partial,
        stages: out,
        warnings,
    })
}

/// The result of stage `i`, cut at the stop when the run was stopped before its end.
fn stage_result(i: usize, s: &ResolvedStage, sh: &Shared, timing: &Timing) -> Result<StageResult> {
    let c = &sh.clocks[i];
    let end = c.offset + c.duration;
    let (ran_until, partial) = match timing.stopped_at {
        Some(stop) if stop < end => (stop.max(c.offset), true),
        _ => (end, false),
    };
    let ran = ran_until - c.offset;
    let data = sh.collector.stage_data(i);
    let mut counts = data.counts;
    if sh.schedule.is_some() {
        counts.planned = due(sh, i, ran.as_secs_f64());
    } else {
        counts.planned = counts.sent;
    }
    let start_ms = unix_ms(timing.t0_wall + c.offset);
    let buckets = second_buckets(sh, i, ran, start_ms, data.seconds);
    let mut stage = StageResult {
        index: s.index,
        name: s.name.clone(),
        warm_up: s.warm_up,
        target_rate: s.rate,
        users: s.users,
        planned_duration_ms: s.duration.as_millis() as u64,
        started_unix_ms: start_ms,
        ended_unix_ms: unix_ms(timing.t0_wall + ran_until),
        partial,
        counts,
        latency_ok: data.ok,
        latency_failed: data.failed,
        lateness: data.lateness,
        send_delay: data.send_delay,
        response_time_ok: data.response_ok,
        last_ok_unix_ms: data.last_ok_unix_ms,
        last_sent_unix_ms: data.last_sent_unix_ms,
        seconds: buckets,
        summary: StageSummary::default(),
    };
    stage.recompute_summary()?;
    Ok(stage)
}

/// Requests of stage `stage` planned before `t` seconds into it (open loop; 0 otherwise).
fn due(sh: &Shared, stage: usize, t: f64) -> u64 {
    match &sh.schedule {
        Some(sched) => sched.due_before(stage, t),
        None => 0,
    }
}

/// The per-second buckets of stage `i`: one for every second it ran or recorded data in,
/// each with its planned count (the open schedule's, or what was sent in the closed loop).
fn second_buckets(
    sh: &Shared,
    i: usize,
    ran: Duration,
    start_ms: u64,
    seconds: Vec<SecondData>,
) -> Vec<SecondBucket> {
    let open = sh.schedule.is_some();
    let n_seconds = (ran.as_secs_f64().ceil() as usize).max(seconds.len());
    let mut by_second = seconds;
    by_second.resize(n_seconds, SecondData::default());
    by_second
        .into_iter()
        .enumerate()
        .map(
            |(
                sec,
                SecondData {
                    mut counts,
                    ok,
                    failed,
                },
            )| {
                let sec = sec as u32;
                counts.planned = if open {
                    let t = ran.as_secs_f64();
                    due(sh, i, f64::from(sec + 1).min(t)) - due(sh, i, f64::from(sec).min(t))
                } else {
                    counts.sent
                };
                bucket(sec, start_ms + u64::from(sec) * 1000, counts, ok, failed)
            },
        )
        .collect()
}

/// Warns about a stage with a real share of late requests, or with dropped ones.
fn warn_about_stage(
    s: &ResolvedStage,
    stage: &StageResult,
    tolerance: Duration,
    warnings: &mut Vec<String>,
) {
    // A stray late request is scheduling noise; one in a hundred skews the stage.
    if stage.counts.late > 0 && stage.counts.late.saturating_mul(100) >= stage.counts.sent {
        warnings.push(format!(
            "stage {} ({}): {} of {} requests left more than {} µs after their planned time (every in-flight slot busy, or the load generator short of CPU), p99 {} µs late",
            s.index,
            s.name,
            stage.counts.late,
            stage.counts.sent,
            tolerance.as_micros(),
            stage.summary.lateness.p99_us
        ));
    }
    if stage.counts.dropped > 0 {
        warnings.push(format!(
            "stage {} ({}): {} planned requests were dropped (later than maxLateness)",
            s.index, s.name, stage.counts.dropped
        ));
    }
}

/// CPU time (user + system) of this process so far.
pub fn cpu_time() -> Option<Duration> {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    Some(tv(u.user_time()) + tv(u.system_time()))
}

type RecordThread = std::thread::JoinHandle<Result<()>>;

fn spawn_record_writer(
    path: PathBuf,
) -> Result<(std::sync::mpsc::Sender<RequestRecord>, RecordThread)> {
    use std::io::Write as _;
    let io = |source| RunnerError::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::create(&path).map_err(io)?;
    let (tx, rx) = std::sync::mpsc::channel::<RequestRecord>();
    let thread_path = path.clone();
    let thread = std::thread::Builder::new()
        .name("request-records".into())
        .spawn(move || {
            let mut w = std::io::BufWriter::new(file);
            let io = |source| RunnerError::Io {
                path: thread_path.clone(),
                source,
            };
            for r in rx {
                serde_json::to_writer(&mut w, &r).map_err(|e| io(e.into()))?;
                w.write_all(b"\n").map_err(io)?;
            }
            w.flush().map_err(io)
        })
        .map_err(io)?;
    Ok((tx, thread))
}
