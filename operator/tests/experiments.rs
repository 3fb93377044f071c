//! End-to-end: `meshbench run` as a process on the experiments under `experiments/`,
//! each checked against the expected outcome written beside it, plus the failure paths
//! (a replica SIGKILLed mid-step, Ctrl-C). Real workers, real sockets, real cgroups where
//! the host allows them.
//!
//! The runs measure capacity, so they never overlap: every test takes [`serial`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use meshbench_analysis::Analysis;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn experiment(name: &str) -> PathBuf {
    root().join("experiments").join(format!("{name}.yaml"))
}

fn out_dir(test: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("meshbench-e2e-{test}-"))
        .tempdir()
        .expect("temp dir")
}

fn meshbench(args: &[&str], out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshbench"));
    cmd.arg("run")
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .stdin(Stdio::null());
    cmd
}

/// Runs to completion; returns the output and the run directory.
fn run(args: &[&str], out: &Path) -> (Output, PathBuf) {
    let output = meshbench(args, out).output().expect("start meshbench");
    (output, run_dir(out))
}

fn run_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("read --out")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "one run directory in {}", out.display());
    dirs.into_iter().next().expect("run dir")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn load(dir: &Path) -> Analysis {
    meshbench_analysis::load(dir).unwrap_or_else(|e| panic!("load {}: {e}", dir.display()))
}

/// The step row of `mesh` at target `rate`.
fn step<'a>(a: &'a Analysis, mesh: &str, name: &str) -> &'a meshbench_analysis::tables::StepRow {
    a.steps
        .iter()
        .find(|s| s.mesh == mesh && s.step_name == name)
        .unwrap_or_else(|| panic!("no step {mesh}/{name} in {:?}", a.steps))
}

fn service<'a>(
    a: &'a Analysis,
    mesh: &str,
    step_name: &str,
    service: &str,
) -> &'a meshbench_analysis::tables::ServiceRow {
    a.services
        .iter()
        .find(|s| s.mesh == mesh && s.step_name == step_name && s.service == service)
        .unwrap_or_else(|| panic!("no services row {mesh}/{step_name}/{service}"))
}

fn ok_rate(a: &Analysis, mesh: &str, name: &str) -> f64 {
    step(a, mesh, name).throughput_rps.unwrap_or(0.0)
}

fn throughput(a: &Analysis, mesh: &str, name: &str) -> f64 {
    step(a, mesh, name).throughput_rps.unwrap_or(0.0)
}

fn p99(a: &Analysis, mesh: &str, name: &str) -> f64 {
    step(a, mesh, name).latency_p99_ms.unwrap_or(f64::NAN)
}

fn within(value: f64, expected: f64, tolerance: f64) -> bool {
    (value - expected).abs() <= expected * tolerance
}

/// The predicted capacity of a sweep run, from the `steps` table's model columns.
fn predicted_max(a: &Analysis) -> f64 {
    a.steps
        .iter()
        .find_map(|s| s.predicted_max_throughput_rps)
        .expect("predicted_max_throughput_rps in steps")
}

/// Checks the knee shared by the chain and fan-in sweeps.
fn assert_knee(a: &Analysis, mesh: &str, all: &str) {
    let capacity = predicted_max(a);
    // 500m ÷ 20 ms, less the worker's own CPU per request and its idle load.
    assert!(within(capacity, 25.0, 0.02), "plan: {capacity} rps\n{all}");
    for (name, rate) in [("rate-10", 10.0), ("rate-20", 20.0)] {
        let ok = ok_rate(a, mesh, name);
        assert!(within(ok, rate, 0.05), "{name}: {ok} rps\n{all}");
        assert_eq!(step(a, mesh, name).errors, Some(0), "{name}\n{all}");
    }
    for name in ["rate-30", "rate-40"] {
        let t = throughput(a, mesh, name);
        assert!(
            within(t, capacity, 0.10),
            "{name}: throughput {t} rps is not within 10 % of the predicted {capacity}\n{all}"
        );
    }
    let (low, high) = (p99(a, mesh, "rate-10"), p99(a, mesh, "rate-40"));
    assert!(high > 4.0 * low, "p99 {low} ms → {high} ms\n{all}");
}

