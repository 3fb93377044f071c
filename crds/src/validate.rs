//! Semantic validation beyond what a schema can express. Every rule reports every
//! violation, each at its exact field path, so a user fixes a spec in one pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::benchmark::{
    Benchmark, BenchmarkSpec, COLLECTION_QUERY_NAMES, COLLECTION_QUERY_PLACEHOLDERS, Collection,
    LoadKind, LoadModel, Profile, Slos, Stage, Sweep, Target, Warmup,
};
use crate::diag::suggest;
use crate::mesh::{
    Autoscaling, CallSpec, Delay, EndpointBehavior, EndpointSpec, MeshDefaults, Resources,
    ServiceMesh, ServiceMeshSpec, ServiceSpec, limits,
};
use crate::resolve::{ResolvedResources, endpoint_path, resolved_resources};
use crate::units::{self, Duration, UnitError};

/// A problem at a field path, before it is placed in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// Field path, e.g. `spec.services[1].name`; empty for the whole document.
    pub path: String,
    /// What is wrong: the value and what was expected.
    pub message: String,
    /// A suggestion.
    pub hint: Option<String>,
}

impl Issue {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Whether `s` is a DNS-1123 label (Kubernetes object and Service names).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_name(out: &mut Vec<Issue>, path: &str, name: Option<&str>) {
    match name {
        None | Some("") => out.push(Issue::new(path, "missing; expected a DNS-1123 name (e.g. \"my-mesh\")")),
        Some(n) if !is_dns_label(n) => out.push(
            Issue::new(
                path,
                format!("{n:?} is not a DNS-1123 label; expected at most 63 lower case letters, digits and '-', starting and ending with a letter or digit"),
            )
            .hint(format!("use {:?}", to_dns_label(n))),
        ),
        Some(_) => {}
    }
}

/// Turns an arbitrary name into a valid DNS-1123 label (used by hints and the importer).
pub fn to_dns_label(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let out = out.trim_matches('-');
    let mut out: String = out.chars().take(63).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() { "x".to_string() } else { out }
}

fn check_duration(
    out: &mut Vec<Issue>,
    path: &str,
    d: &Duration,
    positive: bool,
) -> Option<std::time::Duration> {
    match d.try_get() {
        Ok(v) if positive && v.is_zero() => {
            out.push(Issue::new(
                path,
                format!("{:?} is zero; expected a positive duration", d.as_str()),
            ));
            None
        }
        Ok(v) => Some(v),
        Err(e) => {
            out.push(Issue::new(path, e.to_string()));
            None
        }
    }
}

fn unit_issue(path: &str, e: UnitError) -> Issue {
    Issue::new(path, e.to_string())
}

fn check_cpu(out: &mut Vec<Issue>, path: &str, q: &Option<Quantity>) -> Option<u64> {
    let q = q.as_ref()?;
    units::cpu_millis(q)
        .map_err(|e| out.push(unit_issue(path, e)))
        .ok()
}

fn check_memory(out: &mut Vec<Issue>, path: &str, q: &Option<Quantity>) -> Option<u64> {
    let q = q.as_ref()?;
    units::memory_bytes(q)
        .map_err(|e| out.push(unit_issue(path, e)))
        .ok()
}

fn check_probability(out: &mut Vec<Issue>, path: &str, p: Option<f64>) {
    if let Some(p) = p
        && !(0.0..=1.0).contains(&p)
    {
        out.push(Issue::new(
            path,
            format!("{p} is outside [0, 1]; expected a probability"),
        ));
    }
}

fn check_range(out: &mut Vec<Issue>, path: &str, v: Option<i64>, lo: i64, hi: i64, what: &str) {
    if let Some(v) = v
        && !(lo..=hi).contains(&v)
    {
        out.push(Issue::new(
            path,
            format!("{v} is out of range; expected {what} between {lo} and {hi}"),
        ));
    }
}

fn check_resources(out: &mut Vec<Issue>, path: &str, r: &Option<Resources>) {
    let Some(r) = r else { return };
    if let Some(req) = &r.requests {
        check_cpu(out, &format!("{path}.requests.cpu"), &req.cpu);
        check_memory(out, &format!("{path}.requests.memory"), &req.memory);
    }
    if let Some(lim) = &r.limits {
        check_cpu(out, &format!("{path}.limits.cpu"), &lim.cpu);
        check_memory(out, &format!("{path}.limits.memory"), &lim.memory);
    }
}

fn check_delay(out: &mut Vec<Issue>, path: &str, d: &Delay) {
    let set = [
        d.fixed.is_some(),
        d.uniform.is_some(),
        d.exponential.is_some(),
        d.log_normal.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if set != 1 {
        out.push(Issue::new(
            path,
            format!("sets {set} distributions; expected exactly one of fixed, uniform, exponential, logNormal"),
        ));
    }
    if let Some(f) = &d.fixed {
        check_duration(out, &format!("{path}.fixed"), f, false);
    }
    if let Some(u) = &d.uniform {
        let lo = check_duration(out, &format!("{path}.uniform.min"), &u.min, false);
        let hi = check_duration(out, &format!("{path}.uniform.max"), &u.max, false);
        if let (Some(lo), Some(hi)) = (lo, hi)
            && lo > hi
        {
            out.push(Issue::new(
                format!("{path}.uniform"),
                format!("min {} exceeds max {}; expected min <= max", u.min, u.max),
            ));
        }
    }
    if let Some(e) = &d.exponential {
        check_duration(out, &format!("{path}.exponential.mean"), &e.mean, true);
    }
    if let Some(l) = &d.log_normal {
        check_duration(out, &format!("{path}.logNormal.median"), &l.median, true);
        if !(0.0..=5.0).contains(&l.sigma) || !l.sigma.is_finite() {
            out.push(Issue::new(
                format!("{path}.logNormal.sigma"),
                format!(
                    "{} is out of range; expected a shape between 0 and 5",
                    l.sigma
                ),
            ));
        }
    }
}

fn check_behavior(out: &mut Vec<Issue>, path: &str, b: &EndpointBehavior) {
    if let Some(c) = &b.cpu {
        check_duration(out, &format!("{path}.cpu"), c, false);
    }
    check_memory(out, &format!("{path}.memory"), &b.memory);
    if let Some(d) = &b.delay {
        check_delay(out, &format!("{path}.delay"), d);
    }
    check_range(
        out,
        &format!("{path}.responseSize"),
        b.response_size,
        0,
        limits::MAX_RESPONSE_BYTES,
        "a size in bytes",
    );
    check_probability(out, &format!("{path}.errorRate"), b.error_rate);
    check_range(
        out,
        &format!("{path}.maxInFlight"),
        b.max_in_flight.map(i64::from),
        1,
        1_000_000,
        "a request count",
    );
    if let Some(t) = &b.call_timeout {
        check_duration(out, &format!("{path}.callTimeout"), t, true);
    }
}

/// Checks one mesh on its own.
pub fn validate_mesh(mesh: &ServiceMesh) -> Vec<Issue> {
    let mut out = Vec::new();
    check_name(&mut out, "metadata.name", mesh.metadata.name.as_deref());
    let spec = &mesh.spec;
    if let Some(d) = &spec.defaults {
        check_mesh_defaults(&mut out, d);
    }
    check_service_count(&mut out, spec);
    check_service_names(&mut out, spec);

    // Endpoints by service, for call targets.
    let endpoints = endpoints_by_service(spec);
    for (i, svc) in spec.services.iter().enumerate() {
        check_service(&mut out, spec, &endpoints, i, svc);
    }
    check_cycles(&mut out, mesh);
    out
}

/// Defaults are checked where they are written, whether or not any service inherits them.
fn check_mesh_defaults(out: &mut Vec<Issue>, d: &MeshDefaults) {
    check_range(
        out,
        "spec.defaults.replicas",
        d.replicas.map(i64::from),
        0,
        limits::MAX_REPLICAS.into(),
        "a replica count",
    );
    check_range(
        out,
        "spec.defaults.port",
        d.port.map(i64::from),
        1,
        65535,
        "a TCP port",
    );
    check_resources(out, "spec.defaults.resources", &d.resources);
    if let Some(b) = &d.endpoint {
        check_behavior(out, "spec.defaults.endpoint", b);
    }
    if let Some(s) = &d.startup_delay {
        check_duration(out, "spec.defaults.startupDelay", s, false);
    }
}

/// A mesh has at least one service and at most `limits::MAX_SERVICES`.
fn check_service_count(out: &mut Vec<Issue>, spec: &ServiceMeshSpec) {
    if spec.services.is_empty() {
        out.push(Issue::new(
            "spec.services",
            "is empty; expected at least one service",
        ));
    }
    if spec.services.len() > limits::MAX_SERVICES {
        out.push(Issue::new(
            "spec.services",
            format!(
                "has {} services; expected at most {}",
                spec.services.len(),
                limits::MAX_SERVICES
            ),
        ));
    }
}

/// Service names become Kubernetes names and call targets: DNS-1123 labels, each used once.
fn check_service_names(out: &mut Vec<Issue>, spec: &ServiceMeshSpec) {
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    for (i, svc) in spec.services.iter().enumerate() {
        let p = format!("spec.services[{i}]");
        check_name(out, &format!("{p}.name"), Some(&svc.name));
        if let Some(first) = first_seen.get(svc.name.as_str()) {
            out.push(Issue::new(
                format!("{p}.name"),
                format!(
                    "duplicate service name {:?}; already used by spec.services[{first}]",
                    svc.name
                ),
            ));
        } else {
            first_seen.insert(&svc.name, i);
        }
    }
}

/// The endpoint paths of each service, by service name (a duplicate name merges its paths).
fn endpoints_by_service(spec: &ServiceMeshSpec) -> HashMap<&str, BTreeSet<&str>> {
    let mut endpoints: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for svc in &spec.services {
        let eps = endpoints.entry(&svc.name).or_default();
        for ep in &svc.endpoints {
            eps.insert(ep.path.as_str());
        }
    }
    endpoints
}

/// Checks service `i`; `endpoints` holds every service's endpoint paths, for call targets.
fn check_service(
    out: &mut Vec<Issue>,
    spec: &ServiceMeshSpec,
    endpoints: &HashMap<&str, BTreeSet<&str>>,
    i: usize,
    svc: &ServiceSpec,
) {
    let p = format!("spec.services[{i}]");
    check_service_settings(out, &p, svc);

    // Requests and limits after defaults are applied.
    let res = resolved_resources(spec, svc);
    check_requests_within_limits(out, &p, &res);
    check_autoscaling(out, spec, svc, &p, &res);

    check_endpoint_count(out, &p, svc);
    check_endpoints(out, spec, endpoints, &p, svc, &res);
}

/// Fields of the service that are checked on their own, as written (before defaults apply).
fn check_service_settings(out: &mut Vec<Issue>, p: &str, svc: &ServiceSpec) {
    check_range(
        out,
        &format!("{p}.replicas"),
        svc.replicas.map(i64::from),
        0,
        limits::MAX_REPLICAS.into(),
        "a replica count",
    );
    check_range(
        out,
        &format!("{p}.port"),
        svc.port.map(i64::from),
        1,
        65535,
        "a TCP port",
    );
    check_resources(out, &format!("{p}.resources"), &svc.resources);
    if let Some(s) = &svc.startup_delay {
        check_duration(out, &format!("{p}.startupDelay"), s, false);
    }
    if let Some(idle) = &svc.idle {
        check_cpu(out, &format!("{p}.idle.cpu"), &idle.cpu);
        check_memory(out, &format!("{p}.idle.memory"), &idle.memory);
    }
    if let Some(r) = &svc.readiness {
        check_range(
            out,
            &format!("{p}.readiness.maxInFlight"),
            r.max_in_flight.map(i64::from),
            1,
            1_000_000,
            "a request count",
        );
        if let Some(period) = &r.period {
            check_duration(out, &format!("{p}.readiness.period"), period, true);
        }
    }
    if let Some(e) = &svc.expose {
        check_range(
            out,
            &format!("{p}.expose.nodePort"),
            e.node_port.map(i64::from),
            30000,
            32767,
            "a node port",
        );
    }
}

/// Kubernetes rejects a request above its limit; either may come from the mesh defaults.
fn check_requests_within_limits(out: &mut Vec<Issue>, p: &str, res: &ResolvedResources) {
    if let (Some(rq), Some(lm)) = (res.cpu_request_millis, res.cpu_limit_millis)
        && rq > lm
    {
        out.push(Issue::new(
            format!("{p}.resources.requests.cpu"),
            format!(
                "request {} exceeds limit {}; expected requests <= limits",
                units::cpu_quantity(rq).0,
                units::cpu_quantity(lm).0
            ),
        ));
    }
    if let (Some(rq), Some(lm)) = (res.memory_request_bytes, res.memory_limit_bytes)
        && rq > lm
    {
        out.push(Issue::new(
            format!("{p}.resources.requests.memory"),
            format!(
                "request {} exceeds limit {}; expected requests <= limits",
                units::memory_quantity(rq).0,
                units::memory_quantity(lm).0
            ),
        ));
    }
}

/// The effective autoscaling (own or inherited), reported where it is written.
fn check_autoscaling(
    out: &mut Vec<Issue>,
    spec: &ServiceMeshSpec,
    svc: &ServiceSpec,
    p: &str,
    res: &ResolvedResources,
) {
    // Autoscaling, after defaults.
    let auto = svc
        .autoscaling
        .as_ref()
        .or(spec.defaults.as_ref().and_then(|d| d.autoscaling.as_ref()));
    let auto_path = if svc.autoscaling.is_some() {
        format!("{p}.autoscaling")
    } else {
        "spec.defaults.autoscaling".to_string()
    };
    if let Some(a) = auto
        && a.enabled != Some(false)
    {
        check_autoscaling_replicas(out, &auto_path, a);
        check_autoscaling_cpu(out, &auto_path, a, p, svc, res);
    }
}

/// An HPA needs replica bounds within limits, an explicit maximum, and min <= max.
fn check_autoscaling_replicas(out: &mut Vec<Issue>, auto_path: &str, a: &Autoscaling) {
    check_range(
        out,
        &format!("{auto_path}.minReplicas"),
        a.min_replicas.map(i64::from),
        1,
        limits::MAX_REPLICAS.into(),
        "a replica count",
    );
    check_range(
        out,
        &format!("{auto_path}.maxReplicas"),
        a.max_replicas.map(i64::from),
        1,
        limits::MAX_REPLICAS.into(),
        "a replica count",
    );
    if a.max_replicas.is_none() {
        out.push(Issue::new(
            format!("{auto_path}.maxReplicas"),
            "missing; an autoscaled service needs maxReplicas",
        ));
    }
    if let (Some(lo), Some(hi)) = (a.min_replicas, a.max_replicas)
        && lo > hi
    {
        out.push(Issue::new(
            format!("{auto_path}.minReplicas"),
            format!("minReplicas {lo} exceeds maxReplicas {hi}; expected min <= max"),
        ));
    }
}

/// CPU utilization is a percentage of the CPU request, so it needs a valid target and request.
fn check_autoscaling_cpu(
    out: &mut Vec<Issue>,
    auto_path: &str,
    a: &Autoscaling,
    p: &str,
    svc: &ServiceSpec,
    res: &ResolvedResources,
) {
    if let Some(t) = a.target_cpu_utilization
        && !(1..=100).contains(&t)
    {
        out.push(Issue::new(
            format!("{auto_path}.targetCPUUtilization"),
            format!("{t} is outside 1–100; expected a percentage of the CPU request"),
        ));
    }
    if res.cpu_request_millis.unwrap_or(0) == 0 {
        out.push(
            Issue::new(
                format!("{p}.resources.requests.cpu"),
                format!("service {:?} is autoscaled on CPU utilization but has no CPU request; expected a request greater than 0", svc.name),
            )
            .hint("set resources.requests.cpu (utilization is measured against it)"),
        );
    }
}

/// A service serves at least one endpoint and at most `limits::MAX_ENDPOINTS`.
fn check_endpoint_count(out: &mut Vec<Issue>, p: &str, svc: &ServiceSpec) {
    if svc.endpoints.is_empty() {
        out.push(Issue::new(
            format!("{p}.endpoints"),
            "is empty; expected at least one endpoint",
        ));
    }
    if svc.endpoints.len() > limits::MAX_ENDPOINTS {
        out.push(Issue::new(
            format!("{p}.endpoints"),
            format!(
                "has {} endpoints; expected at most {}",
                svc.endpoints.len(),
                limits::MAX_ENDPOINTS
            ),
        ));
    }
}

/// Checks each endpoint of a service in order: path, behaviour, CPU limit, then its calls.
fn check_endpoints(
    out: &mut Vec<Issue>,
    spec: &ServiceMeshSpec,
    endpoints: &HashMap<&str, BTreeSet<&str>>,
    p: &str,
    svc: &ServiceSpec,
    res: &ResolvedResources,
) {
    let mut paths: HashMap<&str, usize> = HashMap::new();
    for (j, ep) in svc.endpoints.iter().enumerate() {
        let ep_path = format!("{p}.endpoints[{j}]");
        check_endpoint_path(out, &mut paths, p, &ep_path, j, ep);
        check_behavior(out, &ep_path, &ep.behavior());
        check_endpoint_cpu_limit(out, spec, p, ep, res);
        check_calls(out, spec, endpoints, &ep_path, ep);
    }
}

/// Calls address endpoints by path, so a path is absolute and unique within its service.
fn check_endpoint_path<'a>(
    out: &mut Vec<Issue>,
    paths: &mut HashMap<&'a str, usize>,
    p: &str,
    ep_path: &str,
    j: usize,
    ep: &'a EndpointSpec,
) {
    if !ep.path.starts_with('/') {
        out.push(
            Issue::new(
                format!("{ep_path}.path"),
                format!(
                    "{:?} is not an absolute path; expected it to start with '/'",
                    ep.path
                ),
            )
            .hint(format!("use \"/{}\"", ep.path)),
        );
    }
    if let Some(first) = paths.get(ep.path.as_str()) {
        out.push(Issue::new(
            format!("{ep_path}.path"),
            format!(
                "duplicate endpoint path {:?}; already used by {p}.endpoints[{first}]",
                ep.path
            ),
        ));
    } else {
        paths.insert(&ep.path, j);
    }
}

/// A CPU limit of 0 starves an endpoint that burns CPU (own or default): no request finishes.
fn check_endpoint_cpu_limit(
    out: &mut Vec<Issue>,
    spec: &ServiceMeshSpec,
    p: &str,
    ep: &EndpointSpec,
    res: &ResolvedResources,
) {
    let cpu = ep
        .cpu
        .as_ref()
        .or(spec
            .defaults
            .as_ref()
            .and_then(|d| d.endpoint.as_ref())
            .and_then(|b| b.cpu.as_ref()))
        .and_then(|d| d.try_get().ok())
        .unwrap_or_default();
    if !cpu.is_zero() && res.cpu_limit_millis == Some(0) {
        out.push(Issue::new(
            format!("{p}.resources.limits.cpu"),
            format!(
                "CPU limit is 0 while endpoint {:?} burns {} of CPU per request; expected a positive limit (no request could ever finish)",
                ep.path,
                units::Duration::from_std(cpu)
            ),
        ));
    }
}

/// An endpoint makes at most `limits::MAX_CALLS` calls, each to a known endpoint of the mesh.
fn check_calls(
    out: &mut Vec<Issue>,
    spec: &ServiceMeshSpec,
    endpoints: &HashMap<&str, BTreeSet<&str>>,
    ep_path: &str,
    ep: &EndpointSpec,
) {
    if ep.calls.len() > limits::MAX_CALLS {
        out.push(Issue::new(
            format!("{ep_path}.calls"),
            format!(
                "has {} calls; expected at most {}",
                ep.calls.len(),
                limits::MAX_CALLS
            ),
        ));
    }
    for (k, call) in ep.calls.iter().enumerate() {
        let cp = format!("{ep_path}.calls[{k}]");
        check_call_target(out, spec, endpoints, &cp, call);
        check_call_settings(out, &cp, call);
    }
}

/// A call targets a service of this mesh and one of its endpoints, with a did-you-mean hint.
fn check_call_target(
    out: &mut Vec<Issue>,
    spec: &ServiceMeshSpec,
    endpoints: &HashMap<&str, BTreeSet<&str>>,
    cp: &str,
    call: &CallSpec,
) {
    match endpoints.get(call.service.as_str()) {
        None => {
            let names: Vec<&str> = first_seen_names(spec);
            let mut issue = Issue::new(
                format!("{cp}.service"),
                format!(
                    "unknown service {:?}; expected one of: {}",
                    call.service,
                    names.join(", ")
                ),
            );
            if let Some(s) = suggest(&call.service, names.iter().copied()) {
                issue = issue.hint(format!("did you mean {s:?}?"));
            }
            out.push(issue);
        }
        Some(eps) => {
            let target = endpoint_path(call.path.as_deref());
            if !eps.contains(target) {
                let list: Vec<&str> = eps.iter().copied().collect();
                let mut issue = Issue::new(
                    format!("{cp}.path"),
                    format!(
                        "service {:?} has no endpoint {target:?}; expected one of: {}",
                        call.service,
                        list.join(", ")
                    ),
                );
                if let Some(s) = suggest(target, list.iter().copied()) {
                    issue = issue.hint(format!("did you mean {s:?}?"));
                }
                out.push(issue);
            }
        }
    }
}

/// A call's probability, repeat count and timeout.
fn check_call_settings(out: &mut Vec<Issue>, cp: &str, call: &CallSpec) {
    check_probability(out, &format!("{cp}.probability"), call.probability);
    check_range(
        out,
        &format!("{cp}.repeat"),
        call.repeat.map(i64::from),
        1,
        limits::MAX_REPEAT.into(),
        "a repeat count",
    );
    if let Some(t) = &call.timeout {
        check_duration(out, &format!("{cp}.timeout"), t, true);
    }
}

/// The call graph (endpoint → endpoint) must be acyclic: a cycle would recurse until
/// every request times out. Reports each cycle once, at the call that closes it.
fn check_cycles(out: &mut Vec<Issue>, mesh: &ServiceMesh) {
    type Node<'a> = (&'a str, &'a str);
    let mut edges: BTreeMap<Node, Vec<(Node, String)>> = BTreeMap::new();
    let mut known: BTreeSet<Node> = BTreeSet::new();
    for svc in &mesh.spec.services {
        for ep in &svc.endpoints {
            known.insert((svc.name.as_str(), ep.path.as_str()));
        }
    }
    for (i, svc) in mesh.spec.services.iter().enumerate() {
        for (j, ep) in svc.endpoints.iter().enumerate() {
            let from = (svc.name.as_str(), ep.path.as_str());
            for (k, call) in ep.calls.iter().enumerate() {
                let to = (call.service.as_str(), endpoint_path(call.path.as_deref()));
                if known.contains(&to) {
                    edges
                        .entry(from)
                        .or_default()
                        .push((to, format!("spec.services[{i}].endpoints[{j}].calls[{k}]")));
                }
            }
        }
    }
    // Iterative DFS with colours; a back edge closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        Grey,
        Black,
    }
    let mut colour: HashMap<Node, Colour> = HashMap::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    for &start in &known {
        if colour.contains_key(&start) {
            continue;
        }
        let mut stack: Vec<(Node, usize)> = vec![(start, 0)];
        colour.insert(start, Colour::Grey);
        while let Some((node, idx)) = stack.last().copied() {
            let next = edges.get(&node).and_then(|e| e.get(idx));
            match next {
                None => {
                    colour.insert(node, Colour::Black);
                    stack.pop();
                }
                Some((to, call_path)) => {
                    if let Some(top) = stack.last_mut() {
                        top.1 += 1;
                    }
                    match colour.get(to) {
                        None => {
                            colour.insert(*to, Colour::Grey);
                            stack.push((*to, 0));
                        }
                        Some(Colour::Grey) => {
                            let pos = stack.iter().position(|(n, _)| n == to).unwrap_or(0);
                            let mut cycle: Vec<String> = stack[pos..]
                                .iter()
                                .map(|((s, p), _)| format!("{s} {p}"))
                                .collect();
                            cycle.push(format!("{} {}", to.0, to.1));
                            if reported.insert(call_path.clone()) {
                                out.push(
                                    Issue::new(
                                        format!("{call_path}.service"),
                                        format!(
                                            "call cycle {}; expected an acyclic call graph",
                                            cycle.join(" -> ")
                                        ),
                                    )
                                    .hint("remove one of the calls in the cycle"),
                                );
                            }
                        }
                        Some(Colour::Black) => {}
                    }
                }
            }
        }
    }
}

