//! kube-state-metrics' series, as far as meshbench reads them: the collector's PromQL
//! (`k8s::promql`) and the Grafana dashboard need replicas, HPA status and targets, the
//! pods' requests and limits, and the owner chain pod → ReplicaSet → Deployment. On one
//! machine there is no kube-state-metrics to scrape, so the agent serves these series
//! itself at `/metrics/kube-state` (with `--state-metrics`), under kube-state-metrics'
//! names and labels, so the PromQL runs unchanged.
//!
//! Differences from kube-state-metrics: only the series above; pod series cover the pods
//! bound to this node (on a one-node cluster, every pod that runs); all labels of a
//! Deployment or pod are exported (kube-state-metrics exports those allowlisted).

use std::fmt::Write as _;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use super::metrics::{family, label};

/// The objects the series are made of, each kept current by a watch.
#[derive(Clone)]
pub struct Stores {
    /// Deployments of every namespace.
    pub deployments: Store<Deployment>,
    /// ReplicaSets of every namespace.
    pub replicasets: Store<ReplicaSet>,
    /// HorizontalPodAutoscalers (autoscaling/v2) of every namespace.
    pub hpas: Store<HorizontalPodAutoscaler>,
    /// Pods bound to this node.
    pub pods: Store<Pod>,
}

/// Set once the agent's watches exist; until then (or without `--state-metrics`) the
/// endpoint answers 404.
pub type Shared = Arc<std::sync::OnceLock<Stores>>;

/// The exposition text of every series.
pub fn render(stores: &Stores) -> String {
    let mut out = String::new();
    deployments(&mut out, &stores.deployments.state());
    replicasets(&mut out, &stores.replicasets.state());
    hpas(&mut out, &stores.hpas.state());
    pods(&mut out, &stores.pods.state());
    out
}

/// One family: its header, then one line per `(labels, value)`.
fn write_family(out: &mut String, name: &str, help: &str, rows: &[(String, f64)]) {
    family(out, name, "gauge", help);
    for (labels, value) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// `k="v",…` with escaped values.
fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A Kubernetes label key as kube-state-metrics names it: `label_` and the key with
/// every character outside `[a-zA-Z0-9_]` replaced by `_`, camelCase to snake_case.
pub fn label_name(key: &str) -> String {
    let mut out = String::from("label_");
    let mut prev_lower = false;
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        } else {
            out.push('_');
            prev_lower = false;
        }
    }
    out
}

/// The object's labels appended to `base` as `label_*` pairs (duplicates after
/// sanitising keep the first, as a label may appear once).
fn with_labels(base: String, object_labels: &std::collections::BTreeMap<String, String>) -> String {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = base;
    for (k, v) in object_labels {
        let name = label_name(k);
        if seen.insert(name.clone()) {
            let _ = write!(out, ",{name}=\"{}\"", label(v));
        }
    }
    out
}

fn deployments(out: &mut String, list: &[Arc<Deployment>]) {
    let (mut spec, mut status, mut ready, mut available, mut labelled) =
        (vec![], vec![], vec![], vec![], vec![]);
    for d in list {
        let (ns, name) = (d.namespace().unwrap_or_default(), d.name_any());
        let key = labels(&[("namespace", &ns), ("deployment", &name)]);
        let st = d.status.clone().unwrap_or_default();
        // An unset spec.replicas means 1 (the API's default).
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        spec.push((key.clone(), f64::from(replicas)));
        status.push((key.clone(), f64::from(st.replicas.unwrap_or(0))));
        ready.push((key.clone(), f64::from(st.ready_replicas.unwrap_or(0))));
        available.push((key.clone(), f64::from(st.available_replicas.unwrap_or(0))));
        labelled.push((with_labels(key, d.labels()), 1.0));
    }
    write_family(
        out,
        "kube_deployment_spec_replicas",
        "Number of desired pods for a deployment.",
        &spec,
    );
    write_family(
        out,
        "kube_deployment_status_replicas",
        "The number of replicas per deployment.",
        &status,
    );
    write_family(
        out,
        "kube_deployment_status_replicas_ready",
        "The number of ready replicas per deployment.",
        &ready,
    );
    write_family(
        out,
        "kube_deployment_status_replicas_available",
        "The number of available replicas per deployment.",
        &available,
    );
    write_family(
        out,
        "kube_deployment_labels",
        "Kubernetes labels converted to Prometheus labels.",
        &labelled,
    );
}

