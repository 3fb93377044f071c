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

/// The token of `X-Meshbench-Token`, else of `Authorization: Bearer` (the scheme in any
/// case, as RFC 9110 §11.1 has it).
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(t) = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(t.trim());
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("Bearer").then(|| token.trim())
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
    let internal = |e: super::store::StoreError| {
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
    let result = match parse_result(&body, &run) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if let Some(r) = earlier_post(&state, (&namespace, &run, ordinal), &result) {
        return r;
    }
    if let Err(r) = check_result(&state, &snapshot, (&namespace, &run, ordinal), &result) {
        return r.into_response();
    }
    if let Some(r) = over_run_quota(&state, &namespace, &run, body.len()) {
        return r;
    }
    let index = result.plan.instance.index;
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

/// The posted body as a load result of run `run`, or the response refusing it (boxed:
/// a response is large beside the result).
fn parse_result(body: &[u8], run: &str) -> Result<LoadResult, Box<Response>> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(Box::new(reject(
            StatusCode::BAD_REQUEST,
            "the body is not UTF-8",
        )));
    };
    let result = match LoadResult::from_json(text) {
        Ok(r) => r,
        Err(e) => {
            return Err(Box::new(reject(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("not a load result: {e}"),
            )));
        }
    };
    if result.plan.labels.get("run").is_some_and(|r| r != run) {
        return Err(Box::new(reject(
            StatusCode::CONFLICT,
            "the result belongs to another run (labels.run)",
        )));
    }
    Ok(result)
}

/// The answer when the result's instance already posted for this step: a retried POST of
/// the same result is idempotent (204); a different one is refused (409), so the first
/// one counts. `None` when it has not posted yet.
fn earlier_post(
    state: &ResultsState,
    (namespace, run, ordinal): (&str, &str, usize),
    result: &LoadResult,
) -> Option<Response> {
    let index = result.plan.instance.index;
    match state.store.instance_result(namespace, run, ordinal, index) {
        Ok(Some(existing)) if existing == *result => Some(StatusCode::NO_CONTENT.into_response()),
        Ok(Some(_)) => Some(reject(
            StatusCode::CONFLICT,
            format!("instance {index} of step {ordinal} already posted a different result"),
        )),
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, "cannot read a stored result");
            Some(reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the stored results",
            ))
        }
    }
}

/// The refusal of a result of `len` bytes that would take the run's stored results past
/// [`MAX_RUN_RESULT_BYTES`], if it would.
fn over_run_quota(
    state: &ResultsState,
    namespace: &str,
    run: &str,
    len: usize,
) -> Option<Response> {
    let stored = state
        .store
        .results_bytes(namespace, run)
        .unwrap_or(u64::MAX);
    (stored.saturating_add(len as u64) > MAX_RUN_RESULT_BYTES).then(|| {
        reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "run {run} already stores {stored} bytes of results; the limit is {MAX_RUN_RESULT_BYTES}"
            ),
        )
    })
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

