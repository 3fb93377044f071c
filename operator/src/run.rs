//! `meshbench run`: a whole benchmark on this machine, driven by the shared experiment
//! state machine on the local platform, written step by step into a report directory.

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use meshbench_analysis::{
    Enforcement as ReportEnforcement, LimitsEnforcement, Phase as ReportPhase, Platform, RunData,
    RunDir, RunMeta,
};
use meshbench_common::duration::parse as parse_duration;
use meshbench_crds::units::UnitError;
use meshbench_crds::{Benchmark, Bundle, ValidBenchmark, ValidMesh};
use meshbench_loadgen::{CancellationToken, RunOptions, run_plan};

use crate::convert;
use crate::exit;
use crate::experiment::{Action, Cursor, ExperimentSchedule, Machine, Outcome};
use crate::local::platform::{LocalOptions, LocalPlatform};
use crate::local::prometheus::LocalPrometheus;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use meshbench_analysis::capacity::NodeModel;
use meshbench_runtime::cgroup::Enforcement;
use meshbench_runtime::node::{self, Resources};

/// Errors of a local run's Prometheus: starting or reaching it, and collecting from it.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `--prometheus` could not be started or reached.
    #[error(transparent)]
    Prometheus(#[from] crate::local::prometheus::PrometheusError),
    /// The runner's own metrics could not be published to Prometheus.
    #[error("cannot serve the runner's metrics for Prometheus: {0}")]
    Targets(std::io::Error),
    /// Querying Prometheus failed.
    #[error(transparent)]
    Collect(#[from] crate::k8s::collect::CollectError),
}

/// Arguments of `meshbench run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// YAML files holding the Benchmark and the ServiceMesh(es) it references.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Directory under which the run directory `<benchmark>-<UTC timestamp>/` is made.
    #[arg(long, short, default_value = "results", value_name = "DIR")]
    pub out: PathBuf,
    /// Which Benchmark to run when the files hold several.
    #[arg(long, value_name = "NAME")]
    pub benchmark: Option<String>,
    /// HPA sync period (the upstream controller's default is 15s).
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub hpa_sync: Duration,
    /// How often the emulated metrics-server scrapes each pod's CPU (its
    /// `--metric-resolution`; upstream default 15s). The HPA sees the CPU rate between the
    /// two latest scrapes, so its view is up to this old.
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub metric_resolution: Duration,
    /// The HPA's CPU initialization period (`--horizontal-pod-autoscaler-cpu-initialization-period`,
    /// upstream default 5m): for this long after a pod starts, the HPA sets it aside while it
    /// is unready or its readiness changed within the metric's window (so a pod whose
    /// readiness gate flaps under load does not count until then).
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub hpa_cpu_initialization_period: Duration,
    /// Resolution of the collected time series.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub sample_interval: Duration,
    /// How long to wait for replicas to become ready after a deployment.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub ready_timeout: Duration,
    /// No progress bars (they are also hidden when stderr is not a terminal).
    #[arg(long, short)]
    pub quiet: bool,
    /// Collect through a real Prometheus: `auto` starts the `prometheus` on PATH with a
    /// generated scrape config (file-based discovery of every replica and of the
    /// runner's exporter), a URL uses a running one that reads
    /// `<run dir>/prometheus/targets.json`. Replica counts, CPU, memory and the workers'
    /// series then come from PromQL, the same queries as in a cluster.
    #[arg(long, value_name = "auto|URL")]
    pub prometheus: Option<String>,
    /// Run replicas without cgroup CPU and memory limits, as on a host without writable
    /// cgroups; run.json then records that limits were not enforced.
    #[arg(long)]
    pub no_limits: bool,
    /// How each Service picks an endpoint for a new connection: `random` as kube-proxy's
    /// iptables/nftables rules (the default), or `round-robin` as IPVS `rr`.
    #[arg(long, value_enum, default_value = "random", value_name = "MODE")]
    pub service_balance: meshbench_runtime::proxy::Balance,
    /// `--node-cpu` / `--node-memory`: the node the replicas are scheduled on.
    #[command(flatten)]
    pub node: NodeArgs,
    /// `--junit` / `--summary-md`: the run's verdicts for CI systems.
    #[command(flatten)]
    pub ci: crate::cli::CiArgs,
    /// `--log-format`; logs go to stderr.
    #[command(flatten)]
    pub log: meshbench_common::logging::LogArgs,
}

