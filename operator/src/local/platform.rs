//! The local platform: a mesh as OS processes on this machine.
//!
//! Each replica is a `meshbench worker` process in its own cgroup (CPU limit as a CFS
//! quota, memory limit enforced); each service is a loopback TCP proxy that balances per
//! connection over ready replicas; a control loop samples CPU, memory and the workers'
//! metrics every second and runs the HPA algorithm every sync period.
//!
//! The timings are a cluster's: the readiness probe the cluster renders
//! ([`readiness_probe`]), routes that follow readiness a propagation delay later (see
//! [`meshbench_runtime::proxy`]), the kubelet's crash back-off and 30 s termination grace
//! ([`PodsConfig::new`]), and the worker's 30 s drain.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use meshbench_analysis::{Sample, metric};
use meshbench_crds::ValidMesh;
use meshbench_crds::resolve::ResolvedService;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::exporter::{Exporter, NAMESPACE, ServiceState, pod_name};
use super::hpa::{Decision, Hpa, HpaConfig, PodSample};
use super::hpa_view::{MetricsPipeline, PodLifecycle, Process, RankedPod, scale_down_victims};
use super::prometheus::{Target, write_targets};
use crate::worker_config::{readiness_probe, worker_config};
use meshbench_runtime::cgroup::{CgroupRoot, Enforcement};
use meshbench_runtime::node::Resources;
use meshbench_runtime::pods::{
    PORT_PLACEHOLDER, PodEvent, PodPhase, Pods, PodsConfig, ReplicaSpec, ReplicaStatus,
};
use meshbench_runtime::proxy::{Balance, ProxyConfig, ServiceProxy};
use meshbench_runtime::sampler::{WorkerCounters, parse_worker_metrics, proc_usage, scrape};

/// Errors of the local platform.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// A proxy could not bind its loopback port.
    #[error("cannot start the proxy of service {service}: {source}")]
    Proxy {
        /// Service.
        service: String,
        /// Cause.
        source: meshbench_runtime::proxy::ProxyError,
    },
    /// A replica could not be started.
    #[error("cannot start replica of service {service}: {source}")]
    Replica {
        /// Service.
        service: String,
        /// Cause.
        source: meshbench_runtime::pods::PodsError,
    },
    /// Replicas did not become ready in time.
    #[error("not ready after {waited:?}: {detail}")]
    NotReady {
        /// How long we waited.
        waited: Duration,
        /// Which services lack ready replicas.
        detail: String,
    },
    /// The worker config could not be serialised.
    #[error("cannot render the worker config: {0}")]
    Config(#[from] serde_json::Error),
}

/// Result alias for this module.
pub type Result<T, E = PlatformError> = std::result::Result<T, E>;

/// Settings of the local platform.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The program run for each replica (the meshbench binary itself).
    pub program: PathBuf,
    /// Directory for replica logs.
    pub log_dir: PathBuf,
    /// Sampling interval (1 s: the resolution of the report's time series).
    pub sample_interval: Duration,
    /// HPA sync period (upstream default 15 s).
    pub hpa_sync: Duration,
    /// metrics-server's `--metric-resolution` (upstream default 15 s,
    /// [`super::hpa_view::DEFAULT_METRIC_RESOLUTION`]): how often the CPU the HPA sees is
    /// scraped, so how stale it is at a sync and how long a new pod goes without one.
    pub metric_resolution: Duration,
    /// The HPA controller's `--horizontal-pod-autoscaler-cpu-initialization-period`
    /// (upstream default 5 min): how long after its start an unready pod, or one whose
    /// readiness changed within the metric's window, is set aside.
    pub hpa_cpu_initialization_period: Duration,
    /// Time to wait for replicas to become ready.
    pub ready_timeout: Duration,
    /// Put replicas in cgroups with their limits (when the host allows it).
    pub enforce_limits: bool,
    /// How Services pick an endpoint per connection (random, as kube-proxy).
    pub balance: Balance,
    /// The node's allocatable CPU and memory ([`meshbench_runtime::node::allocatable`] of this
    /// machine unless overridden): replicas whose requests do not fit stay Pending.
    pub node: Resources,
}

/// A replica the node has no room for yet.
struct Unbound {
    index: u32,
    /// Its FailedScheduling event was recorded.
    reported: bool,
}

struct Service {
    resolved: ResolvedService,
    proxy: ServiceProxy,
    prober: JoinHandle<()>,
    config_json: String,
    /// Replica indices currently wanted (bound or Pending), in creation order.
    replicas: Vec<u32>,
    /// Those of `replicas` waiting for room on the node, in creation order.
    pending: Vec<Unbound>,
    /// CPU and memory each replica requests from the node.
    requests: Resources,
    next_index: u32,
    hpa: Option<Hpa>,
    /// Previous cumulative CPU per pod and the instant it was read, for the per-second
    /// CPU samples.
    cpu_prev: BTreeMap<String, (Duration, Instant)>,
    /// The CPU metrics the HPA gets, as metrics-server would serve them.
    metrics: MetricsPipeline,
    /// The pods' status as the kubelet would report it to the HPA and the ReplicaSet.
    lifecycle: PodLifecycle,
    counters_prev: WorkerCounters,
    /// The HPA's last desired count.
    last_desired: Option<u32>,
}

