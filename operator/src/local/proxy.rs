//! A per-service TCP proxy standing in for a ClusterIP Service, plus the readiness
//! prober that decides which endpoints it may use.
//!
//! Like kube-proxy (iptables and nftables modes), the proxy balances per TCP connection:
//! each new client connection goes to a READY endpoint picked at random (or, as an
//! option, the next in round-robin order) and stays there for its whole life, so an HTTP
//! keep-alive connection keeps hitting the replica it first reached. Random is the
//! default because it is what a cluster does: a few long-lived connections land unevenly
//! on the replicas, which round robin would hide (flattering tail latency). Bytes are copied both ways until both sides closed. If the chosen
//! backend refuses the connection, the next ready one is tried; with no ready endpoint
//! the client connection is reset at once (a Service without endpoints rejects
//! connections).
//!
//! Unlike kernel NAT, user-space copying adds a little latency and CPU in the runner's
//! own process; that CPU is not charged to any replica's cgroup.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service port could not be bound.
    #[error("cannot bind the proxy of service {service} on {addr}: {source}")]
    Bind {
        /// The service.
        service: String,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One endpoint of a service: a replica's address and whether it may get traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    /// Pod name.
    pub pod: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether its readiness probe passes.
    pub ready: bool,
}

/// How a new connection picks its endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Uniformly at random among the ready endpoints, as kube-proxy's iptables and
    /// nftables rules do.
    #[default]
    Random,
    /// The next ready endpoint in turn (kube-proxy's IPVS `rr`).
    RoundRobin,
}

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Give up on a backend that neither accepts nor refuses within this time (a full
    /// accept backlog) and try the next one.
    pub connect_timeout: Duration,
    /// How a new connection picks its endpoint.
    pub balance: Balance,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            balance: Balance::default(),
        }
    }
}

/// Counters of one backend (cumulative, except `active`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackendStats {
    /// Connections proxied to it.
    pub connections: u64,
    /// Of which still open.
    pub active: u64,
    /// Connection attempts that failed (refused, timed out).
    pub connect_failures: u64,
    /// Bytes from clients to it (counted when a connection ends).
    pub bytes_to_backend: u64,
    /// Bytes from it to clients (counted when a connection ends).
    pub bytes_from_backend: u64,
}

/// Counters of a proxy, for the sampler.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub accepted: u64,
    /// Client connections open now.
    pub active: u64,
    /// Client connections reset because no ready backend accepted them.
    pub rejected: u64,
    /// Per pod.
    pub backends: HashMap<String, BackendStats>,
}

/// A uniform pick in `0..n` from a splitmix64 of the turn counter and a per-process
/// seed: statistically random per connection, with no lock and no crate for ten lines.
fn random_index(turn: usize, n: usize) -> usize {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id()).rotate_left(32)
    });
    let mut z = seed.wrapping_add((turn as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // Multiply-shift instead of `%`: no modulo bias worth mentioning for small n.
    ((u128::from(z) * n as u128) >> 64) as usize
}

struct Inner {
    service: String,
    config: ProxyConfig,
    endpoints: watch::Sender<Arc<Vec<Backend>>>,
    next: AtomicUsize,
    accepted: AtomicU64,
    active: AtomicU64,
    rejected: AtomicU64,
    backends: Mutex<HashMap<String, BackendStats>>,
    shutdown: watch::Sender<bool>,
}

impl Inner {
    fn backend_stats(&self, pod: &str, f: impl FnOnce(&mut BackendStats)) {
        let mut map = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(pod.to_string()).or_default());
    }

    /// Connects to a ready backend picked by the balance setting, trying the others in
    /// turn on failure.
    async fn connect(&self) -> Option<(Backend, TcpStream)> {
        let snapshot = self.endpoints.borrow().clone();
        let ready: Vec<&Backend> = snapshot.iter().filter(|b| b.ready).collect();
        if ready.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let start = match self.config.balance {
            Balance::RoundRobin => turn,
            Balance::Random => random_index(turn, ready.len()),
        };
        for i in 0..ready.len() {
            let b = ready[(start + i) % ready.len()];
            match tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(b.addr))
                .await
            {
                Ok(Ok(stream)) => return Some((b.clone(), stream)),
                Ok(Err(e)) => {
                    tracing::debug!(service = %self.service, pod = %b.pod, error = %e, "backend refused");
                }
                Err(_) => {
                    tracing::debug!(service = %self.service, pod = %b.pod, "backend connect timed out");
                }
            }
            self.backend_stats(&b.pod, |s| s.connect_failures += 1);
        }
        None
    }

    async fn handle(self: Arc<Self>, mut client: TcpStream) {
        let Some((backend, mut upstream)) = self.connect().await else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            // RST rather than FIN: the client sees "connection reset" at once, as when
            // a Service has no endpoints.
            let _ = client.set_zero_linger();
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        self.backend_stats(&backend.pod, |s| {
            s.connections += 1;
            s.active += 1;
        });
        let mut shutdown = self.shutdown.subscribe();
        let copied = tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => r.ok(),
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let (up, down) = copied.unwrap_or((0, 0));
        self.backend_stats(&backend.pod, |s| {
            s.active = s.active.saturating_sub(1);
            s.bytes_to_backend += up;
            s.bytes_from_backend += down;
        });
    }
}

