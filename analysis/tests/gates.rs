//! Gates on run directories with known content: a back end 30 % more expensive breaks the
//! latency and CPU gates outside the noise; a change inside the noise passes; expectations
//! files judge fixed bounds; the JUnit report parses with a JUnit reader and the Markdown
//! summary says what failed where.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use meshbench_analysis::ci::Document;
use meshbench_analysis::gate::{self, Bound, GateError, Noise, Rule, RunTables};
use meshbench_analysis::synthetic::{self, SecondSpec};
use meshbench_analysis::{RunDir, expect, metric};
use quick_junit::{NonSuccessKind, TestCaseStatus};

const T: i64 = 1_700_000_000_000;

/// Per-repetition factors of the latency: the runs' noise.
const NOISE_A: [f64; 3] = [1.0, 1.02, 0.98];
/// Other noise of the same size, with a mean 0.3 % above A's.
const NOISE_C: [f64; 3] = [1.03, 0.99, 0.99];

/// A run of mesh `m` (services svc-0 → svc-1, steps "20rps" and "40rps", 3 repetitions)
/// whose every request takes 20 ms × noise × `cost`, and whose back end (svc-1) burns
/// `cost` times the synthetic CPU.
fn run(root: &Path, name: &str, noise: [f64; 3], cost: f64) -> PathBuf {
    let mut size = synthetic::Size::one_hour_100_pods();
    size.services = 2;
    size.max_pods_per_service = 2;
    size.steps = 2;
    size.step_seconds = 5;
    size.repetitions = 3;
    let start = DateTime::<Utc>::from_timestamp_millis(T).expect("valid");
    let mut data = synthetic::run(&size, "m", start);
    data.meta.benchmark = name.into();
    for l in &mut data.load {
        let latency = 20_000.0 * noise[l.repetition as usize] * cost;
        let seconds: Vec<SecondSpec> = (0..5)
            .map(|_| SecondSpec {
                ok_latencies_us: vec![latency as u64; 20],
                errors: 0,
                timeouts: 0,
            })
            .collect();
        l.stage = synthetic::stage(
            l.step,
            &l.stage.name,
            l.stage.started_unix_ms as i64,
            l.stage.target_rate,
            &seconds,
        );
    }
    for s in data
        .samples
        .iter_mut()
        .filter(|s| s.service == "svc-1" && s.metric == metric::CPU_CORES)
    {
        s.value *= cost;
    }
    let dir = RunDir::create(root, name, start).expect("run dir");
    dir.update(&data).expect("write run");
    dir.path().to_owned()
}

fn tables(dir: &Path) -> RunTables {
    RunTables::read(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn rules(text: &[&str]) -> Vec<Rule> {
    text.iter().map(|r| Rule::parse(r).expect("rule")).collect()
}

#[test]
fn a_back_end_30_percent_more_expensive_breaks_the_latency_and_cpu_gates() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tables(&run(tmp.path(), "base", NOISE_A, 1.0));
    let b = tables(&run(tmp.path(), "costlier", NOISE_A, 1.3));
    let report = gate::judge_runs(
        &rules(&[
            "latency_p99_ms:+10%",
            "throughput_rps:-5%",
            "cpu_cores_avg@svc-1:+10%",
            "run.latency_p99_ms:+10%",
        ]),
        &a,
        &b,
    )
    .unwrap();
    assert!(!report.passed(), "{report}");
    let failed: Vec<_> = report.failures().collect();
    for figure in ["latency_p99_ms", "cpu_cores_avg"] {
        for step in [0, 1] {
            let c = failed
                .iter()
                .find(|c| c.figure == figure && c.step == Some(step))
                .unwrap_or_else(|| panic!("{figure} at step {step} passed:\n{report}"));
            assert_eq!(c.noise, Noise::Outside, "{report}");
            let line = c.describe();
            assert!(line.contains(&format!(", step {step} (")), "{line}");
            assert!(line.contains("outside the noise"), "{line}");
        }
    }
    // The whole-run rule fails once, and throughput did not change.
    assert!(
        failed
            .iter()
            .any(|c| c.step.is_none() && c.figure == "latency_p99_ms")
    );
    assert!(
        report
            .checks
            .iter()
            .filter(|c| c.figure == "throughput_rps")
            .all(|c| c.pass),
        "{report}"
    );
    let p99 = failed
        .iter()
        .find(|c| c.figure == "latency_p99_ms")
        .unwrap();
    let (over, pct) = p99.excess().unwrap();
    // 26 ms against 20 ms + 10 %: beyond by ~4 ms, ~18 % of the bound.
    assert!(over > 3.0 && over < 5.0, "{over}");
    assert!(pct.is_some_and(|p| p > 15.0 && p < 21.0), "{pct:?}");
    let text = report.to_string();
    assert!(text.contains("gates: FAIL"), "{text}");
}

#[test]
fn a_change_inside_the_noise_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tables(&run(tmp.path(), "base", NOISE_A, 1.0));
    let c = tables(&run(tmp.path(), "same", NOISE_C, 1.0));
    // No rise tolerated at all: only the noise lets C's 0.3 % pass.
    let report = gate::judge_runs(&rules(&["latency_p99_ms:+0%"]), &a, &c).unwrap();
    assert!(report.passed(), "{report}");
    assert!(
        report
            .checks
            .iter()
            .any(|c| c.noise == Noise::Inside
                && c.measured.is_some_and(|m| c.bound.breached_by(m.mean))),
        "the noise decided no check:\n{report}"
    );
}