/// Checks a benchmark, and its references into `meshes` (all meshes of the input set).
pub fn validate_benchmark(bench: &Benchmark, meshes: &[&ServiceMesh]) -> Vec<Issue> {
    let mut out = Vec::new();
    check_name(&mut out, "metadata.name", bench.metadata.name.as_deref());
    let spec = &bench.spec;
    check_mesh_refs(&mut out, spec, meshes);

    let open = spec.load.model == LoadKind::Open;
    check_load_model(&mut out, &spec.load, open);
    check_profile(&mut out, &spec.profile, open);
    if let Some(w) = &spec.warmup {
        check_warmup(&mut out, w, open);
    }
    check_run_settings(&mut out, spec);
    if let Some(c) = &spec.collection {
        check_collection(&mut out, c);
    }
    if let Some(s) = &spec.slos {
        check_slos(&mut out, s);
    }
    out
}

/// Each referenced mesh must be among `meshes` and contain the target.
fn check_mesh_refs(out: &mut Vec<Issue>, spec: &BenchmarkSpec, meshes: &[&ServiceMesh]) {
    if spec.meshes.is_empty() {
        out.push(Issue::new(
            "spec.meshes",
            "is empty; expected the name of at least one ServiceMesh",
        ));
    }
    let names: Vec<&str> = meshes
        .iter()
        .filter_map(|m| m.metadata.name.as_deref())
        .collect();
    for (i, m) in spec.meshes.iter().enumerate() {
        let p = format!("spec.meshes[{i}]");
        let Some(mesh) = meshes
            .iter()
            .find(|x| x.metadata.name.as_deref() == Some(m.as_str()))
        else {
            out.push(unknown_mesh(&p, m, &names));
            continue;
        };
        // The target must exist in every referenced mesh.
        check_target(out, &spec.target, m, mesh);
    }
}

