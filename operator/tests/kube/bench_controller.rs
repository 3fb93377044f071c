//! The Benchmark controller from `kubectl apply` to a downloaded report, against an
//! in-memory API server (no cluster can run here), with real parts everywhere else: the
//! ServiceMesh controller renders the worker, a real `meshbench worker` process serves it,
//! every load Job instance is a real `meshbench loadgen` process that POSTs its result to
//! the operator's real results endpoint with the token from the Secret, and the report is
//! written by the analysis crate to a real directory. The operator is restarted while a
//! load Job runs; the run must continue from its status without a second Job.

use crate::fake_api;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use fake_api::FakeApi;
use k8s_openapi::api::core::v1::Secret;
use meshbench_crds::{Benchmark, ServiceMesh};
use meshbench_operator::k8s::bench_controller::{self, Settings, cursor_of, ordinal};
use meshbench_operator::k8s::export::Exporter;
use meshbench_operator::k8s::fetch::{self, ResultsArgs};
use meshbench_operator::k8s::mesh_controller;
use meshbench_operator::k8s::metrics::Metrics;
use meshbench_operator::k8s::render::{RenderOptions, TOKEN_KEY, token_secret_name};
use meshbench_operator::k8s::results::{self, ResultsState};
use meshbench_operator::k8s::store::Store;
use serde_json::{Value, json};

const NS: &str = "bench";
const BIN: &str = env!("CARGO_BIN_EXE_meshbench");
const MB: &str = "meshbench.io";

const SPEC: &str = r#"
apiVersion: meshbench.io/v1alpha1
kind: ServiceMesh
metadata: { name: shop, namespace: bench }
spec:
  services:
    - name: api
      resources:
        requests: { cpu: 100m, memory: 32Mi }
        limits: { cpu: 500m, memory: 64Mi }
      endpoints:
        - path: /
          cpu: 1ms
---
apiVersion: meshbench.io/v1alpha1
kind: Benchmark
metadata: { name: ramp, namespace: bench }
spec:
  meshes: [shop]
  target: { service: api, path: / }
  load: { model: open, maxInFlight: 50 }
  loadgen: { parallelism: 2 }
  profile:
    stages:
      - { rate: 20, duration: 3s }
      - { rate: 40, duration: 3s }
  warmup: { duration: 1s, rate: 10 }
  settle: 1s
  requestTimeout: 2s
  slos:
    latency:
      - { percentile: 99, max: 500ms }
    maxErrorRate: 0.01
"#;

fn documents() -> (Value, Value) {
    let docs: Vec<Value> = SPEC
        .split("\n---\n")
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    (docs[0].clone(), docs[1].clone())
}

/// The operator process: both controllers' contexts and the results endpoint.
struct Operator {
    mesh: Arc<mesh_controller::Context>,
    bench: Arc<bench_controller::Context>,
    server: tokio::task::JoinHandle<()>,
    port: u16,
}

impl Operator {
    /// Starts on `port` (0: any free port); the report volume is `data`.
    async fn start(api: &Arc<FakeApi>, data: &Path, port: u16) -> Operator {
        // Reports are also exported, to a file:// store beside the volume.
        let export_url = format!("file://{}/exported", data.parent().unwrap().display());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the results endpoint");
        let port = listener.local_addr().unwrap().port();
        let client = api.client(NS);
        let render = RenderOptions {
            results_base_url: format!("http://127.0.0.1:{port}"),
            ..RenderOptions::default()
        };
        let metrics = Arc::new(Metrics::default());
        let store = Store::new(data);
        let router = results::routes(Arc::new(ResultsState {
            client: client.clone(),
            store: store.clone(),
        }));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router.into_make_service()).await;
        });
        Operator {
            mesh: Arc::new(mesh_controller::Context::new(
                client.clone(),
                render.clone(),
                metrics.clone(),
                None,
            )),
            bench: Arc::new(bench_controller::Context::new(
                client,
                render,
                store,
                Settings {
                    start_delay: Duration::from_millis(1500),
                    export: Some(Arc::new(Exporter::new(&export_url).expect("export URL"))),
                    ..Settings::default()
                },
                metrics,
                None,
            )),
            server,
            port,
        }
    }

    fn stop(self) -> u16 {
        self.server.abort();
        self.port
    }
}

fn bench_of(api: &FakeApi) -> Benchmark {
    serde_json::from_value(api.get(MB, "benchmarks", NS, "ramp").unwrap()).unwrap()
}

