//! The HTTP side of the worker: shared state, the router ([`app`]), request handling and
//! graceful serving ([`serve`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{MethodFilter, MethodRouter, get};
use axum::serve::ListenerExt;
use meshbench_common::pacer::Pacer;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{DelayMode, EndpointConfig, Method, TimeoutPolicy, WorkerConfig};
use crate::downstream::{self, CallReport, HttpClient, PreparedCall};
use crate::metrics::{self, EndpointMetrics, Metrics, RequestLabels};
use crate::trace::{REQUEST_ID, TraceContext};
use crate::work::{self, DelaySampler, EndpointRng};

/// Errors while building the state or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A delay distribution or call could not be prepared.
    #[error("cannot prepare endpoint {endpoint}: {message}")]
    Endpoint {
        /// `METHOD path`.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// The baseline memory could not be allocated.
    #[error("cannot allocate baseline_memory_bytes = {0}")]
    Baseline(u64),
    /// A background thread could not be started.
    #[error("cannot start the idle CPU thread: {0}")]
    IdleThread(std::io::Error),
    /// The server failed while accepting or serving.
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
}

/// Result alias for this module.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// Everything an endpoint needs per request, resolved once.
#[derive(Debug)]
pub struct EndpointShared {
    config: EndpointConfig,
    label: String,
    metrics: EndpointMetrics,
    rng: EndpointRng,
    delay: Option<(DelaySampler, DelayMode)>,
    groups: Vec<Arc<[PreparedCall]>>,
}

impl EndpointShared {
    /// The endpoint's random source.
    pub fn rng(&self) -> &EndpointRng {
        &self.rng
    }

    /// The prepared call groups.
    pub fn call_groups(&self) -> &[Arc<[PreparedCall]>] {
        &self.groups
    }

    /// What a downstream timeout does.
    pub fn timeout_policy(&self) -> TimeoutPolicy {
        self.config.on_downstream_timeout
    }
}

/// The shared state of one worker process.
#[derive(Debug)]
pub struct WorkerState {
    config: WorkerConfig,
    pod: String,
    started: Instant,
    draining: AtomicBool,
    stop_background: Arc<AtomicBool>,
    registry: Registry,
    metrics: Metrics,
    client: HttpClient,
    cpu_pool: Arc<Semaphore>,
    endpoints: Vec<Arc<EndpointShared>>,
    baseline: Vec<u8>,
    /// Sub-millisecond delays; created on the first delay, inside the runtime that serves
    /// (`None` if its timer could not be made: tokio's 1 ms timer then).
    pacer: OnceLock<Option<Pacer>>,
}

