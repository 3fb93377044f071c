//! Downstream calls through one pooled keep-alive HTTP/1 client per worker.
//!
//! Every call reuses an idle pooled connection when there is one; the pool keeps idle
//! connections for 90 s without a per-host cap, so a steady load opens connections only
//! while its concurrency grows (the prototype's Go client opened a new connection for 38 %
//! of its calls). New connections are counted in `meshbench_worker_downstream_connections`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::config::{CallConfig, TimeoutPolicy};
use crate::trace::TraceContext;

/// Largest downstream response body read; larger ones fail the call.
const MAX_DOWNSTREAM_BODY_BYTES: usize = 64 << 20;

/// Errors of this module (a failed call is an [`Outcome`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum DownstreamError {
    /// A call's URL and path do not form a valid URI.
    #[error("invalid downstream URI {uri:?}: {message}")]
    Uri {
        /// The joined URL.
        uri: String,
        /// Why it is invalid.
        message: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = DownstreamError> = std::result::Result<T, E>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Resolves Service names from the node agent's hosts file first (see
/// [`meshbench_common::names`]), then through the system resolver.
#[derive(Debug, Clone, Copy, Default)]
pub struct PodResolver;

impl tower::Service<Name> for PodResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move {
            // The connector sets the port; 0 here as with its own resolver.
            if let Some(ip) = meshbench_common::names::lookup(name.as_str()) {
                return Ok(vec![SocketAddr::new(ip, 0)].into_iter());
            }
            let addrs = tokio::net::lookup_host((name.as_str(), 0)).await?;
            Ok(addrs.collect::<Vec<_>>().into_iter())
        })
    }
}

/// An [`HttpConnector`] that counts the connections it opens.
#[derive(Debug, Clone)]
pub struct CountingConnector {
    inner: HttpConnector<PodResolver>,
    opened: Counter,
}

impl tower::Service<Uri> for CountingConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fut = self.inner.call(uri);
        let opened = self.opened.clone();
        Box::pin(async move {
            let io = fut.await.map_err(BoxError::from)?;
            opened.inc();
            Ok(io)
        })
    }
}

/// The pooled client shared by all endpoints of a worker.
pub type HttpClient = Client<CountingConnector, Empty<Bytes>>;

/// Builds the pooled keep-alive client; `opened` counts new connections.
pub fn client(opened: Counter) -> HttpClient {
    let mut http = HttpConnector::new_with_resolver(PodResolver);
    // Small request/response pairs: Nagle would add up to 40 ms per hop.
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(usize::MAX)
        .build(CountingConnector {
            inner: http,
            opened,
        })
}

/// How one downstream attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 2xx or 3xx.
    Ok,
    /// The target answered 4xx or 5xx.
    HttpError,
    /// No response: connection refused, reset, unreadable body.
    ConnectError,
    /// No complete response within the call's timeout.
    Timeout,
}

impl Outcome {
    /// Metric label value.
    pub fn as_label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::HttpError => "http_error",
            Outcome::ConnectError => "connect_error",
            Outcome::Timeout => "timeout",
        }
    }
}

