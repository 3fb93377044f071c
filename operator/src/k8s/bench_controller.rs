//! The Benchmark controller: drives the experiment state machine
//! ([`crate::experiment::Machine`]) one reconcile at a time.
//!
//! The machine, the current load Job and the phase timers live in the Benchmark's status
//! (`status.state`); the measured data lives on the report volume ([`Store`]). A reconcile
//! therefore only needs the object the runtime hands over: it carries out actions whose
//! outcome is known at once (deploy, collect, analyse), and for actions that take time
//! (wait for ready, a load Job, settle) it checks progress and requeues. After every
//! transition the status is written, so an operator restart resumes at the last one; every
//! action is idempotent (server-side apply, files rewritten whole), so repeating the
//! interrupted one is harmless.
//!
//! A changed spec (new `metadata.generation`) cancels a running run — its report is
//! written, marked partial — and then starts a new run with the new spec.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use meshbench_analysis::{
    Enforcement, LimitsEnforcement, Phase as ReportPhase, Platform, RunData, RunDir, RunMeta,
};
use meshbench_crds::benchmark::{BenchmarkStatus, Phase, StepSummary};
use meshbench_crds::validate::{Issue, validate_benchmark};
use meshbench_crds::{Benchmark, ServiceMesh};
use meshbench_loadgen::LoadResult;
use serde::{Deserialize, Serialize};

use super::FIELD_MANAGER;
use super::collect::{Collector, Window};
use super::export::Exporter;
use super::keys;
use super::mesh_controller::{invalid_message, observe, set_condition};
use super::metrics::Metrics;
use super::promql::Vars;
use super::render::{self, LoadStep, RenderOptions};
use super::shared::{self, Failures};
use super::store::{self, SpecSnapshot, Store};
use crate::convert;
use crate::experiment::{self as exp, Cursor, ExperimentPlan, Machine, Outcome};

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
pub enum Error {
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
    Render(#[from] render::Error),
    /// The report volume failed.
    #[error("report volume: {0}")]
    Store(#[from] store::Error),
    /// The benchmark is not namespaced (the CRD is; this means a broken object).
    #[error("Benchmark {0} has no namespace")]
    NoNamespace(String),
}

impl Error {
    /// A bounded label for the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Render(_) => "render",
            Error::Store(_) => "store",
            Error::NoNamespace(_) => "no_namespace",
        }
    }
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
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
            scrape_interval: Duration::from_secs(15),
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
    /// The run's phases so far, for the report.
    #[serde(default)]
    pub phases: Vec<ReportPhase>,
    /// Warnings for the report (collection skipped, …).
    #[serde(default)]
    pub warnings: Vec<String>,
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
            phases: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// Ordinal of a step across meshes and repetitions: it names the step's Job and files.
pub fn ordinal(plan: &ExperimentPlan, c: Cursor) -> usize {
    (c.mesh * plan.repetitions as usize + c.repetition as usize) * plan.steps.len() + c.step
}

/// The inverse of [`ordinal`].
pub fn cursor_of(plan: &ExperimentPlan, ordinal: usize) -> Cursor {
    let steps = plan.steps.len().max(1);
    let per_mesh = steps * plan.repetitions.max(1) as usize;
    Cursor {
        mesh: ordinal / per_mesh,
        repetition: ((ordinal % per_mesh) / steps) as u32,
        step: ordinal % steps,
    }
}

/// A fresh bearer token for the results endpoint: 32 random bytes, hex.
fn new_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
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

/// The per-run facts a reconcile works with.
struct Run<'a> {
    ctx: &'a Context,
    ns: String,
    name: String,
    bench: &'a Benchmark,
    run_id: String,
    snapshot: SpecSnapshot,
    plan: ExperimentPlan,
}

/// Reconciles one benchmark.
#[tracing::instrument(skip_all, fields(benchmark = %bench.name_any(), namespace = ?bench.namespace()))]
pub async fn reconcile(bench: Arc<Benchmark>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let result = reconcile_inner(&bench, &ctx).await;
    match &result {
        Ok(_) => ctx.failures.clear(&*bench),
        Err(e) => ctx.metrics.failure(CONTROLLER, e.metric_label()),
    }
    result
}