/// The node the replicas are scheduled on (`run`, and `plan` to predict a local run).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// CPU the node allocates to replicas, as a Kubernetes quantity (`1500m`, `2`).
    /// Replicas whose CPU and memory requests do not fit stay Pending, as on a node.
    /// `run`'s default: this machine's CPUs less the reserve of a managed node (README).
    #[arg(long, value_parser = parse_cpu, value_name = "CPU")]
    pub node_cpu: Option<u64>,
    /// Memory the node allocates to replicas (`8Gi`). `run`'s default: this machine's
    /// memory less the reserve of a managed node and the kubelet's 100Mi eviction threshold.
    #[arg(long, value_parser = parse_memory, value_name = "MEMORY")]
    pub node_memory: Option<u64>,
}

impl NodeArgs {
    /// The node as given, this machine's allocatable for what is not.
    pub fn resources(&self) -> Resources {
        let machine = node::allocatable(node::machine_capacity());
        Resources {
            cpu_millis: self.node_cpu.unwrap_or(machine.cpu_millis),
            memory_bytes: self.node_memory.unwrap_or(machine.memory_bytes),
        }
    }

    /// The node as the capacity model takes it.
    pub fn model(&self) -> NodeModel {
        let r = self.resources();
        NodeModel {
            cpu_cores: r.cpu_millis as f64 / 1000.0,
            memory_bytes: r.memory_bytes as f64,
        }
    }
}

fn parse_cpu(s: &str) -> Result<u64, UnitError> {
    meshbench_crds::units::cpu_millis(&Quantity(s.to_string()))
}

fn parse_memory(s: &str) -> Result<u64, UnitError> {
    meshbench_crds::units::memory_bytes(&Quantity(s.to_string()))
}

/// Runs `meshbench run` and returns the process exit code.
pub async fn run(args: RunArgs) -> u8 {
    let bundle = Bundle::load_files(&args.files);
    if !bundle.is_valid() {
        for d in &bundle.diagnostics {
            eprintln!("{d}");
        }
        eprintln!("nothing was started: fix the problems above (see `meshbench validate`)");
        return exit::INVALID;
    }
    let bench = match select_benchmark(args.benchmark.as_deref(), &bundle) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let (bench, meshes) = match bundle.validated(bench) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    let mut session = match Session::start(&args, bench, meshes).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let machine = session.drive().await;
    session.finish(machine).await
}

/// The Benchmark to run: the one named by `--benchmark`, or the only one in the files.
pub(crate) fn select_benchmark<'a>(
    name: Option<&str>,
    bundle: &'a Bundle,
) -> Result<&'a Benchmark, u8> {
    let benchmarks: Vec<&Benchmark> = bundle.benchmarks.iter().map(|d| &d.benchmark).collect();
    match (name, benchmarks.as_slice()) {
        (Some(name), all) => all
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some(name))
            .copied()
            .ok_or_else(|| {
                eprintln!("error: no Benchmark named {name:?} in the given files");
                exit::INVALID
            }),
        (None, [one]) => Ok(*one),
        (None, []) => {
            eprintln!(
                "error: the given files hold no Benchmark; expected one (see experiments/quickstart.yaml)"
            );
            Err(exit::INVALID)
        }
        (None, many) => {
            let names: Vec<&str> = many
                .iter()
                .filter_map(|b| b.metadata.name.as_deref())
                .collect();
            eprintln!(
                "error: the files hold several Benchmarks ({}); choose one with --benchmark NAME",
                names.join(", ")
            );
            Err(exit::USAGE)
        }
    }
}