fn token(api: &FakeApi) -> String {
    let s: Secret = serde_json::from_value(
        api.get("", "secrets", NS, &token_secret_name("ramp"))
            .expect("the token Secret"),
    )
    .unwrap();
    String::from_utf8(s.data.unwrap()[TOKEN_KEY].0.clone()).unwrap()
}

/// What the kubelet and the Deployment controller would do: a worker process per
/// Deployment (ready at once), and the load Jobs' instances as loadgen processes.
#[derive(Default)]
struct Cluster {
    workers: BTreeMap<String, (tokio::process::Child, String)>,
    jobs_run: BTreeSet<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    async fn deployments(&mut self, api: &FakeApi) {
        for d in api.all("apps", "deployments") {
            let name = d["metadata"]["name"].as_str().unwrap().to_string();
            if !self.workers.contains_key(&name) {
                let cm = api
                    .get("", "configmaps", NS, &name)
                    .expect("worker ConfigMap");
                let config = cm["data"]["worker.json"].as_str().unwrap().to_string();
                let addr = format!("127.0.0.1:{}", free_port());
                let child = tokio::process::Command::new(BIN)
                    .args(["worker", "--config-json", &config, "--listen", &addr])
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("start a worker");
                wait_listening(&addr).await;
                self.workers.insert(name.clone(), (child, addr));
            }
            let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
            api.set_status(
                "apps",
                "deployments",
                NS,
                &name,
                json!({
                    "observedGeneration": d["metadata"]["generation"],
                    "replicas": replicas, "readyReplicas": replicas,
                    "updatedReplicas": replicas, "availableReplicas": replicas,
                }),
            );
        }
    }

