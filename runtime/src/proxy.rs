//! A per-service TCP proxy standing in for a ClusterIP Service, plus the readiness
//! prober that decides which endpoints it may use.
//!
//! Like kube-proxy (iptables and nftables modes), the proxy balances per TCP connection:
//! each new client connection goes to an endpoint picked at random (or, as an option,
//! the next in round-robin order) and stays there for its whole life, so an HTTP
//! keep-alive connection keeps hitting the replica it first reached. Random is the
//! default because it is what a cluster does: a few long-lived connections land unevenly
//! on the replicas, which round robin would hide (flattering tail latency). Bytes are
//! copied both ways until both sides closed.
//!
//! At the edges it fails as a cluster does:
//! - **Routes lag readiness.** A probe result changes the pod's Ready condition at once,
//!   but reaches kube-proxy's rules only through the EndpointSlice controller and
//!   kube-proxy's next sync (its `minSyncPeriod` is 1 s). So the proxy keeps two views:
//!   the endpoints with the prober's verdicts ([`ServiceProxy::endpoints`], what the
//!   kubelet reports and the HPA counts) and the routes new connections pick from
//!   ([`ServiceProxy::routes`]): the ready endpoints as they were
//!   [`ProxyConfig::propagation_delay`] ago. A pod joins, and an unready or removed one
//!   leaves, that much later.
//! - **A refused connect fails the client.** Behind DNAT the client's own SYN reaches
//!   the chosen pod, so a refusal is the client's error and no other pod is tried. Here
//!   the client is already accepted, so it gets the nearest thing: its connection reset
//!   before any byte. The refusal counts in the pod's `connect_failures`.
//! - **No usable endpoint, no listener.** kube-proxy REJECTs connections to a Service
//!   without usable endpoints, so `connect()` fails with ECONNREFUSED. The proxy stops
//!   listening while it has no route, so the kernel refuses for it, and listens again
//!   when a route appears.
//!
//! Listening stops by `shutdown(SHUT_RD)` on the listening socket: on Linux that ends the
//! listen state but keeps the socket bound, and `listen()` revives it (HAProxy pauses its
//! listeners this way), so no other socket can take the service's port meanwhile. Linux
//! frees an auto-bound port when listening stops, so the port is always bound by number
//! (see `service_socket`). Limits: connections queued but not yet accepted when listening
//! stops, and one accepted in that instant, are reset (ECONNRESET, not ECONNREFUSED);
//! where `shutdown` does not stop a listener (not Linux) the socket is closed and bound
//! again later, and another program could take the port in between.
//!
//! Unlike kernel NAT, user-space copying adds a little latency and CPU in the runner's
//! own process; that CPU is not charged to any replica's cgroup.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The worker's readiness probe (an HTTP GET on the service port), in one place so that a
/// replica leaves and rejoins its Service on the same schedule in a cluster and locally.
///
/// It probes the service port so it reflects what the traffic sees: a replica too
/// saturated to answer within the timeout leaves the Service until it recovers. That
/// costs traffic, not the replica, and it is the Kubernetes behaviour a benchmark of a
/// mesh should reproduce. Without `readiness:` in the spec the failure threshold is the
/// Kubernetes default of 3, so one slow answer does not shed load the user never asked to
/// shed; a service that declares readiness gating leaves at the first miss, which is the
/// gate it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadinessProbe {
    /// Path requested; 200-399 passes.
    pub path: &'static str,
    /// Time between probes (`periodSeconds`).
    pub period: Duration,
    /// Time a probe may take (`timeoutSeconds`).
    pub timeout: Duration,
    /// Passes in a row that make an unready replica ready (`successThreshold`).
    pub success_threshold: u32,
    /// Misses in a row that make a ready replica unready (`failureThreshold`).
    pub failure_threshold: u32,
}

/// Accept backlog of the service's socket (what tokio's `TcpListener::bind` uses).
const BACKLOG: u32 = 1024;

/// Wait before trying again to listen after a failure (the port taken meanwhile, say).
const RELISTEN_RETRY: Duration = Duration::from_millis(100);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
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
pub type Result<T, E = ProxyError> = std::result::Result<T, E>;