#[test]
fn rules_naming_what_the_runs_lack_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tables(&run(tmp.path(), "base", NOISE_A, 1.0));
    let err = gate::judge_runs(&rules(&["replica_seconds@backend:+10%"]), &a, &a).unwrap_err();
    assert!(matches!(err, GateError::Mismatch(_)), "{err}");
    assert!(err.to_string().contains("no service \"backend\""), "{err}");
}

fn expectations(dir: &Path, text: &str) -> (PathBuf, expect::Expectations) {
    let path = dir.join("expectations.yaml");
    std::fs::write(&path, text).unwrap();
    let exp = expect::load(&path).unwrap_or_else(|e| panic!("{e}"));
    (path, exp)
}

#[test]
fn expectations_fail_beyond_their_bounds_and_never_inside_the_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tables(&run(tmp.path(), "base", NOISE_A, 1.0));
    let b = tables(&run(tmp.path(), "costlier", NOISE_A, 1.3));
    let (path, exp) = expectations(
        tmp.path(),
        "\
steps:
  - step: 0
    latency_p99_ms: { max: 19.9 }   # below A's mean of 20 ms, inside its ±2 % noise
    throughput_ratio: { min: 0.4 }
  - step: 40rps
    latency_p99_ms: { max: 22 }
    services:
      svc-1:
        cpu_cores_avg: { max: 1000 }
  - step: 7
    error_ratio: { max: 0.01 }
run:
  latency_p99_ms: { max: 22 }
",
    );
    let ra = gate::judge_expectations(&exp, &path, &a).unwrap();
    let missing: Vec<_> = ra.failures().collect();
    // Only the step the run does not have fails, as not measured.
    assert_eq!(missing.len(), 1, "{ra}");
    assert_eq!(missing[0].gate, "steps[2].error_ratio.max");
    assert!(missing[0].measured.is_none());
    assert!(missing[0].describe().contains("was not measured"), "{ra}");
    let inside = ra
        .checks
        .iter()
        .find(|c| c.gate == "steps[0].latency_p99_ms.max")
        .unwrap();
    assert!(inside.pass && inside.noise == Noise::Inside, "{ra}");
    assert!(
        inside
            .measured
            .is_some_and(|m| inside.bound.breached_by(m.mean)),
        "the mean is beyond the bound, the noise lets it pass:\n{ra}"
    );

    let rb = gate::judge_expectations(&exp, &path, &b).unwrap();
    let failed: Vec<&str> = rb.failures().map(|c| c.gate.as_str()).collect();
    for gate in [
        "steps[0].latency_p99_ms.max",
        "steps[1].latency_p99_ms.max",
        "run.latency_p99_ms.max",
        "steps[2].error_ratio.max",
    ] {
        assert!(failed.contains(&gate), "{gate} passed:\n{rb}");
    }
    let step1 = rb
        .checks
        .iter()
        .find(|c| c.gate == "steps[1].latency_p99_ms.max")
        .unwrap();
    assert_eq!(
        (step1.step, step1.step_name.as_deref()),
        (Some(1), Some("40rps"))
    );
    assert_eq!(step1.bound, Bound::Max(22.0));
}

#[test]
fn expectations_naming_an_unknown_mesh_or_service_are_refused_at_their_path() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tables(&run(tmp.path(), "base", NOISE_A, 1.0));
    let (path, exp) = expectations(
        tmp.path(),
        "steps:\n  - mesh: shop\n    step: 0\n    error_ratio: { max: 0.01 }\n",
    );
    let err = gate::judge_expectations(&exp, &path, &a).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("steps[0].mesh: no mesh \"shop\""),
        "{err}"
    );
    let (path, exp) = expectations(
        tmp.path(),
        "steps:\n  - step: 0\n    services:\n      cart:\n        replicas_max: { max: 3 }\n",
    );
    let err = gate::judge_expectations(&exp, &path, &a).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "steps[0].services.cart.replicas_max: mesh m of the run has no service \"cart\""
        ),
        "{err}"
    );
}

