//! `meshbench simulate`: a Benchmark run against a model of its mesh instead of real
//! processes, in simulated time, written as the same run directory as `meshbench run`
//! (`platform: simulated`), so `report` and `compare` work on it unchanged.
//!
//! - [`mesh`]: services, replicas, CPU threads and the CFS quota;
//! - [`engine`]: the event queue and a request's path through the mesh;
//! - [`load`]: the load generator's plan and its result;
//! - [`control`]: scheduling, readiness, metrics, samples and the HPA, every second.
//!
//! The experiment's phases come from the same state machine as a real run's
//! ([`crate::experiment`]); the HPA is the local runtime's ([`crate::local::hpa`]).

pub mod calibrate;
pub mod control;
pub mod engine;
pub mod load;
pub mod mesh;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use meshbench_analysis::capacity::Overhead;
use meshbench_analysis::meta::{
    Enforcement, LimitsEnforcement, Phase as ReportPhase, Platform, RunData, RunMeta,
};
use meshbench_analysis::rundir::RunDir;
use meshbench_common::exit;
use meshbench_crds::benchmark::LoadKind;
use meshbench_crds::resolve::ResolvedService;
use meshbench_crds::{Bundle, ValidBenchmark, ValidMesh};
use meshbench_worker::work::{DelaySampler, EndpointRng};

use crate::experiment::{Action, Cursor, ExperimentSchedule, Machine, Outcome};
use control::Control;
use engine::{Engine, Overheads};
use load::{Arrivals, Load};
use mesh::{CallSpec, Endpoint, PlatformModel, Service};

