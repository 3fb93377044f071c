//! The Prometheus collector: runs every [`promql`](super::promql) template over a run's
//! time window with prometheus-http-query and turns the series into the analysis crate's
//! [`Sample`]s, with exactly its metric names and units. Every request is bounded by
//! [`Timeouts`], so an unreachable or overloaded Prometheus fails a collection (naming the
//! query) instead of holding up the run.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::time::Duration;

use meshbench_analysis::samples::Sample;
use prometheus_http_query::Client;

use super::promql::{self, Subject, Vars};

/// Errors of collection.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The Prometheus URL is not usable.
    #[error("invalid Prometheus URL {url:?}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The HTTP client could not be built (e.g. no TLS backend).
    #[error("cannot build the HTTP client for Prometheus: {0}")]
    Client(String),
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
    /// A query got no answer in time.
    #[error("query {name} timed out: {message}\n  query: {query}")]
    Timeout {
        /// Template name.
        name: String,
        /// The PromQL sent.
        query: String,
        /// Which limit was reached, and the client's message.
        message: String,
    },
    /// A template override is invalid.
    #[error(transparent)]
    Template(#[from] promql::PromqlError),
}

/// Result alias of this module.
pub type Result<T, E = CollectError> = std::result::Result<T, E>;

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

/// How long the collector waits for Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To open a connection.
    pub connect: Duration,
    /// For one query's whole answer, connection included. Prometheus is asked to give up
    /// evaluating at the same time, so a query nobody waits for does not keep it busy.
    pub request: Duration,
}

impl Default for Timeouts {
    /// 5 s to connect (a healthy in-cluster Prometheus answers in milliseconds) and 30 s
    /// per query (a run's window over a few dozen series takes well under a second).
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(30),
        }
    }
}