/// One run in progress: what its phases read and write.
struct Session<'a> {
    args: &'a RunArgs,
    bench: ValidBenchmark,
    /// The meshes the benchmark names, in its order.
    meshes: Vec<ValidMesh>,
    schedule: ExperimentSchedule,
    run_dir: RunDir,
    platform: LocalPlatform,
    prom: Option<LocalPrometheus>,
    data: RunData,
    cancel: CancellationToken,
    /// When the current mesh was deployed (UTC s): where its first collection starts.
    deployed_at: i64,
    /// Where the next Prometheus collection of the current mesh starts.
    collected_until: Option<i64>,
    report_ok: bool,
}

impl<'a> Session<'a> {
    /// Makes the run directory, the platform and the run's record; starts Prometheus if
    /// asked. Stops with an exit code when any of them cannot be had.
    async fn start(
        args: &'a RunArgs,
        bench: ValidBenchmark,
        meshes: Vec<ValidMesh>,
    ) -> Result<Session<'a>, u8> {
        let name = bench.name().to_string();
        let schedule = ExperimentSchedule::new(&bench);
        let started = Utc::now();
        let run_dir = RunDir::create(&args.out, &name, started).map_err(|e| {
            eprintln!(
                "error: cannot create the run directory under {}: {e}",
                args.out.display()
            );
            exit::RUN_FAILED
        })?;
        let platform = start_platform(args, &run_dir, &name)?;
        let (mode, reason) = enforcement(&platform);
        if mode == ReportEnforcement::NotEnforced && !args.no_limits && wants_limits(&meshes) {
            eprintln!(
                "error: the meshes set CPU or memory limits, but this host cannot enforce them \
                 ({reason}); their capacity and HPA figures would be wrong. Run as root where \
                 cgroups are writable, or pass --no-limits to run without them (run.json then \
                 says so)."
            );
            platform.shutdown().await;
            // Nothing ran: leave no empty run directory behind.
            let _ = std::fs::remove_dir_all(run_dir.path());
            return Err(exit::RUN_FAILED);
        }
        let limits = LimitsEnforcement { mode, reason };
        let data = run_data(args, &bench, &meshes, &schedule, limits, started);
        let prom = match start_prometheus(args, &run_dir, &platform).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                platform.shutdown().await;
                return Err(exit::RUN_FAILED);
            }
        };
        let cancel = CancellationToken::new();
        cancel_on_signal(cancel.clone());
        announce("running", &schedule, run_dir.path());
        Ok(Session {
            args,
            bench,
            meshes,
            schedule,
            run_dir,
            platform,
            prom,
            data,
            cancel,
            deployed_at: Utc::now().timestamp(),
            collected_until: None,
            report_ok: true,
        })
    }

    /// Runs the experiment state machine to its end, recording every phase.
    async fn drive(&mut self) -> Machine {
        let mut machine = Machine::new();
        loop {
            let action = machine.action(&self.schedule);
            if action == Action::Finished {
                break;
            }
            let phase_start = Utc::now();
            let label = crate::experiment::phase_label(&action, &self.schedule);
            let outcome = if self.cancel.is_cancelled()
                && !matches!(action, Action::Teardown { .. } | Action::Analyse)
            {
                Outcome::Cancelled
            } else {
                self.act(&action, &label, &machine).await
            };
            if let Outcome::Failed(msg) = &outcome {
                eprintln!("error: {label}: {msg}");
            }
            self.data.meta.phases.push(ReportPhase {
                name: label,
                started_at: phase_start,
                finished_at: Some(Utc::now()),
            });
            machine.advance(&self.schedule, outcome);
        }
        machine
    }

    /// One phase of the experiment.
    async fn act(&mut self, action: &Action, label: &str, machine: &Machine) -> Outcome {
        match action {
            Action::Deploy { mesh } => self.deploy(*mesh).await,
            Action::WaitReady { mesh } => self.wait_ready(*mesh).await,
            Action::WarmUp { cursor } => self.load_step(*cursor, true, label).await,
            Action::RunStep { cursor } => self.load_step(*cursor, false, label).await,
            Action::Settle { duration } => {
                tokio::select! {
                    _ = tokio::time::sleep(*duration) => Outcome::Ok,
                    _ = self.cancel.cancelled() => Outcome::Cancelled,
                }
            }
            Action::Collect { cursor } => self.collect_step(cursor.mesh).await,
            Action::Teardown { .. } => {
                collect(&self.platform, &mut self.data);
                self.platform.teardown().await;
                Outcome::Ok
            }
            Action::Analyse => self.analyse(machine),
            Action::Finished => Outcome::Ok,
        }
    }

    async fn deploy(&mut self, mesh: usize) -> Outcome {
        let Some(m) = self.meshes.get(mesh) else {
            return Outcome::Failed("mesh not loaded".into());
        };
        self.deployed_at = Utc::now().timestamp();
        self.collected_until = None;
        match self.platform.deploy(m).await {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// Waits for the replicas, then for Prometheus to scrape them all.
    async fn wait_ready(&mut self, mesh: usize) -> Outcome {
        let outcome = tokio::select! {
            r = self.platform.wait_ready() => match r {
                Ok(()) => Outcome::Ok,
                Err(e) => Outcome::Failed(e.to_string()),
            },
            _ = self.cancel.cancelled() => Outcome::Cancelled,
        };
        let (Outcome::Ok, Some(p)) = (&outcome, &self.prom) else {
            return outcome;
        };
        let mesh_name = self.schedule.meshes.get(mesh).cloned().unwrap_or_default();
        let want: usize = self.platform.replica_counts().iter().map(|(_, n)| n).sum();
        let scraped = tokio::select! {
            ok = p.wait_for_targets(&mesh_name, want, Duration::from_secs(30)) => ok,
            _ = self.cancel.cancelled() => true,
        };
        if !scraped {
            let w = format!(
                "Prometheus did not scrape all {want} replicas of {mesh_name} within 30 s; the first samples may be missing"
            );
            eprintln!("warning: {w}");
            self.data.meta.warnings.push(w);
        }
        outcome
    }

    /// Drives the load of one step (or the warm-up) and records its result.
    async fn load_step(&mut self, cursor: Cursor, warm: bool, label: &str) -> Outcome {
        let spec = self.bench.spec();
        let step = if warm {
            self.schedule.warmup.clone()
        } else {
            self.schedule.steps.get(cursor.step).cloned()
        };
        let (Some(step), Some(url)) = (step, self.platform.service_url(&spec.target.service))
        else {
            return Outcome::Failed("target service is not deployed".into());
        };
        let lp = convert::step_plan(spec, &step, &url, warm);
        let (tick_tx, mut ticks) = tokio::sync::mpsc::unbounded_channel();
        let opts = RunOptions {
            cancel: self.cancel.child_token(),
            record_requests: None,
            metrics_listen: None,
            progress: false,
            ticks: Some(tick_tx),
            ..RunOptions::default()
        };
        let bar = (!self.args.quiet)
            .then(|| step_bar(&format!("{label}: {}", target_text(&step)), step.duration));
        let run = run_plan(&lp, opts);
        tokio::pin!(run);
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                Some(t) = ticks.recv() => {
                    if let Some(b) = &bar {
                        show_tick(b, &t, &self.platform.replica_counts());
                    }
                }
            }
        };
        if let Some(b) = &bar {
            b.finish();
        }
        let result = match result {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        if !warm && let Some(stage) = result.measured_stages().next() {
            let mesh_name = self
                .schedule
                .meshes
                .get(cursor.mesh)
                .cloned()
                .unwrap_or_default();
            convert::record_step(&mut self.data, &mesh_name, cursor, &step, stage);
        }
        if result.partial {
            Outcome::Cancelled
        } else {
            Outcome::Ok
        }
    }

    /// Collects the step's samples (Prometheus, else the runner's own) and rewrites the
    /// report with them.
    async fn collect_step(&mut self, mesh: usize) -> Outcome {
        match &self.prom {
            Some(p) => {
                let mesh_name = self.schedule.meshes.get(mesh).cloned().unwrap_or_default();
                let services: Vec<String> = self
                    .meshes
                    .get(mesh)
                    .map(|m| m.spec().services.iter().map(|s| s.name.clone()).collect())
                    .unwrap_or_default();
                let overrides = self
                    .bench
                    .spec()
                    .collection
                    .as_ref()
                    .map(|c| c.queries.clone())
                    .unwrap_or_default();
                let from = self.collected_until.unwrap_or(self.deployed_at);
                let interval = self.args.sample_interval;
                match collect_prometheus(p, &mesh_name, &services, &overrides, from, interval).await
                {
                    Ok((samples, until)) => {
                        self.collected_until = Some(until);
                        self.data.samples.extend(samples);
                        collect_runner_only(&self.platform, &mut self.data);
                    }
                    Err(e) => {
                        let w = format!(
                            "Prometheus collection failed, using the runner's own samples: {e}"
                        );
                        eprintln!("warning: {w}");
                        self.data.meta.warnings.push(w);
                        collect(&self.platform, &mut self.data);
                    }
                }
            }
            None => collect(&self.platform, &mut self.data),
        }
        match self.run_dir.update(&self.data) {
            Ok(analysis) => {
                if let Some(row) = analysis.steps.last() {
                    print_step(row, &self.platform.replica_counts());
                }
                Outcome::Ok
            }
            Err(e) => Outcome::Failed(format!("writing the report: {e}")),
        }
    }

    /// Writes the final report.
    fn analyse(&mut self, machine: &Machine) -> Outcome {
        self.data.meta.finished_at = Some(Utc::now());
        self.data.meta.partial = machine.stopped_early;
        self.data.meta.warnings.extend(machine.failure_lines());
        match self.run_dir.finish(&self.data) {
            Ok(files) => {
                eprintln!("report: {}", files.html.display());
                Outcome::Ok
            }
            Err(e) => {
                eprintln!("error: writing the report: {e}");
                self.report_ok = false;
                Outcome::Failed(e.to_string())
            }
        }
    }

    /// Stops everything, prints the summary and returns the exit code.
    async fn finish(mut self, machine: Machine) -> u8 {
        self.platform.shutdown().await;
        if let Some(p) = self.prom.as_mut() {
            p.stop().await;
        }
        let verdict = meshbench_analysis::rundir::read_run_json(self.run_dir.path())
            .ok()
            .and_then(|r| r.slo.pass);
        print_summary(self.run_dir.path());
        let failed = !self.report_ok
            || machine.stopped_early
            || machine.cancelled
            || !machine.failures.is_empty();
        let code = exit_code(failed, verdict, true);
        crate::cli::run_reports(&self.args.ci, self.run_dir.path(), code)
    }
}

