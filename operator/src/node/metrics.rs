//! The kubelet's resource metrics endpoint, `/metrics/resource`, which metrics-server
//! scrapes to serve `metrics.k8s.io` (what `kubectl top` and the HPA controller read):
//! per container CPU time and memory working set from its cgroup, the same per pod, the
//! node's from /proc, each sample with its timestamp, as the kubelet writes them
//! (pkg/kubelet/metrics/collectors/resource_metrics.go). Beside it, for a Prometheus:
//! `/metrics/cadvisor` (the containers' CPU time and working set under cAdvisor's names,
//! which the collector's PromQL reads) and `/metrics/kube-state` (see [`super::state`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use meshbench_runtime::cgroup::Cgroup;
use meshbench_runtime::pods::ReplicaStatus;

/// One container the endpoint reports.
#[derive(Clone)]
pub struct Target {
    /// Namespace.
    pub ns: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Its cgroup.
    pub cgroup: Arc<Cgroup>,
    /// Its supervisor's status (for the start time).
    pub status: watch::Receiver<ReplicaStatus>,
}

/// The containers of the running pods, replaced by the agent on every sync.
pub type Targets = Arc<Mutex<Vec<Target>>>;

/// What the endpoint's handlers read.
#[derive(Clone)]
struct Shared {
    targets: Targets,
    state: super::state::Shared,
}

/// Serves `/metrics/resource`, `/metrics/cadvisor`, `/metrics/kube-state` and `/healthz`
/// on `addr`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    targets: Targets,
    state: super::state::Shared,
) -> std::io::Result<SocketAddr> {
    let app = axum::Router::new()
        .route("/metrics/resource", get(resource))
        .route("/metrics/cadvisor", get(cadvisor))
        .route("/metrics/kube-state", get(kube_state))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Shared { targets, state });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(local)
}

const TEXT_FORMAT: &str = "text/plain; version=0.0.4";

async fn resource(State(shared): State<Shared>) -> impl IntoResponse {
    let snapshot = snapshot(&shared.targets);
    // cgroup and /proc reads are file reads: off the async workers.
    let body = tokio::task::spawn_blocking(move || {
        render(&snapshot, chrono::Utc::now().timestamp_millis())
    })
    .await
    .unwrap_or_else(|_| "scrape_error 1\n".to_owned());
    ([(CONTENT_TYPE, TEXT_FORMAT)], body)
}

async fn cadvisor(State(shared): State<Shared>) -> impl IntoResponse {
    let snapshot = snapshot(&shared.targets);
    let body = tokio::task::spawn_blocking(move || render_cadvisor(&snapshot))
        .await
        .unwrap_or_default();
    ([(CONTENT_TYPE, TEXT_FORMAT)], body)
}

async fn kube_state(State(shared): State<Shared>) -> axum::response::Response {
    match shared.state.get() {
        Some(stores) => {
            ([(CONTENT_TYPE, TEXT_FORMAT)], super::state::render(stores)).into_response()
        }
        None => (
            axum::http::StatusCode::NOT_FOUND,
            "kube-state series are served with `meshbench node --state-metrics`\n",
        )
            .into_response(),
    }
}

