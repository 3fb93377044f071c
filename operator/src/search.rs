//! `meshbench search`: the highest constant rate at which a Benchmark's SLOs hold.
//!
//! Three instruments, cheapest first: the capacity model brackets the answer (the most the
//! mesh can carry at its largest replica counts), the simulator narrows it by bisection,
//! and real runs (`meshbench run`) confirm the last candidates. Every rate tried is a
//! Benchmark of its own, written to `candidates/` and runnable as it is: the original's
//! mesh, target, load bounds, timeout and SLOs, one constant-rate step, and a warm-up at
//! the same rate long enough for the HPA to settle first ([`default_warmup`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshbench_analysis::capacity;
use meshbench_analysis::rundir::{write_atomic, write_table_files};
use meshbench_analysis::tables::{SearchRow, StepRow};
use meshbench_common::exit;
use meshbench_crds::benchmark::{Benchmark, LoadKind, Profile, Stage, Warmup};
use meshbench_crds::units::Duration as SpecDuration;
use meshbench_crds::{Bundle, ValidBenchmark, ValidMesh};
use serde::Serialize;

use crate::trials::{Platform, Trial, TrialArgs, Trials, yaml};

/// `meshbench search`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// YAML files with the Benchmark and the ServiceMeshes it names.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The Benchmark whose target, load bounds, timeout and SLOs are searched with, when
    /// the files hold several.
    #[arg(long, alias = "benchmark", value_name = "NAME")]
    pub slo_from: Option<String>,
    /// Directory the search directory is created in.
    #[arg(long, short, default_value = "results", value_name = "DIR")]
    pub out: PathBuf,
    /// Lowest rate tried (rps).
    #[arg(long, default_value_t = 1.0, value_name = "RPS")]
    pub min_rate: f64,
    /// Highest rate tried (rps); default: the most a Benchmark accepts (1000000). The
    /// search starts at the capacity model's figure and doubles from there while the
    /// SLOs hold.
    #[arg(long, value_name = "RPS")]
    pub max_rate: Option<f64>,
    /// Stop narrowing when the passing and failing rates are this close, in percent of
    /// the passing one.
    #[arg(long, default_value_t = 5.0, value_name = "PERCENT")]
    pub precision: f64,
    /// Load held at each rate before it is measured, so the HPA has settled; default: the
    /// time the HPA needs to reach the mesh's largest replica count (printed).
    #[arg(long, value_parser = meshbench_common::duration::parse, value_name = "DURATION")]
    pub warmup: Option<Duration>,
    /// How long each rate is measured after its warm-up.
    #[arg(long, default_value = "60s", value_parser = meshbench_common::duration::parse, value_name = "DURATION")]
    pub measure: Duration,
    /// Real runs (`meshbench run`) that confirm the simulated answer: the first at the
    /// highest simulated pass, then at the simulated first failure or lower; 0 answers
    /// from the simulator alone.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub confirm: u32,
    /// The simulator's and the real runs' settings.
    #[command(flatten)]
    pub trial: TrialArgs,
}

/// `search.json`: per mesh, the answer and how it was reached.
#[derive(Debug, Serialize)]
struct SearchJson {
    benchmark: String,
    measure_s: f64,
    precision_percent: f64,
    meshes: Vec<MeshAnswer>,
}

/// One mesh's answer.
#[derive(Debug, Serialize)]
struct MeshAnswer {
    mesh: String,
    /// The highest rate found to hold every SLO: measured if any real run passed (or
    /// none was asked for: then simulated), else null.
    answer_rps: Option<f64>,
    /// How far to trust it, in words.
    confidence: String,
    model_max_throughput_rps: Option<f64>,
    simulated_max_pass_rps: Option<f64>,
    simulated_min_fail_rps: Option<f64>,
    measured_max_pass_rps: Option<f64>,
    measured_min_fail_rps: Option<f64>,
    /// Load held at each rate before it was measured, and why that long.
    warmup_s: f64,
    warmup_reason: String,
}

/// Bounds found so far: the highest passing and the lowest failing rate.
#[derive(Debug, Default, Clone, Copy)]
struct Bracket {
    pass: Option<f64>,
    fail: Option<f64>,
}

