//! Pure builders of every object the operator applies: per mesh service a ConfigMap (the
//! worker config), a Deployment, a Service and, when autoscaled, an autoscaling/v2 HPA;
//! per benchmark step a load plan ConfigMap and an Indexed Job running the loadgen.
//!
//! The controller and `meshbench render` call the same functions, so what a reviewer sees
//! is what the operator applies. Nothing here does IO.
//!
//! Object names are `<mesh>-<service>` (shortened with a hash when longer than a DNS
//! label), not the bare service name: two meshes in one namespace (a Benchmark comparing
//! topologies) may share service names, and their objects must not collide. Workers
//! reach each other through these names.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use meshbench_crds::benchmark::{LoadKind, LoadgenResources};
use meshbench_crds::mesh::{ExposeType, ResourceAmounts};
use meshbench_crds::resolve::{self, PlannedStep, ResolvedService};
use meshbench_crds::{Benchmark, Bundle, ServiceMesh};
use meshbench_loadgen::plan as lp;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::keys;
use crate::worker_config::readiness_probe;

/// Errors of rendering.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The input documents have problems; the text is what `meshbench validate` prints.
    #[error("the input is invalid:\n{0}")]
    Invalid(String),
    /// A resource lacks `metadata.name`.
    #[error("{kind} has no metadata.name; expected a name")]
    MissingName {
        /// Kind of the resource.
        kind: &'static str,
    },
    /// A Benchmark names a mesh that was not given.
    #[error("Benchmark/{benchmark} references ServiceMesh {mesh:?}, which is not among the inputs")]
    MeshNotFound {
        /// Benchmark name.
        benchmark: String,
        /// Missing mesh name.
        mesh: String,
    },
    /// The benchmark's target service is not in the mesh.
    #[error(
        "Benchmark/{benchmark}: target service {service:?} is not a service of ServiceMesh/{mesh}"
    )]
    TargetNotFound {
        /// Benchmark name.
        benchmark: String,
        /// Mesh name.
        mesh: String,
        /// Target service.
        service: String,
    },
    /// The benchmark's profile expands to no step.
    #[error("Benchmark/{0}: the profile has no step")]
    NoSteps(String),
    /// An object could not be serialised (not expected for these plain types).
    #[error("cannot serialise {what}: {message}")]
    Serialize {
        /// What was being serialised.
        what: String,
        /// The serializer's message.
        message: String,
    },
}

/// Result alias of this module.
pub type Result<T, E = RenderError> = std::result::Result<T, E>;

/// Where the worker reads its config inside the pod.
pub const WORKER_CONFIG_PATH: &str = "/etc/meshbench/worker.json";
/// Key of the worker config in its ConfigMap.
pub const WORKER_CONFIG_KEY: &str = "worker.json";
/// Where the loadgen reads its plan inside the pod.
pub const PLAN_PATH: &str = "/etc/meshbench/plan.json";
/// Key of the plan in its ConfigMap.
pub const PLAN_KEY: &str = "plan.json";
/// Key of the results token in the per-benchmark Secret.
pub const TOKEN_KEY: &str = "token";
/// Port of the loadgen's live metrics (scraped by the PodMonitor).
pub const LOADGEN_METRICS_PORT: i32 = 9090;
/// UID and GID the containers run as (the distroless "nonroot" user).
pub const RUN_AS_ID: i64 = 65532;

/// The default image: one image with the `meshbench` binary, tagged with this version.
pub fn default_image() -> String {
    format!("ghcr.io/meshbench/meshbench:{}", env!("CARGO_PKG_VERSION"))
}

