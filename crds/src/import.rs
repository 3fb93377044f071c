//! Import from the Go/Python prototype: a `Servicegraph` (`dipterv.my.domain/v1beta1`)
//! becomes a `ServiceMesh`, and its measurement config becomes a `Benchmark`.
//!
//! Semantics carried over exactly: `cpuLoad` is milliseconds of busy CPU per request;
//! `delay` is a *minimum total* response time (the prototype slept only for what was left
//! after CPU work and calls), so it maps to `delay.mode: minimumTotal`; all callouts of an
//! endpoint ran in parallel, so each call gets its own group; `resources.cpu` (millicores)
//! and `resources.memory` (Mi) were both request and limit; the sweep deleted and
//! re-applied the mesh around every rate and waited 30 s before reading Prometheus.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::benchmark::{
    Benchmark, BenchmarkSpec, Collection, LoadKind, LoadModel, Profile, RedeployPolicy, Stage,
    Sweep, Target, Warmup,
};
use crate::diag::Diagnostic;
use crate::mesh::{
    Autoscaling, CallSpec, Delay, DelayMode, EndpointSpec, Expose, ExposeType, ResourceAmounts,
    Resources, ServiceMesh, ServiceMeshSpec, ServiceSpec,
};
use crate::units::Duration;
use crate::validate::to_dns_label;

/// The prototype's Servicegraph resource.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Servicegraph {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: SgMeta,
    spec: SgSpec,
}

#[derive(Debug, Default, Deserialize)]
struct SgMeta {
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SgSpec {
    nodes: Vec<SgNode>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SgNode {
    name: String,
    #[serde(default)]
    replicas: Option<i32>,
    #[serde(default)]
    port: Option<i32>,
    #[serde(default)]
    node_port: Option<i32>,
    #[serde(default)]
    resources: Option<SgResources>,
    #[serde(default)]
    hpa: Option<SgHpa>,
    #[serde(default)]
    endpoints: Vec<SgEndpoint>,
}

#[derive(Debug, Deserialize)]
struct SgResources {
    /// Millicores.
    cpu: Option<f64>,
    /// Mebibytes.
    memory: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct SgHpa {
    utilization: Option<i32>,
    min_replicas: Option<i32>,
    max_replicas: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SgEndpoint {
    path: String,
    /// Milliseconds of CPU per request.
    #[serde(default)]
    cpu_load: Option<f64>,
    /// Minimum response time in milliseconds.
    #[serde(default)]
    delay: Option<f64>,
    #[serde(default)]
    callouts: Vec<SgCallout>,
}

#[derive(Debug, Deserialize)]
struct SgCallout {
    url: String,
}

/// The prototype's measurement config.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Measurement {
    name: String,
    #[serde(default)]
    servicegraphs: Vec<String>,
    #[serde(default, rename = "Result_location")]
    result_location: Option<String>,
    #[serde(rename = "QPS")]
    qps: Qps,
    load: Load,
    #[serde(default)]
    prometheus: Option<Prometheus>,
    #[serde(default)]
    cluster: Option<Cluster>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Qps {
    from: f64,
    to: f64,
    granularity: f64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Load {
    /// Warm-up seconds.
    #[serde(default)]
    preheat: Option<f64>,
    /// Most requests in flight.
    #[serde(default)]
    users: Option<i32>,
    /// Seconds per rate.
    time: f64,
    /// Request timeout in seconds.
    #[serde(default)]
    time_out: Option<f64>,
    #[serde(default)]
    service_path: Option<String>,
    #[serde(default)]
    service_query: Option<String>,
    #[serde(default)]
    service_port: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Prometheus {
    #[serde(rename = "IP")]
    ip: String,
    port: serde_yaml::Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Cluster {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "IP")]
    ip: Option<String>,
}

/// The documents produced by an import, ready to be printed.
#[derive(Debug)]
pub struct Imported {
    /// The mesh.
    pub mesh: ServiceMesh,
    /// The benchmark, when a measurement config was given.
    pub benchmark: Option<Benchmark>,
    /// Facts of the prototype config that have no field in meshbench (kept as comments).
    pub notes: Vec<String>,
}

impl Imported {
    /// The documents as multi-document YAML, with the notes as a leading comment.
    pub fn to_yaml(&self) -> String {
        let mut out =
            String::from("# Imported from the meshbench prototype by `meshbench import`.\n");
        for n in &self.notes {
            out.push_str(&format!("# {n}\n"));
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&self.mesh).unwrap_or_default());
        if let Some(b) = &self.benchmark {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(b).unwrap_or_default());
        }
        out
    }
}

fn parse<T: for<'de> Deserialize<'de>>(
    file: &str,
    text: &str,
    what: &str,
) -> Result<T, Vec<Diagnostic>> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let mut d = Diagnostic::file(file, format!("invalid YAML: {e}"));
        d.position = e.location().map(|l| crate::locate::Position {
            line: l.line(),
            column: l.column(),
        });
        vec![d]
    })?;
    let locator = crate::locate::index_documents(text)
        .into_iter()
        .next()
        .unwrap_or_default();
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![Diagnostic {
            file: file.to_string(),
            document: Some(1),
            object: Some(what.to_string()),
            position: locator.find(&path),
            path,
            message: e.inner().to_string(),
            hint: None,
        }]
    })
}