/// The capacity model's target: below the knee, predicted mean and p99 latency within
/// ±20 % of the measured ones (the `steps` table's error columns). The model's per-hop
/// costs are those of release builds (measured there: mean −14 … −5 %, p99 −13 … 0 %).
/// Tests build our crates without optimisation, and on this 2-core CI machine the same
/// debug-build step measured a mean of 16 ms in one run and 28 ms in another: noise only
/// ever makes measurements slower, so there the prediction may fall short by up to 60 %
/// but still not exceed the measurement by more than 20 % (the old M/M/c model did, by
/// 60–80 %), and the p99 (one outlier in ~120 requests) is checked in release builds only.
fn assert_predictions(a: &Analysis, all: &str) {
    let (mean_range, p99_range) = if cfg!(debug_assertions) {
        ((-0.60, 0.20), None)
    } else {
        ((-0.20, 0.20), Some((-0.20, 0.20)))
    };
    let below_knee: Vec<_> = a
        .steps
        .iter()
        .filter(|s| !s.warmup && s.saturated == Some(false))
        .collect();
    assert!(!below_knee.is_empty(), "{all}");
    for s in below_knee {
        let checks = [
            ("mean", s.predicted_latency_mean_error, Some(mean_range)),
            ("p99", s.predicted_latency_p99_error, p99_range),
        ];
        for (what, error, range) in checks {
            let Some((low, high)) = range else { continue };
            let e = error.unwrap_or(f64::NAN);
            assert!(
                (low..=high).contains(&e),
                "{} {}: predicted {what} latency off by {:.0} % (mean {:?} vs {:?}, p99 {:?} vs {:?})\n{all}",
                s.mesh,
                s.step_name,
                e * 100.0,
                s.predicted_latency_mean_ms,
                s.latency_mean_ms,
                s.predicted_latency_p99_ms,
                s.latency_p99_ms,
            );
        }
    }
}

fn assert_report_files(dir: &Path) {
    for f in [
        "run.json",
        "report.html",
        "steps.parquet",
        "steps.csv",
        "services.parquet",
        "services.csv",
        "timeseries.parquet",
        "timeseries.csv",
        "latency.parquet",
        "latency.csv",
    ] {
        assert!(dir.join(f).is_file(), "{} missing", dir.join(f).display());
    }
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(html.contains("<svg"), "report.html has inline plots");
    assert!(!html.contains("http://") || !html.contains("<script src="));
}

/// `meshbench simulate` beside a measured run, on the same files and flags: per step the
/// measured and simulated throughput and mean and p99 latency are printed with the
/// simulation's error, and held to what the simulator promises (README, Simulation):
/// throughput within ±10 % at every step, past the knee too (so the knee), and the mean
/// latency within ±20 % below it at 10 rps or more. The p99 is printed, not held: the
/// model has no timing noise, and its p99 runs 7–57 % under the measured one.
fn simulated_beside(args: &[&str], measured: &Analysis, all: &str) -> Analysis {
    let out = out_dir("simulated");
    let got = Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .arg("simulate")
        .args(args)
        // The measured runs' workers are this debug build: the simulation measures their
        // costs rather than assume a release build's.
        .arg("--calibrate")
        .arg("--out")
        .arg(out.path())
        .arg("--quiet")
        .output()
        .expect("meshbench simulate");
    assert!(
        matches!(got.status.code(), Some(0 | 3)),
        "simulate: {}",
        text(&got)
    );
    let sim = load(&run_dir(out.path()));
    for m in &measured.steps {
        let s = step(&sim, &m.mesh, &m.step_name);
        let err = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if a > 0.0 => (b - a) / a,
            _ => f64::NAN,
        };
        let thr = err(m.throughput_rps, s.throughput_rps);
        let mean = err(m.latency_mean_ms, s.latency_mean_ms);
        let p99 = err(m.latency_p99_ms, s.latency_p99_ms);
        eprintln!(
            "simulated {}/{}: throughput {:.2} vs {:.2} rps ({:+.1} %), mean {:.2} vs {:.2} ms ({:+.1} %), p99 {:.2} vs {:.2} ms ({:+.1} %)",
            m.mesh,
            m.step_name,
            s.throughput_rps.unwrap_or(f64::NAN),
            m.throughput_rps.unwrap_or(f64::NAN),
            thr * 100.0,
            s.latency_mean_ms.unwrap_or(f64::NAN),
            m.latency_mean_ms.unwrap_or(f64::NAN),
            mean * 100.0,
            s.latency_p99_ms.unwrap_or(f64::NAN),
            m.latency_p99_ms.unwrap_or(f64::NAN),
            p99 * 100.0,
        );
        assert!(
            thr.abs() <= 0.10,
            "{}/{}: simulated throughput off by {:.1} %\n{all}",
            m.mesh,
            m.step_name,
            thr * 100.0
        );
        // Below the knee, at 10 rps or more: at 1 rps (hpa.yaml's idle step) the measured
        // mean carries what the model leaves out (scale-down in progress, idle wake-ups;
        // −16 % and −29 % on 2026-12-02, README).
        if m.saturated != Some(true) && m.target_rate_rps.unwrap_or(0.0) >= 10.0 {
            assert!(
                mean.abs() <= 0.20,
                "{}/{}: simulated mean latency off by {:.1} %\n{all}",
                m.mesh,
                m.step_name,
                mean * 100.0
            );
        }
    }
    sim
}