/// One endpoint of a service: a replica's address and whether it may get traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    /// Pod name.
    pub pod: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether its readiness probe passes (the pod's Ready condition).
    pub ready: bool,
}

/// How a new connection picks its endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Uniformly at random among the routed endpoints, as kube-proxy's iptables and
    /// nftables rules do.
    #[default]
    Random,
    /// The next routed endpoint in turn (kube-proxy's IPVS `rr`).
    RoundRobin,
}

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Give up on an endpoint that neither accepts nor refuses within this time (a full
    /// accept backlog) and reset the client connection.
    pub connect_timeout: Duration,
    /// How a new connection picks its endpoint.
    pub balance: Balance,
    /// How long a change of readiness or membership takes to reach the routes (see the
    /// module docs). Default 1 s, about what the EndpointSlice update and kube-proxy sync
    /// take on a cluster; zero makes the routes follow at once.
    pub propagation_delay: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            balance: Balance::default(),
            propagation_delay: Duration::from_secs(1),
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
    /// Connection attempts that failed (refused, timed out); each failed its client.
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
    /// Client connections reset before any byte: the chosen endpoint refused or did not
    /// answer, or (in the instant before listening stops) there was no route.
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

/// Locks `m` even if a panic poisoned it: what it guards (counters, a queue) stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Values passing through a constant delay: each becomes current `delay` after it was
/// pushed, so what is current at `t` is the last value pushed by `t - delay`, as a
/// cluster's routes are its endpoints' readiness of about a second before.
#[derive(Debug)]
struct DelayLine<T> {
    delay: Duration,
    /// Values with the instant each falls due, oldest first. Pushes come with
    /// non-decreasing `now`, so due times are in order too.
    queue: VecDeque<(Instant, T)>,
}

impl<T> DelayLine<T> {
    fn new(delay: Duration) -> Self {
        Self {
            delay,
            queue: VecDeque::new(),
        }
    }

    fn push(&mut self, now: Instant, value: T) {
        self.queue.push_back((now + self.delay, value));
    }

    /// The latest value due by `now`, if any, dropping the older ones it supersedes.
    fn pop_due(&mut self, now: Instant) -> Option<T> {
        let mut latest = None;
        while self.queue.front().is_some_and(|(due, _)| *due <= now) {
            latest = self.queue.pop_front().map(|(_, value)| value);
        }
        latest
    }

    /// When the next value falls due.
    fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(due, _)| *due)
    }
}

struct Inner {
    service: String,
    /// The service's address, fixed for the proxy's life.
    addr: SocketAddr,
    config: ProxyConfig,
    /// Membership and the prober's verdicts: the pods' Ready condition as the kubelet
    /// reports it.
    endpoints: watch::Sender<Arc<Vec<Backend>>>,
    /// What new connections pick from: the ready endpoints as they were
    /// `propagation_delay` ago.
    routes: watch::Sender<Arc<Vec<Backend>>>,
    /// Ready sets on their way to `routes`. Endpoint updates hold its lock, so the sets
    /// enter in the order the changes were made.
    pending: Mutex<DelayLine<Arc<Vec<Backend>>>>,
    /// Wakes the propagation task when a ready set is queued.
    queued: Notify,
    /// Whether the service's socket listens: it follows the routes, but a moment later
    /// (the accept task switches it).
    accepting: AtomicBool,
    next: AtomicUsize,
    accepted: AtomicU64,
    active: AtomicU64,
    rejected: AtomicU64,
    backends: Mutex<HashMap<String, BackendStats>>,
    shutdown: watch::Sender<bool>,
}

impl Inner {
    fn backend_stats(&self, pod: &str, f: impl FnOnce(&mut BackendStats)) {
        f(lock(&self.backends).entry(pod.to_string()).or_default());
    }