/// A finished run's exit code: run failed (4) before the SLO verdict, then SLO failed
/// (3), else 0; the verdict is printed when `say` is set.
pub(crate) fn exit_code(failed: bool, verdict: Option<bool>, say: bool) -> u8 {
    let (code, line) = match (failed, verdict) {
        (true, _) => (exit::RUN_FAILED, None),
        (false, Some(false)) => (exit::SLO_FAILED, Some("SLO: FAIL")),
        (false, Some(true)) => (exit::OK, Some("SLO: PASS")),
        (false, None) => (exit::OK, None),
    };
    if let Some(line) = line.filter(|_| say) {
        eprintln!("{line}");
    }
    code
}

/// The local platform for this run, its logs in the run directory.
fn start_platform(args: &RunArgs, run_dir: &RunDir, name: &str) -> Result<LocalPlatform, u8> {
    let program = std::env::current_exe().map_err(|e| {
        eprintln!("error: cannot find the meshbench executable to start workers: {e}");
        exit::RUN_FAILED
    })?;
    let run_id = run_dir
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| name.to_string());
    let opts = LocalOptions {
        program,
        log_dir: run_dir.path().join("logs"),
        sample_interval: args.sample_interval,
        hpa_sync: args.hpa_sync,
        metric_resolution: args.metric_resolution,
        hpa_cpu_initialization_period: args.hpa_cpu_initialization_period,
        ready_timeout: args.ready_timeout,
        enforce_limits: !args.no_limits,
        balance: args.service_balance,
        node: args.node.resources(),
    };
    Ok(LocalPlatform::new(opts, &run_id))
}

