//! Service names for pods run by the node agent (`meshbench node`), which has no DNS
//! server and cannot give a process a resolv.conf of its own: the agent writes a hosts
//! file of every Service's `<name>.<namespace>.svc.cluster.local` → ClusterIP and tells
//! each pod where it is ([`HOSTS_ENV`]) and its search domains ([`SEARCH_ENV`], as the
//! kubelet writes them into a pod's resolv.conf). The worker's and loadgen's HTTP clients
//! look names up here first and fall back to the system resolver, so outside the agent
//! (no env) nothing changes.

use std::net::IpAddr;

/// Env var with the path of the hosts file (`/etc/hosts` format).
pub const HOSTS_ENV: &str = "MESHBENCH_HOSTS";
/// Env var with the pod's search domains, space-separated
/// (`<ns>.svc.cluster.local svc.cluster.local cluster.local`).
pub const SEARCH_ENV: &str = "MESHBENCH_DNS_SEARCH";

/// A name with fewer dots than this is tried with the search domains first (the
/// kubelet's `ndots:5`).
const NDOTS: usize = 5;

/// The address of `host` from the agent's hosts file, trying the search domains as a
/// resolver would; `None` without the env, for an address literal, or for a name the
/// file does not hold (the caller then asks the system resolver).
pub fn lookup(host: &str) -> Option<IpAddr> {
    let path = std::env::var_os(HOSTS_ENV)?;
    if host.parse::<IpAddr>().is_ok() {
        return None;
    }
    // The agent replaces the file (rename) as Services come and go: one stat per new
    // connection tells whether the copy read before is still current.
    static CACHE: std::sync::Mutex<Option<(std::time::SystemTime, String)>> =
        std::sync::Mutex::new(None);
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if cache.as_ref().map(|(t, _)| *t) != Some(modified) {
        *cache = Some((modified, std::fs::read_to_string(&path).ok()?));
    }
    let search = std::env::var(SEARCH_ENV).unwrap_or_default();
    lookup_in(&cache.as_ref()?.1, &search, host)
}

/// [`lookup`] over the given file content and search list.
pub fn lookup_in(hosts: &str, search: &str, host: &str) -> Option<IpAddr> {
    let host = host.to_ascii_lowercase();
    let find = |name: &str| {
        hosts.lines().find_map(|line| {
            let line = line.split('#').next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            let ip: IpAddr = fields.next()?.parse().ok()?;
            fields.any(|n| n.eq_ignore_ascii_case(name)).then_some(ip)
        })
    };
    if let Some(absolute) = host.strip_suffix('.') {
        return find(absolute);
    }
    let expanded = search
        .split_whitespace()
        .map(|domain| format!("{host}.{domain}"));
    if host.matches('.').count() < NDOTS {
        expanded
            .chain(std::iter::once(host.clone()))
            .find_map(|n| find(&n))
    } else {
        std::iter::once(host.clone())
            .chain(expanded)
            .find_map(|n| find(&n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTS: &str = "# written by meshbench node\n127.2.0.10 backend.shop.svc.cluster.local\n127.2.0.11 backend.other.svc.cluster.local\n";
    const SEARCH: &str = "shop.svc.cluster.local svc.cluster.local cluster.local";

    #[test]
    fn short_names_resolve_in_the_pods_namespace_first() {
        let ip = |h: &str| lookup_in(HOSTS, SEARCH, h).map(|i| i.to_string());
        assert_eq!(ip("backend").as_deref(), Some("127.2.0.10"));
        assert_eq!(ip("backend.other").as_deref(), Some("127.2.0.11"));
        assert_eq!(ip("backend.other.svc").as_deref(), Some("127.2.0.11"));
        assert_eq!(
            ip("Backend.Other.svc.cluster.local.").as_deref(),
            Some("127.2.0.11")
        );
        assert_eq!(ip("frontend"), None);
        assert_eq!(ip("example.com"), None);
    }
}
