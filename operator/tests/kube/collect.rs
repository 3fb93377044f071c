//! Collection against a real Prometheus (Debian `prometheus` package): synthetic series
//! in kube-state-metrics, cAdvisor, worker and loadgen naming are backfilled with
//! `promtool tsdb create-blocks-from openmetrics`, Prometheus serves that storage on
//! 127.0.0.1, and every PromQL of the collector and of the Grafana dashboard must return
//! data of the mesh under test, and none of the other meshes in its namespace — one of
//! them, `quickstart-2`, has object names that start with `quickstart-`. Among the mesh's
//! pods is one of a Deployment so long-named that Kubernetes cut its pod's name short: it
//! must be collected and mapped to its service all the same. Without the binaries the test
//! is skipped, except under CI=true where it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshbench_analysis::samples::metric;
use meshbench_operator::k8s::collect::{Collector, Series, Window};
use meshbench_operator::k8s::promql::{TEMPLATES, Vars, rate_window};

const NS: &str = "bench";
/// The mesh under test.
const MESH: &str = "quickstart";
/// Seconds between two synthetic points (the scrape interval they stand for).
const SCRAPE_S: i64 = 15;

/// A service whose Deployment name (61 characters) leaves no room in its pods' names.
const LONG_SERVICE: &str = "payments-authorization-gateway-europe-west-primary";
const LONG_DEPLOYMENT: &str = "quickstart-payments-authorization-gateway-europe-west-primary";

const POD_FE: &str = "quickstart-frontend-5d8f7c9b4-abcde";
const POD_BE1: &str = "quickstart-backend-7c6d5b4a3-fghij";
/// A pod of the backend's previous ReplicaSet, as during a rollout.
const POD_BE2: &str = "quickstart-backend-6f5e4d3c2-klmno";
/// How Kubernetes names a pod of the ReplicaSet `<LONG_DEPLOYMENT>-7f9c6d5b8`: the
/// ReplicaSet's name and `-`, cut to 58 characters, then 5 random ones. It does not start
/// with its Deployment's name.
const POD_LONG: &str = "quickstart-payments-authorization-gateway-europe-west-primx7k2p";

/// One pod of the synthetic namespace and its owners.
struct Pod {
    name: &'static str,
    replicaset: &'static str,
    deployment: &'static str,
    mesh: &'static str,
}

const PODS: &[Pod] = &[
    Pod {
        name: POD_FE,
        replicaset: "quickstart-frontend-5d8f7c9b4",
        deployment: "quickstart-frontend",
        mesh: MESH,
    },
    Pod {
        name: POD_BE1,
        replicaset: "quickstart-backend-7c6d5b4a3",
        deployment: "quickstart-backend",
        mesh: MESH,
    },
    Pod {
        name: POD_BE2,
        replicaset: "quickstart-backend-6f5e4d3c2",
        deployment: "quickstart-backend",
        mesh: MESH,
    },
    Pod {
        name: POD_LONG,
        replicaset: "quickstart-payments-authorization-gateway-europe-west-primary-7f9c6d5b8",
        deployment: LONG_DEPLOYMENT,
        mesh: MESH,
    },
    // Other meshes in the same namespace.
    Pod {
        name: "quickstart-2-frontend-6b5a4c3d2-pqrst",
        replicaset: "quickstart-2-frontend-6b5a4c3d2",
        deployment: "quickstart-2-frontend",
        mesh: "quickstart-2",
    },
    Pod {
        name: "othermesh-frontend-6b5a4c3d2-uvwxy",
        replicaset: "othermesh-frontend-6b5a4c3d2",
        deployment: "othermesh-frontend",
        mesh: "othermesh",
    },
];

impl Pod {
    fn ours(&self) -> bool {
        self.mesh == MESH
    }

    /// CPU request in cores; the limit is twice it and the usage 80 % of it. Other meshes
    /// get values of their own, so a leak changes the mesh's figures.
    fn cpu_request(&self) -> f64 {
        match (self.ours(), self.deployment == LONG_DEPLOYMENT) {
            (false, _) => 2.0,
            (true, true) => 0.5,
            (true, false) => 0.25,
        }
    }
}

