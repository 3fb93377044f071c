//! The operator's results endpoint: load Jobs POST their results here, and
//! `meshbench results` downloads finished reports from here.
//!
//! Routes (all under `/v1`, all requiring the benchmark's token — in its Secret
//! `<benchmark>-results-token`, derived from the operator key and the Benchmark's UID
//! ([`super::token`]) — as `Authorization: Bearer` or `X-Meshbench-Token`, the latter
//! because the API server's service proxy consumes `Authorization` itself):
//! - `POST /v1/results/{namespace}/{benchmark}/{run}/{ordinal}`: one loadgen instance's
//!   result JSON, at most 16 MiB; stored on the report volume by instance index. Only for
//!   a run of that benchmark, the step whose Job runs now, an instance index within the
//!   Job's parallelism, and a result that merges with the other instances'; a repeated
//!   POST of the same result is accepted once (idempotent), a different one is refused
//!   (409); at most 512 MiB of results per run (413).
//! - `GET /v1/reports/{namespace}/{benchmark}/{run}`: the report's file list (JSON).
//! - `GET /v1/reports/{namespace}/{benchmark}/{run}/{*file}`: one file of it.
//!
//! Why a token and not the pods' service-account identity: the Job pods run without a
//! service-account token (Pod Security "restricted" and least privilege), and a token per
//! benchmark limits what a leaked one can reach to that benchmark's results.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kube::Client;
use kube::api::Api;
use meshbench_crds::Benchmark;
use meshbench_loadgen::LoadResult;

use super::store::{SpecSnapshot, Store, valid_component};
use super::token::TokenKey;

/// Largest accepted result body.
pub const MAX_RESULT_BYTES: usize = 16 * 1024 * 1024;

/// Header carrying the token through the API server's service proxy.
pub const TOKEN_HEADER: &str = "x-meshbench-token";

/// Shared state of the results routes.
#[derive(Clone)]
pub struct ResultsState {
    /// Reads the Benchmarks (their UIDs).
    pub client: Client,
    /// The report volume.
    pub store: Store,
    /// Checks the tokens.
    pub token_key: TokenKey,
}

impl std::fmt::Debug for ResultsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultsState")
            .field("store", &self.store)
            .finish()
    }
}

/// Both route sets on one router (tests, development).
pub fn routes(state: Arc<ResultsState>) -> Router {
    upload_routes(state.clone()).merge(report_routes(state))
}

/// The load Jobs' uploads: `POST /v1/results/...`.
pub fn upload_routes(state: Arc<ResultsState>) -> Router {
    Router::new()
        .route(
            "/v1/results/{namespace}/{benchmark}/{run}/{ordinal}",
            post(post_result),
        )
        .layer(DefaultBodyLimit::max(MAX_RESULT_BYTES))
        .with_state(state)
}

/// The report downloads of `meshbench results`: `GET /v1/reports/...`.
pub fn report_routes(state: Arc<ResultsState>) -> Router {
    Router::new()
        .route(
            "/v1/reports/{namespace}/{benchmark}/{run}",
            get(list_report),
        )
        .route(
            "/v1/reports/{namespace}/{benchmark}/{run}/{*file}",
            get(get_report_file),
        )
        .with_state(state)
}

fn reject(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(t) = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(t.trim());
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Checks the names in the path and the token; `Ok` is the Benchmark's UID, `Err` the
/// response to send.
async fn authorize(
    state: &ResultsState,
    headers: &HeaderMap,
    namespace: &str,
    benchmark: &str,
    run: &str,
) -> Result<String, Response> {
    for n in [namespace, benchmark, run] {
        if !valid_component(n) {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                format!("invalid name {n:?}"),
            ));
        }
    }
    let Some(presented) = presented_token(headers) else {
        return Err(reject(
            StatusCode::UNAUTHORIZED,
            "missing token (Authorization: Bearer or X-Meshbench-Token)",
        ));
    };
    let benchmarks: Api<Benchmark> = Api::namespaced(state.client.clone(), namespace);
    let uid = match benchmarks.get_opt(benchmark).await {
        Ok(b) => b.and_then(|b| b.metadata.uid),
        Err(e) => {
            tracing::warn!(error = %e, namespace, benchmark, "cannot read the Benchmark");
            return Err(reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot read the benchmark",
            ));
        }
    };
    match uid {
        Some(uid)
            if state
                .token_key
                .verify(namespace, benchmark, &uid, presented) =>
        {
            Ok(uid)
        }
        // Unknown benchmark and wrong token answer alike.
        _ => Err(reject(
            StatusCode::FORBIDDEN,
            "token not valid for this benchmark",
        )),
    }
}

/// Largest total of stored instance results of one run (every step, every instance).
pub const MAX_RUN_RESULT_BYTES: u64 = 512 * 1024 * 1024;

/// A refused request: the status and the message sent back.
type Refusal = (StatusCode, String);

/// The run's spec snapshot, when the run exists and belongs to `benchmark` with `uid`: a
/// token is per benchmark, so it must not reach another benchmark's runs in the
/// namespace, nor the runs of an earlier Benchmark of the same name.
fn run_of(
    state: &ResultsState,
    namespace: &str,
    (benchmark, uid): (&str, &str),
    run: &str,
) -> Result<SpecSnapshot, Refusal> {
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            format!("no run {run} of benchmark {benchmark} in {namespace}"),
        )
    };
    if !state.store.has_run(namespace, run) {
        return Err(not_found());
    }
    match state.store.spec(namespace, run) {
        Ok(s)
            if s.benchmark.metadata.name.as_deref() == Some(benchmark)
                && s.benchmark.metadata.uid.as_deref() == Some(uid) =>
        {
            Ok(s)
        }
        Ok(_) => Err(not_found()),
        Err(e) => {
            tracing::error!(error = %e, namespace, run, "cannot read a run's spec");
            Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the run".into(),
            ))
        }
    }
}

