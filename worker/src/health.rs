//! The liveness listener: `/live` on a port of its own, served by a dedicated OS thread
//! running its own single-threaded async runtime.
//!
//! Why apart from the main server: a worker at saturation has every thread of its main
//! runtime, its CPU pool and its listen backlog busy with the load, and under a CPU limit
//! the kernel throttles it on top. A liveness probe answered there waits in the same
//! queues as the load, so a Kubernetes probe with a short timeout fails exactly when the
//! replica is busiest, and the kubelet kills it mid-step: in-flight requests are lost and
//! a cold replica restarts into the same overload. Restarting never cures overload, so
//! liveness must not measure it. This listener shares nothing with the request path (no
//! lock, no semaphore, no task queue, no accept backlog); under a CFS quota its thread
//! still competes for CPU with the load, but as a thread that is nearly always asleep it
//! is scheduled first when it wakes, within one CFS period (100 ms).
//!
//! What `/live` says is therefore "the process runs and can answer", nothing more. The
//! main port keeps its own `/live` (for existing callers) and `/ready`, which should
//! reflect load (see [`crate::server::app`]).

use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use tokio::sync::oneshot;

/// Path of the liveness endpoint, on the health listener and on the main port.
pub const LIVE_PATH: &str = "/live";

/// Health port the operator gives the workers it deploys (`--health-port`), unless the
/// service itself listens there.
pub const POD_HEALTH_PORT: u16 = 8081;

/// Name of the health listener's thread (as `top -H` and `/proc/<pid>/task` show it).
const THREAD_NAME: &str = "meshbench-health";

/// Errors while starting the health listener.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The health address could not be bound.
    #[error("cannot listen on {addr} (health port): {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The runtime or the thread could not be started.
    #[error("cannot start the health listener's thread: {0}")]
    Thread(io::Error),
}

/// A running health listener. Dropping it stops accepting; the thread ends once the
/// connections it has open are closed (it is not joined, so a stuck prober cannot delay
/// the worker's exit).
#[derive(Debug)]
pub struct HealthServer {
    addr: SocketAddr,
    /// Dropping the sender resolves the receiver the thread waits on: that is the stop
    /// signal, so no `Drop` impl is needed.
    _stop: oneshot::Sender<()>,
}

impl HealthServer {
    /// Binds `addr` (port 0 picks a free port) and serves [`LIVE_PATH`] on it from a new
    /// thread. Binding happens here, so a taken port is reported to the caller.
    pub fn start(addr: SocketAddr) -> Result<Self, HealthError> {
        let bind_err = |source| HealthError::Bind { addr, source };
        let listener = StdTcpListener::bind(addr).map_err(bind_err)?;
        // tokio requires a non-blocking socket to adopt it.
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        // Built here rather than in the thread so a failure is an error, not a log line.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HealthError::Thread)?;
        let (stop, stopped) = oneshot::channel();
        std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || serve_thread(runtime, listener, stopped))
            .map_err(HealthError::Thread)?;
        Ok(Self {
            addr: local,
            _stop: stop,
        })
    }

    /// The bound address (with the actual port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The body of the health thread: serves until the [`HealthServer`] is dropped.
fn serve_thread(
    runtime: tokio::runtime::Runtime,
    listener: StdTcpListener,
    stopped: oneshot::Receiver<()>,
) {
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let stop = async move {
            // Err means the sender was dropped, which is the stop signal.
            let _ = stopped.await;
        };
        axum::serve(listener, router())
            .with_graceful_shutdown(stop)
            .await
    });
    if let Err(e) = result {
        tracing::error!(error = %e, "the health listener failed; /live on the health port is down");
    }
}

/// The health listener's router: only [`LIVE_PATH`] (other paths answer an empty 404).
fn router() -> Router {
    Router::new().route(LIVE_PATH, get(live))
}

/// `GET /live`: 200 with a constant body. It reads no worker state on purpose: anything
/// shared with the request path is something the load can hold up.
pub async fn live() -> Response {
    let mut r = Response::new(Body::from(r#"{"status":"live"}"#));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    *r.status_mut() = StatusCode::OK;
    r
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    use super::HealthServer;

    /// The status line of `GET path`, or `None` when the connection fails.
    fn status_line(addr: SocketAddr, path: &str) -> Option<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.lines().next().map(str::to_owned)
    }

    #[test]
    fn serves_live_only_and_stops_when_dropped() {
        let server = HealthServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(
            status_line(addr, "/live").as_deref(),
            Some("HTTP/1.1 200 OK")
        );
        assert_eq!(
            status_line(addr, "/ready").as_deref(),
            Some("HTTP/1.1 404 Not Found")
        );
        let taken = HealthServer::start(addr).unwrap_err();
        assert!(taken.to_string().contains("health port"), "{taken}");

        drop(server);
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "still accepting after the drop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