/// Settings of rendering that do not come from the specs.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// Image of the workers.
    pub image: String,
    /// Image of the load generators; `None` uses [`RenderOptions::image`] (the default
    /// image holds both). A worker-only image (`Dockerfile.worker`) has no loadgen, so a
    /// cluster that runs one sets this to the full image.
    pub loadgen_image: Option<String>,
    /// Image pull policy (`IfNotPresent` when unset).
    pub image_pull_policy: Option<String>,
    /// Namespace for resources whose metadata has none; `None` leaves it out (then
    /// `kubectl apply -n` decides).
    pub namespace: Option<String>,
    /// Command that starts a worker in the image (a minimal worker image uses
    /// `["meshbench-worker"]`).
    pub worker_command: Vec<String>,
    /// Command that starts a load generator in the image.
    pub loadgen_command: Vec<String>,
    /// Base URL of the operator's results endpoint, as seen from a load Job.
    pub results_base_url: String,
    /// Labels added to every worker pod (e.g. the benchmark and run deploying the mesh).
    pub extra_pod_labels: BTreeMap<String, String>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            image: default_image(),
            loadgen_image: None,
            image_pull_policy: None,
            namespace: None,
            worker_command: vec!["meshbench".into(), "worker".into()],
            loadgen_command: vec!["meshbench".into(), "loadgen".into()],
            results_base_url: "http://meshbench-operator.meshbench.svc:8080".into(),
            extra_pod_labels: BTreeMap::new(),
        }
    }
}

/// The objects of one mesh service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceObjects {
    /// Service name in the spec.
    pub service: String,
    /// Whether an HPA owns the replica count.
    pub autoscaled: bool,
    /// The replica count an autoscaled Deployment starts with (the spec's `replicas`
    /// within the HPA's bounds); it is written once, by the hand-over field manager, and
    /// the HPA owns the count from then on.
    pub initial_replicas: i32,
    /// The worker config.
    pub config_map: ConfigMap,
    /// The workers.
    pub deployment: Deployment,
    /// The ClusterIP (or exposed) Service.
    pub service_object: Service,
    /// The HPA, when autoscaled.
    pub hpa: Option<HorizontalPodAutoscaler>,
}

/// Every object of one mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshObjects {
    /// Mesh name.
    pub mesh: String,
    /// Namespace of the objects, when known.
    pub namespace: Option<String>,
    /// Per service, in spec order.
    pub services: Vec<ServiceObjects>,
}

/// The objects of one load step.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadJobObjects {
    /// The plan every instance reads.
    pub plan_config_map: ConfigMap,
    /// The Indexed Job.
    pub job: Job,
    /// The plan itself.
    pub plan: lp::LoadPlan,
}

/// A name made of `parts` joined by `-` that is a valid DNS-1035 label (what Service
/// names need): at most 63 characters and starting with a letter. Longer names keep a
/// prefix and end in a hash of the full name, so distinct inputs stay distinct.
pub fn dns_name(parts: &[&str]) -> String {
    let full = parts.join("-");
    let starts_with_letter = full.starts_with(|c: char| c.is_ascii_lowercase());
    let candidate = if starts_with_letter {
        full.clone()
    } else {
        format!("mb-{full}")
    };
    if candidate.len() <= 63 {
        return candidate;
    }
    let hash = short_hash(full.as_bytes(), 8);
    let mut prefix: String = candidate.chars().take(63 - 1 - hash.len()).collect();
    while prefix.ends_with('-') {
        prefix.pop();
    }
    format!("{prefix}-{hash}")
}

/// The name of every object of `service` in `mesh`.
pub fn object_name(mesh: &str, service: &str) -> String {
    dns_name(&[mesh, service])
}

/// The Secret holding a benchmark's results token.
pub fn token_secret_name(benchmark: &str) -> String {
    dns_name(&[benchmark, "results-token"])
}

/// The name of the load Job (and its plan ConfigMap) of one step.
pub fn load_job_name(benchmark: &str, run_id: &str, ordinal: usize) -> String {
    dns_name(&[benchmark, run_id, &format!("s{ordinal}")])
}

fn short_hash(data: &[u8], hex_chars: usize) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s.truncate(hex_chars);
    s
}

/// Labels of every object of a mesh service (selector labels included).
pub fn service_labels(mesh: &str, service: &str) -> BTreeMap<String, String> {
    let mut l = meshbench_crds::mesh::selector_labels(mesh, service);
    l.insert(keys::APP_NAME.into(), "meshbench-worker".into());
    l.insert(keys::APP_INSTANCE.into(), object_name(mesh, service));
    l.insert(keys::APP_COMPONENT.into(), "worker".into());
    l.insert(keys::APP_PART_OF.into(), "meshbench".into());
    l.insert(keys::APP_MANAGED_BY.into(), "meshbench-operator".into());
    l
}

