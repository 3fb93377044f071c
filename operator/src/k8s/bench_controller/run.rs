//! The actions of a run: what each step of the experiment machine does on the cluster
//! and on the report volume.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use meshbench_analysis::{
    Enforcement, LimitsEnforcement, Phase as ReportPhase, Platform, RunData, RunDir, RunDirError,
    RunMeta,
};
use meshbench_crds::benchmark::{BenchmarkStatus, Phase};
use meshbench_crds::resolve::resolve_mesh;
use meshbench_crds::{Benchmark, ServiceMesh, ValidBenchmark};
use meshbench_loadgen::LoadResult;

use super::status::{self, StatusWriter};
use super::{
    Context, MAX_TRANSITIONS, Progress, RESTART_MANAGER, Result, RunState, cursor_of, elapsed_ms,
    kube_err, now_ms, ordinal, publish, rfc3339,
};
use crate::convert;
use crate::experiment::{self as exp, Cursor, ExperimentSchedule, Outcome};
use crate::k8s::collect::{Collector, Window};
use crate::k8s::mesh_controller::observe;
use crate::k8s::promql::Vars;
use crate::k8s::render::{self, LoadStep};
use crate::k8s::shared::set_condition;
use crate::k8s::store::{self, HistoryEntry, SpecSnapshot};
use crate::k8s::{FIELD_MANAGER, keys};

/// Why a run cannot be resumed, or its report not written.
#[derive(Debug, thiserror::Error)]
pub(super) enum RunError {
    /// The report volume has no directory for the run.
    #[error(
        "the report volume has no run {run_id:?} (was the volume replaced or emptied?); the run cannot be resumed"
    )]
    Lost {
        /// The run.
        run_id: String,
    },
    /// The spec the run started with cannot be read back.
    #[error("the run's spec on the report volume is unreadable: {0}")]
    Spec(store::StoreError),
    /// The spec the run started with no longer passes validation (the rules changed
    /// between operator versions while the run went on).
    #[error("the run's spec on the report volume does not pass validation: {0}")]
    Invalid(meshbench_crds::Invalid),
    /// The report could not be written.
    #[error(transparent)]
    Report(#[from] RunDirError),
    /// The blocking task that writes the report panicked or was cancelled.
    #[error("the report task failed: {0}")]
    ReportTask(tokio::task::JoinError),
}

/// The per-run facts a reconcile works with.
pub(super) struct Run<'a> {
    ctx: &'a Context,
    ns: String,
    name: String,
    bench: &'a Benchmark,
    run_id: String,
    snapshot: SpecSnapshot,
    /// The Benchmark the load Jobs are owned by: the live object (its uid) with the spec
    /// the run started with, validated again against the run's meshes.
    owner: ValidBenchmark,
    schedule: ExperimentSchedule,
}

impl<'a> Run<'a> {
    /// The run `run_id` of `bench` from the report volume; `Err` says why it cannot be
    /// resumed (the volume lost it).
    pub(super) fn open(
        ctx: &'a Context,
        bench: &'a Benchmark,
        ns: &str,
        run_id: &str,
    ) -> Result<Self, RunError> {
        if !ctx.store.has_run(ns, run_id) {
            return Err(RunError::Lost {
                run_id: run_id.to_string(),
            });
        }
        let snapshot = ctx.store.spec(ns, run_id).map_err(RunError::Spec)?;
        let name = bench.name_any();
        let owner = snapshot_owner(&snapshot, bench, ns, &name)?;
        let schedule = ExperimentSchedule::new(&owner);
        Ok(Self {
            ctx,
            ns: ns.to_string(),
            name,
            bench,
            run_id: run_id.to_string(),
            snapshot,
            owner,
            schedule,
        })
    }

