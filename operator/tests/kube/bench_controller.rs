//! The Benchmark controller from `kubectl apply` to a downloaded report on the real
//! control plane of [`crate::cluster`]: both controllers run as the operator's
//! ServiceAccount, the real Deployment, ReplicaSet and Job controllers create the pods, and
//! the test plays the kubelet for them ([`crate::kubelet`]): every worker pod is a real
//! `meshbench worker` process, every load Job instance a real `meshbench loadgen` process
//! that POSTs its result to the operator's real results endpoint with the token from the
//! Secret, and the report is written by the analysis crate to a real directory. The
//! operator is restarted while a load Job runs; the run must continue from its status on
//! the API server without a second Job.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use meshbench_crds::benchmark::{BenchmarkStatus, Phase};
use meshbench_crds::{Benchmark, ServiceMesh};
use meshbench_operator::k8s::bench_controller::{self, Settings, cursor_of, ordinal};
use meshbench_operator::k8s::export::Exporter;
use meshbench_operator::k8s::mesh_controller;
use meshbench_operator::k8s::metrics::Metrics;
use meshbench_operator::k8s::render::{RenderOptions, TOKEN_KEY, token_secret_name};
use meshbench_operator::k8s::results::{self, ResultsState};
use meshbench_operator::k8s::results_client::{self, ResultsArgs};
use meshbench_operator::k8s::store::Store;
use meshbench_operator::k8s::token::TokenKey;
use serde_json::{Value, json};

use crate::cluster::cluster;
use crate::kubelet::Kubelet;

pub(crate) const SPEC: &str = r#"
apiVersion: meshbench.io/v1alpha1
kind: ServiceMesh
metadata: { name: shop }
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
metadata: { name: ramp }
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

pub(crate) fn documents() -> (Value, Value) {
    let docs: Vec<Value> = SPEC
        .split("\n---\n")
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    (docs[0].clone(), docs[1].clone())
}

/// Creates the mesh (when given) and the benchmark in `ns` as the admin would apply them.
pub(crate) async fn apply(ns: &str, mesh: Option<Value>, bench: Value) {
    let admin = cluster().admin().await;
    if let Some(m) = mesh {
        let m: ServiceMesh = serde_json::from_value(m).unwrap();
        Api::<ServiceMesh>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &m)
            .await
            .expect("create mesh");
    }
    let b: Benchmark = serde_json::from_value(bench).unwrap();
    Api::<Benchmark>::namespaced(admin, ns)
        .create(&PostParams::default(), &b)
        .await
        .expect("create benchmark");
}

/// The operator process: both controllers' contexts (as its ServiceAccount) and the
/// results endpoint.
pub(crate) struct Operator {
    pub(crate) mesh: Arc<mesh_controller::Context>,
    pub(crate) bench: Arc<bench_controller::Context>,
    server: tokio::task::JoinHandle<()>,
    port: u16,
}

impl Operator {
    /// Starts on `port` (0: any free port); the report volume is `data`.
    pub(crate) async fn start(data: &Path, port: u16) -> Operator {
        Self::start_with(data, port, |_| {}).await
    }

    /// Starts with the controller settings changed by `tweak`.
    pub(crate) async fn start_with(
        data: &Path,
        port: u16,
        tweak: impl FnOnce(&mut Settings),
    ) -> Operator {
        // Reports are also exported, to a file:// store beside the volume.
        let export_url = format!("file://{}/exported", data.parent().unwrap().display());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the results endpoint");
        let port = listener.local_addr().unwrap().port();
        let client = cluster().operator().await;
        let render = RenderOptions {
            results_base_url: format!("http://127.0.0.1:{port}"),
            ..RenderOptions::default()
        };
        let metrics = Arc::new(Metrics::default());
        let store = Store::new(data);
        let mut settings = Settings {
            start_delay: Duration::from_millis(1500),
            export: Some(Arc::new(Exporter::new(&export_url).expect("export URL"))),
            ..Settings::default()
        };
        tweak(&mut settings);
        // The same key across restarts, as the operator reads it from its Secret.
        let token_key = TokenKey::new(&[7u8; 32]);
        let router = results::routes(Arc::new(ResultsState {
            client: client.clone(),
            store: store.clone(),
            token_key: token_key.clone(),
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
                client, render, store, settings, metrics, token_key, None,
            )),
            server,
            port,
        }
    }

