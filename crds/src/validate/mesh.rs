//! The rules of a ServiceMesh, and [`ValidMesh`], what passing them yields.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{
    Invalid, Issue, check_duration, check_name, check_probability, check_range, first_seen_names,
};
use crate::diag::suggest;
use crate::mesh::{
    Autoscaling, CallSpec, Delay, EndpointBehavior, EndpointSpec, MeshDefaults, Resources,
    ServiceMesh, ServiceMeshSpec, ServiceSpec, limits,
};
use crate::resolve::{
    ResolvedResources, ResolvedService, endpoint_path, resolve_mesh, resolved_resources,
};
use crate::units::{self, UnitError};

/// A ServiceMesh that passed [`validate_mesh`], with its services resolved once (mesh
/// defaults applied, units parsed): what rendering, the local platform and the capacity
/// model take, so none of them sees a spec that was not validated or resolves it again.
#[derive(Debug, Clone)]
pub struct ValidMesh {
    mesh: ServiceMesh,
    services: Vec<ResolvedService>,
}

impl ValidMesh {
    /// Validates `mesh` and resolves its services; `Err` holds every problem
    /// [`validate_mesh`] finds.
    pub fn new(mesh: ServiceMesh) -> Result<Self, Invalid> {
        Invalid::check(validate_mesh(&mesh))?;
        let services = resolve_mesh(&mesh.spec);
        Ok(Self { mesh, services })
    }

    /// The resource as written.
    pub fn mesh(&self) -> &ServiceMesh {
        &self.mesh
    }

    /// The spec as written.
    pub fn spec(&self) -> &ServiceMeshSpec {
        &self.mesh.spec
    }

    /// `metadata.name`, which validation requires.
    pub fn name(&self) -> &str {
        self.mesh.metadata.name.as_deref().unwrap_or_default()
    }

    /// Every service after defaults, in spec order.
    pub fn services(&self) -> &[ResolvedService] {
        &self.services
    }

    /// The service named `name`, after defaults.
    pub fn service(&self, name: &str) -> Option<&ResolvedService> {
        self.services.iter().find(|s| s.name == name)
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
    let graph = CallGraph::new(&mesh.spec);
    let mut colour: HashMap<Node<'_>, Colour> = HashMap::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    for &start in &graph.known {
        if !colour.contains_key(&start) {
            search_from(out, &graph, start, &mut colour, &mut reported);
        }
    }
}

/// An endpoint in the call graph: service name and path.
type Node<'a> = (&'a str, &'a str);

/// The call graph of a mesh: every endpoint, and each call to a known endpoint with the
/// field path of the call (where a cycle it closes is reported). Calls to unknown
/// endpoints are reported by [`check_call_target`] and left out here.
struct CallGraph<'a> {
    known: BTreeSet<Node<'a>>,
    edges: BTreeMap<Node<'a>, Vec<(Node<'a>, String)>>,
}

impl<'a> CallGraph<'a> {
    fn new(spec: &'a ServiceMeshSpec) -> Self {
        let mut known: BTreeSet<Node<'a>> = BTreeSet::new();
        for svc in &spec.services {
            for ep in &svc.endpoints {
                known.insert((svc.name.as_str(), ep.path.as_str()));
            }
        }
        let mut edges: BTreeMap<Node<'a>, Vec<(Node<'a>, String)>> = BTreeMap::new();
        for (i, svc) in spec.services.iter().enumerate() {
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
        Self { known, edges }
    }
}

/// Depth-first search colours: on the current path (grey) or finished (black).
#[derive(Clone, Copy, PartialEq)]
enum Colour {
    Grey,
    Black,
}

/// Iterative depth-first search from `start`; a call back to a grey endpoint (one on the
/// current path) closes a cycle.
fn search_from<'a>(
    out: &mut Vec<Issue>,
    graph: &CallGraph<'a>,
    start: Node<'a>,
    colour: &mut HashMap<Node<'a>, Colour>,
    reported: &mut BTreeSet<String>,
) {
    let mut stack: Vec<(Node<'a>, usize)> = vec![(start, 0)];
    colour.insert(start, Colour::Grey);
    while let Some((node, idx)) = stack.last().copied() {
        let Some((to, call_path)) = graph.edges.get(&node).and_then(|e| e.get(idx)) else {
            colour.insert(node, Colour::Black);
            stack.pop();
            continue;
        };
        if let Some(top) = stack.last_mut() {
            top.1 += 1;
        }
        match colour.get(to) {
            None => {
                colour.insert(*to, Colour::Grey);
                stack.push((*to, 0));
            }
            Some(Colour::Grey) => {
                if reported.insert(call_path.clone()) {
                    out.push(cycle_issue(&stack, *to, call_path));
                }
            }
            Some(Colour::Black) => {}
        }
    }
}

/// The issue of the cycle that the call at `call_path` closes by calling `to`, which is
/// on the search path `stack`.
fn cycle_issue(stack: &[(Node<'_>, usize)], to: Node<'_>, call_path: &str) -> Issue {
    let pos = stack.iter().position(|(n, _)| *n == to).unwrap_or(0);
    let mut cycle: Vec<String> = stack[pos..]
        .iter()
        .map(|((s, p), _)| format!("{s} {p}"))
        .collect();
    cycle.push(format!("{} {}", to.0, to.1));
    Issue::new(
        format!("{call_path}.service"),
        format!(
            "call cycle {}; expected an acyclic call graph",
            cycle.join(" -> ")
        ),
    )
    .hint("remove one of the calls in the cycle")
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