/// CPU in millicores as a Kubernetes quantity.
pub fn cpu_quantity(millis: u64) -> Quantity {
    if millis.is_multiple_of(1000) {
        Quantity(format!("{}", millis / 1000))
    } else {
        Quantity(format!("{millis}m"))
    }
}

/// Bytes as a Kubernetes quantity, in the largest binary unit that divides them.
pub fn memory_quantity(bytes: u64) -> Quantity {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "Gi"), (1 << 20, "Mi"), (1 << 10, "Ki")];
    for (size, suffix) in UNITS {
        if bytes != 0 && bytes.is_multiple_of(size) {
            return Quantity(format!("{}{suffix}", bytes / size));
        }
    }
    Quantity(bytes.to_string())
}

fn to_json<T: Serialize>(what: &str, value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| RenderError::Serialize {
        what: what.into(),
        message: e.to_string(),
    })
}

fn meta(
    name: String,
    namespace: &Option<String>,
    labels: BTreeMap<String, String>,
    owner: &Option<OwnerReference>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: namespace.clone(),
        labels: Some(labels),
        owner_references: owner.clone().map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The restricted container security context (Pod Security Standard "restricted").
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_ID),
        run_as_group: Some(RUN_AS_ID),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_ID),
        run_as_group: Some(RUN_AS_ID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// A pod spec with the settings every meshbench pod shares: no API token, no service
/// links (a mesh of 100 services would otherwise get hundreds of env vars), restricted
/// security context, and a small writable /tmp beside the read-only root.
fn base_pod_spec(container: Container, mut volumes: Vec<Volume>, restart: Option<&str>) -> PodSpec {
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(Quantity("16Mi".into())),
        }),
        ..Volume::default()
    });
    PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security_context()),
        restart_policy: restart.map(str::to_string),
        containers: vec![container],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