    /// Carries out transitions of the machine until one must wait (or at most
    /// [`MAX_TRANSITIONS`]), writing the status after each. `cancel` stops the run,
    /// keeping what it measured (a new spec, or the Benchmark being deleted).
    pub(super) async fn drive(
        &self,
        mut state: RunState,
        cancel: bool,
        writer: &mut StatusWriter,
    ) -> Result<Action> {
        let mut status = writer.current().clone();
        if cancel && let Some(job) = state.job.take() {
            // Its load would overlap the next run's.
            self.remove_job(&job).await?;
        }
        for _ in 0..MAX_TRANSITIONS {
            let action = state.machine.action(&self.schedule);
            if action == exp::Action::Finished {
                break;
            }
            let keep = matches!(action, exp::Action::Teardown { .. } | exp::Action::Analyse);
            let outcome = if cancel && !keep {
                Outcome::Cancelled
            } else {
                match self.execute(&action, &mut state, &mut status).await? {
                    Progress::Done(o) => o,
                    Progress::Wait(delay) => {
                        writer
                            .write_state(&mut status, &state, &self.schedule)
                            .await?;
                        return Ok(Action::requeue(delay));
                    }
                }
            };
            self.transition(&action, outcome, &mut state, &mut status)
                .await?;
            writer
                .write_state(&mut status, &state, &self.schedule)
                .await?;
        }
        Ok(if state.machine.phase.is_terminal() && !cancel {
            Action::await_change()
        } else {
            // More to do, or a spec changed mid-run gets its own run now.
            Action::requeue(Duration::from_secs(1))
        })
    }

    /// Records the outcome of `action` (history, Events) and advances the machine.
    async fn transition(
        &self,
        action: &exp::Action,
        outcome: Outcome,
        state: &mut RunState,
        status: &mut BenchmarkStatus,
    ) -> Result<()> {
        let label = exp::phase_label(action, &self.schedule);
        if let Outcome::Failed(msg) = &outcome {
            let note = format!("{label}: {msg}");
            publish(
                self.ctx,
                self.bench,
                EventType::Warning,
                "StepFailed",
                "Run",
                note,
            )
            .await;
        }
        let phase = ReportPhase {
            name: label,
            started_at: DateTime::from_timestamp_millis(state.phase_started_ms).unwrap_or_default(),
            finished_at: Some(Utc::now()),
        };
        self.ctx
            .store
            .append_history(&self.ns, &self.run_id, &HistoryEntry::Phase(phase))?;
        state.machine.advance(&self.schedule, outcome);
        state.phase_started_ms = now_ms();
        if state.machine.phase.is_terminal() {
            status::finish(status, state, self.bench.metadata.generation);
            self.announce_end(state, status).await;
        }
        Ok(())
    }

