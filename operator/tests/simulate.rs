//! `meshbench simulate` as a user runs it: the shipped experiments simulated to a run
//! directory `report` and `compare` read, the HPA scaling the simulated mesh, the same
//! seed giving the same figures, and bad input refused with the file named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meshbench");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Simulates `experiment` into a new directory under `out`; returns the run directory.
fn simulate(experiment: &str, out: &Path, extra: &[&str]) -> PathBuf {
    let got = Command::new(BIN)
        .arg("simulate")
        .arg(root().join(experiment))
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("meshbench simulate");
    assert!(
        matches!(got.status.code(), Some(0 | 3)),
        "simulate {experiment}: {:?}\n{}",
        got.status,
        String::from_utf8_lossy(&got.stderr)
    );
    std::fs::read_dir(out)
        .expect("out dir")
        .next()
        .expect("a run directory")
        .expect("entry")
        .path()
}

#[path = "common/csv.rs"]
mod csv_rows;

fn csv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    csv_rows::rows(&text)
}

fn num(row: &BTreeMap<String, String>, key: &str) -> f64 {
    row.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in {row:?}"))
}

#[test]
fn the_hpa_experiment_scales_the_simulated_mesh_and_reports_like_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = simulate("experiments/hpa.yaml", tmp.path(), &[]);
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["platform"], "simulated");
    assert!(dir.join("report.html").is_file());
    let steps = csv(&dir.join("steps.csv"));
    assert_eq!(steps.len(), 4, "two meshes × two steps: {steps:?}");
    for s in &steps {
        let target = num(s, "target_rate_rps");
        let served = num(s, "throughput_rps");
        assert!(
            (served - target).abs() <= 0.1 * target + 0.5,
            "below capacity the simulated mesh serves what is offered: {s:?}"
        );
    }
    let load = steps
        .iter()
        .find(|s| s["mesh"] == "hpa-cold" && s["step_name"] == "load")
        .unwrap();
    // 12 ms of CPU per request on a 500m limit, ~1 ms at the front end, two hops.
    let mean = num(load, "latency_mean_ms");
    assert!((12.0..40.0).contains(&mean), "mean latency {mean} ms");

    let services = csv(&dir.join("services.csv"));
    let backend = |mesh: &str| {
        services
            .iter()
            .find(|r| r["mesh"] == mesh && r["step_name"] == "load" && r["service"] == "backend")
            .unwrap_or_else(|| panic!("backend row of {mesh}"))
            .clone()
    };
    let cold = backend("hpa-cold");
    assert!(
        num(&cold, "replicas_max") >= 2.0,
        "the HPA scaled the cold back end up: {cold:?}"
    );
    let warm = backend("hpa-warm");
    assert!(
        num(&warm, "replicas_min") < 5.0,
        "the HPA scaled the warm back end down: {warm:?}"
    );

    // `report` rebuilds from the tables; `compare` reads the directory as a run's.
    let report = Command::new(BIN).arg("report").arg(&dir).output().unwrap();
    assert!(report.status.success(), "{report:?}");
    let compare = Command::new(BIN)
        .arg("compare")
        .arg(&dir)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(compare.status.success(), "{compare:?}");
}

/// The quickstart's latency figures simulated from `spec` with `--seed seed`.
fn figures(spec: &Path, seed: &str) -> Vec<(String, String, String)> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = simulate(
        spec.to_str().unwrap(),
        tmp.path(),
        &["--seed", seed, "--quiet"],
    );
    csv(&dir.join("steps.csv"))
        .iter()
        .map(|r| {
            (
                r["latency_mean_ms"].clone(),
                r["latency_p99_ms"].clone(),
                r["requests"].clone(),
            )
        })
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_figures_and_another_seed_other_ones() {
    // The quickstart's back end draws an exponential delay; without the spec's own seed
    // the draws come from --seed.
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("unseeded.yaml");
    let text = std::fs::read_to_string(root().join("experiments/quickstart.yaml")).unwrap();
    assert!(
        text.contains("            seed: 7\n"),
        "the quickstart seeds its delay"
    );
    std::fs::write(&spec, text.replace("            seed: 7\n", "")).unwrap();
    let a = figures(&spec, "7");
    assert_eq!(a, figures(&spec, "7"));
    assert_ne!(a, figures(&spec, "8"));
    // A delay seeded in the spec draws the same values whatever --seed says, as the
    // worker does.
    let seeded = root().join("experiments/quickstart.yaml");
    assert_eq!(figures(&seeded, "7"), figures(&seeded, "8"));
}