fn config_volume(name: &str, config_map: &str) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.into(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mounts(volume: &str, path: &str, key: &str) -> Vec<VolumeMount> {
    vec![
        VolumeMount {
            name: volume.into(),
            mount_path: path.into(),
            sub_path: Some(key.into()),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    ]
}

fn worker_resources(svc: &ResolvedService) -> ResourceRequirements {
    let r = &svc.resources;
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(m) = r.cpu_request_millis {
        requests.insert("cpu".to_string(), cpu_quantity(m));
    }
    if let Some(b) = r.memory_request_bytes {
        requests.insert("memory".to_string(), memory_quantity(b));
    }
    if let Some(m) = r.cpu_limit_millis {
        limits.insert("cpu".to_string(), cpu_quantity(m));
    }
    if let Some(b) = r.memory_limit_bytes {
        limits.insert("memory".to_string(), memory_quantity(b));
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    }
}

fn amounts(a: &Option<ResourceAmounts>) -> Option<BTreeMap<String, Quantity>> {
    let a = a.as_ref()?;
    let mut m = BTreeMap::new();
    if let Some(c) = &a.cpu {
        m.insert("cpu".to_string(), c.clone());
    }
    if let Some(mem) = &a.memory {
        m.insert("memory".to_string(), mem.clone());
    }
    (!m.is_empty()).then_some(m)
}

/// Sending threads for a load pod: one per whole core of its CPU limit (else request).
/// The loadgen's default of one thread is its cheapest per request; a pod given more cores
/// should use them.
fn loadgen_threads(r: Option<&LoadgenResources>) -> u64 {
    let cpu = |a: &Option<ResourceAmounts>| {
        a.as_ref()
            .and_then(|a| a.cpu.as_ref())
            .and_then(|q| meshbench_crds::units::cpu_millis(q).ok())
    };
    r.and_then(|r| cpu(&r.limits).or_else(|| cpu(&r.requests)))
        .map(|m| (m / 1000).clamp(1, 64))
        .unwrap_or(1)
}

fn loadgen_resources(r: Option<&LoadgenResources>) -> Option<ResourceRequirements> {
    let r = r?;
    Some(ResourceRequirements {
        requests: amounts(&r.requests),
        limits: amounts(&r.limits),
        ..ResourceRequirements::default()
    })
}

/// Name of the worker container's port serving the mesh traffic (and `/ready`).
const HTTP_PORT_NAME: &str = "http";
/// Name of the worker container's port serving only `/live`, from its own thread.
const HEALTH_PORT_NAME: &str = "health";

/// An HTTP GET probe of `path` on the named container port.
fn http_probe(path: &str, port: &str, period: i32, timeout: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(timeout),
        success_threshold: Some(1),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// The worker's health port (its `--health-port`): the usual one, or the next when the
/// service itself listens there.
fn worker_health_port(svc: &ResolvedService) -> i32 {
    let usual = i32::from(meshbench_worker::health::POD_HEALTH_PORT);
    if svc.port == usual { usual + 1 } else { usual }
}

/// The worker container's arguments: its config, and the health listener's port.
fn worker_args(svc: &ResolvedService) -> Vec<String> {
    vec![
        "--config".into(),
        WORKER_CONFIG_PATH.into(),
        "--health-port".into(),
        worker_health_port(svc).to_string(),
    ]
}

/// The worker container's ports: the service's, and the health listener's (not in the
/// Service, and not scraped: the PodMonitor and scrape config select `http`).
fn worker_ports(svc: &ResolvedService) -> Vec<ContainerPort> {
    let port = |name: &str, number: i32| ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    vec![
        port(HTTP_PORT_NAME, svc.port),
        port(HEALTH_PORT_NAME, worker_health_port(svc)),
    ]
}

/// Readiness on the service port, with the settings the local platform's prober runs
/// too ([`readiness_probe`], which says why they are what they are).
fn worker_readiness_probe(svc: &ResolvedService) -> Probe {
    let p = readiness_probe(svc);
    let seconds = |d: Duration| i32::try_from(d.as_secs()).unwrap_or(i32::MAX);
    let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    Probe {
        success_threshold: Some(count(p.success_threshold)),
        ..http_probe(
            p.path,
            HTTP_PORT_NAME,
            seconds(p.period),
            seconds(p.timeout),
            count(p.failure_threshold),
        )
    }
}

/// Liveness on the health port, answered by a thread of its own that the load cannot
/// starve, with a budget saturation cannot exhaust: 5 s per probe (under a CPU limit the
/// whole container is throttled, the health thread included, for up to a CFS period per
/// wake-up) and 6 misses in a row at a 10 s period, so only a worker that has not
/// answered for about a minute is restarted. A restart never cures overload; it loses
/// the requests in flight and puts a cold replica back into the same load mid-step.
fn worker_liveness_probe() -> Probe {
    http_probe("/live", HEALTH_PORT_NAME, 10, 5, 6)
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn mesh_name(mesh: &ServiceMesh) -> Result<String> {
    mesh.metadata.name.clone().ok_or(RenderError::MissingName {
        kind: "ServiceMesh",
    })
}

/// Renders every object of `mesh`. Owner references are set when the mesh has a uid
/// (i.e. it came from the API server); objects rendered from files have none.
pub fn render_mesh(mesh: &ServiceMesh, opts: &RenderOptions) -> Result<MeshObjects> {
    let name = mesh_name(mesh)?;
    let namespace = mesh.metadata.namespace.clone().or(opts.namespace.clone());
    let owner = mesh.controller_owner_ref(&());
    let resolved = resolve::resolve_mesh(&mesh.spec);
    let port_of = |service: &str| {
        resolved
            .iter()
            .find(|s| s.name == service)
            .map(|s| s.port)
            .unwrap_or(resolve::DEFAULT_PORT)
    };
    let base_url = |service: &str| {
        format!(
            "http://{}:{}",
            object_name(&name, service),
            port_of(service)
        )
    };
    let mut services = Vec::with_capacity(resolved.len());
    for svc in &resolved {
        let obj = object_name(&name, &svc.name);
        let labels = service_labels(&name, &svc.name);
        let selector = meshbench_crds::mesh::selector_labels(&name, &svc.name);

        let config = crate::worker_config::worker_config(svc, &resolved, &base_url);
        let config_json = to_json(&format!("worker config of {}", svc.name), &config)?;
        let config_hash = short_hash(config_json.as_bytes(), 16);
        let config_map = ConfigMap {
            metadata: meta(obj.clone(), &namespace, labels.clone(), &owner),
            data: Some(BTreeMap::from([(
                WORKER_CONFIG_KEY.to_string(),
                config_json,
            )])),
            ..ConfigMap::default()
        };

        let container = Container {
            name: "worker".into(),
            image: Some(opts.image.clone()),
            image_pull_policy: Some(
                opts.image_pull_policy
                    .clone()
                    .unwrap_or_else(|| "IfNotPresent".into()),
            ),
            command: Some(opts.worker_command.clone()),
            args: Some(worker_args(svc)),
            env: Some(vec![EnvVar {
                name: "POD_NAME".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".into()),
                        field_path: "metadata.name".into(),
                    }),
                    ..EnvVarSource::default()
                }),
            }]),
            ports: Some(worker_ports(svc)),
            readiness_probe: Some(worker_readiness_probe(svc)),
            liveness_probe: Some(worker_liveness_probe()),
            resources: Some(worker_resources(svc)),
            security_context: Some(container_security_context()),
            volume_mounts: Some(mounts("config", WORKER_CONFIG_PATH, WORKER_CONFIG_KEY)),
            ..Container::default()
        };
        let mut pod_labels = labels.clone();
        pod_labels.extend(opts.extra_pod_labels.clone());
        let pod_spec = PodSpec {
            termination_grace_period_seconds: Some(30),
            ..base_pod_spec(container, vec![config_volume("config", &obj)], None)
        };
        let deployment = Deployment {
            metadata: meta(obj.clone(), &namespace, labels.clone(), &owner),
            spec: Some(DeploymentSpec {
                // Never written when an HPA owns the count: the HPA and the operator
                // would fight over it (the prototype's bug).
                replicas: if svc.autoscaling.is_some() {
                    None
                } else {
                    Some(svc.replicas)
                },
                revision_history_limit: Some(2),
                selector: LabelSelector {
                    match_labels: Some(selector.clone()),
                    match_expressions: None,
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        annotations: Some(BTreeMap::from([(
                            keys::CONFIG_HASH.to_string(),
                            config_hash,
                        )])),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(pod_spec),
                },
                ..DeploymentSpec::default()
            }),
            status: None,
        };

        let (type_, node_port) = match &svc.expose {
            Some(e) => (
                match e.type_ {
                    ExposeType::NodePort => "NodePort",
                    ExposeType::LoadBalancer => "LoadBalancer",
                },
                e.node_port.filter(|_| e.type_ == ExposeType::NodePort),
            ),
            None => ("ClusterIP", None),
        };
        let service_object = Service {
            metadata: meta(obj.clone(), &namespace, labels.clone(), &owner),
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                selector: Some(selector),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: svc.port,
                    target_port: Some(IntOrString::String("http".into())),
                    protocol: Some("TCP".into()),
                    node_port,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        };

        let hpa = svc.autoscaling.as_ref().map(|a| HorizontalPodAutoscaler {
            metadata: meta(obj.clone(), &namespace, labels.clone(), &owner),
            spec: Some(HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: obj.clone(),
                },
                min_replicas: Some(a.min_replicas),
                max_replicas: a.max_replicas,
                metrics: Some(vec![MetricSpec {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricSource {
                        name: "cpu".into(),
                        target: MetricTarget {
                            type_: "Utilization".into(),
                            average_utilization: Some(a.target_cpu_utilization),
                            ..MetricTarget::default()
                        },
                    }),
                    ..MetricSpec::default()
                }]),
                behavior: a.behavior.clone(),
            }),
            status: None,
        });

        services.push(ServiceObjects {
            service: svc.name.clone(),
            autoscaled: svc.autoscaling.is_some(),
            initial_replicas: svc.autoscaling.as_ref().map_or(svc.replicas, |a| {
                svc.replicas
                    .clamp(a.min_replicas, a.max_replicas.max(a.min_replicas))
            }),
            config_map,
            deployment,
            service_object,
            hpa,
        });
    }
    Ok(MeshObjects {
        mesh: name,
        namespace,
        services,
    })
}