#[test]
fn quickstart_scales_the_backend_and_holds_its_slos() {
    let _g = serial();
    let out = out_dir("quickstart");
    let (o, dir) = run(&[experiment("quickstart").to_str().unwrap()], out.path());
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert_report_files(&dir);
    let a = load(&dir);
    assert_predictions(&a, &all);
    simulated_beside(&[experiment("quickstart").to_str().unwrap()], &a, &all);
    assert_eq!(a.steps.len(), 3, "{all}");
    assert_eq!(a.run.slo.pass, Some(true), "{all}");
    assert!(!a.run.meta.partial, "{all}");
    // Kubernetes' timings throughout: only what one machine cannot emulate is listed.
    assert_eq!(
        a.run.meta.deviations.len(),
        1,
        "{:?}",
        a.run.meta.deviations
    );
    for (name, rate) in [("step-0", 10.0), ("step-1", 25.0), ("step-2", 40.0)] {
        let ok = ok_rate(&a, "quickstart", name);
        assert!(within(ok, rate, 0.05), "{name}: {ok}\n{all}");
    }
    // 40 rps is ~80 % of one 500m back end, above its 50 % target: the HPA adds a replica.
    let backend = service(&a, "quickstart", "step-2", "backend");
    assert!(
        backend.replicas_max.unwrap_or(0.0) >= 2.0,
        "backend replicas {:?}\n{all}",
        backend.replicas_max
    );
    let frontend = service(&a, "quickstart", "step-2", "frontend");
    assert_eq!(frontend.replicas_max, Some(1.0), "{all}");
    assert!(frontend.cpu_cores_avg.unwrap_or(0.0) > 0.0, "{all}");
    // Below capacity: no step is saturated, and the report says so in served figures.
    for r in a.steps.iter().filter(|r| !r.warmup) {
        assert_eq!(
            r.saturated,
            Some(false),
            "{}: {:?}\n{all}",
            r.step_name,
            r.saturation
        );
    }
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(
        html.contains("served rps"),
        "step table shows served throughput"
    );
    assert!(
        html.contains("Served throughput vs requested rate"),
        "first plot"
    );
    assert!(
        html.contains("was not saturated up to 40.0 rps"),
        "saturation summary"
    );
    assert!(!html.contains("SATURATED"), "no saturated step");
}

/// One service of 40 ms CPU per request: under its 250m limit it serves ~6 rps, and even
/// unlimited on two cores at most ~50; the step asks for 60 rps.
const OVERLOAD: &str = r#"
apiVersion: meshbench.io/v1alpha1
kind: ServiceMesh
metadata: { name: overload }
spec:
  services:
    - name: solo
      resources:
        requests: { cpu: 250m, memory: 32Mi }
        limits: { cpu: 250m, memory: 128Mi }
      endpoints: [{ path: /, cpu: 40ms }]
---
apiVersion: meshbench.io/v1alpha1
kind: Benchmark
metadata: { name: overload }
spec:
  meshes: [overload]
  target: { service: solo, path: / }
  load: { model: open, maxInFlight: 400 }
  profile:
    stages: [{ rate: 60, duration: 6s }]
  settle: 1s
  requestTimeout: 3s
  slos:
    minAchievedRatio: 0.95
"#;

#[test]
fn past_capacity_the_throughput_slo_fails_and_the_report_says_where() {
    let _g = serial();
    let out = out_dir("overload");
    let spec = out.path().join("overload.yaml");
    std::fs::write(&spec, OVERLOAD).expect("write spec");
    let (o, dir) = run(&[spec.to_str().unwrap()], out.path());
    let all = text(&o);
    // The open loop sent 60 rps on schedule; the mesh could not serve it.
    assert_eq!(o.status.code(), Some(3), "SLO violation exits 3\n{all}");
    let a = load(&dir);
    let s = step(&a, "overload", "step-0");
    let sent = s.sent_rate_rps.unwrap_or(0.0);
    let served = s.throughput_rps.unwrap_or(f64::NAN);
    assert!(within(sent, 60.0, 0.05), "sent {sent}\n{all}");
    assert!(served < 0.9 * 60.0, "served {served}\n{all}");
    assert_eq!(s.saturated, Some(true), "{all}");
    let why = s.saturation.clone().unwrap_or_default();
    assert!(why.contains("predicted bottleneck solo"), "{why}");
    let violations = s.slo_violations.clone().unwrap_or_default();
    assert!(
        violations.contains("served throughput/target ≥ 0.95"),
        "{violations}\n{all}"
    );
    assert_eq!(a.run.slo.pass, Some(false));
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(
        html.contains("SATURATED: served"),
        "step marked saturated in report.html"
    );
    assert!(
        html.contains("mesh overload saturates at ~"),
        "summary in report.html"
    );
    assert!(
        html.contains("no rate was served within the SLOs"),
        "the sweep's verdict in report.html"
    );
    assert!(
        all.contains("mesh overload saturates at ~"),
        "terminal summary\n{all}"
    );
}