fn snapshot(targets: &Targets) -> Vec<Target> {
    targets.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Escapes a label value for the text exposition format.
pub(super) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes a family's HELP and TYPE lines.
pub(super) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The exposition text at time `ts` (ms since the epoch).
pub fn render(targets: &[Target], ts: i64) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
    );
    if let Some(cpu) = node_cpu_seconds() {
        let _ = writeln!(out, "node_cpu_usage_seconds_total {cpu} {ts}");
    }
    family(
        &mut out,
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
    );
    if let Some(mem) = node_working_set() {
        let _ = writeln!(out, "node_memory_working_set_bytes {mem} {ts}");
    }
    let mut cpu = String::new();
    let mut mem = String::new();
    let mut start = String::new();
    let mut pods: BTreeMap<(String, String), (f64, u64, bool)> = BTreeMap::new();
    for t in targets {
        let Ok(Some(stats)) = t.cgroup.stats() else {
            continue;
        };
        let labels = format!(
            "container=\"{}\",namespace=\"{}\",pod=\"{}\"",
            label(&t.container),
            label(&t.ns),
            label(&t.pod)
        );
        let pod = pods
            .entry((t.ns.clone(), t.pod.clone()))
            .or_insert((0.0, 0, true));
        match stats.cpu_usage {
            Some(c) => {
                let _ = writeln!(
                    cpu,
                    "container_cpu_usage_seconds_total{{{labels}}} {} {ts}",
                    c.as_secs_f64()
                );
                pod.0 += c.as_secs_f64();
            }
            None => pod.2 = false,
        }
        let _ = writeln!(
            mem,
            "container_memory_working_set_bytes{{{labels}}} {} {ts}",
            stats.memory_working_set_bytes
        );
        pod.1 += stats.memory_working_set_bytes;
        if let Some(at) = t.status.borrow().started_at {
            let _ = writeln!(
                start,
                "container_start_time_seconds{{{labels}}} {} {ts}",
                at.timestamp()
            );
        }
    }
    family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
    );
    out.push_str(&cpu);
    family(
        &mut out,
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
    );
    out.push_str(&mem);
    family(
        &mut out,
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
    );
    out.push_str(&start);
    family(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
    );
    for ((ns, pod), (c, _, has_cpu)) in &pods {
        if *has_cpu {
            let _ = writeln!(
                out,
                "pod_cpu_usage_seconds_total{{namespace=\"{}\",pod=\"{}\"}} {c} {ts}",
                label(ns),
                label(pod)
            );
        }
    }
    family(
        &mut out,
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
    );
    for ((ns, pod), (_, m, _)) in &pods {
        let _ = writeln!(
            out,
            "pod_memory_working_set_bytes{{namespace=\"{}\",pod=\"{}\"}} {m} {ts}",
            label(ns),
            label(pod)
        );
    }
    family(
        &mut out,
        "scrape_error",
        "gauge",
        "1 if there was an error while getting container metrics, 0 otherwise",
    );
    out.push_str("scrape_error 0\n");
    out
}

/// cAdvisor's container series as the kubelet's `/metrics/cadvisor` names them, without
/// timestamps (Prometheus stamps them at the scrape, so a stopped container's series
/// ends with a staleness marker).
pub fn render_cadvisor(targets: &[Target]) -> String {
    let mut cpu = String::new();
    let mut mem = String::new();
    for t in targets {
        let Ok(Some(stats)) = t.cgroup.stats() else {
            continue;
        };
        let labels = format!(
            "container=\"{}\",namespace=\"{}\",pod=\"{}\"",
            label(&t.container),
            label(&t.ns),
            label(&t.pod)
        );
        if let Some(c) = stats.cpu_usage {
            let _ = writeln!(
                cpu,
                "container_cpu_usage_seconds_total{{{labels}}} {}",
                c.as_secs_f64()
            );
        }
        let _ = writeln!(
            mem,
            "container_memory_working_set_bytes{{{labels}}} {}",
            stats.memory_working_set_bytes
        );
    }
    let mut out = String::new();
    family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed in seconds.",
    );
    out.push_str(&cpu);
    family(
        &mut out,
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set in bytes.",
    );
    out.push_str(&mem);
    out
}

/// Busy CPU time of the machine (user, nice, system, irq, softirq, steal) in seconds.
fn node_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| f.get(i))
        .sum::<u64>();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|h| *h > 0)
        .unwrap_or(100);
    Some(busy as f64 / hz as f64)
}

/// Memory in use less what the kernel could reclaim at once (MemTotal − MemAvailable).
fn node_working_set() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some(kib("MemTotal:")?.saturating_sub(kib("MemAvailable:")?) * 1024)
}
