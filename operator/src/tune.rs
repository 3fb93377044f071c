//! `meshbench tune`: HPA settings searched for a Benchmark's load profile.
//!
//! The grid of `--vary` values is simulated candidate by candidate against the whole
//! Benchmark (its profile, warm-up, SLOs), each scored by the steps that failed an SLO
//! first and the pod-seconds it cost second; the best few are confirmed by real runs,
//! and the winner is written as a ServiceMesh ready to apply. Candidate 0 is always the
//! settings as written, so the table says what tuning gained.

use std::path::PathBuf;

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior,
};
use meshbench_analysis::Analysis;
use meshbench_analysis::rundir::{write_atomic, write_table_files};
use meshbench_analysis::tables::TuneRow;
use meshbench_common::exit;
use meshbench_crds::mesh::{Autoscaling, ServiceMesh};
use meshbench_crds::{Bundle, ValidBenchmark, ValidMesh};
use serde::Serialize;

use crate::trials::{Platform, TrialArgs, Trials, yaml};

/// `meshbench tune`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct TuneArgs {
    /// YAML files with the Benchmark and the ServiceMeshes it names.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The Benchmark whose load profile and SLOs score the settings, when the files hold
    /// several.
    #[arg(long, value_name = "NAME")]
    pub benchmark: Option<String>,
    /// A setting and the values to try: `[SERVICE.]KEY=V1,V2,...`, repeatable; the grid
    /// is every combination. KEY: `target` (CPU utilization, percent of the request),
    /// `min`, `max` (replicas), `scale-up-window`, `scale-down-window` (stabilization,
    /// a duration), `scale-up-percent`, `scale-down-percent` (one Percent policy per
    /// 15 s). Without SERVICE, every autoscaled service of the mesh takes the value.
    #[arg(long = "vary", required = true, value_name = "[SERVICE.]KEY=V1,V2,...")]
    pub vary: Vec<String>,
    /// Real runs that confirm the best simulated candidates; 0 picks the winner from the
    /// simulator alone.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub confirm: u32,
    /// Refuse grids larger than this.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max_candidates: usize,
    /// Directory the tune directory is created in.
    #[arg(long, short, default_value = "results", value_name = "DIR")]
    pub out: PathBuf,
    /// The simulator's and the real runs' settings.
    #[command(flatten)]
    pub trial: TrialArgs,
}

/// An HPA setting `tune` can vary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Knob {
    Target,
    Min,
    Max,
    ScaleUpWindow,
    ScaleDownWindow,
    ScaleUpPercent,
    ScaleDownPercent,
}

impl Knob {
    const ALL: [(&'static str, Knob); 7] = [
        ("target", Knob::Target),
        ("min", Knob::Min),
        ("max", Knob::Max),
        ("scale-up-window", Knob::ScaleUpWindow),
        ("scale-down-window", Knob::ScaleDownWindow),
        ("scale-up-percent", Knob::ScaleUpPercent),
        ("scale-down-percent", Knob::ScaleDownPercent),
    ];

    fn name(self) -> &'static str {
        Knob::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("?", |(n, _)| n)
    }

    /// Parses one value: an integer in the field's range, or a duration for windows
    /// (whole seconds, at most the API's 3600).
    fn value(self, text: &str) -> Result<i32, String> {
        let (lo, hi) = match self {
            Knob::Target => (1, 100),
            Knob::Min | Knob::Max => (1, 1000),
            Knob::ScaleUpPercent | Knob::ScaleDownPercent => (1, 1000),
            Knob::ScaleUpWindow | Knob::ScaleDownWindow => {
                let d = meshbench_common::duration::parse(text)
                    .map_err(|e| format!("{text:?}: {e}"))?;
                if d.subsec_nanos() != 0 || d.as_secs() > 3600 {
                    return Err(format!("{text:?}: expected whole seconds from 0s to 3600s"));
                }
                return Ok(d.as_secs() as i32);
            }
        };
        match text.parse::<i32>() {
            Ok(v) if (lo..=hi).contains(&v) => Ok(v),
            _ => Err(format!("{text:?}: expected an integer from {lo} to {hi}")),
        }
    }