/// A collector bound to one Prometheus.
#[derive(Clone)]
pub struct Collector {
    client: Client,
    url: String,
    timeouts: Timeouts,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("url", &self.url)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl Collector {
    /// A collector for the Prometheus at `url` (e.g. `http://prometheus:9090`), with the
    /// default [`Timeouts`].
    pub fn new(url: &str) -> Result<Self> {
        Self::with_timeouts(url, Timeouts::default())
    }

    /// A collector for the Prometheus at `url` that gives up after `timeouts`.
    pub fn with_timeouts(url: &str, timeouts: Timeouts) -> Result<Self> {
        // The reqwest prometheus-http-query re-exports, so the versions cannot differ.
        let http = prometheus_http_query::reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .build()
            .map_err(|e| CollectError::Client(error_chain(&e)))?;
        let client = Client::from(http, url).map_err(|e| CollectError::Url {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        Ok(Self {
            client,
            url: url.to_string(),
            timeouts,
        })
    }

    /// Runs one PromQL expression over `window`; returns (labels, [(ts_ms, value)]) per
    /// series.
    pub async fn range(&self, name: &str, query: &str, window: Window) -> Result<Vec<Series>> {
        let result = self
            .client
            .query_range(query, window.start, window.end, window.step)
            .timeout(millis(self.timeouts.request))
            .get()
            .await
            .map_err(|e| self.query_error(name, query, &e))?;
        let matrix = result
            .data()
            .as_matrix()
            .ok_or_else(|| CollectError::Query {
                name: name.to_string(),
                query: query.to_string(),
                message: "expected a range vector (matrix) result".into(),
            })?;
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

    /// The error of a failed query; a timeout says which of [`Timeouts`] ran out.
    fn query_error(
        &self,
        name: &str,
        query: &str,
        e: &prometheus_http_query::Error,
    ) -> CollectError {
        let (name, query, message) = (name.to_string(), query.to_string(), error_chain(e));
        match self.expired(e) {
            Some((what, after)) => CollectError::Timeout {
                name,
                query,
                message: format!("{what} ({after:?}): {message}"),
            },
            None => CollectError::Query {
                name,
                query,
                message,
            },
        }
    }

    /// Which timeout `e` reports the expiry of, if any, and its length.
    fn expired(&self, e: &prometheus_http_query::Error) -> Option<(&'static str, Duration)> {
        use prometheus_http_query::Error as E;
        let request = (
            "no answer within the request timeout",
            self.timeouts.request,
        );
        match e {
            E::Client(c) => {
                let cause = c.inner().filter(|r| r.is_timeout())?;
                Some(if cause.is_connect() {
                    (
                        "no connection within the connect timeout",
                        self.timeouts.connect,
                    )
                } else {
                    request
                })
            }
            // Prometheus was given the request timeout as its evaluation timeout.
            E::Prometheus(p) if p.is_timeout() => Some(request),
            _ => None,
        }
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

/// A duration in whole milliseconds, as Prometheus's `timeout` parameter takes it.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `e` and its sources, `: `-separated: the client's own message alone ("failed to send
/// request to server") does not say what went wrong.
fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Wrappers often repeat their source's message.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
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
    let mut out = Vec::new();
    for (labels, points) in series {
        let Some(service) = service_of(vars, subject, labels) else {
            continue;
        };
        let pod = labels.get("pod").map(String::as_str);
        if subject == Subject::Pod && pod.is_none() {
            continue;
        }
        for &(ts, v) in points {
            let sample = match (subject, pod) {
                (Subject::Pod, Some(pod)) => Sample::pod(ts, &vars.mesh, service, pod, metric, v),
                _ => Sample::service(ts, &vars.mesh, service, metric, v),
            };
            out.push(Sample { step, ..sample });
        }
    }
    out
}

/// The service a series belongs to, read from the label its subject names; `None` when
/// it names no object of the run.
fn service_of<'v>(
    vars: &'v Vars,
    subject: Subject,
    labels: &BTreeMap<String, String>,
) -> Option<&'v str> {
    let object_label = match subject {
        // Pod series carry their Deployment from the owner join (see `promql`).
        Subject::Deployment | Subject::Pod => "deployment",
        Subject::Hpa => "horizontalpodautoscaler",
        Subject::WorkerService => {
            let service = labels.get("service")?;
            return vars
                .objects
                .values()
                .find(|s| *s == service)
                .map(String::as_str);
        }
    };
    vars.service_of(labels.get(object_label)?)
}

#[cfg(test)]
mod tests {
    use meshbench_analysis::samples::metric;

    use super::*;
    use crate::k8s::promql::tests::vars;

    fn series(labels: &[(&str, &str)], value: f64) -> Series {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (labels, vec![(1_000, value)])
    }

    #[test]
    fn pods_map_to_services_by_their_deployment_label_not_their_name() {
        let v = vars();
        let s = [
            // A truncated pod name that does not start with its Deployment's.
            series(
                &[
                    ("pod", "quickstart-backen-x7k2p"),
                    ("deployment", "quickstart-backend"),
                ],
                0.5,
            ),
            series(
                &[
                    ("pod", "quickstart-frontend-5d8f7c9b4-abcde"),
                    ("deployment", "quickstart-frontend"),
                ],
                0.2,
            ),
            // Another mesh's pod, and a pod series without its Deployment: dropped.
            series(
                &[
                    ("pod", "quickstart-2-frontend-6b5a4c3d2-pqrst"),
                    ("deployment", "quickstart-2-frontend"),
                ],
                9.0,
            ),
            series(&[("pod", "quickstart-backend-7c6d5b4a3-fghij")], 9.0),
        ];
        let out = to_samples(&v, metric::CPU_CORES, Subject::Pod, &s, Some(2));
        let got: Vec<(&str, Option<&str>, f64)> = out
            .iter()
            .map(|s| (s.service.as_str(), s.pod.as_deref(), s.value))
            .collect();
        assert_eq!(
            got,
            [
                ("backend", Some("quickstart-backen-x7k2p"), 0.5),
                ("frontend", Some("quickstart-frontend-5d8f7c9b4-abcde"), 0.2),
            ]
        );
        assert!(
            out.iter()
                .all(|s| s.step == Some(2) && s.mesh == "quickstart")
        );
    }

    /// (service, pod) of the samples of one series.
    fn one(subject: Subject, labels: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        to_samples(&vars(), "m", subject, &[series(labels, 1.0)], None)
            .into_iter()
            .map(|s| (s.service, s.pod))
            .collect()
    }

    #[test]
    fn service_level_subjects_read_their_own_label() {
        let backend: Vec<(String, Option<String>)> = vec![("backend".to_string(), None)];
        assert_eq!(
            one(Subject::Deployment, &[("deployment", "quickstart-backend")]),
            backend
        );
        assert_eq!(
            one(
                Subject::Hpa,
                &[("horizontalpodautoscaler", "quickstart-backend")]
            ),
            backend
        );
        assert_eq!(
            one(Subject::WorkerService, &[("service", "backend")]),
            backend
        );
        assert!(
            one(
                Subject::Deployment,
                &[("deployment", "quickstart-2-backend")]
            )
            .is_empty()
        );
        assert!(one(Subject::WorkerService, &[("service", "payments")]).is_empty());
    }

    #[test]
    fn timeouts_default_to_5_s_connect_and_30_s_per_query() {
        let t = Timeouts::default();
        assert_eq!(
            (t.connect, t.request),
            (Duration::from_secs(5), Duration::from_secs(30))
        );
        assert_eq!(millis(t.request), 30_000);
    }

    #[tokio::test]
    async fn a_query_that_gets_no_answer_times_out_and_says_which() {
        // A listener that accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let _held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_millis(300),
        };
        let collector = Collector::with_timeouts(&url, timeouts).unwrap();
        let window = Window {
            start: 0,
            end: 60,
            step: 15.0,
        };
        let err = collector
            .range(metric::CPU_CORES, "up", window)
            .await
            .unwrap_err();
        assert!(matches!(err, CollectError::Timeout { .. }), "{err}");
        let text = err.to_string();
        assert!(text.starts_with("query cpu_cores timed out"), "{text}");
        assert!(text.contains("request timeout (300ms)"), "{text}");
        assert!(text.contains("query: up"), "{text}");
    }
}