#[test]
fn chain_flattens_at_the_back_ends_predicted_capacity() {
    let _g = serial();
    let out = out_dir("chain");
    let (o, dir) = run(&[experiment("chain").to_str().unwrap()], out.path());
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    let a = load(&dir);
    assert_predictions(&a, &all);
    simulated_beside(&[experiment("chain").to_str().unwrap()], &a, &all);
    assert_knee(&a, "chain", &all);
    // The knee is stated, not left to inference: 40 rps is marked saturated at the back
    // end, and the run says where the mesh saturated.
    let s40 = step(&a, "chain", "rate-40");
    assert_eq!(s40.saturated, Some(true), "{all}");
    let why = s40.saturation.clone().unwrap_or_default();
    assert!(why.contains("predicted bottleneck backend"), "{why}");
    assert_eq!(step(&a, "chain", "rate-10").saturated, Some(false), "{all}");
    let summary = &a.run.saturation[0].summary;
    assert!(
        summary.starts_with("mesh chain saturates at ~"),
        "{summary}"
    );
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(
        html.contains(summary.as_str()),
        "report.html states: {summary}"
    );
    // The light front ends stay far below their limit; the back end sits at its limit.
    let backend = service(&a, "chain", "rate-40", "backend");
    let front = service(&a, "chain", "rate-40", "front-b");
    let limited = a.run.meta.limits.mode == meshbench_analysis::Enforcement::Enforced;
    if limited {
        assert!(
            backend.cpu_cores_avg.unwrap_or(0.0) > 0.4,
            "backend cpu {:?}\n{all}",
            backend.cpu_cores_avg
        );
    }
    assert!(front.cpu_cores_avg.unwrap_or(1.0) < 0.2, "{all}");
}

#[test]
fn fan_in_flattens_at_the_same_capacity() {
    let _g = serial();
    let out = out_dir("fan-in");
    let (o, dir) = run(&[experiment("fan-in").to_str().unwrap()], out.path());
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    let a = load(&dir);
    assert_predictions(&a, &all);
    simulated_beside(&[experiment("fan-in").to_str().unwrap()], &a, &all);
    assert_knee(&a, "fan-in", &all);
    assert_eq!(
        service(&a, "fan-in", "rate-40", "frontend").replicas_max,
        Some(3.0)
    );
}

#[test]
fn readiness_gating_trades_errors_for_latency_past_the_knee() {
    let _g = serial();
    let out = out_dir("readiness");
    let (o, dir) = run(&[experiment("readiness").to_str().unwrap()], out.path());
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    let a = load(&dir);
    assert_predictions(&a, &all);
    simulated_beside(&[experiment("readiness").to_str().unwrap()], &a, &all);
    for (name, rate) in [("rate-10", 10.0), ("rate-20", 20.0)] {
        let ok = ok_rate(&a, "readiness", name);
        assert!(within(ok, rate, 0.05), "{name}: {ok}\n{all}");
    }
    let top = step(&a, "readiness", "rate-40");
    let errors = top.error_ratio.unwrap_or(0.0);
    assert!(errors > 0.05, "error ratio {errors} at 40 rps\n{all}");
    let ok = ok_rate(&a, "readiness", "rate-40");
    assert!(within(ok, 25.0, 0.15), "successful {ok} rps at 40\n{all}");
    let p99 = top.latency_p99_ms.unwrap_or(f64::NAN);
    // Probes every second and a second to reach the routes: up to ~2 s of queue.
    assert!(p99 < 2000.0, "p99 of successes {p99} ms\n{all}");
}

#[test]
fn hpa_scales_the_bottleneck_up_under_load_and_down_after() {
    let _g = serial();
    let out = out_dir("hpa");
    let (o, dir) = run(
        &[experiment("hpa").to_str().unwrap(), "--hpa-sync", "5s"],
        out.path(),
    );
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    let a = load(&dir);
    assert_predictions(&a, &all);
    let cold = service(&a, "hpa-cold", "load", "backend");
    assert!(
        cold.replicas_final.unwrap_or(0.0) >= 2.0,
        "hpa-cold backend did not scale up: {cold:?}\n{all}"
    );
    // metrics-server's view (15 s scrapes, the rate between the two latest) holds the
    // load back: a window must be about half load before 30 rps (144 % of the request)
    // averages above 1.1 × the 60 % target, so no scale-up within ~7 s of the step's start.
    // Reading CPU at the sync itself (the old emulation) reacted within 1–6 s.
    let reaction = cold.scale_up_reaction_s.expect("hpa-cold scaled up");
    assert!(
        reaction >= 6.5,
        "scale-up {reaction} s after the load began\n{all}"
    );
    let deviations = &a.run.meta.deviations;
    assert!(
        deviations
            .iter()
            .any(|d| d.contains("HPA sync period 5s") && d.contains("Kubernetes: 15s")),
        "run.json records the shortened sync: {deviations:?}"
    );
    let warm = service(&a, "hpa-warm", "load", "backend");
    assert_eq!(warm.replicas_max, Some(5.0), "{warm:?}");
    assert!(
        warm.replicas_final.unwrap_or(5.0) < 5.0,
        "hpa-warm backend did not scale down under load: {warm:?}\n{all}"
    );
    for mesh in ["hpa-cold", "hpa-warm"] {
        let idle = service(&a, mesh, "idle", "backend");
        assert_eq!(
            idle.replicas_final,
            Some(1.0),
            "{mesh} backend did not return to 1 after the load: {idle:?}\n{all}"
        );
    }
    // The front end (1 ms per request) never needs a second replica.
    assert_eq!(
        service(&a, "hpa-cold", "load", "frontend").replicas_max,
        Some(1.0)
    );
    // The simulator runs the same HPA code on the same timings: the same counts at the
    // end of each step, and the first scale-up within one sync period (5 s). The warm
    // mesh's load step is left out: scaling down from 5 it may rest at 2 or 3, both
    // inside the HPA's tolerance band (measured 2, simulated 3 on 2026-12-02).
    let sim = simulated_beside(
        &[experiment("hpa").to_str().unwrap(), "--hpa-sync", "5s"],
        &a,
        &all,
    );
    for (mesh, step_name) in [
        ("hpa-cold", "load"),
        ("hpa-cold", "idle"),
        ("hpa-warm", "idle"),
    ] {
        {
            let (m, s) = (
                service(&a, mesh, step_name, "backend"),
                service(&sim, mesh, step_name, "backend"),
            );
            assert_eq!(
                m.replicas_final, s.replicas_final,
                "{mesh}/{step_name}: measured {m:?}, simulated {s:?}"
            );
        }
    }
    let simulated = service(&sim, "hpa-cold", "load", "backend")
        .scale_up_reaction_s
        .expect("the simulated cold mesh scaled up");
    eprintln!("first scale-up: measured {reaction} s, simulated {simulated} s");
    assert!(
        (simulated - reaction).abs() <= 5.0,
        "first scale-up measured {reaction} s, simulated {simulated} s"
    );
}

