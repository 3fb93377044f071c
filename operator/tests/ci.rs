//! The shipped CI pipelines work as shipped: the commands of `examples/ci/github-actions.yml`
//! and `examples/ci/gitlab-ci.yml`, read from those files (not copied here), run with this
//! build's `meshbench` against the quickstart and the checked-in expectations.
//!
//! The GitHub steps run the quickstart as it is: the run and the gate pass and the JUnit
//! files and summaries are written. The GitLab script runs it with the back end 30 % more
//! expensive: the gate fails (exit 3) naming the step and the figure.
//!
//! The runs measure capacity, so they never overlap: every test takes [`serial`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

use serde_yaml::Value;

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

fn example(name: &str) -> Value {
    let path = root().join("examples/ci").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A mapping of names to strings (`env:`, `variables:`).
fn strings(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The variables the pipelines must take from their environment, so a test can point them
/// at this build, a temporary directory and a changed experiment.
const OVERRIDDEN: &[&str] = &["MESHBENCH", "EXPERIMENT", "RESULTS"];

/// The GitHub workflow's environment and the `run:` scripts of its steps `ids`, in order.
fn github_steps(ids: &[&str]) -> (BTreeMap<String, String>, Vec<(String, String)>) {
    let wf = example("github-actions.yml");
    let mut env = strings(&wf["env"]);
    let mut steps = Vec::new();
    for job in wf["jobs"].as_mapping().expect("jobs").values() {
        let found: Vec<&Value> = job["steps"]
            .as_sequence()
            .map(|s| {
                s.iter()
                    .filter(|s| ids.contains(&s["id"].as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        if found.is_empty() {
            continue;
        }
        env.extend(strings(&job["env"]));
        for s in found {
            env.extend(strings(&s["env"]));
            let id = s["id"].as_str().unwrap_or_default().to_owned();
            let run = s["run"]
                .as_str()
                .unwrap_or_else(|| panic!("step {id} has no run:"));
            steps.push((id, run.to_owned()));
        }
    }
    let got: Vec<&str> = steps.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        got, ids,
        "github-actions.yml: steps with these ids, in order"
    );
    (env, steps)
}

/// The GitLab job's variables and its `script` as one shell script (GitLab runs the lines
/// in one shell).
fn gitlab_script(job: &str) -> (BTreeMap<String, String>, String) {
    let ci = example("gitlab-ci.yml");
    let mut env = strings(&ci["variables"]);
    env.extend(strings(&ci[job]["variables"]));
    let lines: Vec<&str> = ci[job]["script"]
        .as_sequence()
        .unwrap_or_else(|| panic!("gitlab-ci.yml: job {job} has no script"))
        .iter()
        .map(|l| l.as_str().expect("script lines are strings"))
        .collect();
    (env, lines.join("\n"))
}

fn check_commands(file: &str, env: &BTreeMap<String, String>, script: &str) {
    for var in OVERRIDDEN {
        assert!(env.contains_key(*var), "{file}: no variable {var}");
        assert!(
            script.contains(&format!("\"${var}\"")),
            "{file}: the commands do not use \"${var}\":\n{script}"
        );
    }
    assert!(
        !script.contains("${{"),
        "{file}: expressions cannot run outside GitHub:\n{script}"
    );
    assert!(
        !script.contains("cargo "),
        "{file}: the build belongs to another step:\n{script}"
    );
}

/// Runs `script` as the CI systems do (bash, errexit and pipefail) from the repository
/// root, with the pipeline's variables and `overrides`.
fn bash(
    script: &str,
    env: &BTreeMap<String, String>,
    overrides: &[(&str, &Path)],
    github: bool,
) -> Output {
    let mut cmd = Command::new("bash");
    if github {
        cmd.args(["--noprofile", "--norc"]);
    }
    cmd.args(["-eo", "pipefail", "-c", script])
        .current_dir(root())
        .envs(env)
        .env_remove("GITHUB_STEP_SUMMARY")
        .stdin(Stdio::null());
    for (k, v) in overrides {
        cmd.env(k, v);
    }
    cmd.output().expect("run bash")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A JUnit file read by Python's XML parser: (test cases, failure messages). `None` when
/// there is no python3 (the analysis crate's tests read JUnit with a JUnit reader).
fn junit(path: &Path) -> Option<(usize, Vec<String>)> {
    const READ: &str = r#"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "testsuites", root.tag
cases = root.findall("./testsuite/testcase")
assert int(root.get("tests")) == len(cases), (root.get("tests"), len(cases))
failures = [c.find("failure") for c in cases if c.find("failure") is not None]
assert int(root.get("failures")) == len(failures), (root.get("failures"), len(failures))
for c in cases:
    assert c.get("name") and c.get("classname"), c.attrib
print(len(cases))
for f in failures:
    print(f.get("message").replace("\n", " "))
"#;
    let out = match Command::new("python3")
        .arg("-c")
        .arg(READ)
        .arg(path)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("python3 not available ({e}): {} not parsed", path.display());
            return None;
        }
    };
    assert!(out.status.success(), "{}: {}", path.display(), text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = stdout.lines();
    let cases = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("case count");
    Some((cases, lines.map(str::to_owned).collect()))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_github_workflow_runs_and_gates_the_quickstart() {
    let _g = serial();
    let (env, steps) = github_steps(&["benchmark", "gate"]);
    let tmp = tempfile::tempdir().expect("temp dir");
    let results = tmp.path().join("results");
    let summary = tmp.path().join("step-summary.md");
    let experiment = root().join("experiments/quickstart.yaml");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_meshbench"));
    let all: Vec<&str> = steps.iter().map(|(_, s)| s.as_str()).collect();
    check_commands("github-actions.yml", &env, &all.join("\n"));
    for (id, script) in &steps {
        let o = bash(
            script,
            &env,
            &[
                ("MESHBENCH", bin.as_path()),
                ("EXPERIMENT", experiment.as_path()),
                ("RESULTS", results.as_path()),
                ("GITHUB_STEP_SUMMARY", summary.as_path()),
            ],
            true,
        );
        assert_eq!(o.status.code(), Some(0), "step {id}:\n{}", text(&o));
        if id == "gate" {
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(out.contains("gates: PASS"), "{}", text(&o));
        }
    }
    for (file, min_cases) in [("run.junit.xml", 10), ("gate.junit.xml", 15)] {
        if let Some((cases, failures)) = junit(&results.join(file)) {
            assert!(cases >= min_cases, "{file}: {cases} test cases");
            assert!(failures.is_empty(), "{file}: {failures:?}");
        }
    }
    let run_md = read(&results.join("run.md"));
    assert!(
        run_md.contains("| quickstart | 0 | 2 step-2 | 40 rps |"),
        "{run_md}"
    );
    assert!(run_md.contains("report.html`"), "{run_md}");
    let gate_md = read(&results.join("gate.md"));
    assert!(
        gate_md.contains("### Gates against the expectations"),
        "{gate_md}"
    );
    assert!(gate_md.contains("check(s) passed"), "{gate_md}");
    // Both steps appended to the job summary, the run's section first.
    let job = read(&summary);
    let (run_at, gate_at) = (job.find("### meshbench run"), job.find("### Gates against"));
    assert!(
        run_at.is_some() && gate_at.is_some() && run_at < gate_at,
        "{job}"
    );
}

#[test]
fn the_gitlab_job_fails_when_the_back_end_costs_30_percent_more() {
    let _g = serial();
    let (env, script) = gitlab_script("quickstart");
    check_commands("gitlab-ci.yml", &env, &script);
    let tmp = tempfile::tempdir().expect("temp dir");
    let results = tmp.path().join("results");
    // The pull request: the back end's endpoint burns 13 ms of CPU instead of 10 ms.
    let original = read(&root().join("experiments/quickstart.yaml"));
    assert_eq!(
        original.matches("cpu: 10ms").count(),
        1,
        "the back end's cost"
    );
    let experiment = tmp.path().join("quickstart-costlier.yaml");
    std::fs::write(&experiment, original.replace("cpu: 10ms", "cpu: 13ms")).expect("write");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_meshbench"));
    let o = bash(
        &script,
        &env,
        &[
            ("MESHBENCH", bin.as_path()),
            ("EXPERIMENT", experiment.as_path()),
            ("RESULTS", results.as_path()),
        ],
        false,
    );
    let all = text(&o);
    assert_eq!(o.status.code(), Some(3), "{all}");
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let failed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("FAIL "))
        .collect();
    assert!(
        failed
            .iter()
            .any(|l| l.contains(", step ") && l.contains("service backend: cpu_cores_avg")),
        "no failed CPU bound naming the step:\n{all}"
    );
    assert!(stdout.contains("gates: FAIL"), "{all}");
    if let Some((_, failures)) = junit(&results.join("gate.junit.xml")) {
        assert!(
            failures
                .iter()
                .any(|m| m.contains("cpu_cores_avg") && m.contains("step ")),
            "{failures:?}"
        );
    }
    let gate_md = read(&results.join("gate.md"));
    assert!(gate_md.contains("❌ FAIL"), "{gate_md}");
}

fn meshbench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .args(args)
        .current_dir(root())
        .env_remove("GITHUB_STEP_SUMMARY")
        .stdin(Stdio::null())
        .output()
        .expect("run meshbench")
}

#[test]
fn compare_refuses_bad_rules_and_expectations_with_what_was_expected() {
    // A malformed rule is a usage error naming the argument, before any file is read.
    let o = meshbench(&[
        "compare",
        "a",
        "b",
        "--fail-on",
        "latency_p99_ms:+10%,throughput_rps:5%",
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        err.contains("--fail-on") && err.contains("has no sign"),
        "{err}"
    );

    // Every problem of an expectations file, at file:line:column and field path.
    let tmp = tempfile::tempdir().expect("temp dir");
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "steps:\n  - step: 0\n    latency_p99: { max: 50 }\n    error_ratio: { max: 1%, avg: 2 }\n",
    )
    .expect("write");
    let o = meshbench(&["compare", bad.to_str().expect("utf-8"), "no-such-run"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let file = bad.display().to_string();
    for want in [
        format!("{file}:3:5: error: steps[0].latency_p99: unknown figure"),
        "did you mean latency_p99_ms?".to_string(),
        "steps[0].error_ratio.max: is the string \"1%\"".to_string(),
        "steps[0].error_ratio.avg: unknown field".to_string(),
    ] {
        assert!(err.contains(&want), "no {want:?} in:\n{err}");
    }

    // An expectations file carries its own bounds: rules need a baseline run.
    let o = meshbench(&[
        "compare",
        "examples/ci/quickstart-expectations.yaml",
        "no-such-run",
        "--fail-on",
        "latency_p99_ms:+10%",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // A missing run directory is invalid input.
    let o = meshbench(&[
        "compare",
        "examples/ci/quickstart-expectations.yaml",
        "no-such-run",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no-such-run"),
        "{}",
        text(&o)
    );
}
