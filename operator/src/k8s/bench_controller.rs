//! The Benchmark controller: drives the experiment state machine
//! ([`crate::experiment::Machine`]) one reconcile at a time.
//!
//! The machine, the current load Job and the phase timers live in the Benchmark's status
//! (`status.state`); the measured data and the run's history live on the report volume
//! ([`Store`]). A reconcile therefore only needs the object the runtime hands over: it
//! carries out actions whose outcome is known at once (deploy, collect, analyse), and for
//! actions that take time (wait for ready, a load Job, settle) it checks progress and
//! requeues. After every transition the status is written — over the resourceVersion the
//! reconcile read, so a stale view never rolls it back — and an operator restart resumes
//! at the last transition; every action is idempotent (server-side apply, files rewritten
//! whole), so repeating the interrupted one is harmless.
//!
//! A reconcile is a pipeline: [`decide`] (pure) from the status and the generation, then
//! start a run (fetch and validate its meshes, claim them, record the spec), or drive the
//! machine, or fail a run that cannot be resumed (its state unreadable, its report volume
//! lost). A changed spec (new `metadata.generation`) cancels a running run — its report is
//! written, marked partial — and then starts a new run with the new spec; so does deleting
//! the Benchmark mid-run (a finalizer, held only while a run goes on, lets the partial
//! report be written first).

mod claims;
mod run;
mod status;

pub use claims::{Held, claim_name};
pub use status::STATUS_STEPS;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use meshbench_crds::benchmark::{BenchmarkStatus, Phase};
use meshbench_crds::validate::Issue;
use meshbench_crds::{Benchmark, ServiceMesh, ValidBenchmark};
use serde::{Deserialize, Serialize};

use super::export::Exporter;
use super::keys;
use super::metrics::Metrics;
use super::render::{self, RenderOptions};
use super::shared::{self, Failures, invalid_message, set_condition};
use super::store::{self, SpecSnapshot, Store};
use super::token::TokenKey;
use crate::experiment::{Cursor, ExperimentSchedule, Machine, Outcome};
use status::StatusWriter;

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "benchmark";

/// Field manager of the restart annotation, apart from the mesh controller's so its
/// server-side apply never removes it.
const RESTART_MANAGER: &str = "meshbench-benchmark";

/// Most transitions one reconcile carries out before it requeues (bounds a reconcile's
/// duration; every transition is persisted anyway).
const MAX_TRANSITIONS: usize = 32;

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum BenchControllerError {
    /// A request to the API server failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The client error.
        source: kube::Error,
    },
    /// The load Job could not be rendered.
    #[error(transparent)]
    Render(#[from] render::RenderError),
    /// The report volume failed.
    #[error("report volume: {0}")]
    Store(#[from] store::StoreError),
    /// The benchmark is not namespaced (the CRD is; this means a broken object).
    #[error("Benchmark {0} has no namespace")]
    NoNamespace(String),
    /// The Benchmark changed since this reconcile read it (a stale cache): nothing was
    /// written; the next reconcile starts from the fresh object.
    #[error("Benchmark {0} changed since it was read")]
    Stale(String),
}

impl BenchControllerError {
    /// A bounded label for the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BenchControllerError::Kube { .. } => "kube",
            BenchControllerError::Render(_) => "render",
            BenchControllerError::Store(_) => "store",
            BenchControllerError::NoNamespace(_) => "no_namespace",
            BenchControllerError::Stale(_) => "stale",
        }
    }
}

/// Result alias of this module.
pub type Result<T, E = BenchControllerError> = std::result::Result<T, E>;

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> BenchControllerError {
    let action = action.into();
    move |source| BenchControllerError::Kube { action, source }
}

