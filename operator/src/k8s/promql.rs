//! PromQL templates of the collector, by name, overridable from a Benchmark's
//! `spec.collection.queries` (names and placeholders are checked when the Benchmark is
//! validated, against [`COLLECTION_QUERY_NAMES`] and [`COLLECTION_QUERY_PLACEHOLDERS`]).
//!
//! Sources: kube-state-metrics (replicas, HPA, requests and limits, the pods' owners),
//! cAdvisor (CPU, working set), and the workers' own metrics (scraped with the labels of
//! deploy/prometheus/). Every query is filtered by namespace and by the run's objects and
//! evaluated over the run's time window only, so neither another mesh nor an earlier run
//! leaks in:
//!
//! - Deployment and HPA series are selected by the mesh's object names (`$deployments`).
//! - Pod series (cAdvisor, requests and limits) are joined to their Deployment through
//!   kube-state-metrics' owner chain, pod → ReplicaSet (`kube_pod_owner`) → Deployment
//!   (`kube_replicaset_owner`), kept only for the mesh's Deployments (`$pod_deployment`).
//!   Pod names are never matched: Kubernetes cuts a long ReplicaSet name short before it
//!   appends a pod's random suffix, so a pod's name need not start with its Deployment's.
//!   The join also labels each series with its `deployment`, which is how a pod is mapped
//!   to its service.
//! - Worker series are selected by the `mesh` label the scrape config copies from the
//!   pod's `meshbench.io/mesh` label.
//!
//! Placeholders: `$namespace`, `$mesh`, `$deployments` (regex of the mesh's Deployment
//! names), `$pod_deployment` (one series per pod of those Deployments, value 1, labels
//! `namespace`, `pod` and `deployment`: join a pod series with
//! `* on (namespace, pod) group_left (deployment) $pod_deployment`), `$window` (rate
//! window, see [`rate_window`]). An override must return the label its template's
//! [`Subject`] reads.

use std::collections::BTreeMap;
use std::time::Duration;

use meshbench_analysis::samples::metric;
pub use meshbench_crds::benchmark::{COLLECTION_QUERY_NAMES, COLLECTION_QUERY_PLACEHOLDERS};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PromqlError {
    /// An override names no built-in query.
    #[error(
        "spec.collection.queries.{name}: no built-in query has this name; expected one of {expected}"
    )]
    UnknownQuery {
        /// The override's name.
        name: String,
        /// The known names.
        expected: String,
    },
}

/// Result alias of this module.
pub type Result<T, E = PromqlError> = std::result::Result<T, E>;

/// Which label of a result series says whose value it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// `deployment`: one value per service (kube-state-metrics Deployment metrics, and pod
    /// metrics aggregated over the owner join).
    Deployment,
    /// `horizontalpodautoscaler`: one value per service.
    Hpa,
    /// `pod`, with its `deployment` from the owner join: one value per pod.
    Pod,
    /// `service` (the worker's own label): one value per service.
    WorkerService,
}

/// A named query template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    /// Name (the metric it yields, from the analysis vocabulary).
    pub name: &'static str,
    /// Whose values it returns.
    pub subject: Subject,
    /// The PromQL, with placeholders.
    pub expr: &'static str,
}