    /// Applies `f` to the endpoints (it tells whether it changed them) and, on a change,
    /// queues the new ready set for the routes. Every endpoint write goes through here.
    fn update_endpoints(&self, f: impl FnOnce(&mut Vec<Backend>) -> bool) -> bool {
        let mut pending = lock(&self.pending);
        let mut ready: Option<Arc<Vec<Backend>>> = None;
        let changed = self.endpoints.send_if_modified(|eps| {
            let mut next = (**eps).clone();
            if !f(&mut next) {
                return false;
            }
            ready = Some(Arc::new(next.iter().filter(|b| b.ready).cloned().collect()));
            *eps = Arc::new(next);
            true
        });
        if let Some(ready) = ready {
            let now = Instant::now();
            pending.push(now, ready);
            match pending.pop_due(now) {
                // No delay: the routes follow at once, before this call returns.
                Some(due) => self.publish_routes(due),
                None => self.queued.notify_one(),
            }
        }
        changed
    }

    fn publish_routes(&self, routes: Arc<Vec<Backend>>) {
        self.routes.send_if_modified(|current| {
            if **current == *routes {
                return false;
            }
            tracing::debug!(service = %self.service, routed = routes.len(), "routes updated");
            *current = routes;
            true
        });
    }

    /// Connects to one routed endpoint picked by the balance setting. As behind DNAT, a
    /// refusal (or no answer within the connect timeout) is the client's failure: no
    /// other endpoint is tried.
    async fn connect(&self) -> Option<(Backend, TcpStream)> {
        let routes = self.routes.borrow().clone();
        if routes.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let pick = match self.config.balance {
            Balance::RoundRobin => turn % routes.len(),
            Balance::Random => random_index(turn, routes.len()),
        };
        let b = &routes[pick];
        match tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(b.addr)).await {
            Ok(Ok(stream)) => return Some((b.clone(), stream)),
            Ok(Err(e)) => {
                tracing::debug!(service = %self.service, pod = %b.pod, error = %e, "backend refused");
            }
            Err(_) => {
                tracing::debug!(service = %self.service, pod = %b.pod, "backend connect timed out");
            }
        }
        self.backend_stats(&b.pod, |s| s.connect_failures += 1);
        None
    }

    async fn handle(self: Arc<Self>, mut client: TcpStream) {
        let Some((backend, mut upstream)) = self.connect().await else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            // RST rather than FIN: the client fails at once, the nearest we can get to
            // the refused connect it would see on a cluster.
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
    propagate: JoinHandle<()>,
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
    /// Binds `listen` (e.g. `127.0.0.1:0` or a fixed service port). Starts with no
    /// endpoints, so refusing connections until one is ready and routed.
    pub async fn bind(service: &str, listen: SocketAddr, config: ProxyConfig) -> Result<Self> {
        let bind_err = |source| ProxyError::Bind {
            service: service.to_string(),
            addr: listen,
            source,
        };
        let socket = service_socket(listen).map_err(bind_err)?;
        let local_addr = socket.local_addr().map_err(bind_err)?;
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            service: service.to_string(),
            addr: local_addr,
            pending: Mutex::new(DelayLine::new(config.propagation_delay)),
            config,
            endpoints: watch::channel(Arc::new(Vec::new())).0,
            routes: watch::channel(Arc::new(Vec::new())).0,
            queued: Notify::new(),
            accepting: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            active: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            backends: Mutex::new(HashMap::new()),
            shutdown,
        });
        let parked = Socket::Parked(Parked::Bound(socket));
        let accept = tokio::spawn(serve(inner.clone(), parked));
        let propagate = tokio::spawn(propagate_loop(inner.clone(), inner.shutdown.subscribe()));
        tracing::info!(service, %local_addr, "service proxy bound");
        Ok(Self {
            inner,
            local_addr,
            accept,
            propagate,
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

    /// Replaces the endpoint set as given (membership and readiness); the routes follow
    /// after the propagation delay.
    pub fn set_endpoints(&self, endpoints: Vec<Backend>) {
        self.inner.update_endpoints(|eps| {
            let changed = *eps != endpoints;
            *eps = endpoints;
            changed
        });
    }

    /// Replaces the membership, keeping the readiness of endpoints whose pod and address
    /// are unchanged; new ones (or ones on a new address) start unready until the
    /// prober passes them, as a new pod does.
    pub fn set_members(&self, members: impl IntoIterator<Item = (String, SocketAddr)>) {
        let members: Vec<(String, SocketAddr)> = members.into_iter().collect();
        self.inner.update_endpoints(|eps| {
            let next: Vec<Backend> = members
                .into_iter()
                .map(|(pod, addr)| {
                    let ready = eps
                        .iter()
                        .any(|b| b.pod == pod && b.addr == addr && b.ready);
                    Backend { pod, addr, ready }
                })
                .collect();
            let changed = next != *eps;
            *eps = next;
            changed
        });
    }

    /// Sets the readiness of the endpoint `pod` at `addr`; false if there is none.
    pub fn set_ready(&self, pod: &str, addr: SocketAddr, ready: bool) -> bool {
        let mut found = false;
        self.inner.update_endpoints(|eps| {
            let Some(b) = eps.iter_mut().find(|b| b.pod == pod && b.addr == addr) else {
                return false;
            };
            found = true;
            let changed = b.ready != ready;
            b.ready = ready;
            changed
        });
        found
    }

    /// The current endpoints with the prober's verdicts (the pods' Ready condition).
    pub fn endpoints(&self) -> Vec<Backend> {
        (**self.inner.endpoints.borrow()).clone()
    }

    /// The endpoints new connections may use now: the ready ones as they were the
    /// propagation delay ago.
    pub fn routes(&self) -> Vec<Backend> {
        (**self.inner.routes.borrow()).clone()
    }

    /// Whether the service accepts connections now. It refuses them while it has no
    /// route, and switches a moment after the routes change, so a caller that just
    /// made a route and wants to connect waits for this.
    pub fn accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::Relaxed)
    }

    /// A receiver that sees every endpoint change (membership or readiness) when it is
    /// made, before it reaches the routes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<Backend>>> {
        self.inner.endpoints.subscribe()
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.inner.accepted.load(Ordering::Relaxed),
            active: self.inner.active.load(Ordering::Relaxed),
            rejected: self.inner.rejected.load(Ordering::Relaxed),
            backends: lock(&self.inner.backends).clone(),
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
        self.propagate.abort();
        self.inner.shutdown.send_replace(true);
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A socket bound to `addr` with SO_REUSEADDR, so binding or listening again is not
/// blocked by the service's old connections in TIME_WAIT.
fn reusable_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// The service's socket, bound but not listening, on a port bound by number even when
/// `addr` asks for any: Linux keeps such a port when listening stops (an auto-bound one
/// it frees). The port is learnt from a first socket and bound by a second while the
/// first still holds it (SO_REUSEADDR lets both), so nothing can take it in between.
fn service_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    if addr.port() != 0 {
        return reusable_socket(addr);
    }
    let first = reusable_socket(addr)?;
    reusable_socket(first.local_addr()?)
}