/// How the platform enforces limits, as run.json states it.
fn enforcement(platform: &LocalPlatform) -> (ReportEnforcement, String) {
    match platform.enforcement() {
        Enforcement::CgroupV2 => (
            ReportEnforcement::Enforced,
            "cgroup v2 cpu.max and memory.max".to_string(),
        ),
        Enforcement::CgroupV1 => (
            ReportEnforcement::Enforced,
            "cgroup v1 CFS quota and memory limit".to_string(),
        ),
        Enforcement::None { reason } => (ReportEnforcement::NotEnforced, reason.clone()),
    }
}

/// The run's record before anything ran: the spec, the platform's settings and the
/// model of every mesh on this node.
fn run_data(
    args: &RunArgs,
    bench: &ValidBenchmark,
    meshes: &[ValidMesh],
    schedule: &ExperimentSchedule,
    limits: LimitsEnforcement,
    started: chrono::DateTime<Utc>,
) -> RunData {
    let mut warnings = Vec::new();
    if limits.mode == ReportEnforcement::NotEnforced {
        let w = format!(
            "CPU and memory limits are NOT enforced ({}); capacity figures are not comparable with the model",
            limits.reason
        );
        eprintln!("warning: {w}");
        warnings.push(w);
    }
    let meta = RunMeta {
        benchmark: bench.name().to_string(),
        spec: spec_json(bench, meshes),
        meshbench_version: env!("CARGO_PKG_VERSION").to_string(),
        platform: Platform::Local,
        limits,
        warnings,
        phases: Vec::new(),
        started_at: started,
        finished_at: None,
        steps_planned: Some(schedule.total_steps() as u32),
        partial: false,
        deviations: deviations(args),
    };
    new_run_data(meta, bench, meshes, &args.node)
}