/// The Service stand-in of one service. Dropping it stops accepting and closes the
/// connections it proxies.
pub struct ServiceProxy {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for ServiceProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceProxy")
            .field("service", &self.inner.service)
            .field("addr", &self.local_addr)
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

impl ServiceProxy {
    /// Binds `listen` (e.g. `127.0.0.1:0` or a fixed service port) and starts accepting.
    /// Starts with no endpoints.
    pub async fn bind(service: &str, listen: SocketAddr, config: ProxyConfig) -> Result<Self> {
        let bind_err = |source| Error::Bind {
            service: service.to_string(),
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            service: service.to_string(),
            config,
            endpoints: watch::channel(Arc::new(Vec::new())).0,
            next: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            active: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            backends: Mutex::new(HashMap::new()),
            shutdown,
        });
        let accept = tokio::spawn(accept_loop(inner.clone(), listener));
        tracing::info!(service, %local_addr, "service proxy listening");
        Ok(Self {
            inner,
            local_addr,
            accept,
        })
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The service address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the endpoint set as given (membership and readiness).
    pub fn set_endpoints(&self, endpoints: Vec<Backend>) {
        self.inner.endpoints.send_replace(Arc::new(endpoints));
    }

    /// Replaces the membership, keeping the readiness of endpoints whose pod and address
    /// are unchanged; new ones (or ones on a new address) start unready until the
    /// prober passes them, as a new pod does.
    pub fn set_members(&self, members: impl IntoIterator<Item = (String, SocketAddr)>) {
        let members: Vec<(String, SocketAddr)> = members.into_iter().collect();
        self.inner.endpoints.send_modify(|eps| {
            let next = members
                .iter()
                .map(|(pod, addr)| Backend {
                    pod: pod.clone(),
                    addr: *addr,
                    ready: eps
                        .iter()
                        .any(|b| &b.pod == pod && b.addr == *addr && b.ready),
                })
                .collect();
            *eps = Arc::new(next);
        });
    }

    /// Sets the readiness of the endpoint `pod` at `addr`; false if there is none.
    pub fn set_ready(&self, pod: &str, addr: SocketAddr, ready: bool) -> bool {
        let mut found = false;
        self.inner.endpoints.send_if_modified(|eps| {
            let Some(i) = eps.iter().position(|b| b.pod == pod && b.addr == addr) else {
                return false;
            };
            found = true;
            if eps[i].ready == ready {
                return false;
            }
            let mut next = (**eps).clone();
            next[i].ready = ready;
            *eps = Arc::new(next);
            true
        });
        found
    }

    /// The current endpoints.
    pub fn endpoints(&self) -> Vec<Backend> {
        (**self.inner.endpoints.borrow()).clone()
    }

