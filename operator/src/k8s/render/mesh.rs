//! The objects of a mesh: per service a ConfigMap (the worker config), a Deployment, a
//! Service and, when autoscaled, an autoscaling/v2 HPA.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use meshbench_crds::ValidMesh;
use meshbench_crds::mesh::ExposeType;
use meshbench_crds::resolve::{self, ResolvedService};

use super::{
    RenderOptions, Result, WORKER_CONFIG_KEY, WORKER_CONFIG_PATH, base_pod_spec, config_volume,
    container_security_context, cpu_quantity, memory_quantity, meta, mounts, object_name,
    service_labels, short_hash, to_json,
};
use crate::k8s::keys;
use crate::worker_config::readiness_probe;

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

/// Renders every object of `mesh`. Owner references are set when the mesh has a uid
/// (i.e. it came from the API server); objects rendered from files have none.
pub fn render_mesh(mesh: &ValidMesh, opts: &RenderOptions) -> Result<MeshObjects> {
    let cx = MeshContext {
        name: mesh.name(),
        namespace: mesh
            .mesh()
            .metadata
            .namespace
            .clone()
            .or(opts.namespace.clone()),
        owner: mesh.mesh().controller_owner_ref(&()),
        opts,
    };
    // Workers reach each other through the mesh-scoped Service names.
    let base_url = |service: &str| {
        let port = mesh
            .service(service)
            .map_or(resolve::DEFAULT_PORT, |s| s.port);
        format!("http://{}:{port}", object_name(cx.name, service))
    };
    let services = mesh
        .services()
        .iter()
        .map(|svc| service_objects(&cx, svc, mesh.services(), &base_url))
        .collect::<Result<Vec<_>>>()?;
    Ok(MeshObjects {
        mesh: cx.name.to_string(),
        namespace: cx.namespace,
        services,
    })
}

/// What every object of one mesh shares.
struct MeshContext<'a> {
    /// Mesh name.
    name: &'a str,
    /// Namespace of the objects, when known.
    namespace: Option<String>,
    /// The mesh as controlling owner, when it came from the API server.
    owner: Option<OwnerReference>,
    opts: &'a RenderOptions,
}

impl MeshContext<'_> {
    /// The metadata of an object of this mesh.
    fn meta(&self, name: &str, labels: &BTreeMap<String, String>) -> ObjectMeta {
        meta(
            name.to_string(),
            &self.namespace,
            labels.clone(),
            &self.owner,
        )
    }
}

/// The objects of one service; `all` are the mesh's services (whose endpoints set the
/// method of each call) and `base_url` gives the address of each.
fn service_objects(
    cx: &MeshContext<'_>,
    svc: &ResolvedService,
    all: &[ResolvedService],
    base_url: &dyn Fn(&str) -> String,
) -> Result<ServiceObjects> {
    let obj = object_name(cx.name, &svc.name);
    let labels = service_labels(cx.name, &svc.name);
    let selector = meshbench_crds::mesh::selector_labels(cx.name, &svc.name);

    let config = crate::worker_config::worker_config(svc, all, base_url);
    let config_json = to_json(&format!("worker config of {}", svc.name), &config)?;
    let config_hash = short_hash(config_json.as_bytes(), 16);
    let config_map = ConfigMap {
        metadata: cx.meta(&obj, &labels),
        data: Some(BTreeMap::from([(
            WORKER_CONFIG_KEY.to_string(),
            config_json,
        )])),
        ..ConfigMap::default()
    };
    Ok(ServiceObjects {
        service: svc.name.clone(),
        autoscaled: svc.autoscaling.is_some(),
        initial_replicas: initial_replicas(svc),
        config_map,
        deployment: worker_deployment(cx, svc, &obj, &labels, selector.clone(), config_hash),
        service_object: worker_service(cx, svc, &obj, &labels, selector),
        hpa: worker_hpa(cx, svc, &obj, &labels),
    })
}

/// The replicas a Deployment starts with: the spec's, within the HPA's bounds when
/// autoscaled.
fn initial_replicas(svc: &ResolvedService) -> i32 {
    svc.autoscaling.as_ref().map_or(svc.replicas, |a| {
        svc.replicas
            .clamp(a.min_replicas, a.max_replicas.max(a.min_replicas))
    })
}

/// The worker container: its config mounted, its pod name in the environment.
fn worker_container(opts: &RenderOptions, svc: &ResolvedService) -> Container {
    Container {
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
    }
}

/// The workers' Deployment; the config hash in the pod template rolls it when the
/// worker config changes.
fn worker_deployment(
    cx: &MeshContext<'_>,
    svc: &ResolvedService,
    obj: &str,
    labels: &BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
    config_hash: String,
) -> Deployment {
    let mut pod_labels = labels.clone();
    pod_labels.extend(cx.opts.extra_pod_labels.clone());
    let pod_spec = PodSpec {
        termination_grace_period_seconds: Some(30),
        ..base_pod_spec(
            worker_container(cx.opts, svc),
            vec![config_volume("config", obj)],
            None,
        )
    };
    Deployment {
        metadata: cx.meta(obj, labels),
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
                match_labels: Some(selector),
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
    }
}

/// The Service in front of the workers: ClusterIP, or the exposure the spec asks for.
fn worker_service(
    cx: &MeshContext<'_>,
    svc: &ResolvedService,
    obj: &str,
    labels: &BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
) -> Service {
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
    Service {
        metadata: cx.meta(obj, labels),
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
    }
}

/// The autoscaling/v2 HPA of an autoscaled service, on CPU utilization.
fn worker_hpa(
    cx: &MeshContext<'_>,
    svc: &ResolvedService,
    obj: &str,
    labels: &BTreeMap<String, String>,
) -> Option<HorizontalPodAutoscaler> {
    let a = svc.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: cx.meta(obj, labels),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: obj.to_string(),
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
    })
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
