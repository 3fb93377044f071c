//! The runner's own `/metrics`, for a Prometheus watching a local run.
//!
//! In a cluster the collector's PromQL reads kube-state-metrics (replicas, HPA state,
//! requests and limits, and the owner chain that maps a pod to its Deployment) and
//! cAdvisor (CPU, working set). Locally this exporter stands in for both, with the same
//! metric names and labels (namespace `local`, Deployment and HPA named
//! `<mesh>-<service>`, one ReplicaSet `<mesh>-<service>-local` owned by it, pods
//! `<mesh>-<service>-local-<index>` owned by that, container `worker`), so one set of
//! queries serves both platforms.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The namespace label of every local object.
pub const NAMESPACE: &str = "local";

/// The Deployment (and HPA) name of a local service, as the cluster renders it.
pub fn deployment_name(mesh: &str, service: &str) -> String {
    format!("{mesh}-{service}")
}

/// The one ReplicaSet of a local service's Deployment (in `kube_replicaset_owner`).
pub fn replicaset_name(mesh: &str, service: &str) -> String {
    format!("{}-local", deployment_name(mesh, service))
}

/// The pod name of a local replica: `<replicaset>-<index>`, like a cluster pod of that
/// ReplicaSet (`kube_pod_owner` says which, as in a cluster).
pub fn pod_name(mesh: &str, service: &str, index: u32) -> String {
    format!("{}-{index}", replicaset_name(mesh, service))
}

/// The ReplicaSet of a pod named by [`pod_name`].
fn replicaset_of_pod(pod: &str) -> &str {
    pod.rsplit_once('-')
        .map_or(pod, |(replicaset, _)| replicaset)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    namespace: String,
    deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HpaLabels {
    namespace: String,
    horizontalpodautoscaler: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HpaTargetLabels {
    namespace: String,
    horizontalpodautoscaler: String,
    metric_name: String,
    metric_target_type: String,
}

/// Labels of `kube_pod_owner`: a pod and its ReplicaSet.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodOwnerLabels {
    namespace: String,
    pod: String,
    owner_kind: String,
    owner_name: String,
}

impl PodOwnerLabels {
    fn new(pod: &str) -> Self {
        Self {
            namespace: NAMESPACE.into(),
            pod: pod.into(),
            owner_kind: "ReplicaSet".into(),
            owner_name: replicaset_of_pod(pod).into(),
        }
    }
}

/// Labels of `kube_replicaset_owner`: a ReplicaSet and its Deployment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaSetOwnerLabels {
    namespace: String,
    replicaset: String,
    owner_kind: String,
    owner_name: String,
}