/// A run's record before its first phase: `meta`, the capacity model of each mesh on
/// `node`, the SLOs.
pub(crate) fn new_run_data(
    meta: RunMeta,
    bench: &ValidBenchmark,
    meshes: &[ValidMesh],
    node: &NodeArgs,
) -> RunData {
    let mut data = RunData::new(meta);
    for m in meshes {
        let mut input = convert::capacity_input(m, bench.spec());
        input.node = Some(node.model());
        data.models.insert(m.name().to_string(), input);
    }
    data.slos = convert::slos(bench.spec());
    // A short HPA settle window keeps the scaling figures meaningful for short steps.
    data.options.settle_window_ms = 10_000;
    data
}

/// `meshbench: <verb> <benchmark> (… step(s) × … mesh(es) × … repetition(s)) → DIR`.
pub(crate) fn announce(verb: &str, schedule: &ExperimentSchedule, dir: &std::path::Path) {
    eprintln!(
        "meshbench: {verb} {} ({} step(s) × {} mesh(es) × {} repetition(s)) → {}",
        schedule.benchmark,
        schedule.steps.len(),
        schedule.meshes.len(),
        schedule.repetitions,
        dir.display()
    );
}

/// Starts (`auto`) or attaches to (URL) the Prometheus of `--prometheus`, and has the
/// platform publish its targets to it.
async fn start_prometheus(
    args: &RunArgs,
    run_dir: &RunDir,
    platform: &LocalPlatform,
) -> Result<Option<LocalPrometheus>, RunError> {
    let Some(p) = &args.prometheus else {
        return Ok(None);
    };
    let dir = run_dir.path().join("prometheus");
    let started = if p == "auto" {
        LocalPrometheus::start(&dir, args.sample_interval).await
    } else {
        LocalPrometheus::external(p, &dir).await
    };
    let prom = started?;
    platform
        .enable_prometheus(prom.targets_file().to_path_buf())
        .await
        .map_err(RunError::Targets)?;
    if prom.is_ours() {
        eprintln!("prometheus: started at {}", prom.url());
    } else {
        eprintln!(
            "prometheus: using {}; it must scrape the targets in {} (file_sd_configs)",
            prom.url(),
            prom.targets_file().display()
        );
    }
    Ok(Some(prom))
}