/// What one load Job runs: which benchmark, mesh, run and step.
#[derive(Debug, Clone)]
pub struct LoadStep<'a> {
    /// The benchmark.
    pub benchmark: &'a Benchmark,
    /// The mesh under load.
    pub mesh: &'a ServiceMesh,
    /// Run id (labels every object and metric of the run).
    pub run_id: &'a str,
    /// The step.
    pub step: &'a PlannedStep,
    /// Ordinal of the step across meshes and repetitions (names the Job).
    pub ordinal: usize,
    /// Repetition (0-based).
    pub repetition: u32,
    /// Whether the benchmark's warm-up runs before this step.
    pub with_warmup: bool,
    /// Common start time of all instances (UTC unix ms).
    pub start_at_unix_ms: Option<u64>,
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

/// The load plan of one step, as the loadgen instances of its Job read it.
pub fn load_plan(step: &LoadStep<'_>) -> Result<lp::LoadPlan> {
    let bench = step.benchmark;
    let spec = &bench.spec;
    let bench_name = bench
        .metadata
        .name
        .clone()
        .ok_or(RenderError::MissingName { kind: "Benchmark" })?;
    let mesh = mesh_name(step.mesh)?;
    let resolved = resolve::resolve_mesh(&step.mesh.spec);
    let target = resolved
        .iter()
        .find(|s| s.name == spec.target.service)
        .ok_or_else(|| RenderError::TargetNotFound {
            benchmark: bench_name.clone(),
            mesh: mesh.clone(),
            service: spec.target.service.clone(),
        })?;
    let path = resolve::endpoint_path(spec.target.path.as_deref()).to_string();
    let method = spec
        .target
        .method
        .or_else(|| target.endpoint(&path).map(|e| e.method))
        .unwrap_or(meshbench_crds::mesh::HttpMethod::Get);
    let model = match spec.load.model {
        LoadKind::Open => lp::LoadModel::Open {
            max_in_flight: spec
                .load
                .max_in_flight
                .map(|m| m.max(1) as u32)
                .unwrap_or(resolve::DEFAULT_MAX_IN_FLIGHT),
            max_lateness: None,
        },
        LoadKind::Closed => lp::LoadModel::Closed {
            think_time: spec
                .load
                .think_time
                .as_ref()
                .map(|t| t.get())
                .unwrap_or_default(),
        },
    };
    let warm_up = spec
        .warmup
        .as_ref()
        .filter(|_| step.with_warmup)
        .map(|w| lp::WarmUp {
            duration: w.duration.get(),
            rate: w.rate.or(step.step.rate),
            users: w.users.map(|u| u.max(1) as u32).or(step.step.users),
        });
    let labels = BTreeMap::from([
        ("benchmark".to_string(), bench_name),
        ("mesh".to_string(), mesh.clone()),
        ("run".to_string(), step.run_id.to_string()),
        ("repetition".to_string(), step.repetition.to_string()),
        ("step".to_string(), step.step.index.to_string()),
    ]);
    Ok(lp::LoadPlan {
        target: format!(
            "http://{}:{}",
            object_name(&mesh, &target.name),
            target.port
        ),
        request: lp::RequestSpec {
            method: method.as_str().to_string(),
            path,
            query: spec
                .target
                .query
                .as_deref()
                .map(parse_query)
                .unwrap_or_default(),
            headers: spec.target.headers.clone(),
            body: spec.target.body.clone(),
        },
        model,
        profile: lp::Profile::Stages(vec![lp::Stage {
            name: Some(step.step.name.clone()),
            duration: step.step.duration,
            rate: step.step.rate,
            users: step.step.users,
        }]),
        warm_up,
        timeout: spec
            .request_timeout
            .as_ref()
            .map(|t| t.get())
            .unwrap_or(resolve::DEFAULT_REQUEST_TIMEOUT),
        instance: lp::InstanceSpec::default(),
        start_at_unix_ms: step.start_at_unix_ms,
        preflight: true,
        labels,
    })
}