impl ReplicaSetOwnerLabels {
    fn new(mesh: &str, service: &str) -> Self {
        Self {
            namespace: NAMESPACE.into(),
            replicaset: replicaset_name(mesh, service),
            owner_kind: "Deployment".into(),
            owner_name: deployment_name(mesh, service),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    namespace: String,
    pod: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    namespace: String,
    pod: String,
    container: String,
    resource: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// What the control loop knows about one service at a sampling tick.
#[derive(Debug, Clone, Default)]
pub struct ServiceState {
    /// Mesh.
    pub mesh: String,
    /// Service.
    pub service: String,
    /// Replicas wanted (spec.replicas of the Deployment).
    pub replicas: u32,
    /// Replicas passing readiness.
    pub ready: u32,
    /// The HPA's last desired count, when the service is autoscaled.
    pub desired: Option<u32>,
    /// The HPA's target CPU utilization in percent.
    pub target_utilization: Option<i32>,
    /// CPU request and limit of each replica, cores.
    pub cpu_request_cores: Option<f64>,
    /// CPU limit, cores.
    pub cpu_limit_cores: Option<f64>,
    /// Per replica index: cumulative CPU seconds and working set bytes.
    pub pods: Vec<(u32, f64, f64)>,
}

#[derive(Default)]
struct Families {
    spec_replicas: Family<DeploymentLabels, Gauge>,
    ready_replicas: Family<DeploymentLabels, Gauge>,
    hpa_desired: Family<HpaLabels, Gauge>,
    hpa_target: Family<HpaTargetLabels, FGauge>,
    requests: Family<ResourceLabels, FGauge>,
    limits: Family<ResourceLabels, FGauge>,
    pod_owner: Family<PodOwnerLabels, Gauge>,
    replicaset_owner: Family<ReplicaSetOwnerLabels, Gauge>,
    cpu: Family<PodLabels, Counter<f64, AtomicU64>>,
    memory: Family<PodLabels, FGauge>,
}

/// The exporter: metric families plus the last CPU total per pod (for counter deltas).
pub struct Exporter {
    families: Families,
    registry: Registry,
    cpu_seen: Mutex<BTreeMap<String, f64>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Default for Exporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Exporter {
    /// An exporter with every family registered and no series yet.
    pub fn new() -> Self {
        let families = Families::default();
        let mut registry = Registry::default();
        let f = &families;
        registry.register(
            "kube_deployment_spec_replicas",
            "Replicas wanted",
            f.spec_replicas.clone(),
        );
        registry.register(
            "kube_deployment_status_replicas_ready",
            "Replicas passing readiness",
            f.ready_replicas.clone(),
        );
        registry.register(
            "kube_horizontalpodautoscaler_status_desired_replicas",
            "The HPA's last desired replica count",
            f.hpa_desired.clone(),
        );
        registry.register(
            "kube_horizontalpodautoscaler_spec_target_metric",
            "The HPA's target",
            f.hpa_target.clone(),
        );
        registry.register(
            "kube_pod_container_resource_requests",
            "Requests of the worker container",
            f.requests.clone(),
        );
        registry.register(
            "kube_pod_container_resource_limits",
            "Limits of the worker container",
            f.limits.clone(),
        );
        registry.register(
            "kube_pod_owner",
            "The replica's ReplicaSet",
            f.pod_owner.clone(),
        );
        registry.register(
            "kube_replicaset_owner",
            "The ReplicaSet's Deployment",
            f.replicaset_owner.clone(),
        );
        registry.register(
            "container_cpu_usage_seconds",
            "CPU time used by the replica (cgroup accounting, else /proc)",
            f.cpu.clone(),
        );
        registry.register(
            "container_memory_working_set_bytes",
            "Working set of the replica",
            f.memory.clone(),
        );
        Self {
            families,
            registry,
            cpu_seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// Replaces the series of the services in `states` (pods that are gone lose
    /// theirs, as they would in a cluster).
    pub fn update(&self, states: &[ServiceState]) {
        let mut live_pods = BTreeSet::new();
        for s in states {
            self.update_service(s);
            for &(index, cpu_s, memory) in &s.pods {
                live_pods.insert(self.update_pod(s, index, cpu_s, memory));
            }
        }
        self.forget_gone_pods(&live_pods);
    }

    /// The Deployment's, ReplicaSet's and HPA's series of one service.
    fn update_service(&self, s: &ServiceState) {
        let f = &self.families;
        let deployment = deployment_name(&s.mesh, &s.service);
        let d = DeploymentLabels {
            namespace: NAMESPACE.into(),
            deployment: deployment.clone(),
        };
        f.spec_replicas.get_or_create(&d).set(i64::from(s.replicas));
        f.ready_replicas.get_or_create(&d).set(i64::from(s.ready));
        f.replicaset_owner
            .get_or_create(&ReplicaSetOwnerLabels::new(&s.mesh, &s.service))
            .set(1);
        if let Some(desired) = s.desired {
            f.hpa_desired
                .get_or_create(&HpaLabels {
                    namespace: NAMESPACE.into(),
                    horizontalpodautoscaler: deployment.clone(),
                })
                .set(i64::from(desired));
        }
        if let Some(t) = s.target_utilization {
            f.hpa_target
                .get_or_create(&HpaTargetLabels {
                    namespace: NAMESPACE.into(),
                    horizontalpodautoscaler: deployment.clone(),
                    metric_name: "cpu".into(),
                    metric_target_type: "utilization".into(),
                })
                .set(f64::from(t));
        }
    }

    /// The series of one replica of `s`; returns the pod's name.
    fn update_pod(&self, s: &ServiceState, index: u32, cpu_s: f64, memory: f64) -> String {
        let f = &self.families;
        let pod = pod_name(&s.mesh, &s.service, index);
        let labels = PodLabels {
            namespace: NAMESPACE.into(),
            pod: pod.clone(),
            container: "worker".into(),
        };
        let res = |resource: &str| ResourceLabels {
            namespace: NAMESPACE.into(),
            pod: pod.clone(),
            container: "worker".into(),
            resource: resource.into(),
        };
        if let Some(r) = s.cpu_request_cores {
            f.requests.get_or_create(&res("cpu")).set(r);
        }
        if let Some(l) = s.cpu_limit_cores {
            f.limits.get_or_create(&res("cpu")).set(l);
        }
        f.pod_owner.get_or_create(&PodOwnerLabels::new(&pod)).set(1);
        f.memory.get_or_create(&labels).set(memory);
        if let Ok(mut seen) = self.cpu_seen.lock() {
            let prev = seen.insert(pod.clone(), cpu_s);
            // A restart starts a new cgroup and a new total: count from zero
            // again, as cAdvisor does for a new container.
            let delta = match prev {
                Some(p) if cpu_s >= p => cpu_s - p,
                _ => cpu_s,
            };
            f.cpu.get_or_create(&labels).inc_by(delta);
        }
        pod
    }

    /// Drops the series of pods not in `live_pods` (scaled down or torn down).
    fn forget_gone_pods(&self, live_pods: &BTreeSet<String>) {
        let f = &self.families;
        let gone: Vec<String> = self
            .cpu_seen
            .lock()
            .map(|seen| {
                seen.keys()
                    .filter(|p| !live_pods.contains(*p))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for pod in gone {
            let labels = PodLabels {
                namespace: NAMESPACE.into(),
                pod: pod.clone(),
                container: "worker".into(),
            };
            f.cpu.remove(&labels);
            f.memory.remove(&labels);
            let res = ResourceLabels {
                namespace: NAMESPACE.into(),
                pod: pod.clone(),
                container: "worker".into(),
                resource: "cpu".into(),
            };
            f.requests.remove(&res);
            f.limits.remove(&res);
            f.pod_owner.remove(&PodOwnerLabels::new(&pod));
            if let Ok(mut seen) = self.cpu_seen.lock() {
                seen.remove(&pod);
            }
        }
    }

    /// Drops every series of `mesh` (after its teardown).
    pub fn forget_mesh(&self, mesh: &str, services: &[String]) {
        let f = &self.families;
        for s in services {
            let deployment = deployment_name(mesh, s);
            let d = DeploymentLabels {
                namespace: NAMESPACE.into(),
                deployment: deployment.clone(),
            };
            f.spec_replicas.remove(&d);
            f.ready_replicas.remove(&d);
            f.replicaset_owner
                .remove(&ReplicaSetOwnerLabels::new(mesh, s));
            f.hpa_desired.remove(&HpaLabels {
                namespace: NAMESPACE.into(),
                horizontalpodautoscaler: deployment.clone(),
            });
            f.hpa_target.remove(&HpaTargetLabels {
                namespace: NAMESPACE.into(),
                horizontalpodautoscaler: deployment,
                metric_name: "cpu".into(),
                metric_target_type: "utilization".into(),
            });
        }
        self.update(&[]);
    }

    /// The exposition text (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding the runner's metrics: {e}");
        }
        out
    }

    /// Serves `/metrics` on a free loopback port until `stop`; returns the address.
    pub async fn serve(self: Arc<Self>, stop: CancellationToken) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let me = self.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        me.encode(),
                    )
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pods: Vec<(u32, f64, f64)>) -> ServiceState {
        ServiceState {
            mesh: "m".into(),
            service: "back".into(),
            replicas: pods.len() as u32,
            ready: 1,
            desired: Some(3),
            target_utilization: Some(60),
            cpu_request_cores: Some(0.25),
            cpu_limit_cores: Some(0.5),
            pods,
        }
    }

    #[test]
    fn speaks_kube_state_metrics_and_cadvisor() {
        let e = Exporter::new();
        e.update(&[state(vec![(0, 1.5, 1000.0), (1, 0.5, 2000.0)])]);
        let text = e.encode();
        for line in [
            r#"kube_deployment_spec_replicas{namespace="local",deployment="m-back"} 2"#,
            r#"kube_deployment_status_replicas_ready{namespace="local",deployment="m-back"} 1"#,
            r#"kube_horizontalpodautoscaler_status_desired_replicas{namespace="local",horizontalpodautoscaler="m-back"} 3"#,
            r#"container_cpu_usage_seconds_total{namespace="local",pod="m-back-local-0",container="worker"} 1.5"#,
            r#"container_memory_working_set_bytes{namespace="local",pod="m-back-local-1",container="worker"} 2000.0"#,
            r#"kube_pod_container_resource_requests{namespace="local",pod="m-back-local-0",container="worker",resource="cpu"} 0.25"#,
            r#"kube_pod_owner{namespace="local",pod="m-back-local-1",owner_kind="ReplicaSet",owner_name="m-back-local"} 1"#,
            r#"kube_replicaset_owner{namespace="local",replicaset="m-back-local",owner_kind="Deployment",owner_name="m-back"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn cpu_is_a_counter_across_updates_and_gone_pods_disappear() {
        let e = Exporter::new();
        e.update(&[state(vec![(0, 1.0, 1.0), (1, 1.0, 1.0)])]);
        e.update(&[state(vec![(0, 2.5, 1.0)])]);
        let text = e.encode();
        assert!(
            text.contains(r#"container_cpu_usage_seconds_total{namespace="local",pod="m-back-local-0",container="worker"} 2.5"#),
            "{text}"
        );
        assert!(!text.contains("m-back-local-1"), "{text}");
        // A restarted replica's total starts again from zero; the counter keeps rising.
        e.update(&[state(vec![(0, 0.5, 1.0)])]);
        assert!(
            e.encode()
                .contains(r#"pod="m-back-local-0",container="worker"} 3.0"#)
        );
        e.forget_mesh("m", &["back".into()]);
        assert!(!e.encode().contains("m-back"));
    }
}
