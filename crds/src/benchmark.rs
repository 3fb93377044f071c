//! The `Benchmark` resource: a load experiment against one or more `ServiceMesh`es.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::mesh::{HttpMethod, ResourceAmounts};
use crate::units::Duration;

/// A load experiment: which mesh, which target, what load, for how long, and what counts
/// as success.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "meshbench.io",
    version = "v1alpha1",
    kind = "Benchmark",
    plural = "benchmarks",
    singular = "benchmark",
    shortname = "bench",
    shortname = "bm",
    category = "meshbench",
    namespaced,
    status = "BenchmarkStatus",
    doc = "A load experiment against one or more meshbench ServiceMeshes.",
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Step", "type": "string", "jsonPath": ".status.currentStep"}"#,
    printcolumn = r#"{"name": "Served RPS", "type": "number", "description": "Served throughput (successes per second until the last one arrived) of the latest completed step", "jsonPath": ".status.throughputRps"}"#,
    printcolumn = r#"{"name": "P99 ms", "type": "number", "description": "99th percentile latency of the latest completed step", "jsonPath": ".status.p99Ms"}"#,
    printcolumn = r#"{"name": "SLO", "type": "string", "jsonPath": ".status.sloVerdict"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BenchmarkSpec {
    /// Names of the ServiceMeshes to benchmark (in this namespace or file); several meshes
    /// are run one after the other with the same load, to compare topologies.
    #[schemars(length(min = 1, max = 16))]
    pub meshes: Vec<String>,
    /// The entry point the load is sent to.
    pub target: Target,
    /// Open or closed loop, and its bounds.
    pub load: LoadModel,
    /// The load over time: explicit stages or a rate sweep.
    pub profile: Profile,
    /// Load applied before the first step, measured but kept apart from the results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
    /// Pause between the end of a step's load and the collection of its metrics, and
    /// between steps (default 0s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle: Option<Duration>,
    /// When the mesh is torn down and deployed again (default `never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeploy: Option<RedeployPolicy>,
    /// How many times the whole profile is repeated (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub repetitions: Option<i32>,
    /// Timeout of one request (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
    /// What happens after a failed step (default `continue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_step_failure: Option<StepFailurePolicy>,
    /// Load generator placement and size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loadgen: Option<LoadgenSettings>,
    /// Where and how metrics are collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<Collection>,
    /// Conditions that decide whether the benchmark passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slos: Option<Slos>,
    // No `report` block: every run writes Parquet and CSV, and a cluster's reports go to
    // the operator's volume and, with MESHBENCH_EXPORT_URL, to object storage. A `report`
    // field is rejected as unknown rather than accepted and ignored.
}

impl BenchmarkSpec {
    /// Load generator instances per step (`spec.loadgen.parallelism`, at least 1).
    pub fn parallelism(&self) -> u32 {
        self.loadgen
            .as_ref()
            .and_then(|l| l.parallelism)
            .unwrap_or(1)
            .max(1) as u32
    }
}

/// The request the load generator sends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// Service that receives the load.
    #[schemars(length(min = 1, max = 63))]
    pub service: String,
    /// Path of one of its endpoints (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub path: Option<String>,
    /// HTTP method (default: the endpoint's method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Query string without the leading `?`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub query: Option<String>,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 32))]
    pub headers: BTreeMap<String, String>,
    /// Request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub body: Option<String>,
}

/// How load is generated.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadModel {
    /// `open`: requests arrive at a fixed rate whatever the response times (stages give
    /// `rate`); `closed`: a fixed number of users each wait for their response (stages give
    /// `users`).
    pub model: LoadKind,
    /// Open loop: most requests in flight at once; arrivals beyond it are counted late
    /// (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_in_flight: Option<i32>,
    /// Closed loop: pause of each user between its requests (default 0s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think_time: Option<Duration>,
}

/// Open or closed loop.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LoadKind {
    /// Constant arrival rate.
    Open,
    /// Fixed number of users.
    Closed,
}

/// The load over time. Exactly one of `stages` and `sweep`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.stages) != has(self.sweep)",
        "message": "set exactly one of stages and sweep"
    }
]))]
pub struct Profile {
    /// Explicit steps, run in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub stages: Option<Vec<Stage>>,
    /// A rate (or user) sweep `from..=to` in increments of `step` (the prototype's QPS range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<Sweep>,
}

/// One step of load.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Stage {
    /// Optional label used in reports (default `step-<n>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,
    /// Open loop: requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub rate: Option<f64>,
    /// Closed loop: number of concurrent users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub users: Option<i32>,
    /// How long the step lasts.
    pub duration: Duration,
}

/// A sweep over rates (open loop) or users (closed loop).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.from <= self.to", "message": "from must not exceed to"}
]))]
pub struct Sweep {
    /// First value.
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub from: f64,
    /// Last value (inclusive).
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub to: f64,
    /// Increment; must be positive.
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub step: f64,
    /// Duration of each value.
    pub step_duration: Duration,
}

/// Load before the measured steps.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Warmup {
    /// How long.
    pub duration: Duration,
    /// Open loop rate (default: the first step's rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub rate: Option<f64>,
    /// Closed loop users (default: the first step's users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub users: Option<i32>,
}

/// When the mesh is deployed again.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RedeployPolicy {
    /// Deploy once per benchmark.
    #[default]
    Never,
    /// Deploy again before every step (the prototype's behaviour: a clean slate per rate).
    PerStep,
    /// Deploy again before every mesh and repetition.
    PerMesh,
}