/// Renders the plan ConfigMap and the Indexed Job of one step. Instances share the
/// plan; each takes its share by `JOB_COMPLETION_INDEX` and posts its result to the
/// operator with the benchmark's token (from its Secret).
pub fn render_load_job(step: &LoadStep<'_>, opts: &RenderOptions) -> Result<LoadJobObjects> {
    let bench = step.benchmark;
    let bench_name = bench
        .metadata
        .name
        .clone()
        .ok_or(RenderError::MissingName { kind: "Benchmark" })?;
    let mesh = mesh_name(step.mesh)?;
    let namespace = bench.metadata.namespace.clone().or(opts.namespace.clone());
    let owner = bench.controller_owner_ref(&());
    let plan = load_plan(step)?;
    let plan_json = to_json("load plan", &plan)?;
    let name = load_job_name(&bench_name, step.run_id, step.ordinal);
    let parallelism = bench
        .spec
        .loadgen
        .as_ref()
        .and_then(|l| l.parallelism)
        .unwrap_or(1)
        .max(1);
    let mut labels = BTreeMap::from([
        (keys::APP_NAME.to_string(), "meshbench-loadgen".to_string()),
        (keys::APP_INSTANCE.to_string(), name.clone()),
        (keys::APP_COMPONENT.to_string(), "loadgen".to_string()),
        (keys::APP_PART_OF.to_string(), "meshbench".to_string()),
        (
            keys::APP_MANAGED_BY.to_string(),
            "meshbench-operator".to_string(),
        ),
        (keys::BENCHMARK.to_string(), bench_name.clone()),
        (keys::MESH.to_string(), mesh),
        (keys::RUN.to_string(), step.run_id.to_string()),
        (keys::STEP.to_string(), step.step.index.to_string()),
    ]);
    labels.retain(|_, v| !v.is_empty());
    let plan_config_map = ConfigMap {
        metadata: meta(name.clone(), &namespace, labels.clone(), &owner),
        data: Some(BTreeMap::from([(PLAN_KEY.to_string(), plan_json)])),
        ..ConfigMap::default()
    };
    let results_url = format!(
        "{}/v1/results/{}/{}/{}/{}",
        opts.results_base_url.trim_end_matches('/'),
        namespace.as_deref().unwrap_or("default"),
        bench_name,
        step.run_id,
        step.ordinal
    );
    let container = Container {
        name: "loadgen".into(),
        image: Some(
            opts.loadgen_image
                .clone()
                .unwrap_or_else(|| opts.image.clone()),
        ),
        image_pull_policy: Some(
            opts.image_pull_policy
                .clone()
                .unwrap_or_else(|| "IfNotPresent".into()),
        ),
        command: Some(opts.loadgen_command.clone()),
        args: Some(vec![
            "--plan".into(),
            PLAN_PATH.into(),
            "--instances".into(),
            parallelism.to_string(),
            "--worker-threads".into(),
            loadgen_threads(
                bench
                    .spec
                    .loadgen
                    .as_ref()
                    .and_then(|l| l.resources.as_ref()),
            )
            .to_string(),
            "--results-url".into(),
            results_url,
            "--metrics-listen".into(),
            format!("0.0.0.0:{LOADGEN_METRICS_PORT}"),
            "--out".into(),
            "/tmp/result.json".into(),
            "--quiet".into(),
        ]),
        env: Some(vec![
            EnvVar {
                name: "MESHBENCH_RESULTS_TOKEN".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: token_secret_name(&bench_name),
                        key: TOKEN_KEY.into(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
            },
            env("RUST_LOG", "info"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: LOADGEN_METRICS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: loadgen_resources(
            bench
                .spec
                .loadgen
                .as_ref()
                .and_then(|l| l.resources.as_ref()),
        ),
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts("plan", PLAN_PATH, PLAN_KEY)),
        ..Container::default()
    };
    let total = plan.total_duration().as_secs()
        + plan.timeout.as_secs()
        // Start-up, the start barrier and the result upload.
        + 300;
    let job = Job {
        metadata: meta(name.clone(), &namespace, labels.clone(), &owner),
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".into()),
            completions: Some(parallelism),
            parallelism: Some(parallelism),
            // A retried instance would send its share of the load twice, late; a failed
            // instance fails the step instead.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(i64::try_from(total).unwrap_or(i64::MAX)),
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(base_pod_spec(
                    container,
                    vec![config_volume("plan", &name)],
                    Some("Never"),
                )),
            },
            ..JobSpec::default()
        }),
        status: None,
    };
    Ok(LoadJobObjects {
        plan_config_map,
        job,
        plan,
    })
}

