//! The Prometheus collector: runs every [`promql`](super::promql) template over a run's
//! time window with prometheus-http-query and turns the series into the analysis crate's
//! [`Sample`]s, with exactly its metric names and units.

use std::collections::BTreeMap;

use meshbench_analysis::samples::Sample;
use prometheus_http_query::Client;

use super::promql::{self, Subject, Vars};

/// Errors of collection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Prometheus URL is not usable.
    #[error("invalid Prometheus URL {url:?}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// A query failed.
    #[error("query {name} failed: {message}\n  query: {query}")]
    Query {
        /// Template name.
        name: String,
        /// The PromQL sent.
        query: String,
        /// Prometheus' or the client's message.
        message: String,
    },
    /// A template override is invalid.
    #[error(transparent)]
    Template(#[from] promql::Error),
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One result series: its labels and its (UTC unix ms, value) points.
pub type Series = (BTreeMap<String, String>, Vec<(i64, f64)>);

/// The time range and resolution of a collection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Start, UTC unix seconds.
    pub start: i64,
    /// End, UTC unix seconds.
    pub end: i64,
    /// Resolution, seconds.
    pub step: f64,
}

/// A collector bound to one Prometheus.
#[derive(Clone)]
pub struct Collector {
    client: Client,
    url: String,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("url", &self.url).finish()
    }
}

impl Collector {
    /// A collector for the Prometheus at `url` (e.g. `http://prometheus:9090`).
    pub fn new(url: &str) -> Result<Self> {
        let client = Client::try_from(url).map_err(|e| Error::Url {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        Ok(Self {
            client,
            url: url.to_string(),
        })
    }

    /// Runs one PromQL expression over `window`; returns (labels, [(ts_ms, value)]) per
    /// series.
    pub async fn range(&self, name: &str, query: &str, window: Window) -> Result<Vec<Series>> {
        let err = |message: String| Error::Query {
            name: name.to_string(),
            query: query.to_string(),
            message,
        };
        let result = self
            .client
            .query_range(query, window.start, window.end, window.step)
            .get()
            .await
            .map_err(|e| err(e.to_string()))?;
        let matrix = result
            .data()
            .as_matrix()
            .ok_or_else(|| err("expected a range vector (matrix) result".into()))?;
        Ok(matrix
            .iter()
            .map(|series| {
                let labels: BTreeMap<String, String> = series
                    .metric()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let points = series
                    .samples()
                    .iter()
                    .filter(|s| s.value().is_finite())
                    .map(|s| ((s.timestamp() * 1000.0).round() as i64, s.value()))
                    .collect();
                (labels, points)
            })
            .collect())
    }

    /// Collects every metric of one mesh over `window`, with `overrides` of the
    /// templates by name.
    pub async fn collect(
        &self,
        vars: &Vars,
        overrides: &BTreeMap<String, String>,
        window: Window,
        step_index: Option<u32>,
    ) -> Result<Vec<Sample>> {
        let mut samples = Vec::new();
        for (template, expr) in promql::templates_with(overrides)? {
            let query = vars.fill(&expr);
            let series = self.range(template.name, &query, window).await?;
            samples.extend(to_samples(
                vars,
                template.name,
                template.subject,
                &series,
                step_index,
            ));
        }
        Ok(samples)
    }
}

/// Maps result series to samples of `metric`; series that belong to no service of the
/// mesh are dropped.
pub fn to_samples(
    vars: &Vars,
    metric: &str,
    subject: Subject,
    series: &[Series],
    step: Option<u32>,
) -> Vec<Sample> {
    let mut per_service: BTreeMap<(String, i64), f64> = BTreeMap::new();
    let mut out = Vec::new();
    for (labels, points) in series {
        let by_object = |label: &str| labels.get(label).and_then(|d| vars.objects.get(d)).cloned();
        match subject {
            Subject::Deployment | Subject::Hpa | Subject::WorkerService => {
                let service = match subject {
                    Subject::Deployment => by_object("deployment"),
                    Subject::Hpa => by_object("horizontalpodautoscaler"),
                    _ => labels
                        .get("service")
                        .filter(|s| vars.objects.values().any(|v| v == *s))
                        .cloned(),
                };
                let Some(service) = service else { continue };
                for &(ts, v) in points {
                    out.push(Sample {
                        step,
                        ..Sample::service(ts, &vars.mesh, &service, metric, v)
                    });
                }
            }
            Subject::Pod => {
                let Some(pod) = labels.get("pod") else {
                    continue;
                };
                let Some(service) = vars.service_of_pod(pod) else {
                    continue;
                };
                for &(ts, v) in points {
                    out.push(Sample {
                        step,
                        ..Sample::pod(ts, &vars.mesh, service, pod, metric, v)
                    });
                }
            }
            Subject::PodToService => {
                let Some(service) = labels.get("pod").and_then(|p| vars.service_of_pod(p)) else {
                    continue;
                };
                for &(ts, v) in points {
                    let e = per_service.entry((service.to_string(), ts)).or_insert(v);
                    *e = e.max(v);
                }
            }
        }
    }
    for ((service, ts), v) in per_service {
        out.push(Sample {
            step,
            ..Sample::service(ts, &vars.mesh, &service, metric, v)
        });
    }
    out
}
