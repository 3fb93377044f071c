//! Helpers for the integration tests: real workers on 127.0.0.1, a raw HTTP client and a
//! recording downstream server.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshbench_worker::WorkerConfig;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A worker served in this process.
pub struct Worker {
    pub addr: SocketAddr,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<()>,
}

impl Worker {
    /// Starts a worker for the JSON config (the port is ignored: 127.0.0.1:0 is bound).
    pub async fn start(config: Value) -> Worker {
        let config = WorkerConfig::from_json(&config.to_string(), "test").expect("valid config");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            meshbench_worker::serve(config, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("worker serves");
        });
        Worker {
            addr,
            url: format!("http://{addr}"),
            stop: Some(tx),
            task,
        }
    }

    /// Asks the worker to shut down (drain) and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.task).await;
    }
}

/// A response, body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text))
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One request with a 30 s sanity timeout.
pub async fn send(
    client: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Resp {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("response within 30 s")
        .expect("request succeeds");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        text: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(client: &TestClient, url: &str) -> Resp {
    send(client, Method::GET, url, &[], Vec::new()).await
}

/// The value of one sample line of `/metrics` (`name{labels} value`), labels given as a
/// substring that must appear in the label set.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let metric_name = series.split('{').next().unwrap_or("");
            metric_name == name && labels.iter().all(|lab| series.contains(lab))
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// What the recording server saw.
#[derive(Debug, Default)]
pub struct Recorded {
    pub headers: Mutex<Vec<HeaderMap>>,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

/// A downstream server that records request headers and concurrency and answers 200
/// after `hold`.
pub async fn recorder(hold: Duration) -> (String, Arc<Recorded>) {
    let rec = Arc::new(Recorded::default());
    let r = rec.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let r = r.clone();
        async move {
            r.headers.lock().unwrap().push(req.headers().clone());
            let now = r.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            r.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(hold).await;
            r.in_flight.fetch_sub(1, Ordering::SeqCst);
            "ok"
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), rec)
}

/// A loopback address nobody listens on.
pub async fn closed_port_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// Polls `f` every 20 ms until it returns true or 10 s pass.
pub async fn eventually<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