fn ms(v: f64) -> Duration {
    secs(v / 1000.0)
}

/// Seconds as a duration; negative becomes zero and anything beyond [`Duration::MAX`]
/// (reported by [`check_seconds`] first) is capped, because `from_secs_f64` panics on
/// overflow and on non-finite input.
fn secs(v: f64) -> Duration {
    let d = std::time::Duration::try_from_secs_f64(v.max(0.0)).unwrap_or(Duration::MAX);
    Duration::from_std(d.min(Duration::MAX))
}

/// Why a prototype time of `v` (in `unit`, `scale` seconds each) cannot be converted.
fn check_seconds(v: f64, scale: f64, unit: &str) -> Option<String> {
    let max = Duration::MAX.as_secs_f64() / scale;
    (!v.is_finite() || v * scale > Duration::MAX.as_secs_f64()).then(|| {
        format!("{v} is not a time in {unit} meshbench accepts; expected at most {max} (7 days)")
    })
}

/// Converts a Servicegraph (and optionally its measurement config). Each problem is a
/// diagnostic naming the file and field.
pub fn import(
    graph_file: &str,
    graph_text: &str,
    measurement: Option<(&str, &str)>,
) -> Result<Imported, Vec<Diagnostic>> {
    let sg: Servicegraph = parse(graph_file, graph_text, "Servicegraph")?;
    let mut problems = GraphProblems {
        file: graph_file,
        text: graph_text,
        found: Vec::new(),
    };
    check_servicegraph(&sg, &mut problems);
    let mut notes = Vec::new();
    let mesh_name = to_dns_label(sg.metadata.name.as_deref().unwrap_or("imported"));
    let names = service_names(&sg.spec.nodes);
    let services: Vec<ServiceSpec> = sg
        .spec
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| import_service(i, node, &names, &mut problems, &mut notes))
        .collect();
    if !problems.found.is_empty() {
        return Err(problems.found);
    }
    let mesh = imported_mesh(&mesh_name, services);
    let benchmark = measurement
        .map(|m| {
            import_benchmark(
                m,
                graph_file,
                &sg.spec.nodes,
                &names,
                &mesh_name,
                &mut notes,
            )
        })
        .transpose()?;
    Ok(Imported {
        mesh,
        benchmark,
        notes,
    })
}

/// The Servicegraph's problems, collected so that all of them are reported at once.
struct GraphProblems<'a> {
    file: &'a str,
    text: &'a str,
    found: Vec<Diagnostic>,
}

impl GraphProblems<'_> {
    fn push(&mut self, path: String, message: String) {
        self.found.push(Diagnostic {
            file: self.file.to_string(),
            document: Some(1),
            object: Some("Servicegraph".into()),
            position: crate::locate::index_documents(self.text)
                .into_iter()
                .next()
                .and_then(|l| l.find(&path)),
            path,
            message,
            hint: None,
        });
    }
}

/// Rejects documents that are not a prototype Servicegraph, or that have nothing to convert.
fn check_servicegraph(sg: &Servicegraph, problems: &mut GraphProblems<'_>) {
    if let Some(k) = sg.kind.as_deref()
        && k != "Servicegraph"
    {
        problems.push(
            "kind".into(),
            format!("{k:?} is not a Servicegraph; expected kind: Servicegraph"),
        );
    }
    if let Some(v) = &sg.api_version
        && !v.starts_with("dipterv.my.domain/")
    {
        problems.push(
            "apiVersion".into(),
            format!("{v:?} is not the prototype's API; expected dipterv.my.domain/v1beta1"),
        );
    }
    if sg.spec.nodes.is_empty() {
        problems.push(
            "spec.nodes".into(),
            "is empty; expected at least one node".into(),
        );
    }
}