/// `owner_kind`, `owner_name`, `owner_is_controller` of each owner, or `<none>` as
/// kube-state-metrics writes for an object without one.
fn owner_rows(base: &str, owners: &[OwnerReference]) -> Vec<(String, f64)> {
    if owners.is_empty() {
        let l = labels(&[
            ("owner_kind", "<none>"),
            ("owner_name", "<none>"),
            ("owner_is_controller", "<none>"),
        ]);
        return vec![(format!("{base},{l}"), 1.0)];
    }
    owners
        .iter()
        .map(|o| {
            let controller = if o.controller.unwrap_or(false) {
                "true"
            } else {
                "false"
            };
            let l = labels(&[
                ("owner_kind", &o.kind),
                ("owner_name", &o.name),
                ("owner_is_controller", controller),
            ]);
            (format!("{base},{l}"), 1.0)
        })
        .collect()
}

fn replicasets(out: &mut String, list: &[Arc<ReplicaSet>]) {
    let (mut owners, mut spec, mut ready) = (vec![], vec![], vec![]);
    for rs in list {
        let (ns, name) = (rs.namespace().unwrap_or_default(), rs.name_any());
        let key = labels(&[("namespace", &ns), ("replicaset", &name)]);
        owners.extend(owner_rows(&key, rs.owner_references()));
        let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        spec.push((key.clone(), f64::from(replicas)));
        let r = rs.status.as_ref().and_then(|s| s.ready_replicas);
        ready.push((key, f64::from(r.unwrap_or(0))));
    }
    write_family(
        out,
        "kube_replicaset_owner",
        "Information about the ReplicaSet's owner.",
        &owners,
    );
    write_family(
        out,
        "kube_replicaset_spec_replicas",
        "Number of desired pods for a ReplicaSet.",
        &spec,
    );
    write_family(
        out,
        "kube_replicaset_status_ready_replicas",
        "The number of ready replicas per ReplicaSet.",
        &ready,
    );
}

/// HPA series in the order of `hpas`' families.
#[derive(Default)]
struct HpaRows {
    min: Vec<(String, f64)>,
    max: Vec<(String, f64)>,
    current: Vec<(String, f64)>,
    desired: Vec<(String, f64)>,
    target: Vec<(String, f64)>,
}

fn hpas(out: &mut String, list: &[Arc<HorizontalPodAutoscaler>]) {
    let mut rows = HpaRows::default();
    for h in list {
        let (ns, name) = (h.namespace().unwrap_or_default(), h.name_any());
        let key = labels(&[("namespace", &ns), ("horizontalpodautoscaler", &name)]);
        let Some(spec) = &h.spec else { continue };
        rows.min
            .push((key.clone(), f64::from(spec.min_replicas.unwrap_or(1))));
        rows.max.push((key.clone(), f64::from(spec.max_replicas)));
        if let Some(st) = &h.status {
            let current = st.current_replicas.unwrap_or(0);
            rows.current.push((key.clone(), f64::from(current)));
            rows.desired
                .push((key.clone(), f64::from(st.desired_replicas)));
        }
        for m in spec.metrics.iter().flatten() {
            if let Some((metric, target_type, value)) = metric_target(m) {
                let l = labels(&[
                    ("metric_name", &metric),
                    ("metric_target_type", target_type),
                ]);
                rows.target.push((format!("{key},{l}"), value));
            }
        }
    }
    let families = [
        (
            "kube_horizontalpodautoscaler_spec_min_replicas",
            "Lower limit for the number of pods that can be set by the autoscaler, default 1.",
            &rows.min,
        ),
        (
            "kube_horizontalpodautoscaler_spec_max_replicas",
            "Upper limit for the number of pods that can be set by the autoscaler; cannot be smaller than MinReplicas.",
            &rows.max,
        ),
        (
            "kube_horizontalpodautoscaler_status_current_replicas",
            "Current number of replicas of pods managed by this autoscaler.",
            &rows.current,
        ),
        (
            "kube_horizontalpodautoscaler_status_desired_replicas",
            "Desired number of replicas of pods managed by this autoscaler.",
            &rows.desired,
        ),
        (
            "kube_horizontalpodautoscaler_spec_target_metric",
            "The metric specifications used by this autoscaler when calculating the desired replica count.",
            &rows.target,
        ),
    ];
    for (name, help, rows) in families {
        write_family(out, name, help, rows);
    }
}