    fn apply(self, a: &mut Autoscaling, v: i32) {
        match self {
            Knob::Target => a.target_cpu_utilization = Some(v),
            Knob::Min => a.min_replicas = Some(v),
            Knob::Max => a.max_replicas = Some(v),
            Knob::ScaleUpWindow | Knob::ScaleDownWindow => {
                let up = self == Knob::ScaleUpWindow;
                rules_mut(&mut a.behavior, up).stabilization_window_seconds = Some(v);
            }
            Knob::ScaleUpPercent | Knob::ScaleDownPercent => {
                let up = self == Knob::ScaleUpPercent;
                rules_mut(&mut a.behavior, up).policies = Some(vec![HPAScalingPolicy {
                    type_: "Percent".into(),
                    value: v,
                    period_seconds: 15,
                }]);
            }
        }
    }
}

fn rules_mut(b: &mut Option<HorizontalPodAutoscalerBehavior>, up: bool) -> &mut HPAScalingRules {
    let b = b.get_or_insert_with(Default::default);
    let r = if up {
        &mut b.scale_up
    } else {
        &mut b.scale_down
    };
    r.get_or_insert_with(HPAScalingRules::default)
}

/// One `--vary`.
#[derive(Debug, Clone)]
struct Vary {
    service: Option<String>,
    knob: Knob,
    values: Vec<i32>,
}

fn parse_vary(arg: &str) -> Result<Vary, String> {
    let fail = |why: String| format!("--vary {arg}: {why}");
    let (lhs, rhs) = arg
        .split_once('=')
        .ok_or_else(|| fail("expected [SERVICE.]KEY=V1,V2,...".into()))?;
    let (service, key) = match lhs.rsplit_once('.') {
        Some((s, k)) if !s.is_empty() => (Some(s.to_string()), k),
        _ => (None, lhs),
    };
    let knob = Knob::ALL
        .iter()
        .find(|(n, _)| *n == key)
        .map(|(_, k)| *k)
        .ok_or_else(|| {
            let keys: Vec<&str> = Knob::ALL.iter().map(|(n, _)| *n).collect();
            fail(format!(
                "unknown key {key:?}; expected one of {}",
                keys.join(", ")
            ))
        })?;
    let mut values = Vec::new();
    for v in rhs.split(',').map(str::trim) {
        let v = knob.value(v).map_err(&fail)?;
        if !values.contains(&v) {
            values.push(v);
        }
    }
    if values.is_empty() {
        return Err(fail("no values".into()));
    }
    Ok(Vary {
        service,
        knob,
        values,
    })
}

/// One point of the grid: a value per `--vary`, in their order.
type Point = Vec<i32>;

fn grid(varies: &[Vary]) -> Vec<Point> {
    let mut points: Vec<Point> = vec![Vec::new()];
    for v in varies {
        points = points
            .into_iter()
            .flat_map(|p| {
                v.values.iter().map(move |x| {
                    let mut q = p.clone();
                    q.push(*x);
                    q
                })
            })
            .collect();
    }
    points
}

fn grid_size(varies: &[Vary]) -> Option<usize> {
    varies
        .iter()
        .try_fold(1usize, |n, v| n.checked_mul(v.values.len()))
}