/// The pod name when neither the command line nor the config gives one.
pub fn default_pod_name() -> String {
    if let Ok(p) = std::env::var("POD_NAME")
        && !p.is_empty()
    {
        return p;
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl WorkerState {
    /// Builds the state of a validated config: metrics, the downstream client, prepared
    /// endpoints, and the baseline memory (allocated and touched here).
    pub fn new(config: WorkerConfig) -> Result<Arc<Self>> {
        let mut registry = metrics::new_registry(&config.service);
        let metrics = Metrics::register(&mut registry);
        let client = downstream::client(metrics.connections.clone());
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for ep in &config.endpoints {
            let label = format!("{} {}", ep.method.as_str(), ep.path);
            let em = metrics.endpoint(&label);
            let delay = match &ep.delay {
                Some(d) => Some((
                    DelaySampler::new(d).map_err(|e| ServerError::Endpoint {
                        endpoint: label.clone(),
                        message: e.to_string(),
                    })?,
                    d.mode,
                )),
                None => None,
            };
            let mut groups = Vec::with_capacity(ep.call_groups.len());
            for g in &ep.call_groups {
                let prepared = g
                    .iter()
                    .map(|c| PreparedCall::new(c, |t, o| em.call_counter(t, o)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ServerError::Endpoint {
                        endpoint: label.clone(),
                        message: e.to_string(),
                    })?;
                groups.push(Arc::from(prepared));
            }
            endpoints.push(Arc::new(EndpointShared {
                config: ep.clone(),
                label,
                metrics: em,
                rng: EndpointRng::new(ep.seed),
                delay,
                groups,
            }));
        }
        let baseline = work::touch_memory(config.baseline_memory_bytes);
        if baseline.len() as u64 != config.baseline_memory_bytes {
            return Err(ServerError::Baseline(config.baseline_memory_bytes));
        }
        let threads = config.cpu_threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |t| t as usize,
        );
        let pod = config.pod.clone().unwrap_or_else(default_pod_name);
        Ok(Arc::new(WorkerState {
            pod,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            stop_background: Arc::new(AtomicBool::new(false)),
            registry,
            metrics,
            client,
            cpu_pool: Arc::new(Semaphore::new(threads)),
            endpoints,
            baseline,
            config,
            pacer: OnceLock::new(),
        }))
    }

    /// Waits until `at`: tokio's timer would add 0–2 ms to every delay (a 2 ms delay took
    /// about 3), which the latency of every hop with a delay would carry.
    async fn sleep_until(&self, at: Instant) {
        match self.pacer.get_or_init(|| Pacer::start().ok()) {
            Some(p) => p.sleep_until(at).await,
            None => tokio::time::sleep_until(at.into()).await,
        }
    }

    /// The config this worker runs.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// This replica's pod name.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Requests in flight on all endpoints.
    pub fn in_flight(&self) -> u32 {
        // Summed on demand (readiness, logs) so the hot path touches one counter.
        let sum: i64 = self
            .endpoints
            .iter()
            .map(|e| e.metrics.in_flight.get())
            .sum();
        u32::try_from(sum.max(0)).unwrap_or(u32::MAX)
    }

    /// Bytes of baseline memory held.
    pub fn baseline_bytes(&self) -> usize {
        self.baseline.len()
    }

    /// Whether `/ready` answers 200 right now.
    pub fn is_ready(&self) -> bool {
        if self.draining.load(Ordering::Relaxed)
            || self.started.elapsed() < self.config.startup_delay()
        {
            return false;
        }
        match self.config.readiness_max_in_flight {
            Some(max) => self.in_flight() < max,
            None => true,
        }
    }

    /// Starts the idle CPU threads; they stop when [`serve`] returns.
    pub fn start_background(&self) -> Result<()> {
        work::spawn_idle_cpu(self.config.idle_cpu_cores, self.stop_background.clone())
            .map_err(ServerError::IdleThread)
    }
}

fn method_filter(m: Method) -> MethodFilter {
    match m {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Put => MethodFilter::PUT,
        Method::Patch => MethodFilter::PATCH,
        Method::Delete => MethodFilter::DELETE,
    }
}

/// The worker's router: the configured endpoints plus `/live`, `/ready` and `/metrics`;
/// unknown paths answer 404 and other methods 405, both with a JSON body.
///
/// `/ready` stays here, on the port that carries the load, while liveness probes go to
/// the health listener ([`crate::health`]): readiness is meant to answer "can this replica
/// take traffic now", so a replica too saturated to answer in time, or over
/// `readiness_max_in_flight`, is rightly taken out of its Service, as Kubernetes users
/// expect and as the readiness experiments measure. That costs traffic, not the replica;
/// a failed liveness probe costs the replica. `/live` is kept here for callers that probe
/// the main port.
pub fn app(state: Arc<WorkerState>) -> Router {
    let mut by_path: Vec<(String, MethodRouter)> = Vec::new();
    for ep in &state.endpoints {
        let (st, e) = (state.clone(), ep.clone());
        let handler = move |req: Request| handle(st, e, req);
        let filter = method_filter(ep.config.method);
        match by_path.iter_mut().find(|(p, _)| *p == ep.config.path) {
            Some((_, mr)) => *mr = std::mem::take(mr).on(filter, handler),
            None => by_path.push((ep.config.path.clone(), axum::routing::on(filter, handler))),
        }
    }
    let mut router = Router::new();
    for (path, mr) in by_path {
        router = router.route(&path, mr);
    }
    let (s_ready, s_metrics, s_404, s_405) =
        (state.clone(), state.clone(), state.clone(), state.clone());
    router
        .route(crate::health::LIVE_PATH, get(crate::health::live))
        .route("/ready", get(move || ready(s_ready)))
        .route("/metrics", get(move || metrics_handler(s_metrics)))
        .fallback(move |req: Request| unmatched(s_404, req, StatusCode::NOT_FOUND))
        .method_not_allowed_fallback(move |req: Request| {
            unmatched(s_405, req, StatusCode::METHOD_NOT_ALLOWED)
        })
}

fn json(status: StatusCode, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn ready(state: Arc<WorkerState>) -> Response {
    let ok = state.is_ready();
    state.metrics.ready.set(i64::from(ok));
    let body = serde_json::json!({
        "status": if ok { "ready" } else { "not_ready" },
        "in_flight": state.in_flight(),
        "uptime_us": state.started.elapsed().as_micros() as u64,
        "startup_delay_us": state.config.startup_delay_us,
        "readiness_max_in_flight": state.config.readiness_max_in_flight,
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, body.to_string().into())
}

async fn metrics_handler(state: Arc<WorkerState>) -> Response {
    state.metrics.ready.set(i64::from(state.is_ready()));
    match metrics::encode(&state.registry) {
        Ok(text) => {
            let mut r = Response::new(Body::from(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": "metrics", "cause": e.to_string()})
                .to_string()
                .into(),
        ),
    }
}

async fn unmatched(state: Arc<WorkerState>, req: Request, status: StatusCode) -> Response {
    let path = req.uri().path();
    state
        .metrics
        .unmatched
        .get_or_create(&RequestLabels {
            endpoint: String::new(),
            status: status.as_u16(),
        })
        .inc();
    let allowed: Vec<String> = state
        .endpoints
        .iter()
        .filter(|e| status == StatusCode::NOT_FOUND || e.config.path == path)
        .map(|e| e.label.clone())
        .collect();
    let body = serde_json::json!({
        "error": if status == StatusCode::NOT_FOUND { "not_found" } else { "method_not_allowed" },
        "service": state.config.service,
        "method": req.method().as_str(),
        "path": path,
        "endpoints": allowed,
    });
    json(status, body.to_string().into())
}

/// Counts a request in flight on the endpoint (its gauge) until dropped, so a request
/// cancelled by its client is still uncounted.
struct InFlight<'a> {
    ep: &'a EndpointShared,
}

impl<'a> InFlight<'a> {
    /// Enters and returns the number in flight including this request.
    fn enter(ep: &'a EndpointShared) -> (Self, u32) {
        let before = ep.metrics.in_flight.inc();
        (
            InFlight { ep },
            u32::try_from(before.max(0) + 1).unwrap_or(u32::MAX),
        )
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ep.metrics.in_flight.dec();
    }
}

/// Timings reported in the envelope, microseconds.
#[derive(Debug, Default, Serialize)]
struct Timings {
    /// Thread CPU time consumed by the CPU burn (includes touching memory).
    cpu_us: u64,
    /// Wall time of the CPU/memory work, including waiting for a CPU thread.
    work_wall_us: u64,
    /// Wall time of all call groups.
    calls_us: u64,
    /// Time slept for the delay.
    delay_us: u64,
    /// Arrival to response.
    total_us: u64,
}

#[derive(Debug, Serialize)]
struct Envelope<'a> {
    service: &'a str,
    pod: &'a str,
    endpoint: &'a str,
    status: u16,
    request_id: &'a str,
    trace_id: &'a str,
    span_id: &'a str,
    memory_bytes: u64,
    timings: &'a Timings,
    calls: &'a [CallReport],
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<&'a str>,
}

/// What the CPU pool hands back: the held memory and the CPU time consumed.
struct WorkDone {
    memory: Vec<u8>,
    cpu: Duration,
}

/// Why a request's CPU and memory work failed (its response's `cause`).
#[derive(Debug, thiserror::Error)]
enum WorkTaskError {
    /// The CPU pool was closed (the server is shutting down).
    #[error("CPU pool closed")]
    PoolClosed,
    /// The thread CPU clock failed.
    #[error(transparent)]
    Clock(#[from] work::WorkError),
    /// The endpoint's memory could not be allocated.
    #[error("cannot allocate memory_bytes = {0}")]
    Memory(u64),
    /// The blocking task panicked or was cancelled.
    #[error("CPU task failed: {0}")]
    Task(tokio::task::JoinError),
}

async fn do_work(state: &WorkerState, ep: &EndpointShared) -> Result<WorkDone, WorkTaskError> {
    let cpu = Duration::from_micros(ep.config.cpu_us);
    let bytes = ep.config.memory_bytes;
    let permit = state
        .cpu_pool
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| WorkTaskError::PoolClosed)?;
    let job = tokio::task::spawn_blocking(move || -> Result<WorkDone, WorkTaskError> {
        // The permit lives as long as the thread works, even if the request is dropped.
        let _permit = permit;
        let start = work::thread_cpu_time()?;
        let memory = work::touch_memory(bytes);
        if memory.len() as u64 != bytes {
            return Err(WorkTaskError::Memory(bytes));
        }
        let cpu = work::burn_cpu_since(start, cpu)?;
        Ok(WorkDone { memory, cpu })
    });
    job.await.map_err(WorkTaskError::Task)?
}

fn body_too_large(err: &axum::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = src {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        src = e.source();
    }
    false
}

struct Outcome {
    status: StatusCode,
    error: Option<&'static str>,
    cause: Option<String>,
    retry_after: bool,
}

impl Outcome {
    fn ok() -> Self {
        Outcome {
            status: StatusCode::OK,
            error: None,
            cause: None,
            retry_after: false,
        }
    }
    fn fail(status: StatusCode, error: &'static str, cause: impl Into<String>) -> Self {
        Outcome {
            status,
            error: Some(error),
            cause: Some(cause.into()),
            retry_after: false,
        }
    }
}

async fn handle(state: Arc<WorkerState>, ep: Arc<EndpointShared>, req: Request) -> Response {
    let arrived = Instant::now();
    let (guard, n) = InFlight::enter(&ep);
    let trace = TraceContext::from_headers(req.headers());
    let mut ex = Exchange::default();
    let outcome = steps(&state, &ep, &trace, (arrived, n), req, &mut ex)
        .await
        .err()
        .unwrap_or_else(Outcome::ok);
    ex.timings.total_us = arrived.elapsed().as_micros() as u64;
    let body = render_body(
        &state,
        &ep,
        &trace,
        &ex.timings,
        &ex.calls,
        ex.held.len() as u64,
        &outcome,
    );
    // The memory is held until the response is built, so the burst spans the request.
    drop(ex.held);
    let resp = respond(&trace, &outcome, body);
    ep.metrics.count_status(outcome.status.as_u16());
    ep.metrics.latency.observe(arrived.elapsed());
    log_outcome(&ep, &trace, &outcome, ex.timings.total_us);
    drop(guard);
    resp
}

/// What one request gathered on its way: its timings, its downstream calls and the memory
/// it holds.
#[derive(Default)]
struct Exchange {
    timings: Timings,
    calls: Vec<CallReport>,
    held: Vec<u8>,
}

/// The request's steps in order — admission, body, CPU and memory work, downstream calls,
/// delay, injected error — the first failure ending it; `(arrived, n)`: when it arrived
/// and the requests in flight, this one included.
async fn steps(
    state: &WorkerState,
    ep: &Arc<EndpointShared>,
    trace: &TraceContext,
    (arrived, n): (Instant, u32),
    req: Request,
    ex: &mut Exchange,
) -> Result<(), Outcome> {
    shed(ep, n)?;
    read_body(state, req).await?;
    if ep.config.cpu_us > 0 || ep.config.memory_bytes > 0 {
        ex.held = work(state, ep, &mut ex.timings).await?;
    }
    if !ep.groups.is_empty() {
        call_downstream(state, ep, trace, ex).await?;
    }
    // Drawn before the delay so the delay applies to injected errors too.
    let injected = ep.rng.chance(ep.config.error_rate);
    if let Some((sampler, mode)) = &ep.delay {
        let d = sampler.sample(&ep.rng);
        let t = Instant::now();
        let until = match mode {
            DelayMode::AfterWork => t.checked_add(d),
            DelayMode::MinimumTotal => arrived.checked_add(d),
        };
        match until {
            Some(at) => state.sleep_until(at).await,
            // Past the clock's range: tokio caps the sleep instead of overflowing.
            None => tokio::time::sleep(d).await,
        }
        ex.timings.delay_us = t.elapsed().as_micros() as u64;
    }
    if injected {
        return Err(Outcome::fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected",
            format!("error injected with error_rate = {}", ep.config.error_rate),
        ));
    }
    Ok(())
}

/// Refuses the request when `n` in flight exceeds the endpoint's `max_in_flight`.
fn shed(ep: &EndpointShared, n: u32) -> Result<(), Outcome> {
    match ep.config.max_in_flight {
        Some(max) if n > max => {
            ep.metrics.shed.inc();
            let mut o = Outcome::fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!(
                    "{} requests in flight on {}, max_in_flight is {max}",
                    n - 1,
                    ep.label
                ),
            );
            o.retry_after = true;
            Err(o)
        }
        _ => Ok(()),
    }
}

/// Reads (and discards) the body within `max_request_body_bytes`, refusing a larger one
/// by its declared length before reading any of it.
async fn read_body(state: &WorkerState, req: Request) -> Result<(), Outcome> {
    let limit = usize::try_from(state.config.max_request_body_bytes).unwrap_or(usize::MAX);
    let too_large = |what: String| {
        Outcome::fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body {what}exceeds max_request_body_bytes = {limit}"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(d) = declared.filter(|d| *d > limit as u64) {
        return Err(too_large(format!("of {d} bytes ")));
    }
    let body = req.into_body();
    // Most requests have no body; skip the collecting machinery for them.
    if axum::body::HttpBody::is_end_stream(&body) {
        return Ok(());
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(_) => Ok(()),
        Err(e) if body_too_large(&e) => Err(too_large(String::new())),
        Err(e) => Err(Outcome::fail(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// The endpoint's CPU and memory work; returns the memory, held until the response.
async fn work(
    state: &WorkerState,
    ep: &EndpointShared,
    timings: &mut Timings,
) -> Result<Vec<u8>, Outcome> {
    let t = Instant::now();
    let done = do_work(state, ep).await.map_err(|cause| {
        Outcome::fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "work_failed",
            cause.to_string(),
        )
    })?;
    timings.cpu_us = done.cpu.as_micros() as u64;
    ep.metrics.cpu_seconds.inc_by(done.cpu.as_secs_f64());
    timings.work_wall_us = t.elapsed().as_micros() as u64;
    Ok(done.memory)
}

/// Runs the endpoint's call groups; a failure the endpoint's policy does not tolerate
/// becomes its outcome (504 for a downstream timeout, 502 otherwise).
async fn call_downstream(
    state: &WorkerState,
    ep: &Arc<EndpointShared>,
    trace: &TraceContext,
    ex: &mut Exchange,
) -> Result<(), Outcome> {
    let t = Instant::now();
    let result = downstream::run_groups(&state.client, ep, trace).await;
    ex.timings.calls_us = t.elapsed().as_micros() as u64;
    let failure = result
        .failure(ep.config.on_downstream_timeout)
        .map(|(status, r)| (status, r.cause.clone().unwrap_or_default()));
    ex.calls = result.reports;
    match failure {
        Some((status, cause)) => {
            let error = if status == StatusCode::GATEWAY_TIMEOUT {
                "downstream_timeout"
            } else {
                "downstream_failed"
            };
            Err(Outcome::fail(status, error, cause))
        }
        None => Ok(()),
    }
}

fn respond(trace: &TraceContext, outcome: &Outcome, body: Bytes) -> Response {
    let mut resp = json(outcome.status, Body::from(body));
    if outcome.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let Ok(v) = HeaderValue::from_str(&trace.request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Failures at info (they are what an operator looks for), successes at debug.
fn log_outcome(ep: &EndpointShared, trace: &TraceContext, outcome: &Outcome, total_us: u64) {
    let status = outcome.status;
    if status.is_server_error() || status.is_client_error() {
        tracing::info!(
            endpoint = %ep.label,
            status = status.as_u16(),
            request_id = %trace.request_id,
            trace_id = %trace.trace_id,
            span_id = %trace.span_id,
            cause = outcome.cause.as_deref().unwrap_or(""),
            total_us,
            "request failed"
        );
    } else {
        tracing::debug!(
            endpoint = %ep.label,
            status = status.as_u16(),
            request_id = %trace.request_id,
            trace_id = %trace.trace_id,
            span_id = %trace.span_id,
            total_us,
            "request served"
        );
    }
}

fn render_body(
    state: &WorkerState,
    ep: &EndpointShared,
    trace: &TraceContext,
    timings: &Timings,
    calls: &[CallReport],
    memory_bytes: u64,
    outcome: &Outcome,
) -> Bytes {
    let env = Envelope {
        service: &state.config.service,
        pod: &state.pod,
        endpoint: &ep.label,
        status: outcome.status.as_u16(),
        request_id: &trace.request_id,
        trace_id: &trace.trace_id,
        span_id: &trace.span_id,
        memory_bytes,
        timings,
        calls,
        error: outcome.error,
        cause: outcome.cause.as_deref(),
    };
    // Serializing plain structs of strings and integers cannot fail.
    let mut out = Vec::with_capacity(512);
    if serde_json::to_writer(&mut out, &env).is_err() {
        out = b"{}".to_vec();
    }
    pad(&mut out, ep.config.response_bytes);
    Bytes::from(out)
}

/// Pads a JSON object to exactly `size` bytes with a `"padding"` field, when it fits.
fn pad(out: &mut Vec<u8>, size: u64) {
    const FIELD: &[u8] = b",\"padding\":\"";
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    // Current length minus the closing brace, plus the field, quotes and brace.
    let fixed = out.len() - 1 + FIELD.len() + 2;
    if size < fixed || out.last() != Some(&b'}') {
        return;
    }
    out.pop();
    out.reserve(size - out.len());
    out.extend_from_slice(FIELD);
    out.resize(size - 2, b'x');
    out.extend_from_slice(b"\"}");
}

/// Keeps a timer pending at all times. Tokio wakes its parked time driver whenever a new
/// timer expires before every pending one; with no timer pending, every downstream call's
/// timeout would cost a cross-thread wake-up (measured at ~15 µs of CPU per call at
/// 1000 rps). With this 1 s tick pending, call timeouts of a second or more never do.
async fn keep_timer_armed() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// Serves `state` on `listener` until `shutdown` resolves, then stops accepting and waits
/// up to the config's drain grace period for in-flight requests.
pub async fn serve_state(
    state: Arc<WorkerState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let keeper = tokio::spawn(keep_timer_armed());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let drain_state = state.clone();
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::trace!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, app(state.clone())).with_graceful_shutdown(async move {
        shutdown.await;
        drain_state.draining.store(true, Ordering::Relaxed);
        let _ = tx.send(());
    });
    let server = server.into_future();
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        _ = rx => {
            let grace = state.config.drain_grace();
            tracing::info!(
                in_flight = state.in_flight(),
                grace_ms = grace.as_millis() as u64,
                "shutting down: no longer accepting, draining in-flight requests"
            );
            match tokio::time::timeout(grace, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(
                        in_flight = state.in_flight(),
                        "drain grace period elapsed; abandoning the requests still in flight"
                    );
                    Ok(())
                }
            }
        }
    };
    state.stop_background.store(true, Ordering::Relaxed);
    keeper.abort();
    result.map_err(ServerError::Serve)?;
    tracing::info!("drained; exiting");
    Ok(())
}

/// Builds the state of `config`, starts its background load and serves it on `listener`
/// until `shutdown` resolves (see [`serve_state`]).
pub async fn serve(
    config: WorkerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let state = WorkerState::new(config)?;
    state.start_background()?;
    serve_state(state, listener, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::pad;

    #[test]
    fn padding_reaches_the_exact_size_and_stays_json() {
        for size in [40usize, 41, 100, 4096] {
            let mut v = br#"{"a":1}"#.to_vec();
            pad(&mut v, size as u64);
            assert_eq!(v.len(), size);
            let parsed: serde_json::Value = serde_json::from_slice(&v).unwrap();
            assert_eq!(parsed["a"], 1);
        }
        let mut v = br#"{"a":1}"#.to_vec();
        pad(&mut v, 10);
        assert_eq!(v, br#"{"a":1}"#);
    }
}
