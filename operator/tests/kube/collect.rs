//! Collection against a real Prometheus (Debian `prometheus` package): synthetic series
//! in kube-state-metrics, cAdvisor, worker and loadgen naming are backfilled with
//! `promtool tsdb create-blocks-from openmetrics`, Prometheus serves that storage on
//! 127.0.0.1, and every PromQL of the collector and of the Grafana dashboard must return
//! data. Without the binaries the test is skipped, except under CI=true where it fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshbench_analysis::samples::metric;
use meshbench_operator::k8s::collect::{Collector, Window};
use meshbench_operator::k8s::promql::{TEMPLATES, Vars};

const NS: &str = "bench";
const POD_FE: &str = "quickstart-frontend-5d8f7c9b4-abcde";
const POD_BE1: &str = "quickstart-backend-7c6d5b4a3-fghij";
const POD_BE2: &str = "quickstart-backend-7c6d5b4a3-klmno";
/// A pod of another mesh in the same namespace: must never show up.
const POD_OTHER: &str = "othermesh-frontend-6b5a4c3d2-pqrst";

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

/// Writes the synthetic series: `n` points every 15 s from `start`.
fn openmetrics(start: i64, n: i64) -> String {
    let mut s = String::new();
    let ts = |i: i64| start + i * 15;
    let gauge = |s: &mut String, name: &str, series: &[(String, Curve)]| {
        writeln!(s, "# TYPE {name} gauge").unwrap();
        for (labels, f) in series {
            for i in 0..n {
                writeln!(s, "{name}{{{labels}}} {} {}", f(i), ts(i)).unwrap();
            }
        }
    };
    let dep = |d: &str| format!("namespace=\"{NS}\",deployment=\"{d}\"");
    let replicas_be: fn(i64) -> f64 = |i| 1.0 + (i / 40).min(2) as f64;
    gauge(
        &mut s,
        "kube_deployment_spec_replicas",
        &[
            (dep("quickstart-frontend"), Box::new(|_| 1.0)),
            (dep("quickstart-backend"), Box::new(replicas_be)),
            (dep("othermesh-frontend"), Box::new(|_| 7.0)),
        ],
    );
    gauge(
        &mut s,
        "kube_deployment_status_replicas_ready",
        &[
            (dep("quickstart-frontend"), Box::new(|_| 1.0)),
            (
                dep("quickstart-backend"),
                Box::new(move |i: i64| replicas_be(i.saturating_sub(2))),
            ),
        ],
    );
    let hpa = format!("namespace=\"{NS}\",horizontalpodautoscaler=\"quickstart-backend\"");
    gauge(
        &mut s,
        "kube_horizontalpodautoscaler_status_desired_replicas",
        &[(hpa.clone(), Box::new(replicas_be))],
    );
    gauge(
        &mut s,
        "kube_horizontalpodautoscaler_spec_target_metric",
        &[(
            format!("{hpa},metric_name=\"cpu\",metric_target_type=\"utilization\""),
            Box::new(|_| 50.0),
        )],
    );
    let res = |pod: &str| {
        format!(
            "namespace=\"{NS}\",pod=\"{pod}\",container=\"worker\",resource=\"cpu\",unit=\"core\""
        )
    };
    let pods = [POD_FE, POD_BE1, POD_BE2, POD_OTHER];
    gauge(
        &mut s,
        "kube_pod_container_resource_requests",
        &pods
            .iter()
            .map(|p| (res(p), Box::new(|_| 0.25) as Curve))
            .collect::<Vec<_>>(),
    );
    gauge(
        &mut s,
        "kube_pod_container_resource_limits",
        &pods
            .iter()
            .map(|p| (res(p), Box::new(|_| 0.5) as Curve))
            .collect::<Vec<_>>(),
    );
    let cont = |pod: &str| format!("namespace=\"{NS}\",pod=\"{pod}\",container=\"worker\"");
    gauge(
        &mut s,
        "container_memory_working_set_bytes",
        &pods
            .iter()
            .map(|p| (cont(p), Box::new(|i: i64| 50e6 + i as f64 * 1e4) as Curve))
            .collect::<Vec<_>>(),
    );

    let counter = |s: &mut String, name: &str, series: &[(String, f64)]| {
        writeln!(s, "# TYPE {name} counter").unwrap();
        for (labels, per_s) in series {
            for i in 0..n {
                writeln!(
                    s,
                    "{name}_total{{{labels}}} {} {}",
                    per_s * 15.0 * i as f64,
                    ts(i)
                )
                .unwrap();
            }
        }
    };
    counter(
        &mut s,
        "container_cpu_usage_seconds",
        &pods.iter().map(|p| (cont(p), 0.2)).collect::<Vec<_>>(),
    );
    let w = |svc: &str, status: &str| {
        format!(
            "namespace=\"{NS}\",mesh=\"quickstart\",service=\"{svc}\",endpoint=\"/\",status=\"{status}\",pod=\"x\""
        )
    };
    counter(
        &mut s,
        "meshbench_worker_requests",
        &[
            (w("frontend", "200"), 30.0),
            (w("frontend", "500"), 0.5),
            (w("backend", "200"), 30.0),
        ],
    );
    let lg = |outcome: &str| {
        format!(
            "namespace=\"{NS}\",benchmark=\"quickstart\",run=\"r1\",mesh=\"quickstart\",instance=\"0\",outcome=\"{outcome}\""
        )
    };
    counter(
        &mut s,
        "meshbench_loadgen_requests",
        &[(lg("ok"), 29.0), (lg("5xx"), 0.5), (lg("sent"), 30.0)],
    );
    let lgl = format!(
        "namespace=\"{NS}\",benchmark=\"quickstart\",run=\"r1\",mesh=\"quickstart\",instance=\"0\""
    );
    gauge(
        &mut s,
        "meshbench_loadgen_target_rate",
        &[(lgl.clone(), Box::new(|i: i64| 10.0 * (1 + i / 40) as f64))],
    );
    gauge(
        &mut s,
        "meshbench_loadgen_stage",
        &[(lgl, Box::new(|i: i64| (i / 40) as f64))],
    );

    // Worker latency histogram: 90 % under 10 ms, all under 100 ms.
    let name = "meshbench_worker_request_duration_seconds";
    writeln!(s, "# TYPE {name} histogram").unwrap();
    for svc in ["frontend", "backend"] {
        let l = format!(
            "namespace=\"{NS}\",mesh=\"quickstart\",service=\"{svc}\",endpoint=\"/\",pod=\"x\""
        );
        for i in 0..n {
            let count = 30.0 * 15.0 * i as f64;
            for (le, frac) in [("0.001", 0.1), ("0.01", 0.9), ("0.1", 1.0), ("+Inf", 1.0)] {
                writeln!(
                    s,
                    "{name}_bucket{{{l},le=\"{le}\"}} {} {}",
                    count * frac,
                    ts(i)
                )
                .unwrap();
            }
            writeln!(s, "{name}_count{{{l}}} {count} {}", ts(i)).unwrap();
            writeln!(s, "{name}_sum{{{l}}} {} {}", count * 0.006, ts(i)).unwrap();
        }
    }
    s.push_str("# EOF\n");
    s
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

fn start(prometheus: &Path, dir: &Path, data: &Path) -> (Prometheus, String) {
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

fn vars() -> Vars {
    Vars {
        namespace: NS.into(),
        mesh: "quickstart".into(),
        objects: BTreeMap::from([
            ("quickstart-frontend".into(), "frontend".into()),
            ("quickstart-backend".into(), "backend".into()),
        ]),
        window: "1m".into(),
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
                .replace("$mesh", "quickstart")
                .replace("$benchmark", "quickstart")
                .replace("$run", "r1")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_and_dashboard_queries_return_data_from_real_prometheus() {
    let Some((prometheus, promtool)) = tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // 30 minutes of data ending 10 minutes ago (backfill must not overlap the head).
    let n = 120;
    let start = now - 40 * 60;
    let input = dir.path().join("series.om");
    std::fs::write(&input, openmetrics(start, n)).unwrap();
    let out = Command::new(&promtool)
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
    let (_prom, url) = start_prom(&prometheus, dir.path(), &data);
    wait_ready(&url).await;

    let window = Window {
        start: start + 120,
        end: start + (n - 1) * 15,
        step: 15.0,
    };
    let collector = Collector::new(&url).unwrap();
    let vars = vars();
    // Every template, one by one, returns data for the mesh and nothing of the other mesh.
    for t in TEMPLATES {
        let series = collector
            .range(t.name, &vars.fill(t.expr), window)
            .await
            .unwrap();
        assert!(
            !series.is_empty(),
            "{} returned no series: {}",
            t.name,
            vars.fill(t.expr)
        );
        for (labels, points) in &series {
            assert!(!points.is_empty(), "{}: empty series {labels:?}", t.name);
            assert!(
                !labels.values().any(|v| v.starts_with("othermesh")),
                "{}: {labels:?}",
                t.name
            );
        }
    }
    let samples = collector
        .collect(&vars, &BTreeMap::new(), window, Some(0))
        .await
        .unwrap();
    let get = |m: &str, svc: &str| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s.metric == m && s.service == svc)
            .map(|s| s.value)
            .collect()
    };
    assert_eq!(
        get(metric::REPLICAS, "backend")
            .iter()
            .cloned()
            .fold(0.0, f64::max),
        3.0
    );
    assert_eq!(get(metric::HPA_TARGET_UTILIZATION, "backend")[0], 0.5);
    assert_eq!(get(metric::CPU_REQUEST_CORES, "frontend")[0], 0.25);
    let cpu = get(metric::CPU_CORES, "backend");
    assert!(cpu.iter().all(|v| (v - 0.2).abs() < 1e-6), "{cpu:?}");
    assert!(
        samples
            .iter()
            .filter(|s| s.metric == metric::CPU_CORES)
            .all(|s| s.pod.is_some())
    );
    let rps = get(metric::WORKER_REQUESTS_PER_S, "frontend");
    assert!(rps.iter().all(|v| (v - 30.5).abs() < 1e-6), "{rps:?}");
    let errs = get(metric::WORKER_ERRORS_PER_S, "frontend");
    assert!(errs.iter().all(|v| (v - 0.5).abs() < 1e-6), "{errs:?}");
    let mean = get(metric::WORKER_LATENCY_MEAN_MS, "backend");
    assert!(mean.iter().all(|v| (v - 6.0).abs() < 1e-6), "{mean:?}");
    let p99 = get(metric::WORKER_LATENCY_P99_MS, "backend");
    assert!(p99.iter().all(|v| *v > 10.0 && *v <= 100.0), "{p99:?}");
    assert!(
        samples
            .iter()
            .all(|s| s.mesh == "quickstart" && s.step == Some(0))
    );

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

    // Every dashboard query returns data too.
    for q in dashboard_queries() {
        let series = collector.range("dashboard", &q, window).await.unwrap();
        assert!(
            series.iter().any(|(_, p)| !p.is_empty()),
            "dashboard query returned no data: {q}"
        );
    }
}

fn start_prom(prometheus: &Path, dir: &Path, data: &Path) -> (Prometheus, String) {
    start(prometheus, dir, data)
}

#[test]
fn templates_fill_and_map_pods_to_services() {
    let v = vars();
    assert_eq!(
        v.deployments_regex(),
        "(quickstart-backend|quickstart-frontend)"
    );
    assert_eq!(v.service_of_pod(POD_BE1), Some("backend"));
    assert_eq!(v.service_of_pod(POD_FE), Some("frontend"));
    assert_eq!(v.service_of_pod(POD_OTHER), None);
    // A Deployment name that is a prefix of another's must not capture its pods.
    let mut v2 = v.clone();
    v2.objects.insert("quickstart-front".into(), "front".into());
    assert_eq!(v2.service_of_pod(POD_FE), Some("frontend"));
    for t in TEMPLATES {
        let q = v.fill(t.expr);
        assert!(!q.contains('$'), "{} left a placeholder: {q}", t.name);
        assert!(
            q.contains("namespace=\"bench\""),
            "{} is not namespace-filtered",
            t.name
        );
    }
    // Every metric of the analysis vocabulary that Prometheus can provide is collected.
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
