//! Live view of a run: a Prometheus `/metrics` endpoint (for Grafana) and a progress line
//! per second on a terminal. Both are fed once per second from the collector's totals, so
//! the request path never touches them.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::load_plan::ResolvedStage;
use crate::result::{Counts, LatencySummary, LoadResult};
use crate::runner::{Result, RunnerError};

/// Metrics of one loadgen instance, all prefixed `meshbench_loadgen_`.
pub struct LiveMetrics {
    registry: Mutex<Registry>,
    requests: Family<Vec<(String, String)>, Counter>,
    target_rate: Gauge<f64, AtomicU64>,
    users: Gauge,
    stage: Gauge,
    in_flight: Gauge,
    latency: Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>,
    last: Mutex<Counts>,
}

impl std::fmt::Debug for LiveMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveMetrics")
    }
}

impl LiveMetrics {
    fn new(instance: u32) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "meshbench_loadgen",
            [("instance".into(), instance.to_string().into())].into_iter(),
        );
        let requests = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "requests",
            "Requests by outcome (sent, ok, 1xx..5xx, timeout, connection_error, other_error, late, dropped)",
            requests.clone(),
        );
        let target_rate = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "target_rate",
            "Target rate of the current stage (requests/s, all instances)",
            target_rate.clone(),
        );
        let users = Gauge::default();
        registry.register(
            "users",
            "Users of the current stage (closed loop, all instances)",
            users.clone(),
        );
        let stage = Gauge::default();
        registry.register("stage", "Index of the current stage", stage.clone());
        let in_flight = Gauge::default();
        registry.register("in_flight", "Requests in flight", in_flight.clone());
        let latency = Family::<Vec<(String, String)>, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "latency_seconds",
            "Success latency of the last full second, by quantile",
            latency.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            target_rate,
            users,
            stage,
            in_flight,
            latency,
            last: Mutex::new(Counts::default()),
        }
    }

    /// Publishes the totals and last second's latency.
    pub(crate) fn update(
        &self,
        stage: &ResolvedStage,
        totals: &Counts,
        last_second: &LatencySummary,
        in_flight: u64,
    ) {
        self.target_rate.set(stage.rate.unwrap_or(0.0));
        self.users.set(i64::from(stage.users.unwrap_or(0)));
        self.stage.set(i64::from(stage.index));
        self.in_flight.set(in_flight as i64);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let pairs = [
            ("sent", totals.sent, last.sent),
            ("ok", totals.ok, last.ok),
            ("1xx", totals.status_1xx, last.status_1xx),
            ("2xx", totals.status_2xx, last.status_2xx),
            ("3xx", totals.status_3xx, last.status_3xx),
            ("4xx", totals.status_4xx, last.status_4xx),
            ("5xx", totals.status_5xx, last.status_5xx),
            ("timeout", totals.timeouts, last.timeouts),
            (
                "connection_error",
                totals.connection_errors,
                last.connection_errors,
            ),
            ("other_error", totals.other_errors, last.other_errors),
            ("late", totals.late, last.late),
            ("dropped", totals.dropped, last.dropped),
        ];
        for (outcome, now, before) in pairs {
            self.requests
                .get_or_create(&vec![("outcome".into(), outcome.into())])
                .inc_by(now.saturating_sub(before));
        }
        *last = *totals;
        for (q, v) in [
            ("0.5", last_second.p50_us),
            ("0.99", last_second.p99_us),
            ("1", last_second.max_us),
        ] {
            self.latency
                .get_or_create(&vec![("quantile".into(), q.into())])
                .set(v as f64 / 1e6);
        }
    }

    /// Publishes the final totals.
    pub(crate) fn finish(&self, result: &LoadResult) {
        let mut totals = Counts::default();
        for s in &result.stages {
            totals.add(&s.counts);
        }
        if let Some(last) = result.stages.last() {
            let stage = ResolvedStage {
                index: last.index,
                name: last.name.clone(),
                warm_up: last.warm_up,
                duration: Duration::from_millis(last.planned_duration_ms),
                rate: last.target_rate,
                users: last.users,
            };
            self.update(&stage, &totals, &LatencySummary::default(), 0);
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Encoding into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

/// Serves `/metrics` on `addr` until `cancel` fires or the process ends.
pub(crate) async fn serve(
    addr: SocketAddr,
    instance: u32,
    cancel: CancellationToken,
) -> Result<Arc<LiveMetrics>> {
    use axum::routing::get;
    let metrics = Arc::new(LiveMetrics::new(instance));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunnerError::Metrics { addr, source })?;
    let m = metrics.clone();
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = m.clone();
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!("metrics endpoint stopped: {e}");
        }
    });
    Ok(metrics)
}

/// The per-second progress line.
#[derive(Debug)]
pub(crate) struct Progress;

impl Progress {
    pub fn new() -> Self {
        Self
    }

    #[allow(clippy::too_many_arguments)]
    pub fn line(
        &mut self,
        elapsed: Duration,
        stage: &ResolvedStage,
        stages: usize,
        prev: &Counts,
        now: &Counts,
        last: &LatencySummary,
        in_flight: u64,
    ) {
        let target = match (stage.rate, stage.users) {
            (Some(r), _) => format!("{r:.0}/s"),
            (None, Some(u)) => format!("{u} users"),
            _ => "-".into(),
        };
        let failed = |c: &Counts| {
            c.timeouts + c.connection_errors + c.other_errors + c.status_4xx + c.status_5xx
        };
        let errors = failed(now).saturating_sub(failed(prev));
        eprintln!(
            "[{:>5.0}s] stage {}/{} {:<12} target {:>10} sent {:>7}/s ok {:>7}/s p99 {:>9} errors {:>5} late {:>6} dropped {:>6} in-flight {:>5}",
            elapsed.as_secs_f64(),
            stage.index + 1,
            stages,
            stage.name,
            target,
            now.sent.saturating_sub(prev.sent),
            now.ok.saturating_sub(prev.ok),
            format!("{:.2}ms", last.p99_us as f64 / 1000.0),
            errors,
            now.late.saturating_sub(prev.late),
            now.dropped.saturating_sub(prev.dropped),
            in_flight,
        );
    }
}