    /// A receiver that sees every endpoint change (membership or readiness).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<Backend>>> {
        self.inner.endpoints.subscribe()
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.inner.accepted.load(Ordering::Relaxed),
            active: self.inner.active.load(Ordering::Relaxed),
            rejected: self.inner.rejected.load(Ordering::Relaxed),
            backends: self
                .inner
                .backends
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Starts probing the endpoints' readiness; the prober stops with the proxy.
    pub fn spawn_prober(&self, config: ProbeConfig) -> JoinHandle<()> {
        tokio::spawn(probe_loop(
            self.inner.clone(),
            config,
            self.inner.shutdown.subscribe(),
        ))
    }

    /// Stops accepting and closes every proxied connection.
    pub fn shutdown(&self) {
        self.accept.abort();
        self.inner.shutdown.send_replace(true);
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                inner.accepted.fetch_add(1, Ordering::Relaxed);
                inner.active.fetch_add(1, Ordering::Relaxed);
                let inner = inner.clone();
                tokio::spawn(async move {
                    inner.clone().handle(client).await;
                    inner.active.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(service = %inner.service, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Readiness probe settings (Kubernetes `readinessProbe` with an `httpGet`).
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Path requested (`GET`); 200-399 passes.
    pub path: String,
    /// Time between probes of an endpoint (Kubernetes default 10 s; here 1 s).
    pub period: Duration,
    /// Time a probe may take (Kubernetes default 1 s).
    pub timeout: Duration,
    /// Consecutive failures that make a ready endpoint unready (Kubernetes default 3).
    pub failure_threshold: u32,
    /// Consecutive successes that make an unready endpoint ready (Kubernetes default 1).
    pub success_threshold: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            path: "/ready".to_string(),
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
            success_threshold: 1,
        }
    }
}

/// Sends `GET <path>` to `addr` over HTTP/1.1 and tells whether it answered 200-399
/// within `timeout`.
pub async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: meshbench-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 1024 {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let mut parts = line.split_whitespace();
        let version = parts.next()?;
        if !version.starts_with("HTTP/1.") {
            return None;
        }
        parts.next()?.parse::<u16>().ok()
    };
    matches!(
        tokio::time::timeout(timeout, attempt).await,
        Ok(Some(200..=399))
    )
}

#[derive(Default)]
struct ProbeState {
    successes: u32,
    failures: u32,
}

async fn probe_loop(inner: Arc<Inner>, config: ProbeConfig, mut shutdown: watch::Receiver<bool>) {
    let mut endpoints = inner.endpoints.subscribe();
    let mut state: HashMap<(String, SocketAddr), ProbeState> = HashMap::new();
    let mut tick = tokio::time::interval(config.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // New members are probed at once instead of waiting up to a period.
            changed = endpoints.changed() => {
                if changed.is_err() {
                    return;
                }
                let snapshot = endpoints.borrow_and_update().clone();
                if snapshot.iter().all(|b| state.contains_key(&(b.pod.clone(), b.addr))) {
                    continue;
                }
            }
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let snapshot = inner.endpoints.borrow().clone();
        state.retain(|(pod, addr), _| snapshot.iter().any(|b| &b.pod == pod && b.addr == *addr));
        let results = futures::future::join_all(snapshot.iter().map(|b| {
            let path = config.path.clone();
            async move { (b, probe(b.addr, &path, config.timeout).await) }
        }))
        .await;
        for (b, ok) in results {
            let s = state.entry((b.pod.clone(), b.addr)).or_default();
            if ok {
                s.successes += 1;
                s.failures = 0;
            } else {
                s.failures += 1;
                s.successes = 0;
            }
            let current = inner
                .endpoints
                .borrow()
                .iter()
                .find(|e| e.pod == b.pod && e.addr == b.addr)
                .map(|e| e.ready);
            let Some(ready) = current else { continue };
            let next = if ready {
                s.failures < config.failure_threshold.max(1)
            } else {
                s.successes >= config.success_threshold.max(1)
            };
            if next != ready {
                tracing::info!(service = %inner.service, pod = %b.pod, ready = next, "readiness changed");
                inner.endpoints.send_modify(|eps| {
                    let mut v = (**eps).clone();
                    if let Some(e) = v.iter_mut().find(|e| e.pod == b.pod && e.addr == b.addr) {
                        e.ready = next;
                    }
                    *eps = Arc::new(v);
                });
            }
        }
        // Our own readiness updates must not count as new membership.
        endpoints.borrow_and_update();
    }
}