fn describe(varies: &[Vary], point: &Point) -> String {
    varies
        .iter()
        .zip(point)
        .map(|(v, x)| {
            let value = match v.knob {
                Knob::ScaleUpWindow | Knob::ScaleDownWindow => format!("{x}s"),
                _ => x.to_string(),
            };
            match &v.service {
                Some(s) => format!("{s}.{}={value}", v.knob.name()),
                None => format!("{}={value}", v.knob.name()),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `mesh` with the settings of `point` applied to its autoscaled services (written out
/// in full on each, so the file says what runs).
fn apply(mesh: &ValidMesh, varies: &[Vary], point: &Point) -> ServiceMesh {
    let mut m = mesh.mesh().clone();
    for svc in &mut m.spec.services {
        let Some(r) = mesh.service(&svc.name).and_then(|s| s.autoscaling.clone()) else {
            continue;
        };
        let mut a = Autoscaling {
            enabled: None,
            min_replicas: Some(r.min_replicas),
            max_replicas: Some(r.max_replicas),
            target_cpu_utilization: Some(r.target_cpu_utilization),
            behavior: r.behavior,
        };
        for (v, x) in varies.iter().zip(point) {
            if v.service.as_deref().is_none_or(|s| s == svc.name) {
                v.knob.apply(&mut a, *x);
            }
        }
        svc.autoscaling = Some(a);
    }
    m
}

/// A candidate's figures on one platform.
#[derive(Debug, Clone, Serialize)]
struct Score {
    steps: u32,
    steps_failed: u32,
    pod_seconds: Option<f64>,
    latency_p99_ms_max: Option<f64>,
    error_ratio_max: Option<f64>,
}

impl Score {
    fn of(a: &Analysis, mesh: &str) -> Score {
        let steps: Vec<_> = a.steps.iter().filter(|s| s.mesh == mesh).collect();
        let max = |f: &dyn Fn(&&meshbench_analysis::tables::StepRow) -> Option<f64>| {
            steps.iter().filter_map(f).reduce(f64::max)
        };
        let pod_seconds: Vec<f64> = a
            .services
            .iter()
            .filter(|s| s.mesh == mesh)
            .filter_map(|s| s.replica_seconds)
            .collect();
        Score {
            steps: steps.len() as u32,
            steps_failed: steps
                .iter()
                .filter(|s| s.slo_pass != Some(true) || s.partial)
                .count() as u32,
            pod_seconds: (!pod_seconds.is_empty()).then(|| pod_seconds.iter().sum()),
            latency_p99_ms_max: max(&|s| s.latency_p99_ms),
            error_ratio_max: max(&|s| s.error_ratio),
        }
    }

    /// Fewer failed steps first; among candidates failing as many, the one that misses
    /// by less (fewer errors, then the lower p99); among those meeting every SLO, fewer
    /// pod-seconds, then the lower p99.
    fn better(&self, other: &Score) -> std::cmp::Ordering {
        let miss = |s: &Score| {
            if s.steps_failed == 0 {
                (0.0, 0.0)
            } else {
                (
                    s.error_ratio_max.unwrap_or(1.0),
                    s.latency_p99_ms_max.unwrap_or(f64::INFINITY),
                )
            }
        };
        let cost = |s: &Score| {
            (
                s.pod_seconds.unwrap_or(f64::INFINITY),
                s.latency_p99_ms_max.unwrap_or(f64::INFINITY),
            )
        };
        let (ma, mb, ca, cb) = (miss(self), miss(other), cost(self), cost(other));
        self.steps_failed
            .cmp(&other.steps_failed)
            .then(ma.0.total_cmp(&mb.0))
            .then(ma.1.total_cmp(&mb.1))
            .then(ca.0.total_cmp(&cb.0))
            .then(ca.1.total_cmp(&cb.1))
    }
}

/// A candidate and what became of it.
#[derive(Debug, Clone)]
struct Candidate {
    index: u32,
    settings: String,
    mesh: Option<ServiceMesh>,
    note: Option<String>,
    simulated: Option<(Score, String)>,
    measured: Option<(Score, String)>,
}

/// `tune.json`, per mesh.
#[derive(Debug, Serialize)]
struct MeshResult {
    mesh: String,
    candidates: usize,
    winner: Option<Pick>,
    as_written: Option<Pick>,
    mesh_file: Option<String>,
}

#[derive(Debug, Serialize)]
struct Pick {
    candidate: u32,
    settings: String,
    platform: &'static str,
    score: Score,
    run_dir: String,
}

/// Runs `meshbench tune`; returns the exit code: 0 the winner meets every SLO, 1 invalid
/// input, 2 usage, 3 no candidate meets them all (the best is still written), 4 a run
/// failed.
pub fn run(args: &TuneArgs) -> u8 {
    let varies = match args
        .vary
        .iter()
        .map(|v| parse_vary(v))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("error: {msg}");
            return exit::USAGE;
        }
    };
    match grid_size(&varies) {
        Some(n) if n <= args.max_candidates => {}
        n => {
            eprintln!(
                "error: --vary: {} candidates, more than --max-candidates {}; vary fewer values",
                n.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                args.max_candidates
            );
            return exit::USAGE;
        }
    }
    let bundle = Bundle::load_files(&args.files);
    if !bundle.is_valid() {
        for d in &bundle.diagnostics {
            eprintln!("{d}");
        }
        eprintln!("nothing was tuned: fix the problems above (see `meshbench validate`)");
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
    let file = crate::search::source_file(bench.benchmark(), &bundle);
    if let Err(msg) = tunable(&file, &bench, &meshes, &varies) {
        eprintln!("error: {msg}");
        return exit::INVALID;
    }
    let name = format!("{}-tune", bench.name());
    let trials = match Trials::new(&args.trial, &args.out, &name) {
        Ok(t) => t,
        Err(code) => return code,
    };
    Tune {
        args,
        bench: &bench,
        varies,
        trials,
        rows: Vec::new(),
    }
    .all(&meshes)
}

/// SLOs to score by, and every `--vary` naming an autoscaled service of every mesh.
fn tunable(
    file: &str,
    bench: &ValidBenchmark,
    meshes: &[ValidMesh],
    varies: &[Vary],
) -> Result<(), String> {
    if !crate::search::has_slos(bench.benchmark()) {
        return Err(format!(
            "{file}: Benchmark {}: spec.slos: tune scores settings by SLO compliance first; expected \
             `slos` with a latency, error-rate or achieved-ratio bound",
            bench.name()
        ));
    }
    for mesh in meshes {
        let scaled: Vec<&str> = mesh
            .services()
            .iter()
            .filter(|s| s.autoscaling.is_some())
            .map(|s| s.name.as_str())
            .collect();
        if scaled.is_empty() {
            return Err(format!(
                "ServiceMesh {}: spec.services[*].autoscaling: no service autoscales; tune \
                 varies HPA settings",
                mesh.name()
            ));
        }
        for v in varies {
            if let Some(s) = &v.service
                && !scaled.contains(&s.as_str())
            {
                return Err(format!(
                    "--vary {s}.{}: ServiceMesh {} has no autoscaled service {s:?} (autoscaled: {})",
                    v.knob.name(),
                    mesh.name(),
                    scaled.join(", ")
                ));
            }
        }
    }
    Ok(())
}

struct Tune<'a> {
    args: &'a TuneArgs,
    bench: &'a ValidBenchmark,
    varies: Vec<Vary>,
    trials: Trials,
    rows: Vec<TuneRow>,
}

impl Tune<'_> {
    fn all(mut self, meshes: &[ValidMesh]) -> u8 {
        let mut results = Vec::new();
        let mut code = exit::OK;
        for mesh in meshes {
            match self.mesh(mesh) {
                Ok(r) => {
                    let pass = r.winner.as_ref().is_some_and(|w| w.score.steps_failed == 0);
                    if !pass {
                        code = code.max(exit::SLO_FAILED);
                    }
                    results.push(r);
                }
                Err(msg) => {
                    eprintln!("error: mesh {}: {msg}", mesh.name());
                    code = exit::RUN_FAILED;
                    break;
                }
            }
        }
        let written = write_table_files(self.trials.path(), &self.rows)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                write_atomic(&self.trials.path().join("tune.json"), |w| {
                    serde_json::to_writer_pretty(w, &results)
                })
                .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            eprintln!("error: {e}");
            return exit::RUN_FAILED;
        }
        for r in &results {
            print_result(r);
        }
        println!("tune directory: {}", self.trials.path().display());
        code
    }

    fn mesh(&mut self, mesh: &ValidMesh) -> Result<MeshResult, String> {
        let mut candidates = self.candidates(mesh);
        if !self.trials.quiet() {
            eprintln!(
                "meshbench: tuning {} on {}: {} candidate(s) → {}",
                mesh.name(),
                self.bench.name(),
                candidates.len(),
                self.trials.path().display()
            );
        }
        for c in &mut candidates {
            self.evaluate(mesh, c, Platform::Simulated)?;
        }
        let mut order: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].simulated.is_some())
            .collect();
        order.sort_by(|&a, &b| {
            score(&candidates[a], Platform::Simulated)
                .better(score(&candidates[b], Platform::Simulated))
        });
        for &i in order.iter().take(self.args.confirm as usize) {
            self.evaluate(mesh, &mut candidates[i], Platform::Measured)?;
        }
        let result = self.result(mesh, &candidates, &order)?;
        self.record(mesh, &candidates, &order);
        Ok(result)
    }

    /// Candidate 0 as written, then the grid; invalid settings (min above max) kept
    /// with a note.
    fn candidates(&self, mesh: &ValidMesh) -> Vec<Candidate> {
        let mut out = vec![Candidate {
            index: 0,
            settings: "as written".into(),
            mesh: Some(mesh.mesh().clone()),
            note: None,
            simulated: None,
            measured: None,
        }];
        for (i, point) in grid(&self.varies).iter().enumerate() {
            let m = apply(mesh, &self.varies, point);
            let note = ValidMesh::new(m.clone())
                .err()
                .map(|e| format!("invalid: {e}"));
            out.push(Candidate {
                index: i as u32 + 1,
                settings: describe(&self.varies, point),
                mesh: note.is_none().then_some(m),
                note,
                simulated: None,
                measured: None,
            });
        }
        out
    }

    fn evaluate(
        &self,
        mesh: &ValidMesh,
        c: &mut Candidate,
        platform: Platform,
    ) -> Result<(), String> {
        let Some(m) = &c.mesh else {
            return Ok(());
        };
        let mut bench = self.bench.benchmark().clone();
        bench.spec.meshes = vec![mesh.name().to_string()];
        let docs = [yaml(m)?, yaml(&bench)?];
        let label = format!("{}-{:03}", mesh.name(), c.index);
        let trial = self.trials.run(&label, &docs, platform)?;
        let s = Score::of(&trial.analysis, mesh.name());
        if !self.trials.quiet() {
            eprintln!(
                "   {:>9} #{:<3} {:<40} failed steps {}/{}, {} pod-s, p99 max {} ms",
                platform.name(),
                c.index,
                c.settings,
                s.steps_failed,
                s.steps,
                figure(s.pod_seconds, 0),
                figure(s.latency_p99_ms_max, 1)
            );
        }
        let run_dir = trial.run_dir.display().to_string();
        match platform {
            Platform::Simulated => c.simulated = Some((s, run_dir)),
            Platform::Measured => c.measured = Some((s, run_dir)),
        }
        Ok(())
    }

    /// The winner: the best measured candidate, or the best simulated one without real
    /// runs; its ServiceMesh is written as `winner-<mesh>.yaml`.
    fn result(
        &self,
        mesh: &ValidMesh,
        cs: &[Candidate],
        order: &[usize],
    ) -> Result<MeshResult, String> {
        let pick = |c: &Candidate, platform: Platform| {
            let (s, dir) = match platform {
                Platform::Simulated => c.simulated.as_ref(),
                Platform::Measured => c.measured.as_ref(),
            }?;
            Some(Pick {
                candidate: c.index,
                settings: c.settings.clone(),
                platform: platform.name(),
                score: s.clone(),
                run_dir: dir.clone(),
            })
        };
        let measured = cs
            .iter()
            .filter(|c| c.measured.is_some())
            .min_by(|a, b| score(a, Platform::Measured).better(score(b, Platform::Measured)));
        let winner = match measured {
            Some(c) => pick(c, Platform::Measured),
            None => order
                .first()
                .and_then(|&i| pick(&cs[i], Platform::Simulated)),
        };
        let as_written = cs
            .first()
            .and_then(|c| pick(c, Platform::Measured).or_else(|| pick(c, Platform::Simulated)));
        let mut mesh_file = None;
        if let Some(w) = &winner
            && let Some(m) = cs
                .iter()
                .find(|c| c.index == w.candidate)
                .and_then(|c| c.mesh.as_ref())
        {
            let name = format!("winner-{}.yaml", mesh.name());
            let text = yaml(m)?;
            write_atomic(&self.trials.path().join(&name), |f| {
                std::io::Write::write_all(f, text.as_bytes())
            })
            .map_err(|e| e.to_string())?;
            mesh_file = Some(name);
        }
        Ok(MeshResult {
            mesh: mesh.name().to_string(),
            candidates: cs.len(),
            winner,
            as_written,
            mesh_file,
        })
    }

    fn record(&mut self, mesh: &ValidMesh, cs: &[Candidate], order: &[usize]) {
        let mut measured: Vec<&Candidate> = cs.iter().filter(|c| c.measured.is_some()).collect();
        measured.sort_by(|a, b| score(a, Platform::Measured).better(score(b, Platform::Measured)));
        for c in cs {
            let rank = order.iter().position(|&i| cs[i].index == c.index);
            self.rows.push(row(mesh, c, Platform::Simulated, rank));
        }
        for (rank, c) in measured.iter().enumerate() {
            self.rows.push(row(mesh, c, Platform::Measured, Some(rank)));
        }
    }
}