/// Node name → DNS-1123 service name; callouts and the load target name nodes as written.
fn service_names(nodes: &[SgNode]) -> BTreeMap<String, String> {
    nodes
        .iter()
        .map(|n| (n.name.clone(), to_dns_label(&n.name)))
        .collect()
}

/// Node `i` as a service; a rename is noted because the user will look for the old name.
fn import_service(
    i: usize,
    node: &SgNode,
    names: &BTreeMap<String, String>,
    problems: &mut GraphProblems<'_>,
    notes: &mut Vec<String>,
) -> ServiceSpec {
    let name = names[&node.name].clone();
    if name != node.name {
        notes.push(format!(
            "node {:?} renamed to {name:?} (DNS-1123)",
            node.name
        ));
    }
    let endpoints = node
        .endpoints
        .iter()
        .enumerate()
        .map(|(j, ep)| {
            let at = format!("spec.nodes[{i}].endpoints[{j}]");
            import_endpoint(&at, ep, names, problems)
        })
        .collect();
    ServiceSpec {
        name,
        replicas: node.replicas,
        port: node.port,
        resources: node.resources.as_ref().map(imported_resources),
        autoscaling: node.hpa.as_ref().map(imported_autoscaling),
        expose: node.node_port.map(node_port_expose),
        startup_delay: None,
        idle: None,
        readiness: None,
        endpoints,
    }
}

/// The prototype used each amount as both request and limit.
fn imported_resources(r: &SgResources) -> Resources {
    let amounts = ResourceAmounts {
        cpu: r
            .cpu
            .map(|c| Quantity(format!("{}m", c.max(0.0).round() as u64))),
        memory: r
            .memory
            .map(|m| Quantity(format!("{}Mi", m.max(0.0).round() as u64))),
    };
    Resources {
        requests: Some(amounts.clone()),
        limits: Some(amounts),
    }
}

fn imported_autoscaling(h: &SgHpa) -> Autoscaling {
    Autoscaling {
        enabled: None,
        min_replicas: h.min_replicas,
        max_replicas: h.max_replicas,
        target_cpu_utilization: h.utilization,
        behavior: None,
    }
}

fn node_port_expose(port: i32) -> Expose {
    Expose {
        type_: ExposeType::NodePort,
        node_port: Some(port),
    }
}

/// One endpoint; `at` is its field path (`spec.nodes[i].endpoints[j]`) for diagnostics.
fn import_endpoint(
    at: &str,
    ep: &SgEndpoint,
    names: &BTreeMap<String, String>,
    problems: &mut GraphProblems<'_>,
) -> EndpointSpec {
    let calls = import_calls(at, &ep.callouts, names, problems);
    for (field, v) in [("cpuLoad", ep.cpu_load), ("delay", ep.delay)] {
        if let Some(message) = v.and_then(|v| check_seconds(v, 1e-3, "milliseconds")) {
            problems.push(format!("{at}.{field}"), message);
        }
    }
    EndpointSpec {
        path: absolute_path(&ep.path),
        method: None,
        calls,
        cpu: ep.cpu_load.filter(|c| *c > 0.0).map(ms),
        memory: None,
        delay: minimum_total_delay(ep.delay),
        response_size: None,
        error_rate: None,
        max_in_flight: None,
        call_timeout: None,
        ignore_call_timeouts: None,
    }
}

/// The callouts of the endpoint at `at`; a callee not among the nodes keeps its host name
/// (as a DNS label) so the mesh's own validation reports it.
fn import_calls(
    at: &str,
    callouts: &[SgCallout],
    names: &BTreeMap<String, String>,
    problems: &mut GraphProblems<'_>,
) -> Vec<CallSpec> {
    let mut calls = Vec::new();
    for (k, c) in callouts.iter().enumerate() {
        match parse_callout(&c.url) {
            Some((svc, cpath)) => {
                let target = names.get(svc).cloned().unwrap_or_else(|| to_dns_label(svc));
                calls.push(CallSpec {
                    service: target,
                    path: Some(cpath),
                    // The prototype ran all callouts of an endpoint in parallel.
                    group: Some(format!("callout-{k}")),
                    probability: None,
                    repeat: None,
                    timeout: None,
                });
            }
            None => problems.push(
                format!("{at}.callouts[{k}].url"),
                format!(
                    "{:?} is not a callout URL; expected service:port/path (e.g. \"backend:80/work\")",
                    c.url
                ),
            ),
        }
    }
    calls
}

/// The prototype slept only for what was left after CPU work and calls, so its `delay`
/// (milliseconds) is a minimum total response time; zero or less means none.
fn minimum_total_delay(delay: Option<f64>) -> Option<Delay> {
    delay.filter(|d| *d > 0.0).map(|d| Delay {
        fixed: Some(ms(d)),
        mode: Some(DelayMode::MinimumTotal),
        ..Delay::default()
    })
}