/// A resource metric's name, target type (`utilization`, `average`, `value`) and target,
/// as kube-state-metrics reports them; other metric sources are left out.
fn metric_target(
    m: &k8s_openapi::api::autoscaling::v2::MetricSpec,
) -> Option<(String, &'static str, f64)> {
    let (name, target) = match (&m.resource, &m.container_resource) {
        (Some(r), _) => (r.name.clone(), &r.target),
        (None, Some(c)) => (c.name.clone(), &c.target),
        _ => return None,
    };
    if let Some(u) = target.average_utilization {
        return Some((name, "utilization", f64::from(u)));
    }
    let quantity = |q: &Quantity| quantity_value(&name, q);
    if let Some(v) = target.average_value.as_ref().and_then(quantity) {
        return Some((name, "average", v));
    }
    let v = target.value.as_ref().and_then(quantity)?;
    Some((name, "value", v))
}

/// A quantity of `resource` in kube-state-metrics' unit: cores for CPU, bytes otherwise.
fn quantity_value(resource: &str, q: &Quantity) -> Option<f64> {
    if resource == "cpu" {
        meshbench_crds::units::cpu_millis(q)
            .ok()
            .map(|m| m as f64 / 1000.0)
    } else {
        meshbench_crds::units::memory_bytes(q)
            .ok()
            .map(|b| b as f64)
    }
}

/// Pod series in the order of `pods`' families.
#[derive(Default)]
struct PodRows {
    owners: Vec<(String, f64)>,
    labelled: Vec<(String, f64)>,
    phase: Vec<(String, f64)>,
    requests: Vec<(String, f64)>,
    limits: Vec<(String, f64)>,
}

const PHASES: [&str; 5] = ["Pending", "Running", "Succeeded", "Failed", "Unknown"];

fn pods(out: &mut String, list: &[Arc<Pod>]) {
    let mut rows = PodRows::default();
    for p in list {
        let (ns, name) = (p.namespace().unwrap_or_default(), p.name_any());
        let uid = p.uid().unwrap_or_default();
        let key = labels(&[("namespace", &ns), ("pod", &name), ("uid", &uid)]);
        rows.owners.extend(owner_rows(&key, p.owner_references()));
        rows.labelled
            .push((with_labels(key.clone(), p.labels()), 1.0));
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        for candidate in PHASES {
            let l = labels(&[("phase", candidate)]);
            let on = phase.unwrap_or("Pending") == candidate;
            rows.phase
                .push((format!("{key},{l}"), if on { 1.0 } else { 0.0 }));
        }
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        for c in p.spec.iter().flat_map(|s| &s.containers) {
            let Some(res) = &c.resources else { continue };
            let base = format!(
                "{key},{}",
                labels(&[("container", &c.name), ("node", &node)])
            );
            resource_rows(&mut rows.requests, &base, res.requests.as_ref());
            resource_rows(&mut rows.limits, &base, res.limits.as_ref());
        }
    }
    let families = [
        (
            "kube_pod_owner",
            "Information about the Pod's owner.",
            &rows.owners,
        ),
        (
            "kube_pod_labels",
            "Kubernetes labels converted to Prometheus labels.",
            &rows.labelled,
        ),
        (
            "kube_pod_status_phase",
            "The pods current phase.",
            &rows.phase,
        ),
        (
            "kube_pod_container_resource_requests",
            "The number of requested request resource by a container.",
            &rows.requests,
        ),
        (
            "kube_pod_container_resource_limits",
            "The number of requested limit resource by a container.",
            &rows.limits,
        ),
    ];
    for (name, help, rows) in families {
        write_family(out, name, help, rows);
    }
}

