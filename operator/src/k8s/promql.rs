//! PromQL templates of the collector, by name, overridable from a Benchmark's
//! `spec.collection.queries`. Sources: kube-state-metrics (replicas, HPA, requests and
//! limits), cAdvisor (CPU, working set), and the workers' own metrics (scraped with the
//! labels of deploy/prometheus/). Every query is filtered by namespace and by the run's
//! objects (Deployment and pod names of the mesh, the mesh label) and evaluated over the
//! run's time window only, so an earlier run's data never leaks in.
//!
//! Placeholders: `$namespace`, `$mesh`, `$deployments` (regex of the mesh's Deployment
//! names), `$pods` (regex of their pods), `$window` (rate window).

use std::collections::BTreeMap;

use meshbench_analysis::samples::metric;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which label of a result series says whose value it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// `deployment` (kube-state-metrics Deployment metrics): one value per service.
    Deployment,
    /// `horizontalpodautoscaler`: one value per service.
    Hpa,
    /// `pod`, aggregated to the service (max over its pods): one value per service.
    PodToService,
    /// `pod`: one value per pod.
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

/// The built-in templates.
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
    Template {
        name: metric::CPU_REQUEST_CORES,
        subject: Subject::PodToService,
        expr: r#"max by (pod) (kube_pod_container_resource_requests{namespace="$namespace", pod=~"$pods", container="worker", resource="cpu"})"#,
    },
    Template {
        name: metric::CPU_LIMIT_CORES,
        subject: Subject::PodToService,
        expr: r#"max by (pod) (kube_pod_container_resource_limits{namespace="$namespace", pod=~"$pods", container="worker", resource="cpu"})"#,
    },
    Template {
        name: metric::CPU_CORES,
        subject: Subject::Pod,
        expr: r#"sum by (pod) (rate(container_cpu_usage_seconds_total{namespace="$namespace", pod=~"$pods", container="worker"}[$window]))"#,
    },
    Template {
        name: metric::MEMORY_BYTES,
        subject: Subject::Pod,
        expr: r#"max by (pod) (container_memory_working_set_bytes{namespace="$namespace", pod=~"$pods", container="worker"})"#,
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

/// The templates with `overrides` (by name) applied; an unknown name is an error.
pub fn templates_with(overrides: &BTreeMap<String, String>) -> Result<Vec<(Template, String)>> {
    for name in overrides.keys() {
        if !TEMPLATES.iter().any(|t| t.name == name) {
            return Err(Error::UnknownQuery {
                name: name.clone(),
                expected: TEMPLATES
                    .iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(TEMPLATES
        .iter()
        .map(|t| {
            (
                *t,
                overrides
                    .get(t.name)
                    .cloned()
                    .unwrap_or_else(|| t.expr.to_string()),
            )
        })
        .collect())
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
    /// Rate window, e.g. `30s`.
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
    /// `a|b|c` of the Deployment names.
    pub fn deployments_regex(&self) -> String {
        let names: Vec<String> = self.objects.keys().map(|n| regex_escape(n)).collect();
        format!("({})", names.join("|"))
    }

    /// The pods of those Deployments: `<deployment>-<replicaset hash>-<pod suffix>`.
    pub fn pods_regex(&self) -> String {
        format!("{}-[a-z0-9]+-[a-z0-9]+", self.deployments_regex())
    }

    /// Fills the placeholders of `expr`.
    pub fn fill(&self, expr: &str) -> String {
        expr.replace("$namespace", &self.namespace)
            .replace("$mesh", &self.mesh)
            .replace("$deployments", &self.deployments_regex())
            .replace("$pods", &self.pods_regex())
            .replace("$window", &self.window)
    }

    /// The service a pod belongs to: the longest Deployment name it starts with.
    pub fn service_of_pod(&self, pod: &str) -> Option<&str> {
        self.objects
            .iter()
            .filter(|(d, _)| {
                pod.strip_prefix(d.as_str()).is_some_and(|rest| {
                    rest.starts_with('-') && rest[1..].matches('-').count() == 1
                })
            })
            .max_by_key(|(d, _)| d.len())
            .map(|(_, s)| s.as_str())
    }
}