/// The issue for a mesh reference no given file defines: the likely typo, or the missing file.
fn unknown_mesh(p: &str, m: &str, names: &[&str]) -> Issue {
    let issue = Issue::new(
        p,
        if names.is_empty() {
            format!(
                "ServiceMesh {m:?} is not defined in the given files; expected a ServiceMesh with that name"
            )
        } else {
            format!(
                "ServiceMesh {m:?} is not defined in the given files; expected one of: {}",
                names.join(", ")
            )
        },
    );
    match suggest(m, names.iter().copied()) {
        Some(s) => issue.hint(format!("did you mean {s:?}?")),
        None => issue.hint("pass the file that defines the mesh too"),
    }
}

/// The target service must exist in mesh `m`, since every mesh is run with the same target.
fn check_target(out: &mut Vec<Issue>, target: &Target, m: &str, mesh: &ServiceMesh) {
    let svc = mesh.spec.services.iter().find(|s| s.name == target.service);
    match svc {
        None => {
            let svcs: Vec<&str> = first_seen_names(&mesh.spec);
            let mut issue = Issue::new(
                "spec.target.service",
                format!(
                    "service {:?} does not exist in ServiceMesh {m:?}; expected one of: {}",
                    target.service,
                    svcs.join(", ")
                ),
            );
            if let Some(s) = suggest(&target.service, svcs.iter().copied()) {
                issue = issue.hint(format!("did you mean {s:?}?"));
            }
            out.push(issue);
        }
        Some(svc) => check_target_endpoint(out, target, m, svc),
    }
}