async fn reconcile_inner(bench: &Benchmark, ctx: &Context) -> Result<Action> {
    let name = bench.name_any();
    let ns = bench
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    if bench.metadata.deletion_timestamp.is_some() {
        // Owned Jobs, ConfigMaps and the Secret go with it; the report stays on the volume.
        return Ok(Action::await_change());
    }
    let api: Api<Benchmark> = Api::namespaced(ctx.client.clone(), &ns);
    let old = bench.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let generation = bench.metadata.generation;
    let state: Option<RunState> = old
        .state
        .clone()
        .and_then(|v| serde_json::from_value(v).ok());
    let running = state.is_some() && !old.phase.is_terminal();
    let current = old.observed_generation == generation && old.observed_generation.is_some();

    if !running {
        if current {
            // Finished (or never startable) with this spec: nothing to do.
            return Ok(Action::await_change());
        }
        // A new spec, or a new Benchmark: validate against the meshes in the namespace.
        let meshes_api: Api<ServiceMesh> = Api::namespaced(ctx.client.clone(), &ns);
        let mut meshes = Vec::new();
        let mut missing = Vec::new();
        for (i, m) in bench.spec.meshes.iter().enumerate() {
            match meshes_api
                .get_opt(m)
                .await
                .map_err(kube_err(format!("reading ServiceMesh {m}")))?
            {
                Some(mesh) => meshes.push(mesh),
                // Said in cluster terms; `validate_benchmark` speaks of input files.
                None => missing.push(
                    Issue::new(
                        format!("spec.meshes[{i}]"),
                        format!("ServiceMesh {m:?} does not exist in namespace {ns}"),
                    )
                    .hint("apply it; the run starts once it exists"),
                ),
            }
        }
        let issues = if missing.is_empty() {
            let refs: Vec<&ServiceMesh> = meshes.iter().collect();
            validate_benchmark(bench, &refs)
        } else {
            missing
        };
        let now = k8s_now();
        if !issues.is_empty() {
            let message = invalid_message(&issues);
            let changed = set_condition(
                &mut status.conditions,
                "Valid",
                false,
                "InvalidSpec",
                message.clone(),
                generation,
                &now,
            );
            if status != old {
                patch_status(&api, &name, &status).await?;
            }
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
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        return start_run(ctx, bench, &api, status, meshes, generation).await;
    }

    let mut state = state.unwrap_or_else(|| RunState::new(now_ms()));
    let run_id = old.run_id.clone().unwrap_or_default();
    let snapshot = ctx.store.spec(&ns, &run_id)?;
    let plan = ExperimentPlan::new(&name, &snapshot.benchmark.spec);
    let run = Run {
        ctx,
        ns: ns.clone(),
        name: name.clone(),
        bench,
        run_id,
        snapshot,
        plan,
    };
    // A new spec mid-run: stop this run (keeping what it measured), then start anew.
    let cancel = !current;
    if cancel && let Some(job) = state.job.take() {
        // Its load would overlap the next run's.
        run.remove_job(&job).await?;
    }
    for _ in 0..MAX_TRANSITIONS {
        let action = state.machine.action(&run.plan);
        if action == exp::Action::Finished {
            break;
        }
        let outcome =
            if cancel && !matches!(action, exp::Action::Teardown { .. } | exp::Action::Analyse) {
                Outcome::Cancelled
            } else {
                match run.execute(&action, &mut state, &mut status).await? {
                    Progress::Done(o) => o,
                    Progress::Wait(delay) => {
                        write_state(&api, &name, &old, &mut status, &state, &run.plan).await?;
                        return Ok(Action::requeue(delay));
                    }
                }
            };
        if let Outcome::Failed(msg) = &outcome {
            publish(
                ctx,
                bench,
                EventType::Warning,
                "StepFailed",
                "Run",
                format!("{}: {msg}", exp::phase_label(&action, &run.plan)),
            )
            .await;
        }
        let label = exp::phase_label(&action, &run.plan);
        let started = DateTime::from_timestamp_millis(state.phase_started_ms).unwrap_or_default();
        state.phases.push(ReportPhase {
            name: label,
            started_at: started,
            finished_at: Some(Utc::now()),
        });
        state.machine.advance(&run.plan, outcome);
        state.phase_started_ms = now_ms();
        if state.machine.phase.is_terminal() {
            finish_status(&mut status, &state, generation);
            publish(
                ctx,
                bench,
                if state.machine.phase == Phase::Succeeded {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                "Finished",
                "Run",
                format!(
                    "run {} {}: {} step(s) completed{}",
                    run.run_id,
                    if state.machine.phase == Phase::Succeeded {
                        "succeeded"
                    } else {
                        "failed"
                    },
                    state.machine.completed_steps,
                    status
                        .report_location
                        .as_deref()
                        .map(|l| format!(", report at {l}"))
                        .unwrap_or_default()
                ),
            )
            .await;
        }
        write_state(&api, &name, &old, &mut status, &state, &run.plan).await?;
    }
    if state.machine.phase.is_terminal() {
        // A spec changed mid-run gets its own run now.
        return Ok(if cancel {
            Action::requeue(Duration::from_secs(1))
        } else {
            Action::await_change()
        });
    }
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Starts a run: the token Secret, the run directory with the spec snapshot, the status.
async fn start_run(
    ctx: &Context,
    bench: &Benchmark,
    api: &Api<Benchmark>,
    mut status: BenchmarkStatus,
    meshes: Vec<ServiceMesh>,
    generation: Option<i64>,
) -> Result<Action> {
    let name = bench.name_any();
    let ns = bench.namespace().unwrap_or_default();
    ensure_token(ctx, bench, &ns).await?;
    let started = Utc::now();
    let run_id = render::dns_name(&[
        &name,
        &meshbench_analysis::analyze::compact_timestamp(started).to_ascii_lowercase(),
    ]);
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
    let plan = ExperimentPlan::new(&name, &bench.spec);
    let state = RunState::new(started.timestamp_millis());
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
    status.run_id = Some(run_id.clone());
    status.started_at = Some(rfc3339(started));
    status.finished_at = None;
    status.steps.clear();
    status.throughput_rps = None;
    status.saturation = Vec::new();
    status.p99_ms = None;
    status.slo_verdict = None;
    status.report_location = None;
    status.next_step = 0;
    let old = bench.status.clone().unwrap_or_default();
    write_state(api, &name, &old, &mut status, &state, &plan).await?;
    publish(
        ctx,
        bench,
        EventType::Normal,
        "Started",
        "Run",
        format!(
            "run {run_id}: {} step(s) × {} mesh(es) × {} repetition(s)",
            plan.steps.len(),
            plan.meshes.len(),
            plan.repetitions
        ),
    )
    .await;
    Ok(Action::requeue(Duration::from_millis(100)))
}

/// Creates the benchmark's results token Secret unless it exists. Never rotated while
/// the Benchmark lives: Jobs of a resumed run must still be accepted.
async fn ensure_token(ctx: &Context, bench: &Benchmark, ns: &str) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = render::token_secret_name(&bench.name_any());
    if secrets
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("reading Secret {name}")))?
        .is_some()
    {
        return Ok(());
    }
    let token = new_token().map_err(|e| {
        Error::Store(store::Error::Io {
            path: "/dev/urandom".into(),
            message: e.to_string(),
        })
    })?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(BTreeMap::from([
                (keys::BENCHMARK.to_string(), bench.name_any()),
                (
                    keys::APP_MANAGED_BY.to_string(),
                    "meshbench-operator".to_string(),
                ),
            ])),
            owner_references: bench.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            render::TOKEN_KEY.to_string(),
            ByteString(token.into_bytes()),
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        // Created concurrently: keep that one.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(kube_err(format!("creating Secret {name}"))(e)),
    }
}