    async fn announce_end(&self, state: &RunState, status: &BenchmarkStatus) {
        let ok = state.machine.phase == Phase::Succeeded;
        let note = format!(
            "run {} {}: {} step(s) completed{}",
            self.run_id,
            if ok { "succeeded" } else { "failed" },
            state.machine.completed_steps,
            status
                .report_location
                .as_deref()
                .map(|l| format!(", report at {l}"))
                .unwrap_or_default()
        );
        let type_ = if ok {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(self.ctx, self.bench, type_, "Finished", "Run", note).await;
    }

    fn mesh(&self, index: usize) -> Option<&ServiceMesh> {
        let name = self.schedule.meshes.get(index)?;
        self.snapshot
            .meshes
            .iter()
            .find(|m| m.metadata.name.as_deref() == Some(name.as_str()))
    }

    fn worker_selector(&self, mesh: &str) -> String {
        format!("{}={mesh},{}=worker", keys::MESH, keys::APP_COMPONENT)
    }

    pub(super) async fn execute(
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
                self.schedule.meshes.get(mesh)
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
        let mesh_name = self.schedule.meshes.get(mesh).cloned().unwrap_or_default();
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

    /// A load step: creates its Job, then waits for every instance's result (merged and
    /// saved) or for the Job to fail.
    async fn run_step(&self, cursor: Cursor, state: &mut RunState) -> Result<Progress> {
        let ord = ordinal(&self.schedule, cursor);
        let parallelism = self.snapshot.benchmark.spec.parallelism() as usize;
        let Some(job_name) = state.job.clone() else {
            return self.start_load_job(cursor, ord, parallelism, state).await;
        };
        let results = self
            .ctx
            .store
            .instance_results(&self.ns, &self.run_id, ord)?;
        if results.len() >= parallelism {
            return self.merge_results(&job_name, ord, &results, state).await;
        }
        self.watch_load_job(&job_name, results.len(), parallelism, state)
            .await
    }

    /// Renders and applies the step's plan ConfigMap and load Job (instances of a
    /// multi-instance Job start together, `start_delay` from now).
    async fn start_load_job(
        &self,
        cursor: Cursor,
        ord: usize,
        parallelism: usize,
        state: &mut RunState,
    ) -> Result<Progress> {
        let (Some(mesh), Some(step)) =
            (self.mesh(cursor.mesh), self.schedule.steps.get(cursor.step))
        else {
            return Ok(Progress::Done(Outcome::Failed(
                "step not in the plan".into(),
            )));
        };
        let start_at = (parallelism > 1).then(|| {
            u64::try_from(now_ms()).unwrap_or(0) + self.ctx.settings.start_delay.as_millis() as u64
        });
        let objects = render::render_load_job(
            &LoadStep {
                benchmark: &self.owner,
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
        let jobs: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let cms: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.ns);
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
        Ok(Progress::Wait(Duration::from_secs(2)))
    }

    /// Every instance's result arrived: merges and saves them, and removes the Job.
    async fn merge_results(
        &self,
        job_name: &str,
        ord: usize,
        results: &[LoadResult],
        state: &mut RunState,
    ) -> Result<Progress> {
        let merged = match LoadResult::merge(results) {
            Ok(m) => m,
            Err(e) => {
                self.remove_job(job_name).await?;
                state.job = None;
                return Ok(Progress::Done(Outcome::Failed(format!(
                    "the load generators' results do not merge: {e}"
                ))));
            }
        };
        self.ctx
            .store
            .save_step_result(&self.ns, &self.run_id, ord, &merged)?;
        self.remove_job(job_name).await?;
        state.job = None;
        Ok(Progress::Done(if merged.partial {
            Outcome::Failed("the load generators stopped early (partial result)".into())
        } else {
            Outcome::Ok
        }))
    }

    /// Results are still missing (`arrived` of `parallelism`): fails the step when the Job
    /// is gone, failed, or completed a minute ago without them; else waits.
    async fn watch_load_job(
        &self,
        job_name: &str,
        arrived: usize,
        parallelism: usize,
        state: &mut RunState,
    ) -> Result<Progress> {
        let jobs: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let job = jobs
            .get_opt(job_name)
            .await
            .map_err(kube_err(format!("reading Job {job_name}")))?;
        let Some(job) = job else {
            state.job = None;
            return Ok(Progress::Done(Outcome::Failed(format!(
                "load Job {job_name} disappeared before its results arrived"
            ))));
        };
        let js = job.status.clone().unwrap_or_default();
        let failure = if let Some(why) = job_failure(&js) {
            format!("load Job {job_name} failed ({why}); {arrived}/{parallelism} results arrived")
        } else if results_overdue(&js, parallelism, state) {
            format!(
                "load Job {job_name} completed but only {arrived}/{parallelism} results arrived"
            )
        } else {
            return Ok(Progress::Wait(Duration::from_secs(5)));
        };
        self.remove_job(job_name).await?;
        state.job = None;
        Ok(Progress::Done(Outcome::Failed(failure)))
    }

    pub(super) async fn remove_job(&self, name: &str) -> Result<()> {
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

    /// After a step: collects its series from Prometheus (once the last scrapes are in)
    /// and rebuilds the report.
    async fn collect(
        &self,
        cursor: Cursor,
        state: &mut RunState,
        status: &mut BenchmarkStatus,
    ) -> Result<Progress> {
        let ord = ordinal(&self.schedule, cursor);
        let scrape = self.ctx.settings.scrape_interval;
        match &self.ctx.settings.prometheus_url {
            Some(url) => {
                // Let Prometheus scrape the step's last seconds.
                let waited = elapsed_ms(state.phase_started_ms);
                if waited < scrape * 2 {
                    return Ok(Progress::Wait(scrape * 2 - waited));
                }
                self.collect_prometheus(url, cursor, ord, state, status)
                    .await?;
            }
            None => self.warn(
                "no Prometheus configured (--prometheus-url): replicas, CPU and memory are not in the report",
            )?,
        }
        // The report is rebuilt after every step, so a partial one is always there.
        self.update_report(state, status).await
    }

    /// Queries Prometheus for the mesh's series since the last collection and saves them;
    /// a failure is a warning and sets `Degraded`.
    async fn collect_prometheus(
        &self,
        url: &str,
        cursor: Cursor,
        ord: usize,
        state: &mut RunState,
        status: &mut BenchmarkStatus,
    ) -> Result<()> {
        let scrape = self.ctx.settings.scrape_interval;
        let vars = self.query_vars(cursor.mesh, scrape);
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
                self.degraded(status, None).await;
            }
            Err(e) => {
                let message = format!("step {ord}: Prometheus collection failed: {e}");
                self.warn(&message)?;
                self.degraded(status, Some(message)).await;
            }
        }
        Ok(())
    }

    /// The PromQL template variables of mesh `mesh` (its namespace, name, Deployments).
    fn query_vars(&self, mesh: usize, scrape: Duration) -> Vars {
        let mesh_name = self.schedule.meshes.get(mesh).cloned().unwrap_or_default();
        let objects = self
            .mesh(mesh)
            .map(|m| {
                m.spec
                    .services
                    .iter()
                    .map(|s| (render::object_name(&mesh_name, &s.name), s.name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Vars {
            namespace: self.ns.clone(),
            mesh: mesh_name,
            objects,
            window: crate::k8s::promql::rate_window(scrape),
        }
    }

    /// Rewrites the run's report from the volume, off the runtime; the step fails when
    /// the report cannot be written.
    async fn update_report(
        &self,
        state: &RunState,
        status: &mut BenchmarkStatus,
    ) -> Result<Progress> {
        let data = self.run_data(state, None)?;
        let dir = self.ctx.store.run_dir(&self.ns, &self.run_id)?;
        match off_runtime(move || RunDir::open(&dir).update(&data)).await {
            Ok(analysis) => {
                status::summarise(status, &analysis);
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

    /// Records a warning for the report (once).
    fn warn(&self, message: &str) -> Result<()> {
        let entry = HistoryEntry::Warning(message.to_string());
        Ok(self
            .ctx
            .store
            .append_history(&self.ns, &self.run_id, &entry)?)
    }

    /// Sets `Degraded` when collection failed (with a Warning Event the first time), clears
    /// it when collection works again.
    async fn degraded(&self, status: &mut BenchmarkStatus, failure: Option<String>) {
        let was = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "True");
        if failure.is_none() && !was {
            return;
        }
        let (reason, message) = match &failure {
            Some(m) => ("CollectionFailed", m.clone()),
            None => ("Collecting", "Prometheus collection works".to_string()),
        };
        let generation = self.bench.metadata.generation;
        let changed = set_condition(
            &mut status.conditions,
            "Degraded",
            failure.is_some(),
            reason,
            message.clone(),
            generation,
            &super::k8s_now(),
        );
        if changed && failure.is_some() {
            publish(
                self.ctx,
                self.bench,
                EventType::Warning,
                reason,
                "Collect",
                message,
            )
            .await;
        }
    }

    /// The analysis input, rebuilt from the report volume and the state.
    fn run_data(&self, state: &RunState, finished: Option<DateTime<Utc>>) -> Result<RunData> {
        let spec = &self.snapshot.benchmark.spec;
        let (phases, mut warnings) = self.ctx.store.history(&self.ns, &self.run_id)?;
        warnings.extend(state.machine.failure_lines());
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
            started_at: phases.first().map(|p| p.started_at).unwrap_or_else(|| {
                DateTime::from_timestamp_millis(state.deployed_at_ms).unwrap_or_default()
            }),
            phases,
            finished_at: finished,
            steps_planned: Some(self.schedule.total_steps() as u32),
            partial: finished.is_some() && state.machine.stopped_early,
            deviations: Vec::new(),
        });
        for m in &self.snapshot.meshes {
            let services = resolve_mesh(&m.spec);
            data.models
                .insert(m.name_any(), convert::capacity_input_of(&services, spec));
        }
        data.slos = convert::slos(spec);
        let total = self.schedule.total_steps();
        for ord in 0..total {
            let Some(result) = self.ctx.store.step_result(&self.ns, &self.run_id, ord)? else {
                continue;
            };
            let c = cursor_of(&self.schedule, ord);
            let (Some(step), Some(stage)) = (
                self.schedule.steps.get(c.step),
                result.measured_stages().next(),
            ) else {
                continue;
            };
            let mesh = self
                .schedule
                .meshes
                .get(c.mesh)
                .cloned()
                .unwrap_or_default();
            convert::record_step(&mut data, &mesh, c, step, stage);
        }
        data.samples = self.ctx.store.samples(&self.ns, &self.run_id, total)?;
        Ok(data)
    }
}

/// Whether every instance of the Job completed more than a minute ago and some results
/// are still missing: results are posted before an instance exits, so a minute from
/// the completion is ample for stragglers.
fn results_overdue(js: &JobStatus, parallelism: usize, state: &RunState) -> bool {
    let succeeded = js.succeeded.unwrap_or(0) as usize >= parallelism;
    if !(succeeded && elapsed_ms(state.phase_started_ms).as_secs() > 0) {
        return false;
    }
    let completed_ms = js
        .completion_time
        .as_ref()
        .map(|t| t.0.as_millisecond())
        .unwrap_or(state.phase_started_ms);
    now_ms() - completed_ms > 60_000
}

/// Why a load Job failed, if it did: its `Failed` condition, else the count of failed
/// instances.
fn job_failure(js: &JobStatus) -> Option<String> {
    let failed_condition = js
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True");
    if js.failed.unwrap_or(0) == 0 && failed_condition.is_none() {
        return None;
    }
    Some(
        failed_condition
            .map(|c| {
                format!(
                    "{}: {}",
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default()
                )
            })
            .unwrap_or_else(|| format!("{} instance(s) failed", js.failed.unwrap_or(0))),
    )
}

/// The Benchmark the load Jobs are owned by: the live object (its uid), with the spec the
/// run started with. That spec passed validation against the run's meshes when the run
/// started; `Err` says why the run cannot be resumed if it no longer does.
fn snapshot_owner(
    snapshot: &SpecSnapshot,
    bench: &Benchmark,
    ns: &str,
    name: &str,
) -> Result<ValidBenchmark, RunError> {
    let mut b = snapshot.benchmark.clone();
    b.metadata.uid = bench.metadata.uid.clone();
    b.metadata.name = Some(name.to_string());
    b.metadata.namespace = Some(ns.to_string());
    let meshes: Vec<&ServiceMesh> = snapshot.meshes.iter().collect();
    ValidBenchmark::new(b, &meshes).map_err(RunError::Invalid)
}

/// Runs report building on the blocking pool: polars and the plots take CPU seconds that
/// would otherwise stall the runtime's workers (and the health endpoint with them).
async fn off_runtime<T>(
    f: impl FnOnce() -> Result<T, RunDirError> + Send + 'static,
) -> Result<T, RunError>
where
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => Ok(r?),
        Err(e) => Err(RunError::ReportTask(e)),
    }
}
