//! `meshbench node`: a node agent doing for meshbench's pods what a kubelet does, so a
//! real control plane (kube-scheduler, the Deployment, ReplicaSet, Job and HPA
//! controllers) runs them on this machine as processes.
//!
//! - [`registration`]: the Node object, its Lease and status heartbeats;
//! - [`spec`]: which pods can run (only meshbench's own commands) and how (arguments,
//!   environment, limits, mount paths rewritten to the pod's directories);
//! - [`volumes`]: ConfigMap, Secret, emptyDir, Downward API and projected volumes;
//! - [`probe`]: readiness, liveness and startup probes;
//! - [`status`]: the pod status reported back;
//! - [`metrics`]: the kubelet's `/metrics/resource` for metrics-server, and
//!   `/metrics/cadvisor` for a Prometheus;
//! - [`state`]: kube-state-metrics' series at `/metrics/kube-state` for a Prometheus;
//! - [`network`]: Services (a proxy per ClusterIP port following EndpointSlices) and
//!   their names.
//!
//! Each pod gets a loopback IP of its own from `--pod-cidr`; containers run through the
//! local runtime's supervisor (a cgroup per container with its limits and requests, the
//! restart policy with the kubelet's back-off).

pub mod metrics;
pub mod network;
pub mod probe;
pub mod registration;
pub mod spec;
pub mod state;
pub mod status;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use meshbench_runtime::cgroup::CgroupRoot;
use meshbench_runtime::pods::{PodEvent, PodsConfig, Replica, ReplicaSpec, RestartPolicy};
use registration::NodeInfo;
use spec::{PodFacts, Refusal};
use volumes::NotReady;

/// `meshbench node`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeAgentArgs {
    /// Name of the Node to register.
    #[arg(long, env = "MESHBENCH_NODE_NAME", default_value = "meshbench-node")]
    pub name: String,
    /// Range of the pod IPs. Its first address is the node's own (InternalIP, the
    /// metrics endpoint), the rest go to pods. The agent makes the whole range local to
    /// this machine (a `local` route on `lo`, removed on exit). RFC 2544's benchmarking
    /// range by default; loopback addresses cannot be used, the API rejects them in
    /// EndpointSlices.
    #[arg(long, default_value = "198.18.0.0/16", value_parser = Cidr::parse)]
    pub pod_cidr: Cidr,
    /// The API server's `--service-cluster-ip-range`: made local too, so the agent's
    /// Service proxy can listen on every ClusterIP.
    #[arg(long, default_value = "198.19.0.0/16", value_parser = Cidr::parse)]
    pub service_cidr: Cidr,
    /// Port of the node's kubelet endpoint (`/metrics/resource` for metrics-server), on
    /// the node's IP; 0 picks a free one.
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    /// Also serve kube-state-metrics' series (replicas, HPAs, requests and limits, owners)
    /// at `/metrics/kube-state`, so a Prometheus gets what the operator's collection
    /// reads with no kube-state-metrics in the cluster. Needs get, list and watch on
    /// Deployments, ReplicaSets and HorizontalPodAutoscalers (`control-plane.sh up
    /// --with-node` grants them).
    #[arg(long)]
    pub state_metrics: bool,
    /// Directory of the pods' volumes and logs (`pods/<namespace>_<pod>_<uid>/`).
    /// Default: a new temporary directory, removed on exit.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The meshbench executable the pods run (default: this one).
    #[arg(long, value_name = "PATH")]
    pub program: Option<PathBuf>,
    /// The node's CPU and memory for pods (`--node-cpu`, `--node-memory`).
    #[command(flatten)]
    pub resources: crate::run::NodeArgs,
    /// Log format.
    #[command(flatten)]
    pub log: meshbench_common::logging::LogArgs,
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No usable kubeconfig or in-cluster credentials.
    #[error("cannot configure the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// Registering the Node failed.
    #[error("cannot register node {name}: {source}")]
    Register {
        /// The node.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// A local resource could not be set up.
    #[error("{0}")]
    Setup(String),
}