/// A small mesh with steps long enough to interfere with.
const SHORT: &str = r#"
apiVersion: meshbench.io/v1alpha1
kind: ServiceMesh
metadata: { name: short }
spec:
  defaults:
    resources:
      requests: { cpu: 100m, memory: 32Mi }
      limits: { cpu: 500m, memory: 128Mi }
  services:
    - name: front
      endpoints:
        - { path: /, cpu: 1ms, calls: [{ service: back, path: / }] }
    - name: back
      endpoints:
        - { path: /, cpu: 2ms }
---
apiVersion: meshbench.io/v1alpha1
kind: Benchmark
metadata: { name: short }
spec:
  meshes: [short]
  target: { service: front }
  load: { model: open }
  profile:
    stages:
      - { rate: 20, duration: 8s }
      - { rate: 20, duration: 4s }
  requestTimeout: 1s
"#;

/// Four half-core replicas on a node of one core: two fit, two stay Pending.
const CROWDED: &str = r#"
apiVersion: meshbench.io/v1alpha1
kind: ServiceMesh
metadata: { name: crowded }
spec:
  services:
    - name: web
      replicas: 4
      resources:
        requests: { cpu: 500m, memory: 32Mi }
        limits: { cpu: 500m, memory: 128Mi }
      endpoints:
        - { path: /, cpu: 20ms }
---
apiVersion: meshbench.io/v1alpha1
kind: Benchmark
metadata: { name: crowded }
spec:
  meshes: [crowded]
  target: { service: web }
  load: { model: open, maxInFlight: 400 }
  profile:
    stages:
      - { rate: 70, duration: 12s }
  requestTimeout: 10s
"#;

#[test]
fn replicas_that_do_not_fit_the_node_stay_pending_and_carry_nothing() {
    let _g = serial();
    let out = out_dir("crowded");
    let spec = out.path().join("crowded.yaml");
    std::fs::write(&spec, CROWDED).expect("write spec");
    let results = out.path().join("results");
    let (o, dir) = run(&[spec.to_str().unwrap(), "--node-cpu", "1"], &results);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    let a = load(&dir);
    let step = &a.steps[0];
    let web = a
        .services
        .iter()
        .find(|s| s.service == "web")
        .expect("web row");
    // The Deployment wants four; the node binds two, the other two stay Pending.
    assert_eq!(web.replicas_max, Some(4.0), "{all}");
    assert_eq!(web.replicas_pending_max, Some(2.0), "{web:?}");
    assert_eq!(web.predicted_replicas_pending, Some(2), "{web:?}");
    assert!(
        web.replicas_ready_avg.unwrap_or(0.0) <= 2.0 + 1e-9,
        "{web:?}"
    );
    let events = a.run.meta.warnings.join("\n");
    assert!(
        events.contains("Pending") && events.contains("Insufficient cpu"),
        "FailedScheduling events in run.json: {events}"
    );
    // The plan counts the two that fit: 2 × 0.5 core ÷ ~20 ms ≈ 49 rps, not ≈ 98.
    let predicted = step.predicted_max_throughput_rps.expect("prediction");
    assert!((45.0..=50.0).contains(&predicted), "plan: {predicted} rps");
    let carried = step.throughput_rps.unwrap_or(0.0);
    assert!(
        within(carried, predicted, 0.15),
        "carried {carried} rps, predicted {predicted} rps for the admitted replicas\n{all}"
    );
}

/// One gated, autoscaled back end driven past one replica's capacity (500m ÷ 20 ms).
const GATED_HPA: &str = r#"
apiVersion: meshbench.io/v1alpha1
kind: ServiceMesh
metadata: { name: gated }
spec:
  services:
    - name: backend
      resources:
        requests: { cpu: 500m, memory: 32Mi }
        limits: { cpu: 500m, memory: 128Mi }
      autoscaling:
        minReplicas: 1
        maxReplicas: 3
        targetCPUUtilization: 80
      readiness: { maxInFlight: 4, period: 1s }
      endpoints:
        - { path: /, cpu: 20ms }