/// The service's socket: listening while the service has a route, parked while not.
enum Socket {
    Listening(TcpListener),
    Parked(Parked),
}

/// A service socket that does not listen, so the kernel refuses connects to it.
enum Parked {
    /// Still bound, holding the service's port.
    Bound(TcpSocket),
    /// Closed, where listening could not be stopped otherwise; bound again to listen.
    Closed,
}

/// Accepts while the service has a route and refuses while it has none.
async fn serve(inner: Arc<Inner>, mut socket: Socket) {
    let mut routes = inner.routes.subscribe();
    loop {
        let routed = !routes.borrow_and_update().is_empty();
        socket = match (socket, routed) {
            (Socket::Listening(l), false) => Socket::Parked(park(&inner, l)),
            (Socket::Parked(p), true) => resume(&inner, p),
            (s, _) => s,
        };
        let listening = matches!(socket, Socket::Listening(_));
        inner.accepting.store(listening, Ordering::Relaxed);
        let open = match &socket {
            Socket::Listening(l) => tokio::select! {
                accepted = l.accept() => {
                    take(&inner, accepted).await;
                    true
                }
                changed = routes.changed() => changed.is_ok(),
            },
            // Routed but parked means listening failed: try again after a pause.
            Socket::Parked(_) => tokio::select! {
                changed = routes.changed() => changed.is_ok(),
                () = tokio::time::sleep(RELISTEN_RETRY), if routed => true,
            },
        };
        if !open {
            return;
        }
    }
}