/// An IPv4 range for pods or Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl Cidr {
    /// Parses `a.b.c.d/n` (n from 9 to 30, outside 127.0.0.0/8).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected a range like 198.18.0.0/16"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{s:?}: {ip:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (9..=30).contains(p))
            .ok_or_else(|| format!("{s:?}: the prefix length must be 9 to 30"))?;
        let mask = u32::MAX << (32 - prefix);
        let base = u32::from(ip) & mask;
        let first = Ipv4Addr::from(base);
        if first.is_loopback()
            || first.is_unspecified()
            || first.is_link_local()
            || first.is_multicast()
        {
            return Err(format!(
                "{s:?}: loopback, link-local and multicast addresses cannot be pod or Service IPs (the API rejects them in EndpointSlices); use e.g. 198.18.0.0/16"
            ));
        }
        Ok(Self { base, prefix })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// The first host address: the node's own in the pod range.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    fn overlaps(&self, other: &Cidr) -> bool {
        let prefix = self.prefix.min(other.prefix);
        let mask = u32::MAX << (32 - prefix);
        self.base & mask == other.base & mask
    }
}

/// Makes every address of `cidr` local to this machine (`ip route replace local CIDR
/// dev lo table local`), as 127.0.0.0/8 is: processes can bind and reach them with no
/// interface or address set up per pod.
fn add_local_route(cidr: Cidr) -> Result<(), NodeError> {
    let out = std::process::Command::new("ip")
        .args([
            "route",
            "replace",
            "local",
            &cidr.to_string(),
            "dev",
            "lo",
            "table",
            "local",
        ])
        .output()
        .map_err(|e| {
            NodeError::Setup(format!(
                "cannot run `ip` (iproute2) to make {cidr} local: {e}"
            ))
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(NodeError::Setup(format!(
        "cannot make {cidr} local (`ip route replace local {cidr} dev lo table local`, needs root): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

fn remove_local_route(cidr: Cidr) {
    let _ = std::process::Command::new("ip")
        .args([
            "route",
            "del",
            "local",
            &cidr.to_string(),
            "dev",
            "lo",
            "table",
            "local",
        ])
        .output();
}

/// Hands out pod IPs round-robin, so a freed address is not reused at once (a client
/// still holding it would reach the wrong pod). The range's first host address is the
/// node's and its last the broadcast address; neither goes to a pod.
#[derive(Debug)]
struct Ipam {
    cidr: Cidr,
    next: u32,
    used: BTreeSet<u32>,
}

impl Ipam {
    fn new(cidr: Cidr) -> Self {
        Self {
            cidr,
            next: 2,
            used: BTreeSet::new(),
        }
    }

    fn allocate(&mut self) -> Option<Ipv4Addr> {
        let size = self.cidr.size();
        for _ in 0..size {
            let offset = self.next;
            self.next = if self.next + 2 >= size {
                2
            } else {
                self.next + 1
            };
            let ip = self.cidr.base + offset;
            if self.used.insert(ip) {
                return Some(Ipv4Addr::from(ip));
            }
        }
        None
    }

    fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }
}

/// A container running for a pod.
struct ContainerRun {
    name: String,
    image: String,
    replica: Replica,
    ready: Arc<AtomicBool>,
    prober: JoinHandle<()>,
}

/// A pod this agent runs.
struct PodRun {
    ns: String,
    name: String,
    uid: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    grace: Duration,
    start_time: String,
    containers: Vec<ContainerRun>,
    conditions: status::Conditions,
    last_sent: Option<Value>,
}

/// What the agent knows of a pod bound to it.
enum Slot {
    Running(PodRun),
    /// Cannot start yet (a missing ConfigMap …); tried again at `retry_at`, backing off
    /// from 1 s to 30 s as the kubelet's pod workers do.
    Waiting {
        message: String,
        retry_at: tokio::time::Instant,
        delay: Duration,
    },
    /// Will never run here; reported Failed.
    Refused,
    /// Being stopped and deleted since `since`.
    Stopping {
        since: tokio::time::Instant,
    },
}

/// First and longest wait before a waiting pod is tried again.
const WAIT_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));
/// A deleted pod still there this long after its stop began: the final delete failed.
const DELETE_RETRY: Duration = Duration::from_secs(60);

struct Agent {
    client: Client,
    info: NodeInfo,
    program: PathBuf,
    data_dir: PathBuf,
    cgroups: CgroupRoot,
    ipam: Arc<Mutex<Ipam>>,
    events: tokio::sync::mpsc::UnboundedSender<PodEvent>,
    pods: HashMap<String, Slot>,
    stopping: tokio::task::JoinSet<()>,
    network: network::Network,
    targets: metrics::Targets,
    /// Where the kube-state series' stores go, with `--state-metrics`.
    state: Option<state::Shared>,
    signals: Signals,
}

/// What every container of one pod shares.
struct PodCtx<'a> {
    ns: &'a str,
    name: &'a str,
    compact_uid: String,
    ip: Ipv4Addr,
    restart: RestartPolicy,
    dir: &'a std::path::Path,
    cfg: Arc<PodsConfig>,
    grace: Duration,
}

/// Runs the agent until SIGTERM or Ctrl-C; then stops its pods.
pub async fn run(args: NodeAgentArgs) -> Result<(), NodeError> {
    let signals = Signals::install()?;
    crate::k8s::install_tls_provider();
    args.log
        .init(meshbench_common::logging::LogFormat::Text, "info,kube=warn");
    let client = Client::try_default().await.map_err(NodeError::Client)?;
    let (data_dir, _temp) = match &args.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let program = match &args.program {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| NodeError::Setup(format!("cannot find this executable: {e}")))?,
    };
    if args.pod_cidr.overlaps(&args.service_cidr) {
        return Err(NodeError::Setup(format!(
            "--pod-cidr {} and --service-cidr {} overlap",
            args.pod_cidr, args.service_cidr
        )));
    }
    let cidrs = [args.pod_cidr, args.service_cidr];
    add_local_route(cidrs[0])?;
    if let Err(e) = add_local_route(cidrs[1]) {
        remove_local_route(cidrs[0]);
        return Err(e);
    }
    let result = run_with_routes(args, client, data_dir, program, signals).await;
    for cidr in cidrs {
        remove_local_route(cidr);
    }
    result
}

async fn run_with_routes(
    args: NodeAgentArgs,
    client: Client,
    data_dir: PathBuf,
    program: PathBuf,
    signals: Signals,
) -> Result<(), NodeError> {
    let allocatable = args.resources.resources();
    let ip = args.pod_cidr.first();
    let targets = metrics::Targets::default();
    let state = state::Shared::default();
    let addr = std::net::SocketAddr::from((ip, args.port));
    let endpoint = metrics::serve(addr, targets.clone(), state.clone())
        .await
        .map_err(|e| {
            NodeError::Setup(format!(
                "cannot serve the node endpoint on {ip}:{}: {e}",
                args.port
            ))
        })?;
    let info = NodeInfo {
        name: args.name.clone(),
        capacity: meshbench_runtime::node::machine_capacity(),
        allocatable,
        ip,
        port: endpoint.port(),
    };
    meshbench_runtime::cgroup::cleanup_stale();
    let cgroups = CgroupRoot::create(&format!("node-{}", sanitize(&args.name)))
        .map_err(|e| NodeError::Setup(format!("cgroups: {e}")))?;
    let since = registration::register(&client, &info)
        .await
        .map_err(|source| NodeError::Register {
            name: info.name.clone(),
            source,
        })?;
    tracing::info!(node = %info.name, ip = %info.ip, pods = %args.pod_cidr, services = %args.service_cidr, enforcement = ?cgroups.enforcement(), "node registered");
    let heartbeat = tokio::spawn(heartbeats(client.clone(), info.clone(), since));
    let (events, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    // Lifecycle events are in each pod's status already; drain them.
    tokio::spawn(async move { while events_rx.recv().await.is_some() {} });
    let network = network::Network::new(data_dir.join("hosts"));
    let mut agent = Agent {
        signals,
        targets,
        state: args.state_metrics.then_some(state),
        client: client.clone(),
        info,
        program,
        network,
        data_dir,
        cgroups,
        ipam: Arc::new(Mutex::new(Ipam::new(args.pod_cidr))),
        events,
        pods: HashMap::new(),
        stopping: tokio::task::JoinSet::new(),
    };
    let result = agent.serve().await;
    heartbeat.abort();
    agent.shutdown().await;
    result
}

fn tempdir() -> Result<tempfile::TempDir, NodeError> {
    tempfile::Builder::new()
        .prefix("meshbench-node-")
        .tempdir()
        .map_err(|e| NodeError::Setup(format!("temporary directory: {e}")))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect()
}

/// Lease renewals every 10 s, the Node status every minute.
async fn heartbeats(client: Client, info: NodeInfo, since: String) {
    let mut lease = tokio::time::interval(registration::LEASE_RENEW);
    let mut status = tokio::time::interval(registration::STATUS_EVERY);
    loop {
        tokio::select! {
            _ = lease.tick() => {
                if let Err(e) = registration::renew_lease(&client, &info).await {
                    tracing::warn!(error = %e, "cannot renew the node lease");
                }
            }
            _ = status.tick() => {
                if let Err(e) = registration::post_status(&client, &info, &since).await {
                    tracing::warn!(error = %e, "cannot post the node status");
                }
            }
        }
    }
}

/// A store of `K` kept by a watch, waking `changed` on every event.
fn reflect<K>(
    client: &Client,
    config: watcher::Config,
    changed: &Arc<tokio::sync::Notify>,
) -> (reflector::Store<K>, JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let notify = changed.clone();
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, config)
            .default_backoff()
            .reflect(writer)
            .applied_objects()
            .boxed();
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => notify.notify_one(),
                Err(e) => tracing::warn!(error = %e, kind = %K::kind(&()), "watch"),
            }
        }
    });
    (reader, task)
}