/// The target path must be an endpoint of the service, serving the target's method if set.
fn check_target_endpoint(out: &mut Vec<Issue>, target: &Target, m: &str, svc: &ServiceSpec) {
    let path = endpoint_path(target.path.as_deref());
    match svc.endpoints.iter().find(|e| e.path == path) {
        None => {
            let eps: Vec<&str> = svc.endpoints.iter().map(|e| e.path.as_str()).collect();
            out.push(Issue::new(
                "spec.target.path",
                format!("service {:?} of ServiceMesh {m:?} has no endpoint {path:?}; expected one of: {}", svc.name, eps.join(", ")),
            ));
        }
        Some(ep) => {
            if let (Some(want), got) = (
                target.method,
                ep.method.unwrap_or(crate::mesh::HttpMethod::Get),
            ) && want != got
            {
                out.push(Issue::new(
                    "spec.target.method",
                    format!(
                        "{} does not match endpoint {path:?}, which serves {}",
                        want.as_str(),
                        got.as_str()
                    ),
                ));
            }
        }
    }
}

/// `thinkTime` belongs to the closed loop and `maxInFlight` to the open loop only.
fn check_load_model(out: &mut Vec<Issue>, load: &LoadModel, open: bool) {
    check_range(
        out,
        "spec.load.maxInFlight",
        load.max_in_flight.map(i64::from),
        1,
        100_000,
        "a request count",
    );
    if let Some(t) = &load.think_time {
        check_duration(out, "spec.load.thinkTime", t, false);
        if open {
            out.push(Issue::new(
                "spec.load.thinkTime",
                "applies to the closed loop only; expected it unset with model: open",
            ));
        }
    }
    if !open && load.max_in_flight.is_some() {
        out.push(Issue::new("spec.load.maxInFlight", "applies to the open loop only; with model: closed the users bound the requests in flight"));
    }
}