/// Whether a label value names an object of another mesh.
fn foreign(value: &str) -> bool {
    value.starts_with("quickstart-2") || value.starts_with("othermesh")
}

/// The Deployments of [`PODS`] with their mesh, each once.
fn deployments() -> BTreeMap<&'static str, &'static str> {
    PODS.iter().map(|p| (p.deployment, p.mesh)).collect()
}

/// The ReplicaSets of [`PODS`] with their Deployment, each once.
fn replicasets() -> BTreeMap<&'static str, &'static str> {
    PODS.iter().map(|p| (p.replicaset, p.deployment)).collect()
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|f| f.is_file())
    })
}

fn tools() -> Option<(PathBuf, PathBuf)> {
    match (which("prometheus"), which("promtool")) {
        (Some(p), Some(t)) => Some((p, t)),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!(
                    "CI is set but prometheus/promtool are not on PATH; install the Debian package `prometheus`"
                );
            }
            eprintln!(
                "SKIPPED: prometheus and promtool not found on PATH (apt-get install prometheus)"
            );
            None
        }
    }
}

/// A value as a function of the point index.
type Curve = Box<dyn Fn(i64) -> f64>;

/// One histogram series: its labels, observations per second, their mean in seconds, and
/// the cumulative share of them at or under each bucket bound.
struct Latency {
    labels: String,
    per_s: f64,
    mean_s: f64,
    buckets: [(&'static str, f64); 4],
}

/// Synthetic series in OpenMetrics text: `n` points every [`SCRAPE_S`] from `start`.
struct Writer {
    out: String,
    start: i64,
    n: i64,
}

impl Writer {
    /// (index, UTC unix seconds) of every point.
    fn points(&self) -> impl Iterator<Item = (i64, i64)> + use<> {
        let start = self.start;
        (0..self.n).map(move |i| (i, start + i * SCRAPE_S))
    }

    fn gauge(&mut self, name: &str, series: &[(String, Curve)]) {
        let mut text = format!("# TYPE {name} gauge\n");
        for (labels, f) in series {
            for (i, ts) in self.points() {
                writeln!(text, "{name}{{{labels}}} {} {ts}", f(i)).unwrap();
            }
        }
        self.out.push_str(&text);
    }

    /// A constant gauge of 1 per label set, as kube-state-metrics' info-like series.
    fn info(&mut self, name: &str, series: impl IntoIterator<Item = String>) {
        let series: Vec<(String, Curve)> = series
            .into_iter()
            .map(|l| (l, Box::new(|_| 1.0) as Curve))
            .collect();
        self.gauge(name, &series);
    }

    /// Counters rising at a constant rate per second.
    fn counter(&mut self, name: &str, series: &[(String, f64)]) {
        let mut text = format!("# TYPE {name} counter\n");
        for (labels, per_s) in series {
            for (i, ts) in self.points() {
                let total = per_s * (SCRAPE_S * i) as f64;
                writeln!(text, "{name}_total{{{labels}}} {total} {ts}").unwrap();
            }
        }
        self.out.push_str(&text);
    }

    fn histogram(&mut self, name: &str, series: &[Latency]) {
        let mut text = format!("# TYPE {name} histogram\n");
        for h in series {
            let l = &h.labels;
            for (i, ts) in self.points() {
                let count = h.per_s * (SCRAPE_S * i) as f64;
                for (le, share) in h.buckets {
                    writeln!(
                        text,
                        "{name}_bucket{{{l},le=\"{le}\"}} {} {ts}",
                        count * share
                    )
                    .unwrap();
                }
                writeln!(text, "{name}_count{{{l}}} {count} {ts}").unwrap();
                writeln!(text, "{name}_sum{{{l}}} {} {ts}", count * h.mean_s).unwrap();
            }
        }
        self.out.push_str(&text);
    }

    fn finish(mut self) -> String {
        self.out.push_str("# EOF\n");
        self.out
    }
}

/// kube-state-metrics: replicas, HPAs, requests and limits, the owner chain and the
/// `meshbench.io/mesh` labels (allow-listed). The owner series come from two
/// kube-state-metrics replicas, so the queries must cope with duplicates.
fn kube_state_metrics(w: &mut Writer) {
    let dep = |d: &str| format!("namespace=\"{NS}\",deployment=\"{d}\"");
    let replicas_be: fn(i64) -> f64 = |i| 1.0 + (i / 40).min(2) as f64;
    let replicas = |d: &str| -> Curve {
        if d == "quickstart-backend" {
            Box::new(replicas_be)
        } else if foreign(d) {
            Box::new(|_: i64| 7.0)
        } else {
            Box::new(|_: i64| 1.0)
        }
    };
    let all: Vec<(String, Curve)> = deployments()
        .into_keys()
        .map(|d| (dep(d), replicas(d)))
        .collect();
    w.gauge("kube_deployment_spec_replicas", &all);
    let ready: Vec<(String, Curve)> = deployments()
        .into_keys()
        .map(|d| {
            let spec = replicas(d);
            let lagging: Curve = Box::new(move |i: i64| spec(i.saturating_sub(2)));
            (dep(d), lagging)
        })
        .collect();
    w.gauge("kube_deployment_status_replicas_ready", &ready);
    w.info(
        "kube_deployment_labels",
        deployments()
            .into_iter()
            .map(|(d, mesh)| format!("{},label_meshbench_io_mesh=\"{mesh}\"", dep(d))),
    );

    // HPAs of the backend and of the other mesh's frontend.
    let hpa = |h: &str| format!("namespace=\"{NS}\",horizontalpodautoscaler=\"{h}\"");
    w.gauge(
        "kube_horizontalpodautoscaler_status_desired_replicas",
        &[
            (hpa("quickstart-backend"), Box::new(replicas_be)),
            (hpa("quickstart-2-frontend"), Box::new(|_| 9.0)),
        ],
    );
    let target = ",metric_name=\"cpu\",metric_target_type=\"utilization\"";
    w.gauge(
        "kube_horizontalpodautoscaler_spec_target_metric",
        &[
            (
                format!("{}{target}", hpa("quickstart-backend")),
                Box::new(|_| 50.0),
            ),
            (
                format!("{}{target}", hpa("quickstart-2-frontend")),
                Box::new(|_| 80.0),
            ),
        ],
    );

    let res = |p: &Pod| {
        format!(
            "namespace=\"{NS}\",pod=\"{}\",container=\"worker\",resource=\"cpu\",unit=\"core\"",
            p.name
        )
    };
    let requests: Vec<(String, Curve)> = PODS
        .iter()
        .map(|p| {
            let v = p.cpu_request();
            (res(p), Box::new(move |_| v) as Curve)
        })
        .collect();
    w.gauge("kube_pod_container_resource_requests", &requests);
    let limits: Vec<(String, Curve)> = PODS
        .iter()
        .map(|p| {
            let v = 2.0 * p.cpu_request();
            (res(p), Box::new(move |_| v) as Curve)
        })
        .collect();
    w.gauge("kube_pod_container_resource_limits", &limits);

    let replicas_of_ksm = ["ksm-0", "ksm-1"];
    w.info(
        "kube_pod_owner",
        replicas_of_ksm.iter().flat_map(|ksm| {
            PODS.iter().map(move |p| {
                format!(
                    "namespace=\"{NS}\",pod=\"{}\",uid=\"uid-{}\",owner_kind=\"ReplicaSet\",owner_name=\"{}\",owner_is_controller=\"true\",instance=\"{ksm}\"",
                    p.name, p.name, p.replicaset
                )
            })
        }),
    );
    w.info(
        "kube_replicaset_owner",
        replicas_of_ksm.iter().flat_map(|ksm| {
            replicasets().into_iter().map(move |(rs, d)| {
                format!(
                    "namespace=\"{NS}\",replicaset=\"{rs}\",owner_kind=\"Deployment\",owner_name=\"{d}\",owner_is_controller=\"true\",instance=\"{ksm}\""
                )
            })
        }),
    );
    w.info(
        "kube_pod_labels",
        PODS.iter().map(|p| {
            format!(
                "namespace=\"{NS}\",pod=\"{}\",label_meshbench_io_mesh=\"{}\"",
                p.name, p.mesh
            )
        }),
    );
}

/// cAdvisor, through the kubelet: CPU time and working set of every worker container.
fn cadvisor(w: &mut Writer) {
    let cont = |p: &Pod| format!("namespace=\"{NS}\",pod=\"{}\",container=\"worker\"", p.name);
    let memory: Vec<(String, Curve)> = PODS
        .iter()
        .map(|p| (cont(p), Box::new(|i: i64| 50e6 + i as f64 * 1e4) as Curve))
        .collect();
    w.gauge("container_memory_working_set_bytes", &memory);
    let cpu: Vec<(String, f64)> = PODS
        .iter()
        .map(|p| (cont(p), 0.8 * p.cpu_request()))
        .collect();
    w.counter("container_cpu_usage_seconds", &cpu);
}

/// The workers' own metrics, with the labels the PodMonitor adds. The other mesh's
/// frontend has the same service name, at other rates and latencies.
fn workers(w: &mut Writer) {
    let labels = |mesh: &str, svc: &str| {
        format!("namespace=\"{NS}\",mesh=\"{mesh}\",service=\"{svc}\",endpoint=\"/\",pod=\"x\"")
    };
    let status =
        |mesh: &str, svc: &str, code: &str| format!("{},status=\"{code}\"", labels(mesh, svc));
    w.counter(
        "meshbench_worker_requests",
        &[
            (status(MESH, "frontend", "200"), 30.0),
            (status(MESH, "frontend", "500"), 0.5),
            (status(MESH, "backend", "200"), 30.0),
            (status(MESH, LONG_SERVICE, "200"), 5.0),
            (status("quickstart-2", "frontend", "200"), 100.0),
            (status("quickstart-2", "frontend", "500"), 50.0),
        ],
    );
    // 90 % under 10 ms, all under 100 ms, 6 ms on average; the other mesh is slow.
    let fast = [("0.001", 0.1), ("0.01", 0.9), ("0.1", 1.0), ("+Inf", 1.0)];
    let slow = [("0.001", 0.0), ("0.01", 0.0), ("0.1", 0.0), ("+Inf", 1.0)];
    let latency = |mesh: &str, svc: &str, mean_s, buckets| Latency {
        labels: labels(mesh, svc),
        per_s: 30.0,
        mean_s,
        buckets,
    };
    w.histogram(
        "meshbench_worker_request_duration_seconds",
        &[
            latency(MESH, "frontend", 0.006, fast),
            latency(MESH, "backend", 0.006, fast),
            latency("quickstart-2", "frontend", 2.0, slow),
        ],
    );
}

/// The load generator's live metrics.
fn loadgen(w: &mut Writer) {
    let base = format!(
        "namespace=\"{NS}\",benchmark=\"quickstart\",run=\"r1\",mesh=\"{MESH}\",instance=\"0\""
    );
    let outcome = |o: &str| format!("{base},outcome=\"{o}\"");
    w.counter(
        "meshbench_loadgen_requests",
        &[
            (outcome("ok"), 29.0),
            (outcome("5xx"), 0.5),
            (outcome("sent"), 30.0),
        ],
    );
    w.gauge(
        "meshbench_loadgen_target_rate",
        &[(base.clone(), Box::new(|i: i64| 10.0 * (1 + i / 40) as f64))],
    );
    w.gauge(
        "meshbench_loadgen_stage",
        &[(base, Box::new(|i: i64| (i / 40) as f64))],
    );
}

/// Every synthetic series: `n` points every [`SCRAPE_S`] from `start`.
fn openmetrics(start: i64, n: i64) -> String {
    let mut w = Writer {
        out: String::new(),
        start,
        n,
    };
    kube_state_metrics(&mut w);
    cadvisor(&mut w);
    workers(&mut w);
    loadgen(&mut w);
    w.finish()
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(prometheus: &Path, dir: &Path, data: &Path) -> (Prometheus, String) {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 1h\nscrape_configs: []\n",
    )
    .unwrap();
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--storage.tsdb.retention.time=30d")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Prometheus(child), format!("http://127.0.0.1:{port}"))
}

async fn wait_ready(url: &str) {
    for _ in 0..120 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n").await;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200") {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("prometheus at {url} did not become ready within 30 s");
}

/// The mesh under test, as the Benchmark controller describes it to the collector.
fn vars() -> Vars {
    Vars {
        namespace: NS.into(),
        mesh: MESH.into(),
        objects: BTreeMap::from([
            ("quickstart-frontend".into(), "frontend".into()),
            ("quickstart-backend".into(), "backend".into()),
            (LONG_DEPLOYMENT.into(), LONG_SERVICE.into()),
        ]),
        window: rate_window(Duration::from_secs(SCRAPE_S as u64)),
    }
}

/// Every `expr` of the dashboard (panels and annotations), with Grafana's variables
/// filled in.
fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/meshbench-run.json");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for a in d["annotations"]["list"].as_array().unwrap() {
        out.push(a["expr"].as_str().unwrap().to_string());
    }
    out.into_iter()
        .map(|q| {
            q.replace("$__rate_interval", "1m")
                .replace("$namespace", NS)
                .replace("$mesh", MESH)
                .replace("$benchmark", "quickstart")
                .replace("$run", "r1")
        })
        .collect()
}

