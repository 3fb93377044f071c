//! The `ServiceMesh` resource: a synthetic microservice mesh built from one generic
//! worker.
//!
//! Every service inherits the mesh-wide [`MeshDefaults`] and may override any part of
//! them; [`ServiceMesh::resolve`](crate::resolve) produces the effective, fully defaulted
//! view the platforms deploy.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::Duration;

/// Upper bounds shared by the schema and the semantic validation, so the API server and
/// `meshbench validate` reject the same absurd input.
pub mod limits {
    /// Services per mesh.
    pub const MAX_SERVICES: usize = 100;
    /// Endpoints per service.
    pub const MAX_ENDPOINTS: usize = 32;
    /// Downstream calls per endpoint.
    pub const MAX_CALLS: usize = 32;
    /// Replicas of one service.
    pub const MAX_REPLICAS: i32 = 1000;
    /// Times one downstream call is repeated.
    pub const MAX_REPEAT: i32 = 100;
    /// Response body size in bytes (16 MiB).
    pub const MAX_RESPONSE_BYTES: i64 = 16 << 20;
}

/// Declares a struct with the per-request behaviour fields of an endpoint plus the
/// given fields. serde cannot combine `flatten` with `deny_unknown_fields`, and unknown
/// fields must be errors, so endpoints and endpoint defaults share fields this way.
macro_rules! endpoint_behavior {
    ($(#[$meta:meta])* pub struct $name:ident { $($extra:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($extra)*
            /// CPU time burned per request, measured on the thread's CPU clock (`25ms`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub cpu: Option<Duration>,
            /// Memory allocated, touched and held for the duration of the request (`1Mi`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "crate::units::quantity_schema")]
            pub memory: Option<Quantity>,
            /// Extra delay: fixed or drawn from a distribution.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub delay: Option<Delay>,
            /// Response body size in bytes (default 0: only the JSON envelope).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(range(min = 0, max = 16777216))]
            pub response_size: Option<i64>,
            /// Probability in [0, 1] that a request fails with 500.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(range(min = 0.0, max = 1.0))]
            pub error_rate: Option<f64>,
            /// Load shedding: at most this many requests in flight; more are answered 503.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(range(min = 1, max = 1000000))]
            pub max_in_flight: Option<i32>,
            /// Default timeout of downstream calls (default 10s).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub call_timeout: Option<Duration>,
            /// When true, a downstream timeout is recorded but does not fail the request (504).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub ignore_call_timeouts: Option<bool>,
        }
    };
}

/// A synthetic microservice mesh: services, their endpoints, and the calls between them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "meshbench.io",
    version = "v1alpha1",
    kind = "ServiceMesh",
    plural = "servicemeshes",
    singular = "servicemesh",
    shortname = "mesh",
    shortname = "smesh",
    category = "meshbench",
    namespaced,
    status = "ServiceMeshStatus",
    doc = "A synthetic microservice mesh deployed from the generic meshbench worker.",
    printcolumn = r#"{"name": "Ready", "type": "string", "description": "Services whose replicas are all ready / services", "jsonPath": ".status.readyText"}"#,
    printcolumn = r#"{"name": "Valid", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMeshSpec {
    /// Settings every service inherits unless it sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<MeshDefaults>,
    /// The services of the mesh. Names are unique DNS-1123 labels.
    #[schemars(length(min = 1, max = 100))]
    pub services: Vec<ServiceSpec>,
}

/// Mesh-wide defaults. Each field is used for a service (or endpoint) that does not set it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshDefaults {
    /// Default replica count of services without autoscaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Default container port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Default CPU and memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Default horizontal autoscaling; a service opts out with `autoscaling: {enabled: false}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Default behaviour of every endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointBehavior>,
    /// Default background load of every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleLoad>,
    /// Default start-up delay of every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_delay: Option<Duration>,
}