impl Bracket {
    fn record(&mut self, rate: f64, pass: bool) {
        if pass {
            self.pass = Some(self.pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.fail = Some(self.fail.map_or(rate, |f| f.min(rate)));
        }
    }

    /// The midpoint, unless the bounds are within `precision` (a fraction) or missing.
    fn midpoint(&self, precision: f64) -> Option<f64> {
        let (lo, hi) = (self.pass?, self.fail?);
        let mid = round_rate((lo + hi) / 2.0);
        (hi - lo > precision * lo && mid > lo && mid < hi).then_some(mid)
    }
}

/// The highest rate a Benchmark's stage accepts.
const MAX_RATE: f64 = 1_000_000.0;

/// Rates are held to 0.1 rps (0.01 below 1 rps): finer differences are below the noise
/// of any run, and the candidate files stay readable.
fn round_rate(r: f64) -> f64 {
    snap(r, f64::round)
}

fn snap(r: f64, how: fn(f64) -> f64) -> f64 {
    if r < 1.0 {
        how(r * 100.0).max(1.0) / 100.0
    } else {
        how(r * 10.0) / 10.0
    }
}

/// `--min-rate` and `--max-rate` snapped inwards onto the rates tried.
fn bounds(args: &SearchArgs) -> (f64, f64) {
    let min = snap(args.min_rate, f64::ceil);
    let max = snap(args.max_rate.unwrap_or(MAX_RATE).min(MAX_RATE), f64::floor);
    (min, max.max(min))
}

/// Runs `meshbench search`; returns the exit code: 0 every mesh has an answer, 1 invalid
/// input, 2 usage, 3 some mesh meets its SLOs at no rate tried, 4 a run failed.
pub fn run(args: &SearchArgs) -> u8 {
    if let Err(msg) = check_args(args) {
        eprintln!("error: {msg}");
        return exit::USAGE;
    }
    let bundle = Bundle::load_files(&args.files);
    if !bundle.is_valid() {
        for d in &bundle.diagnostics {
            eprintln!("{d}");
        }
        eprintln!("nothing was searched: fix the problems above (see `meshbench validate`)");
        return exit::INVALID;
    }
    let bench = match crate::run::select_benchmark(args.slo_from.as_deref(), &bundle) {
        Ok(b) => b,
        Err(code) => return code,
    };
    if let Err(msg) = searchable(bench, &bundle) {
        eprintln!("error: {msg}");
        return exit::INVALID;
    }
    let (bench, meshes) = match bundle.validated(bench) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    match Search::new(args, &bench) {
        Ok(mut search) => search.all(&meshes),
        Err(code) => code,
    }
}

fn check_args(args: &SearchArgs) -> Result<(), String> {
    if !(args.min_rate > 0.0 && args.min_rate <= MAX_RATE) {
        return Err(format!(
            "--min-rate {}: expected a rate above 0 and at most {MAX_RATE}",
            args.min_rate
        ));
    }
    if let Some(max) = args.max_rate
        && !(max >= args.min_rate && max <= MAX_RATE)
    {
        return Err(format!(
            "--max-rate {max}: expected a rate at or above --min-rate {} and at most {MAX_RATE}",
            args.min_rate
        ));
    }
    if !(args.precision.is_finite() && args.precision > 0.0 && args.precision < 100.0) {
        return Err(format!(
            "--precision {}: expected a percentage between 0 and 100",
            args.precision
        ));
    }
    if args.measure.is_zero() {
        return Err("--measure: expected a duration above 0".into());
    }
    Ok(())
}

/// The file a Benchmark came from, for messages.
pub(crate) fn source_file(bench: &Benchmark, bundle: &Bundle) -> String {
    bundle
        .benchmarks
        .iter()
        .find(|d| d.benchmark.metadata.name == bench.metadata.name)
        .map_or_else(|| "?".to_string(), |d| d.source.file.clone())
}

/// Whether the Benchmark has an SLO to judge a run by: without one, every run's verdict
/// is null.
pub(crate) fn has_slos(bench: &Benchmark) -> bool {
    bench.spec.slos.as_ref().is_some_and(|s| {
        !s.latency.is_empty() || s.max_error_rate.is_some() || s.min_achieved_ratio.is_some()
    })
}

/// A search needs a rate to vary and SLOs to judge it by.
fn searchable(bench: &Benchmark, bundle: &Bundle) -> Result<(), String> {
    let name = bench.metadata.name.as_deref().unwrap_or("?");
    let file = source_file(bench, bundle);
    if bench.spec.load.model != LoadKind::Open {
        return Err(format!(
            "{file}: Benchmark {name}: spec.load.model: search varies a rate, so it needs \
             `open`; found `closed` (a closed loop's users set the rate themselves)"
        ));
    }
    if !has_slos(bench) {
        return Err(format!(
            "{file}: Benchmark {name}: spec.slos: search finds the highest rate that meets \
             the SLOs; expected `slos` with a latency, error-rate or achieved-ratio bound"
        ));
    }
    Ok(())
}

struct Search<'a> {
    args: &'a SearchArgs,
    bench: &'a ValidBenchmark,
    trials: Trials,
    rows: Vec<SearchRow>,
}