/// Hands an accepted client connection to a task of its own.
async fn take(inner: &Arc<Inner>, accepted: io::Result<(TcpStream, SocketAddr)>) {
    match accepted {
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

/// Stops listening, keeping the port bound where the OS allows it (see the module docs).
fn park(inner: &Inner, listener: TcpListener) -> Parked {
    tracing::debug!(service = %inner.service, "no route: refusing connections");
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(service = %inner.service, error = %e, "cannot pause the listener; closed it");
            return Parked::Closed;
        }
    };
    // std offers shutdown(2) on streams only; the call is the same on any socket.
    let socket = std::net::TcpStream::from(OwnedFd::from(listener));
    match socket.shutdown(Shutdown::Read) {
        Ok(()) => Parked::Bound(TcpSocket::from_std_stream(socket)),
        Err(e) => {
            tracing::debug!(service = %inner.service, error = %e, "shutdown does not pause a listener here; closed it");
            Parked::Closed
        }
    }
}

/// Listens again on the service's address; parked (closed) on failure, to be retried.
fn resume(inner: &Inner, parked: Parked) -> Socket {
    let socket = match parked {
        Parked::Bound(socket) => Ok(socket),
        Parked::Closed => reusable_socket(inner.addr),
    };
    match socket.and_then(|s| s.listen(BACKLOG)) {
        Ok(listener) => {
            tracing::debug!(service = %inner.service, "routed: accepting connections");
            Socket::Listening(listener)
        }
        Err(e) => {
            tracing::warn!(service = %inner.service, addr = %inner.addr, error = %e, "cannot listen; will retry");
            Socket::Parked(Parked::Closed)
        }
    }
}