/// A profile is exactly one of explicit stages and a sweep; then that one is checked.
fn check_profile(out: &mut Vec<Issue>, p: &Profile, open: bool) {
    match (&p.stages, &p.sweep) {
        (Some(_), Some(_)) => out.push(Issue::new(
            "spec.profile",
            "sets both stages and sweep; expected exactly one",
        )),
        (None, None) => out.push(Issue::new(
            "spec.profile",
            "sets neither stages nor sweep; expected exactly one",
        )),
        _ => {}
    }
    if let Some(stages) = &p.stages {
        check_stages(out, stages, open);
    }
    if let Some(s) = &p.sweep {
        check_sweep(out, s, open);
    }
}

/// Between 1 and 200 stages, each with a positive duration and the load amount of the model.
fn check_stages(out: &mut Vec<Issue>, stages: &[Stage], open: bool) {
    if stages.is_empty() {
        out.push(Issue::new(
            "spec.profile.stages",
            "is empty; expected at least one stage",
        ));
    }
    if stages.len() > 200 {
        out.push(Issue::new(
            "spec.profile.stages",
            format!("has {} stages; expected at most 200", stages.len()),
        ));
    }
    for (i, s) in stages.iter().enumerate() {
        let sp = format!("spec.profile.stages[{i}]");
        check_duration(out, &format!("{sp}.duration"), &s.duration, true);
        check_load_amount(out, &sp, open, s.rate, s.users, true);
    }
}

