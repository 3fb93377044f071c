//! The effective view of a spec: mesh defaults applied to every service and endpoint,
//! units parsed, calls grouped — what the platforms deploy and the capacity model reads.
//! Call on validated specs ([`crate::ValidMesh`] holds a mesh's resolved services);
//! invalid values resolve to harmless defaults.

use std::time::Duration as StdDuration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;

use crate::benchmark::{BenchmarkSpec, LoadKind};
use crate::mesh::{
    CallSpec, Delay, DelayMode, EndpointBehavior, EndpointSpec, Expose, HttpMethod, MeshDefaults,
    ServiceMeshSpec, ServiceSpec,
};
use crate::units;

/// Default container port of a service.
pub const DEFAULT_PORT: i32 = 8080;
/// Default timeout of a downstream call.
pub const DEFAULT_CALL_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// Default HPA target utilization (the Kubernetes documentation's usual example).
pub const DEFAULT_TARGET_UTILIZATION: i32 = 80;
/// Default request timeout of the load generator.
pub const DEFAULT_REQUEST_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// Default open-loop in-flight bound.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 1000;

/// The path a call or target means when none is written.
pub fn endpoint_path(path: Option<&str>) -> &str {
    path.unwrap_or("/")
}

/// Requests and limits after defaults, in millicores and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolvedResources {
    /// CPU request.
    pub cpu_request_millis: Option<u64>,
    /// CPU limit.
    pub cpu_limit_millis: Option<u64>,
    /// Memory request.
    pub memory_request_bytes: Option<u64>,
    /// Memory limit.
    pub memory_limit_bytes: Option<u64>,
}

/// Resolves a service's resources field by field against the mesh defaults. As in
/// Kubernetes, a limit without a request makes the request equal to the limit.
pub fn resolved_resources(mesh: &ServiceMeshSpec, svc: &ServiceSpec) -> ResolvedResources {
    let d = mesh.defaults.as_ref().and_then(|d| d.resources.as_ref());
    let s = svc.resources.as_ref();
    let pick = |f: &dyn Fn(
        &crate::mesh::Resources,
    )
        -> Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        s.and_then(f).or_else(|| d.and_then(f))
    };
    let cpu_limit = pick(&|r| r.limits.as_ref().and_then(|l| l.cpu.clone()))
        .and_then(|q| units::cpu_millis(&q).ok());
    let mem_limit = pick(&|r| r.limits.as_ref().and_then(|l| l.memory.clone()))
        .and_then(|q| units::memory_bytes(&q).ok());
    let cpu_request = pick(&|r| r.requests.as_ref().and_then(|l| l.cpu.clone()))
        .and_then(|q| units::cpu_millis(&q).ok())
        .or(cpu_limit);
    let mem_request = pick(&|r| r.requests.as_ref().and_then(|l| l.memory.clone()))
        .and_then(|q| units::memory_bytes(&q).ok())
        .or(mem_limit);
    ResolvedResources {
        cpu_request_millis: cpu_request,
        cpu_limit_millis: cpu_limit,
        memory_request_bytes: mem_request,
        memory_limit_bytes: mem_limit,
    }
}

/// Effective HPA settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedAutoscaling {
    /// Lower bound.
    pub min_replicas: i32,
    /// Upper bound.
    pub max_replicas: i32,
    /// Target CPU utilization, percent of the request.
    pub target_cpu_utilization: i32,
    /// Scaling behaviour, passed through to the HPA.
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

/// Effective delay.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedDelay {
    /// The distribution as written.
    pub delay: Delay,
    /// How it combines with the work.
    pub mode: DelayMode,
}

/// One downstream call after defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedCall {
    /// Called service.
    pub service: String,
    /// Called path.
    pub path: String,
    /// Probability the call is made.
    pub probability: f64,
    /// Number of sequential repetitions.
    pub repeat: u32,
    /// Timeout of one attempt.
    pub timeout: StdDuration,
}

/// One endpoint after defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedEndpoint {
    /// Path.
    pub path: String,
    /// Method.
    pub method: HttpMethod,
    /// CPU time per request.
    pub cpu: StdDuration,
    /// Memory held per request, bytes.
    pub memory_bytes: u64,
    /// Added delay.
    pub delay: Option<ResolvedDelay>,
    /// Response body size, bytes.
    pub response_bytes: u64,
    /// Probability of an injected 500.
    pub error_rate: f64,
    /// Load-shedding bound.
    pub max_in_flight: Option<u32>,
    /// Whether downstream timeouts fail the request.
    pub ignore_call_timeouts: bool,
    /// Call groups: groups run in parallel, calls inside one in sequence.
    pub call_groups: Vec<Vec<ResolvedCall>>,
}