impl<'a> Search<'a> {
    fn new(args: &'a SearchArgs, bench: &'a ValidBenchmark) -> Result<Self, u8> {
        let name = format!("{}-search", bench.name());
        Ok(Search {
            args,
            bench,
            trials: Trials::new(&args.trial, &args.out, &name)?,
            rows: Vec::new(),
        })
    }

    fn all(&mut self, meshes: &[ValidMesh]) -> u8 {
        let mut answers = Vec::new();
        let mut code = exit::OK;
        for mesh in meshes {
            let (warmup, reason) = match self.args.warmup {
                Some(w) => (w, "--warmup".to_string()),
                None => default_warmup(mesh, self.args),
            };
            if !self.trials.quiet() {
                eprintln!(
                    "meshbench: searching {} on {} → {}\n   each rate: {:.0} s warm-up ({reason}), then {:.0} s measured",
                    mesh.name(),
                    self.bench.name(),
                    self.trials.path().display(),
                    warmup.as_secs_f64(),
                    self.args.measure.as_secs_f64(),
                );
            }
            match self.mesh(mesh, warmup) {
                Ok(mut a) => {
                    a.warmup_s = warmup.as_secs_f64();
                    a.warmup_reason = reason;
                    if a.answer_rps.is_none() {
                        code = code.max(exit::SLO_FAILED);
                    }
                    answers.push(a);
                }
                Err(msg) => {
                    eprintln!("error: mesh {}: {msg}", mesh.name());
                    code = exit::RUN_FAILED;
                    break;
                }
            }
        }
        let json = SearchJson {
            benchmark: self.bench.name().to_string(),
            measure_s: self.args.measure.as_secs_f64(),
            precision_percent: self.args.precision,
            meshes: answers,
        };
        if let Err(e) = self.write(&json) {
            eprintln!("error: {e}");
            return exit::RUN_FAILED;
        }
        print_answers(&json, self.trials.path());
        code
    }

    /// The rows so far: rewritten after every try, so an interrupted search keeps them.
    fn save_rows(&self) -> Result<(), String> {
        write_table_files(self.trials.path(), &self.rows).map_err(|e| e.to_string())
    }

    fn write(&self, json: &SearchJson) -> Result<(), String> {
        self.save_rows()?;
        write_atomic(&self.trials.path().join("search.json"), |w| {
            serde_json::to_writer_pretty(w, json)
        })
        .map_err(|e| e.to_string())
    }

    /// Model bracket, simulated bisection, confirming real runs.
    fn mesh(&mut self, mesh: &ValidMesh, warmup: Duration) -> Result<MeshAnswer, String> {
        let model = self.model(mesh);
        if let Some(m) = model {
            self.rows.push(SearchRow {
                mesh: mesh.name().into(),
                platform: "model".into(),
                rate_rps: m,
                slo_pass: None,
                slo_violations: None,
                throughput_rps: Some(m),
                error_ratio: None,
                latency_mean_ms: None,
                latency_p99_ms: None,
                run_dir: None,
            });
        }
        let sim = self.simulated(mesh, warmup, model)?;
        let measured = self.confirmed(mesh, warmup, sim)?;
        Ok(answer(mesh, model, sim, measured, self.args.confirm))
    }

    /// The capacity model's most the mesh carries at its largest replica counts, on the
    /// node and with the worker costs the simulator uses.
    fn model(&self, mesh: &ValidMesh) -> Option<f64> {
        let mut input = crate::convert::capacity_input(mesh, self.bench.spec());
        input.node = Some(self.args.trial.node.model());
        let o = self.trials.overheads();
        input.overhead.request_cpu_seconds = o.request_cpu;
        input.overhead.hop_latency_seconds = o.hop;
        capacity::plan(&input, &[])
            .ok()
            .and_then(|p| p.max_throughput_rps)
            .filter(|r| r.is_finite() && *r > 0.0)
    }