---
apiVersion: meshbench.io/v1alpha1
kind: Benchmark
metadata: { name: gated }
spec:
  meshes: [gated]
  target: { service: backend }
  load: { model: open, maxInFlight: 200 }
  profile:
    stages:
      - { rate: 10, duration: 35s }
      - { rate: 40, duration: 35s }
  requestTimeout: 5s
"#;

/// Readiness gating takes an overloaded pod out of its Service, and its keep-alive
/// connections keep it overloaded. The HPA sets an unready pod aside within its CPU
/// initialization period (shortened here to 10 s, with 5 s syncs and scrapes, all
/// recorded as deviations) and after it only if it has not been ready since its first
/// 30 s. This pod served 35 s at 10 rps before the step, so its unready transition is
/// dated after that and the HPA counts its CPU and scales up; dated at the pod's start
/// (as before the lifecycle was tracked) it would be set aside for good. (With the
/// upstream 5 min initialization period it is set aside for the whole step, as on a
/// cluster: measured, the step ends at one replica with 539 requests shed.)
#[test]
fn under_readiness_gating_the_hpa_still_scales_up() {
    let _g = serial();
    let out = out_dir("gated-hpa");
    let spec = out.path().join("gated.yaml");
    std::fs::write(&spec, GATED_HPA).expect("write spec");
    let results = out.path().join("results");
    let args = [
        spec.to_str().unwrap(),
        "--hpa-sync",
        "5s",
        "--metric-resolution",
        "5s",
        "--hpa-cpu-initialization-period",
        "10s",
    ];
    let (o, dir) = run(&args, &results);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    let a = load(&dir);
    let before = service(&a, "gated", "step-0", "backend");
    assert_eq!(
        before.replicas_max,
        Some(1.0),
        "no scaling at 10 rps: {before:?}"
    );
    let backend = service(&a, "gated", "step-1", "backend");
    // The gate was shut for part of the step: fewer ready replicas than replicas.
    assert!(
        backend.replicas_ready_avg.unwrap_or(0.0) < backend.replicas_avg.unwrap_or(0.0) - 0.1,
        "the readiness gate closed: {backend:?}"
    );
    assert!(
        backend.replicas_max.unwrap_or(0.0) >= 2.0,
        "the HPA scaled up: {backend:?}\n{all}"
    );
    let deviations = a.run.meta.deviations.join("\n");
    assert!(
        deviations.contains("HPA CPU initialization period 10s"),
        "{deviations}"
    );
}

fn short_spec(dir: &Path) -> PathBuf {
    let p = dir.join("short.yaml");
    std::fs::write(&p, SHORT).expect("write spec");
    p
}