/// One service after defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedService {
    /// Name.
    pub name: String,
    /// Initial (or static) replicas.
    pub replicas: i32,
    /// Port.
    pub port: i32,
    /// Requests and limits.
    pub resources: ResolvedResources,
    /// HPA, when autoscaled.
    pub autoscaling: Option<ResolvedAutoscaling>,
    /// External exposure.
    pub expose: Option<Expose>,
    /// Start-up delay.
    pub startup_delay: StdDuration,
    /// Idle CPU in millicores.
    pub idle_cpu_millis: u64,
    /// Baseline memory in bytes.
    pub idle_memory_bytes: u64,
    /// Readiness in-flight threshold.
    pub readiness_max_in_flight: Option<u32>,
    /// Readiness probe period.
    pub readiness_period: StdDuration,
    /// Endpoints.
    pub endpoints: Vec<ResolvedEndpoint>,
}

impl ResolvedService {
    /// The endpoint serving `path`.
    pub fn endpoint(&self, path: &str) -> Option<&ResolvedEndpoint> {
        self.endpoints.iter().find(|e| e.path == path)
    }
}

fn merge_behavior(ep: &EndpointBehavior, d: Option<&EndpointBehavior>) -> EndpointBehavior {
    let d = d.cloned().unwrap_or_default();
    EndpointBehavior {
        cpu: ep.cpu.clone().or(d.cpu),
        memory: ep.memory.clone().or(d.memory),
        delay: ep.delay.clone().or(d.delay),
        response_size: ep.response_size.or(d.response_size),
        error_rate: ep.error_rate.or(d.error_rate),
        max_in_flight: ep.max_in_flight.or(d.max_in_flight),
        call_timeout: ep.call_timeout.clone().or(d.call_timeout),
        ignore_call_timeouts: ep.ignore_call_timeouts.or(d.ignore_call_timeouts),
    }
}

/// Resolves every service of a mesh.
pub fn resolve_mesh(mesh: &ServiceMeshSpec) -> Vec<ResolvedService> {
    mesh.services
        .iter()
        .map(|svc| resolve_service(mesh, svc))
        .collect()
}

/// One service: each setting its own, else the mesh default, else the built-in default.
fn resolve_service(mesh: &ServiceMeshSpec, svc: &ServiceSpec) -> ResolvedService {
    let defaults = mesh.defaults.as_ref();
    let idle = svc.idle.as_ref().or(defaults.and_then(|d| d.idle.as_ref()));
    let endpoint_defaults = defaults.and_then(|d| d.endpoint.as_ref());
    ResolvedService {
        name: svc.name.clone(),
        replicas: svc
            .replicas
            .or(defaults.and_then(|d| d.replicas))
            .unwrap_or(1),
        port: svc
            .port
            .or(defaults.and_then(|d| d.port))
            .unwrap_or(DEFAULT_PORT),
        resources: resolved_resources(mesh, svc),
        autoscaling: resolve_autoscaling(defaults, svc),
        expose: svc.expose.clone(),
        startup_delay: svc
            .startup_delay
            .as_ref()
            .or(defaults.and_then(|d| d.startup_delay.as_ref()))
            .map(|d| d.get())
            .unwrap_or_default(),
        idle_cpu_millis: idle
            .and_then(|i| i.cpu.as_ref())
            .and_then(|q| units::cpu_millis(q).ok())
            .unwrap_or(0),
        idle_memory_bytes: idle
            .and_then(|i| i.memory.as_ref())
            .and_then(|q| units::memory_bytes(q).ok())
            .unwrap_or(0),
        readiness_max_in_flight: svc
            .readiness
            .as_ref()
            .and_then(|r| r.max_in_flight)
            .map(|m| m.max(1) as u32),
        readiness_period: svc
            .readiness
            .as_ref()
            .and_then(|r| r.period.as_ref())
            .map(|p| p.get())
            .unwrap_or(StdDuration::from_secs(1)),
        endpoints: svc
            .endpoints
            .iter()
            .map(|ep| resolve_endpoint(ep, endpoint_defaults))
            .collect(),
    }
}

/// The HPA of a service (its own autoscaling, else the mesh default), unless disabled.
fn resolve_autoscaling(
    defaults: Option<&MeshDefaults>,
    svc: &ServiceSpec,
) -> Option<ResolvedAutoscaling> {
    svc.autoscaling
        .as_ref()
        .or(defaults.and_then(|d| d.autoscaling.as_ref()))
        .filter(|a| a.enabled != Some(false))
        .map(|a| ResolvedAutoscaling {
            min_replicas: a.min_replicas.unwrap_or(1),
            max_replicas: a.max_replicas.unwrap_or(a.min_replicas.unwrap_or(1)),
            target_cpu_utilization: a
                .target_cpu_utilization
                .unwrap_or(DEFAULT_TARGET_UTILIZATION),
            behavior: a.behavior.clone(),
        })
}