/// A sweep: positive step duration, valid bounds and step, and whole users in a closed loop.
fn check_sweep(out: &mut Vec<Issue>, s: &Sweep, open: bool) {
    let sp = "spec.profile.sweep";
    check_duration(out, &format!("{sp}.stepDuration"), &s.step_duration, true);
    check_sweep_bounds(out, sp, s, open);
    check_sweep_step(out, sp, s);
    if !open && (s.from.fract() != 0.0 || s.step.fract() != 0.0) {
        out.push(Issue::new(
            sp,
            "a closed-loop sweep counts users; expected whole numbers for from and step",
        ));
    }
}

/// `from` and `to` are positive amounts within the model's maximum, ascending.
fn check_sweep_bounds(out: &mut Vec<Issue>, sp: &str, s: &Sweep, open: bool) {
    for (field, v) in [("from", s.from), ("to", s.to)] {
        if !v.is_finite() || v <= 0.0 {
            out.push(Issue::new(
                format!("{sp}.{field}"),
                format!(
                    "{v} is not positive; expected a {} greater than 0",
                    if open { "rate" } else { "user count" }
                ),
            ));
        } else if v > if open { 1_000_000.0 } else { 100_000.0 } {
            out.push(Issue::new(
                format!("{sp}.{field}"),
                if open {
                    format!("{v} is too high; expected at most 1000000 requests per second")
                } else {
                    format!("{v} is too high; expected at most 100000 users")
                },
            ));
        }
    }
    if s.from > s.to {
        out.push(Issue::new(
            format!("{sp}.from"),
            format!(
                "from {} exceeds to {}; expected an ascending sweep (from <= to)",
                s.from, s.to
            ),
        ));
    }
}