/// Serialises objects as one multi-document YAML stream.
pub fn to_yaml_stream<T: Serialize>(objects: &[T]) -> Result<String> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        let text = serde_yaml::to_string(o).map_err(|e| RenderError::Serialize {
            what: "object as YAML".into(),
            message: e.to_string(),
        })?;
        out.push_str(&text);
    }
    Ok(out)
}

fn value<T: Serialize>(o: &T) -> Result<serde_json::Value> {
    serde_json::to_value(o).map_err(|e| RenderError::Serialize {
        what: "object".into(),
        message: e.to_string(),
    })
}

impl MeshObjects {
    /// Every object as a JSON value, per service in the order ConfigMap, Service,
    /// Deployment, HPA (the order they are applied in).
    pub fn values(&self) -> Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        for s in &self.services {
            out.push(value(&s.config_map)?);
            out.push(value(&s.service_object)?);
            out.push(value(&s.deployment)?);
            if let Some(h) = &s.hpa {
                out.push(value(h)?);
            }
        }
        Ok(out)
    }
}

/// Every object the operator would apply for the documents of `bundle`, as YAML: all
/// objects of each ServiceMesh, and for each Benchmark the load Job (with its plan) of
/// its first step on its first mesh.
pub fn render_bundle_yaml(bundle: &Bundle) -> Result<String> {
    render_bundle_yaml_with(bundle, &RenderOptions::default())
}