/// One attempt as reported in the response envelope.
#[derive(Debug, Clone, Serialize)]
pub struct CallReport {
    /// The call's target label.
    pub target: String,
    /// Index of the group (parallel branch).
    pub group: usize,
    /// Attempt number within `repeat`, from 0.
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// HTTP status, when a response came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Wall time of the attempt, µs.
    pub duration_us: u64,
    /// What went wrong, when something did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// A call config prepared for the hot path.
#[derive(Debug, Clone)]
pub struct PreparedCall {
    uri: Uri,
    method: axum::http::Method,
    probability: f64,
    repeat: u32,
    timeout: Duration,
    target: String,
    counters: [Counter; 4],
}

impl PreparedCall {
    /// Joins URL and path and resolves the metric counters.
    pub fn new(call: &CallConfig, counter: impl Fn(&str, &'static str) -> Counter) -> Result<Self> {
        let joined = format!("{}{}", call.url.trim_end_matches('/'), call.path);
        let uri: Uri =
            joined
                .parse()
                .map_err(|e: axum::http::uri::InvalidUri| DownstreamError::Uri {
                    uri: joined.clone(),
                    message: e.to_string(),
                })?;
        let target = call.target();
        let counters = [
            Outcome::Ok,
            Outcome::HttpError,
            Outcome::ConnectError,
            Outcome::Timeout,
        ]
        .map(|o| counter(&target, o.as_label()));
        Ok(PreparedCall {
            uri,
            method: call.method.as_http(),
            probability: call.probability,
            repeat: call.repeat,
            timeout: Duration::from_micros(call.timeout_us),
            target,
            counters,
        })
    }

    fn count(&self, outcome: Outcome) {
        self.counters[outcome as usize].inc();
    }
}

/// Result of all call groups of a request.
#[derive(Debug, Default)]
pub struct CallsResult {
    /// Every attempt made, in group order.
    pub reports: Vec<CallReport>,
}

impl CallsResult {
    /// The first attempt that decides the response status, if any: a failure gives 502,
    /// a timeout 504 unless the endpoint ignores timeouts.
    pub fn failure(&self, policy: TimeoutPolicy) -> Option<(StatusCode, &CallReport)> {
        self.reports.iter().find_map(|r| match r.outcome {
            Outcome::Ok => None,
            Outcome::Timeout if policy == TimeoutPolicy::Ignore => None,
            Outcome::Timeout => Some((StatusCode::GATEWAY_TIMEOUT, r)),
            Outcome::HttpError | Outcome::ConnectError => Some((StatusCode::BAD_GATEWAY, r)),
        })
    }
}

async fn attempt(
    client: &HttpClient,
    call: &PreparedCall,
    headers: &HeaderMap,
    group: usize,
    attempt_no: u32,
) -> CallReport {
    let started = Instant::now();
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.method_mut() = call.method.clone();
    *req.uri_mut() = call.uri.clone();
    *req.headers_mut() = headers.clone();
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            // The legacy client's Display is terse; the source names the OS error.
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        })?;
        let status = resp.status();
        // Read the whole body so the connection goes back to the pool.
        Limited::new(resp.into_body(), MAX_DOWNSTREAM_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the response body: {e}"))?;
        Ok::<_, String>(status)
    };
    let (outcome, status, cause) = match tokio::time::timeout(call.timeout, exchange).await {
        Ok(Ok(s)) if s.is_client_error() || s.is_server_error() => (
            Outcome::HttpError,
            Some(s.as_u16()),
            Some(format!("{} {} answered {}", call.method, call.uri, s)),
        ),
        Ok(Ok(s)) => (Outcome::Ok, Some(s.as_u16()), None),
        Ok(Err(e)) => (
            Outcome::ConnectError,
            None,
            Some(format!("{} {} failed: {e}", call.method, call.uri)),
        ),
        Err(_) => (
            Outcome::Timeout,
            None,
            Some(format!(
                "{} {} timed out after {} µs",
                call.method,
                call.uri,
                call.timeout.as_micros()
            )),
        ),
    };
    call.count(outcome);
    CallReport {
        target: call.target.clone(),
        group,
        attempt: attempt_no,
        outcome,
        status,
        duration_us: started.elapsed().as_micros() as u64,
        cause,
    }
}

/// Runs one group: its calls in order, each `repeat` times. The group stops at the first
/// attempt that fails the request (an ignored timeout does not stop it).
async fn run_group(
    client: HttpClient,
    group: std::sync::Arc<[PreparedCall]>,
    index: usize,
    headers: HeaderMap,
    endpoint: std::sync::Arc<crate::server::EndpointShared>,
    policy: TimeoutPolicy,
) -> Vec<CallReport> {
    let mut reports = Vec::new();
    for call in group.iter() {
        if !endpoint.rng().chance(call.probability) {
            continue;
        }
        for n in 0..call.repeat {
            let r = attempt(&client, call, &headers, index, n).await;
            let stop = match r.outcome {
                Outcome::Ok => false,
                Outcome::Timeout => policy == TimeoutPolicy::Fail,
                Outcome::HttpError | Outcome::ConnectError => true,
            };
            reports.push(r);
            if stop {
                return reports;
            }
        }
    }
    reports
}

/// Runs all groups of an endpoint for one request: groups in parallel, calls within a
/// group in sequence, trace headers from `trace` on every call.
pub async fn run_groups(
    client: &HttpClient,
    endpoint: &std::sync::Arc<crate::server::EndpointShared>,
    trace: &TraceContext,
) -> CallsResult {
    let groups = endpoint.call_groups();
    if groups.is_empty() {
        return CallsResult::default();
    }
    let mut headers = HeaderMap::new();
    trace.inject(&mut headers);
    let policy = endpoint.timeout_policy();
    if groups.len() == 1 {
        let reports = run_group(
            client.clone(),
            groups[0].clone(),
            0,
            headers,
            endpoint.clone(),
            policy,
        )
        .await;
        return CallsResult { reports };
    }
    let mut set = tokio::task::JoinSet::new();
    for (i, g) in groups.iter().enumerate() {
        let fut = run_group(
            client.clone(),
            g.clone(),
            i,
            headers.clone(),
            endpoint.clone(),
            policy,
        );
        set.spawn(async move { (i, fut.await) });
    }
    let mut by_group: Vec<(usize, Vec<CallReport>)> = Vec::with_capacity(groups.len());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(r) => by_group.push(r),
            Err(e) => tracing::error!(error = %e, "downstream call group task failed"),
        }
    }
    by_group.sort_by_key(|(i, _)| *i);
    CallsResult {
        reports: by_group.into_iter().flat_map(|(_, r)| r).collect(),
    }
}