/// Settings of the Benchmark controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Prometheus to collect from; without one the report holds the load generators'
    /// figures only, and says so.
    pub prometheus_url: Option<String>,
    /// Prometheus's scrape interval: collection waits two of them after a step so its
    /// last samples are stored, and rates use a window of four.
    pub scrape_interval: Duration,
    /// How long a mesh may take to become ready before the run fails.
    pub ready_timeout: Duration,
    /// How long after a multi-instance load Job is created its instances begin together
    /// (`startAtUnixMs` in their plan): time for every pod to be scheduled and started.
    pub start_delay: Duration,
    /// How a report location is shown in the status (e.g. `pvc://meshbench-reports`).
    pub location_prefix: String,
    /// Where finished reports are copied to as well (S3 or a file system); the status
    /// then points there.
    pub export: Option<Arc<Exporter>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prometheus_url: None,
            scrape_interval: Duration::from_secs(30),
            ready_timeout: Duration::from_secs(600),
            start_delay: Duration::from_secs(20),
            location_prefix: "pvc://meshbench-reports".into(),
            export: None,
        }
    }
}

/// What a reconcile needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Events on benchmarks.
    pub recorder: Recorder,
    /// Images and commands of the load Jobs; `results_base_url` is this operator.
    pub render: RenderOptions,
    /// The report volume.
    pub store: Store,
    /// Collection, timeouts.
    pub settings: Settings,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Derives the benchmarks' results tokens.
    pub token_key: TokenKey,
    failures: Failures,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("store", &self.store)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Context {
    /// A context; Events are reported as `meshbench-operator` from `instance`.
    pub fn new(
        client: Client,
        render: RenderOptions,
        store: Store,
        settings: Settings,
        metrics: Arc<Metrics>,
        token_key: TokenKey,
        instance: Option<String>,
    ) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: "meshbench-operator".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            render,
            store,
            settings,
            metrics,
            token_key,
            failures: Failures::default(),
        }
    }
}

/// The controller's part of the status (`status.state`): the resume point of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    /// The experiment state machine.
    pub machine: Machine,
    /// When the current phase began (UTC unix ms): timers of waits and settling.
    pub phase_started_ms: i64,
    /// The next step's Job runs the warm-up first.
    #[serde(default)]
    pub warmup_pending: bool,
    /// The load Job of the current step, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When the current mesh was (re)deployed (UTC unix ms): collection starts there.
    pub deployed_at_ms: i64,
    /// Collected up to here (UTC unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collected_until_ms: Option<i64>,
}

impl RunState {
    fn new(now_ms: i64) -> Self {
        Self {
            machine: Machine::new(),
            phase_started_ms: now_ms,
            warmup_pending: false,
            job: None,
            deployed_at_ms: now_ms,
            collected_until_ms: None,
        }
    }
}

/// Ordinal of a step across meshes and repetitions: it names the step's Job and files.
pub fn ordinal(schedule: &ExperimentSchedule, c: Cursor) -> usize {
    (c.mesh * schedule.repetitions as usize + c.repetition as usize) * schedule.steps.len() + c.step
}

/// The inverse of [`ordinal`].
pub fn cursor_of(schedule: &ExperimentSchedule, ordinal: usize) -> Cursor {
    let steps = schedule.steps.len().max(1);
    let per_mesh = steps * schedule.repetitions.max(1) as usize;
    Cursor {
        mesh: ordinal / per_mesh,
        repetition: ((ordinal % per_mesh) / steps) as u32,
        step: ordinal % steps,
    }
}

/// What an action came to in this reconcile.
enum Progress {
    /// Done, with this outcome.
    Done(Outcome),
    /// Not yet; look again after this long.
    Wait(Duration),
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn k8s_now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Finalizer held while a run goes on: deleting the Benchmark then first writes the
/// run's partial report.
pub const FINALIZER: &str = "meshbench.io/report";

/// Field manager of [`FINALIZER`]: its own, so applying `[]` removes only this entry.
const FINALIZER_MANAGER: &str = "meshbench-finalizer";

/// What a reconcile does, decided from the status alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Finished (or never startable) with this spec: nothing to do.
    Idle,
    /// A new Benchmark or a new spec with no run going on: validate and start one.
    Start,
    /// A run goes on: drive it; `cancel` when the spec changed under it.
    Continue {
        /// The run's state from the status.
        state: Box<RunState>,
        /// Stop the run, keeping what it measured.
        cancel: bool,
    },
    /// A run goes on but this operator cannot read its state: fail it, saying why.
    Unresumable(String),
}

