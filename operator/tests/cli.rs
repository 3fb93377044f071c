//! The `meshbench` binary's documented exit codes and outputs, run as a real process.

use std::path::PathBuf;
use std::process::{Command, Output};

fn meshbench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run meshbench: {e}"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn validate_accepts_the_experiments() {
    let o = meshbench(&["validate", "experiments/quickstart.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("valid: 1 ServiceMesh, 1 Benchmark"));
}

#[test]
fn validate_reports_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: meshbench.io/v1alpha1\nkind: ServiceMesh\nmetadata: {name: m}\nspec:\n  services:\n  - name: a\n    endpoints:\n    - path: /\n      cpu: \"25\"\n      calls: [{service: bakend}]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let o = meshbench(&["validate", bad.to_str().unwrap_or_default()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("bad.yaml:9:"), "{err}");
    assert!(
        err.contains("error: ServiceMesh/m (document 1) spec.services[0].endpoints[0].cpu"),
        "{err}"
    );
    assert!(err.contains("did you mean"), "{err}");
    assert!(
        err.contains("spec.services[0].endpoints[0].calls[0].service"),
        "{err}"
    );
    assert!(err.contains("2 problem(s)"), "{err}");
}

#[test]
fn missing_file_is_invalid_not_a_panic() {
    let o = meshbench(&["validate", "does/not/exist.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot read file"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(meshbench(&["validate"]).status.code(), Some(2));
    assert_eq!(meshbench(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(
        meshbench(&["validate", "--bogus", "x"]).status.code(),
        Some(2)
    );
}

#[test]
fn crds_prints_both_definitions() {
    let o = meshbench(&["crds"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("name: servicemeshes.meshbench.io"));
    assert!(out.contains("name: benchmarks.meshbench.io"));
}

#[test]
fn import_converts_a_prototype_servicegraph() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sg = dir.path().join("sg.yaml");
    std::fs::write(
        &sg,
        "apiVersion: dipterv.my.domain/v1beta1\nkind: Servicegraph\nmetadata: {name: demo}\nspec:\n  nodes:\n  - name: front\n    replicas: 1\n    port: 80\n    resources: {cpu: 500, memory: 256}\n    endpoints:\n    - path: /\n      cpuLoad: 25\n      delay: 40\n      callouts: [{url: \"back:80/work\"}]\n  - name: back\n    resources: {cpu: 1000, memory: 128}\n    endpoints: [{path: /work, cpuLoad: 100}]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let o = meshbench(&["import", sg.to_str().unwrap_or_default()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let yaml = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(yaml.contains("kind: ServiceMesh"));
    assert!(yaml.contains("cpu: 25ms"));
    assert!(yaml.contains("mode: minimumTotal"));
    // The output is itself valid input.
    let out = dir.path().join("out.yaml");
    std::fs::write(&out, &yaml).unwrap_or_else(|e| panic!("{e}"));
    let v = meshbench(&["validate", out.to_str().unwrap_or_default()]);
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
}

/// `meshbench worker` is `meshbench-worker`: an invalid config is invalid input (1), as
/// for every other command, with an `error: ` message.
#[test]
fn worker_subcommand_rejects_a_bad_config_with_exit_1() {
    let o = meshbench(&["worker", "--config-json", "{\"version\": 9}"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
}

/// clap's own checks of the whole command line (duplicate flags from the flattened shared
/// argument groups, conflicts naming unknown arguments…), which it otherwise makes only
/// when a debug build parses that subcommand.
#[test]
fn the_command_line_definition_is_consistent() {
    use clap::CommandFactory;
    meshbench_operator::cli::Cli::command().debug_assert();
}

/// The subcommands take the standalone binaries' flags, the shared `--log-format` included.
#[test]
fn worker_and_loadgen_subcommands_take_the_shared_log_flag() {
    let o = meshbench(&[
        "worker",
        "--log-format",
        "json",
        "--check",
        "--config-json",
        r#"{"version":1,"service":"a","endpoints":[]}"#,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Known but given a bad value (an unknown flag would say "unexpected argument").
    let o = meshbench(&[
        "loadgen",
        "--log-format",
        "xml",
        "--url",
        "http://127.0.0.1:9/",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("invalid value 'xml'"), "{}", stderr(&o));
}

#[test]
fn operator_without_a_cluster_fails_with_a_clear_message() {
    let o = Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .args(["operator", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("Kubernetes client"), "{}", stderr(&o));
}

#[test]
fn run_of_an_invalid_spec_starts_nothing_and_exits_1() {
    let dir = tempfile::tempdir().expect("dir");
    let spec = dir.path().join("bad.yaml");
    std::fs::write(
        &spec,
        "apiVersion: meshbench.io/v1alpha1\nkind: Benchmark\nmetadata: { name: b }\nspec:\n  meshes: [missing]\n  target: { service: x }\n  load: { model: open }\n  profile: { stages: [{ rate: 5, duration: 1s }] }\n",
    )
    .expect("write");
    let out = dir.path().join("results");
    let o = meshbench(&[
        "run",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));
    assert!(
        !out.exists(),
        "a run directory was created for an invalid spec"
    );
}

#[test]
fn plan_into_a_closed_pipe_does_not_panic() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .args(["plan", "experiments/chain.yaml"])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("wait");
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn render_prints_the_objects_the_operator_applies() {
    let o = meshbench(&[
        "render",
        "experiments/quickstart.yaml",
        "--namespace",
        "lab",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let yaml = String::from_utf8_lossy(&o.stdout);
    for kind in [
        "kind: ConfigMap",
        "kind: Deployment",
        "kind: Service",
        "kind: HorizontalPodAutoscaler",
        "kind: Job",
    ] {
        assert!(yaml.contains(kind), "{kind} missing:\n{yaml}");
    }
    assert!(yaml.contains("namespace: lab"), "{yaml}");
    let o = meshbench(&["render", "no/such/file.yaml"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no/such/file.yaml"), "{}", stderr(&o));
}

#[test]
fn results_without_a_cluster_fails_with_a_clear_message() {
    let o = Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .args(["results", "quickstart"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot configure the Kubernetes client"),
        "{}",
        stderr(&o)
    );
}