/// The status fields derived from the machine, then the status itself when it changed.
async fn write_state(
    api: &Api<Benchmark>,
    name: &str,
    old: &BenchmarkStatus,
    status: &mut BenchmarkStatus,
    state: &RunState,
    plan: &ExperimentPlan,
) -> Result<()> {
    status.phase = state.machine.phase;
    status.next_step = i32::try_from(state.machine.completed_steps).unwrap_or(i32::MAX);
    status.current_step = (!state.machine.phase.is_terminal()).then(|| {
        format!(
            "{} (step {}/{})",
            state.machine.describe_position(plan),
            state.machine.completed_steps + 1,
            plan.total_steps()
        )
    });
    status.state = serde_json::to_value(state).ok();
    if status != old {
        patch_status(api, name, status).await?;
    }
    Ok(())
}

fn finish_status(status: &mut BenchmarkStatus, state: &RunState, generation: Option<i64>) {
    status.finished_at = Some(rfc3339(Utc::now()));
    let ok = state.machine.phase == Phase::Succeeded;
    let reason = if state.machine.cancelled {
        "Cancelled"
    } else if ok {
        "Succeeded"
    } else {
        "Failed"
    };
    let message = if state.machine.failures.is_empty() {
        format!("{} step(s) completed", state.machine.completed_steps)
    } else {
        state.machine.failures.join("; ")
    };
    let now = k8s_now();
    set_condition(
        &mut status.conditions,
        "Complete",
        ok,
        reason,
        message.clone(),
        generation,
        &now,
    );
    set_condition(
        &mut status.conditions,
        "Failed",
        !ok,
        reason,
        message,
        generation,
        &now,
    );
}