#[test]
fn bad_input_is_refused_with_the_file_named_and_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: meshbench.io/v1alpha1\nkind: Benchmark\nmetadata: {name: b}\nspec:\n  meshes: [nope]\n  target: {service: x, path: /}\n  profile: {stages: [{rate: -3, duration: 10s}]}\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let got = Command::new(BIN)
        .arg("simulate")
        .arg(&bad)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(got.status.code(), Some(1), "{got:?}");
    let err = String::from_utf8_lossy(&got.stderr);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(!out.exists(), "nothing written for invalid input");
}

fn search(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("search")
        .args(args)
        .output()
        .expect("meshbench search")
}

/// The simulator alone (`--confirm 0`): the capacity model's 49.6 rps brackets the
/// answer, bisection narrows it to 5 %, and every rate tried is in search.csv with its
/// verdict and a runnable candidate file.
#[test]
fn search_narrows_the_simulated_answer_to_the_capacity() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = root().join("operator/tests/data/search-single.yaml");
    let got = search(&[
        spec.to_str().unwrap(),
        "--out",
        tmp.path().to_str().unwrap(),
        "--confirm",
        "0",
        "--warmup",
        "3s",
        "--measure",
        "20s",
    ]);
    let stdout = String::from_utf8_lossy(&got.stdout);
    let stderr = String::from_utf8_lossy(&got.stderr);
    assert_eq!(got.status.code(), Some(0), "{stdout}\n{stderr}");
    let dir = std::fs::read_dir(tmp.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("search.json")).unwrap()).unwrap();
    let mesh = &json["meshes"][0];
    let answer = mesh["answer_rps"].as_f64().expect("an answer");
    let fail = mesh["simulated_min_fail_rps"]
        .as_f64()
        .expect("a failing rate");
    // 500m ÷ (10 ms + the worker's cost): just under 50 rps; the SLO holds below it.
    assert!((44.0..50.0).contains(&answer), "{json}");
    assert!(fail > answer && fail <= answer * 1.05 + 0.1, "{json}");
    assert!(
        mesh["confidence"]
            .as_str()
            .unwrap()
            .contains("simulated only")
    );
    let rows = csv(&dir.join("search.csv"));
    assert_eq!(rows[0]["platform"], "model", "{rows:?}");
    assert!(rows.len() >= 4, "{rows:?}");
    for r in &rows[1..] {
        assert_eq!(r["platform"], "simulated");
        let rate = num(r, "rate_rps");
        let pass = r["slo_pass"] == "true";
        // Every verdict agrees with the bracket: passes at or below the answer, failures
        // at or above the first failure.
        assert_eq!(pass, rate <= answer, "{r:?}");
        let run = dir.join(&r["run_dir"]);
        assert!(run.join("steps.csv").is_file(), "{}", run.display());
        // simulated/<label>/<run>: the candidate of the same label is beside it.
        let label = r["run_dir"].split('/').nth(1).unwrap();
        let candidate = dir.join("candidates").join(format!("{label}.yaml"));
        assert!(candidate.is_file(), "{r:?}");
    }
    assert!(dir.join("search.parquet").is_file());
    assert!(stdout.contains("highest rate within the SLOs"), "{stdout}");
}

#[test]
fn search_refuses_what_it_cannot_search_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let base =
        std::fs::read_to_string(root().join("operator/tests/data/search-single.yaml")).unwrap();
    let out = tmp.path().join("out");
    let cases = [
        (
            base.replace("{ model: open, maxInFlight: 400 }", "{ model: closed }")
                .replace("rate: 10", "users: 4"),
            "spec.load.model",
        ),
        (
            base.split("  slos:").next().unwrap().to_string(),
            "spec.slos",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = tmp.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        let got = search(&[file.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&got.stderr);
        assert_eq!(got.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("bad-{i}.yaml")) && err.contains(want),
            "{err}"
        );
    }
    let spec = root().join("operator/tests/data/search-single.yaml");
    for (bad, flag) in [
        ("--precision=0", "--precision"),
        ("--min-rate=-1", "--min-rate"),
        ("--max-rate=0.5", "--max-rate"),
        ("--measure=0s", "--measure"),
    ] {
        let got = search(&[spec.to_str().unwrap(), "--out", out.to_str().unwrap(), bad]);
        let err = String::from_utf8_lossy(&got.stderr);
        assert_eq!(got.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(flag), "{err}");
    }
    assert!(!out.exists(), "nothing written for refused input");
}