/// The prototype accepted endpoint paths without the leading `/`.
fn absolute_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// Without a namespace, so the mesh lands wherever it is applied.
fn imported_mesh(name: &str, services: Vec<ServiceSpec>) -> ServiceMesh {
    let mut mesh = ServiceMesh::new(
        name,
        ServiceMeshSpec {
            defaults: None,
            services,
        },
    );
    mesh.metadata.namespace = None;
    mesh
}

/// The measurement config (`(file, text)`) as a benchmark of the already-converted mesh;
/// `nodes` and `names` are the graph's, to pick the service the load is sent to.
fn import_benchmark(
    (file, text): (&str, &str),
    graph_file: &str,
    nodes: &[SgNode],
    names: &BTreeMap<String, String>,
    mesh_name: &str,
    notes: &mut Vec<String>,
) -> Result<Benchmark, Vec<Diagnostic>> {
    let m: Measurement = parse(file, text, "measurement config")?;
    check_measurement_times(file, text, &m.load)?;
    let target_node = load_target_node(graph_file, nodes, m.load.service_port)?;
    note_prototype_only_fields(&m, notes);
    let spec = benchmark_spec(&m, mesh_name, names[&target_node.name].clone(), notes);
    let mut b = Benchmark::new(&to_dns_label(&m.name), spec);
    b.metadata = ObjectMeta {
        name: b.metadata.name.clone(),
        ..ObjectMeta::default()
    };
    Ok(b)
}

/// Every out-of-range time is reported together, before anything is converted.
fn check_measurement_times(file: &str, text: &str, load: &Load) -> Result<(), Vec<Diagnostic>> {
    let locator = crate::locate::index_documents(text)
        .into_iter()
        .next()
        .unwrap_or_default();
    let times = [
        ("Load.Time", Some(load.time)),
        ("Load.Preheat", load.preheat),
        ("Load.TimeOut", load.time_out),
    ];
    let bad: Vec<Diagnostic> = times
        .into_iter()
        .filter_map(|(path, v)| {
            let message = check_seconds(v?, 1.0, "seconds")?;
            Some(Diagnostic {
                file: file.to_string(),
                document: Some(1),
                object: Some("measurement config".into()),
                position: locator.find(path),
                path: path.to_string(),
                message,
                hint: None,
            })
        })
        .collect();
    if !bad.is_empty() {
        return Err(bad);
    }
    Ok(())
}

/// The node the prototype sent load to: the one whose node port is `Load.ServicePort`,
/// else the first.
fn load_target_node<'a>(
    graph_file: &str,
    nodes: &'a [SgNode],
    service_port: Option<i32>,
) -> Result<&'a SgNode, Vec<Diagnostic>> {
    let target_node = service_port
        .and_then(|p| nodes.iter().find(|n| n.node_port == Some(p)))
        .or(nodes.first());
    let Some(target_node) = target_node else {
        return Err(vec![Diagnostic::file(
            graph_file,
            "spec.nodes is empty; expected at least one node to send load to",
        )]);
    };
    Ok(target_node)
}

/// Measurement fields meshbench has no place for, kept as notes so they are not lost.
fn note_prototype_only_fields(m: &Measurement, notes: &mut Vec<String>) {
    if !m.servicegraphs.is_empty() {
        notes.push(format!(
            "measurement listed servicegraphs: {}",
            m.servicegraphs.join(", ")
        ));
    }
    if let Some(r) = &m.result_location {
        notes.push(format!(
            "prototype result location: {r} (use `meshbench run --out`)"
        ));
    }
    if let Some(c) = &m.cluster {
        notes.push(format!(
            "prototype cluster: {} {}",
            c.name.as_deref().unwrap_or("?"),
            c.ip.as_deref().unwrap_or("")
        ));
    }
}

/// The sweep with the prototype's fixed habits spelled out: open-loop load, a 30 s settle
/// and the mesh redeployed around every rate.
fn benchmark_spec(
    m: &Measurement,
    mesh_name: &str,
    target_service: String,
    notes: &mut Vec<String>,
) -> BenchmarkSpec {
    BenchmarkSpec {
        meshes: vec![mesh_name.to_string()],
        target: load_target(&m.load, target_service),
        load: LoadModel {
            model: LoadKind::Open,
            max_in_flight: m.load.users,
            think_time: None,
        },
        profile: imported_profile(&m.qps, secs(m.load.time), notes),
        warmup: m.load.preheat.filter(|p| *p > 0.0).map(|p| Warmup {
            duration: secs(p),
            rate: None,
            users: None,
        }),
        // The prototype waited 30 s after load before reading Prometheus.
        settle: Some(Duration::from("30s")),
        redeploy: Some(RedeployPolicy::PerStep),
        repetitions: None,
        request_timeout: m.load.time_out.filter(|t| *t > 0.0).map(secs),
        on_step_failure: None,
        loadgen: None,
        collection: m.prometheus.as_ref().map(|p| Collection {
            prometheus_url: Some(prometheus_url(p)),
            ..Collection::default()
        }),
        slos: None,
    }
}

