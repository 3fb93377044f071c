//! Prometheus metrics of the worker, all named `meshbench_worker_*` and labelled with the
//! service (a registry-wide label) and, where it applies, the endpoint.
//!
//! The hot path never hashes label sets: each endpoint resolves its metric handles once
//! (they share their atomics with the registry) and only rare status codes go through
//! the family lookup.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Text encoding failed (only on a formatter error, never expected).
    #[error("cannot encode metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Result alias for this module.
pub type Result<T, E = MetricsError> = std::result::Result<T, E>;

/// Latency buckets in seconds: 100 µs .. 30 s, about three per decade.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// A latency histogram with fixed [`LATENCY_BUCKETS`], updated without locks.
///
/// prometheus-client's `Histogram` takes a mutex per observation; with every request of
/// a busy endpoint observing the same histogram, a worker thread preempted while holding
/// it stalls the others. Here each observation is three relaxed atomic adds.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    inner: Arc<LatencyInner>,
}

#[derive(Debug, Default)]
struct LatencyInner {
    /// Per-bucket (non-cumulative) counts; the last one is `+Inf`.
    buckets: [std::sync::atomic::AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: std::sync::atomic::AtomicU64,
    sum_ns: std::sync::atomic::AtomicU64,
}

impl Latency {
    /// Records one duration.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.inner.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        // The count is the sum of the buckets read, so the exposition stays consistent
        // while requests keep arriving.
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Labels of per-endpoint metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    /// `METHOD path`, e.g. `GET /api`.
    pub endpoint: String,
}

/// Labels of the request counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// `METHOD path`.
    pub endpoint: String,
    /// HTTP status code.
    pub status: u16,
}

/// Labels of the downstream call counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CallLabels {
    /// `METHOD path` of the calling endpoint.
    pub endpoint: String,
    /// The call's target (name, or URL + path).
    pub target: String,
    /// `ok`, `http_error`, `connect_error` or `timeout`.
    pub outcome: &'static str,
}

/// All metric families of one worker.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Latency>,
    in_flight: Family<EndpointLabels, Gauge>,
    cpu: Family<EndpointLabels, Counter<f64, AtomicU64>>,
    shed: Family<EndpointLabels, Counter>,
    calls: Family<CallLabels, Counter>,
    /// New TCP connections opened to downstream services (reuse = calls − this).
    pub connections: Counter,
    /// 1 when `/ready` answers 200.
    pub ready: Gauge,
    /// Requests answered 404 (unknown path) or 405 (known path, other method).
    pub unmatched: Family<RequestLabels, Counter>,
}

/// Status codes whose counters are resolved up front for every endpoint.
const COMMON_STATUSES: [u16; 6] = [200, 413, 500, 502, 503, 504];

/// The metric handles of one endpoint, resolved once.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    label: String,
    by_status: Vec<(u16, Counter)>,
    requests: Family<RequestLabels, Counter>,
    /// Request latency, seconds.
    pub latency: Latency,
    /// Requests in flight.
    pub in_flight: Gauge,
    /// CPU seconds burned for requests (thread CPU clock).
    pub cpu_seconds: Counter<f64, AtomicU64>,
    /// Requests shed with 503.
    pub shed: Counter,
    calls: Family<CallLabels, Counter>,
}

impl EndpointMetrics {
    /// Counts one answered request.
    pub fn count_status(&self, status: u16) {
        match self.by_status.iter().find(|(s, _)| *s == status) {
            Some((_, c)) => c.inc(),
            None => self
                .requests
                .get_or_create(&RequestLabels {
                    endpoint: self.label.clone(),
                    status,
                })
                .inc(),
        };
    }

    /// The counter of one (target, outcome) pair; resolve once per call config.
    pub fn call_counter(&self, target: &str, outcome: &'static str) -> Counter {
        self.calls
            .get_or_create(&CallLabels {
                endpoint: self.label.clone(),
                target: target.to_owned(),
                outcome,
            })
            .clone()
    }
}