/// One service of the mesh: a Deployment of workers behind a Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// Service name, a DNS-1123 label (lower case letters, digits and '-', at most 63).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Replicas when not autoscaled, or the initial count when autoscaled (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Port the worker listens on and the Service exposes (default 8080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// CPU and memory requests and limits of each replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Horizontal Pod Autoscaler settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// How the service is reachable from outside the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<Expose>,
    /// Time after start during which the replica reports not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_delay: Option<Duration>,
    /// Background CPU and baseline memory each replica uses without traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleLoad>,
    /// Readiness gating on load (the prototype's readiness-probe experiment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Readiness>,
    /// The HTTP endpoints the service serves.
    #[schemars(length(min = 1, max = 32))]
    pub endpoints: Vec<EndpointSpec>,
}

/// CPU and memory requests and limits, as Kubernetes quantities.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.requests) || !has(self.limits) || !has(self.requests.cpu) || !has(self.limits.cpu) || quantity(string(self.requests.cpu)).compareTo(quantity(string(self.limits.cpu))) <= 0",
        "message": "requests.cpu must not exceed limits.cpu"
    },
    {
        "rule": "!has(self.requests) || !has(self.limits) || !has(self.requests.memory) || !has(self.limits.memory) || quantity(string(self.requests.memory)).compareTo(quantity(string(self.limits.memory))) <= 0",
        "message": "requests.memory must not exceed limits.memory"
    }
]))]
pub struct Resources {
    /// What the scheduler reserves and what HPA utilization is measured against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceAmounts>,
    /// What the kernel enforces: CPU as a CFS quota, memory as a hard limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
}

/// A CPU and memory amount.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceAmounts {
    /// CPU in cores (`250m`, `1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::units::quantity_schema")]
    pub cpu: Option<Quantity>,
    /// Memory in bytes (`64Mi`, `1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::units::quantity_schema")]
    pub memory: Option<Quantity>,
}

/// Horizontal Pod Autoscaler settings (autoscaling/v2, CPU utilization).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
        "message": "minReplicas must not exceed maxReplicas"
    }
]))]
pub struct Autoscaling {
    /// Set to false to turn off an autoscaling inherited from the mesh defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Lower bound of replicas (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: Option<i32>,
    /// Upper bound of replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: Option<i32>,
    /// Target average CPU utilization in percent of the CPU request (1–100, default 80).
    #[serde(
        default,
        rename = "targetCPUUtilization",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: Option<i32>,
    /// The HPA `behavior` (scaling policies and stabilization windows), passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

/// External exposure of a service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expose {
    /// `NodePort` or `LoadBalancer`.
    #[serde(rename = "type")]
    pub type_: ExposeType,
    /// Fixed node port (30000–32767) for `NodePort`; chosen by Kubernetes when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub node_port: Option<i32>,
}

/// Kubernetes Service types meshbench can expose a service with.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExposeType {
    /// A port on every node.
    NodePort,
    /// An external load balancer.
    LoadBalancer,
}

/// Background load of a replica, independent of traffic.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdleLoad {
    /// CPU burned continuously, in cores (`10m` = 1 % of a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::units::quantity_schema")]
    pub cpu: Option<Quantity>,
    /// Memory allocated and touched at start and held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::units::quantity_schema")]
    pub memory: Option<Quantity>,
}

/// Readiness gating.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Readiness {
    /// Report not ready while at least this many requests are in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_in_flight: Option<i32>,
    /// How often the readiness probe runs (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Duration>,
}

endpoint_behavior! {
    /// One HTTP endpoint of a service.
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct EndpointSpec {
        /// Absolute path, e.g. `/` or `/api/orders`.
        #[schemars(length(min = 1, max = 256), regex(pattern = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$"))]
        pub path: String,
        /// HTTP method (default GET).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub method: Option<HttpMethod>,
        /// Downstream calls. Calls run in sequence in the order listed; calls given different
        /// `group`s run in parallel, group by group (so one group per call is a pure parallel
        /// fan-out, and no groups at all is a pure sequence).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(length(max = 32))]
        pub calls: Vec<CallSpec>,
    }
}