/// Pids whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn pod_name(pid: u32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0).find_map(|kv| {
        kv.strip_prefix(b"POD_NAME=")
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// Waits until the run has its replicas up and load flowing (a step started).
fn wait_for_replicas(child: &Child, want: usize) -> Vec<(u32, String)> {
    let start = Instant::now();
    loop {
        let pods: Vec<(u32, String)> = children(child.id())
            .into_iter()
            .filter_map(|p| pod_name(p).map(|n| (p, n)))
            .collect();
        if pods.len() >= want {
            return pods;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "replicas never started: {pods:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn leftover_cgroups(run_id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for base in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/memory",
    ] {
        if let Ok(rd) = std::fs::read_dir(base) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().contains(run_id) {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

/// Starts `meshbench run` on the short spec and returns once its first step is under way,
/// with the replicas' (pid, pod name).
fn start_short_run(out: &Path) -> (Child, Vec<(u32, String)>) {
    let spec = short_spec(out);
    let child = meshbench(&[spec.to_str().unwrap()], out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pods = wait_for_replicas(&child, 2);
    std::thread::sleep(Duration::from_secs(4));
    (child, pods)
}

#[test]
fn a_replica_killed_mid_step_is_restarted_and_the_run_completes() {
    let _g = serial();
    let out = out_dir("sigkill");
    let (child, pods) = start_short_run(out.path());
    // Kill the back end as the OOM killer would.
    let (victim, _) = pods
        .iter()
        .find(|(_, n)| n.contains("back"))
        .cloned()
        .expect("back end replica");
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("kill replica");
    let o = child.wait_with_output().expect("wait");
    let all = text(&o);
    // The run completes (0: all SLOs held, none were set) and says what happened.
    assert_eq!(o.status.code(), Some(0), "{all}");
    let dir = run_dir(out.path());
    let a = load(&dir);
    assert!(!a.run.meta.partial, "{all}");
    assert_eq!(a.steps.len(), 2, "{all}");
    assert!(
        a.run.meta.warnings.iter().any(|w| w.contains("restarted")),
        "no restart recorded in run.json warnings: {:?}\n{all}",
        a.run.meta.warnings
    );
    // The restarted replica serves the second step.
    let second = &a.steps[1];
    assert!(
        within(second.throughput_rps.unwrap_or(0.0), 20.0, 0.1),
        "{second:?}\n{all}"
    );
    assert!(!alive(victim));
}

#[test]
fn ctrl_c_writes_a_partial_report_and_leaves_nothing_behind() {
    let _g = serial();
    let out = out_dir("sigint");
    let (child, pods) = start_short_run(out.path());
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("SIGINT");
    let o = child.wait_with_output().expect("wait");
    let all = text(&o);
    assert_eq!(o.status.code(), Some(4), "{all}");
    let dir = run_dir(out.path());
    let a = load(&dir);
    assert!(a.run.meta.partial, "run.json not marked partial\n{all}");
    assert_report_files(&dir);
    for (pid, name) in &pods {
        assert!(!alive(*pid), "replica {name} ({pid}) outlived the run");
    }
    let run_id = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(leftover_cgroups(&run_id), Vec::<PathBuf>::new());
}

#[test]
fn collects_through_a_real_prometheus() {
    let _g = serial();
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("prometheus").is_file()));
    if !on_path {
        // CI installs Debian's prometheus (scripts/install-test-deps.sh); elsewhere the
        // test may be skipped explicitly, never silently.
        assert!(
            std::env::var_os("MESHBENCH_SKIP_PROMETHEUS").is_some(),
            "no `prometheus` on PATH: run scripts/install-test-deps.sh, or set MESHBENCH_SKIP_PROMETHEUS=1"
        );
        return;
    }
    let out = out_dir("prometheus");
    let spec = short_spec(out.path());
    let (o, dir) = run(
        &[spec.to_str().unwrap(), "--prometheus", "auto"],
        out.path(),
    );
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert!(
        all.contains("prometheus: started at http://127.0.0.1:"),
        "{all}"
    );
    assert!(dir.join("prometheus/prometheus.yml").is_file());
    let a = load(&dir);
    // The pods are named as in a cluster (the series came from PromQL, not the runner).
    let back_pod = "short-back-local-0";
    let csv = std::fs::read_to_string(dir.join("timeseries.csv")).expect("timeseries.csv");
    // ts,mesh,repetition,step,service,pod,metric,value
    let cpu: Vec<f64> = csv
        .lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() == 8 && f[5] == back_pod && f[6] == "cpu_cores")
        .filter_map(|f| f[7].parse().ok())
        .collect();
    assert!(
        cpu.iter().any(|c| *c > 0.0),
        "no CPU series of {back_pod} from Prometheus\n{all}"
    );
    let back = service(&a, "short", "step-0", "back");
    // A time-weighted mean of ones: equal to 1 up to rounding.
    assert!(
        back.replicas_avg.is_some_and(|r| (r - 1.0).abs() < 1e-9),
        "{back:?}"
    );
    // ~20 rps reached the back end. The step's mean includes the seconds where the
    // 4 s rate window still reaches back before the load began, so judge the median
    // of the per-second rates PromQL returned for the step.
    let mut rps: Vec<f64> = csv
        .lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| {
            f.len() == 8 && f[3] == "0" && f[4] == "back" && f[6] == "worker_requests_per_s"
        })
        .filter_map(|f| f[7].parse().ok())
        .collect();
    rps.sort_by(f64::total_cmp);
    assert!(rps.len() >= 4, "worker rps series {rps:?}\n{all}");
    let median = rps[rps.len() / 2];
    assert!(within(median, 20.0, 0.15), "worker rps {rps:?}\n{all}");
    assert!(back.cpu_cores_avg.unwrap_or(0.0) > 0.0, "{back:?}");
    // Prometheus is stopped with the run.
    assert!(
        !std::process::Command::new("pgrep")
            .args(["-f", &dir.join("prometheus").display().to_string()])
            .status()
            .is_ok_and(|s| s.success()),
        "Prometheus outlived the run"
    );
}

/// On a host whose cgroups cannot be written (here: a mount namespace with every cgroup
/// hierarchy remounted read-only) a mesh with limits is not run at all: its figures
/// would silently be those of an unlimited mesh.
#[test]
fn limits_that_cannot_be_enforced_stop_the_run_before_it_starts() {
    let _g = serial();
    let out = out_dir("cannot-enforce");
    let spec = short_spec(out.path());
    let script = r#"for m in $(awk '$9 ~ /^cgroup/ {print $5}' /proc/self/mountinfo); do
                      mount -o remount,ro,bind "$m" || exit 97
                    done
                    exec "$@""#;
    let o = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(env!("CARGO_BIN_EXE_meshbench"))
        .args(["run", spec.to_str().unwrap(), "--quiet", "--out"])
        .arg(out.path())
        .stdin(Stdio::null())
        .output();
    let o = match o {
        Ok(o) if o.status.code() != Some(97) && !text(&o).contains("unshare failed") => o,
        _ => {
            eprintln!(
                "skipped: no mount namespace with read-only cgroups here (needs root and unshare)"
            );
            return;
        }
    };
    let all = text(&o);
    assert_eq!(o.status.code(), Some(4), "{all}");
    assert!(
        all.contains("cannot enforce") && all.contains("--no-limits"),
        "{all}"
    );
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(left.is_empty(), "a run directory was left: {left:?}");
}

#[test]
fn without_limits_the_run_works_and_says_so() {
    let _g = serial();
    let out = out_dir("no-limits");
    let spec = short_spec(out.path());
    let (o, dir) = run(&[spec.to_str().unwrap(), "--no-limits"], out.path());
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert!(
        all.contains("limits are NOT enforced"),
        "no warning on the terminal\n{all}"
    );
    let a = load(&dir);
    assert_eq!(
        a.run.meta.limits.mode,
        meshbench_analysis::Enforcement::NotEnforced,
        "{all}"
    );
    assert!(
        a.run
            .meta
            .warnings
            .iter()
            .any(|w| w.contains("NOT enforced")),
        "{:?}",
        a.run.meta.warnings
    );
    // CPU still comes from /proc when there is no cgroup accounting.
    let back = service(&a, "short", "step-0", "back");
    assert!(back.cpu_cores_avg.unwrap_or(0.0) > 0.0, "{back:?}");
    assert_eq!(
        leftover_cgroups(dir.file_name().unwrap().to_str().unwrap()),
        Vec::<PathBuf>::new()
    );
}

/// `meshbench search` end to end: the simulator (calibrated on this debug build) narrows
/// the answer, and real runs confirm it. The single service carries ~50 rps less the
/// debug worker's own cost; the answer must be a rate a real run passed at, below one a
/// real or simulated run failed at, and close to that capacity.
#[test]
fn search_finds_the_highest_rate_within_the_slos_and_real_runs_confirm_it() {
    let _g = serial();
    let out = out_dir("search");
    let spec = root().join("operator/tests/data/search-single.yaml");
    let o = Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .arg("search")
        .arg(&spec)
        .args(["--calibrate", "--warmup", "3s", "--measure", "10s", "--out"])
        .arg(out.path())
        .output()
        .expect("meshbench search");
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    let dir = run_dir(out.path());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("search.json")).unwrap()).unwrap();
    let mesh = &json["meshes"][0];
    let answer = mesh["answer_rps"]
        .as_f64()
        .unwrap_or_else(|| panic!("{json}\n{all}"));
    assert_eq!(
        mesh["measured_max_pass_rps"].as_f64(),
        Some(answer),
        "{json}"
    );
    assert!((35.0..52.0).contains(&answer), "{json}\n{all}");
    let fail = mesh["measured_min_fail_rps"]
        .as_f64()
        .or(mesh["simulated_min_fail_rps"].as_f64())
        .unwrap_or_else(|| panic!("no failing rate\n{json}"));
    assert!(fail > answer, "{json}");
    // The confirming runs are ordinary run directories with their measured step.
    let measured: Vec<PathBuf> = std::fs::read_dir(dir.join("measured"))
        .expect("measured/")
        .flatten()
        .map(|e| run_dir(&e.path()))
        .collect();
    assert!(!measured.is_empty() && measured.len() <= 2, "{measured:?}");
    let at_answer = measured
        .iter()
        .map(|d| load(d))
        .find(|a| a.steps[0].target_rate_rps == Some(answer))
        .unwrap_or_else(|| panic!("no real run at {answer}\n{all}"));
    assert_eq!(at_answer.steps[0].slo_pass, Some(true), "{all}");
    let p99 = at_answer.steps[0].latency_p99_ms.unwrap();
    assert!(p99 <= 100.0, "{p99}");
}