    pub(crate) fn stop(self) -> u16 {
        self.server.abort();
        self.port
    }
}

pub(crate) async fn bench_of(ns: &str) -> Benchmark {
    Api::<Benchmark>::namespaced(cluster().admin().await, ns)
        .get("ramp")
        .await
        .expect("benchmark")
}

pub(crate) async fn status_of(ns: &str) -> BenchmarkStatus {
    bench_of(ns).await.status.unwrap_or_default()
}

async fn token(ns: &str) -> String {
    let s = Api::<Secret>::namespaced(cluster().admin().await, ns)
        .get(&token_secret_name("ramp"))
        .await
        .expect("the token Secret");
    String::from_utf8(s.data.unwrap()[TOKEN_KEY].0.clone()).unwrap()
}

pub(crate) async fn jobs(ns: &str) -> Vec<Job> {
    Api::<Job>::namespaced(cluster().admin().await, ns)
        .list(&ListParams::default())
        .await
        .expect("jobs")
        .items
}

/// Reconciles and plays the kubelet until the run ends (at most 90 s).
async fn run_to_the_end(ns: &str, op: &Operator) {
    let mut kubelet = Kubelet::new(cluster().admin().await, ns);
    for _ in 0..900 {
        reconcile_all(ns, op).await;
        if status_of(ns).await.phase.is_terminal() {
            break;
        }
        kubelet.sync().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the controller runtime would do on every change: reconcile the mesh and the
/// benchmark, as the operator (a 403 from the RBAC fails here).
pub(crate) async fn reconcile_all(ns: &str, op: &Operator) {
    let admin = cluster().admin().await;
    if let Some(mesh) = Api::<ServiceMesh>::namespaced(admin, ns)
        .get_opt("shop")
        .await
        .unwrap()
    {
        mesh_controller::reconcile(Arc::new(mesh), op.mesh.clone())
            .await
            .expect("mesh reconcile");
    }
    bench_controller::reconcile(Arc::new(bench_of(ns).await), op.bench.clone())
        .await
        .expect("benchmark reconcile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benchmark_runs_from_apply_to_downloaded_report_across_an_operator_restart() {
    // Restricted: the worker and load pods must pass Pod Security admission to run at all.
    let ns = cluster()
        .namespace(
            "bench-run",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await;
    let (mesh, bench) = documents();
    apply(&ns, Some(mesh), bench).await;
    let volumes = tempfile::tempdir().unwrap();
    let data = volumes.path().join("reports");
    let mut op = Operator::start(&data, 0).await;
    let mut kubelet = Kubelet::new(cluster().admin().await, &ns);
    let mut phases = Vec::new();
    let mut restarted_with_a_job_pending = false;
    let mut job_names = BTreeSet::new();
    for _ in 0..900 {
        reconcile_all(&ns, &op).await;
        let status = status_of(&ns).await;
        if phases.last() != Some(&status.phase) {
            phases.push(status.phase);
        }
        if status.phase.is_terminal() {
            break;
        }
        let js = jobs(&ns).await;
        job_names.extend(js.iter().map(|j| j.name_any()));
        if !js.is_empty() && !restarted_with_a_job_pending {
            let port = op.stop();
            tokio::time::sleep(Duration::from_millis(100)).await;
            op = Operator::start(&data, port).await;
            restarted_with_a_job_pending = true;
            continue;
        }
        kubelet.sync().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status_of(&ns).await;
    let dump = serde_json::to_string_pretty(&status).unwrap();
    assert!(
        restarted_with_a_job_pending,
        "the restart was not exercised"
    );
    assert_eq!(status.phase, Phase::Succeeded, "phases {phases:?}\n{dump}");
    assert!(phases.contains(&Phase::Running), "{phases:?}");

    // Exactly one Job per step, despite the restart, each run by the real Job controller's
    // pods; none left behind.
    assert_eq!(job_names.len(), 2, "{job_names:?}");
    assert_eq!(kubelet.jobs_run, job_names);
    assert!(jobs(&ns).await.is_empty(), "load Jobs not cleaned up");

    // The status summarises each step: two instances' results merged to the plan's rate.
    assert_eq!(status.steps.len(), 2, "{dump}");
    for (s, target) in status.steps.iter().zip([20.0, 40.0]) {
        assert_eq!(s.target, target, "{dump}");
        assert!(
            (s.throughput_rps - target).abs() <= target * 0.15,
            "step {} served {} rps, planned {target}\n{dump}",
            s.step,
            s.throughput_rps
        );
        assert!(s.slo_passed, "{dump}");
    }
    assert_eq!(status.slo_verdict.as_deref(), Some("Pass"), "{dump}");
    let run = status.run_id.clone().unwrap();
    // Exported: the status points at the copy, which holds every report file.
    let exported = volumes.path().join("exported").join(&ns).join(&run);
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
    let failed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .expect("Failed condition");
    assert_eq!(failed.status, "False", "{failed:?}");
    // What a CI pipeline runs: `kubectl wait` returns once the run completed.
    cluster()
        .kubectl(&[
            "wait",
            "-n",
            &ns,
            "--for=condition=Complete",
            "benchmark/ramp",
            "--timeout=5s",
        ])
        .expect("kubectl wait --for=condition=Complete");

    // The report on the volume, from both instances of both steps.
    let dir = data.join(&ns).join(&run);
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
    let reasons: Vec<String> = Api::<Event>::namespaced(cluster().admin().await, &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Benchmark"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.contains(&"Started".to_string()), "{reasons:?}");
    assert!(reasons.contains(&"Finished".to_string()), "{reasons:?}");

    // The endpoint guards reports with the benchmark's token.
    let base = format!("http://127.0.0.1:{}/v1/reports/{ns}/ramp/{run}", op.port);
    let http = reqwest::Client::new();
    let code = |rb: reqwest::RequestBuilder| async move { rb.send().await.unwrap().status() };
    assert_eq!(code(http.get(&base)).await, 401);
    assert_eq!(
        code(http.get(&base).bearer_auth("not-the-token")).await,
        403
    );
    let token = token(&ns).await;
    assert_eq!(
        code(
            http.get(format!("{base}/inputs%2Fspec.json"))
                .bearer_auth(&token)
        )
        .await,
        404,
        "inputs are not part of the report"
    );
    assert_eq!(
        code(http.get(format!("{base}/..%2F..%2Fx")).bearer_auth(&token)).await,
        404
    );

    // `meshbench results` downloads it, reading the run and the token with the user's
    // credentials.
    let out = tempfile::tempdir().unwrap();
    let args = ResultsArgs {
        name: "ramp".into(),
        namespace: Some(ns.clone()),
        out: out.path().to_path_buf(),
        url: Some(format!("http://127.0.0.1:{}", op.port)),
        operator_namespace: "meshbench".into(),
        operator_service: "meshbench-operator:http".into(),
        partial: false,
    };
    let user: Client = cluster().admin().await;
    let got = results_client::fetch(&user, &args).await.expect("download");
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
    let again = results_client::fetch(&user, &args).await;
    assert!(again.is_err(), "{again:?}");
    // What a pipeline gates on: the run succeeded and its SLOs held.
    assert_eq!(results_client::check(&user, &args, &got).await, 0);

    // A changed spec starts a new run.
    change_spec(&ns).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    reconcile_all(&ns, &op).await;
    let after = status_of(&ns).await;
    assert_ne!(after.run_id, Some(run.clone()));
    assert!(!after.phase.is_terminal(), "{after:?}");
    assert!(after.steps.is_empty());
    op.stop();
}

/// Drops the second stage, as `kubectl apply` of an edited file would.
async fn change_spec(ns: &str) {
    let mut spec = bench_of(ns).await.spec;
    spec.profile.stages.as_mut().unwrap().truncate(1);
    Api::<Benchmark>::namespaced(cluster().admin().await, ns)
        .patch(
            "ramp",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .expect("change the spec");
}

#[tokio::test]
async fn a_benchmark_naming_a_missing_mesh_is_invalid_and_starts_nothing() {
    let ns = cluster().namespace("bench-no-mesh", &[]).await;
    let (_, bench) = documents();
    apply(&ns, None, bench).await;
    let volumes = tempfile::tempdir().unwrap();
    let data = volumes.path().join("reports");
    let op = Operator::start(&data, 0).await;
    bench_controller::reconcile(Arc::new(bench_of(&ns).await), op.bench.clone())
        .await
        .unwrap();
    let status = status_of(&ns).await;
    let valid = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Valid")
        .expect("Valid condition");
    assert_eq!(valid.status, "False");
    assert_eq!(
        valid.message,
        format!(
            "spec.meshes[0]: ServiceMesh \"shop\" does not exist in namespace {ns} (hint: apply it; the run starts once it exists)"
        )
    );
    assert!(status.run_id.is_none());
    let secrets = Api::<Secret>::namespaced(cluster().admin().await, &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        secrets
            .items
            .iter()
            .all(|s| s.name_any() != token_secret_name("ramp"))
    );
    assert!(jobs(&ns).await.is_empty());
    assert!(!data.exists(), "nothing written to the report volume");
    op.stop();
}

#[test]
fn step_ordinals_round_trip() {
    let (mesh, bench) = documents();
    let mut bench: Benchmark = serde_json::from_value(bench).unwrap();
    bench.spec.meshes = vec!["a".into(), "b".into()];
    bench.spec.repetitions = Some(3);
    let meshes: Vec<ServiceMesh> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let mut m: ServiceMesh = serde_json::from_value(mesh.clone()).unwrap();
            m.metadata.name = Some(name.into());
            m
        })
        .collect();
    let refs: Vec<&ServiceMesh> = meshes.iter().collect();
    let bench = meshbench_crds::ValidBenchmark::new(bench, &refs).expect("valid benchmark");
    let schedule = meshbench_operator::experiment::ExperimentSchedule::new(&bench);
    let total = schedule.total_steps();
    assert_eq!(total, 2 * 3 * 2);
    for o in 0..total {
        assert_eq!(ordinal(&schedule, cursor_of(&schedule, o)), o);
    }
    assert_eq!(cursor_of(&schedule, 7).mesh, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_mid_run_cancels_it_keeps_its_report_and_starts_anew() {
    let ns = cluster().namespace("bench-change", &[]).await;
    let (mesh, bench) = documents();
    apply(&ns, Some(mesh), bench).await;
    let volumes = tempfile::tempdir().unwrap();
    let data = volumes.path().join("reports");
    let op = Operator::start(&data, 0).await;
    let mut kubelet = Kubelet::new(cluster().admin().await, &ns);
    // Up to the first load Job.
    for _ in 0..300 {
        reconcile_all(&ns, &op).await;
        if !jobs(&ns).await.is_empty() {
            break;
        }
        kubelet.sync().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(jobs(&ns).await.len(), 1, "no load Job started");
    let first = status_of(&ns).await.run_id.unwrap();

    change_spec(&ns).await;
    reconcile_all(&ns, &op).await;
    let status = status_of(&ns).await;
    assert_eq!(status.run_id.as_deref(), Some(first.as_str()));
    assert_eq!(status.phase, Phase::Failed);
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .cloned()
            .unwrap()
    };
    let (complete, failed) = (condition("Complete"), condition("Failed"));
    assert_eq!(
        (complete.status.as_str(), complete.reason.as_str()),
        ("False", "Cancelled"),
        "{complete:?}"
    );
    assert_eq!(
        (failed.status.as_str(), failed.reason.as_str()),
        ("True", "Cancelled"),
        "{failed:?}"
    );
    // The cancelled run's Job is deleted (the garbage collector removes its pods).
    let remaining: Vec<Job> = jobs(&ns)
        .await
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect();
    assert!(remaining.is_empty(), "the cancelled run's Job remains");
    // Its report is there, marked partial.
    let run_json: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join(&ns).join(&first).join("run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(run_json["partial"], true, "{run_json}");

    // The next reconcile starts the new spec's run (a second later: run ids are per second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    reconcile_all(&ns, &op).await;
    let status = status_of(&ns).await;
    assert_ne!(status.run_id.as_deref(), Some(first.as_str()));
    assert!(!status.phase.is_terminal());
    op.stop();
    // `results --check` on the cancelled run's report: partial, so the run failed (4)
    // whatever its SLOs say.
    let args = ResultsArgs {
        name: "ramp".into(),
        namespace: Some(ns.clone()),
        out: volumes.path().join("download"),
        url: None,
        operator_namespace: "meshbench".into(),
        operator_service: "meshbench-operator:http".into(),
        partial: true,
    };
    let user: Client = cluster().admin().await;
    assert_eq!(
        results_client::check(&user, &args, &data.join(&ns).join(&first)).await,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_step_redeploy_restarts_the_mesh_before_each_later_step() {
    let ns = cluster().namespace("bench-redeploy", &[]).await;
    let (mesh, mut bench) = documents();
    bench["spec"]["redeploy"] = json!("perStep");
    bench["spec"]["loadgen"]["parallelism"] = json!(1);
    apply(&ns, Some(mesh), bench).await;
    let volumes = tempfile::tempdir().unwrap();
    let data = volumes.path().join("reports");
    let op = Operator::start(&data, 0).await;
    run_to_the_end(&ns, &op).await;
    let status = status_of(&ns).await;
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    // The Deployment was restarted (by its own field manager, so the mesh controller's
    // apply keeps the annotation) before the second step, and waited for again.
    let dep = Api::<Deployment>::namespaced(cluster().admin().await, &ns)
        .get("shop-api")
        .await
        .unwrap();
    let annotations = dep
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    assert!(
        annotations.contains_key("meshbench.io/restarted-at"),
        "{annotations:?}"
    );
    let run = status.run_id.unwrap();
    let run_json: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join(&ns).join(&run).join("run.json")).unwrap(),
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

/// Prometheus unreachable: each step's collection fails, the run goes on (the load
/// generators' figures are still measured), and the status says `Degraded` with one
/// Warning Event; the report lists each failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_collection_marks_the_benchmark_degraded() {
    let ns = cluster().namespace("bench-degraded", &[]).await;
    let (mesh, mut bench) = documents();
    bench["spec"]["loadgen"]["parallelism"] = json!(1);
    apply(&ns, Some(mesh), bench).await;
    let volumes = tempfile::tempdir().unwrap();
    let data = volumes.path().join("reports");
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let op = Operator::start_with(&data, 0, |s| {
        s.prometheus_url = Some(url);
        s.scrape_interval = Duration::from_millis(500);
    })
    .await;
    run_to_the_end(&ns, &op).await;
    let status = status_of(&ns).await;
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("Degraded condition");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "CollectionFailed")
    );
    assert!(
        degraded.message.contains("Prometheus collection failed"),
        "{degraded:?}"
    );
    let events: Vec<Event> = Api::<Event>::namespaced(cluster().admin().await, &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("CollectionFailed"))
        .collect();
    assert_eq!(events.len(), 1, "one Event when it became degraded");
    let run = status.run_id.unwrap();
    let run_json: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join(&ns).join(&run).join("run.json")).unwrap(),
    )
    .unwrap();
    let failures = run_json["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w.as_str().unwrap().contains("Prometheus collection failed"))
        .count();
    assert_eq!(failures, 2, "one per step: {run_json}");
    op.stop();
}