/// The request the load generator sends; the path gets exactly one leading `/` whatever
/// the prototype wrote, and an empty query means none.
fn load_target(load: &Load, service: String) -> Target {
    let path = format!(
        "/{}",
        load.service_path
            .as_deref()
            .unwrap_or("")
            .trim_start_matches('/')
    );
    Target {
        service,
        path: Some(path),
        method: None,
        query: load.service_query.clone().filter(|q| !q.is_empty()),
        headers: BTreeMap::new(),
        body: None,
    }
}

/// The port may be written as a number or a string; anything else means Prometheus'
/// default, 9090.
fn prometheus_url(p: &Prometheus) -> String {
    let port = match &p.port {
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::String(s) => s.clone(),
        _ => "9090".into(),
    };
    format!("http://{}:{port}", p.ip)
}

/// Most stages a profile may have (the CRD's bound).
const MAX_STAGES: usize = 200;

/// The prototype's QPS sweep as meshbench runs it. Its script sent a `From: 0` step at
/// 1 rps (0 meant "as fast as possible" to vegeta, which it never wanted), so such a
/// sweep becomes explicit stages starting at 1 rps, and the output says so.
fn imported_profile(qps: &Qps, step_duration: Duration, notes: &mut Vec<String>) -> Profile {
    let sweep = |from: f64| Profile {
        stages: None,
        sweep: Some(Sweep {
            from,
            to: qps.to,
            step: qps.granularity,
            step_duration: step_duration.clone(),
        }),
    };
    let usable = qps.granularity.is_finite() && qps.granularity > 0.0 && qps.to.is_finite();
    if qps.from != 0.0 || !usable || qps.to < 0.0 {
        return sweep(qps.from);
    }
    // 1 rps, then granularity, 2×granularity, … up to To (as the prototype's loop).
    let count = (qps.to / qps.granularity + 1e-9).floor();
    if count + 1.0 > MAX_STAGES as f64 {
        notes.push(format!(
            "QPS.From 0: the prototype sent that step at 1 rps; {} steps exceed the {MAX_STAGES} a profile may hold, so the sweep starts at {} rps instead",
            count + 1.0,
            qps.granularity
        ));
        return sweep(qps.granularity);
    }
    let rates =
        std::iter::once(1.0).chain((1..=count as u32).map(|i| f64::from(i) * qps.granularity));
    let rest = if count >= 1.0 {
        format!(
            ", then {} to {} rps in steps of {}",
            qps.granularity,
            count * qps.granularity,
            qps.granularity
        )
    } else {
        format!(
            " (QPS.To {} is below QPS.Granularity {}: the only step)",
            qps.to, qps.granularity
        )
    };
    notes.push(format!(
        "QPS.From 0: the prototype's script sent that step at 1 rps (0 means \"as fast as possible\" to vegeta); imported as a first stage at 1 rps{rest}"
    ));
    Profile {
        stages: Some(
            rates
                .map(|rate| Stage {
                    name: None,
                    rate: Some(rate),
                    users: None,
                    duration: step_duration.clone(),
                })
                .collect(),
        ),
        sweep: None,
    }
}

/// `service:port/path` (scheme optional) → (service, `/path`).
fn parse_callout(url: &str) -> Option<(&str, String)> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host_port, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let host = host_port.split(':').next()?;
    if host.is_empty() {
        return None;
    }
    if let Some(port) = host_port.split(':').nth(1)
        && port.parse::<u16>().is_err()
    {
        return None;
    }
    Some((host, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callout_urls() {
        assert_eq!(
            parse_callout("backend:80/work"),
            Some(("backend", "/work".into()))
        );
        assert_eq!(
            parse_callout("http://b:8080/x/y"),
            Some(("b", "/x/y".into()))
        );
        assert_eq!(parse_callout("b"), Some(("b", "/".into())));
        assert_eq!(parse_callout(":80/x"), None);
        assert_eq!(parse_callout("b:port/x"), None);
    }
}