/// Asserts that no label of `series` names another mesh's object.
#[track_caller]
fn assert_no_foreign(what: &str, series: &[Series]) {
    for (labels, _) in series {
        assert!(
            !labels.values().any(|v| foreign(v)),
            "{what} returned another mesh's series: {labels:?}"
        );
    }
}

fn owned<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    names.into_iter().map(str::to_string).collect()
}

/// The values of `label` over `series`.
fn values_of(label: &str, series: &[Series]) -> BTreeSet<String> {
    series
        .iter()
        .filter_map(|(labels, _)| labels.get(label).cloned())
        .collect()
}

/// Backfills the synthetic series and serves them; the guard stops Prometheus.
async fn backfilled_prometheus(
    prometheus: &Path,
    promtool: &Path,
    dir: &Path,
    start: i64,
    n: i64,
) -> (Prometheus, String) {
    let data = dir.join("data");
    let input = dir.join("series.om");
    std::fs::write(&input, openmetrics(start, n)).unwrap();
    let out = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (guard, url) = start_prometheus(prometheus, dir, &data);
    wait_ready(&url).await;
    (guard, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_and_dashboard_queries_return_data_from_real_prometheus() {
    let Some((prometheus, promtool)) = tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // 30 minutes of data ending 10 minutes ago (backfill must not overlap the head).
    let n = 120;
    let start = now - 40 * 60;
    let (_prom, url) = backfilled_prometheus(&prometheus, &promtool, dir.path(), start, n).await;
    let window = Window {
        start: start + 120,
        end: start + (n - 1) * SCRAPE_S,
        step: SCRAPE_S as f64,
    };
    let collector = Collector::new(&url).unwrap();
    let vars = vars();

    // Every template, one by one, returns data for the mesh and nothing of the others.
    for t in TEMPLATES {
        let query = vars.fill(t.expr);
        let series = collector.range(t.name, &query, window).await.unwrap();
        assert!(!series.is_empty(), "{} returned no series: {query}", t.name);
        for (labels, points) in &series {
            assert!(!points.is_empty(), "{}: empty series {labels:?}", t.name);
        }
        assert_no_foreign(t.name, &series);
    }

    collected_samples_are_the_mesh_s(&collector, &vars, window).await;

    // An override by name replaces the template; an unknown name is refused.
    let over = BTreeMap::from([(
        metric::REPLICAS.to_string(),
        r#"max by (deployment) (kube_deployment_status_replicas_ready{namespace="$namespace", deployment=~"$deployments"})"#.to_string(),
    )]);
    let s2 = collector.collect(&vars, &over, window, None).await.unwrap();
    assert!(s2.iter().any(|s| s.metric == metric::REPLICAS));
    let bad = BTreeMap::from([("replica".to_string(), "up".to_string())]);
    let err = collector
        .collect(&vars, &bad, window, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.collection.queries.replica"), "{err}");

    dashboard_shows_the_mesh_only(&collector, window).await;
}

/// The collector's samples: every service of the mesh, the long-named one included, with
/// its own figures, and nothing of the other meshes.
async fn collected_samples_are_the_mesh_s(collector: &Collector, vars: &Vars, window: Window) {
    let samples = collector
        .collect(vars, &BTreeMap::new(), window, Some(0))
        .await
        .unwrap();
    let get = |m: &str, svc: &str| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s.metric == m && s.service == svc)
            .map(|s| s.value)
            .collect()
    };
    let pods = |m: &str, svc: &str| -> BTreeSet<&str> {
        samples
            .iter()
            .filter(|s| s.metric == m && s.service == svc)
            .filter_map(|s| s.pod.as_deref())
            .collect()
    };
    let all_near = |values: &[f64], want: f64| {
        !values.is_empty() && values.iter().all(|v| (v - want).abs() < 1e-6)
    };

    assert_eq!(
        get(metric::REPLICAS, "backend")
            .iter()
            .cloned()
            .fold(0.0, f64::max),
        3.0
    );
    assert_eq!(get(metric::HPA_TARGET_UTILIZATION, "backend")[0], 0.5);
    for (svc, request) in [("frontend", 0.25), ("backend", 0.25), (LONG_SERVICE, 0.5)] {
        let r = get(metric::CPU_REQUEST_CORES, svc);
        assert!(all_near(&r, request), "{svc} request {r:?}");
        let l = get(metric::CPU_LIMIT_CORES, svc);
        assert!(all_near(&l, 2.0 * request), "{svc} limit {l:?}");
        let cpu = get(metric::CPU_CORES, svc);
        assert!(all_near(&cpu, 0.8 * request), "{svc} cpu {cpu:?}");
    }
    // Both ReplicaSets of the backend, and the pod whose name was cut short.
    assert_eq!(
        pods(metric::CPU_CORES, "backend"),
        BTreeSet::from([POD_BE1, POD_BE2])
    );
    for m in [metric::CPU_CORES, metric::MEMORY_BYTES] {
        assert_eq!(pods(m, LONG_SERVICE), BTreeSet::from([POD_LONG]), "{m}");
    }
    assert!(
        samples
            .iter()
            .filter(|s| s.metric == metric::CPU_CORES || s.metric == metric::MEMORY_BYTES)
            .all(|s| s.pod.is_some())
    );
    let rps = get(metric::WORKER_REQUESTS_PER_S, "frontend");
    assert!(all_near(&rps, 30.5), "{rps:?}");
    let errs = get(metric::WORKER_ERRORS_PER_S, "frontend");
    assert!(all_near(&errs, 0.5), "{errs:?}");
    let mean = get(metric::WORKER_LATENCY_MEAN_MS, "backend");
    assert!(all_near(&mean, 6.0), "{mean:?}");
    let p99 = get(metric::WORKER_LATENCY_P99_MS, "frontend");
    assert!(
        !p99.is_empty() && p99.iter().all(|v| *v > 10.0 && *v <= 100.0),
        "{p99:?}"
    );

    let ours: BTreeSet<&str> = PODS.iter().filter(|p| p.ours()).map(|p| p.name).collect();
    let services = BTreeSet::from(["frontend", "backend", LONG_SERVICE]);
    for s in &samples {
        assert!(
            s.mesh == MESH && s.step == Some(0) && services.contains(s.service.as_str()),
            "{s:?}"
        );
        assert!(s.pod.as_deref().is_none_or(|p| ours.contains(p)), "{s:?}");
    }
}

/// Every dashboard query returns data, and its Deployments, HPAs and pods are exactly
/// the mesh's: selected by the `meshbench.io/mesh` label, not by a name prefix that
/// `quickstart-2` shares.
async fn dashboard_shows_the_mesh_only(collector: &Collector, window: Window) {
    let mut seen: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for q in dashboard_queries() {
        let series = collector.range("dashboard", &q, window).await.unwrap();
        assert!(
            series.iter().any(|(_, p)| !p.is_empty()),
            "dashboard query returned no data: {q}"
        );
        assert_no_foreign(&q, &series);
        for label in ["deployment", "horizontalpodautoscaler", "pod"] {
            seen.entry(label)
                .or_default()
                .extend(values_of(label, &series));
        }
    }
    let our_deployments = owned(
        deployments()
            .into_iter()
            .filter(|(_, mesh)| *mesh == MESH)
            .map(|(d, _)| d),
    );
    let our_pods = owned(PODS.iter().filter(|p| p.ours()).map(|p| p.name));
    assert_eq!(seen["deployment"], our_deployments);
    assert_eq!(
        seen["horizontalpodautoscaler"],
        owned(["quickstart-backend"])
    );
    assert_eq!(seen["pod"], our_pods);
}

#[test]
fn every_prometheus_metric_of_the_vocabulary_has_a_template() {
    for m in [
        metric::REPLICAS,
        metric::REPLICAS_DESIRED,
        metric::REPLICAS_READY,
        metric::CPU_REQUEST_CORES,
        metric::CPU_LIMIT_CORES,
        metric::HPA_TARGET_UTILIZATION,
        metric::CPU_CORES,
        metric::MEMORY_BYTES,
        metric::WORKER_REQUESTS_PER_S,
        metric::WORKER_ERRORS_PER_S,
        metric::WORKER_LATENCY_MEAN_MS,
        metric::WORKER_LATENCY_P99_MS,
    ] {
        assert!(TEMPLATES.iter().any(|t| t.name == m), "{m} has no template");
    }
}

#[test]
fn the_synthetic_long_pod_is_named_as_kubernetes_would() {
    let pod = PODS.iter().find(|p| p.name == POD_LONG).unwrap();
    // generateName is `<replicaset>-`, cut to 63 - 5 characters, plus 5 random ones.
    let prefix: String = format!("{}-", pod.replicaset).chars().take(58).collect();
    assert!(POD_LONG.starts_with(&prefix) && POD_LONG.len() == 63);
    assert!(!POD_LONG.starts_with(LONG_DEPLOYMENT));
    assert_eq!(LONG_DEPLOYMENT, format!("{MESH}-{LONG_SERVICE}"));
}

/// The documents of a YAML file under deploy/.
fn deploy_yaml(rel: &str) -> Vec<serde_yaml::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel);
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The kit installs the dashboard as a ConfigMap Grafana's sidecar loads, and the
/// PodMonitors carry the label a kube-prometheus-stack Prometheus selects them by. They
/// stay out of the kustomize base, which a cluster without the Prometheus Operator's CRDs
/// (like the tests' control plane) must accept.
#[test]
fn the_kit_ships_the_dashboard_to_grafana_and_podmonitors_prometheus_selects() {
    let k = &deploy_yaml("kustomization.yaml")[0];
    let dashboard = k["configMapGenerator"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|g| g["name"].as_str() == Some("meshbench-grafana-dashboard"))
        .expect("a configMapGenerator for the dashboard");
    assert_eq!(
        dashboard["files"][0].as_str(),
        Some("grafana/meshbench-run.json")
    );
    let options = &dashboard["options"];
    assert_eq!(options["labels"]["grafana_dashboard"].as_str(), Some("1"));
    assert_eq!(options["disableNameSuffixHash"].as_bool(), Some(true));
    let resources = k["resources"].as_sequence().unwrap();
    assert!(
        !resources
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.starts_with("prometheus/"))),
        "{resources:?}"
    );

    let monitors = deploy_yaml("prometheus/podmonitor.yaml");
    assert_eq!(monitors.len(), 3);
    for m in &monitors {
        assert_eq!(m["kind"].as_str(), Some("PodMonitor"));
        assert_eq!(
            m["metadata"]["labels"]["release"].as_str(),
            Some("kube-prometheus-stack"),
            "{:?}",
            m["metadata"]["name"]
        );
    }
}