    fn simulated(
        &mut self,
        mesh: &ValidMesh,
        warmup: Duration,
        model: Option<f64>,
    ) -> Result<Bracket, String> {
        let (min, max) = bounds(self.args);
        let precision = self.args.precision / 100.0;
        let mut b = Bracket::default();
        let mut rate = round_rate(model.unwrap_or(min * 10.0)).clamp(min, max);
        // Bracket: double up from a pass, halve down from a failure, until a pass and a
        // failure are known or a bound is reached (at most ~27 tries from 1e6 to 0.01).
        loop {
            let pass = self.try_rate(mesh, warmup, rate, Platform::Simulated)?;
            b.record(rate, pass);
            let next = round_rate(if pass { rate * 2.0 } else { rate / 2.0 }).clamp(min, max);
            if b.pass.is_some() && b.fail.is_some() || next == rate {
                break;
            }
            rate = next;
        }
        while let Some(mid) = b.midpoint(precision) {
            let pass = self.try_rate(mesh, warmup, mid, Platform::Simulated)?;
            b.record(mid, pass);
        }
        Ok(b)
    }

    /// Real runs from the simulated answer: first at it, then at the simulated first
    /// failure after a pass (or a step down after a failure), then by bisection.
    fn confirmed(
        &mut self,
        mesh: &ValidMesh,
        warmup: Duration,
        sim: Bracket,
    ) -> Result<Bracket, String> {
        let precision = self.args.precision / 100.0;
        let step = (2.0 * precision).max(0.1);
        let (min, max) = bounds(self.args);
        let mut b = Bracket::default();
        let mut tried = Vec::new();
        let Some(mut rate) = sim.pass else {
            return Ok(b);
        };
        for _ in 0..self.args.confirm {
            tried.push(rate);
            let pass = self.try_rate(mesh, warmup, rate, Platform::Measured)?;
            b.record(rate, pass);
            let next = match (b.pass, b.fail) {
                (Some(_), Some(_)) => b.midpoint(precision),
                (Some(p), None) => Some(sim.fail.filter(|f| *f > p).unwrap_or(p * (1.0 + step))),
                (None, Some(f)) => Some(f * (1.0 - step)),
                (None, None) => None,
            };
            match next.map(|r| round_rate(r).clamp(min, max)) {
                Some(r) if !tried.contains(&r) => rate = r,
                _ => break,
            }
        }
        Ok(b)
    }

    /// Holds `rate` on `platform`; returns whether every SLO held.
    fn try_rate(
        &mut self,
        mesh: &ValidMesh,
        warmup: Duration,
        rate: f64,
        platform: Platform,
    ) -> Result<bool, String> {
        let label = format!("{}-{rate}rps", mesh.name());
        let bench = candidate(
            self.bench.benchmark(),
            mesh.name(),
            warmup,
            self.args.measure,
            rate,
        );
        let docs = [yaml(mesh.mesh())?, yaml(&bench)?];
        let Trial { analysis, run_dir } = self.trials.run(&label, &docs, platform)?;
        let step = analysis
            .steps
            .iter()
            .find(|s| s.mesh == mesh.name())
            .ok_or_else(|| format!("the run at {} has no step of this mesh", run_dir.display()))?;
        let pass = step.slo_pass == Some(true) && !step.partial;
        self.rows
            .push(row(mesh.name(), platform, rate, step, &run_dir));
        self.save_rows()?;
        if !self.trials.quiet() {
            eprintln!(
                "   {:>9} {:>9.2} rps: {}{}",
                platform.name(),
                rate,
                if pass { "SLOs held" } else { "SLOs failed" },
                step.slo_violations
                    .as_deref()
                    .map(|v| format!(" ({v})"))
                    .unwrap_or_default()
            );
        }
        Ok(pass)
    }
}

fn row(mesh: &str, platform: Platform, rate: f64, step: &StepRow, run_dir: &Path) -> SearchRow {
    SearchRow {
        mesh: mesh.into(),
        platform: platform.name().into(),
        rate_rps: rate,
        slo_pass: Some(step.slo_pass == Some(true) && !step.partial),
        slo_violations: step.slo_violations.clone(),
        throughput_rps: step.throughput_rps,
        error_ratio: step.error_ratio,
        latency_mean_ms: step.latency_mean_ms,
        latency_p99_ms: step.latency_p99_ms,
        run_dir: Some(run_dir.display().to_string()),
    }
}

/// The Benchmark of one try: `original` with one mesh, a warm-up and one step at `rate`.
fn candidate(
    original: &Benchmark,
    mesh: &str,
    warmup: Duration,
    measure: Duration,
    rate: f64,
) -> Benchmark {
    let mut b = original.clone();
    b.spec.meshes = vec![mesh.to_string()];
    b.spec.profile = Profile {
        stages: Some(vec![Stage {
            name: Some(format!("rate-{rate}")),
            rate: Some(rate),
            users: None,
            duration: SpecDuration::from_std(measure),
        }]),
        sweep: None,
    };
    b.spec.warmup = (!warmup.is_zero()).then(|| Warmup {
        duration: SpecDuration::from_std(warmup),
        rate: Some(rate),
        users: None,
    });
    b.spec.repetitions = None;
    b
}