fn tune(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("tune")
        .args(args)
        .output()
        .expect("meshbench tune")
}

/// The prototype's thesis experiment at a tenth of its rate: with the default HPAs the
/// two services share the node's six pods 3 + 3 and the back end cannot keep up; `tune`
/// must find that two front-end pods and four back-end pods meet the SLO, with fewer
/// pod-seconds than the settings as written, and write that ServiceMesh.
#[test]
fn tune_finds_the_allocation_the_default_hpas_miss() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = root().join("experiments/allocation.yaml");
    let got = tune(&[
        spec.to_str().unwrap(),
        "--node-cpu",
        "1500m",
        "--vary",
        "frontend.max=1,2,3",
        "--vary",
        "backend.max=3,4,5",
        "--confirm",
        "0",
        "--quiet",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&got.stdout);
    let stderr = String::from_utf8_lossy(&got.stderr);
    assert_eq!(got.status.code(), Some(0), "{stdout}\n{stderr}");
    let dir = std::fs::read_dir(tmp.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tune.json")).unwrap()).unwrap();
    let mesh = &json[0];
    assert_eq!(mesh["as_written"]["score"]["steps_failed"], 1, "{json}");
    let winner = &mesh["winner"];
    assert_eq!(winner["settings"], "frontend.max=2 backend.max=4", "{json}");
    assert_eq!(winner["score"]["steps_failed"], 0, "{json}");
    assert!(
        winner["score"]["pod_seconds"].as_f64().unwrap()
            < mesh["as_written"]["score"]["pod_seconds"].as_f64().unwrap(),
        "{json}"
    );
    // As written, the node's six pods went 3 + 3 (the rest Pending).
    let as_written = dir.join(mesh["as_written"]["run_dir"].as_str().unwrap());
    let running = |svc: &str| {
        let rows = csv(&as_written.join("services.csv"));
        let r = rows.iter().find(|r| r["service"] == svc).unwrap();
        num(r, "replicas_final") - num(r, "replicas_pending_max")
    };
    assert_eq!((running("frontend"), running("backend")), (3.0, 3.0));
    // The winning ServiceMesh is valid and carries the settings.
    let file = dir.join(mesh["mesh_file"].as_str().unwrap());
    let check = Command::new(BIN)
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("maxReplicas: 4"), "{text}");
    let rows = csv(&dir.join("tune.csv"));
    assert_eq!(rows.len(), 10, "{rows:?}");
    let mut ranks: Vec<f64> = rows.iter().map(|r| num(r, "rank")).collect();
    ranks.sort_by(f64::total_cmp);
    assert_eq!(ranks, (1..=10).map(f64::from).collect::<Vec<_>>());
}

#[test]
fn tune_refuses_what_it_cannot_tune_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let spec = root().join("experiments/allocation.yaml");
    let spec = spec.to_str().unwrap();
    let o = out.to_str().unwrap();
    for (args, code, want) in [
        (
            vec![spec, "--vary", "speed=3", "--out", o],
            2,
            "--vary speed=3: unknown key",
        ),
        (
            vec![spec, "--vary", "target=0,50", "--out", o],
            2,
            "expected an integer from 1 to 100",
        ),
        (
            vec![
                spec,
                "--vary",
                "max=1,2,3,4,5,6,7,8,9,10",
                "--vary",
                "min=1,2,3,4,5,6,7,8,9,10",
                "--vary",
                "target=10,20,30,40,50,60,70,80,90,100,11",
                "--out",
                o,
            ],
            2,
            "1100 candidates",
        ),
        (
            vec![spec, "--vary", "nope.max=3", "--out", o],
            1,
            "no autoscaled service \"nope\"",
        ),
        (
            vec![
                root()
                    .join("experiments/hpa.yaml")
                    .to_str()
                    .unwrap()
                    .to_owned()
                    .leak(),
                "--vary",
                "max=3",
                "--out",
                o,
            ],
            1,
            "spec.slos",
        ),
    ] {
        let got = tune(&args);
        let err = String::from_utf8_lossy(&got.stderr);
        assert_eq!(got.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(!out.exists(), "nothing written for refused input");
}
