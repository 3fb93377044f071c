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
//!
//! The objects of a mesh are built in `mesh.rs`, those of a load step in `load_job.rs`,
//! and the YAML of `meshbench render` in `yaml.rs`; what they share (names, labels,
//! metadata, the restricted pod settings) is here.

mod load_job;
mod mesh;
mod yaml;

pub use load_job::{LoadJobObjects, LoadStep, load_plan, render_load_job};
pub use mesh::{MeshObjects, ServiceObjects, render_mesh};
pub use yaml::{render_bundle_yaml, render_bundle_yaml_with, to_yaml_stream};

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, PodSecurityContext,
    PodSpec, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::keys;

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