/// The built-in templates, in the order of [`COLLECTION_QUERY_NAMES`].
pub const TEMPLATES: &[Template] = &[
    Template {
        name: metric::REPLICAS,
        subject: Subject::Deployment,
        expr: r#"max by (deployment) (kube_deployment_spec_replicas{namespace="$namespace", deployment=~"$deployments"})"#,
    },
    Template {
        name: metric::REPLICAS_READY,
        subject: Subject::Deployment,
        expr: r#"max by (deployment) (kube_deployment_status_replicas_ready{namespace="$namespace", deployment=~"$deployments"})"#,
    },
    Template {
        name: metric::REPLICAS_DESIRED,
        subject: Subject::Hpa,
        expr: r#"max by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_desired_replicas{namespace="$namespace", horizontalpodautoscaler=~"$deployments"})"#,
    },
    Template {
        name: metric::HPA_TARGET_UTILIZATION,
        subject: Subject::Hpa,
        expr: r#"max by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_spec_target_metric{namespace="$namespace", horizontalpodautoscaler=~"$deployments", metric_name="cpu", metric_target_type="utilization"}) / 100"#,
    },
    // Requests and limits are the same for every pod of a Deployment except during a
    // rollout; the maximum is what the new pods get.
    Template {
        name: metric::CPU_REQUEST_CORES,
        subject: Subject::Deployment,
        expr: r#"max by (deployment) (kube_pod_container_resource_requests{namespace="$namespace", container="worker", resource="cpu"} * on (namespace, pod) group_left (deployment) $pod_deployment)"#,
    },
    Template {
        name: metric::CPU_LIMIT_CORES,
        subject: Subject::Deployment,
        expr: r#"max by (deployment) (kube_pod_container_resource_limits{namespace="$namespace", container="worker", resource="cpu"} * on (namespace, pod) group_left (deployment) $pod_deployment)"#,
    },
    Template {
        name: metric::CPU_CORES,
        subject: Subject::Pod,
        expr: r#"sum by (pod, deployment) (rate(container_cpu_usage_seconds_total{namespace="$namespace", container="worker"}[$window]) * on (namespace, pod) group_left (deployment) $pod_deployment)"#,
    },
    Template {
        name: metric::MEMORY_BYTES,
        subject: Subject::Pod,
        expr: r#"max by (pod, deployment) (container_memory_working_set_bytes{namespace="$namespace", container="worker"} * on (namespace, pod) group_left (deployment) $pod_deployment)"#,
    },
    Template {
        name: metric::WORKER_REQUESTS_PER_S,
        subject: Subject::WorkerService,
        expr: r#"sum by (service) (rate(meshbench_worker_requests_total{namespace="$namespace", mesh="$mesh"}[$window]))"#,
    },
    Template {
        name: metric::WORKER_ERRORS_PER_S,
        subject: Subject::WorkerService,
        expr: r#"sum by (service) (rate(meshbench_worker_requests_total{namespace="$namespace", mesh="$mesh", status=~"5.."}[$window]))"#,
    },
    Template {
        name: metric::WORKER_LATENCY_MEAN_MS,
        subject: Subject::WorkerService,
        expr: r#"1000 * sum by (service) (rate(meshbench_worker_request_duration_seconds_sum{namespace="$namespace", mesh="$mesh"}[$window])) / sum by (service) (rate(meshbench_worker_request_duration_seconds_count{namespace="$namespace", mesh="$mesh"}[$window]))"#,
    },
    Template {
        name: metric::WORKER_LATENCY_P99_MS,
        subject: Subject::WorkerService,
        expr: r#"1000 * histogram_quantile(0.99, sum by (service, le) (rate(meshbench_worker_request_duration_seconds_bucket{namespace="$namespace", mesh="$mesh"}[$window])))"#,
    },
];

/// What `$pod_deployment` stands for: the run's pods, value 1, labelled with their
/// Deployment. kube-state-metrics has no pod → Deployment series, so two owner links are
/// joined: the pod's ReplicaSet, and that ReplicaSet's Deployment, kept only when it is
/// one of the run's. Each `max by` removes duplicates (several kube-state-metrics
/// replicas, the `uid` label) so that the right side of every join is unique per key, as
/// `group_left` requires.
const POD_DEPLOYMENT: &str = concat!(
    r#"max by (namespace, pod, deployment) ("#,
    r#"label_replace(kube_pod_owner{namespace="$namespace", owner_kind="ReplicaSet"}, "replicaset", "$1", "owner_name", "(.+)")"#,
    r#" * on (namespace, replicaset) group_left (deployment) "#,
    r#"max by (namespace, replicaset, deployment) ("#,
    r#"label_replace(kube_replicaset_owner{namespace="$namespace", owner_kind="Deployment", owner_name=~"$deployments"}, "deployment", "$1", "owner_name", "(.+)")"#,
    r#"))"#,
);

/// The templates with `overrides` (by name) applied; an unknown name is an error.
pub fn templates_with(overrides: &BTreeMap<String, String>) -> Result<Vec<(Template, String)>> {
    if let Some(name) = overrides
        .keys()
        .find(|name| !TEMPLATES.iter().any(|t| t.name == name.as_str()))
    {
        return Err(PromqlError::UnknownQuery {
            name: name.clone(),
            expected: COLLECTION_QUERY_NAMES.join(", "),
        });
    }
    Ok(TEMPLATES
        .iter()
        .map(|t| {
            let expr = overrides.get(t.name).map_or(t.expr, String::as_str);
            (*t, expr.to_string())
        })
        .collect())
}