/// Moves queued ready sets into the routes as they fall due.
async fn propagate_loop(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next_due = {
            let mut pending = lock(&inner.pending);
            if let Some(routes) = pending.pop_due(Instant::now()) {
                inner.publish_routes(routes);
            }
            pending.next_due()
        };
        let due = next_due.unwrap_or_else(Instant::now);
        tokio::select! {
            () = inner.queued.notified() => {}
            () = tokio::time::sleep_until(due), if next_due.is_some() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Readiness probe settings (Kubernetes `readinessProbe` with an `httpGet`). The local
/// platform probes its workers with `meshbench_operator::worker_config::readiness_probe`'s, as the
/// cluster does.
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

impl From<ReadinessProbe> for ProbeConfig {
    fn from(p: ReadinessProbe) -> Self {
        Self {
            path: p.path.to_string(),
            period: p.period,
            timeout: p.timeout,
            failure_threshold: p.failure_threshold,
            success_threshold: p.success_threshold,
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

/// The run of equal results an endpoint's probes ended with.
#[derive(Debug, Default)]
struct ProbeState {
    successes: u32,
    failures: u32,
}

impl ProbeState {
    fn record(&mut self, ok: bool) {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
    }

    /// Readiness after the latest result, from `ready` before it: as the kubelet's
    /// prober decides, only a run of `failure_threshold` misses (or `success_threshold`
    /// passes) flips it.
    fn verdict(&self, ready: bool, config: &ProbeConfig) -> bool {
        if ready {
            self.failures < config.failure_threshold.max(1)
        } else {
            self.successes >= config.success_threshold.max(1)
        }
    }
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
            s.record(ok);
            inner.update_endpoints(|eps| {
                let Some(e) = eps.iter_mut().find(|e| e.pod == b.pod && e.addr == b.addr) else {
                    return false;
                };
                let next = s.verdict(e.ready, &config);
                if next == e.ready {
                    return false;
                }
                tracing::info!(service = %inner.service, pod = %b.pod, ready = next, "readiness changed");
                e.ready = next;
                true
            });
        }
        // Our own readiness updates must not count as new membership.
        endpoints.borrow_and_update();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // -------------------------------------------------------------------------------
    // pure parts

    #[test]
    fn delay_line_makes_each_value_current_after_the_delay() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut line = DelayLine::new(Duration::from_millis(1000));
        line.push(at(0), "a");
        line.push(at(300), "b");
        line.push(at(400), "c");
        // (now, value that becomes current, next due)
        let table = [
            (999, None, Some(1000)),
            (1000, Some("a"), Some(1300)),
            (1200, None, Some(1300)),
            // b and c are both due: c supersedes b.
            (1450, Some("c"), None),
            (5000, None, None),
        ];
        for (now, want, next) in table {
            assert_eq!(line.pop_due(at(now)), want, "at {now} ms");
            assert_eq!(line.next_due(), next.map(at), "next due, at {now} ms");
        }
    }

    #[test]
    fn zero_delay_line_releases_at_once() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(Duration::ZERO);
        line.push(t0, 1);
        line.push(t0, 2);
        assert_eq!(line.pop_due(t0), Some(2));
        assert_eq!(line.next_due(), None);
    }

    #[test]
    fn probe_thresholds_flip_readiness_after_a_run_of_results() {
        // (failure threshold, success threshold, results, readiness after each), from
        // unready.
        let table: [(u32, u32, &[bool], &[bool]); 4] = [
            (1, 1, &[true, false, true], &[true, false, true]),
            (
                3,
                1,
                &[true, false, false, true, false, false, false],
                &[true, true, true, true, true, true, false],
            ),
            (
                1,
                2,
                &[true, true, false, true, true],
                &[false, true, false, false, true],
            ),
            // Zero thresholds count as one, as the API's minimum.
            (0, 0, &[true, false], &[true, false]),
        ];
        for (failure_threshold, success_threshold, results, want) in table {
            let config = ProbeConfig {
                failure_threshold,
                success_threshold,
                ..ProbeConfig::default()
            };
            let mut state = ProbeState::default();
            let mut ready = false;
            let got: Vec<bool> = results
                .iter()
                .map(|ok| {
                    state.record(*ok);
                    ready = state.verdict(ready, &config);
                    ready
                })
                .collect();
            assert_eq!(
                got, want,
                "thresholds {failure_threshold}/{success_threshold}"
            );
        }
    }

    #[test]
    fn probe_config_runs_the_shared_readiness_probe() {
        let shared = ReadinessProbe {
            path: "/ready",
            period: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 1,
        };
        let c = ProbeConfig::from(shared);
        assert_eq!(c.path, "/ready");
        assert_eq!((c.period, c.timeout), (shared.period, shared.timeout));
        assert_eq!((c.success_threshold, c.failure_threshold), (1, 1));
    }

    // -------------------------------------------------------------------------------
    // real sockets on loopback

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn ready(pod: &str, addr: SocketAddr) -> Backend {
        Backend {
            pod: pod.into(),
            addr,
            ready: true,
        }
    }

    fn config(balance: Balance, propagation_delay: Duration) -> ProxyConfig {
        ProxyConfig {
            balance,
            propagation_delay,
            ..ProxyConfig::default()
        }
    }

    /// An HTTP server answering every request with `name`, one request per connection.
    async fn server(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind(loopback()).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 512];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                        name.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        addr
    }

    /// A loopback address nothing listens on (free a moment ago), so connects are refused.
    fn refusing_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind(loopback()).expect("bind");
        l.local_addr().expect("addr")
    }

    /// One request through `addr`: the body, or the error the client saw.
    async fn get(addr: SocketAddr) -> io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out);
        match text.split_once("\r\n\r\n") {
            Some((_, body)) => Ok(body.to_string()),
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no response")),
        }
    }

    fn refused(r: &io::Result<TcpStream>) -> bool {
        matches!(r, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn wait_accepting(proxy: &ServiceProxy, want: bool) {
        eventually("the proxy to switch listening", || {
            proxy.accepting() == want
        })
        .await;
    }

    /// Behind DNAT a refused connect is the client's error: the client connection is
    /// reset, and the other, healthy endpoint is not tried instead.
    #[tokio::test]
    async fn refused_endpoint_fails_the_client_connection() {
        let a = server("a").await;
        let proxy = ServiceProxy::bind(
            "svc",
            loopback(),
            config(Balance::RoundRobin, Duration::ZERO),
        )
        .await
        .expect("proxy");
        let dead = refusing_addr();
        proxy.set_endpoints(vec![ready("svc-dead", dead), ready("svc-a", a)]);
        wait_accepting(&proxy, true).await;
        let mut results = Vec::new();
        for _ in 0..6 {
            results.push(get(proxy.local_addr()).await);
        }
        // Round robin from the first endpoint: every other client fails.
        let ok: Vec<bool> = results.iter().map(|r| r.is_ok()).collect();
        assert_eq!(ok, [false, true, false, true, false, true], "{results:?}");
        assert!(
            results.iter().flatten().all(|body| body == "a"),
            "{results:?}"
        );
        let stats = proxy.stats();
        assert_eq!(stats.backends["svc-dead"].connect_failures, 3, "{stats:?}");
        assert_eq!(stats.backends["svc-a"].connections, 3, "{stats:?}");
        assert_eq!((stats.accepted, stats.rejected), (6, 3));
    }

    /// A Service without a usable endpoint refuses connects (kube-proxy's REJECT), on
    /// the same address it serves from before and after.
    #[tokio::test]
    async fn service_without_a_route_refuses_connect() {
        let a = server("a").await;
        let proxy = ServiceProxy::bind("svc", loopback(), config(Balance::Random, Duration::ZERO))
            .await
            .expect("proxy");
        let addr = proxy.local_addr();
        assert!(!proxy.accepting());
        assert!(refused(&TcpStream::connect(addr).await), "no endpoint yet");

        proxy.set_endpoints(vec![ready("svc-a", a)]);
        wait_accepting(&proxy, true).await;
        assert_eq!(get(addr).await.expect("request"), "a");

        assert!(proxy.set_ready("svc-a", a, false));
        wait_accepting(&proxy, false).await;
        assert!(refused(&TcpStream::connect(addr).await), "a unready");

        assert!(proxy.set_ready("svc-a", a, true));
        wait_accepting(&proxy, true).await;
        assert_eq!(get(addr).await.expect("request on the same port"), "a");
        let stats = proxy.stats();
        assert_eq!(
            (stats.accepted, stats.rejected),
            (2, 0),
            "refused, not reset"
        );
    }

    /// Readiness and membership changes show in the endpoints at once and in the routes
    /// only after the propagation delay, as on a cluster.
    #[tokio::test]
    async fn changes_reach_the_routes_after_the_propagation_delay() {
        let a = server("a").await;
        // Long enough for the checks made within it, even on a loaded machine.
        let delay = Duration::from_secs(1);
        let proxy = ServiceProxy::bind("svc", loopback(), config(Balance::Random, delay))
            .await
            .expect("proxy");

        let joined = std::time::Instant::now();
        proxy.set_members([("svc-a".to_string(), a)]);
        assert!(!proxy.endpoints()[0].ready, "a new member starts unready");
        assert!(proxy.set_ready("svc-a", a, true));
        assert!(proxy.endpoints()[0].ready);
        assert!(proxy.routes().is_empty(), "routed only after the delay");
        assert!(refused(&TcpStream::connect(proxy.local_addr()).await));
        eventually("a routed", || !proxy.routes().is_empty()).await;
        let waited = joined.elapsed();
        assert!(waited >= delay, "routed after {waited:?}");
        wait_accepting(&proxy, true).await;
        assert_eq!(get(proxy.local_addr()).await.expect("request"), "a");

        // A removed pod (scaled down) keeps getting new connections for the delay.
        let left = std::time::Instant::now();
        proxy.set_members(Vec::<(String, SocketAddr)>::new());
        assert!(proxy.endpoints().is_empty());
        assert_eq!(proxy.routes().len(), 1);
        assert_eq!(get(proxy.local_addr()).await.expect("still routed"), "a");
        eventually("a unrouted", || proxy.routes().is_empty()).await;
        let waited = left.elapsed();
        assert!(waited >= delay, "unrouted after {waited:?}");
        wait_accepting(&proxy, false).await;
    }
}