/// What happens after a failed step.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StepFailurePolicy {
    /// Record the failure and go on with the next step.
    #[default]
    Continue,
    /// Record the failure and finish the benchmark as failed.
    Stop,
}

/// Load generator settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadgenSettings {
    /// Number of load generator instances sharing the schedule (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub parallelism: Option<i32>,
    /// Resources of each load generator pod (cluster only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<LoadgenResources>,
}

/// Requests and limits of a load generator pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadgenResources {
    /// Reserved resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceAmounts>,
    /// Enforced resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
}

/// Metric collection settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Collection {
    /// Prometheus base URL (cluster default: the operator's configured Prometheus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub prometheus_url: Option<String>,
    /// Resolution of collected time series (default 1s locally, 15s in a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Overrides of the built-in PromQL templates, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 32))]
    pub queries: BTreeMap<String, String>,
    /// Extra PromQL series stored in the time series table under the given metric name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub extra: Vec<ExtraQuery>,
}

/// The names `spec.collection.queries` may override: the collector's built-in PromQL
/// templates, each named after the metric it yields. The collector lives in the operator,
/// which this crate cannot depend on, so the list is kept here and a test of the operator
/// (`k8s::promql`) keeps it equal to its templates.
pub const COLLECTION_QUERY_NAMES: &[&str] = &[
    "replicas",
    "replicas_ready",
    "replicas_desired",
    "hpa_target_utilization",
    "cpu_request_cores",
    "cpu_limit_cores",
    "cpu_cores",
    "memory_bytes",
    "worker_requests_per_s",
    "worker_errors_per_s",
    "worker_latency_mean_ms",
    "worker_latency_p99_ms",
];

/// The placeholders a `spec.collection.queries` override may use, filled in per mesh by
/// the collector (`k8s::promql::Vars::fill` in the operator, tested to fill exactly these).
pub const COLLECTION_QUERY_PLACEHOLDERS: &[&str] = &[
    "$namespace",
    "$mesh",
    "$deployments",
    "$pod_deployment",
    "$window",
];

/// An additional PromQL query to collect.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtraQuery {
    /// Metric name in the report.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The PromQL expression.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
}

/// Service level objectives; a step fails when any is violated.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Slos {
    /// Latency percentile bounds, e.g. p99 ≤ 200ms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub latency: Vec<LatencySlo>,
    /// Highest accepted fraction of failed requests (0–1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: Option<f64>,
    /// Lowest accepted ratio of served throughput (successes per second until the last one
    /// arrived) to the target rate, 0–1; open-loop steps only. The sent rate is not used:
    /// an open loop always sends its target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_achieved_ratio: Option<f64>,
}

/// A latency bound.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LatencySlo {
    /// Percentile in (0, 100], e.g. 99 or 99.9.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percentile: f64,
    /// Largest accepted latency at that percentile.
    pub max: Duration,
}

/// Lifecycle phase of a benchmark.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[allow(missing_docs)]
pub enum Phase {
    #[default]
    Pending,
    Validating,
    Deploying,
    WaitingReady,
    WarmingUp,
    Running,
    Settling,
    Collecting,
    Analysing,
    Succeeded,
    Failed,
}

impl Phase {
    /// True once the benchmark will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// Observed state of a benchmark.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BenchmarkStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Current phase.
    #[serde(default)]
    pub phase: Phase,
    /// Identifier of the run (labels every object and metric of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Human readable current step, e.g. `quickstart 2/5 (rate 20)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<String>,
    /// Index of the next step to run, across meshes and repetitions (resume point).
    #[serde(default)]
    pub next_step: i32,
    /// Served throughput of the latest completed step: successes per second until the
    /// last one arrived (the report's `throughput_rps`), not the rate the load was sent at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_rps: Option<f64>,
    /// p99 latency in ms of the latest completed step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Where each mesh saturated, one line per mesh (as in report.html).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub saturation: Vec<String>,
    /// `Pass`, `Fail` or empty while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_verdict: Option<String>,
    /// One summary per completed step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepSummary>,
    /// Where the report was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_location: Option<String>,
    /// When the run started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the run ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Standard conditions: `Valid`, and as a Job's, `Complete` (True when the run
    /// succeeded) and `Failed` (True when it failed or was cancelled; the reason says which).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The controller's resume point (the experiment state machine, the current load Job,
    /// timers). Kept in the status so an operator restart continues the run where it was;
    /// its shape belongs to the operator version that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "opaque_object")]
    pub state: Option<serde_json::Value>,
}

fn opaque_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Summary of one completed step, kept in the status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepSummary {
    /// Mesh name.
    pub mesh: String,
    /// Repetition (0-based).
    pub repetition: i32,
    /// Step index within the profile (0-based).
    pub step: i32,
    /// Target rate (open loop) or users (closed loop).
    pub target: f64,
    /// Served throughput, successes per second (the report's `throughput_rps`).
    #[serde(default)]
    pub throughput_rps: f64,
    /// Requests sent per second.
    #[serde(default)]
    pub sent_rps: f64,
    /// Why the step saturated the mesh (served less than the target, or latency grew
    /// through the step); absent when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturation: Option<String>,
    /// Fraction of failed requests.
    pub error_rate: f64,
    /// p50 latency in ms.
    pub p50_ms: f64,
    /// p99 latency in ms.
    pub p99_ms: f64,
    /// Whether every SLO held in this step.
    pub slo_passed: bool,
    /// Violated SLOs, human readable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<String>,
}