/// SIGTERM and SIGINT, registered when the agent starts: a signal during set-up is then
/// kept for the loop instead of killing the process with its routes and pods in place.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, NodeError> {
        use tokio::signal::unix::{SignalKind, signal};
        let err = |e: std::io::Error| NodeError::Setup(format!("signal handlers: {e}"));
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(err)?,
            int: signal(SignalKind::interrupt()).map_err(err)?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

impl Agent {
    /// Watches the pods bound to this node and syncs them until a stop signal.
    async fn serve(&mut self) -> Result<(), NodeError> {
        let changed = Arc::new(tokio::sync::Notify::new());
        let on_node =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.info.name));
        let (pods, pods_watch) = reflect::<Pod>(&self.client, on_node, &changed);
        let (services, services_watch) = reflect::<k8s_openapi::api::core::v1::Service>(
            &self.client,
            watcher::Config::default(),
            &changed,
        );
        let (slices, slices_watch) = reflect::<k8s_openapi::api::discovery::v1::EndpointSlice>(
            &self.client,
            watcher::Config::default(),
            &changed,
        );
        let state_watches = self.state.as_ref().map(|shared| {
            let (watches, stores) = self.state_stores(pods.clone());
            let _ = shared.set(stores);
            watches
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), pods.wait_until_ready()).await;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.signals.recv() => break,
                () = changed.notified() => {}
                _ = tick.tick() => {}
            }
            self.network.sync(&services.state(), &slices.state());
            self.sync(pods.state()).await;
        }
        for w in [pods_watch, services_watch, slices_watch]
            .into_iter()
            .chain(state_watches.into_iter().flatten())
        {
            w.abort();
        }
        Ok(())
    }

    /// Watches of the objects kube-state series are made of; their events do not wake
    /// the sync loop.
    fn state_stores(&self, pods: reflector::Store<Pod>) -> (Vec<JoinHandle<()>>, state::Stores) {
        let quiet = Arc::new(tokio::sync::Notify::new());
        let all = watcher::Config::default;
        let (deployments, d) = reflect(&self.client, all(), &quiet);
        let (replicasets, r) = reflect(&self.client, all(), &quiet);
        let (hpas, h) = reflect(&self.client, all(), &quiet);
        let stores = state::Stores {
            deployments,
            replicasets,
            hpas,
            pods,
        };
        (vec![d, r, h], stores)
    }

    /// One pass: start new pods, stop deleted ones, report statuses.
    async fn sync(&mut self, desired: Vec<Arc<Pod>>) {
        while self.stopping.try_join_next().is_some() {}
        let mut seen = BTreeSet::new();
        for pod in &desired {
            let Some(uid) = pod.uid() else { continue };
            seen.insert(uid.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                self.begin_delete(pod, &uid);
                continue;
            }
            let terminal = matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            match self.pods.get(&uid) {
                None if terminal => {}
                Some(Slot::Waiting { retry_at, .. }) if tokio::time::Instant::now() < *retry_at => {
                }
                None | Some(Slot::Waiting { .. }) => self.admit(pod, &uid).await,
                _ => {}
            }
        }
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !seen.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            // Deleted without a grace period (or the watch missed it): stop at once.
            if let Some(Slot::Running(run)) = self.pods.remove(&uid) {
                self.stopping
                    .spawn(stop_pod(run, Duration::ZERO, None, self.ipam.clone()));
            }
        }
        self.report().await;
        self.publish_targets();
    }

    /// The containers the metrics endpoint reports: those of the running pods.
    fn publish_targets(&self) {
        let targets: Vec<metrics::Target> = self
            .pods
            .values()
            .filter_map(|slot| match slot {
                Slot::Running(run) => Some(run),
                _ => None,
            })
            .flat_map(|run| {
                run.containers.iter().map(|c| metrics::Target {
                    ns: run.ns.clone(),
                    pod: run.name.clone(),
                    container: c.name.clone(),
                    cgroup: c.replica.shared_cgroup(),
                    status: c.replica.watch(),
                })
            })
            .collect();
        *self.targets.lock().unwrap_or_else(|p| p.into_inner()) = targets;
    }

    fn begin_delete(&mut self, pod: &Pod, uid: &str) {
        if let Some(Slot::Stopping { since }) = self.pods.get(uid)
            && since.elapsed() < DELETE_RETRY
        {
            return;
        }
        let now = tokio::time::Instant::now();
        let slot = self
            .pods
            .insert(uid.to_owned(), Slot::Stopping { since: now });
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let delete = Some((api, pod.name_any(), uid.to_owned()));
        match slot {
            Some(Slot::Running(run)) => {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .map_or(run.grace, Duration::from_secs);
                self.stopping
                    .spawn(stop_pod(run, grace, delete, self.ipam.clone()));
            }
            _ => {
                self.stopping.spawn(stop_pod_none(delete));
            }
        }
    }

    /// Starts a pod, or records why it waits or cannot run.
    async fn admit(&mut self, pod: &Pod, uid: &str) {
        if let Err(r) = spec::check_supported(pod) {
            self.refuse(pod, uid, r).await;
            return;
        }
        let Some(ip) = self
            .ipam
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allocate()
        else {
            let r = Refusal::new("OutOfPodIPs", "no pod IP is left in --pod-cidr");
            self.refuse(pod, uid, r).await;
            return;
        };
        match self.start(pod, uid, ip).await {
            Ok(run) => {
                tracing::info!(pod = %format!("{}/{}", run.ns, run.name), %ip, "pod started");
                self.pods.insert(uid.to_owned(), Slot::Running(run));
            }
            Err(e) => {
                self.ipam
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .release(ip);
                match e {
                    NotReady::Refused(r) => self.refuse(pod, uid, r).await,
                    NotReady::Retry(message) => self.wait(pod, uid, message).await,
                }
            }
        }
    }

    async fn refuse(&mut self, pod: &Pod, uid: &str, r: Refusal) {
        tracing::warn!(pod = %pod.name_any(), reason = r.reason, message = %r.message, "pod refused");
        self.pods.insert(uid.to_owned(), Slot::Refused);
        let status = json!({
            "phase": "Failed",
            "reason": r.reason,
            "message": r.message,
            "hostIP": self.info.ip.to_string(),
            "startTime": status::time(chrono::Utc::now()),
        });
        patch_status(&self.client, pod, status).await;
    }

    async fn wait(&mut self, pod: &Pod, uid: &str, message: String) {
        let (same, delay) = match self.pods.get(uid) {
            Some(Slot::Waiting {
                message: m, delay, ..
            }) => (*m == message, delay.saturating_mul(2).min(WAIT_RETRY.1)),
            _ => (false, WAIT_RETRY.0),
        };
        let retry_at = tokio::time::Instant::now() + delay;
        if same {
            self.pods.insert(
                uid.to_owned(),
                Slot::Waiting {
                    message,
                    retry_at,
                    delay,
                },
            );
            return;
        }
        tracing::info!(pod = %pod.name_any(), %message, "pod waits");
        let containers: Vec<Value> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| {
                json!({
                    "name": c.name, "image": c.image, "imageID": "", "ready": false,
                    "restartCount": 0, "started": false,
                    "state": { "waiting": { "reason": "CreateContainerConfigError", "message": message } },
                })
            })
            .collect();
        let status = json!({
            "phase": "Pending",
            "hostIP": self.info.ip.to_string(),
            "containerStatuses": containers,
        });
        patch_status(&self.client, pod, status).await;
        self.pods.insert(
            uid.to_owned(),
            Slot::Waiting {
                message,
                retry_at,
                delay,
            },
        );
    }

    /// Volumes, env, then a supervised process and a prober per container.
    async fn start(&mut self, pod: &Pod, uid: &str, ip: Ipv4Addr) -> Result<PodRun, NotReady> {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let facts = PodFacts {
            pod,
            ip,
            host_ip: self.info.ip,
        };
        let dir = self
            .data_dir
            .join("pods")
            .join(format!("{ns}_{name}_{uid}"));
        let volume_dirs = volumes::materialize(&self.client, &facts, &dir.join("volumes")).await?;
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| Refusal::new("InvalidPod", "no spec"))?;
        let grace = Duration::from_secs(
            spec.termination_grace_period_seconds
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(30),
        );
        let mut plans = Vec::new();
        for c in &spec.containers {
            let mounts = spec::Mounts::of(c, |v| {
                volume_dirs
                    .get(v)
                    .cloned()
                    .unwrap_or_else(|| dir.join("volumes").join(v))
            });
            let env = self.container_env(pod, &facts, c).await?;
            plans.push(spec::container_plan(c, env, &mounts)?);
        }
        let cfg = Arc::new(PodsConfig {
            termination_grace: grace,
            ..PodsConfig::new(dir.join("logs"))
        });
        let ctx = PodCtx {
            ns: &ns,
            name: &name,
            compact_uid: uid.chars().filter(|c| *c != '-').collect(),
            ip,
            restart: spec::restart_policy(pod),
            dir: &dir,
            cfg,
            grace,
        };
        let mut containers = Vec::new();
        for plan in plans {
            containers.push(self.start_container(&plan, &ctx)?);
        }
        Ok(PodRun {
            ns,
            name,
            uid: uid.to_owned(),
            ip,
            dir,
            grace,
            start_time: status::time(chrono::Utc::now()),
            containers,
            conditions: status::Conditions::default(),
            last_sent: None,
        })
    }

    fn start_container(
        &self,
        plan: &spec::ContainerPlan,
        ctx: &PodCtx<'_>,
    ) -> Result<ContainerRun, NotReady> {
        let PodCtx { ip, grace, .. } = *ctx;
        let mut env = vec![
            ("POD_NAME".to_owned(), ctx.name.to_owned()),
            (meshbench_common::POD_IP_ENV.to_owned(), ip.to_string()),
            (
                meshbench_common::names::HOSTS_ENV.to_owned(),
                self.network.hosts_path().display().to_string(),
            ),
            (
                meshbench_common::names::SEARCH_ENV.to_owned(),
                network::search_domains(ctx.ns),
            ),
        ];
        env.extend(plan.env.iter().cloned());
        let replica_spec = ReplicaSpec {
            service: format!("{}_{}", ctx.compact_uid, plan.name),
            index: 0,
            program: self.program.clone(),
            args: plan.args.clone(),
            env,
            cpu_limit_millis: plan.cpu_limit_millis,
            memory_limit_bytes: plan.memory_limit_bytes,
            cpu_request_millis: plan.cpu_request_millis,
            restart: ctx.restart,
            ip,
            cwd: Some(plan.cwd.clone().unwrap_or_else(|| ctx.dir.to_path_buf())),
            inherit_env: false,
        };
        let replica = Replica::start(
            replica_spec,
            &self.cgroups,
            ctx.cfg.clone(),
            self.events.clone(),
        )
        .map_err(|e| NotReady::Retry(format!("container {:?}: {e}", plan.name)))?;
        let probes = probe::Probes {
            readiness: plan
                .readiness
                .as_ref()
                .and_then(|p| probe::ProbeSpec::from_probe(p, &plan.ports)),
            liveness: plan
                .liveness
                .as_ref()
                .and_then(|p| probe::ProbeSpec::from_probe(p, &plan.ports)),
            startup: plan
                .startup
                .as_ref()
                .and_then(|p| probe::ProbeSpec::from_probe(p, &plan.ports)),
        };
        let ready = Arc::new(AtomicBool::new(false));
        let prober = tokio::spawn(probe::run(
            probes,
            ip,
            replica.watch(),
            ready.clone(),
            grace,
        ));
        Ok(ContainerRun {
            name: plan.name.clone(),
            image: plan.image.clone(),
            replica,
            ready,
            prober,
        })
    }

    /// `envFrom`, then `env` in order (later entries win), as the kubelet builds it.
    async fn container_env(
        &self,
        pod: &Pod,
        facts: &PodFacts<'_>,
        c: &k8s_openapi::api::core::v1::Container,
    ) -> Result<Vec<(String, String)>, NotReady> {
        let mut env =
            volumes::env_from(&self.client, pod, c.env_from.as_deref().unwrap_or_default()).await?;
        let entries = c.env.as_deref().unwrap_or_default();
        for entry in spec::local_env(facts, entries)? {
            match entry {
                Ok(kv) => env.push(kv),
                Err(e) => {
                    if let Some(v) = volumes::api_env(&self.client, pod, e).await? {
                        env.push((e.name.clone(), v));
                    }
                }
            }
        }
        // Later definitions of a name replace earlier ones, keeping the first position.
        let mut out: Vec<(String, String)> = Vec::new();
        let mut at: BTreeMap<String, usize> = BTreeMap::new();
        for (k, v) in env {
            match at.get(&k) {
                Some(&i) => out[i].1 = v,
                None => {
                    at.insert(k.clone(), out.len());
                    out.push((k, v));
                }
            }
        }
        Ok(out)
    }

    /// Sends the status of every running pod that changed since its last report.
    async fn report(&mut self) {
        let host_ip = self.info.ip;
        for slot in self.pods.values_mut() {
            let Slot::Running(run) = slot else { continue };
            let views: Vec<status::ContainerView> = run
                .containers
                .iter()
                .map(|c| status::ContainerView {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    status: c.replica.status(),
                    ready: c.ready.load(std::sync::atomic::Ordering::Relaxed),
                })
                .collect();
            let st = status::pod_status(
                run.ip,
                host_ip,
                &run.start_time,
                &views,
                &mut run.conditions,
            );
            if run.last_sent.as_ref() == Some(&st) {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &run.ns);
            let patch = Patch::Merge(json!({ "status": st }));
            match api
                .patch_status(&run.name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => run.last_sent = Some(st),
                Err(kube::Error::Api(s)) if s.code == 404 => run.last_sent = Some(st),
                Err(e) => tracing::warn!(pod = %run.name, error = %e, "cannot report pod status"),
            }
        }
    }

    /// Stops every pod (the node is going away) within a bounded time.
    async fn shutdown(&mut self) {
        let runs: Vec<PodRun> = self
            .pods
            .drain()
            .filter_map(|(_, s)| match s {
                Slot::Running(r) => Some(r),
                _ => None,
            })
            .collect();
        for run in runs {
            let grace = run.grace.min(Duration::from_secs(5));
            self.stopping
                .spawn(stop_pod(run, grace, None, self.ipam.clone()));
        }
        while self.stopping.join_next().await.is_some() {}
        let cgroups = self.cgroups.clone();
        let _ = tokio::task::spawn_blocking(move || cgroups.cleanup()).await;
    }
}

