//! The local platform: a mesh as OS processes on this machine.
//!
//! Each replica is a `meshbench worker` process in its own cgroup (CPU limit as a CFS
//! quota, memory limit enforced); each service is a loopback TCP proxy that balances per
//! connection over ready replicas; a control loop samples CPU, memory and the workers'
//! metrics every second and runs the HPA algorithm every sync period.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshbench_analysis::{Sample, metric};
use meshbench_crds::ServiceMesh;
use meshbench_crds::resolve::{ResolvedService, resolve_mesh};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::cgroup::{CgroupRoot, Enforcement};
use super::exporter::{Exporter, NAMESPACE, ServiceState, pod_name};
use super::hpa::{Hpa, HpaConfig, PodSample};
use super::pods::{PORT_PLACEHOLDER, PodEvent, PodPhase, Pods, PodsConfig, ReplicaSpec};
use super::prometheus::{Target, write_targets};
use super::proxy::{Balance, ProbeConfig, ProxyConfig, ServiceProxy};
use super::sampler::{WorkerCounters, parse_worker_metrics, proc_usage, scrape};
use crate::worker_config::worker_config;

/// Errors of the local platform.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A proxy could not bind its loopback port.
    #[error("cannot start the proxy of service {service}: {source}")]
    Proxy {
        /// Service.
        service: String,
        /// Cause.
        source: super::proxy::Error,
    },
    /// A replica could not be started.
    #[error("cannot start replica of service {service}: {source}")]
    Replica {
        /// Service.
        service: String,
        /// Cause.
        source: super::pods::Error,
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
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    /// Time to wait for replicas to become ready.
    pub ready_timeout: Duration,
    /// Put replicas in cgroups with their limits (when the host allows it).
    pub enforce_limits: bool,
    /// How Services pick an endpoint per connection (random, as kube-proxy).
    pub balance: Balance,
}