/// The rate window for Prometheus's scrape interval: four intervals (at least 4 s), so a
/// rate always has several points and survives a missed scrape.
pub fn rate_window(scrape_interval: Duration) -> String {
    let ms = scrape_interval.as_millis().saturating_mul(4).max(4000);
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Values of the placeholders for one mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct Vars {
    /// Namespace.
    pub namespace: String,
    /// Mesh name.
    pub mesh: String,
    /// Deployment (= HPA) name → service name.
    pub objects: BTreeMap<String, String>,
    /// Rate window, e.g. `120s` (see [`rate_window`]).
    pub window: String,
}

fn regex_escape(s: &str) -> String {
    // Object names are DNS labels: only `-` and alphanumerics, none special in RE2.
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

impl Vars {
    /// `(a|b|c)` of the Deployment names (PromQL anchors regex matchers, so no name
    /// matches a longer one).
    pub fn deployments_regex(&self) -> String {
        let names: Vec<String> = self.objects.keys().map(|n| regex_escape(n)).collect();
        format!("({})", names.join("|"))
    }

    /// Fills the placeholders of `expr`.
    pub fn fill(&self, expr: &str) -> String {
        // `$pod_deployment` first: its expansion uses the other placeholders.
        expr.replace("$pod_deployment", POD_DEPLOYMENT)
            .replace("$namespace", &self.namespace)
            .replace("$mesh", &self.mesh)
            .replace("$deployments", &self.deployments_regex())
            .replace("$window", &self.window)
    }

    /// The service of a Deployment (or HPA) of the run; `None` for any other object.
    pub fn service_of(&self, object: &str) -> Option<&str> {
        self.objects.get(object).map(String::as_str)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use meshbench_crds::validate::placeholders;

    use super::*;

    /// The quickstart's objects in namespace `bench` (also the collector's tests' fixture).
    pub(crate) fn vars() -> Vars {
        Vars {
            namespace: "bench".into(),
            mesh: "quickstart".into(),
            objects: BTreeMap::from([
                ("quickstart-frontend".into(), "frontend".into()),
                ("quickstart-backend".into(), "backend".into()),
            ]),
            window: "2m".into(),
        }
    }

    #[test]
    fn template_names_are_the_names_the_crds_validate() {
        let names: Vec<&str> = TEMPLATES.iter().map(|t| t.name).collect();
        assert_eq!(names, COLLECTION_QUERY_NAMES);
    }

    #[test]
    fn templates_use_only_the_validated_placeholders_and_fill_them_all() {
        let v = vars();
        for t in TEMPLATES {
            for p in placeholders(t.expr) {
                assert!(
                    COLLECTION_QUERY_PLACEHOLDERS.contains(&p),
                    "{} uses {p}",
                    t.name
                );
            }
            let q = v.fill(t.expr);
            assert_eq!(
                placeholders(&q).count(),
                0,
                "{} left a placeholder: {q}",
                t.name
            );
            assert!(
                q.contains(r#"namespace="bench""#),
                "{} is not namespace-filtered",
                t.name
            );
        }
        for p in COLLECTION_QUERY_PLACEHOLDERS {
            let filled = v.fill(p);
            assert_eq!(placeholders(&filled).count(), 0, "{p} → {filled}");
        }
    }

    #[test]
    fn pod_series_are_joined_to_the_run_s_deployments_not_matched_by_name() {
        let v = vars();
        for t in TEMPLATES {
            let q = v.fill(t.expr);
            assert!(!q.contains("pod=~"), "{} matches pod names: {q}", t.name);
            if q.contains("container=\"worker\"") {
                assert!(
                    q.contains(r#"owner_name=~"(quickstart-backend|quickstart-frontend)""#)
                        && q.contains("group_left (deployment)"),
                    "{} is not joined to the run's Deployments: {q}",
                    t.name
                );
            }
        }
    }

    #[test]
    fn overrides_replace_templates_by_name_and_unknown_names_are_refused() {
        let over = BTreeMap::from([(metric::REPLICAS.to_string(), "up".to_string())]);
        let t = templates_with(&over).unwrap();
        assert_eq!(t.len(), TEMPLATES.len());
        assert!(
            t.iter()
                .any(|(t, e)| t.name == metric::REPLICAS && e == "up")
        );
        let bad = BTreeMap::from([("replica".to_string(), "up".to_string())]);
        let err = templates_with(&bad).unwrap_err().to_string();
        assert!(err.contains("spec.collection.queries.replica"), "{err}");
        assert!(err.contains("replicas, replicas_ready"), "{err}");
    }

    #[test]
    fn the_rate_window_spans_four_scrapes() {
        assert_eq!(rate_window(Duration::from_secs(30)), "120s");
        assert_eq!(rate_window(Duration::from_secs(1)), "4s");
        assert_eq!(rate_window(Duration::from_millis(1500)), "6s");
        assert_eq!(rate_window(Duration::from_millis(250)), "4s");
        assert_eq!(rate_window(Duration::from_millis(1250)), "5s");
        assert_eq!(rate_window(Duration::from_millis(1100)), "4400ms");
    }
}