/// One endpoint, its behaviour merged field by field with the mesh's endpoint defaults.
fn resolve_endpoint(ep: &EndpointSpec, defaults: Option<&EndpointBehavior>) -> ResolvedEndpoint {
    let b = merge_behavior(&ep.behavior(), defaults);
    let call_timeout = b
        .call_timeout
        .as_ref()
        .map(|t| t.get())
        .unwrap_or(DEFAULT_CALL_TIMEOUT);
    ResolvedEndpoint {
        path: ep.path.clone(),
        method: ep.method.unwrap_or(HttpMethod::Get),
        cpu: b.cpu.as_ref().map(|c| c.get()).unwrap_or_default(),
        memory_bytes: b
            .memory
            .as_ref()
            .and_then(|m| units::memory_bytes(m).ok())
            .unwrap_or(0),
        delay: b.delay.clone().map(|delay| ResolvedDelay {
            mode: delay.mode.unwrap_or_default(),
            delay,
        }),
        response_bytes: b.response_size.unwrap_or(0).max(0) as u64,
        error_rate: b.error_rate.unwrap_or(0.0),
        max_in_flight: b.max_in_flight.map(|m| m.max(1) as u32),
        ignore_call_timeouts: b.ignore_call_timeouts.unwrap_or(false),
        call_groups: call_groups(&ep.calls, call_timeout),
    }
}

/// An endpoint's calls in their groups. Calls without a group share one implicit group;
/// named groups keep the order of their first call. A call without its own timeout
/// takes `call_timeout`, the endpoint's.
fn call_groups(calls: &[CallSpec], call_timeout: StdDuration) -> Vec<Vec<ResolvedCall>> {
    let mut groups: Vec<(Option<&str>, Vec<ResolvedCall>)> = Vec::new();
    for call in calls {
        let rc = ResolvedCall {
            service: call.service.clone(),
            path: endpoint_path(call.path.as_deref()).to_string(),
            probability: call.probability.unwrap_or(1.0),
            repeat: call.repeat.unwrap_or(1).max(1) as u32,
            timeout: call
                .timeout
                .as_ref()
                .map(|t| t.get())
                .unwrap_or(call_timeout),
        };
        let key = call.group.as_deref();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(rc),
            None => groups.push((key, vec![rc])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// One measured step of a benchmark's profile.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    /// 0-based index within the profile.
    pub index: usize,
    /// Label for reports.
    pub name: String,
    /// Open loop: requests per second.
    pub rate: Option<f64>,
    /// Closed loop: users.
    pub users: Option<u32>,
    /// Duration.
    pub duration: StdDuration,
}

impl PlannedStep {
    /// The target of the step as one number (rate or users).
    pub fn target(&self) -> f64 {
        self.rate.or(self.users.map(f64::from)).unwrap_or(0.0)
    }
}

/// Expands a benchmark's profile (stages or sweep) into its steps.
pub fn plan_steps(spec: &BenchmarkSpec) -> Vec<PlannedStep> {
    let open = spec.load.model == LoadKind::Open;
    let mut steps = Vec::new();
    if let Some(stages) = &spec.profile.stages {
        for (i, s) in stages.iter().enumerate() {
            steps.push(PlannedStep {
                index: i,
                name: s.name.clone().unwrap_or_else(|| format!("step-{i}")),
                rate: if open { s.rate } else { None },
                users: if open {
                    None
                } else {
                    s.users.map(|u| u.max(1) as u32)
                },
                duration: s.duration.get(),
            });
        }
    } else if let Some(sw) = &spec.profile.sweep
        && sw.step > 0.0
        && sw.from <= sw.to
    {
        // Saturating: on an unvalidated spec the quotient can be infinite.
        let n = ((((sw.to - sw.from) / sw.step) + 1e-9).floor() as usize).saturating_add(1);
        for i in 0..n.min(200) {
            // Multiplying (not accumulating) keeps the error to one rounding; rounding to
            // 1e-9 then removes it, so 0.1 + 2 × 0.1 is 0.3 (in the step name too) and the
            // last value never passes `to`.
            let v = (((sw.from + sw.step * i as f64) * 1e9).round() / 1e9).min(sw.to);
            steps.push(PlannedStep {
                index: i,
                name: if open {
                    format!("rate-{v}")
                } else {
                    format!("users-{v}")
                },
                rate: open.then_some(v),
                users: (!open).then_some(v.round().max(1.0) as u32),
                duration: sw.step_duration.get(),
            });
        }
    }
    steps
}