/// The pure first step of a reconcile.
pub fn decide(status: &BenchmarkStatus, generation: Option<i64>) -> Decision {
    let current = status.observed_generation.is_some() && status.observed_generation == generation;
    let running = !status.phase.is_terminal();
    match status.state.clone().map(serde_json::from_value::<RunState>) {
        Some(Ok(state)) if running => Decision::Continue {
            state: Box::new(state),
            cancel: !current,
        },
        Some(Err(e)) if running => Decision::Unresumable(format!(
            "status.state of run {} cannot be read by this operator version ({e}); the run cannot be resumed",
            status.run_id.as_deref().unwrap_or("?")
        )),
        _ if current => Decision::Idle,
        _ => Decision::Start,
    }
}

/// Reconciles one benchmark.
#[tracing::instrument(skip_all, fields(benchmark = %bench.name_any(), namespace = ?bench.namespace()))]
pub async fn reconcile(bench: Arc<Benchmark>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let result = reconcile_inner(&bench, &ctx).await;
    if let Err(e) = &result {
        ctx.metrics.failure(CONTROLLER, e.metric_label());
    }
    match result {
        Ok(action) => {
            ctx.failures.clear(&*bench);
            Ok(action)
        }
        // A stale view: the watch delivers the fresh object shortly.
        Err(BenchControllerError::Stale(_)) => Ok(Action::requeue(Duration::from_secs(1))),
        // Retrying cannot heal it.
        Err(e @ BenchControllerError::NoNamespace(_)) => {
            tracing::error!(error = %e, "ignoring a Benchmark that cannot be reconciled");
            Ok(Action::await_change())
        }
        Err(e) => Err(e),
    }
}

async fn reconcile_inner(bench: &Benchmark, ctx: &Context) -> Result<Action> {
    let name = bench.name_any();
    let ns = bench
        .namespace()
        .ok_or_else(|| BenchControllerError::NoNamespace(name.clone()))?;
    let api: Api<Benchmark> = Api::namespaced(ctx.client.clone(), &ns);
    let mut writer = StatusWriter::new(api.clone(), bench);
    let deleting = bench.metadata.deletion_timestamp.is_some();
    let status = writer.current().clone();
    match decide(&status, bench.metadata.generation) {
        Decision::Idle | Decision::Start if deleting => {
            // Owned Jobs, ConfigMaps, the Secret and claims go with it; the report stays.
            release_finalizer(&api, bench).await?;
            Ok(Action::await_change())
        }
        Decision::Idle => Ok(Action::await_change()),
        Decision::Start => start(ctx, bench, &mut writer).await,
        Decision::Unresumable(why) => fail_unresumable(ctx, bench, &mut writer, why).await,
        Decision::Continue { state, cancel } => {
            let run_id = status.run_id.clone().unwrap_or_default();
            let run = match run::Run::open(ctx, bench, &ns, &run_id) {
                Ok(run) => run,
                Err(why) => {
                    return fail_unresumable(ctx, bench, &mut writer, why.to_string()).await;
                }
            };
            let action = run.drive(*state, cancel || deleting, &mut writer).await?;
            if writer.current().phase.is_terminal() {
                claims::release(&ctx.client, bench, &bench.spec.meshes).await?;
                release_finalizer(&api, bench).await?;
            }
            Ok(action)
        }
    }
}

/// Validates a new spec against the meshes in the namespace, claims the meshes, and
/// starts a run; or says why it cannot start yet.
async fn start(ctx: &Context, bench: &Benchmark, writer: &mut StatusWriter) -> Result<Action> {
    let (meshes, missing) = fetch_meshes(ctx, bench).await?;
    if !missing.is_empty() {
        return invalid(ctx, bench, writer, &missing).await;
    }
    let refs: Vec<&ServiceMesh> = meshes.iter().collect();
    let valid = match ValidBenchmark::new(bench.clone(), &refs) {
        Ok(valid) => valid,
        Err(e) => return invalid(ctx, bench, writer, &e.issues).await,
    };
    let run_id = render::dns_name(&[
        &bench.name_any(),
        &meshbench_analysis::analyze::compact_timestamp(Utc::now()).to_ascii_lowercase(),
    ]);
    if let Some(held) = claims::acquire(&ctx.client, bench, &run_id, &bench.spec.meshes).await? {
        return waiting(ctx, bench, writer, &held).await;
    }
    start_run(ctx, &valid, writer, meshes, run_id).await
}