/// Cancels `cancel` on Ctrl-C or SIGTERM.
fn cancel_on_signal(cancel: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("\ninterrupted: stopping load and replicas, writing a partial report…");
        cancel.cancel();
    });
}

/// The one-line result of a step on the terminal.
fn print_step(row: &meshbench_analysis::tables::StepRow, replicas: &[(String, usize)]) {
    eprintln!(
        "   step done: served {} rps (sent {} rps), failed {}, p99 {} ms; replicas {}{}",
        fmt_opt(row.throughput_rps),
        fmt_opt(row.sent_rate_rps),
        row.requests
            .zip(row.successes)
            .map(|(n, ok)| n.saturating_sub(ok).to_string())
            .unwrap_or_else(|| "-".into()),
        fmt_opt(row.latency_p99_ms),
        replicas
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect::<Vec<_>>()
            .join(" "),
        row.saturation
            .as_deref()
            .map(|w| format!("\n   SATURATED: {w}"))
            .unwrap_or_default(),
    );
}
/// The spec of the run as run.json records it: the resources as written.
pub(crate) fn spec_json(bench: &ValidBenchmark, meshes: &[ValidMesh]) -> serde_json::Value {
    let meshes: Vec<&meshbench_crds::ServiceMesh> = meshes.iter().map(ValidMesh::mesh).collect();
    serde_json::json!({ "benchmark": bench.benchmark(), "meshes": meshes })
}

/// Whether any service of `meshes` has a CPU or memory limit to enforce.
fn wants_limits(meshes: &[ValidMesh]) -> bool {
    meshes
        .iter()
        .flat_map(|m| m.services())
        .any(|s| s.resources.cpu_limit_millis.is_some() || s.resources.memory_limit_bytes.is_some())
}

/// Kubernetes' own value of each timing the local platform lets a run shorten.
const KUBERNETES_HPA_SYNC: Duration = Duration::from_secs(15);
const KUBERNETES_METRIC_RESOLUTION: Duration = Duration::from_secs(15);

/// Where this local run differs from a cluster, for run.json: each shortened timing with
/// Kubernetes' value, and what one machine cannot emulate.
fn deviations(args: &RunArgs) -> Vec<String> {
    let mut out = Vec::new();
    for (what, flag, value, kubernetes) in [
        (
            "HPA sync period",
            "--hpa-sync",
            args.hpa_sync,
            KUBERNETES_HPA_SYNC,
        ),
        (
            "metrics-server resolution",
            "--metric-resolution",
            args.metric_resolution,
            KUBERNETES_METRIC_RESOLUTION,
        ),
        (
            "HPA CPU initialization period",
            "--hpa-cpu-initialization-period",
            args.hpa_cpu_initialization_period,
            crate::local::hpa::DEFAULT_CPU_INITIALIZATION_PERIOD,
        ),
    ] {
        if value != kubernetes {
            out.push(format!(
                "{what} {value:?} ({flag}; Kubernetes: {kubernetes:?})"
            ));
        }
    }
    if args.service_balance != meshbench_runtime::proxy::Balance::Random {
        out.push(
            "Services balance connections round robin (kube-proxy iptables/nftables: random)"
                .into(),
        );
    }
    out.push("one node: no network between pods, no DNS, no scheduling across nodes".into());
    out
}

/// Takes the runner's samples except those Prometheus provides.
fn collect_runner_only(platform: &LocalPlatform, data: &mut RunData) {
    use crate::k8s::promql::TEMPLATES;
    data.samples.extend(
        platform
            .drain_samples()
            .into_iter()
            .filter(|s| !TEMPLATES.iter().any(|t| t.name == s.metric)),
    );
    data.meta.warnings.extend(platform.drain_events());
}