#[test]
fn the_junit_report_parses_with_a_junit_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tables(&run(tmp.path(), "base", NOISE_A, 1.0));
    let b = tables(&run(tmp.path(), "costlier", NOISE_A, 1.3));
    let report = gate::judge_runs(&rules(&["latency_p99_ms:+10%"]), &a, &b).unwrap();
    let xml = Document::for_gates(&report, Some(&b)).junit.to_xml();
    let parsed =
        quick_junit::Report::deserialize_from_str(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    assert_eq!(parsed.tests, 2, "{xml}");
    assert_eq!(parsed.failures, 2, "{xml}");
    let cases = &parsed.test_suites[0].test_cases;
    for (case, step) in cases.iter().zip(["step 0 (20rps)", "step 1 (40rps)"]) {
        assert!(case.name.as_str().contains(step), "{}", case.name.as_str());
        match &case.status {
            TestCaseStatus::NonSuccess {
                kind: NonSuccessKind::Failure,
                message,
                description,
                ..
            } => {
                let message = message.as_ref().map(|m| m.as_str()).unwrap_or_default();
                assert!(
                    message.contains("latency_p99_ms") && message.contains("beyond by"),
                    "{message}"
                );
                let detail = description.as_ref().map(|d| d.as_str()).unwrap_or_default();
                assert!(detail.contains("bound: ≤"), "{detail}");
            }
            other => panic!("not a failure: {other:?}"),
        }
    }

    // The run's report: one case for completion, then one per step, repetition and SLO
    // (the synthetic run has a latency and an error-rate objective).
    let xml = Document::for_run(&a).junit.to_xml();
    let parsed =
        quick_junit::Report::deserialize_from_str(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    assert_eq!(parsed.tests, 1 + 2 * 3 * 2, "{xml}");
    assert_eq!(parsed.failures, 0, "{xml}");
    let names: Vec<&str> = parsed.test_suites[0]
        .test_cases
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        names.contains(&"step 1 (40rps), repetition 2: latency p99 ≤ 50 ms"),
        "{names:?}"
    );
}

#[test]
fn the_markdown_summary_names_the_failed_gate_the_steps_and_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tables(&run(tmp.path(), "base", NOISE_A, 1.0));
    let b = tables(&run(tmp.path(), "costlier", NOISE_A, 1.3));
    let report = gate::judge_runs(
        &rules(&["latency_p99_ms:+10%", "throughput_rps:-5%"]),
        &a,
        &b,
    )
    .unwrap();
    let doc = Document::for_gates(&report, Some(&b));
    let md = &doc.markdown;
    assert!(
        md.contains("### meshbench run `costlier`: ✅ completed, every SLO held"),
        "{md}"
    );
    assert!(md.contains("| m | 2 | 1 40rps | 40 rps |"), "{md}");
    assert!(md.contains("### Gates against the baseline run"), "{md}");
    assert!(md.contains("❌ 2 of 4 check(s) failed"), "{md}");
    let first = md
        .lines()
        .find(|l| l.starts_with("| `"))
        .expect("a gate row");
    // Failures first.
    assert!(
        first.starts_with("| `latency_p99_ms:+10%` | mesh m, step 0 (20rps) | latency_p99_ms |"),
        "{first}"
    );
    assert!(
        first.ends_with("| outside the noise | ❌ FAIL |"),
        "{first}"
    );
    assert!(
        md.contains(&format!(
            "Report: `{}`",
            b.dir.join("report.html").display()
        )),
        "{md}"
    );

    // Written atomically where asked, appended to the job summary — twice is two sections.
    let junit = tmp.path().join("out/gate.junit.xml");
    let summary = tmp.path().join("out/gate.md");
    let step = tmp.path().join("step-summary.md");
    let written = doc
        .write(Some(&junit), Some(&summary), Some(&step))
        .unwrap();
    assert_eq!(written, vec![junit.clone(), summary.clone(), step.clone()]);
    doc.write(None, Some(&step), Some(&step)).unwrap();
    assert_eq!(std::fs::read_to_string(&summary).unwrap(), *md);
    let job = std::fs::read_to_string(&step).unwrap();
    assert_eq!(job.matches("### Gates against").count(), 2, "{job}");
    assert!(
        std::fs::read_to_string(&junit)
            .unwrap()
            .starts_with("<?xml")
    );
}
