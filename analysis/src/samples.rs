//! The long-form samples both platforms emit, and their metric vocabulary.
//!
//! A [`Sample`] is one value of one metric at one instant, for a service (`pod` = `None`) or
//! for one pod of it. The local sampler and the Prometheus collector emit exactly the metrics
//! of [`metric`], with exactly these units; other metric names are kept in the `timeseries`
//! table but not summarised.

use serde::{Deserialize, Serialize};

/// One value of one metric at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Instant of the value, UTC unix milliseconds.
    pub ts_ms: i64,
    /// Mesh the service belongs to.
    pub mesh: String,
    /// Profile index of the step the collector was collecting for, if it knows it. The
    /// analysis attributes samples by time (the step of the same mesh whose
    /// `[start_ms, end_ms)` contains `ts_ms`); this value is used only for samples that fall
    /// in no step window.
    pub step: Option<u32>,
    /// Service name.
    pub service: String,
    /// Pod (replica) name for per-pod metrics; `None` for per-service metrics.
    pub pod: Option<String>,
    /// One of the names in [`metric`] (others are kept but not summarised).
    pub metric: String,
    /// Value in the unit of the metric.
    pub value: f64,
}

/// The metric vocabulary. Names carry their unit; "per service" metrics have `pod = None`,
/// "per pod" metrics name the pod.
pub mod metric {
    /// Per service: replicas the workload is scaled to (Deployment `spec.replicas`, or the
    /// local runtime's process count target). Counts, as f64.
    pub const REPLICAS: &str = "replicas";
    /// Per service: the HPA's desired replicas at its last decision.
    pub const REPLICAS_DESIRED: &str = "replicas_desired";
    /// Per service: replicas that are ready (pass readiness).
    pub const REPLICAS_READY: &str = "replicas_ready";
    /// Per service: replicas the scheduler left Pending for want of room on the node.
    pub const REPLICAS_PENDING: &str = "replicas_pending";
    /// Per service: CPU request of one pod, in cores (the HPA's 100 %).
    pub const CPU_REQUEST_CORES: &str = "cpu_request_cores";
    /// Per service: CPU limit of one pod, in cores (absent when unlimited).
    pub const CPU_LIMIT_CORES: &str = "cpu_limit_cores";
    /// Per service: the HPA's target CPU utilization as a fraction of the request (0.7 = 70 %).
    pub const HPA_TARGET_UTILIZATION: &str = "hpa_target_utilization";
    /// Per service: the HPA's observed CPU utilization as a fraction of the request.
    pub const HPA_CURRENT_UTILIZATION: &str = "hpa_current_utilization";
    /// Per service, at every HPA sync: the metric's proposal before stabilization (count).
    pub const HPA_RECOMMENDATION: &str = "hpa_recommendation";
    /// Per service, at every HPA sync: the proposal after the stabilization window (count).
    pub const HPA_STABILIZED: &str = "hpa_stabilized";
    /// Per service, at every HPA sync: pods whose CPU sample the HPA used (count).
    pub const HPA_READY_PODS: &str = "hpa_ready_pods";
    /// Per service, at every HPA sync: pods set aside as not yet ready (count).
    pub const HPA_UNREADY_PODS: &str = "hpa_unready_pods";
    /// Per service, at every HPA sync: pods without a CPU sample (count).
    pub const HPA_MISSING_PODS: &str = "hpa_missing_pods";
    /// Per pod, at every HPA sync: the pod's CPU over the HPA's window as a fraction of its
    /// request.
    pub const HPA_POD_UTILIZATION: &str = "hpa_pod_utilization";
    /// Per pod: CPU used, in cores (CPU seconds per second over the sampling interval).
    pub const CPU_CORES: &str = "cpu_cores";
    /// Per pod: memory working set, in bytes.
    pub const MEMORY_BYTES: &str = "memory_bytes";
    /// Per service: requests the service's workers handled per second (all pods).
    pub const WORKER_REQUESTS_PER_S: &str = "worker_requests_per_s";
    /// Per service: requests per second the workers answered with an error (5xx, shed).
    pub const WORKER_ERRORS_PER_S: &str = "worker_errors_per_s";
    /// Per service: mean worker-side latency over the interval, in milliseconds.
    pub const WORKER_LATENCY_MEAN_MS: &str = "worker_latency_mean_ms";
    /// Per service: 99th percentile of worker-side latency over the interval, in ms.
    pub const WORKER_LATENCY_P99_MS: &str = "worker_latency_p99_ms";

    /// Every metric the analysis summarises, with whether it is per pod, for the docs.
    pub const ALL: &[(&str, bool, &str)] = &[
        (
            REPLICAS,
            false,
            "replicas the workload is scaled to (count)",
        ),
        (
            REPLICAS_DESIRED,
            false,
            "the HPA's desired replicas at its last decision (count)",
        ),
        (REPLICAS_READY, false, "ready replicas (count)"),
        (
            REPLICAS_PENDING,
            false,
            "replicas Pending for want of room on the node (count)",
        ),
        (CPU_REQUEST_CORES, false, "CPU request of one pod (cores)"),
        (
            CPU_LIMIT_CORES,
            false,
            "CPU limit of one pod (cores); absent when unlimited",
        ),
        (
            HPA_TARGET_UTILIZATION,
            false,
            "HPA target CPU utilization (fraction of the request, 0.7 = 70 %)",
        ),
        (
            HPA_CURRENT_UTILIZATION,
            false,
            "HPA observed CPU utilization (fraction of the request)",
        ),
        (
            HPA_RECOMMENDATION,
            false,
            "at every HPA sync: the metric's proposal before stabilization (count)",
        ),
        (
            HPA_STABILIZED,
            false,
            "at every HPA sync: the proposal after the stabilization window (count)",
        ),
        (
            HPA_READY_PODS,
            false,
            "at every HPA sync: pods whose CPU sample was used (count)",
        ),
        (
            HPA_UNREADY_PODS,
            false,
            "at every HPA sync: pods set aside as not yet ready (count)",
        ),
        (
            HPA_MISSING_PODS,
            false,
            "at every HPA sync: pods without a CPU sample (count)",
        ),
        (
            HPA_POD_UTILIZATION,
            true,
            "at every HPA sync: the pod's CPU over the HPA's window ÷ its request (fraction)",
        ),
        (
            CPU_CORES,
            true,
            "CPU used by the pod (cores = CPU seconds per second)",
        ),
        (MEMORY_BYTES, true, "memory working set of the pod (bytes)"),
        (
            WORKER_REQUESTS_PER_S,
            false,
            "requests handled by all pods (1/s)",
        ),
        (
            WORKER_ERRORS_PER_S,
            false,
            "requests answered with an error by all pods (1/s)",
        ),
        (
            WORKER_LATENCY_MEAN_MS,
            false,
            "mean worker-side latency (ms)",
        ),
        (WORKER_LATENCY_P99_MS, false, "p99 worker-side latency (ms)"),
    ];
}

impl Sample {
    /// A per-service sample.
    pub fn service(ts_ms: i64, mesh: &str, service: &str, metric: &str, value: f64) -> Sample {
        Sample {
            ts_ms,
            mesh: mesh.to_owned(),
            step: None,
            service: service.to_owned(),
            pod: None,
            metric: metric.to_owned(),
            value,
        }
    }

    /// A per-pod sample.
    pub fn pod(
        ts_ms: i64,
        mesh: &str,
        service: &str,
        pod: &str,
        metric: &str,
        value: f64,
    ) -> Sample {
        Sample {
            pod: Some(pod.to_owned()),
            ..Sample::service(ts_ms, mesh, service, metric, value)
        }
    }
}
