//! Services on one machine, as kube-proxy and cluster DNS provide them in a cluster.
//!
//! - ClusterIPs are local addresses: the agent routes the API server's
//!   `--service-cluster-ip-range` (`--service-cidr`, 198.19.0.0/16 by default) to `lo`
//!   as a `local` route. For every
//!   TCP port of every Service the agent listens on `ClusterIP:port` and forwards each
//!   connection to a ready endpoint of that port from the Service's EndpointSlices,
//!   chosen at random per connection (kube-proxy's iptables mode). With no ready
//!   endpoint the connection is closed at once (kube-proxy rejects it).
//! - Names: a hosts file of `<service>.<namespace>.svc.cluster.local` → ClusterIP that
//!   pods are pointed at, with their search domains (see `meshbench_common::names`).
//!
//! A Service whose ClusterIP cannot be bound (outside `--service-cidr`) gets no proxy,
//! with a warning.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The search domains of a pod in `ns`, as the kubelet writes them into resolv.conf.
pub fn search_domains(ns: &str) -> String {
    format!("{ns}.svc.cluster.local svc.cluster.local cluster.local")
}

struct Proxy {
    backends: watch::Sender<Vec<SocketAddr>>,
    task: JoinHandle<()>,
}

/// The agent's Service proxies and hosts file.
pub struct Network {
    hosts_path: PathBuf,
    hosts: String,
    proxies: HashMap<SocketAddr, Proxy>,
    warned: BTreeSet<String>,
}

impl Drop for Network {
    fn drop(&mut self) {
        for p in self.proxies.values() {
            p.task.abort();
        }
    }
}

impl Network {
    /// Proxies none yet; the hosts file goes to `hosts_path`.
    pub fn new(hosts_path: PathBuf) -> Self {
        Self {
            hosts_path,
            hosts: String::new(),
            proxies: HashMap::new(),
            warned: BTreeSet::new(),
        }
    }

    /// The hosts file pods read.
    pub fn hosts_path(&self) -> &Path {
        &self.hosts_path
    }

    /// Brings names and proxies in line with the Services and EndpointSlices.
    pub fn sync(&mut self, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) {
        let mut hosts = String::from("# meshbench node: Service names and their ClusterIPs\n");
        let mut desired: HashMap<SocketAddr, Vec<SocketAddr>> = HashMap::new();
        for svc in services {
            let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
            let Some(spec) = &svc.spec else { continue };
            let Some(ip) = spec
                .cluster_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
            else {
                continue;
            };
            hosts.push_str(&format!("{ip} {name}.{ns}.svc.cluster.local\n"));
            for port in spec.ports.iter().flatten() {
                if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                    continue;
                }
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                let backends = endpoints(slices, &ns, &name, port.name.as_deref());
                desired.insert(SocketAddr::new(ip, number), backends);
            }
        }
        self.write_hosts(hosts);
        self.proxies.retain(|addr, p| {
            let keep = desired.contains_key(addr);
            if !keep {
                p.task.abort();
            }
            keep
        });
        for (addr, backends) in desired {
            match self.proxies.get(&addr) {
                Some(p) => {
                    p.backends.send_if_modified(|old| {
                        let changed = *old != backends;
                        *old = backends;
                        changed
                    });
                }
                None => match std::net::TcpListener::bind(addr).and_then(|l| {
                    l.set_nonblocking(true)?;
                    TcpListener::from_std(l)
                }) {
                    Ok(listener) => {
                        let (tx, rx) = watch::channel(backends);
                        let task = tokio::spawn(serve(listener, rx));
                        self.proxies.insert(addr, Proxy { backends: tx, task });
                    }
                    Err(e) => {
                        if self.warned.insert(addr.to_string()) {
                            tracing::warn!(%addr, error = %e, "cannot listen on the ClusterIP");
                        }
                    }
                },
            }
        }
    }

    fn write_hosts(&mut self, hosts: String) {
        if hosts == self.hosts {
            return;
        }
        let tmp = self.hosts_path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, &hosts).and_then(|()| std::fs::rename(&tmp, &self.hosts_path));
        match written {
            Ok(()) => self.hosts = hosts,
            Err(e) => {
                tracing::warn!(path = %self.hosts_path.display(), error = %e, "cannot write the hosts file")
            }
        }
    }
}

/// The ready endpoints of port `port_name` of Service `ns/name`.
fn endpoints(
    slices: &[Arc<EndpointSlice>],
    ns: &str,
    name: &str,
    port_name: Option<&str>,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for slice in slices {
        if slice.namespace().as_deref() != Some(ns)
            || slice.labels().get(SERVICE_NAME_LABEL).map(String::as_str) != Some(name)
            || slice.address_type != "IPv4"
        {
            continue;
        }
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name.unwrap_or(""))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            out.extend(
                ep.addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    out.sort();
    out
}

/// Accepts connections on a ClusterIP port and splices each to a random ready endpoint.
async fn serve(listener: TcpListener, backends: watch::Receiver<Vec<SocketAddr>>) {
    loop {
        let inbound = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "service proxy accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let target = {
            let list = backends.borrow();
            if list.is_empty() {
                continue;
            }
            list[rand::random_range(0..list.len())]
        };
        tokio::spawn(splice(inbound, target));
    }
}

async fn splice(mut inbound: TcpStream, target: SocketAddr) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