/// A positive step giving at most 200 steps, like the explicit stages.
fn check_sweep_step(out: &mut Vec<Issue>, sp: &str, s: &Sweep) {
    if !s.step.is_finite() || s.step <= 0.0 {
        out.push(Issue::new(
            format!("{sp}.step"),
            format!(
                "{} is not positive; expected an increment greater than 0",
                s.step
            ),
        ));
    } else if s.from <= s.to {
        // The same count as `resolve::plan_steps`, which allows for rounding.
        let n = ((s.to - s.from) / s.step + 1e-9).floor() + 1.0;
        if n > 200.0 {
            out.push(Issue::new(
                format!("{sp}.step"),
                format!("gives {n} steps; expected at most 200"),
            ));
        }
    }
}

/// A warmup is checked like a stage, except that its rate or users may be left unset.
fn check_warmup(out: &mut Vec<Issue>, w: &Warmup, open: bool) {
    check_duration(out, "spec.warmup.duration", &w.duration, true);
    check_load_amount(out, "spec.warmup", open, w.rate, w.users, false);
}

/// Settle time, request timeout, repetitions and load generator parallelism.
fn check_run_settings(out: &mut Vec<Issue>, spec: &BenchmarkSpec) {
    if let Some(s) = &spec.settle {
        check_duration(out, "spec.settle", s, false);
    }
    if let Some(t) = &spec.request_timeout {
        check_duration(out, "spec.requestTimeout", t, true);
    }
    check_range(
        out,
        "spec.repetitions",
        spec.repetitions.map(i64::from),
        1,
        100,
        "a repetition count",
    );
    if let Some(l) = &spec.loadgen {
        check_range(
            out,
            "spec.loadgen.parallelism",
            l.parallelism.map(i64::from),
            1,
            64,
            "an instance count",
        );
    }
}

/// Metric collection: an http(s) Prometheus URL, a positive interval and valid query overrides.
fn check_collection(out: &mut Vec<Issue>, c: &Collection) {
    if let Some(url) = &c.prometheus_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        out.push(Issue::new(
            "spec.collection.prometheusUrl",
            format!("{url:?} is not an http(s) URL; expected e.g. \"http://prometheus:9090\""),
        ));
    }
    if let Some(i) = &c.interval {
        check_duration(out, "spec.collection.interval", i, true);
    }
    check_query_overrides(out, &c.queries);
}