#[cfg(test)]
mod oneshot_tests {
    //! Every rejection of the results routes, request by request through the router
    //! (`tower::ServiceExt::oneshot`, no socket bound). The Kubernetes API is a `tower`
    //! service answering Benchmark GETs from a fixed list (`kube::Client::new`), so no API
    //! server is needed; the report volume is a temporary directory. The same endpoint
    //! against a real API server and real loadgen results: `tests/kube/results.rs`.

    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, Response, StatusCode, header};
    use kube::Client;
    use meshbench_crds::Benchmark;
    use meshbench_loadgen::LoadResult;
    use meshbench_loadgen::load_plan::{InstanceSpec, LoadModel, LoadPlan, ModelKind, Stage};
    use meshbench_loadgen::result::{
        Counts, EncodedHistogram, InstanceReport, RESULT_VERSION, StageResult, StageSummary,
    };
    use tower::ServiceExt as _;

    use super::{
        MAX_RESULT_BYTES, MAX_RUN_RESULT_BYTES, ResultsState, TOKEN_HEADER, report_routes, routes,
        upload_routes,
    };
    use crate::k8s::store::{SpecSnapshot, Store};
    use crate::k8s::token::TokenKey;

    const NS: &str = "team-a";
    /// A namespace whose Benchmarks the fake API server cannot read (HTTP 500).
    const BROKEN_NS: &str = "broken";
    /// Ramp's run; step 0 runs.
    const RUN: &str = "ramp-20261130t000000z";
    /// A run of an earlier Benchmark named ramp (another UID).
    const EARLIER_RUN: &str = "ramp-20261001t000000z";
    /// A run of ramp whose spec snapshot cannot be read.
    const CORRUPT_RUN: &str = "ramp-20261002t000000z";
    /// A run of ramp without a running step.
    const IDLE_RUN: &str = "ramp-20261003t000000z";
    /// A run of ramp that already stores as many result bytes as a run may; step 0 runs.
    const FULL_RUN: &str = "ramp-20261004t000000z";
    const RAMP_UID: &str = "6a1c0d1e-0000-4000-8000-000000000001";
    const OTHER_UID: &str = "6a1c0d1e-0000-4000-8000-000000000002";
    const EARLIER_UID: &str = "6a1c0d1e-0000-4000-8000-000000000000";

    const BENCH: &str = r#"
apiVersion: meshbench.io/v1alpha1
kind: Benchmark
metadata: { name: ramp }
spec:
  meshes: [shop]
  target: { service: api, path: / }
  load: { model: open }
  loadgen: { parallelism: 2 }
  profile:
    stages:
      - { rate: 20, duration: 1s }