impl Metrics {
    /// Registers every family in `registry` (which should carry the `service` label and
    /// the `meshbench_worker` prefix, see [`new_registry`]).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            requests: Family::default(),
            latency: Family::default(),
            in_flight: Family::default(),
            cpu: Family::default(),
            shed: Family::default(),
            calls: Family::default(),
            connections: Counter::default(),
            ready: Gauge::default(),
            unmatched: Family::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by endpoint and status",
            m.requests.clone(),
        );
        registry.register(
            "unmatched_requests",
            "Requests to unknown paths (404) or with another method (405)",
            m.unmatched.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request arrival to response, by endpoint",
            m.latency.clone(),
        );
        registry.register(
            "in_flight",
            "Requests in flight, by endpoint",
            m.in_flight.clone(),
        );
        registry.register(
            "cpu_seconds",
            "CPU time burned for requests on the thread CPU clock, by endpoint",
            m.cpu.clone(),
        );
        registry.register(
            "shed_requests",
            "Requests refused with 503 because the endpoint was at max_in_flight",
            m.shed.clone(),
        );
        registry.register(
            "downstream_calls",
            "Downstream calls, by endpoint, target and outcome",
            m.calls.clone(),
        );
        registry.register(
            "downstream_connections",
            "TCP connections opened to downstream services (the rest reused a pooled one)",
            m.connections.clone(),
        );
        registry.register("ready", "1 when /ready answers 200", m.ready.clone());
        registry.register_collector(Box::new(ProcessCollector));
        m
    }

    /// Resolves the handles of one endpoint (label `METHOD path`).
    pub fn endpoint(&self, label: &str) -> EndpointMetrics {
        let l = EndpointLabels {
            endpoint: label.to_owned(),
        };
        let by_status = COMMON_STATUSES
            .iter()
            .map(|&status| {
                let c = self
                    .requests
                    .get_or_create(&RequestLabels {
                        endpoint: label.to_owned(),
                        status,
                    })
                    .clone();
                (status, c)
            })
            .collect();
        EndpointMetrics {
            label: label.to_owned(),
            by_status,
            requests: self.requests.clone(),
            latency: self.latency.get_or_create(&l).clone(),
            in_flight: self.in_flight.get_or_create(&l).clone(),
            cpu_seconds: self.cpu.get_or_create(&l).clone(),
            shed: self.shed.get_or_create(&l).clone(),
            calls: self.calls.clone(),
        }
    }
}

/// A registry with the `meshbench_worker` prefix and a `service` label on every metric.
pub fn new_registry(service: &str) -> Registry {
    Registry::with_prefix_and_labels(
        "meshbench_worker",
        [(
            std::borrow::Cow::Borrowed("service"),
            std::borrow::Cow::Owned(service.to_owned()),
        )]
        .into_iter(),
    )
}

/// Encodes the registry in the OpenMetrics text format (which Prometheus scrapes).
pub fn encode(registry: &Registry) -> Result<String> {
    let mut out = String::with_capacity(8192);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// CPU time and resident memory of the whole process, read from `/proc/self` on scrape.
#[derive(Debug)]
struct ProcessCollector;

/// Process CPU seconds (user + system) and resident bytes of a process, from `/proc`.
/// `pid` None means this process.
pub fn process_usage(pid: Option<u32>) -> Option<(f64, u64)> {
    let dir = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // Fields after the parenthesised command name, which may itself contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, i.e. 11 and 12 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let tick = clock_ticks_per_second();
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some(((utime + stime) as f64 / tick, rss_kib * 1024))
}

fn clock_ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some((cpu, rss)) = process_usage(None) else {
            return Ok(());
        };
        let c = ConstCounter::new(cpu);
        c.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "CPU time (user + system) of the worker process",
            None,
            c.metric_type(),
        )?)?;
        let g = ConstGauge::new(rss as i64);
        g.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory of the worker process",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Shared handle to a registry, as served on `/metrics`.
pub type SharedRegistry = Arc<Registry>;