/// [`render_bundle_yaml`] with explicit options.
pub fn render_bundle_yaml_with(bundle: &Bundle, opts: &RenderOptions) -> Result<String> {
    if !bundle.is_valid() {
        let text: Vec<String> = bundle.diagnostics.iter().map(ToString::to_string).collect();
        return Err(RenderError::Invalid(text.join("\n")));
    }
    let mut values = Vec::new();
    for doc in &bundle.meshes {
        values.extend(render_mesh(&doc.mesh, opts)?.values()?);
    }
    for doc in &bundle.benchmarks {
        let bench = &doc.benchmark;
        let bench_name = bench
            .metadata
            .name
            .clone()
            .ok_or(RenderError::MissingName { kind: "Benchmark" })?;
        let Some(mesh_ref) = bench.spec.meshes.first() else {
            continue;
        };
        let mesh = bundle
            .mesh(mesh_ref)
            .ok_or_else(|| RenderError::MeshNotFound {
                benchmark: bench_name.clone(),
                mesh: mesh_ref.clone(),
            })?;
        let steps = resolve::plan_steps(&bench.spec);
        let first = steps.first().ok_or(RenderError::NoSteps(bench_name))?;
        let objects = render_load_job(
            &LoadStep {
                benchmark: bench,
                mesh,
                run_id: "preview",
                step: first,
                ordinal: 0,
                repetition: 0,
                with_warmup: true,
                start_at_unix_ms: None,
            },
            opts,
        )?;
        values.push(value(&objects.plan_config_map)?);
        values.push(value(&objects.job)?);
    }
    to_yaml_stream(&values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshbench_crds::mesh::ServiceMeshSpec;

    /// The cluster's probe and the local prober's come from one place; this pins the
    /// rendering of it.
    #[test]
    fn readiness_probe_renders_the_shared_settings() {
        let spec: ServiceMeshSpec =
            serde_yaml::from_str("services:\n  - name: web\n    endpoints: [{path: /}]\n")
                .expect("mesh spec");
        for (period_ms, want_s) in [(200, 1), (1000, 1), (2500, 2)] {
            let mut svc = resolve::resolve_mesh(&spec).remove(0);
            svc.readiness_period = Duration::from_millis(period_ms);
            let shared = readiness_probe(&svc);
            let probe = worker_readiness_probe(&svc);
            let secs = |d: Duration| Some(d.as_secs() as i32);
            assert_eq!(probe.period_seconds, Some(want_s), "period {period_ms} ms");
            assert_eq!(probe.period_seconds, secs(shared.period));
            assert_eq!(probe.timeout_seconds, secs(shared.timeout));
            assert_eq!(
                probe.success_threshold,
                Some(shared.success_threshold as i32)
            );
            assert_eq!(
                probe.failure_threshold,
                Some(shared.failure_threshold as i32)
            );
            let path = probe.http_get.and_then(|h| h.path);
            assert_eq!(path.as_deref(), Some(shared.path));
        }
    }
}