/// One row per CPU or memory quantity, with `resource` and `unit` as kube-state-metrics
/// labels them.
fn resource_rows(
    rows: &mut Vec<(String, f64)>,
    base: &str,
    quantities: Option<&std::collections::BTreeMap<String, Quantity>>,
) {
    for (resource, q) in quantities.into_iter().flatten() {
        let unit = match resource.as_str() {
            "cpu" => "core",
            "memory" | "ephemeral-storage" => "byte",
            _ => continue,
        };
        if let Some(v) = quantity_value(resource, q) {
            // kube-state-metrics writes `ephemeral_storage`.
            let name = resource.replace('-', "_");
            let l = labels(&[("resource", &name), ("unit", unit)]);
            rows.push((format!("{base},{l}"), v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn store<K>(objects: Vec<serde_json::Value>) -> Store<K>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned,
    {
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Init);
        for o in objects {
            let k: K = serde_json::from_value(o).expect("object");
            writer.apply_watcher_event(&Event::InitApply(k));
        }
        writer.apply_watcher_event(&Event::InitDone);
        reader
    }

    fn sample() -> Stores {
        let owner = |kind: &str, name: &str| json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}]);
        Stores {
            deployments: store(vec![json!({
                "metadata": {"name": "qs-backend", "namespace": "ns", "labels": {"meshbench.io/mesh": "qs", "appName": "x"}},
                "spec": {"replicas": 3, "selector": {}, "template": {}},
                "status": {"replicas": 3, "readyReplicas": 2}
            })]),
            replicasets: store(vec![json!({
                "metadata": {"name": "qs-backend-abc", "namespace": "ns", "ownerReferences": owner("Deployment", "qs-backend")},
                "spec": {"replicas": 3, "selector": {}}
            })]),
            hpas: store(vec![json!({
                "metadata": {"name": "qs-backend", "namespace": "ns"},
                "spec": {"maxReplicas": 5, "scaleTargetRef": {"kind": "Deployment", "name": "qs-backend"},
                         "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]},
                "status": {"currentReplicas": 3, "desiredReplicas": 4}
            })]),
            pods: store(vec![json!({
                "metadata": {"name": "qs-backend-abc-x1", "namespace": "ns", "uid": "p1", "ownerReferences": owner("ReplicaSet", "qs-backend-abc")},
                "spec": {"nodeName": "n", "containers": [{"name": "worker", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1500m", "nvidia.com/gpu": "1"}}}]},
                "status": {"phase": "Running"}
            })]),
        }
    }

    #[test]
    fn series_carry_kube_state_metrics_names_labels_and_units() {
        let text = render(&sample());
        for line in [
            r#"kube_deployment_spec_replicas{namespace="ns",deployment="qs-backend"} 3"#,
            r#"kube_deployment_status_replicas_ready{namespace="ns",deployment="qs-backend"} 2"#,
            r#"kube_deployment_labels{namespace="ns",deployment="qs-backend",label_app_name="x",label_meshbench_io_mesh="qs"} 1"#,
            r#"kube_replicaset_owner{namespace="ns",replicaset="qs-backend-abc",owner_kind="Deployment",owner_name="qs-backend",owner_is_controller="true"} 1"#,
            r#"kube_horizontalpodautoscaler_spec_min_replicas{namespace="ns",horizontalpodautoscaler="qs-backend"} 1"#,
            r#"kube_horizontalpodautoscaler_status_desired_replicas{namespace="ns",horizontalpodautoscaler="qs-backend"} 4"#,
            r#"kube_horizontalpodautoscaler_spec_target_metric{namespace="ns",horizontalpodautoscaler="qs-backend",metric_name="cpu",metric_target_type="utilization"} 70"#,
            r#"kube_pod_owner{namespace="ns",pod="qs-backend-abc-x1",uid="p1",owner_kind="ReplicaSet",owner_name="qs-backend-abc",owner_is_controller="true"} 1"#,
            r#"kube_pod_status_phase{namespace="ns",pod="qs-backend-abc-x1",uid="p1",phase="Running"} 1"#,
            r#"kube_pod_status_phase{namespace="ns",pod="qs-backend-abc-x1",uid="p1",phase="Pending"} 0"#,
            r#"kube_pod_container_resource_requests{namespace="ns",pod="qs-backend-abc-x1",uid="p1",container="worker",node="n",resource="cpu",unit="core"} 0.25"#,
            r#"kube_pod_container_resource_requests{namespace="ns",pod="qs-backend-abc-x1",uid="p1",container="worker",node="n",resource="memory",unit="byte"} 67108864"#,
            r#"kube_pod_container_resource_limits{namespace="ns",pod="qs-backend-abc-x1",uid="p1",container="worker",node="n",resource="cpu",unit="core"} 1.5"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("gpu"), "only CPU and memory: {text}");
    }

    #[test]
    fn label_keys_are_sanitised_as_kube_state_metrics_does() {
        assert_eq!(label_name("meshbench.io/mesh"), "label_meshbench_io_mesh");
        assert_eq!(
            label_name("app.kubernetes.io/name"),
            "label_app_kubernetes_io_name"
        );
        assert_eq!(label_name("appName"), "label_app_name");
        assert_eq!(label_name("a-b"), "label_a_b");
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        let v = labels(&[("pod", "a\"b\\c\nd")]);
        assert_eq!(v, r#"pod="a\"b\\c\nd""#);
    }
}