struct Deployed {
    mesh: String,
    services: Vec<Service>,
}

/// What a watching Prometheus needs: the runner's exporter and the discovery file.
struct PromHooks {
    exporter: Arc<Exporter>,
    exporter_addr: SocketAddr,
    targets_file: PathBuf,
    written: Option<Vec<Target>>,
}

impl PromHooks {
    /// Publishes the replicas and the runner's state; rewrites the discovery file only
    /// when the set of targets changed.
    fn publish(&mut self, states: &[ServiceState], mut targets: Vec<Target>) {
        self.exporter.update(states);
        targets.push(Target {
            addr: self.exporter_addr,
            labels: BTreeMap::from([("component".to_string(), "runner".to_string())]),
        });
        if self.written.as_ref() != Some(&targets) {
            match write_targets(&self.targets_file, &targets) {
                Ok(()) => self.written = Some(targets),
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }
}

struct Shared {
    deployed: Option<Deployed>,
    prom: Option<PromHooks>,
    samples: Vec<Sample>,
    events: Vec<String>,
    last_hpa: Instant,
}

/// The local platform. Create one per run.
pub struct LocalPlatform {
    opts: LocalOptions,
    pods: Arc<Pods>,
    enforcement: Enforcement,
    shared: Arc<Mutex<Shared>>,
    stop: CancellationToken,
    /// Stops what lives as long as the platform (the exporter).
    stop_all: CancellationToken,
    control: Option<JoinHandle<()>>,
    events_task: Option<JoinHandle<()>>,
    epoch: RunClock,
}

/// How long one scrape of a worker's metrics may wait to connect, and for each read.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(300);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The runner's clock: seconds since the platform started, the time base of the HPA and
/// of what it sees.
#[derive(Debug, Clone, Copy)]
struct RunClock {
    epoch: Instant,
    /// Wall time at `epoch`, to place the supervisor's wall-clock process start times on
    /// this clock the same way at every tick (a restart is told by a later start).
    wall: DateTime<Utc>,
}

impl RunClock {
    fn start() -> Self {
        Self {
            epoch: Instant::now(),
            wall: Utc::now(),
        }
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    fn at(&self, t: DateTime<Utc>) -> f64 {
        (t - self.wall).num_milliseconds() as f64 / 1000.0
    }
}

impl LocalPlatform {
    /// Prepares cgroups (or records why limits cannot be enforced) and the supervisor.
    pub fn new(opts: LocalOptions, run_id: &str) -> Self {
        let stale = meshbench_runtime::cgroup::cleanup_stale();
        if !stale.is_empty() {
            tracing::info!(
                count = stale.len(),
                "removed cgroups left by an earlier run"
            );
        }
        let cgroups = if !opts.enforce_limits {
            CgroupRoot::disabled("turned off with --no-limits")
        } else {
            match CgroupRoot::create(run_id) {
                Ok(root) => root,
                Err(e) => CgroupRoot::disabled(e.to_string()),
            }
        };
        let enforcement = cgroups.enforcement().clone();
        // The kubelet's timings, even where a crash loop costs a short run whole steps:
        // it costs them on a cluster too.
        let cfg = PodsConfig::new(opts.log_dir.clone());
        let (pods, mut events) = Pods::new(cfg, cgroups);
        let shared = Arc::new(Mutex::new(Shared {
            deployed: None,
            prom: None,
            samples: Vec::new(),
            events: Vec::new(),
            last_hpa: Instant::now(),
        }));
        let ev_shared = shared.clone();
        let events_task = tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                record_event(&ev_shared, &ev);
            }
        });
        Self {
            opts,
            pods: Arc::new(pods),
            enforcement,
            shared,
            stop: CancellationToken::new(),
            stop_all: CancellationToken::new(),
            control: None,
            events_task: Some(events_task),
            epoch: RunClock::start(),
        }
    }

    /// Starts the runner's exporter and keeps `targets_file` (file-based discovery)
    /// listing it and every replica's worker, for a Prometheus to scrape.
    pub async fn enable_prometheus(&self, targets_file: PathBuf) -> std::io::Result<()> {
        let exporter = Arc::new(Exporter::new());
        let exporter_addr = exporter.clone().serve(self.stop_all.clone()).await?;
        let mut hooks = PromHooks {
            exporter,
            exporter_addr,
            targets_file,
            written: None,
        };
        hooks.publish(&[], Vec::new());
        if let Ok(mut s) = self.shared.lock() {
            s.prom = Some(hooks);
        }
        Ok(())
    }

    /// How limits are enforced on this host.
    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    /// The loopback URL of a service of the deployed mesh.
    pub fn service_url(&self, service: &str) -> Option<String> {
        let shared = self.shared.lock().ok()?;
        let d = shared.deployed.as_ref()?;
        d.services
            .iter()
            .find(|s| s.resolved.name == service)
            .map(|s| format!("http://{}", s.proxy.local_addr()))
    }