/// The warm-up that lets the HPA reach the largest replica count before the measurement:
/// one metrics window for the first usage figure, then one sync period per doubling
/// (the default scale-up policy at most doubles a Deployment per 15 s), one more for the
/// last decision to take effect, and 10 s for the new pods to start and become ready.
/// Without autoscaling, 10 s for connections and queues to reach their steady state.
fn default_warmup(mesh: &ValidMesh, args: &SearchArgs) -> (Duration, String) {
    let doublings = mesh
        .services()
        .iter()
        .filter_map(|s| s.autoscaling.as_ref())
        .map(|a| {
            let ratio = f64::from(a.max_replicas.max(1)) / f64::from(a.min_replicas.max(1));
            ratio.log2().ceil().max(0.0) as u32
        })
        .max();
    match doublings {
        None => (
            Duration::from_secs(10),
            "no autoscaling: connections and queues settle".into(),
        ),
        Some(n) => {
            let w = args.trial.metric_resolution
                + args.trial.hpa_sync * (n + 1)
                + Duration::from_secs(10);
            (
                w,
                format!(
                    "the HPA's time to its largest replica count: one metrics window, {} sync period(s), 10 s of pod start-up",
                    n + 1
                ),
            )
        }
    }
}

fn answer(
    mesh: &ValidMesh,
    model: Option<f64>,
    sim: Bracket,
    measured: Bracket,
    confirm: u32,
) -> MeshAnswer {
    let fmt =
        |r: Option<f64>| r.map_or_else(|| "no rate tried".to_string(), |r| format!("{r} rps"));
    let (answer_rps, confidence) = match (confirm, sim.pass, measured.pass, measured.fail) {
        (_, None, _, _) => (
            None,
            "no rate tried met the SLOs in the simulator; nothing was run".to_string(),
        ),
        (0, Some(p), _, _) => (
            Some(p),
            format!(
                "simulated only (--confirm 0): held at {p} rps, failed at {}",
                fmt(sim.fail)
            ),
        ),
        (_, Some(_), Some(p), f) => (
            Some(p),
            format!("measured: held at {p} rps, failed at {}", fmt(f)),
        ),
        (_, Some(s), None, f) => (
            None,
            format!(
                "the simulator's {s} rps was not confirmed: real runs failed down to {}",
                fmt(f)
            ),
        ),
    };
    MeshAnswer {
        mesh: mesh.name().to_string(),
        answer_rps,
        confidence,
        model_max_throughput_rps: model,
        simulated_max_pass_rps: sim.pass,
        simulated_min_fail_rps: sim.fail,
        measured_max_pass_rps: measured.pass,
        measured_min_fail_rps: measured.fail,
        warmup_s: 0.0,
        warmup_reason: String::new(),
    }
}

fn print_answers(json: &SearchJson, dir: &Path) {
    for m in &json.meshes {
        match m.answer_rps {
            Some(r) => println!(
                "mesh {}: highest rate within the SLOs {r} rps ({})",
                m.mesh, m.confidence
            ),
            None => println!(
                "mesh {}: no rate found within the SLOs ({})",
                m.mesh, m.confidence
            ),
        }
    }
    println!("search directory: {}", dir.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bracket_narrows_until_its_bounds_are_close() {
        let mut b = Bracket::default();
        assert_eq!(b.midpoint(0.05), None);
        b.record(20.0, true);
        b.record(40.0, false);
        assert_eq!(b.midpoint(0.05), Some(30.0));
        b.record(30.0, true);
        b.record(31.0, false);
        assert_eq!(b.midpoint(0.05), None, "31 is within 5 % of 30");
        // A pass above a failure (noise) keeps the highest pass and lowest failure.
        b.record(50.0, true);
        assert_eq!((b.pass, b.fail), (Some(50.0), Some(31.0)));
        assert_eq!(b.midpoint(0.05), None);
    }

    #[test]
    fn rates_are_rounded_to_what_a_run_can_tell_apart() {
        assert_eq!(round_rate(24.96), 25.0);
        assert_eq!(round_rate(0.123), 0.12);
        assert_eq!(round_rate(0.001), 0.01);
    }
}