/// HTTP methods an endpoint may serve.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl EndpointSpec {
    /// The behaviour fields of this endpoint, as written (before defaults are applied).
    pub fn behavior(&self) -> EndpointBehavior {
        EndpointBehavior {
            cpu: self.cpu.clone(),
            memory: self.memory.clone(),
            delay: self.delay.clone(),
            response_size: self.response_size,
            error_rate: self.error_rate,
            max_in_flight: self.max_in_flight,
            call_timeout: self.call_timeout.clone(),
            ignore_call_timeouts: self.ignore_call_timeouts,
        }
    }
}

impl HttpMethod {
    /// The method as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
}

endpoint_behavior! {
    /// The per-request work of an endpoint, as mesh-wide defaults (`defaults.endpoint`).
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct EndpointBehavior {}
}

/// An added delay. Exactly one of `fixed`, `uniform`, `exponential`, `logNormal`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "[has(self.fixed), has(self.uniform), has(self.exponential), has(self.logNormal)].filter(x, x).size() == 1",
        "message": "set exactly one of fixed, uniform, exponential, logNormal"
    }
]))]
pub struct Delay {
    /// A constant delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<Duration>,
    /// Uniformly distributed between `min` and `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uniform: Option<UniformDelay>,
    /// Exponentially distributed with the given mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential: Option<ExponentialDelay>,
    /// Log-normally distributed with the given median and shape `sigma`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_normal: Option<LogNormalDelay>,
    /// `after` (default): the delay is added after the CPU work and calls.
    /// `minimumTotal`: the response is held until this much time has passed since the
    /// request arrived (the prototype's semantics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<DelayMode>,
    /// Seed for the random draws, for repeatable runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Bounds of a uniform delay.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UniformDelay {
    /// Smallest delay.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
}

/// An exponential delay.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExponentialDelay {
    /// Mean delay.
    pub mean: Duration,
}

/// A log-normal delay.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogNormalDelay {
    /// Median delay (e^mu).
    pub median: Duration,
    /// Shape: standard deviation of the underlying normal distribution (0–5).
    #[schemars(range(min = 0.0, max = 5.0))]
    pub sigma: f64,
}

/// How a delay combines with the rest of the request's work.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DelayMode {
    /// Added after CPU work and downstream calls.
    #[default]
    After,
    /// A minimum total response time (the prototype's semantics).
    MinimumTotal,
}

/// One downstream call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallSpec {
    /// Name of the called service in this mesh.
    #[schemars(length(min = 1, max = 63))]
    pub service: String,
    /// Path of an endpoint of that service (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub path: Option<String>,
    /// Calls sharing a group run in sequence; groups run in parallel. Calls without a
    /// group form one implicit group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub group: Option<String>,
    /// Probability in [0, 1] that the call is made (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub probability: Option<f64>,
    /// How many times the call is made, one after another (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub repeat: Option<i32>,
    /// Timeout of one attempt (default: the endpoint's `callTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Observed state of a mesh.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMeshStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Services whose ready replicas reach their desired count.
    #[serde(default)]
    pub ready_services: i32,
    /// Number of services in the spec.
    #[serde(default)]
    pub total_services: i32,
    /// `ready/total`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_text: Option<String>,
    /// Per-service replica counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceStatus>,
    /// `Valid` and `Ready` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Replica counts of one service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Replicas the Deployment (or its HPA) wants.
    pub desired_replicas: i32,
    /// Replicas passing readiness.
    pub ready_replicas: i32,
}

/// Labels every object and metric of a mesh carries (DESIGN: data of one run is never
/// mixed into another).
pub fn selector_labels(mesh: &str, service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("meshbench.io/mesh".to_string(), mesh.to_string()),
        ("meshbench.io/service".to_string(), service.to_string()),
    ])
}