/// `meshbench tune` with a real run: the best simulated candidate is run with `meshbench
/// run`, and the winner is the measured one, with its own run directory and scores.
#[test]
fn tune_confirms_its_best_candidate_with_a_real_run() {
    let _g = serial();
    let out = out_dir("tune");
    let o = Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .arg("tune")
        .arg(experiment("quickstart"))
        .args([
            "--vary",
            "backend.target=50,90",
            "--confirm",
            "1",
            "--calibrate",
            "--out",
        ])
        .arg(out.path())
        .output()
        .expect("meshbench tune");
    let all = text(&o);
    assert!(matches!(o.status.code(), Some(0 | 3)), "{all}");
    let dir = run_dir(out.path());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tune.json")).unwrap()).unwrap();
    let winner = &json[0]["winner"];
    assert_eq!(winner["platform"], "measured", "{json}\n{all}");
    let run = dir.join(winner["run_dir"].as_str().unwrap());
    let a = load(&run);
    assert_eq!(a.steps.len(), 3, "{all}");
    assert_eq!(
        winner["score"]["steps_failed"].as_u64(),
        Some(a.steps.iter().filter(|s| s.slo_pass != Some(true)).count() as u64),
        "{json}"
    );
    let rows = std::fs::read_to_string(dir.join("tune.csv")).unwrap();
    assert_eq!(
        rows.lines().filter(|l| l.contains(",measured,")).count(),
        1,
        "{rows}"
    );
    assert!(dir.join(json[0]["mesh_file"].as_str().unwrap()).is_file());
}