struct Service {
    resolved: ResolvedService,
    proxy: ServiceProxy,
    prober: JoinHandle<()>,
    config_json: String,
    /// Replica indices currently wanted, in start order.
    replicas: Vec<u32>,
    next_index: u32,
    hpa: Option<Hpa>,
    /// Previous cumulative CPU per pod (for rates) and the instant it was read.
    cpu_prev: BTreeMap<String, (Duration, Instant)>,
    /// CPU usage per pod averaged since the last HPA sync, millicores.
    cpu_window: BTreeMap<String, (Duration, Instant)>,
    counters_prev: WorkerCounters,
    ready_since: BTreeMap<String, f64>,
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
    epoch: Instant,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl LocalPlatform {
    /// Prepares cgroups (or records why limits cannot be enforced) and the supervisor.
    pub fn new(opts: LocalOptions, run_id: &str) -> Self {
        let stale = super::cgroup::cleanup_stale();
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
        let mut cfg = PodsConfig::new(opts.log_dir.clone());
        // Kubelet's 10 s base back-off would eat whole steps of a short run.
        cfg.backoff_base = Duration::from_secs(1);
        cfg.termination_grace = Duration::from_secs(5);
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
            epoch: Instant::now(),
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
    pub async fn deploy(&mut self, mesh: &ServiceMesh) -> Result<()> {
        let name = mesh.metadata.name.clone().unwrap_or_default();
        let resolved = resolve_mesh(&mesh.spec);
        let mut proxies = Vec::new();
        for svc in &resolved {
            let proxy = ServiceProxy::bind(
                &svc.name,
                SocketAddr::from(([127, 0, 0, 1], 0)),
                ProxyConfig {
                    balance: self.opts.balance,
                    ..ProxyConfig::default()
                },
            )
            .await
            .map_err(|source| Error::Proxy {
                service: svc.name.clone(),
                source,
            })?;
            proxies.push(proxy);
        }
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
        let mut services = Vec::new();
        for (svc, proxy) in resolved.iter().zip(proxies) {
            let mut cfg = worker_config(svc, &resolved, &base_url);
            cfg.drain_grace_us = 2_000_000;
            let config_json = serde_json::to_string(&cfg)?;
            let prober = proxy.spawn_prober(ProbeConfig {
                period: Duration::from_millis(500).min(svc.readiness_period),
                ..ProbeConfig::default()
            });
            let hpa = svc.autoscaling.as_ref().and_then(|a| {
                HpaConfig::new(
                    a.min_replicas,
                    a.max_replicas,
                    a.target_cpu_utilization,
                    a.behavior.clone(),
                )
                .and_then(Hpa::new)
                .map_err(|e| tracing::warn!(service = %svc.name, "HPA disabled: {e}"))
                .ok()
            });
            services.push(Service {
                resolved: svc.clone(),
                proxy,
                prober,
                config_json,
                replicas: Vec::new(),
                next_index: 0,
                hpa,
                cpu_prev: BTreeMap::new(),
                cpu_window: BTreeMap::new(),
                counters_prev: WorkerCounters::default(),
                ready_since: BTreeMap::new(),
                last_desired: None,
            });
        }
        for s in &mut services {
            let initial = match &s.resolved.autoscaling {
                Some(a) => s.resolved.replicas.clamp(a.min_replicas, a.max_replicas),
                None => s.resolved.replicas,
            }
            .max(0) as u32;
            for _ in 0..initial {
                start_replica(&self.pods, &self.opts, s)?;
            }
        }
        {
            let mut shared = self.shared.lock().map_err(|_| Error::NotReady {
                waited: Duration::ZERO,
                detail: "internal state poisoned".into(),
            })?;
            shared.deployed = Some(Deployed {
                mesh: name,
                services,
            });
            shared.last_hpa = Instant::now();
        }
        self.start_control();
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

    /// Waits until every service has all its replicas ready.
    pub async fn wait_ready(&self) -> Result<()> {
        let start = Instant::now();
        loop {
            let missing = {
                let shared = self.shared.lock().map_err(|_| Error::NotReady {
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
                        (ready < s.replicas.len()).then(|| {
                            format!("{} {ready}/{} ready", s.resolved.name, s.replicas.len())
                        })
                    })
                    .collect::<Vec<_>>()
            };
            if missing.is_empty() {
                return Ok(());
            }
            if start.elapsed() > self.opts.ready_timeout {
                return Err(Error::NotReady {
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
        self.epoch.elapsed().as_secs_f64()
    }
}

fn record_event(shared: &Arc<Mutex<Shared>>, ev: &PodEvent) {
    use super::pods::PodEventKind as K;
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

fn start_replica(pods: &Pods, opts: &LocalOptions, s: &mut Service) -> Result<()> {
    let index = s.next_index;
    s.next_index += 1;
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
    };
    let status = pods.start(spec).map_err(|source| Error::Replica {
        service: s.resolved.name.clone(),
        source,
    })?;
    s.replicas.push(index);
    s.proxy.set_ready(&status.pod, status.addr, false);
    Ok(())
}

/// One sampling round: CPU and memory per pod, worker counters per service, proxy
/// membership, and (every sync period) the HPA.
fn control_tick(
    shared: &Arc<Mutex<Shared>>,
    pods: &Arc<Pods>,
    opts: &LocalOptions,
    epoch: Instant,
) {
    let Ok(mut guard) = shared.lock() else { return };
    let sh = &mut *guard;
    let Some(d) = sh.deployed.as_mut() else {
        return;
    };
    let ts = now_ms();
    let now = Instant::now();
    let clock = epoch.elapsed().as_secs_f64();
    let run_hpa = sh.last_hpa.elapsed() >= opts.hpa_sync;
    if run_hpa {
        sh.last_hpa = now;
    }
    let mesh = d.mesh.clone();
    let mut out = Vec::new();
    let mut states = Vec::new();
    let mut targets = Vec::new();
    for s in &mut d.services {
        let name = s.resolved.name.clone();
        let statuses: Vec<_> = pods
            .statuses()
            .into_iter()
            .filter(|st| s.replicas.iter().any(|i| st.pod == format!("{name}-{i}")))
            .collect();
        // Keep the proxy's members in step with restarts (a new port) and stops.
        let members: Vec<(String, SocketAddr)> = statuses
            .iter()
            .filter(|st| st.phase == PodPhase::Running)
            .map(|st| (st.pod.clone(), st.addr))
            .collect();
        s.proxy.set_members(members);
        let endpoints = s.proxy.endpoints();
        let ready = endpoints.iter().filter(|b| b.ready).count();
        for b in &endpoints {
            if b.ready {
                s.ready_since.entry(b.pod.clone()).or_insert(clock);
            } else {
                s.ready_since.remove(&b.pod);
            }
        }
        let mut total = WorkerCounters::default();
        let mut pod_samples = Vec::new();
        let mut state = ServiceState {
            mesh: mesh.clone(),
            service: name.clone(),
            replicas: s.replicas.len() as u32,
            ready: ready as u32,
            desired: s.last_desired,
            target_utilization: s
                .resolved
                .autoscaling
                .as_ref()
                .map(|a| a.target_cpu_utilization),
            cpu_request_cores: s
                .resolved
                .resources
                .cpu_request_millis
                .map(|m| m as f64 / 1000.0),
            cpu_limit_cores: s
                .resolved
                .resources
                .cpu_limit_millis
                .map(|m| m as f64 / 1000.0),
            pods: Vec::new(),
        };
        for st in &statuses {
            let index = st
                .pod
                .rsplit_once('-')
                .and_then(|(_, i)| i.parse::<u32>().ok())
                .unwrap_or(0);
            if st.phase == PodPhase::Running {
                targets.push(Target {
                    addr: st.addr,
                    labels: BTreeMap::from([
                        ("namespace".to_string(), NAMESPACE.to_string()),
                        ("mesh".to_string(), mesh.clone()),
                        ("pod".to_string(), pod_name(&mesh, &name, index)),
                    ]),
                });
            }
            let usage = match pods.stats(&st.pod) {
                Ok(Some(stats)) if stats.cpu_usage.is_some() => {
                    stats.cpu_usage.map(|c| (c, stats.memory_working_set_bytes))
                }
                _ => st.pid.and_then(proc_usage),
            };
            if let Some((cpu, mem)) = usage {
                state.pods.push((index, cpu.as_secs_f64(), mem as f64));
                out.push(Sample::pod(
                    ts,
                    &mesh,
                    &name,
                    &st.pod,
                    metric::MEMORY_BYTES,
                    mem as f64,
                ));
                if let Some((prev, at)) = s.cpu_prev.get(&st.pod)
                    && cpu >= *prev
                {
                    let dt = now.duration_since(*at).as_secs_f64();
                    if dt > 0.0 {
                        let cores = (cpu - *prev).as_secs_f64() / dt;
                        out.push(Sample::pod(
                            ts,
                            &mesh,
                            &name,
                            &st.pod,
                            metric::CPU_CORES,
                            cores,
                        ));
                    }
                }
                s.cpu_prev.insert(st.pod.clone(), (cpu, now));
                s.cpu_window.entry(st.pod.clone()).or_insert((cpu, now));
                let request = s.resolved.resources.cpu_request_millis.unwrap_or(0);
                let start_time = st
                    .started_at
                    .map(|t| clock - (chrono::Utc::now() - t).num_milliseconds() as f64 / 1000.0)
                    .unwrap_or(clock);
                let mut p = PodSample::running(
                    &st.pod,
                    request,
                    start_time,
                    *s.ready_since.get(&st.pod).unwrap_or(&clock),
                );
                if !s.ready_since.contains_key(&st.pod) {
                    p.ready = Some(super::hpa::ReadyCondition {
                        ready: false,
                        last_transition_time: start_time,
                    });
                }
                if let Some((c0, t0)) = s.cpu_window.get(&st.pod) {
                    let dt = now.duration_since(*t0).as_secs_f64();
                    if dt >= 1.0 && cpu >= *c0 {
                        p = p.with_cpu((cpu - *c0).as_secs_f64() / dt * 1000.0, clock, dt);
                    }
                }
                pod_samples.push(p);
            }
            if let Some(text) = scrape(st.addr, Duration::from_millis(300)) {
                total.add(&parse_worker_metrics(&text));
            }
        }
        let delta = total.since(&s.counters_prev);
        let dt = opts.sample_interval.as_secs_f64().max(1e-3);
        if s.counters_prev.requests > 0.0 || total.requests > 0.0 {
            out.push(Sample::service(
                ts,
                &mesh,
                &name,
                metric::WORKER_REQUESTS_PER_S,
                delta.requests / dt,
            ));
            out.push(Sample::service(
                ts,
                &mesh,
                &name,
                metric::WORKER_ERRORS_PER_S,
                delta.errors / dt,
            ));
            if delta.requests > 0.0 {
                out.push(Sample::service(
                    ts,
                    &mesh,
                    &name,
                    metric::WORKER_LATENCY_MEAN_MS,
                    delta.duration_sum_s / delta.requests * 1000.0,
                ));
                if let Some(p99) = delta.quantile_s(0.99) {
                    out.push(Sample::service(
                        ts,
                        &mesh,
                        &name,
                        metric::WORKER_LATENCY_P99_MS,
                        p99 * 1000.0,
                    ));
                }
            }
        }
        s.counters_prev = total;
        let replicas = s.replicas.len();
        out.push(Sample::service(
            ts,
            &mesh,
            &name,
            metric::REPLICAS,
            replicas as f64,
        ));
        out.push(Sample::service(
            ts,
            &mesh,
            &name,
            metric::REPLICAS_READY,
            ready as f64,
        ));
        if let Some(r) = s.resolved.resources.cpu_request_millis {
            out.push(Sample::service(
                ts,
                &mesh,
                &name,
                metric::CPU_REQUEST_CORES,
                r as f64 / 1000.0,
            ));
        }
        if let Some(l) = s.resolved.resources.cpu_limit_millis {
            out.push(Sample::service(
                ts,
                &mesh,
                &name,
                metric::CPU_LIMIT_CORES,
                l as f64 / 1000.0,
            ));
        }
        if let Some(a) = &s.resolved.autoscaling {
            out.push(Sample::service(
                ts,
                &mesh,
                &name,
                metric::HPA_TARGET_UTILIZATION,
                f64::from(a.target_cpu_utilization) / 100.0,
            ));
        }
        if run_hpa && let Some(hpa) = s.hpa.as_mut() {
            let decision = hpa.sync(clock, replicas as u32, &pod_samples);
            s.cpu_window.clear();
            s.last_desired = Some(decision.desired);
            state.desired = s.last_desired;
            tracing::info!(service = %name, current = decision.current, desired = decision.desired, reason = ?decision.reason, "HPA: {}", decision.message);
            out.extend(hpa_samples(ts, &mesh, &name, &decision, &pod_samples));
            let desired = decision.desired as usize;
            while s.replicas.len() < desired {
                if let Err(e) = start_replica(pods, opts, s) {
                    tracing::warn!("scale up {name}: {e}");
                    break;
                }
            }
            if s.replicas.len() > desired {
                // Like a ReplicaSet, remove the newest replicas first; they leave the
                // proxy before they are stopped so no new connection reaches them.
                let victims: Vec<u32> = s.replicas.split_off(desired);
                for i in victims {
                    let pod = format!("{name}-{i}");
                    let remaining: Vec<(String, SocketAddr)> = s
                        .proxy
                        .endpoints()
                        .into_iter()
                        .filter(|b| b.pod != pod)
                        .map(|b| (b.pod, b.addr))
                        .collect();
                    s.proxy.set_members(remaining);
                    s.cpu_prev.remove(&pod);
                    s.ready_since.remove(&pod);
                    let pods = pods.clone();
                    tokio::runtime::Handle::current().spawn(async move {
                        pods.stop(&pod, None).await;
                    });
                }
            }
        }
        states.push(state);
    }
    sh.samples.extend(out);
    if let Some(p) = sh.prom.as_mut() {
        p.publish(&states, targets);
    }
}

/// What the HPA saw and decided at one sync, as samples: every input (per-pod utilization,
/// ready, unready and missing pods) and every stage of the decision (recommendation,
/// stabilized, desired), so a report can tell why it scaled or did not.
fn hpa_samples(
    ts: i64,
    mesh: &str,
    service: &str,
    d: &super::hpa::Decision,
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