    /// Takes the samples collected so far.
    pub fn drain_samples(&self) -> Vec<Sample> {
        self.shared
            .lock()
            .map(|mut s| std::mem::take(&mut s.samples))
            .unwrap_or_default()
    }

    /// Takes the replica events recorded so far (restarts, OOM kills), human readable.
    pub fn drain_events(&self) -> Vec<String> {
        self.shared
            .lock()
            .map(|mut s| std::mem::take(&mut s.events))
            .unwrap_or_default()
    }

    /// Current replica count per service.
    pub fn replica_counts(&self) -> Vec<(String, usize)> {
        let Ok(shared) = self.shared.lock() else {
            return Vec::new();
        };
        shared
            .deployed
            .as_ref()
            .map(|d| {
                d.services
                    .iter()
                    .map(|s| (s.resolved.name.clone(), s.replicas.len()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Deploys a mesh: proxies first (their ports are the services' addresses), then the
    /// replicas, then the control loop.
    pub async fn deploy(&mut self, mesh: &ValidMesh) -> Result<()> {
        let resolved = mesh.services();
        let proxies = self.bind_proxies(resolved).await?;
        let addrs: BTreeMap<String, SocketAddr> = resolved
            .iter()
            .zip(&proxies)
            .map(|(s, p)| (s.name.clone(), p.local_addr()))
            .collect();
        let base_url = |service: &str| {
            addrs
                .get(service)
                .map(|a| format!("http://{a}"))
                .unwrap_or_else(|| format!("http://{service}"))
        };
        // metrics-server scrapes on its own schedule, unrelated to the HPA's syncs (which
        // count from the deploy): half a resolution off them gives the mean staleness a
        // cluster's HPA sees, and the same at every run.
        let first_scrape = self.epoch.now() + self.opts.metric_resolution.as_secs_f64() / 2.0;
        let mut services = Vec::new();
        for (svc, proxy) in resolved.iter().zip(proxies) {
            let config_json = serde_json::to_string(&worker_config(svc, resolved, &base_url))?;
            services.push(self.service(svc, proxy, config_json, first_scrape));
        }
        for s in &mut services {
            for _ in 0..initial_replicas(&s.resolved) {
                create_replica(s, self.epoch.now());
            }
        }
        let unschedulable = schedule(&mut services, &self.pods, &self.opts, self.epoch.now())?;
        self.set_deployed(mesh.name().to_string(), services, unschedulable)?;
        self.start_control();
        Ok(())
    }

    /// Binds one loopback proxy per service, in order.
    async fn bind_proxies(&self, services: &[ResolvedService]) -> Result<Vec<ServiceProxy>> {
        let mut proxies = Vec::new();
        for svc in services {
            let proxy = ServiceProxy::bind(
                &svc.name,
                SocketAddr::from(([127, 0, 0, 1], 0)),
                ProxyConfig {
                    balance: self.opts.balance,
                    ..ProxyConfig::default()
                },
            )
            .await
            .map_err(|source| PlatformError::Proxy {
                service: svc.name.clone(),
                source,
            })?;
            proxies.push(proxy);
        }
        Ok(proxies)
    }

    /// A service with no replicas yet: its proxy probing readiness, its HPA when
    /// autoscaled, its CPU metrics first scraped at `first_scrape`.
    fn service(
        &self,
        svc: &ResolvedService,
        proxy: ServiceProxy,
        config_json: String,
        first_scrape: f64,
    ) -> Service {
        let prober = proxy.spawn_prober(readiness_probe(svc).into());
        Service {
            resolved: svc.clone(),
            proxy,
            prober,
            config_json,
            replicas: Vec::new(),
            pending: Vec::new(),
            requests: Resources {
                cpu_millis: svc.resources.cpu_request_millis.unwrap_or(0),
                memory_bytes: svc.resources.memory_request_bytes.unwrap_or(0),
            },
            next_index: 0,
            hpa: self.hpa(svc),
            cpu_prev: BTreeMap::new(),
            metrics: MetricsPipeline::new(self.opts.metric_resolution, first_scrape),
            lifecycle: PodLifecycle::default(),
            counters_prev: WorkerCounters::default(),
            last_desired: None,
        }
    }

    /// The HPA of an autoscaled service; one whose settings the controller refuses is
    /// left out with a warning, and the service keeps its replicas.
    fn hpa(&self, svc: &ResolvedService) -> Option<Hpa> {
        hpa_of(svc, self.opts.hpa_cpu_initialization_period)
    }

    /// Records the deployed mesh, and the replicas the node has no room for.
    fn set_deployed(
        &self,
        mesh: String,
        services: Vec<Service>,
        unschedulable: Vec<String>,
    ) -> Result<()> {
        let mut shared = self.shared.lock().map_err(|_| PlatformError::NotReady {
            waited: Duration::ZERO,
            detail: "internal state poisoned".into(),
        })?;
        record_unschedulable(&mut shared, unschedulable);
        shared.deployed = Some(Deployed { mesh, services });
        shared.last_hpa = Instant::now();
        Ok(())
    }

    fn start_control(&mut self) {
        self.stop = CancellationToken::new();
        let stop = self.stop.clone();
        let shared = self.shared.clone();
        let pods = self.pods.clone();
        let opts = self.opts.clone();
        let epoch = self.epoch;
        self.control = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(opts.sample_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let pods2 = pods.clone();
                let shared2 = shared.clone();
                let opts2 = opts.clone();
                // Scraping is blocking I/O on loopback; keep it off the async workers.
                let _ = tokio::task::spawn_blocking(move || {
                    control_tick(&shared2, &pods2, &opts2, epoch)
                })
                .await;
            }
        }));
    }

    /// Waits until every service has all its replicas ready, routed and its proxy
    /// accepting. Routed too: on a cluster the load generator's Job starts seconds after
    /// the replicas are ready, long after kube-proxy has their endpoints; here load
    /// starts at once and would otherwise meet the propagation delay.
    pub async fn wait_ready(&self) -> Result<()> {
        let start = Instant::now();
        loop {
            let missing = {
                let shared = self.shared.lock().map_err(|_| PlatformError::NotReady {
                    waited: start.elapsed(),
                    detail: "internal state poisoned".into(),
                })?;
                let Some(d) = shared.deployed.as_ref() else {
                    return Ok(());
                };
                d.services
                    .iter()
                    .filter_map(|s| {
                        let ready = s.proxy.endpoints().iter().filter(|b| b.ready).count();
                        let routed = s.proxy.routes().len();
                        // Pending replicas are waited for by no one: on a cluster the load
                        // would start against the ones that run too.
                        let wanted = s.replicas.len() - s.pending.len();
                        // A service of no replicas refuses, as it should.
                        let serving =
                            ready.min(routed) >= wanted && (wanted == 0 || s.proxy.accepting());
                        (!serving).then(|| {
                            format!(
                                "{} {ready}/{wanted} ready, {routed}/{wanted} routed",
                                s.resolved.name
                            )
                        })
                    })
                    .collect::<Vec<_>>()
            };
            if missing.is_empty() {
                return Ok(());
            }
            if start.elapsed() > self.opts.ready_timeout {
                return Err(PlatformError::NotReady {
                    waited: start.elapsed(),
                    detail: missing.join(", "),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the control loop, every replica and every proxy of the deployed mesh.
    pub async fn teardown(&mut self) {
        self.stop.cancel();
        if let Some(c) = self.control.take() {
            let _ = c.await;
        }
        let deployed = self.shared.lock().ok().and_then(|mut s| {
            let d = s.deployed.take();
            if let (Some(p), Some(d)) = (s.prom.as_mut(), d.as_ref()) {
                let services: Vec<String> =
                    d.services.iter().map(|s| s.resolved.name.clone()).collect();
                p.exporter.forget_mesh(&d.mesh, &services);
                p.publish(&[], Vec::new());
            }
            d
        });
        self.pods.stop_all().await;
        if let Some(d) = deployed {
            for s in d.services {
                s.prober.abort();
                s.proxy.shutdown();
            }
        }
    }

    /// Tears down and removes the run's cgroups.
    pub async fn shutdown(mut self) {
        self.teardown().await;
        if let Err(e) = self.pods.cgroups().cleanup() {
            tracing::warn!("cgroup cleanup: {e}");
        }
        if let Some(t) = self.events_task.take() {
            t.abort();
        }
        self.stop_all.cancel();
    }

    /// Seconds since the platform started (the HPA's clock).
    pub fn clock(&self) -> f64 {
        self.epoch.now()
    }
}

fn record_event(shared: &Arc<Mutex<Shared>>, ev: &PodEvent) {
    use meshbench_runtime::pods::PodEventKind as K;
    let text = match &ev.kind {
        K::Exited { code, signal } => Some(format!(
            "{} pod {} exited (code {}, signal {})",
            ev.ts.to_rfc3339(),
            ev.pod,
            code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            signal.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
        )),
        K::OomKilled => Some(format!("{} pod {} OOM-killed", ev.ts.to_rfc3339(), ev.pod)),
        K::Restarted { attempt } => Some(format!(
            "{} pod {} restarted (attempt {attempt})",
            ev.ts.to_rfc3339(),
            ev.pod
        )),
        _ => None,
    };
    if let Some(t) = text {
        tracing::warn!("{t}");
        if let Ok(mut s) = shared.lock() {
            s.events.push(t);
        }
    }
}

/// The replicas a service starts with: the spec's, within the HPA's bounds when
/// autoscaled.
fn initial_replicas(svc: &ResolvedService) -> u32 {
    match &svc.autoscaling {
        Some(a) => svc.replicas.clamp(a.min_replicas, a.max_replicas),
        None => svc.replicas,
    }
    .max(0) as u32
}

/// Creates one more replica of `s` at `clock`, Pending until [`schedule`] binds it.
fn create_replica(s: &mut Service, clock: f64) {
    let index = s.next_index;
    s.next_index += 1;
    s.replicas.push(index);
    s.pending.push(Unbound {
        index,
        reported: false,
    });
    s.lifecycle
        .create_unbound(clock, &format!("{}-{index}", s.resolved.name));
}

/// Starts the process of replica `index` of `s`, bound to the node at `clock`.
fn start_replica(
    pods: &Pods,
    opts: &LocalOptions,
    s: &mut Service,
    index: u32,
    clock: f64,
) -> Result<()> {
    let spec = ReplicaSpec {
        service: s.resolved.name.clone(),
        index,
        program: opts.program.clone(),
        args: vec![
            "worker".into(),
            "--config-json".into(),
            s.config_json.clone(),
            "--listen".into(),
            format!("127.0.0.1:{PORT_PLACEHOLDER}"),
        ],
        env: vec![("RUST_LOG".into(), "warn".into())],
        cpu_limit_millis: s.resolved.resources.cpu_limit_millis,
        memory_limit_bytes: s.resolved.resources.memory_limit_bytes,
        cpu_request_millis: s.resolved.resources.cpu_request_millis,
        restart: meshbench_runtime::pods::RestartPolicy::Always,
        ip: std::net::Ipv4Addr::LOCALHOST,
        cwd: None,
        inherit_env: true,
    };
    let status = pods.start(spec).map_err(|source| PlatformError::Replica {
        service: s.resolved.name.clone(),
        source,
    })?;
    s.pending.retain(|u| u.index != index);
    s.lifecycle.bind(clock, &status.pod);
    s.proxy.set_ready(&status.pod, status.addr, false);
    Ok(())
}

/// The scheduler's round: binds Pending replicas, oldest first, while their requests fit
/// what the bound ones leave of the node's allocatable. Returns a FailedScheduling
/// message for each replica found not to fit for the first time.
fn schedule(
    services: &mut [Service],
    pods: &Pods,
    opts: &LocalOptions,
    clock: f64,
) -> Result<Vec<String>> {
    let mut used = Resources::default();
    let mut queue = Vec::new();
    for (i, s) in services.iter().enumerate() {
        let bound = (s.replicas.len() - s.pending.len()) as u64;
        used = used.plus(s.requests, bound);
        for u in &s.pending {
            let pod = format!("{}-{}", s.resolved.name, u.index);
            queue.push((s.lifecycle.ranked(clock, &pod).created, i, u.index));
        }
    }
    queue.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut messages = Vec::new();
    for (_, i, index) in queue {
        let s = &mut services[i];
        if opts.node.fits(used, s.requests) {
            start_replica(pods, opts, s, index, clock)?;
            used = used.plus(s.requests, 1);
            continue;
        }
        let requests = s.requests;
        let name = s.resolved.name.clone();
        if let Some(u) = s.pending.iter_mut().find(|u| u.index == index)
            && !u.reported
        {
            u.reported = true;
            messages.push(unschedulable(
                &format!("{name}-{index}"),
                requests,
                used,
                opts.node,
            ));
        }
    }
    Ok(messages)
}

/// The scheduler's FailedScheduling message, with the figures behind it.
fn unschedulable(pod: &str, requests: Resources, used: Resources, node: Resources) -> String {
    let mut short = Vec::new();
    if !node.fits(
        used,
        Resources {
            memory_bytes: 0,
            ..requests
        },
    ) {
        short.push("Insufficient cpu");
    }
    if !node.fits(
        used,
        Resources {
            cpu_millis: 0,
            ..requests
        },
    ) {
        short.push("Insufficient memory");
    }
    let mib = |b: u64| b / (1024 * 1024);
    format!(
        "pod {pod} Pending: 0/1 nodes are available: 1 {} (requests {}m CPU, {} MiB; \
         allocatable {}m, {} MiB; bound pods request {}m, {} MiB)",
        short.join(", 1 "),
        requests.cpu_millis,
        mib(requests.memory_bytes),
        node.cpu_millis,
        mib(node.memory_bytes),
        used.cpu_millis,
        mib(used.memory_bytes),
    )
}

/// Records FailedScheduling messages as the run's events.
fn record_unschedulable(shared: &mut Shared, messages: Vec<String>) {
    for m in messages {
        let text = format!("{} {m}", Utc::now().to_rfc3339());
        tracing::warn!("{text}");
        shared.events.push(text);
    }
}

/// What one sampling round works with: its time and where it reads and writes.
struct Tick<'a> {
    pods: &'a Arc<Pods>,
    /// The replicas' status, taken with the lock held.
    statuses: &'a [ReplicaStatus],
    /// Each replica's worker metrics text, scraped before the lock was taken.
    scraped: &'a HashMap<String, String>,
    opts: &'a LocalOptions,
    mesh: &'a str,
    /// Wall time of the samples, ms.
    ts: i64,
    now: Instant,
    /// The runner's clock, s.
    clock: f64,
    epoch: RunClock,
}

/// What one sampling round produces.
#[derive(Default)]
struct TickOut {
    samples: Vec<Sample>,
    states: Vec<ServiceState>,
    targets: Vec<Target>,
}

/// One sampling round: CPU and memory per pod, worker counters per service, proxy
/// membership, and (every sync period) the HPA.
fn control_tick(
    shared: &Arc<Mutex<Shared>>,
    pods: &Arc<Pods>,
    opts: &LocalOptions,
    epoch: RunClock,
) {
    // Scrapes wait up to 300 ms per stalled pod; done before taking the lock, which the
    // async side (progress, readiness, events) also takes, so they never wait on them.
    let scraped: HashMap<String, String> = pods
        .statuses()
        .iter()
        .filter_map(|st| Some((st.pod.clone(), scrape(st.addr, SCRAPE_TIMEOUT)?)))
        .collect();
    let Ok(mut guard) = shared.lock() else { return };
    let sh = &mut *guard;
    let Some(d) = sh.deployed.as_mut() else {
        return;
    };
    // Membership and pod status from now, not from before the scrapes: a crash or a
    // restart's new port during them must not linger in the proxy for a round.
    let statuses = pods.statuses();
    let tick = Tick {
        pods,
        statuses: &statuses,
        scraped: &scraped,
        opts,
        mesh: &d.mesh,
        ts: now_ms(),
        now: Instant::now(),
        clock: epoch.now(),
        epoch,
    };
    let run_hpa = sh.last_hpa.elapsed() >= opts.hpa_sync;
    if run_hpa {
        sh.last_hpa = tick.now;
    }
    let mut out = TickOut::default();
    for s in &mut d.services {
        service_tick(s, &tick, run_hpa, &mut out);
    }
    match schedule(&mut d.services, pods, opts, tick.clock) {
        Ok(messages) => record_unschedulable(sh, messages),
        Err(e) => tracing::warn!("scheduling: {e}"),
    }
    sh.samples.extend(out.samples);
    if let Some(p) = sh.prom.as_mut() {
        p.publish(&out.states, out.targets);
    }
}

/// One service's round: membership and pod status, per-pod and per-service samples, and
/// the HPA when `run_hpa`.
fn service_tick(s: &mut Service, tick: &Tick, run_hpa: bool, out: &mut TickOut) {
    let name = s.resolved.name.clone();
    let statuses: Vec<ReplicaStatus> = tick
        .statuses
        .iter()
        .filter(|st| s.replicas.iter().any(|i| st.pod == format!("{name}-{i}")))
        .cloned()
        .collect();
    let ready = sync_pods(s, tick.clock, &statuses);
    s.metrics.tick(tick.clock);
    let mut state = service_state(s, tick.mesh, ready);
    let mut total = WorkerCounters::default();
    for st in &statuses {
        sample_pod(s, tick, st, &mut state, out);
        if let Some(text) = tick.scraped.get(&st.pod) {
            total.add(&parse_worker_metrics(text));
        }
    }
    worker_samples(s, tick, total, &mut out.samples);
    service_samples(s, tick, ready, &mut out.samples);
    if run_hpa && s.hpa.is_some() {
        hpa_sync(s, tick, &mut out.samples);
        state.desired = s.last_desired;
    }
    out.states.push(state);
}

/// Keeps the proxy's members in step with restarts (a new port) and stops, and the pods'
/// status in step with their processes and probes. Returns how many are ready.
fn sync_pods(s: &mut Service, clock: f64, statuses: &[ReplicaStatus]) -> usize {
    let members: Vec<(String, SocketAddr)> = statuses
        .iter()
        .filter(|st| st.phase == PodPhase::Running)
        .map(|st| (st.pod.clone(), st.addr))
        .collect();
    s.proxy.set_members(members);
    let endpoints = s.proxy.endpoints();
    for i in &s.replicas {
        let pod = format!("{}-{i}", s.resolved.name);
        let st = statuses.iter().find(|st| st.pod == pod);
        let ready = endpoints.iter().any(|b| b.pod == pod && b.ready);
        let restarts = st.map_or(0, |st| st.restarts);
        s.lifecycle
            .update(clock, &pod, process(st), ready, restarts);
    }
    endpoints.iter().filter(|b| b.ready).count()
}

/// The container state the kubelet would report for a replica.
fn process(st: Option<&ReplicaStatus>) -> Process {
    match st {
        Some(st) if st.phase == PodPhase::Running => Process::Running,
        Some(st) if st.started_at.is_some() => Process::Restarting,
        _ => Process::NotStarted,
    }
}

/// The service's state for the exporter, before this round's HPA decision.
fn service_state(s: &Service, mesh: &str, ready: usize) -> ServiceState {
    let cores = |millis: Option<u64>| millis.map(|m| m as f64 / 1000.0);
    ServiceState {
        mesh: mesh.to_string(),
        service: s.resolved.name.clone(),
        replicas: s.replicas.len() as u32,
        ready: ready as u32,
        desired: s.last_desired,
        target_utilization: s
            .resolved
            .autoscaling
            .as_ref()
            .map(|a| a.target_cpu_utilization),
        cpu_request_cores: cores(s.resolved.resources.cpu_request_millis),
        cpu_limit_cores: cores(s.resolved.resources.cpu_limit_millis),
        pods: Vec::new(),
    }
}

/// One pod's round: its scrape target, memory and CPU samples, and its CPU counter for
/// the metrics pipeline.
fn sample_pod(
    s: &mut Service,
    tick: &Tick,
    st: &ReplicaStatus,
    state: &mut ServiceState,
    out: &mut TickOut,
) {
    let name = &s.resolved.name;
    let index = st
        .pod
        .rsplit_once('-')
        .and_then(|(_, i)| i.parse::<u32>().ok())
        .unwrap_or(0);
    if st.phase == PodPhase::Running {
        out.targets.push(Target {
            addr: st.addr,
            labels: BTreeMap::from([
                ("namespace".to_string(), NAMESPACE.to_string()),
                ("mesh".to_string(), tick.mesh.to_string()),
                ("pod".to_string(), pod_name(tick.mesh, name, index)),
            ]),
        });
    }
    let usage = match tick.pods.stats(&st.pod) {
        Ok(Some(stats)) if stats.cpu_usage.is_some() => {
            stats.cpu_usage.map(|c| (c, stats.memory_working_set_bytes))
        }
        _ => st.pid.and_then(proc_usage),
    };
    let Some((cpu, mem)) = usage else { return };
    state.pods.push((index, cpu.as_secs_f64(), mem as f64));
    let sample = |m: &str, v: f64| Sample::pod(tick.ts, tick.mesh, name, &st.pod, m, v);
    out.samples.push(sample(metric::MEMORY_BYTES, mem as f64));
    if let Some(cores) = cpu_rate(s.cpu_prev.get(&st.pod), cpu, tick.now) {
        out.samples.push(sample(metric::CPU_CORES, cores));
    }
    s.cpu_prev.insert(st.pod.clone(), (cpu, tick.now));
    // Only a running container is in the kubelet's stats that metrics-server scrapes.
    if st.phase == PodPhase::Running
        && let Some(started) = st.started_at
    {
        let run_start = tick.epoch.at(started);
        s.metrics
            .observe(tick.clock, &st.pod, cpu.as_secs_f64(), run_start);
    }
}

/// Cores used since the previous reading; none across a counter reset (a restart).
fn cpu_rate(prev: Option<&(Duration, Instant)>, cpu: Duration, now: Instant) -> Option<f64> {
    let (c0, t0) = prev?;
    let used = cpu.checked_sub(*c0)?;
    let dt = now.duration_since(*t0).as_secs_f64();
    (dt > 0.0).then_some(used.as_secs_f64() / dt)
}

/// The service's request, error and latency rates from its workers' counters.
fn worker_samples(s: &mut Service, tick: &Tick, total: WorkerCounters, out: &mut Vec<Sample>) {
    let delta = total.since(&s.counters_prev);
    let dt = tick.opts.sample_interval.as_secs_f64().max(1e-3);
    if s.counters_prev.requests > 0.0 || total.requests > 0.0 {
        let name = &s.resolved.name;
        let mut push = |m: &str, v: f64| out.push(Sample::service(tick.ts, tick.mesh, name, m, v));
        push(metric::WORKER_REQUESTS_PER_S, delta.requests / dt);
        push(metric::WORKER_ERRORS_PER_S, delta.errors / dt);
        if delta.requests > 0.0 {
            push(
                metric::WORKER_LATENCY_MEAN_MS,
                delta.duration_sum_s / delta.requests * 1000.0,
            );
            if let Some(p99) = delta.quantile_s(0.99) {
                push(metric::WORKER_LATENCY_P99_MS, p99 * 1000.0);
            }
        }
    }
    s.counters_prev = total;
}

/// The service's replica counts, resources and HPA target.
fn service_samples(s: &Service, tick: &Tick, ready: usize, out: &mut Vec<Sample>) {
    let r = &s.resolved;
    let mut push = |m: &str, v: f64| out.push(Sample::service(tick.ts, tick.mesh, &r.name, m, v));
    push(metric::REPLICAS, s.replicas.len() as f64);
    push(metric::REPLICAS_READY, ready as f64);
    push(metric::REPLICAS_PENDING, s.pending.len() as f64);
    if let Some(request) = r.resources.cpu_request_millis {
        push(metric::CPU_REQUEST_CORES, request as f64 / 1000.0);
    }
    if let Some(limit) = r.resources.cpu_limit_millis {
        push(metric::CPU_LIMIT_CORES, limit as f64 / 1000.0);
    }
    if let Some(a) = &r.autoscaling {
        push(
            metric::HPA_TARGET_UTILIZATION,
            f64::from(a.target_cpu_utilization) / 100.0,
        );
    }
}

/// One HPA sync on what a cluster's HPA would see (metrics-server's metrics, the pods'
/// status, every pod of the service), then the resize it asks for.
fn hpa_sync(s: &mut Service, tick: &Tick, out: &mut Vec<Sample>) {
    let Some(hpa) = s.hpa.as_mut() else { return };
    let name = &s.resolved.name;
    let request = s.resolved.resources.cpu_request_millis.unwrap_or(0);
    let pod_samples: Vec<PodSample> = s
        .replicas
        .iter()
        .map(|i| {
            let pod = format!("{name}-{i}");
            s.lifecycle
                .pod_sample(&pod, s.metrics.metric(&pod), request)
        })
        .collect();
    let decision = hpa.sync(tick.clock, s.replicas.len() as u32, &pod_samples);
    s.last_desired = Some(decision.desired);
    log_decision(name, &decision);
    out.extend(hpa_samples(
        tick.ts,
        tick.mesh,
        name,
        &decision,
        &pod_samples,
    ));
    resize(s, tick, decision.desired as usize);
}

fn log_decision(service: &str, d: &Decision) {
    tracing::info!(
        service = %service,
        current = d.current,
        desired = d.desired,
        reason = ?d.reason,
        "HPA: {}",
        d.message
    );
}

/// Starts or removes replicas until `s` has `desired`.
fn resize(s: &mut Service, tick: &Tick, desired: usize) {
    while s.replicas.len() < desired {
        create_replica(s, tick.clock);
    }
    let excess = s.replicas.len().saturating_sub(desired);
    if excess > 0 {
        scale_down(s, tick, excess);
    }
}

/// Removes `excess` replicas, picked as a ReplicaSet picks them. As on a cluster, a
/// victim gets SIGTERM and leaves the endpoints at the same moment, and the proxy's
/// routes drop it only a propagation delay later (the EndpointSlice update reaching
/// kube-proxy while the container terminates): connections that reach it meanwhile
/// find it draining, or refused once it stopped listening.
fn scale_down(s: &mut Service, tick: &Tick, excess: usize) {
    let ranked: Vec<RankedPod> = s
        .replicas
        .iter()
        .map(|i| {
            let pod = format!("{}-{i}", s.resolved.name);
            s.lifecycle.ranked(tick.clock, &pod)
        })
        .collect();
    for pod in scale_down_victims(&ranked, excess) {
        let name = &s.resolved.name;
        let unbound = s.pending.len();
        s.pending.retain(|u| format!("{name}-{}", u.index) != pod);
        if s.pending.len() == unbound {
            let pods = tick.pods.clone();
            let victim = pod.clone();
            tokio::runtime::Handle::current().spawn(async move {
                pods.stop(&victim, None).await;
            });
        }
        s.replicas.retain(|i| format!("{name}-{i}") != pod);
        let remaining: Vec<(String, SocketAddr)> = s
            .proxy
            .endpoints()
            .into_iter()
            .filter(|b| b.pod != pod)
            .map(|b| (b.pod, b.addr))
            .collect();
        s.proxy.set_members(remaining);
        s.cpu_prev.remove(&pod);
        s.metrics.forget(&pod);
        s.lifecycle.forget(&pod);
    }
}

/// What the HPA saw and decided at one sync, as samples: every input (per-pod utilization,
/// ready, unready and missing pods) and every stage of the decision (recommendation,
/// stabilized, desired), so a report can tell why it scaled or did not.
/// The HPA of an autoscaled service, with the controller's CPU initialization period;
/// settings the controller refuses leave it out with a warning.
pub(crate) fn hpa_of(svc: &ResolvedService, cpu_initialization_period: Duration) -> Option<Hpa> {
    let a = svc.autoscaling.as_ref()?;
    HpaConfig::new(
        a.min_replicas,
        a.max_replicas,
        a.target_cpu_utilization,
        a.behavior.clone(),
    )
    .map(|c| HpaConfig {
        cpu_initialization_period,
        ..c
    })
    .and_then(Hpa::new)
    .map_err(|e| tracing::warn!(service = %svc.name, "HPA disabled: {e}"))
    .ok()
}

pub(crate) fn hpa_samples(
    ts: i64,
    mesh: &str,
    service: &str,
    d: &Decision,
    pods: &[PodSample],
) -> Vec<Sample> {
    let mut out: Vec<Sample> = [
        (metric::REPLICAS_DESIRED, d.desired),
        (metric::HPA_RECOMMENDATION, d.recommendation),
        (metric::HPA_STABILIZED, d.stabilized),
        (metric::HPA_READY_PODS, d.ready_pods),
        (metric::HPA_UNREADY_PODS, d.unready_pods),
        (metric::HPA_MISSING_PODS, d.missing_metrics),
    ]
    .into_iter()
    .map(|(m, v)| Sample::service(ts, mesh, service, m, f64::from(v)))
    .collect();
    if let Some(u) = d.utilization_percent {
        out.push(Sample::service(
            ts,
            mesh,
            service,
            metric::HPA_CURRENT_UTILIZATION,
            f64::from(u) / 100.0,
        ));
    }
    for p in pods {
        if let (Some(cpu), true) = (&p.cpu, p.cpu_request_millis > 0) {
            out.push(Sample::pod(
                ts,
                mesh,
                service,
                &p.name,
                metric::HPA_POD_UTILIZATION,
                cpu.usage_millis / p.cpu_request_millis as f64,
            ));
        }
    }
    out
}