/// Checks a POSTed result against the run: the step must be the one running now, the
/// instance index within the Job's parallelism, and the result must merge with the other
/// instances' (same stages; counts that do not overflow).
fn check_result(
    state: &ResultsState,
    snapshot: &SpecSnapshot,
    (namespace, run, ordinal): (&str, &str, usize),
    result: &LoadResult,
) -> Result<(), Refusal> {
    let internal = |e: super::store::Error| {
        tracing::error!(error = %e, "cannot read the run's results");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the run's results".to_string(),
        )
    };
    match state.store.current_step(namespace, run).map_err(internal)? {
        Some(c) if c == ordinal => {}
        _ => {
            return Err((
                StatusCode::CONFLICT,
                format!("step {ordinal} of run {run} is not the running step"),
            ));
        }
    }
    let parallelism = snapshot.benchmark.spec.parallelism();
    let inst = &result.plan.instance;
    if inst.count != parallelism || inst.index >= parallelism {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "instance {} of {}: the Job runs instances 0..{parallelism}",
                inst.index, inst.count
            ),
        ));
    }
    let mut all = state
        .store
        .instance_results(namespace, run, ordinal)
        .map_err(internal)?;
    all.retain(|r| r.plan.instance.index != inst.index);
    all.push(result.clone());
    if let Err(e) = LoadResult::merge(&all) {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("the result does not merge with the other instances': {e}"),
        ));
    }
    Ok(())
}

async fn post_result(
    State(state): State<Arc<ResultsState>>,
    Path((namespace, benchmark, run, ordinal)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let uid = match authorize(&state, &headers, &namespace, &benchmark, &run).await {
        Ok(uid) => uid,
        Err(r) => return r,
    };
    let Ok(ordinal) = ordinal.parse::<usize>() else {
        return reject(StatusCode::BAD_REQUEST, "the step ordinal is not a number");
    };
    let snapshot = match run_of(&state, &namespace, (&benchmark, &uid), &run) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return reject(StatusCode::BAD_REQUEST, "the body is not UTF-8");
    };
    let result = match LoadResult::from_json(text) {
        Ok(r) => r,
        Err(e) => {
            return reject(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("not a load result: {e}"),
            );
        }
    };
    if result.plan.labels.get("run").is_some_and(|r| r != &run) {
        return reject(
            StatusCode::CONFLICT,
            "the result belongs to another run (labels.run)",
        );
    }
    let index = result.plan.instance.index;
    // A retried POST of the same result is idempotent; a different one for the same
    // instance is refused, so the first one counts.
    match state
        .store
        .instance_result(&namespace, &run, ordinal, index)
    {
        Ok(Some(existing)) if existing == result => return StatusCode::NO_CONTENT.into_response(),
        Ok(Some(_)) => {
            return reject(
                StatusCode::CONFLICT,
                format!("instance {index} of step {ordinal} already posted a different result"),
            );
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %e, "cannot read a stored result");
            return reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the stored results",
            );
        }
    }
    if let Err(r) = check_result(&state, &snapshot, (&namespace, &run, ordinal), &result) {
        return r.into_response();
    }
    let stored = state
        .store
        .results_bytes(&namespace, &run)
        .unwrap_or(u64::MAX);
    if stored.saturating_add(body.len() as u64) > MAX_RUN_RESULT_BYTES {
        return reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "run {run} already stores {stored} bytes of results; the limit is {MAX_RUN_RESULT_BYTES}"
            ),
        );
    }
    match state
        .store
        .save_instance_result(&namespace, &run, ordinal, index, &result)
    {
        Ok(()) => {
            tracing::info!(
                namespace,
                benchmark,
                run,
                ordinal,
                index,
                "load result stored"
            );
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot store a load result");
            reject(StatusCode::INTERNAL_SERVER_ERROR, "cannot store the result")
        }
    }
}

async fn list_report(
    State(state): State<Arc<ResultsState>>,
    Path((namespace, benchmark, run)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let uid = match authorize(&state, &headers, &namespace, &benchmark, &run).await {
        Ok(uid) => uid,
        Err(r) => return r,
    };
    if let Err(r) = run_of(&state, &namespace, (&benchmark, &uid), &run) {
        return r.into_response();
    }
    match state.store.report_files(&namespace, &run) {
        Ok(files) => axum::Json(serde_json::json!({ "run": run, "files": files })).into_response(),
        Err(e) => reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_report_file(
    State(state): State<Arc<ResultsState>>,
    Path((namespace, benchmark, run, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let uid = match authorize(&state, &headers, &namespace, &benchmark, &run).await {
        Ok(uid) => uid,
        Err(r) => return r,
    };
    if let Err(r) = run_of(&state, &namespace, (&benchmark, &uid), &run) {
        return r.into_response();
    }
    // Only files the listing names are served: no path escapes the run directory.
    let path = match state.store.report_file(&namespace, &run, &file) {
        Ok(Some(p)) => p,
        Ok(None) => return reject(StatusCode::NOT_FOUND, format!("no file {file:?}")),
        Err(e) => return reject(StatusCode::NOT_FOUND, e.to_string()),
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let kind = match path.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("json") => "application/json",
                Some("csv") => "text/csv",
                Some("svg") => "image/svg+xml",
                Some("png") => "image/png",
                _ => "application/octet-stream",
            };
            ([(header::CONTENT_TYPE, kind)], bytes).into_response()
        }
        Err(e) => reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