fn score(c: &Candidate, platform: Platform) -> &Score {
    static NONE: Score = Score {
        steps: 0,
        steps_failed: u32::MAX,
        pod_seconds: None,
        latency_p99_ms_max: None,
        error_ratio_max: None,
    };
    match platform {
        Platform::Simulated => c.simulated.as_ref(),
        Platform::Measured => c.measured.as_ref(),
    }
    .map_or(&NONE, |(s, _)| s)
}

fn row(mesh: &ValidMesh, c: &Candidate, platform: Platform, rank: Option<usize>) -> TuneRow {
    let ran = match platform {
        Platform::Simulated => c.simulated.as_ref(),
        Platform::Measured => c.measured.as_ref(),
    };
    TuneRow {
        mesh: mesh.name().to_string(),
        candidate: c.index,
        settings: c.settings.clone(),
        platform: platform.name().into(),
        rank: rank.map(|r| r as u32 + 1),
        steps: ran.map_or(0, |(s, _)| s.steps),
        steps_failed: ran.map_or(0, |(s, _)| s.steps_failed),
        pod_seconds: ran.and_then(|(s, _)| s.pod_seconds),
        latency_p99_ms_max: ran.and_then(|(s, _)| s.latency_p99_ms_max),
        error_ratio_max: ran.and_then(|(s, _)| s.error_ratio_max),
        run_dir: ran.map(|(_, d)| d.clone()),
        note: c.note.clone(),
    }
}