/// Queries Prometheus for one mesh from `from` (UTC unix s) until now, with the
/// cluster path's templates; returns the samples and the end of the window.
async fn collect_prometheus(
    prom: &LocalPrometheus,
    mesh: &str,
    services: &[String],
    overrides: &std::collections::BTreeMap<String, String>,
    from: i64,
    interval: Duration,
) -> Result<(Vec<meshbench_analysis::Sample>, i64), RunError> {
    use crate::k8s::collect::{Collector, Window};
    use crate::k8s::promql::{Vars, rate_window};
    use crate::local::exporter::{NAMESPACE, deployment_name};
    // Let the last scrapes of the step land before asking for them.
    tokio::time::sleep(interval * 2).await;
    let until = Utc::now().timestamp();
    let collector = Collector::new(prom.url())?;
    let vars = Vars {
        namespace: NAMESPACE.to_string(),
        mesh: mesh.to_string(),
        objects: services
            .iter()
            .map(|s| (deployment_name(mesh, s), s.clone()))
            .collect(),
        window: rate_window(interval),
    };
    let window = Window {
        start: from,
        end: until,
        step: interval.as_secs_f64().max(1.0),
    };
    let samples = collector.collect(&vars, overrides, window, None).await?;
    Ok((samples, until + 1))
}

fn collect(platform: &LocalPlatform, data: &mut RunData) {
    data.samples.extend(platform.drain_samples());
    data.meta.warnings.extend(platform.drain_events());
}

fn target_text(step: &meshbench_crds::resolve::PlannedStep) -> String {
    match (step.rate, step.users) {
        (Some(r), _) => format!("{r} rps"),
        (None, Some(u)) => format!("{u} users"),
        _ => String::new(),
    }
}

/// A progress bar over one step's duration (hidden when stderr is not a terminal).
fn step_bar(prefix: &str, duration: Duration) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(duration.as_secs().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:24}] {pos:>3}/{len}s {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

fn show_tick(
    bar: &indicatif::ProgressBar,
    t: &meshbench_loadgen::Tick,
    replicas: &[(String, usize)],
) {
    bar.set_position(t.stage_elapsed.as_secs());
    let target = match (t.target_rate, t.users) {
        (Some(r), _) => format!("{r:.0}/s"),
        (None, Some(u)) => format!("{u} users"),
        _ => "-".into(),
    };
    let pods: Vec<String> = replicas.iter().map(|(s, n)| format!("{s}={n}")).collect();
    bar.set_message(format!(
        "target {target} sent {}/s served {}/s p99 {:.1}ms errors {} in-flight {} | {}",
        t.sent,
        t.ok,
        t.p99.as_secs_f64() * 1000.0,
        t.errors_total,
        t.in_flight,
        pods.join(" ")
    ));
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

pub(crate) fn print_summary(dir: &std::path::Path) {
    let Ok(analysis) = meshbench_analysis::load(dir) else {
        return;
    };
    let mut text = format!(
        "{:<14} {:>3} {:<14} {:>9} {:>10} {:>9} {:>8} {:>9} {:>9} {:>9}",
        "mesh",
        "rep",
        "step",
        "target",
        "served rps",
        "sent rps",
        "failed",
        "p50 ms",
        "p99 ms",
        "saturated"
    );
    text.push('\n');
    for r in &analysis.steps {
        text.push_str(&format!(
            "{:<14} {:>3} {:<14} {:>9} {:>10} {:>9} {:>8} {:>9} {:>9} {:>9}",
            r.mesh,
            r.repetition,
            r.step_name,
            r.target_rate_rps
                .map(|v| format!("{v:.1}"))
                .or(r.users.map(|u| format!("{u}u")))
                .unwrap_or_default(),
            fmt_opt(r.throughput_rps),
            fmt_opt(r.sent_rate_rps),
            r.requests
                .zip(r.successes)
                .map(|(n, ok)| n.saturating_sub(ok).to_string())
                .unwrap_or_else(|| "-".into()),
            fmt_opt(r.latency_p50_ms),
            fmt_opt(r.latency_p99_ms),
            match r.saturated {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
        ));
        text.push('\n');
    }
    for m in &analysis.run.saturation {
        text.push_str(&m.summary);
        text.push('\n');
    }
    text.push_str(&format!("run directory: {}\n", dir.display()));
    exit::out(text);
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