async fn patch_status(client: &Client, pod: &Pod, status: Value) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let patch = Patch::Merge(json!({ "status": status }));
    match api
        .patch_status(&pod.name_any(), &PatchParams::default(), &patch)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tracing::warn!(pod = %pod.name_any(), error = %e, "cannot report pod status"),
    }
}

type Deletion = Option<(Api<Pod>, String, String)>;

/// Stops a pod's containers (SIGTERM, `grace`, SIGKILL), frees its IP and directory,
/// then removes the pod object for good (grace 0, only that very pod), as the kubelet
/// does once a deleted pod's containers are gone.
async fn stop_pod(run: PodRun, grace: Duration, delete: Deletion, ipam: Arc<Mutex<Ipam>>) {
    let stops = run.containers.into_iter().map(|c| {
        c.prober.abort();
        c.replica.stop(Some(grace))
    });
    futures::future::join_all(stops).await;
    ipam.lock()
        .unwrap_or_else(|p| p.into_inner())
        .release(run.ip);
    let dir = run.dir.clone();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    tracing::info!(pod = %format!("{}/{}", run.ns, run.name), uid = %run.uid, "pod stopped");
    stop_pod_none(delete).await;
}

async fn stop_pod_none(delete: Deletion) {
    let Some((api, name, uid)) = delete else {
        return;
    };
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => tracing::warn!(pod = %name, error = %e, "cannot delete the stopped pod"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_ones_the_api_accepts_in_endpoint_slices() {
        let c = Cidr::parse("198.18.7.9/16").unwrap();
        assert_eq!(c.to_string(), "198.18.0.0/16");
        assert_eq!(c.first(), Ipv4Addr::new(198, 18, 0, 1));
        assert!(
            Cidr::parse("127.1.0.0/16")
                .unwrap_err()
                .contains("loopback")
        );
        assert!(Cidr::parse("169.254.0.0/16").is_err());
        assert!(Cidr::parse("198.18.0.0").is_err());
        assert!(Cidr::parse("198.18.0.0/31").is_err());
        let ten = Cidr::parse("10.0.0.0/9").unwrap();
        assert!(ten.overlaps(&Cidr::parse("10.1.0.0/16").unwrap()));
        let pods = Cidr::parse("198.18.0.0/16").unwrap();
        assert!(!pods.overlaps(&Cidr::parse("198.19.0.0/16").unwrap()));
    }

    #[test]
    fn addresses_are_not_reused_at_once() {
        // .0 network, .1 the node, .7 broadcast: five for pods.
        let mut ipam = Ipam::new(Cidr::parse("198.18.0.0/29").unwrap());
        let a = ipam.allocate().unwrap();
        assert_eq!(a, Ipv4Addr::new(198, 18, 0, 2));
        ipam.release(a);
        let next: Vec<Ipv4Addr> = (0..4).map(|_| ipam.allocate().unwrap()).collect();
        assert_eq!(
            next[0],
            Ipv4Addr::new(198, 18, 0, 3),
            "a freed address waits its turn"
        );
        assert_eq!(next[3], Ipv4Addr::new(198, 18, 0, 6));
        assert_eq!(ipam.allocate(), Some(a), "then it comes round again");
        assert_eq!(ipam.allocate(), None);
    }
}