/// `meshbench simulate`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// YAML files with the Benchmark and the ServiceMeshes it names.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Directory the run directory is created in.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// The Benchmark to simulate, when the files hold several.
    #[arg(long)]
    pub benchmark: Option<String>,
    /// Seed of every random draw (routing, probabilities, delays without a seed of
    /// their own): the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// HPA sync period (`--horizontal-pod-autoscaler-sync-period`).
    #[arg(long, default_value = "15s", value_parser = meshbench_common::duration::parse, value_name = "DURATION")]
    pub hpa_sync: Duration,
    /// metrics-server's `--metric-resolution`.
    #[arg(long, default_value = "15s", value_parser = meshbench_common::duration::parse, value_name = "DURATION")]
    pub metric_resolution: Duration,
    /// The HPA controller's `--horizontal-pod-autoscaler-cpu-initialization-period`.
    #[arg(long, default_value = "5m", value_parser = meshbench_common::duration::parse, value_name = "DURATION")]
    pub hpa_cpu_initialization_period: Duration,
    /// Cores of the simulated machine (CPU threads of a worker without a CPU limit);
    /// default: this machine's, recorded in run.json.
    #[arg(long, value_name = "N")]
    pub cores: Option<u32>,
    /// How long a mesh may take to become ready before the run fails (simulated time).
    #[arg(long, default_value = "60s", value_parser = meshbench_common::duration::parse, value_name = "DURATION")]
    pub ready_timeout: Duration,
    /// The node's CPU and memory for pods.
    #[command(flatten)]
    pub node: crate::run::NodeArgs,
    /// Measure the worker's own costs (CPU per request beyond the configured work, wall
    /// time per hop) on this machine with this build's worker, a few seconds before the
    /// simulation, instead of the shipped figures of a release build
    /// (83 µs CPU, 89 µs per hop). Use it when the simulation is compared with runs of a
    /// debug build or on another machine; the figures go to run.json.
    #[arg(long)]
    pub calibrate: bool,
    /// Worker costs given by the caller (`meshbench search` calibrates once for all its
    /// simulations); take precedence over `--calibrate`.
    #[arg(skip)]
    pub overheads: Option<Overheads>,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `meshbench simulate`; returns the exit code (as `meshbench run`'s).
pub fn run(args: &SimulateArgs) -> u8 {
    let bundle = Bundle::load_files(&args.files);
    if !bundle.is_valid() {
        for d in &bundle.diagnostics {
            eprintln!("{d}");
        }
        eprintln!("nothing was simulated: fix the problems above (see `meshbench validate`)");
        return exit::INVALID;
    }
    let bench = match crate::run::select_benchmark(args.benchmark.as_deref(), &bundle) {
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
    let wall = std::time::Instant::now();
    let mut sim = match Simulation::new(args, &bench, &meshes) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let machine = sim.drive();
    let events = sim.events;
    let simulated = sim.now();
    let code = sim.finish(&machine);
    if !args.quiet {
        let secs = wall.elapsed().as_secs_f64();
        eprintln!(
            "meshbench: simulated {simulated:.0} s in {secs:.2} s ({:.0} events/s)",
            events as f64 / secs.max(1e-9)
        );
    }
    code
}

struct Simulation<'a> {
    args: &'a SimulateArgs,
    bench: &'a ValidBenchmark,
    meshes: &'a [ValidMesh],
    schedule: ExperimentSchedule,
    run_dir: RunDir,
    data: RunData,
    epoch: DateTime<Utc>,
    engine: Engine,
    control: Option<Control>,
    events: u64,
    model: PlatformModel,
    overheads: Overheads,
}

impl<'a> Simulation<'a> {
    fn new(
        args: &'a SimulateArgs,
        bench: &'a ValidBenchmark,
        meshes: &'a [ValidMesh],
    ) -> Result<Self, u8> {
        let schedule = ExperimentSchedule::new(bench);
        // Before the run directory: a failed calibration leaves nothing behind.
        let overheads = overheads(args)?;
        let epoch = Utc::now();
        let run_dir = RunDir::create(&args.out, bench.name(), epoch).map_err(|e| {
            eprintln!(
                "error: cannot create the run directory under {}: {e}",
                args.out.display()
            );
            exit::RUN_FAILED
        })?;
        let cores = args
            .cores
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
        let model = PlatformModel {
            cores,
            cpu_initialization_period: args.hpa_cpu_initialization_period,
            metric_resolution: args.metric_resolution,
        };
        let mut data = run_data(args, bench, meshes, &schedule, epoch, cores);
        data.meta.deviations.push(format!(
            "worker overheads: {:.0} µs CPU per request, {:.0} µs per hop ({})",
            overheads.request_cpu * 1e6,
            overheads.hop * 1e6,
            if args.calibrate || args.overheads.is_some() {
                "measured on this machine with this build's worker, --calibrate"
            } else {
                "a release build's, measured by `cargo bench -p meshbench-worker`"
            }
        ));
        if !args.quiet {
            crate::run::announce("simulating", &schedule, run_dir.path());
        }
        Ok(Self {
            args,
            bench,
            meshes,
            schedule,
            run_dir,
            data,
            epoch,
            engine: Engine::new(args.seed, overheads),
            control: None,
            events: 0,
            model,
            overheads,
        })
    }

    fn now(&self) -> f64 {
        self.engine.now
    }

    fn at(&self, t: f64) -> DateTime<Utc> {
        self.epoch + chrono::Duration::milliseconds((t * 1000.0).round() as i64)
    }

    fn drive(&mut self) -> Machine {
        let mut machine = Machine::new();
        loop {
            let action = machine.action(&self.schedule);
            if action == Action::Finished {
                break;
            }
            let started = self.at(self.now());
            let label = crate::experiment::phase_label(&action, &self.schedule);
            let outcome = self.act(&action, &machine);
            if let Outcome::Failed(msg) = &outcome {
                eprintln!("error: {label}: {msg}");
            }
            self.data.meta.phases.push(ReportPhase {
                name: label,
                started_at: started,
                finished_at: Some(self.at(self.now())),
            });
            machine.advance(&self.schedule, outcome);
        }
        machine
    }

    fn act(&mut self, action: &Action, machine: &Machine) -> Outcome {
        match action {
            Action::Deploy { mesh } => self.deploy(*mesh),
            Action::WaitReady { .. } => self.wait_ready(),
            Action::WarmUp { cursor } => self.load_step(*cursor, true),
            Action::RunStep { cursor } => self.load_step(*cursor, false),
            Action::Settle { duration } => {
                let until = self.now() + duration.as_secs_f64();
                self.run_until(until, &|_| false);
                Outcome::Ok
            }
            Action::Collect { .. } => {
                self.collect();
                if let Err(e) = self.run_dir.update(&self.data) {
                    return Outcome::Failed(format!("cannot write the report: {e}"));
                }
                Outcome::Ok
            }
            Action::Teardown { .. } => {
                self.collect();
                let now = self.now();
                let events = self.engine.events;
                self.events += events;
                // The same seed for every mesh: meshes compared see the same draws.
                self.engine = Engine::new(self.args.seed, self.overheads);
                self.engine.now = now;
                self.control = None;
                Outcome::Ok
            }
            Action::Analyse => self.analyse(machine),
            Action::Finished => Outcome::Ok,
        }
    }

    fn collect(&mut self) {
        if let Some(c) = self.control.as_mut() {
            self.data.samples.append(&mut c.samples);
        }
    }

    fn run_until(&mut self, until: f64, stop: &dyn Fn(&Engine) -> bool) {
        let mut control = self.control.take();
        let mut tick = |e: &mut Engine| {
            if let Some(c) = control.as_mut() {
                c.tick(e);
            }
        };
        self.engine.run_until(until, &mut tick, stop);
        self.control = control;
    }

    fn deploy(&mut self, index: usize) -> Outcome {
        let Some(mesh) = self.meshes.get(index) else {
            return Outcome::Failed(format!("no mesh #{index}"));
        };
        let now = self.now();
        let first_scrape = now + self.model.metric_resolution.as_secs_f64() / 2.0;
        let seed = self.args.seed;
        let services: Vec<Service> = mesh
            .services()
            .iter()
            .enumerate()
            .map(|(i, svc)| {
                let eps = endpoints(svc, mesh.services(), seed ^ ((i as u64 + 1) << 32));
                Service::new(svc, eps, &self.model, first_scrape)
            })
            .collect();
        self.engine.services = services;
        for s in &mut self.engine.services {
            for _ in 0..s.initial_replicas() {
                s.create(now);
            }
        }
        self.engine.now = now;
        self.engine.start_ticks(now);
        self.control = Some(Control::new(
            mesh.name(),
            self.epoch.timestamp_millis(),
            self.args.hpa_sync.as_secs_f64(),
            now,
            self.args.node.resources(),
        ));
        Outcome::Ok
    }

    fn wait_ready(&mut self) -> Outcome {
        let all_routed = |e: &Engine| {
            e.services.iter().all(|s| {
                s.live().all(|r| r.routed) && s.live().count() > 0 || s.initial_replicas() == 0
            })
        };
        let deadline = self.now() + self.args.ready_timeout.as_secs_f64();
        if all_routed(&self.engine) {
            return Outcome::Ok;
        }
        self.run_until(deadline, &all_routed);
        if all_routed(&self.engine) {
            Outcome::Ok
        } else {
            Outcome::Failed(format!(
                "replicas not ready after {:?} (--ready-timeout; Pending for want of room?)",
                self.args.ready_timeout
            ))
        }
    }

    fn load_step(&mut self, cursor: Cursor, warm: bool) -> Outcome {
        let step = if warm {
            self.schedule.warmup.clone()
        } else {
            self.schedule.steps.get(cursor.step).cloned()
        };
        let Some(step) = step else {
            return Outcome::Failed("no such step".into());
        };
        let spec = self.bench.spec();
        let mesh = &self.meshes[cursor.mesh];
        let path = spec.target.path.as_deref().unwrap_or("/");
        let target = target(mesh, &spec.target.service, path);
        let timeout = spec
            .request_timeout
            .as_ref()
            .map_or(10.0, |t| t.get().as_secs_f64());
        let arrivals = match self.schedule.model {
            LoadKind::Open => Arrivals::Open {
                rate: step.rate.unwrap_or(1.0),
                max_in_flight: spec
                    .load
                    .max_in_flight
                    .map(|m| m.max(1) as u32)
                    .unwrap_or(meshbench_crds::resolve::DEFAULT_MAX_IN_FLIGHT),
            },
            LoadKind::Closed => Arrivals::Closed {
                users: step.users.unwrap_or(1),
                think: spec
                    .load
                    .think_time
                    .as_ref()
                    .map_or(0.0, |t| t.get().as_secs_f64()),
            },
        };
        let start = self.now();
        let duration = step.duration.as_secs_f64();
        let load = Load::new(target, timeout, start, duration, arrivals);
        self.engine.start_load(load, start);
        let finished = |e: &Engine| e.load.as_ref().is_none_or(|l| l.finished(e.now));
        // The loadgen's drain: the timeout after the schedule's end, plus as long again
        // as the stage (at least 5 s) for requests a full in-flight bound held back.
        let drain = timeout + duration.max(5.0);
        self.run_until(start + duration + drain, &finished);
        // The load generator stops at its schedule's end plus the drain; the clock moves
        // on to the schedule's end at least.
        if self.now() < start + duration {
            self.run_until(start + duration, &|_| false);
        }
        let Some(mut load) = self.engine.load.take() else {
            return Outcome::Failed("the load vanished".into());
        };
        load.abandon_outstanding(self.now());
        if !warm {
            let stage = load.result(
                cursor.step as u32 + 1,
                &step.name,
                step.rate,
                step.users,
                self.epoch.timestamp_millis(),
            );
            let name = self.meshes[cursor.mesh].name().to_string();
            crate::convert::record_step(&mut self.data, &name, cursor, &step, &stage);
        }
        Outcome::Ok
    }

    fn analyse(&mut self, machine: &Machine) -> Outcome {
        self.data.meta.finished_at = Some(self.at(self.now()));
        self.data.meta.partial = machine.stopped_early;
        self.data.meta.warnings.extend(machine.failure_lines());
        match self.run_dir.finish(&self.data) {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::Failed(format!("cannot write the report: {e}")),
        }
    }

    fn finish(&mut self, machine: &Machine) -> u8 {
        self.events += self.engine.events;
        let verdict = meshbench_analysis::rundir::read_run_json(self.run_dir.path())
            .ok()
            .and_then(|r| r.slo.pass);
        if !self.args.quiet {
            crate::run::print_summary(self.run_dir.path());
        }
        let failed = machine.stopped_early || !machine.failures.is_empty();
        crate::run::exit_code(failed, verdict, !self.args.quiet)
    }
}

/// A release build's worker costs, as `cargo bench -p meshbench-worker` measured them.
pub fn release_overheads() -> Overheads {
    let o = Overhead::default();
    Overheads {
        hop: o.hop_latency_seconds,
        request_cpu: o.request_cpu_seconds,
    }
}

/// The worker's costs: given, measured with `--calibrate`, else a release build's.
fn overheads(args: &SimulateArgs) -> Result<Overheads, u8> {
    if let Some(o) = args.overheads {
        return Ok(o);
    }
    if !args.calibrate {
        return Ok(release_overheads());
    }
    let measured = std::env::current_exe()
        .map_err(|e| calibrate::CalibrateError::Start {
            program: "meshbench".into(),
            reason: e.to_string(),
        })
        .and_then(|program| calibrate::measure(&program));
    match measured {
        Ok(c) => {
            if !args.quiet {
                eprintln!(
                    "calibration: caller {:.0} µs and callee {:.0} µs CPU per request, round trip {:.0} µs",
                    c.caller_cpu * 1e6,
                    c.callee_cpu * 1e6,
                    c.round_trip * 1e6
                );
            }
            Ok(c.overheads())
        }
        Err(e) => {
            eprintln!("error: --calibrate: {e}");
            Err(exit::RUN_FAILED)
        }
    }
}

/// The simulated run's record: as `meshbench run`'s, `platform: simulated`.
fn run_data(
    args: &SimulateArgs,
    bench: &ValidBenchmark,
    meshes: &[ValidMesh],
    schedule: &ExperimentSchedule,
    epoch: DateTime<Utc>,
    cores: u32,
) -> RunData {
    let mut deviations = vec![
        "simulated: no processes ran; requests, CPU threads, CFS quota, readiness and the HPA are modelled (meshbench simulate)".to_string(),
        "machine CPU contention between replicas is not modelled: every CPU thread runs at full speed".to_string(),
        format!("a worker without a CPU limit has {cores} CPU thread(s) (--cores)"),
    ];
    if args.hpa_sync != Duration::from_secs(15) {
        deviations.push(format!(
            "HPA sync period {:?} (--hpa-sync; Kubernetes: 15s)",
            args.hpa_sync
        ));
    }
    if args.metric_resolution != Duration::from_secs(15) {
        deviations.push(format!(
            "metrics-server resolution {:?} (--metric-resolution; Kubernetes: 15s)",
            args.metric_resolution
        ));
    }
    let meta = RunMeta {
        benchmark: bench.name().to_string(),
        spec: crate::run::spec_json(bench, meshes),
        meshbench_version: env!("CARGO_PKG_VERSION").to_string(),
        platform: Platform::Simulated,
        limits: LimitsEnforcement {
            mode: Enforcement::Enforced,
            reason: "modelled: ⌊limit⌋ CPU threads per replica, the CFS quota below one core"
                .into(),
        },
        warnings: Vec::new(),
        phases: Vec::new(),
        started_at: epoch,
        finished_at: None,
        steps_planned: Some(schedule.total_steps() as u32),
        partial: false,
        deviations,
    };
    crate::run::new_run_data(meta, bench, meshes, &args.node)
}

/// The target service's index and its endpoint's (`None`: it serves no such path).
fn target(mesh: &ValidMesh, service: &str, path: &str) -> (usize, Option<usize>) {
    let services = mesh.services();
    let svc = services.iter().position(|s| s.name == service).unwrap_or(0);
    let ep = services
        .get(svc)
        .and_then(|s| s.endpoints.iter().position(|e| e.path == path));
    (svc, ep)
}

/// The endpoints of `svc` as the simulator runs them; draws without a seed of their own
/// are seeded from `seed`.
fn endpoints(svc: &ResolvedService, mesh: &[ResolvedService], seed: u64) -> Vec<Endpoint> {
    svc.endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| {
            let delay = ep.delay.as_ref().and_then(|d| {
                let cfg = crate::worker_config::delay(d)?;
                Some((DelaySampler::new(&cfg).ok()?, cfg.mode))
            });
            let own = ep.delay.as_ref().and_then(|d| d.delay.seed);
            let groups = ep
                .call_groups
                .iter()
                .map(|g| {
                    g.iter()
                        .map(|c| {
                            let callee = mesh.iter().position(|s| s.name == c.service);
                            CallSpec {
                                svc: callee.unwrap_or(0),
                                ep: callee.and_then(|k| {
                                    mesh[k].endpoints.iter().position(|e| e.path == c.path)
                                }),
                                probability: c.probability,
                                repeat: c.repeat.max(1),
                                timeout: c.timeout.as_secs_f64(),
                            }
                        })
                        .collect()
                })
                .collect();
            Endpoint {
                path: ep.path.clone(),
                cpu: ep.cpu.as_secs_f64(),
                delay,
                rng: EndpointRng::new(Some(own.unwrap_or(seed.wrapping_add(i as u64)))),
                error_rate: ep.error_rate,
                max_in_flight: ep.max_in_flight,
                ignore_call_timeouts: ep.ignore_call_timeouts,
                pooled: ep.cpu > Duration::ZERO || ep.memory_bytes > 0,
                groups,
            }
        })
        .collect()
}