"#;

    fn benchmark(name: &str, uid: Option<&str>) -> Benchmark {
        let mut b: Benchmark = serde_yaml::from_str(BENCH).expect("benchmark");
        b.metadata.name = Some(name.into());
        b.metadata.namespace = Some(NS.into());
        b.metadata.uid = uid.map(Into::into);
        b
    }

    /// A client whose "API server" answers a GET of one of `objects` with it, any other
    /// object with a NotFound Status (as kube-apiserver does), and every request for
    /// [`BROKEN_NS`] with a 500. Must be called inside a Tokio runtime (the client's
    /// buffer spawns its worker).
    fn fake_api(objects: Vec<Benchmark>) -> Client {
        let objects = Arc::new(objects);
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let objects = objects.clone();
            async move {
                let wanted = req
                    .uri()
                    .path()
                    .strip_prefix("/apis/meshbench.io/v1alpha1/namespaces/")
                    .and_then(|rest| rest.split_once("/benchmarks/"))
                    .map(|(ns, name)| (ns.to_owned(), name.to_owned()));
                let found = wanted.as_ref().and_then(|(ns, name)| {
                    objects.iter().find(|b| {
                        b.metadata.namespace.as_deref() == Some(ns.as_str())
                            && b.metadata.name.as_deref() == Some(name.as_str())
                    })
                });
                let (status, body) = match (&wanted, found) {
                    (Some((ns, _)), _) if ns == BROKEN_NS => (
                        500,
                        serde_json::json!({
                            "code": 500,
                            "reason": "InternalError",
                            "message": "etcdserver: request timed out",
                        }),
                    ),
                    (_, Some(b)) => (200, serde_json::to_value(b).expect("benchmark JSON")),
                    _ => (
                        404,
                        serde_json::json!({
                            "code": 404,
                            "reason": "NotFound",
                            "message": "benchmarks.meshbench.io not found",
                        }),
                    ),
                };
                let bytes = serde_json::to_vec(&body).expect("JSON");
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(kube::client::Body::from(bytes))
                        .expect("response"),
                )
            }
        });
        Client::new(service, NS)
    }

    /// The result of loadgen instance `index` of `count`, labelled with `run`: one stage of
    /// 10 successes, as the Benchmark's plan has it.
    fn load_result(run: &str, index: u32, count: u32) -> LoadResult {
        let mut plan = LoadPlan::single_stage(
            "http://api.team-a.svc:80",
            LoadModel::Open {
                max_in_flight: 10,
                max_lateness: None,
            },
            Stage {
                name: None,
                duration: Duration::from_secs(1),
                rate: Some(20.0),
                users: None,
            },
        );
        plan.instance = InstanceSpec { index, count };
        plan.labels.insert("run".into(), run.into());
        let counts = Counts {
            planned: 10,
            sent: 10,
            completed: 10,
            ok: 10,
            status_2xx: 10,
            ..Counts::default()
        };
        LoadResult {
            version: RESULT_VERSION,
            plan,
            model: ModelKind::Open,
            instances: vec![InstanceReport {
                index,
                count,
                hostname: None,
                started_unix_ms: 1_000,
                finished_unix_ms: 2_000,
                partial: false,
                cpu_time_ms: None,
            }],
            started_unix_ms: 1_000,
            finished_unix_ms: 2_000,
            partial: false,
            stages: vec![StageResult {
                index: 0,
                name: "stage-0".into(),
                warm_up: false,
                target_rate: Some(20.0),
                users: None,
                planned_duration_ms: 1_000,
                started_unix_ms: 1_000,
                ended_unix_ms: 2_000,
                partial: false,
                counts,
                latency_ok: EncodedHistogram::default(),
                latency_failed: EncodedHistogram::default(),
                lateness: EncodedHistogram::default(),
                send_delay: EncodedHistogram::default(),
                response_time_ok: EncodedHistogram::default(),
                last_ok_unix_ms: None,
                last_sent_unix_ms: None,
                seconds: vec![],
                summary: StageSummary::default(),
            }],
            warnings: vec![],
        }
    }

    fn json(r: &LoadResult) -> String {
        serde_json::to_string(r).expect("result JSON")
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        state: Arc<ResultsState>,
        router: Router,
        key: TokenKey,
        /// `Bearer <ramp's token>`.
        bearer: String,
    }

    /// Benchmarks ramp, other and no-uid (no UID) in [`NS`] on the fake API server; ramp's
    /// runs on the volume (see the run constants), [`RUN`] with a report.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        let key = TokenKey::new(&[42u8; 32]);
        let ramp = benchmark("ramp", Some(RAMP_UID));
        let earlier = benchmark("ramp", Some(EARLIER_UID));
        let snapshot = |b: &Benchmark| SpecSnapshot {
            benchmark: b.clone(),
            meshes: vec![],
        };
        for (run, b) in [
            (RUN, &ramp),
            (EARLIER_RUN, &earlier),
            (CORRUPT_RUN, &ramp),
            (IDLE_RUN, &ramp),
            (FULL_RUN, &ramp),
        ] {
            store.start_run(NS, run, &snapshot(b)).expect("start run");
        }
        store.set_current_step(NS, RUN, 0).expect("step");
        store.set_current_step(NS, FULL_RUN, 0).expect("step");
        let run_dir = store.run_dir(NS, RUN).expect("run dir");
        std::fs::write(run_dir.join("report.html"), "<html>ramp</html>").expect("write");
        std::fs::create_dir_all(run_dir.join("tables")).expect("mkdir");
        std::fs::write(run_dir.join("tables/steps.csv"), "step\n0\n").expect("write");
        std::fs::write(run_dir.join(".secret"), "hidden").expect("write");
        let corrupt = store.run_dir(NS, CORRUPT_RUN).expect("run dir");
        std::fs::write(corrupt.join("inputs/spec.json"), "{ torn").expect("write");
        // A sparse file: it counts toward the run's stored bytes but is no instance result.
        let full = store.run_dir(NS, FULL_RUN).expect("run dir");
        std::fs::File::create(full.join("inputs/results/padding"))
            .and_then(|f| f.set_len(MAX_RUN_RESULT_BYTES))
            .expect("padding");
        let state = Arc::new(ResultsState {
            client: fake_api(vec![
                ramp,
                benchmark("other", Some(OTHER_UID)),
                benchmark("no-uid", None),
            ]),
            store: store.clone(),
            token_key: key.clone(),
        });
        Fixture {
            _dir: dir,
            store,
            router: routes(state.clone()),
            state,
            bearer: format!("Bearer {}", key.token(NS, "ramp", RAMP_UID)),
            key,
        }
    }

    fn request(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            b = b.header(*name, *value);
        }
        b.body(body.into()).expect("request")
    }

    async fn send(router: &Router, req: Request<Body>) -> (StatusCode, String) {
        let resp = router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A request, the status it must get and a fragment of the body it must get.
    struct Case {
        what: String,
        req: Request<Body>,
        status: StatusCode,
        fragment: String,
    }

    fn case(
        what: impl Into<String>,
        req: Request<Body>,
        status: StatusCode,
        fragment: impl Into<String>,
    ) -> Case {
        Case {
            what: what.into(),
            req,
            status,
            fragment: fragment.into(),
        }
    }

    async fn check(router: &Router, cases: Vec<Case>) {
        for c in cases {
            let (status, body) = send(router, c.req).await;
            assert_eq!(status, c.status, "{}: {body:?}", c.what);
            assert!(
                body.contains(&c.fragment),
                "{}: {body:?} lacks {:?}",
                c.what,
                c.fragment
            );
        }
    }

    /// The three routes, each checking names, token and run ownership alike.
    #[derive(Clone, Copy, Debug)]
    enum Route {
        Upload,
        List,
        File,
    }

    impl Route {
        const ALL: [Route; 3] = [Route::Upload, Route::List, Route::File];

        fn request(
            self,
            ns: &str,
            benchmark: &str,
            run: &str,
            headers: &[(&str, &str)],
        ) -> Request<Body> {
            match self {
                Route::Upload => request(
                    "POST",
                    &format!("/v1/results/{ns}/{benchmark}/{run}/0"),
                    headers,
                    json(&load_result(run, 0, 2)),
                ),
                Route::List => request(
                    "GET",
                    &format!("/v1/reports/{ns}/{benchmark}/{run}"),
                    headers,
                    Body::empty(),
                ),
                Route::File => request(
                    "GET",
                    &format!("/v1/reports/{ns}/{benchmark}/{run}/report.html"),
                    headers,
                    Body::empty(),
                ),
            }
        }
    }

    /// The fixture's valid requests pass, so the refusals below are refusals of what each
    /// case changes.
    #[tokio::test]
    async fn valid_requests_pass() {
        let f = fixture();
        let auth = [("authorization", f.bearer.as_str())];
        let at0 = format!("/v1/results/{NS}/ramp/{RUN}/0");
        for (what, r) in [
            ("instance 0", load_result(RUN, 0, 2)),
            ("instance 0 again (idempotent)", load_result(RUN, 0, 2)),
            ("instance 1", load_result(RUN, 1, 2)),
        ] {
            let (status, body) = send(&f.router, request("POST", &at0, &auth, json(&r))).await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{what}: {body}");
        }
        assert_eq!(
            f.store.instance_results(NS, RUN, 0).expect("results").len(),
            2
        );

        // The token also passes in X-Meshbench-Token (through the API server's proxy).
        let token = f.key.token(NS, "ramp", RAMP_UID);
        let via_proxy = [(TOKEN_HEADER, token.as_str())];
        let list = format!("/v1/reports/{NS}/ramp/{RUN}");
        let (status, body) =
            send(&f.router, request("GET", &list, &via_proxy, Body::empty())).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let listing: serde_json::Value = serde_json::from_str(&body).expect("listing JSON");
        assert_eq!(
            listing,
            serde_json::json!({ "run": RUN, "files": ["report.html", "tables/steps.csv"] })
        );

        // Auth schemes are case-insensitive (RFC 9110 §11.1).
        let lowercase = f.bearer.replacen("Bearer", "bearer", 1);
        let (status, body) = send(
            &f.router,
            request(
                "GET",
                &list,
                &[("authorization", lowercase.as_str())],
                Body::empty(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "lowercase scheme: {body}");

        let file = format!("/v1/reports/{NS}/ramp/{RUN}/tables/steps.csv");
        let resp = f
            .router
            .clone()
            .oneshot(request("GET", &file, &auth, Body::empty()))
            .await
            .expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/csv");
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        assert_eq!(&bytes[..], b"step\n0\n");
    }

    /// Names that cannot be a directory of the volume, missing or wrong tokens, unknown
    /// Benchmarks and an unreadable API: on every route, before anything is read or
    /// stored.
    #[tokio::test]
    async fn every_route_refuses_bad_names_and_tokens() {
        let f = fixture();
        let ok = f.bearer.as_str();
        let other = format!("Bearer {}", f.key.token(NS, "other", OTHER_UID));
        let earlier = format!("Bearer {}", f.key.token(NS, "ramp", EARLIER_UID));
        let foreign_key = format!(
            "Bearer {}",
            TokenKey::new(&[1u8; 32]).token(NS, "ramp", RAMP_UID)
        );
        let other_ns = format!("Bearer {}", f.key.token("team-b", "ramp", RAMP_UID));
        let ghost = format!("Bearer {}", f.key.token(NS, "ghost", RAMP_UID));
        let no_uid = format!("Bearer {}", f.key.token(NS, "no-uid", ""));
        let broken = format!("Bearer {}", f.key.token(BROKEN_NS, "ramp", RAMP_UID));
        let long = "a".repeat(254);
        fn auth(v: &str) -> Vec<(&'static str, String)> {
            vec![("authorization", v.to_string())]
        }

        use StatusCode as S;
        let forbidden = "token not valid for this benchmark";
        // (what, namespace, benchmark, run, headers, status, body fragment)
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            Vec<(&'a str, String)>,
            S,
            &'a str,
        );
        #[rustfmt::skip]
        let table: Vec<Case> = vec![
            ("namespace ..", "..", "ramp", RUN, auth(ok), S::BAD_REQUEST, r#"invalid name "..""#),
            ("benchmark with a space", NS, "a%20b", RUN, auth(ok), S::BAD_REQUEST, r#"invalid name "a b""#),
            ("run escaping the volume", NS, "ramp", "..%2F..%2Fetc", auth(ok), S::BAD_REQUEST, r#"invalid name "../../etc""#),
            ("name of 254 characters", NS, long.as_str(), RUN, auth(ok), S::BAD_REQUEST, "invalid name"),
            ("names are checked before the token", "..", "ramp", RUN, vec![], S::BAD_REQUEST, "invalid name"),
            // axum's Path extractor, before the handler.
            ("run not UTF-8", NS, "ramp", "%FF", auth(ok), S::BAD_REQUEST, "Invalid UTF-8 in `run`"),
            ("no token", NS, "ramp", RUN, vec![], S::UNAUTHORIZED, "missing token"),
            ("Authorization not Bearer", NS, "ramp", RUN, auth("Basic cmFtcDpyYW1w"), S::UNAUTHORIZED, "missing token"),
            ("token not hex", NS, "ramp", RUN, auth("Bearer guess"), S::FORBIDDEN, forbidden),
            ("token longer than a MAC", NS, "ramp", RUN, auth(&format!("Bearer {}", "ab".repeat(65))), S::FORBIDDEN, forbidden),
            ("empty X-Meshbench-Token", NS, "ramp", RUN, vec![(TOKEN_HEADER, String::new())], S::FORBIDDEN, forbidden),
            ("X-Meshbench-Token wins over a valid Authorization", NS, "ramp", RUN, vec![(TOKEN_HEADER, "00".into()), ("authorization", ok.into())], S::FORBIDDEN, forbidden),
            ("another benchmark's token", NS, "ramp", RUN, auth(&other), S::FORBIDDEN, forbidden),
            ("token of an earlier Benchmark of the same name", NS, "ramp", RUN, auth(&earlier), S::FORBIDDEN, forbidden),
            ("token of another operator key", NS, "ramp", RUN, auth(&foreign_key), S::FORBIDDEN, forbidden),
            ("token of the same name in another namespace", NS, "ramp", RUN, auth(&other_ns), S::FORBIDDEN, forbidden),
            // Unknown benchmark and wrong token answer alike.
            ("unknown benchmark", NS, "ghost", RUN, auth(&ghost), S::FORBIDDEN, forbidden),
            ("Benchmark without a UID", NS, "no-uid", RUN, auth(&no_uid), S::FORBIDDEN, forbidden),
            ("API server unavailable", BROKEN_NS, "ramp", RUN, auth(&broken), S::SERVICE_UNAVAILABLE, "cannot read the benchmark"),
        ];
        let mut cases = Vec::new();
        for route in Route::ALL {
            for (what, ns, benchmark, run, headers, status, fragment) in &table {
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                cases.push(case(
                    format!("{route:?}: {what}"),
                    route.request(ns, benchmark, run, &headers),
                    *status,
                    *fragment,
                ));
            }
        }
        check(&f.router, cases).await;
        assert!(
            f.store
                .instance_results(NS, RUN, 0)
                .expect("results")
                .is_empty()
        );
    }

    /// A token opens its own Benchmark's runs only: not another Benchmark's in the
    /// namespace, nor an earlier Benchmark's of the same name.
    #[tokio::test]
    async fn every_route_refuses_runs_of_other_benchmarks() {
        let f = fixture();
        let ok = [("authorization", f.bearer.as_str())];
        let other = format!("Bearer {}", f.key.token(NS, "other", OTHER_UID));
        let other = [("authorization", other.as_str())];
        use StatusCode as S;
        #[rustfmt::skip]
        let table = [
            ("no such run", "ramp", "ramp-missing", &ok, S::NOT_FOUND, format!("no run ramp-missing of benchmark ramp in {NS}")),
            ("ramp's run by other's path and token", "other", RUN, &other, S::NOT_FOUND, format!("no run {RUN} of benchmark other")),
            ("a run of an earlier Benchmark of the same name", "ramp", EARLIER_RUN, &ok, S::NOT_FOUND, format!("no run {EARLIER_RUN}")),
            ("spec snapshot unreadable", "ramp", CORRUPT_RUN, &ok, S::INTERNAL_SERVER_ERROR, "cannot read the run".to_string()),
        ];
        let mut cases = Vec::new();
        for route in Route::ALL {
            for (what, benchmark, run, headers, status, fragment) in &table {
                cases.push(case(
                    format!("{route:?}: {what}"),
                    route.request(NS, benchmark, run, &headers[..]),
                    *status,
                    fragment.clone(),
                ));
            }
        }
        check(&f.router, cases).await;
    }

    /// Every refusal of a POSTed result; none stores anything.
    #[tokio::test]
    async fn uploads_refuse_bad_steps_bodies_and_results() {
        let f = fixture();
        let ok = [("authorization", f.bearer.as_str())];
        // Instance 0 posted first, with a count that overflows when anything is added.
        let mut first = load_result(RUN, 0, 2);
        first.stages[0].counts.ok = u64::MAX;
        f.store
            .save_instance_result(NS, RUN, 0, 0, &first)
            .expect("save");
        // A stored result of step 5 that cannot be read back.
        let run_dir = f.store.run_dir(NS, RUN).expect("run dir");
        std::fs::write(run_dir.join("inputs/results/5-0.json"), "{ torn").expect("write");

        fn post(run: &str, step: &str, headers: &[(&str, &str)], body: Body) -> Request<Body> {
            request(
                "POST",
                &format!("/v1/results/{NS}/ramp/{run}/{step}"),
                headers,
                body,
            )
        }
        let at0 = |body: String| post(RUN, "0", &ok, Body::from(body));
        let mut other_run = load_result(RUN, 1, 2);
        other_run
            .plan
            .labels
            .insert("run".into(), "ramp-20260101t000000z".into());
        let mut other_stage = load_result(RUN, 1, 2);
        other_stage.stages[0].name = "other".into();
        let mut version2 = serde_json::to_value(load_result(RUN, 1, 2)).expect("JSON");
        version2["version"] = 2.into();
        let too_large = || Body::from(vec![b' '; MAX_RESULT_BYTES + 1]);

        use StatusCode as S;
        #[rustfmt::skip]
        let cases = vec![
            case("ordinal not a number", post(RUN, "x", &ok, json(&load_result(RUN, 0, 2)).into()), S::BAD_REQUEST, "the step ordinal is not a number"),
            case("negative ordinal", post(RUN, "-1", &ok, json(&load_result(RUN, 0, 2)).into()), S::BAD_REQUEST, "the step ordinal is not a number"),
            case("ordinal past usize", post(RUN, "18446744073709551616", &ok, json(&load_result(RUN, 0, 2)).into()), S::BAD_REQUEST, "the step ordinal is not a number"),
            case("body not UTF-8", post(RUN, "0", &ok, Body::from(vec![0xff, 0xfe, 0x00])), S::BAD_REQUEST, "the body is not UTF-8"),
            case("body not JSON", at0("hello".into()), S::UNPROCESSABLE_ENTITY, "not a load result"),
            case("JSON without a version", at0(r#"{"stages": []}"#.into()), S::UNPROCESSABLE_ENTITY, "no version field"),
            case("unsupported version", at0(version2.to_string()), S::UNPROCESSABLE_ENTITY, "version 2 is not supported"),
            case("a version and nothing else", at0(r#"{"version": 1}"#.into()), S::UNPROCESSABLE_ENTITY, "not a load result"),
            case("labels.run of another run", at0(json(&other_run)), S::CONFLICT, "the result belongs to another run"),
            case("instance 0 again, different", at0(json(&load_result(RUN, 0, 2))), S::CONFLICT, "instance 0 of step 0 already posted a different result"),
            case("a stored result unreadable", post(RUN, "5", &ok, json(&load_result(RUN, 0, 2)).into()), S::INTERNAL_SERVER_ERROR, "cannot read the stored results"),
            case("a step that does not run", post(RUN, "1", &ok, json(&load_result(RUN, 1, 2)).into()), S::CONFLICT, format!("step 1 of run {RUN} is not the running step")),
            case("a run without a running step", post(IDLE_RUN, "0", &ok, json(&load_result(IDLE_RUN, 1, 2)).into()), S::CONFLICT, "is not the running step"),
            case("instance count not the parallelism", at0(json(&load_result(RUN, 1, 3))), S::BAD_REQUEST, "instance 1 of 3: the Job runs instances 0..2"),
            case("instance index past the parallelism", at0(json(&load_result(RUN, 2, 2))), S::BAD_REQUEST, "instance 2 of 2: the Job runs instances 0..2"),
            case("stages unlike instance 0's", at0(json(&other_stage)), S::BAD_REQUEST, "does not merge with the other instances'"),
            case("counts overflowing with instance 0's", at0(json(&load_result(RUN, 1, 2))), S::BAD_REQUEST, "a count overflows"),
            case("the run's results are full", post(FULL_RUN, "0", &ok, json(&load_result(FULL_RUN, 0, 2)).into()), S::PAYLOAD_TOO_LARGE, "already stores"),
            // axum's DefaultBodyLimit, before the handler.
            case("body over 16 MiB", post(RUN, "0", &ok, too_large()), S::PAYLOAD_TOO_LARGE, "Failed to buffer the request body"),
            // The body is read before the token is checked.
            case("body over 16 MiB without a token", post(RUN, "0", &[], too_large()), S::PAYLOAD_TOO_LARGE, "Failed to buffer the request body"),
        ];
        check(&f.router, cases).await;

        assert_eq!(
            f.store.instance_results(NS, RUN, 0).expect("results"),
            vec![first]
        );
        assert!(
            f.store
                .instance_results(NS, RUN, 1)
                .expect("results")
                .is_empty()
        );
        assert!(
            f.store
                .instance_results(NS, IDLE_RUN, 0)
                .expect("results")
                .is_empty()
        );
        assert!(
            f.store
                .instance_results(NS, FULL_RUN, 0)
                .expect("results")
                .is_empty()
        );
    }

    /// Only the files the listing names are served: no way out of the run directory, into
    /// its inputs, or to hidden files.
    #[tokio::test]
    async fn report_files_outside_the_listing_are_not_found() {
        let f = fixture();
        let ok = [("authorization", f.bearer.as_str())];
        let base = format!("/v1/reports/{NS}/ramp/{RUN}");
        let encoded = format!("..%2F{EARLIER_RUN}%2Finputs%2Fspec.json");
        #[rustfmt::skip]
        let cases: Vec<Case> = [
            ("a file the report lacks", "nope.html", r#"no file "nope.html""#),
            ("the run's inputs", "inputs/spec.json", "no file"),
            ("a hidden file", ".secret", "no file"),
            ("a directory", "tables", "no file"),
            ("dot segments", "../../../etc/passwd", "no file"),
            ("encoded dot segments", encoded.as_str(), "no file"),
            ("encoded absolute path", "%2Fetc%2Fpasswd", "no file"),
        ]
        .into_iter()
        .map(|(what, file, fragment)| {
            case(
                what,
                request("GET", &format!("{base}/{file}"), &ok, Body::empty()),
                StatusCode::NOT_FOUND,
                fragment,
            )
        })
        .collect();
        check(&f.router, cases).await;
    }

    /// Methods a route does not have (405) and paths no route has (404), with a valid
    /// token.
    #[tokio::test]
    async fn wrong_methods_and_unknown_paths() {
        let f = fixture();
        let ok = [("authorization", f.bearer.as_str())];
        let upload = format!("/v1/results/{NS}/ramp/{RUN}/0");
        let list = format!("/v1/reports/{NS}/ramp/{RUN}");
        let file = format!("{list}/report.html");
        let body = || json(&load_result(RUN, 0, 2));
        use StatusCode as S;
        #[rustfmt::skip]
        let cases = vec![
            case("GET of an upload", request("GET", &upload, &ok, Body::empty()), S::METHOD_NOT_ALLOWED, ""),
            case("PUT of an upload", request("PUT", &upload, &ok, body()), S::METHOD_NOT_ALLOWED, ""),
            case("POST to a listing", request("POST", &list, &ok, body()), S::METHOD_NOT_ALLOWED, ""),
            case("DELETE of a listing", request("DELETE", &list, &ok, Body::empty()), S::METHOD_NOT_ALLOWED, ""),
            case("POST to a report file", request("POST", &file, &ok, body()), S::METHOD_NOT_ALLOWED, ""),
            case("upload without a step", request("POST", &format!("/v1/results/{NS}/ramp/{RUN}"), &ok, body()), S::NOT_FOUND, ""),
            case("upload with a trailing segment", request("POST", &format!("{upload}/extra"), &ok, body()), S::NOT_FOUND, ""),
            case("listing without a run", request("GET", &format!("/v1/reports/{NS}/ramp"), &ok, Body::empty()), S::NOT_FOUND, ""),
            case("another API version", request("GET", &format!("/v2/reports/{NS}/ramp/{RUN}"), &ok, Body::empty()), S::NOT_FOUND, ""),
            case("the root", request("GET", "/", &ok, Body::empty()), S::NOT_FOUND, ""),
        ];
        check(&f.router, cases).await;
    }

    /// The operator serves uploads and downloads on separate ports: each half answers its
    /// own routes only.
    #[tokio::test]
    async fn each_half_serves_its_own_routes_only() {
        let f = fixture();
        let ok = [("authorization", f.bearer.as_str())];
        let uploads = upload_routes(f.state.clone());
        let reports = report_routes(f.state.clone());
        for path in [
            format!("/v1/reports/{NS}/ramp/{RUN}"),
            format!("/v1/reports/{NS}/ramp/{RUN}/report.html"),
        ] {
            let (status, body) = send(&uploads, request("GET", &path, &ok, Body::empty())).await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "uploads router, GET {path}: {body}"
            );
        }
        let upload = format!("/v1/results/{NS}/ramp/{RUN}/0");
        let (status, body) = send(
            &reports,
            request("POST", &upload, &ok, json(&load_result(RUN, 0, 2))),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "reports router, POST {upload}: {body}"
        );
        assert!(
            f.store
                .instance_results(NS, RUN, 0)
                .expect("results")
                .is_empty()
        );
    }
}