/// The meshes the benchmark names, and an issue per mesh that does not exist.
async fn fetch_meshes(ctx: &Context, bench: &Benchmark) -> Result<(Vec<ServiceMesh>, Vec<Issue>)> {
    let ns = bench.namespace().unwrap_or_default();
    let api: Api<ServiceMesh> = Api::namespaced(ctx.client.clone(), &ns);
    let mut meshes = Vec::new();
    let mut missing = Vec::new();
    for (i, m) in bench.spec.meshes.iter().enumerate() {
        match api
            .get_opt(m)
            .await
            .map_err(kube_err(format!("reading ServiceMesh {m}")))?
        {
            Some(mesh) => meshes.push(mesh),
            // Said in cluster terms; validation speaks of input files.
            None => missing.push(
                Issue::new(
                    format!("spec.meshes[{i}]"),
                    format!("ServiceMesh {m:?} does not exist in namespace {ns}"),
                )
                .hint("apply it; the run starts once it exists"),
            ),
        }
    }
    Ok((meshes, missing))
}

/// `Valid=False` with every problem, and a Warning Event when that is news.
async fn invalid(
    ctx: &Context,
    bench: &Benchmark,
    writer: &mut StatusWriter,
    issues: &[Issue],
) -> Result<Action> {
    let mut status = writer.current().clone();
    let message = invalid_message(issues);
    let changed = set_condition(
        &mut status.conditions,
        "Valid",
        false,
        "InvalidSpec",
        message.clone(),
        bench.metadata.generation,
        &k8s_now(),
    );
    writer.write(&status).await?;
    if changed {
        publish(
            ctx,
            bench,
            EventType::Warning,
            "InvalidSpec",
            "Validate",
            message,
        )
        .await;
    }
    // A mesh created later makes the spec valid; meshes are not watched.
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// `Waiting=True` naming the run that holds a mesh; looks again shortly.
async fn waiting(
    ctx: &Context,
    bench: &Benchmark,
    writer: &mut StatusWriter,
    held: &Held,
) -> Result<Action> {
    let mut status = writer.current().clone();
    let message = format!("{held}; this run starts when that one ends");
    let changed = set_condition(
        &mut status.conditions,
        "Waiting",
        true,
        "MeshInUse",
        message.clone(),
        bench.metadata.generation,
        &k8s_now(),
    );
    writer.write(&status).await?;
    if changed {
        publish(ctx, bench, EventType::Normal, "MeshInUse", "Claim", message).await;
    }
    Ok(Action::requeue(Duration::from_secs(10)))
}

/// Starts a run: the finalizer, the token Secret, the run directory with the spec
/// snapshot, the status (written over the version read: of two reconciles starting a run
/// from one view, only one succeeds).
async fn start_run(
    ctx: &Context,
    valid: &ValidBenchmark,
    writer: &mut StatusWriter,
    meshes: Vec<ServiceMesh>,
    run_id: String,
) -> Result<Action> {
    let bench = valid.benchmark();
    let name = bench.name_any();
    let ns = bench.namespace().unwrap_or_default();
    let generation = bench.metadata.generation;
    let api: Api<Benchmark> = Api::namespaced(ctx.client.clone(), &ns);
    // Over the version read, as the status write: a stale view stops here. The finalizer
    // moves the resourceVersion; the status write goes over the new one.
    let resource_version = set_finalizer(&api, &name, writer.resource_version()).await?;
    writer.set_resource_version(resource_version);
    ensure_token(ctx, bench, &ns).await?;
    // The spec as the API server has it, stripped of the status and managed fields.
    let mut snap_bench = bench.clone();
    snap_bench.status = None;
    snap_bench.metadata.managed_fields = None;
    let meshes = meshes
        .into_iter()
        .map(|mut m| {
            m.status = None;
            m.metadata.managed_fields = None;
            m
        })
        .collect();
    let snapshot = SpecSnapshot {
        benchmark: snap_bench,
        meshes,
    };
    ctx.store.start_run(&ns, &run_id, &snapshot)?;
    let schedule = ExperimentSchedule::new(valid);
    let mut status = writer.current().clone();
    started_status(&mut status, &run_id, generation);
    let state = RunState::new(Utc::now().timestamp_millis());
    if let Err(e) = writer.write_state(&mut status, &state, &schedule).await {
        // Nobody will run it: leave no directory behind.
        let _ = std::fs::remove_dir_all(ctx.store.run_dir(&ns, &run_id)?);
        return Err(e);
    }
    publish(
        ctx,
        bench,
        EventType::Normal,
        "Started",
        "Run",
        format!(
            "run {run_id}: {} step(s) × {} mesh(es) × {} repetition(s)",
            schedule.steps.len(),
            schedule.meshes.len(),
            schedule.repetitions
        ),
    )
    .await;
    Ok(Action::requeue(Duration::from_millis(100)))
}

/// The status of a run that just started.
fn started_status(status: &mut BenchmarkStatus, run_id: &str, generation: Option<i64>) {
    let now = k8s_now();
    set_condition(
        &mut status.conditions,
        "Valid",
        true,
        "SpecValid",
        "the spec passed validation".into(),
        generation,
        &now,
    );
    if status.conditions.iter().any(|c| c.type_ == "Waiting") {
        set_condition(
            &mut status.conditions,
            "Waiting",
            false,
            "MeshesClaimed",
            format!("run {run_id} holds its meshes"),
            generation,
            &now,
        );
    }
    status.conditions.retain(|c| c.type_ != "Degraded");
    // As a Job's: `Complete` and `Failed` are each True only in their own outcome, so
    // `kubectl wait --for=condition=Complete` never passes a failed run.
    for type_ in ["Complete", "Failed"] {
        set_condition(
            &mut status.conditions,
            type_,
            false,
            "Running",
            format!("run {run_id} started"),
            generation,
            &now,
        );
    }
    status.observed_generation = generation;
    status.run_id = Some(run_id.to_string());
    status.started_at = Some(rfc3339(Utc::now()));
    status.finished_at = None;
    status.steps.clear();
    status.throughput_rps = None;
    status.saturation = Vec::new();
    status.p99_ms = None;
    status.slo_verdict = None;
    status.report_location = None;
    status.next_step = 0;
}

/// Ends a run that cannot go on (state unreadable, report volume lost): `Failed` with
/// the reason, a Warning Event, its claims and finalizer released.
async fn fail_unresumable(
    ctx: &Context,
    bench: &Benchmark,
    writer: &mut StatusWriter,
    why: String,
) -> Result<Action> {
    let mut status = writer.current().clone();
    status.phase = Phase::Failed;
    status.state = None;
    status.current_step = None;
    status.finished_at = Some(rfc3339(Utc::now()));
    status::set_outcome(
        &mut status,
        false,
        "Unresumable",
        why.clone(),
        bench.metadata.generation,
    );
    writer.write(&status).await?;
    publish(ctx, bench, EventType::Warning, "Unresumable", "Run", why).await;
    claims::release(&ctx.client, bench, &bench.spec.meshes).await?;
    let api: Api<Benchmark> =
        Api::namespaced(ctx.client.clone(), &bench.namespace().unwrap_or_default());
    release_finalizer(&api, bench).await?;
    // A newer spec gets its own run.
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Adds [`FINALIZER`] (when `add` is the resourceVersion to add it over) or removes it
/// (`None`), as its own field manager; returns the Benchmark's resourceVersion after.
async fn set_finalizer(
    api: &Api<Benchmark>,
    name: &str,
    add: Option<&str>,
) -> Result<Option<String>> {
    let on = add.is_some();
    let patch = match add {
        Some(rv) => serde_json::json!({
            "apiVersion": "meshbench.io/v1alpha1",
            "kind": "Benchmark",
            "metadata": { "name": name, "finalizers": [FINALIZER], "resourceVersion": rv },
        }),
        None => serde_json::json!({
            "apiVersion": "meshbench.io/v1alpha1",
            "kind": "Benchmark",
            "metadata": { "name": name, "finalizers": [] },
        }),
    };
    match api
        .patch(
            name,
            &PatchParams::apply(FINALIZER_MANAGER),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(b) => Ok(b.metadata.resource_version),
        Err(kube::Error::Api(s)) if s.code == 404 && !on => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Err(BenchControllerError::Stale(name.to_string()))
        }
        Err(e) => Err(kube_err(format!(
            "setting the finalizer of Benchmark {name}"
        ))(e)),
    }
}

async fn release_finalizer(api: &Api<Benchmark>, bench: &Benchmark) -> Result<()> {
    if bench.finalizers().iter().any(|f| f == FINALIZER) {
        set_finalizer(api, &bench.name_any(), None).await?;
    }
    Ok(())
}

/// Applies the benchmark's results token Secret (for the load Jobs' environment). The
/// token is derived from the operator key and the Benchmark's UID, so applying it again
/// is harmless and checking it needs no Secret read.
async fn ensure_token(ctx: &Context, bench: &Benchmark, ns: &str) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = render::token_secret_name(&bench.name_any());
    let token = ctx.token_key.token(
        ns,
        &bench.name_any(),
        bench.metadata.uid.as_deref().unwrap_or_default(),
    );
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(std::collections::BTreeMap::from([
                (keys::BENCHMARK.to_string(), bench.name_any()),
                (
                    keys::APP_MANAGED_BY.to_string(),
                    "meshbench-operator".to_string(),
                ),
            ])),
            owner_references: bench.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(std::collections::BTreeMap::from([(
            render::TOKEN_KEY.to_string(),
            ByteString(token.into_bytes()),
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    };
    let mut patch = serde_json::to_value(&secret).unwrap_or_default();
    patch["apiVersion"] = "v1".into();
    patch["kind"] = "Secret".into();
    secrets
        .patch(
            &name,
            &PatchParams::apply(super::FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(kube_err(format!("applying Secret {name}")))?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    bench: &Benchmark,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    shared::publish(&ctx.recorder, bench, type_, reason, action, note).await;
}

fn elapsed_ms(since_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_ms() - since_ms).unwrap_or(0))
}

/// Backoff after a failed reconcile: 5 s doubling per consecutive failure, at most 5 min.
pub fn error_policy(
    bench: Arc<Benchmark>,
    error: &BenchControllerError,
    ctx: Arc<Context>,
) -> Action {
    let (n, delay) = ctx.failures.record(&*bench);
    tracing::warn!(benchmark = %bench.name_any(), error = %error, failures = n, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        phase: Phase,
        generation: Option<i64>,
        state: Option<serde_json::Value>,
    ) -> BenchmarkStatus {
        BenchmarkStatus {
            phase,
            observed_generation: generation,
            run_id: Some("r".into()),
            state,
            ..BenchmarkStatus::default()
        }
    }

    fn running() -> Option<serde_json::Value> {
        serde_json::to_value(RunState::new(0)).ok()
    }

    #[test]
    fn decide_follows_the_status_and_the_generation() {
        assert_eq!(
            decide(&BenchmarkStatus::default(), Some(1)),
            Decision::Start
        );
        assert_eq!(
            decide(&status(Phase::Succeeded, Some(1), running()), Some(1)),
            Decision::Idle
        );
        assert_eq!(
            decide(&status(Phase::Failed, Some(1), None), Some(2)),
            Decision::Start
        );
        // Invalid or waiting: never observed, so validated again.
        assert_eq!(
            decide(&status(Phase::Pending, None, None), Some(1)),
            Decision::Start
        );
        match decide(&status(Phase::Running, Some(1), running()), Some(1)) {
            Decision::Continue { cancel, .. } => assert!(!cancel),
            other => panic!("{other:?}"),
        }
        match decide(&status(Phase::Running, Some(1), running()), Some(2)) {
            Decision::Continue { cancel, .. } => assert!(cancel, "a new spec cancels"),
            other => panic!("{other:?}"),
        }
        let garbage = Some(serde_json::json!({ "machine": "from the future" }));
        match decide(&status(Phase::Running, Some(1), garbage.clone()), Some(1)) {
            Decision::Unresumable(why) => assert!(why.contains("status.state"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A finished run's leftover state is never read.
        assert_eq!(
            decide(&status(Phase::Failed, Some(1), garbage), Some(1)),
            Decision::Idle
        );
    }
}
