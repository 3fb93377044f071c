//! The Node object and its heartbeats, as the kubelet keeps them: the node registers
//! itself with its capacity and allocatable, renews a Lease in `kube-node-lease` every
//! 10 s (what the node lifecycle controller watches), and posts its status (conditions
//! with heartbeat times) every minute.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use meshbench_runtime::node::Resources;

/// The kubelet's default `nodeLeaseDurationSeconds`.
const LEASE_SECONDS: i32 = 40;
/// The kubelet renews its lease at a quarter of the duration.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// `nodeStatusReportFrequency`'s role: post the status though nothing changed.
pub const STATUS_EVERY: Duration = Duration::from_secs(60);
/// The kubelet's default `maxPods`.
const MAX_PODS: u32 = 110;

/// What the node reports about itself.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// The machine.
    pub capacity: Resources,
    /// What pods may request.
    pub allocatable: Resources,
    /// The node's address (pods reach it there).
    pub ip: Ipv4Addr,
    /// Port of the agent's own endpoint (`status.daemonEndpoints.kubeletEndpoint`).
    pub port: u16,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn resources(r: Resources) -> Value {
    json!({
        "cpu": format!("{}m", r.cpu_millis),
        "memory": format!("{}Ki", r.memory_bytes / 1024),
        "pods": MAX_PODS.to_string(),
    })
}

impl NodeInfo {
    /// The Node's status: conditions with fresh heartbeats, resources, addresses.
    pub fn status(&self, since: &str) -> Value {
        let t = now();
        let condition = |kind: &str, status: &str, reason: &str, message: &str| {
            json!({
                "type": kind, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": t, "lastTransitionTime": since,
            })
        };
        json!({
            "capacity": resources(self.capacity),
            "allocatable": resources(self.allocatable),
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "meshbench node agent: no memory pressure tracking"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "meshbench node agent: no disk pressure tracking"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "meshbench node agent: no PID pressure tracking"),
                condition("Ready", "True", "KubeletReady", "meshbench node agent is posting ready status"),
            ],
            "addresses": [
                { "type": "InternalIP", "address": self.ip.to_string() },
                { "type": "Hostname", "address": self.name },
            ],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": self.port } },
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": kernel_version(),
                "osImage": "meshbench node agent (processes, no containers)",
                "containerRuntimeVersion": format!("meshbench://{}", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": concat!("meshbench-", env!("CARGO_PKG_VERSION")),
                "kubeProxyVersion": "",
                "operatingSystem": std::env::consts::OS,
                "architecture": go_arch(),
            },
        })
    }

    fn labels(&self) -> Value {
        json!({
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": std::env::consts::OS,
            "kubernetes.io/arch": go_arch(),
            "meshbench.io/node-agent": "true",
        })
    }
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The architecture as Kubernetes names it (GOARCH).
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Creates the Node (or takes over an existing one of that name) and posts its status.
pub async fn register(client: &Client, info: &NodeInfo) -> kube::Result<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": { "name": info.name, "labels": info.labels() },
        "spec": {},
    }))
    .map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        // Registered before (an agent restart): keep it, refresh the labels.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            nodes
                .patch(
                    &info.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "metadata": { "labels": info.labels() } })),
                )
                .await?;
        }
        Err(e) => return Err(e),
    }
    let since = now();
    post_status(client, info, &since).await?;
    Ok(since)
}

/// Posts the node's status (heartbeat times refreshed).
pub async fn post_status(client: &Client, info: &NodeInfo, since: &str) -> kube::Result<()> {
    Api::<Node>::all(client.clone())
        .patch_status(
            &info.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": info.status(since) })),
        )
        .await
        .map(drop)
}

/// Creates or renews the node's Lease (owned by the Node, so it goes with it).
pub async fn renew_lease(client: &Client, info: &NodeInfo) -> kube::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew = MicroTime(k8s_openapi::jiff::Timestamp::now());
    if let Some(mut lease) = leases.get_opt(&info.name).await? {
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.renew_time = Some(renew);
        spec.holder_identity = Some(info.name.clone());
        spec.lease_duration_seconds = Some(LEASE_SECONDS);
        leases
            .replace(&info.name, &PostParams::default(), &lease)
            .await?;
        return Ok(());
    }
    let node = Api::<Node>::all(client.clone()).get(&info.name).await?;
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {
            "name": info.name,
            "namespace": "kube-node-lease",
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": info.name,
                "uid": node.metadata.uid.unwrap_or_default(),
            }],
        },
        "spec": {
            "holderIdentity": info.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": renew,
        },
    }))
    .map_err(kube::Error::SerdeError)?;
    leases.create(&PostParams::default(), &lease).await?;
    Ok(())
}