    /// Runs every new Job to completion; returns how many ran.
    async fn jobs(&mut self, api: &FakeApi, scratch: &Path) -> usize {
        let mut ran = 0;
        for job in api.all("batch", "jobs") {
            let name = job["metadata"]["name"].as_str().unwrap().to_string();
            if !self.jobs_run.insert(name.clone()) {
                continue;
            }
            ran += 1;
            let cm = api
                .get("", "configmaps", NS, &name)
                .expect("plan ConfigMap");
            let mut plan: Value =
                serde_json::from_str(cm["data"]["plan.json"].as_str().unwrap()).expect("plan JSON");
            // In-cluster DNS names → the worker processes.
            let target = plan["target"].as_str().unwrap().to_string();
            let host = target
                .trim_start_matches("http://")
                .split(':')
                .next()
                .unwrap()
                .to_string();
            let addr = &self.workers.get(&host).expect("target worker").1;
            plan["target"] = json!(format!("http://{addr}"));
            let plan_path = scratch.join(format!("{name}.json"));
            std::fs::write(&plan_path, plan.to_string()).unwrap();
            let spec = &job["spec"];
            let n = spec["parallelism"].as_i64().unwrap();
            let container = &spec["template"]["spec"]["containers"][0];
            let args: Vec<String> = container["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            let token = token(api);
            let mut children = Vec::new();
            for i in 0..n {
                let args: Vec<String> = args
                    .iter()
                    .map(|a| match a.as_str() {
                        "/etc/meshbench/plan.json" => plan_path.display().to_string(),
                        a if a.starts_with("0.0.0.0:") => "127.0.0.1:0".to_string(),
                        "/tmp/result.json" => scratch
                            .join(format!("{name}-{i}.result.json"))
                            .display()
                            .to_string(),
                        other => other.to_string(),
                    })
                    .collect();
                children.push(
                    tokio::process::Command::new(BIN)
                        .arg("loadgen")
                        .args(&args)
                        .env("JOB_COMPLETION_INDEX", i.to_string())
                        .env("MESHBENCH_RESULTS_TOKEN", &token)
                        .env("RUST_LOG", "warn")
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .spawn()
                        .expect("start a loadgen instance"),
                );
            }
            for c in children {
                let out = c.wait_with_output().await.unwrap();
                assert!(
                    out.status.success(),
                    "loadgen instance of {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            api.set_status(
                "batch",
                "jobs",
                NS,
                &name,
                json!({
                    "succeeded": n,
                    "completionTime": "2026-11-30T00:00:00Z",
                    "conditions": [{"type": "Complete", "status": "True"}],
                }),
            );
        }
        ran
    }
}

async fn wait_listening(addr: &str) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("worker at {addr} never listened");
}

async fn reconcile_all(api: &Arc<FakeApi>, op: &Operator) {
    let mesh: ServiceMesh =
        serde_json::from_value(api.get(MB, "servicemeshes", NS, "shop").unwrap()).unwrap();
    mesh_controller::reconcile(Arc::new(mesh), op.mesh.clone())
        .await
        .expect("mesh reconcile");
    bench_controller::reconcile(Arc::new(bench_of(api)), op.bench.clone())
        .await
        .expect("benchmark reconcile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benchmark_runs_from_apply_to_downloaded_report_across_an_operator_restart() {
    let api = FakeApi::new();
    let (mesh, bench) = documents();
    api.create(MB, "servicemeshes", mesh);
    api.create(MB, "benchmarks", bench);
    let volumes = tempfile::tempdir().unwrap();
    let data = volumes.path().join("reports");
    let scratch = tempfile::tempdir().unwrap();
    let mut op = Operator::start(&api, &data, 0).await;
    let mut cluster = Cluster::default();
    let mut restarted_with_a_job_pending = false;
    let mut phases = Vec::new();
    for _ in 0..600 {
        reconcile_all(&api, &op).await;
        cluster.deployments(&api).await;
        let b = bench_of(&api);
        let status = b.status.clone().unwrap_or_default();
        if phases.last() != Some(&status.phase) {
            phases.push(status.phase);
        }
        if status.phase.is_terminal() {
            break;
        }
        if !api.all("batch", "jobs").is_empty() && !restarted_with_a_job_pending {
            // The operator dies with a load Job created but not yet run; a new one takes
            // over on the same port (the Job's results URL) and the same volume.
            let port = op.stop();
            tokio::time::sleep(Duration::from_millis(100)).await;
            op = Operator::start(&api, &data, port).await;
            restarted_with_a_job_pending = true;
            continue;
        }
        cluster.jobs(&api, scratch.path()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = bench_of(&api);
    let status = b.status.clone().unwrap();
    let dump = serde_json::to_string_pretty(&status).unwrap();
    assert!(
        restarted_with_a_job_pending,
        "the restart was not exercised"
    );
    assert_eq!(
        status.phase,
        meshbench_crds::benchmark::Phase::Succeeded,
        "phases {phases:?}\n{dump}"
    );
    assert!(
        phases.contains(&meshbench_crds::benchmark::Phase::Running),
        "{phases:?}"
    );
    let forbidden = api.forbidden.lock().unwrap().clone();
    assert!(
        forbidden.is_empty(),
        "requests outside the RBAC table: {forbidden:?}"
    );

    // Exactly one Job per step, despite the restart; none left behind.
    let job_names: BTreeSet<String> = api
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("PATCH /apis/batch/v1/namespaces/bench/jobs/"))
        .map(|l| l.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(job_names.len(), 2, "{job_names:?}");
    assert_eq!(cluster.jobs_run.len(), 2);
    assert!(
        api.all("batch", "jobs").is_empty(),
        "load Jobs not cleaned up"
    );

    // The status summarises each step: two instances' results merged to the plan's rate.
    assert_eq!(status.steps.len(), 2, "{dump}");
    for (s, target) in status.steps.iter().zip([20.0, 40.0]) {
        assert_eq!(s.target, target, "{dump}");
        assert!(
            (s.achieved_rps - target).abs() <= target * 0.15,
            "step {} achieved {} rps, planned {target}\n{dump}",
            s.step,
            s.achieved_rps
        );
        assert!(s.slo_passed, "{dump}");
    }
    assert_eq!(status.slo_verdict.as_deref(), Some("Pass"), "{dump}");
    let run = status.run_id.clone().unwrap();
    // Exported: the status points at the copy, which holds every report file.
    let exported = volumes.path().join("exported").join(NS).join(&run);
    assert_eq!(
        status.report_location,
        Some(format!("file://{}", exported.display()))
    );
    let complete = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Complete")
        .expect("Complete condition");
    assert_eq!(
        (complete.status.as_str(), complete.reason.as_str()),
        ("True", "Succeeded")
    );

    // The report on the volume, from both instances of both steps.
    let dir = data.join(NS).join(&run);
    for f in ["report.html", "run.json", "steps.parquet", "steps.csv"] {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    let run_json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(run_json["platform"], "kubernetes", "{run_json}");
    // Every transition is in the report, across the restart.
    let names: Vec<&str> = run_json["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for want in [
        "deploy shop",
        "wait-ready shop",
        "warmup shop",
        "settle",
        "collect",
        "teardown shop",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    assert_eq!(
        names.iter().filter(|n| n.starts_with("step ")).count(),
        2,
        "{names:?}"
    );
    let results = std::fs::read_dir(dir.join("inputs/results"))
        .unwrap()
        .count();
    assert_eq!(results, 4, "2 steps × 2 instances");

    // Events tell the story.
    let reasons: Vec<String> = api
        .all("events.k8s.io", "events")
        .iter()
        .filter(|e| e["regarding"]["kind"] == "Benchmark")
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(reasons.contains(&"Started".to_string()), "{reasons:?}");
    assert!(reasons.contains(&"Finished".to_string()), "{reasons:?}");

    // The endpoint guards reports with the benchmark's token.
    let base = format!("http://127.0.0.1:{}/v1/reports/{NS}/ramp/{run}", op.port);
    let http = reqwest::Client::new();
    let status_of = |rb: reqwest::RequestBuilder| async move { rb.send().await.unwrap().status() };
    assert_eq!(status_of(http.get(&base)).await, 401);
    assert_eq!(
        status_of(http.get(&base).bearer_auth("not-the-token")).await,
        403
    );
    let token = token(&api);
    assert_eq!(
        status_of(
            http.get(format!("{base}/inputs%2Fspec.json"))
                .bearer_auth(&token)
        )
        .await,
        404,
        "inputs are not part of the report"
    );
    assert_eq!(
        status_of(http.get(format!("{base}/..%2F..%2Fx")).bearer_auth(&token)).await,
        404
    );

    // `meshbench results` downloads it.
    let out = tempfile::tempdir().unwrap();
    let args = ResultsArgs {
        name: "ramp".into(),
        namespace: Some(NS.into()),
        out: out.path().to_path_buf(),
        url: Some(format!("http://127.0.0.1:{}", op.port)),
        operator_namespace: "meshbench".into(),
        operator_service: "meshbench-operator:http".into(),
        partial: false,
    };
    let got = fetch::fetch(&api.client(NS), &args)
        .await
        .expect("download");
    assert_eq!(got, out.path().join(&run));
    assert_eq!(
        std::fs::read(got.join("report.html")).unwrap(),
        std::fs::read(dir.join("report.html")).unwrap()
    );
    assert!(got.join("plots").is_dir());
    assert_eq!(
        std::fs::read(exported.join("report.html")).unwrap(),
        std::fs::read(dir.join("report.html")).unwrap()
    );
    assert!(exported.join("plots").is_dir());
    assert!(!exported.join("inputs").exists());
    assert!(!got.join("inputs").exists());
    // A second download never overwrites the first.
    let again = fetch::fetch(&api.client(NS), &args).await;
    assert!(again.is_err(), "{again:?}");

    // A changed spec starts a new run.
    let mut spec = bench_of(&api).spec;
    spec.profile.stages.as_mut().unwrap().truncate(1);
    api.update_spec(
        MB,
        "benchmarks",
        NS,
        "ramp",
        serde_json::to_value(&spec).unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    reconcile_all(&api, &op).await;
    let after = bench_of(&api).status.unwrap();
    assert_ne!(after.run_id, Some(run.clone()));
    assert!(!after.phase.is_terminal(), "{after:?}");
    assert!(after.steps.is_empty());
    op.stop();
}

#[tokio::test]
async fn a_benchmark_naming_a_missing_mesh_is_invalid_and_starts_nothing() {
    let api = FakeApi::new();
    let (_, bench) = documents();
    api.create(MB, "benchmarks", bench);
    let volumes = tempfile::tempdir().unwrap();
    let data = volumes.path().join("reports");
    let op = Operator::start(&api, &data, 0).await;
    bench_controller::reconcile(Arc::new(bench_of(&api)), op.bench.clone())
        .await
        .unwrap();
    let status = bench_of(&api).status.unwrap();
    let valid = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Valid")
        .expect("Valid condition");
    assert_eq!(valid.status, "False");
    assert_eq!(
        valid.message,
        "spec.meshes[0]: ServiceMesh \"shop\" does not exist in namespace bench (hint: apply it; the run starts once it exists)"
    );
    assert!(status.run_id.is_none());
    assert!(api.all("", "secrets").is_empty());
    assert!(api.all("batch", "jobs").is_empty());
    assert!(!data.exists(), "nothing written to the report volume");
    op.stop();
}

#[test]
fn step_ordinals_round_trip() {
    let (_, bench) = documents();
    let mut bench: Benchmark = serde_json::from_value(bench).unwrap();
    bench.spec.meshes = vec!["a".into(), "b".into()];
    bench.spec.repetitions = Some(3);
    let plan = meshbench_operator::experiment::ExperimentPlan::new("ramp", &bench.spec);
    let total = plan.total_steps();
    assert_eq!(total, 2 * 3 * 2);
    for o in 0..total {
        assert_eq!(ordinal(&plan, cursor_of(&plan, o)), o);
    }
    assert_eq!(cursor_of(&plan, 7).mesh, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_mid_run_cancels_it_keeps_its_report_and_starts_anew() {
    let api = FakeApi::new();
    let (mesh, bench) = documents();
    api.create(MB, "servicemeshes", mesh);
    api.create(MB, "benchmarks", bench);
    let volumes = tempfile::tempdir().unwrap();
    let data = volumes.path().join("reports");
    let op = Operator::start(&api, &data, 0).await;
    let mut cluster = Cluster::default();
    // Up to the first load Job.
    for _ in 0..100 {
        reconcile_all(&api, &op).await;
        cluster.deployments(&api).await;
        if !api.all("batch", "jobs").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api.all("batch", "jobs").len(), 1, "no load Job started");
    let first = bench_of(&api).status.unwrap().run_id.unwrap();

    let mut spec = bench_of(&api).spec;
    spec.profile.stages.as_mut().unwrap().truncate(1);
    api.update_spec(
        MB,
        "benchmarks",
        NS,
        "ramp",
        serde_json::to_value(&spec).unwrap(),
    );
    reconcile_all(&api, &op).await;
    let status = bench_of(&api).status.unwrap();
    assert_eq!(status.run_id.as_deref(), Some(first.as_str()));
    assert_eq!(status.phase, meshbench_crds::benchmark::Phase::Failed);
    let complete = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Complete")
        .unwrap();
    assert_eq!(complete.reason, "Cancelled", "{complete:?}");
    assert!(
        api.all("batch", "jobs").is_empty(),
        "the cancelled run's Job remains"
    );
    // Its report is there, marked partial.
    let run_json: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join(NS).join(&first).join("run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(run_json["partial"], true, "{run_json}");

    // The next reconcile starts the new spec's run (a second later: run ids are per second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    reconcile_all(&api, &op).await;
    let status = bench_of(&api).status.unwrap();
    assert_ne!(status.run_id.as_deref(), Some(first.as_str()));
    assert!(!status.phase.is_terminal());
    op.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_step_redeploy_restarts_the_mesh_before_each_later_step() {
    let api = FakeApi::new();
    let (mesh, mut bench) = documents();
    bench["spec"]["redeploy"] = json!("perStep");
    bench["spec"]["loadgen"]["parallelism"] = json!(1);
    api.create(MB, "servicemeshes", mesh);
    api.create(MB, "benchmarks", bench);
    let volumes = tempfile::tempdir().unwrap();
    let data = volumes.path().join("reports");
    let scratch = tempfile::tempdir().unwrap();
    let op = Operator::start(&api, &data, 0).await;
    let mut cluster = Cluster::default();
    for _ in 0..600 {
        reconcile_all(&api, &op).await;
        cluster.deployments(&api).await;
        if bench_of(&api)
            .status
            .unwrap_or_default()
            .phase
            .is_terminal()
        {
            break;
        }
        cluster.jobs(&api, scratch.path()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = bench_of(&api).status.unwrap();
    assert_eq!(
        status.phase,
        meshbench_crds::benchmark::Phase::Succeeded,
        "{status:?}"
    );
    // The Deployment was restarted (by its own field manager, so the mesh controller's
    // apply keeps the annotation) before the second step, and waited for again.
    let dep = api.get("apps", "deployments", NS, "shop-api").unwrap();
    assert!(
        dep["spec"]["template"]["metadata"]["annotations"]["meshbench.io/restarted-at"].is_string(),
        "{dep}"
    );
    let run = status.run_id.unwrap();
    let run_json: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join(NS).join(&run).join("run.json")).unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = run_json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.iter().filter(|n| **n == "deploy shop").count(),
        2,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == "wait-ready shop").count(),
        2,
        "{names:?}"
    );
    assert_eq!(status.steps.len(), 2);
    op.stop();
}