/// A figure for the terminal; `–` when there is none (a step without successes has no
/// latency).
fn figure(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

fn print_result(r: &MeshResult) {
    let line = |p: &Pick| {
        format!(
            "#{} {} ({}: {} of {} steps failed an SLO, {} pod-seconds, p99 max {} ms)",
            p.candidate,
            p.settings,
            p.platform,
            p.score.steps_failed,
            p.score.steps,
            figure(p.score.pod_seconds, 0),
            figure(p.score.latency_p99_ms_max, 1)
        )
    };
    match &r.winner {
        Some(w) => println!("mesh {}: best {}", r.mesh, line(w)),
        None => println!("mesh {}: no candidate could be run", r.mesh),
    }
    if let Some(a) = &r.as_written {
        println!("mesh {}: as written {}", r.mesh, line(a));
    }
    if let Some(f) = &r.mesh_file {
        println!("mesh {}: winning ServiceMesh: {f}", r.mesh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vary_flags_parse_into_a_grid_and_refuse_bad_values() {
        let v = [
            parse_vary("backend.target=50,70").unwrap(),
            parse_vary("max=3, 4,4").unwrap(),
            parse_vary("scale-down-window=0s,1m").unwrap(),
        ];
        assert_eq!(v[0].service.as_deref(), Some("backend"));
        assert_eq!(
            v[1].values,
            vec![3, 4],
            "duplicates dropped, spaces allowed"
        );
        assert_eq!(v[2].values, vec![0, 60]);
        assert_eq!(grid_size(&v), Some(8));
        let g = grid(&v);
        assert_eq!(g.len(), 8);
        assert_eq!(
            describe(&v, &g[7]),
            "backend.target=70 max=4 scale-down-window=60s"
        );
        for bad in [
            "target=0",
            "target=101",
            "max=x",
            "speed=3",
            "min",
            "scale-up-window=1.5s",
            "scale-up-window=2h",
        ] {
            let e = parse_vary(bad).unwrap_err();
            assert!(e.starts_with(&format!("--vary {bad}:")), "{e}");
        }
    }
}