/// SLOs: percentiles in (0, 100] with positive bounds, and rates that are probabilities.
fn check_slos(out: &mut Vec<Issue>, s: &Slos) {
    for (i, l) in s.latency.iter().enumerate() {
        let lp = format!("spec.slos.latency[{i}]");
        if !(l.percentile > 0.0 && l.percentile <= 100.0) {
            out.push(Issue::new(
                format!("{lp}.percentile"),
                format!(
                    "{} is outside (0, 100]; expected a percentile such as 99",
                    l.percentile
                ),
            ));
        }
        check_duration(out, &format!("{lp}.max"), &l.max, true);
    }
    check_probability(out, "spec.slos.maxErrorRate", s.max_error_rate);
    check_probability(out, "spec.slos.minAchievedRatio", s.min_achieved_ratio);
}

/// Every `spec.collection.queries` override must name a built-in query and use only the
/// collector's placeholders: an unknown name would otherwise be refused only when the
/// first step is collected, and an unknown placeholder would reach Prometheus as-is.
fn check_query_overrides(out: &mut Vec<Issue>, queries: &BTreeMap<String, String>) {
    for (name, expr) in queries {
        let path = format!("spec.collection.queries.{name}");
        if !COLLECTION_QUERY_NAMES.contains(&name.as_str()) {
            out.push(unknown_query(&path, name));
        }
        // Each unknown placeholder once, however often it is used.
        let unknown: BTreeSet<&str> = placeholders(expr)
            .filter(|p| !COLLECTION_QUERY_PLACEHOLDERS.contains(p))
            .collect();
        out.extend(unknown.into_iter().map(|p| unknown_placeholder(&path, p)));
    }
}

fn unknown_query(path: &str, name: &str) -> Issue {
    let issue = Issue::new(
        path,
        format!(
            "{name:?} is not a built-in query; expected one of {}",
            COLLECTION_QUERY_NAMES.join(", ")
        ),
    );
    match suggest(name, COLLECTION_QUERY_NAMES.iter().copied()) {
        Some(s) => issue.hint(format!("did you mean {s:?}?")),
        None => issue,
    }
}

fn unknown_placeholder(path: &str, placeholder: &str) -> Issue {
    let issue = Issue::new(
        path,
        format!(
            "uses the unknown placeholder {placeholder}; expected one of {}",
            COLLECTION_QUERY_PLACEHOLDERS.join(", ")
        ),
    );
    match placeholder {
        // Pod names cannot be predicted from Deployment names (long ones are truncated),
        // so the pod regex placeholder was replaced by a join on the pods' owners.
        "$pods" => issue.hint(
            "select pods by their owner: `<expr> * on (namespace, pod) group_left (deployment) $pod_deployment`",
        ),
        _ => match suggest(placeholder, COLLECTION_QUERY_PLACEHOLDERS.iter().copied()) {
            Some(s) => issue.hint(format!("did you mean {s}?")),
            None => issue,
        },
    }
}

/// The `$name` placeholders of a PromQL template, in order. `$1` and `${1}` (capture
/// references in `label_replace`) are not placeholders.
pub fn placeholders(expr: &str) -> impl Iterator<Item = &str> {
    expr.match_indices('$').filter_map(move |(i, _)| {
        let rest = &expr[i + 1..];
        let len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(rest.len());
        (len > 0).then(|| &expr[i..=i + len])
    })
}

fn check_load_amount(
    out: &mut Vec<Issue>,
    path: &str,
    open: bool,
    rate: Option<f64>,
    users: Option<i32>,
    required: bool,
) {
    if open {
        if users.is_some() {
            out.push(Issue::new(
                format!("{path}.users"),
                "set with model: open; expected `rate` (requests per second)",
            ));
        }
        match rate {
            Some(r) if !r.is_finite() || r <= 0.0 => {
                out.push(Issue::new(
                    format!("{path}.rate"),
                    format!("{r} is not positive; expected requests per second greater than 0"),
                ));
            }
            Some(r) if r > 1_000_000.0 => {
                out.push(Issue::new(
                    format!("{path}.rate"),
                    format!("{r} is too high; expected at most 1000000 requests per second"),
                ));
            }
            None if required => out.push(Issue::new(
                format!("{path}.rate"),
                "missing; an open-loop stage needs a rate (requests per second)",
            )),
            _ => {}
        }
    } else {
        if rate.is_some() {
            out.push(Issue::new(
                format!("{path}.rate"),
                "set with model: closed; expected `users`",
            ));
        }
        match users {
            Some(u) if u <= 0 => out.push(Issue::new(
                format!("{path}.users"),
                format!("{u} is not positive; expected at least 1 user"),
            )),
            None if required => out.push(Issue::new(
                format!("{path}.users"),
                "missing; a closed-loop stage needs a number of users",
            )),
            _ => {}
        }
    }
}

/// Service names in spec order, each once (duplicates and empty names are reported
/// separately).
fn first_seen_names(spec: &crate::mesh::ServiceMeshSpec) -> Vec<&str> {
    let mut seen = BTreeSet::new();
    spec.services
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| !n.is_empty() && seen.insert(*n))
        .collect()
}