async fn patch_status(api: &Api<Benchmark>, name: &str, status: &BenchmarkStatus) -> Result<()> {
    let patch = serde_json::json!({
        "apiVersion": "meshbench.io/v1alpha1",
        "kind": "Benchmark",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_err(format!("writing the status of Benchmark {name}")))?;
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

impl Run<'_> {
    fn mesh(&self, index: usize) -> Option<&ServiceMesh> {
        let name = self.plan.meshes.get(index)?;
        self.snapshot
            .meshes
            .iter()
            .find(|m| m.metadata.name.as_deref() == Some(name.as_str()))
    }

    fn worker_selector(&self, mesh: &str) -> String {
        format!("{}={mesh},{}=worker", keys::MESH, keys::APP_COMPONENT)
    }

    async fn execute(
        &self,
        action: &exp::Action,
        state: &mut RunState,
        status: &mut BenchmarkStatus,
    ) -> Result<Progress> {
        Ok(match action {
            exp::Action::Deploy { mesh } => self.deploy(*mesh, state).await?,
            exp::Action::WaitReady { mesh } => self.wait_ready(*mesh, state).await?,
            exp::Action::WarmUp { .. } => {
                // The warm-up runs in the next step's Job, before its measured stage, so
                // it reaches the mesh with no gap.
                state.warmup_pending = true;
                Progress::Done(Outcome::Ok)
            }
            exp::Action::RunStep { cursor } => self.run_step(*cursor, state).await?,
            exp::Action::Settle { duration } => {
                let done = elapsed_ms(state.phase_started_ms);
                if done >= *duration {
                    Progress::Done(Outcome::Ok)
                } else {
                    Progress::Wait(*duration - done)
                }
            }
            exp::Action::Collect { cursor } => self.collect(*cursor, state, status).await?,
            // The mesh is the user's object: a run never deletes it.
            exp::Action::Teardown { .. } => Progress::Done(Outcome::Ok),
            exp::Action::Analyse => self.analyse(state, status).await?,
            exp::Action::Finished => Progress::Done(Outcome::Ok),
        })
    }

    /// The mesh controller deploys meshes; a redeploy (after the first step) restarts
    /// the mesh's Deployments so every step after it starts from fresh pods.
    async fn deploy(&self, mesh: usize, state: &mut RunState) -> Result<Progress> {
        let Some(m) = self.mesh(mesh) else {
            return Ok(Progress::Done(Outcome::Failed(format!(
                "ServiceMesh {:?} is not part of the run's spec",
                self.plan.meshes.get(mesh)
            ))));
        };
        let mesh_name = m.name_any();
        state.deployed_at_ms = now_ms();
        state.collected_until_ms = None;
        if state.machine.completed_steps > 0 {
            let deps: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &self.ns);
            let list = deps
                .list(&ListParams::default().labels(&self.worker_selector(&mesh_name)))
                .await
                .map_err(kube_err(format!("listing Deployments of mesh {mesh_name}")))?;
            let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
                "meshbench.io/restarted-at": rfc3339(Utc::now()),
            }}}}});
            let pp = PatchParams {
                field_manager: Some(RESTART_MANAGER.into()),
                ..PatchParams::default()
            };
            for d in list.items {
                let dn = d.name_any();
                deps.patch(&dn, &pp, &Patch::Merge(&patch))
                    .await
                    .map_err(kube_err(format!("restarting Deployment {dn}")))?;
            }
        }
        Ok(Progress::Done(Outcome::Ok))
    }

    async fn wait_ready(&self, mesh: usize, state: &RunState) -> Result<Progress> {
        let mesh_name = self.plan.meshes.get(mesh).cloned().unwrap_or_default();
        let services = self.mesh(mesh).map(|m| m.spec.services.len()).unwrap_or(0);
        let deps: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let list = deps
            .list(&ListParams::default().labels(&self.worker_selector(&mesh_name)))
            .await
            .map_err(kube_err(format!("listing Deployments of mesh {mesh_name}")))?;
        let waiting: Vec<String> = list
            .items
            .iter()
            .map(|d| observe(&d.name_any(), d))
            .filter(|o| !(o.up_to_date && o.ready >= o.desired))
            .map(|o| format!("{} ({}/{} ready)", o.service, o.ready, o.desired))
            .collect();
        if list.items.len() >= services && waiting.is_empty() {
            return Ok(Progress::Done(Outcome::Ok));
        }
        if elapsed_ms(state.phase_started_ms) > self.ctx.settings.ready_timeout {
            let what = if list.items.len() < services {
                format!(
                    "{} of {services} Deployments exist (is the ServiceMesh valid?)",
                    list.items.len()
                )
            } else {
                format!("waiting for {}", waiting.join(", "))
            };
            return Ok(Progress::Done(Outcome::Failed(format!(
                "mesh {mesh_name} not ready within {:?}: {what}",
                self.ctx.settings.ready_timeout
            ))));
        }
        Ok(Progress::Wait(Duration::from_secs(5)))
    }

    async fn run_step(&self, cursor: Cursor, state: &mut RunState) -> Result<Progress> {
        let ord = ordinal(&self.plan, cursor);
        let jobs: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let cms: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let parallelism = self.snapshot.benchmark.spec.parallelism() as usize;
        let Some(job_name) = state.job.clone() else {
            let (Some(mesh), Some(step)) =
                (self.mesh(cursor.mesh), self.plan.steps.get(cursor.step))
            else {
                return Ok(Progress::Done(Outcome::Failed(
                    "step not in the plan".into(),
                )));
            };
            let start_at = (parallelism > 1).then(|| {
                u64::try_from(now_ms()).unwrap_or(0)
                    + self.ctx.settings.start_delay.as_millis() as u64
            });
            let objects = render::render_load_job(
                &LoadStep {
                    benchmark: &self.snapshot_owner(),
                    mesh,
                    run_id: &self.run_id,
                    step,
                    ordinal: ord,
                    repetition: cursor.repetition,
                    with_warmup: state.warmup_pending,
                    start_at_unix_ms: start_at,
                },
                &self.ctx.render,
            )?;
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            let name = objects.job.name_any();
            self.ctx
                .store
                .set_current_step(&self.ns, &self.run_id, ord)?;
            cms.patch(&name, &pp, &Patch::Apply(&objects.plan_config_map))
                .await
                .map_err(kube_err(format!("applying ConfigMap {name}")))?;
            jobs.patch(&name, &pp, &Patch::Apply(&objects.job))
                .await
                .map_err(kube_err(format!("applying Job {name}")))?;
            state.job = Some(name);
            state.warmup_pending = false;
            return Ok(Progress::Wait(Duration::from_secs(2)));
        };
        let results = self
            .ctx
            .store
            .instance_results(&self.ns, &self.run_id, ord)?;
        let finish = |outcome: Outcome| Progress::Done(outcome);
        if results.len() >= parallelism {
            let merged = match LoadResult::merge(&results) {
                Ok(m) => m,
                Err(e) => {
                    self.remove_job(&job_name).await?;
                    state.job = None;
                    return Ok(finish(Outcome::Failed(format!(
                        "the load generators' results do not merge: {e}"
                    ))));
                }
            };
            self.ctx
                .store
                .save_step_result(&self.ns, &self.run_id, ord, &merged)?;
            self.remove_job(&job_name).await?;
            state.job = None;
            return Ok(finish(if merged.partial {
                Outcome::Failed("the load generators stopped early (partial result)".into())
            } else {
                Outcome::Ok
            }));
        }
        let job = jobs
            .get_opt(&job_name)
            .await
            .map_err(kube_err(format!("reading Job {job_name}")))?;
        let Some(job) = job else {
            state.job = None;
            return Ok(finish(Outcome::Failed(format!(
                "load Job {job_name} disappeared before its results arrived"
            ))));
        };
        let js = job.status.clone().unwrap_or_default();
        let failed_condition = js
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Failed" && c.status == "True");
        if js.failed.unwrap_or(0) > 0 || failed_condition.is_some() {
            let why = failed_condition
                .map(|c| {
                    format!(
                        "{}: {}",
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| format!("{} instance(s) failed", js.failed.unwrap_or(0)));
            self.remove_job(&job_name).await?;
            state.job = None;
            return Ok(finish(Outcome::Failed(format!(
                "load Job {job_name} failed ({why}); {}/{parallelism} results arrived",
                results.len()
            ))));
        }
        let succeeded = js.succeeded.unwrap_or(0) as usize >= parallelism;
        if succeeded && elapsed_ms(state.phase_started_ms).as_secs() > 0 {
            // Results are posted before the instance exits; allow a minute for stragglers
            // counted from the completion.
            let completed_ms = js
                .completion_time
                .as_ref()
                .map(|t| t.0.as_millisecond())
                .unwrap_or(state.phase_started_ms);
            if now_ms() - completed_ms > 60_000 {
                self.remove_job(&job_name).await?;
                state.job = None;
                return Ok(finish(Outcome::Failed(format!(
                    "load Job {job_name} completed but only {}/{parallelism} results arrived",
                    results.len()
                ))));
            }
        }
        Ok(Progress::Wait(Duration::from_secs(5)))
    }

    /// The Benchmark the Job is owned by: the live object (its uid), with the spec the
    /// run started with.
    fn snapshot_owner(&self) -> Benchmark {
        let mut b = self.snapshot.benchmark.clone();
        b.metadata.uid = self.bench.metadata.uid.clone();
        b.metadata.name = Some(self.name.clone());
        b.metadata.namespace = Some(self.ns.clone());
        b
    }

    async fn remove_job(&self, name: &str) -> Result<()> {
        let jobs: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let cms: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        // Background propagation removes the Job's pods too.
        match jobs.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(kube_err(format!("deleting Job {name}"))(e)),
        }
        match cms.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(kube_err(format!("deleting ConfigMap {name}"))(e)),
        }
        Ok(())
    }

    async fn collect(
        &self,
        cursor: Cursor,
        state: &mut RunState,
        status: &mut BenchmarkStatus,
    ) -> Result<Progress> {
        let ord = ordinal(&self.plan, cursor);
        let scrape = self.ctx.settings.scrape_interval;
        match &self.ctx.settings.prometheus_url {
            Some(url) => {
                // Let Prometheus scrape the step's last seconds.
                let waited = elapsed_ms(state.phase_started_ms);
                if waited < scrape * 2 {
                    return Ok(Progress::Wait(scrape * 2 - waited));
                }
                let mesh_name = self
                    .plan
                    .meshes
                    .get(cursor.mesh)
                    .cloned()
                    .unwrap_or_default();
                let objects = self
                    .mesh(cursor.mesh)
                    .map(|m| {
                        m.spec
                            .services
                            .iter()
                            .map(|s| (render::object_name(&mesh_name, &s.name), s.name.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let vars = Vars {
                    namespace: self.ns.clone(),
                    mesh: mesh_name,
                    objects,
                    window: format!("{}s", (scrape.as_secs() * 4).max(4)),
                };
                let until = now_ms();
                let from = state.collected_until_ms.unwrap_or(state.deployed_at_ms);
                let window = Window {
                    start: from / 1000,
                    end: until / 1000,
                    step: (scrape.as_secs_f64() / 3.0).max(1.0),
                };
                let overrides = self
                    .snapshot
                    .benchmark
                    .spec
                    .collection
                    .as_ref()
                    .map(|c| c.queries.clone())
                    .unwrap_or_default();
                let collected = match Collector::new(url) {
                    Ok(c) => c.collect(&vars, &overrides, window, None).await,
                    Err(e) => Err(e),
                };
                match collected {
                    Ok(samples) => {
                        self.ctx
                            .store
                            .save_samples(&self.ns, &self.run_id, ord, &samples)?;
                        state.collected_until_ms = Some(until + 1000);
                    }
                    Err(e) => {
                        state
                            .warnings
                            .push(format!("step {ord}: Prometheus collection failed: {e}"));
                    }
                }
            }
            None => {
                let w = "no Prometheus configured (--prometheus-url): replicas, CPU and memory are not in the report".to_string();
                if !state.warnings.contains(&w) {
                    state.warnings.push(w);
                }
            }
        }
        // The report is rebuilt after every step, so a partial one is always there.
        let data = self.run_data(state, None)?;
        let dir = self.ctx.store.run_dir(&self.ns, &self.run_id)?;
        match off_runtime(move || RunDir::open(&dir).update(&data)).await {
            Ok(analysis) => {
                let verdicts = |row: &meshbench_analysis::tables::StepRow| {
                    let (mesh, repetition, step) = (row.mesh.clone(), row.repetition, row.step);
                    analysis.run.slo.steps.iter().filter(move |s| {
                        s.mesh == mesh && s.repetition == repetition && s.step == step
                    })
                };
                status.steps = analysis
                    .steps
                    .iter()
                    .map(|row| StepSummary {
                        mesh: row.mesh.clone(),
                        repetition: row.repetition as i32,
                        step: row.step as i32,
                        target: row
                            .target_rate_rps
                            .or(row.users.map(f64::from))
                            .unwrap_or_default(),
                        throughput_rps: row.throughput_rps.unwrap_or_default(),
                        sent_rps: row.sent_rate_rps.unwrap_or_default(),
                        saturation: row.saturation.clone(),
                        error_rate: row.error_ratio.unwrap_or_default(),
                        p50_ms: row.latency_p50_ms.unwrap_or_default(),
                        p99_ms: row.latency_p99_ms.unwrap_or_default(),
                        slo_passed: verdicts(row).all(|s| s.pass),
                        violations: verdicts(row)
                            .flat_map(|s| s.violations.iter().map(|v| v.to_string()))
                            .collect(),
                    })
                    .collect();
                status.saturation = analysis
                    .run
                    .saturation
                    .iter()
                    .map(|m| m.summary.clone())
                    .collect();
                if let Some(last) = status.steps.last() {
                    status.throughput_rps = Some(last.throughput_rps);
                    status.p99_ms = Some(last.p99_ms);
                }
                Ok(Progress::Done(Outcome::Ok))
            }
            Err(e) => Ok(Progress::Done(Outcome::Failed(format!(
                "writing the report: {e}"
            )))),
        }
    }

    async fn analyse(&self, state: &RunState, status: &mut BenchmarkStatus) -> Result<Progress> {
        let data = self.run_data(state, Some(Utc::now()))?;
        let dir = self.ctx.store.run_dir(&self.ns, &self.run_id)?;
        let written = {
            let dir = dir.clone();
            off_runtime(move || RunDir::open(&dir).finish(&data)).await
        };
        match written {
            Ok(_) => {
                let run = meshbench_analysis::rundir::read_run_json(&dir).ok();
                status.slo_verdict = run.and_then(|r| r.slo.pass).map(|p| {
                    if p {
                        "Pass".to_string()
                    } else {
                        "Fail".to_string()
                    }
                });
                status.report_location = Some(format!(
                    "{}/{}/{}",
                    self.ctx.settings.location_prefix.trim_end_matches('/'),
                    self.ns,
                    self.run_id
                ));
                if let Some(export) = &self.ctx.settings.export {
                    match export
                        .upload_run(&self.ctx.store, &self.ns, &self.run_id)
                        .await
                    {
                        Ok(location) => status.report_location = Some(location),
                        // The report is safe on the volume; the export is retried by
                        // nobody, so say so loudly.
                        Err(e) => {
                            publish(
                                self.ctx,
                                self.bench,
                                EventType::Warning,
                                "ExportFailed",
                                "Export",
                                format!("the report stays on the volume only: {e}"),
                            )
                            .await;
                        }
                    }
                }
                Ok(Progress::Done(Outcome::Ok))
            }
            Err(e) => Ok(Progress::Done(Outcome::Failed(format!(
                "writing the report: {e}"
            )))),
        }
    }

    /// The analysis input, rebuilt from the report volume and the state.
    fn run_data(&self, state: &RunState, finished: Option<DateTime<Utc>>) -> Result<RunData> {
        let spec = &self.snapshot.benchmark.spec;
        let started = DateTime::from_timestamp_millis(
            state
                .phases
                .first()
                .map(|p| p.started_at.timestamp_millis())
                .unwrap_or(state.deployed_at_ms),
        )
        .unwrap_or_default();
        let mut warnings = state.warnings.clone();
        warnings.extend(state.machine.failures.iter().cloned());
        let mut data = RunData::new(RunMeta {
            benchmark: self.name.clone(),
            spec: serde_json::json!({
                "benchmark": self.snapshot.benchmark,
                "meshes": self.snapshot.meshes,
            }),
            meshbench_version: env!("CARGO_PKG_VERSION").to_string(),
            platform: Platform::Kubernetes,
            limits: LimitsEnforcement {
                mode: Enforcement::Enforced,
                reason: "the kubelet enforces the pods' resources (CFS quota, memory limit)".into(),
            },
            warnings,
            phases: state.phases.clone(),
            started_at: started,
            finished_at: finished,
            steps_planned: Some(self.plan.total_steps() as u32),
            partial: finished.is_some() && state.machine.stopped_early,
        });
        for m in &self.snapshot.meshes {
            data.models
                .insert(m.name_any(), convert::capacity_input(m, spec));
        }
        data.slos = convert::slos(spec);
        let total = self.plan.total_steps();
        for ord in 0..total {
            let Some(result) = self.ctx.store.step_result(&self.ns, &self.run_id, ord)? else {
                continue;
            };
            let c = cursor_of(&self.plan, ord);
            let (Some(step), Some(stage)) =
                (self.plan.steps.get(c.step), result.measured_stages().next())
            else {
                continue;
            };
            let mesh = self.plan.meshes.get(c.mesh).cloned().unwrap_or_default();
            convert::record_step(&mut data, &mesh, c, step, stage);
        }
        data.samples = self.ctx.store.samples(&self.ns, &self.run_id, total)?;
        Ok(data)
    }
}

/// Runs report building on the blocking pool: polars and the plots take CPU seconds that
/// would otherwise stall the runtime's workers (and the health endpoint with them).
async fn off_runtime<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, String>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the report task failed: {e}")),
    }
}

/// Backoff after a failed reconcile: 5 s doubling per consecutive failure, at most 5 min.
pub fn error_policy(bench: Arc<Benchmark>, error: &Error, ctx: Arc<Context>) -> Action {
    let (n, delay) = ctx.failures.record(&*bench);
    tracing::warn!(benchmark = %bench.name_any(), error = %error, failures = n, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
