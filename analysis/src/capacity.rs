//! Analytic capacity model: what a mesh should carry, predicted from its spec alone.
//!
//! The model follows the mesh's call graph from the entry endpoint:
//!
//! - **visit ratio** of an endpoint = expected visits per entry request, the sum over its
//!   callers of `caller visits × probability × repeat`;
//! - **CPU demand** of a service = Σ over its endpoints of `visits × cpu_seconds`, in CPU
//!   seconds per entry request;
//! - **capacity** of a service = `replicas × usable cores per replica ÷ demand`; usable cores
//!   are what the worker's request threads can use under the CFS quota (see [`queue`]): the
//!   limit below one core, ⌊limit⌋ above (a service without a limit falls back to its
//!   request, which the plan notes). Demand includes the worker's own CPU per request
//!   ([`Overhead`]);
//! - the **bottleneck** is the service with the smallest capacity at its largest replica
//!   count, and its capacity is the **predicted maximum throughput**;
//! - a service with an HPA settles at the fewest replicas whose utilization (per-request
//!   demand plus the idle replica's CPU) is within the target, inside `[min, max]`; because
//!   the upstream controller does not act within its 10 % tolerance, it can rest anywhere
//!   in a band around that count, depending on whether the load rose or fell;
//! - **latency**: each replica is its own station fed over its connections
//!   ([`queue`]: Allen–Cunneen waits with the arrivals' and service times' variability, the
//!   CFS quota's rate below one core); a visit takes its wait, its CPU time at full speed
//!   plus, below one core, the rest of each CFS period it runs past, the hop's own cost, its downstream calls (call groups in parallel as the expected
//!   maximum of their branches, calls in a group in sequence) and its delay (after the
//!   work, or as a minimum total time). Response times are carried as mean, variance and
//!   floor ([`moments`]), which gives the p99. It is a model, labelled as such wherever
//!   it is shown.

mod moments;
mod queue;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use moments::Moments;
use queue::Station;

/// Errors of the capacity model: all are problems of the input, named precisely.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    /// The entry endpoint does not exist in the mesh.
    #[error("entry endpoint {service} {path} is not defined in the mesh")]
    UnknownEntry {
        /// Service named as the entry.
        service: String,
        /// Endpoint path named as the entry.
        path: String,
    },
    /// An endpoint calls an endpoint that does not exist.
    #[error("{caller} calls {service} {path}, which is not defined in the mesh")]
    UnknownCallee {
        /// The calling endpoint, as `service path`.
        caller: String,
        /// Service the call names.
        service: String,
        /// Endpoint path the call names on that service.
        path: String,
    },
    /// The call graph has a cycle, so visit ratios are not finite.
    #[error("the call graph has a cycle through {cycle}; the model needs an acyclic graph")]
    Cycle {
        /// The endpoints of the cycle as `service path`, joined by ` → `, ending where it
        /// starts.
        cycle: String,
    },
    /// A number is out of range.
    #[error("{what} is {value}, expected {expected}")]
    InvalidValue {
        /// Where the value is in the input, e.g. `service api: replicas`.
        what: String,
        /// The value as given.
        value: String,
        /// The accepted range, in words.
        expected: &'static str,
    },
    /// Two services share a name.
    #[error("service {0} is defined twice")]
    DuplicateService(String),
    /// A budget cannot give every service its one replica.
    #[error(
        "a budget of {budget} cannot give each of the {services} services one replica ({needed} needed)"
    )]
    BudgetTooSmall {
        /// The budget as given (`4 pods`, `2.5 cores`).
        budget: String,
        /// Services in the mesh; each needs at least one replica.
        services: usize,
        /// What one replica per service costs, in the budget's unit.
        needed: String,
    },
}

/// Result alias of this module.
pub type Result<T, E = CapacityError> = std::result::Result<T, E>;

/// The endpoint that receives the load (the benchmark's target).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryPoint {
    /// Service that receives the load.
    pub service: String,
    /// Endpoint path the load is sent to.
    pub path: String,
}

/// Everything the model needs about one mesh, converted from the ServiceMesh spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityInput {
    /// The endpoint the load enters by; visit ratios are relative to it.
    pub entry: EntryPoint,
    /// Every service of the mesh, each once (a duplicate name is an error).
    pub services: Vec<ServiceModel>,
    /// What the worker and the platform add to every request (defaults: measured).
    #[serde(default)]
    pub overhead: Overhead,
    /// The one node every replica must fit on (a local run's machine); `None` for a
    /// cluster, whose nodes the model does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeModel>,
}

/// A node's allocatable resources. A replica whose requests do not fit what the replicas
/// already on it leave stays Pending, as the scheduler leaves it, and carries nothing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NodeModel {
    /// Allocatable CPU, cores.
    pub cpu_cores: f64,
    /// Allocatable memory, bytes.
    pub memory_bytes: f64,
}

/// The cost of the harness itself, measured rather than specified: without it a mesh of
/// cheap endpoints would be predicted to carry any rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Overhead {
    /// CPU seconds a worker spends per request beyond the endpoint's CPU (HTTP, metrics,
    /// the calls it makes). `cargo bench -p meshbench-worker`: 83 µs per hop.
    pub request_cpu_seconds: f64,
    /// Wall time one hop adds beyond the endpoint's work (client, network, server).
    /// `cargo bench -p meshbench-worker`: p50 +89 µs per hop.
    pub hop_latency_seconds: f64,
    /// CPU an idle replica uses (runtime, probes, metrics scrapes), in cores; the HPA sees it.
    pub idle_cores: f64,
    /// Squared coefficient of variation of the entry arrivals: 0 for the open loop's paced
    /// sends, 1 for Poisson arrivals.
    pub entry_ca2: f64,
}

impl Default for Overhead {
    fn default() -> Self {
        Overhead {
            request_cpu_seconds: 83e-6,
            hop_latency_seconds: 89e-6,
            idle_cores: IDLE_CORES,
            entry_ca2: 0.0,
        }
    }
}

impl Overhead {
    /// No overhead at all: the spec's figures alone (for checking the model's arithmetic).
    pub const NONE: Overhead = Overhead {
        request_cpu_seconds: 0.0,
        hop_latency_seconds: 0.0,
        idle_cores: 0.0,
        entry_ca2: 0.0,
    };
}

/// CPU of an idle worker replica, in cores: 30 ms of CPU time in 21 s with a `/ready`
/// probe every 0.5 s and a `/metrics` scrape every second (release build, this repo's
/// 2-core machine), rounded up.
const IDLE_CORES: f64 = 0.0015;

/// The HPA's tolerance: it does not act while |usage ratio − 1| ≤ 0.1 (upstream default
/// `--horizontal-pod-autoscaler-tolerance`).
const HPA_TOLERANCE: f64 = 0.1;

/// One service of the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceModel {
    /// Service name, unique in the mesh; calls refer to it.
    pub name: String,
    /// Replicas without an HPA (with an HPA this is only the initial count).
    pub replicas: u32,
    /// CPU request per pod in cores; the HPA's utilization is relative to it.
    pub cpu_request_cores: f64,
    /// CPU limit per pod in cores; `None` means unlimited (the model then uses the request).
    pub cpu_limit_cores: Option<f64>,
    /// CPU autoscaling, if any: replicas then follow the load within its bounds.
    pub hpa: Option<HpaModel>,
    /// CPU each replica burns with no requests (the spec's `idle.cpu`), in cores: it takes
    /// quota from the requests and counts toward the HPA's utilization.
    #[serde(default)]
    pub idle_cpu_cores: f64,
    /// Memory request per pod in bytes; with the CPU request it decides whether a replica
    /// fits on the node.
    #[serde(default)]
    pub memory_request_bytes: f64,
    /// Endpoints the service serves; calls refer to them by path.
    pub endpoints: Vec<EndpointModel>,
}

/// A HorizontalPodAutoscaler on CPU utilization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HpaModel {
    /// Fewest replicas the HPA scales to (at least 1).
    pub min: u32,
    /// Most replicas the HPA scales to (at least `min`).
    pub max: u32,
    /// Target average CPU utilization in percent of the request (e.g. 70).
    pub target_utilization_percent: f64,
}

/// One endpoint of a service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointModel {
    /// Path of the endpoint; calls refer to it together with the service name.
    pub path: String,
    /// CPU time burned per request, in seconds.
    pub cpu_seconds: f64,
    /// Mean of the added (non-CPU) delay per request, in seconds.
    pub delay_seconds_mean: f64,
    /// Variance of the added delay, in s² (0 for a fixed delay).
    #[serde(default)]
    pub delay_seconds_variance: f64,
    /// Smallest value the delay takes (a fixed delay, a uniform delay's minimum), seconds.
    #[serde(default)]
    pub delay_seconds_min: f64,
    /// The delay is a minimum total response time (`mode: minimumTotal`), which the work
    /// and calls overlap, rather than time added after them.
    #[serde(default)]
    pub delay_minimum_total: bool,
    /// Downstream calls: groups run in parallel, calls inside a group in sequence.
    pub call_groups: Vec<Vec<CallModel>>,
}

/// One downstream call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallModel {
    /// Service called.
    pub service: String,
    /// Endpoint path called on that service.
    pub path: String,
    /// Probability in [0, 1] that the call is made.
    pub probability: f64,
    /// How many times it is made when it is made.
    pub repeat: u32,
}

/// A budget to allocate replicas under.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// At most this many pods in the whole mesh.
    Pods(u32),
    /// At most this many CPU cores (Σ replicas × cores per replica).
    Cores(f64),
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Pods(p) => write!(f, "{p} pods"),
            Budget::Cores(c) => write!(f, "{c} cores"),
        }
    }
}

/// What the model says about one service, independent of the rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePlan {
    /// Service the figures are for.
    pub name: String,
    /// Expected visits of this service per entry request.
    pub visit_ratio: f64,
    /// CPU seconds this service burns per entry request.
    pub cpu_demand_seconds: f64,
    /// Cores one replica may use (the limit, or the request when there is no limit).
    pub cores_per_replica: f64,
    /// Cores its request threads can use at once: the limit below one core, ⌊limit⌋ above.
    #[serde(default)]
    pub usable_cores_per_replica: f64,
    /// Replicas without scaling (the configured count, or the HPA minimum).
    pub replicas: u32,
    /// Largest replica count (the HPA maximum, or the configured count).
    pub max_replicas: u32,
    /// Entry requests per second this service can carry at `replicas`; `None` if it burns no CPU.
    pub capacity_rps: Option<f64>,
    /// Entry requests per second this service can carry at `max_replicas` (at
    /// `max_admitted_replicas` when the node admits fewer).
    pub capacity_max_rps: Option<f64>,
    /// Replicas of `max_replicas` the node admits while the other services stay at their
    /// base count, when fewer than `max_replicas`; the rest would stay Pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_admitted_replicas: Option<u32>,
    /// The service's HPA, when it has one (as in the input).
    pub hpa: Option<HpaModel>,
}

/// One service at one entry rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceAtRate {
    /// Service the figures are for.
    pub name: String,
    /// Replicas at this rate: the HPA's steady state, or the configured count (including
    /// any the node leaves Pending).
    pub replicas: u32,
    /// Of `replicas`, those the node does not admit: Pending, they carry nothing.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pending: u32,
    /// Fewest and most replicas an HPA can rest at for this rate (its tolerance band):
    /// reached from fewer replicas it stops at the low end, from more at the high end.
    #[serde(default)]
    pub replicas_band: Option<(u32, u32)>,
    /// CPU used ÷ CPU available at these replicas (≥ 1 means saturated).
    pub utilization: f64,
    /// CPU used ÷ CPU requested, the figure the HPA compares to its target.
    pub request_utilization: f64,
    /// Mean time a visit waits for a CPU thread or the CPU quota, in ms; `None` when saturated.
    pub queueing_ms: Option<f64>,
}

/// The mesh at one entry rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatePlan {
    /// Entry rate these figures are for, requests per second.
    pub rate_rps: f64,
    /// Per service at this rate, in the order of the input.
    pub services: Vec<ServiceAtRate>,
    /// Throughput the mesh carries with these replicas.
    pub capacity_rps: Option<f64>,
    /// The service that limits `capacity_rps`.
    pub bottleneck: Option<String>,
    /// Predicted mean latency of an entry request; `None` when saturated.
    pub latency_mean_ms: Option<f64>,
    /// Predicted 99th percentile latency of an entry request; `None` when saturated.
    #[serde(default)]
    pub latency_p99_ms: Option<f64>,
    /// True when some service would need more CPU than its replicas have.
    pub saturated: bool,
}

/// A replica allocation under a budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// The budget the allocation stays within.
    pub budget: Budget,
    /// Replicas per service, in the order of the input.
    pub replicas: Vec<(String, u32)>,
    /// Pods the allocation uses: Σ replicas.
    pub pods: u32,
    /// Cores the allocation uses: Σ replicas × cores per replica (the limit, else the request).
    pub cores: f64,
    /// Throughput this allocation carries (the model's maximum under the budget).
    pub throughput_rps: Option<f64>,
    /// The service that limits `throughput_rps`.
    pub bottleneck: Option<String>,
}

/// The whole plan, printable as a table or serialisable as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityPlan {
    /// `service path` of the entry endpoint.
    pub entry: String,
    /// Rate-independent figures per service, in the order of the input.
    pub services: Vec<ServicePlan>,
    /// Service with the smallest capacity at its largest replica count.
    pub bottleneck: Option<String>,
    /// Capacity of the bottleneck: the most the mesh can carry.
    pub max_throughput_rps: Option<f64>,
    /// The mesh at each entry rate asked for, in that order.
    pub rates: Vec<RatePlan>,
    /// Best allocation under a budget, when one was asked for.
    pub allocation: Option<Allocation>,
    /// The node the replicas were fitted on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeModel>,
    /// Assumptions the model made about this input (e.g. a missing CPU limit).
    pub notes: Vec<String>,
    /// How latency is modelled; shown with every latency prediction.
    pub latency_model: String,
}

/// Label shown beside every modelled latency.
pub const LATENCY_MODEL: &str = "model: one G/G/c station per replica (Allen–Cunneen; \
     CFS quota below one core), paced arrivals kept per connection, parallel call groups as \
     the expected maximum (Clark), p99 from a log-normal tail above the fixed part";

/// A validated mesh with visit ratios computed, ready to evaluate at any rate.
#[derive(Debug, Clone)]
pub struct Model {
    entry: (usize, usize),
    services: Vec<ServiceModel>,
    /// visits[s][e]: visits of endpoint e of service s per entry request.
    visits: Vec<Vec<f64>>,
    /// Endpoints in topological order (callers before callees), reachable only.
    topo: Vec<(usize, usize)>,
    /// callees[s][e]: resolved downstream calls per group.
    callees: Vec<Vec<Vec<Vec<ResolvedCall>>>>,
    overhead: Overhead,
    node: Option<NodeModel>,
    notes: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct ResolvedCall {
    service: usize,
    endpoint: usize,
    probability: f64,
    repeat: u32,
    expected_calls: f64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn check(
    what: impl FnOnce() -> String,
    value: f64,
    ok: bool,
    expected: &'static str,
) -> Result<()> {
    if ok && value.is_finite() {
        Ok(())
    } else {
        Err(CapacityError::InvalidValue {
            what: what(),
            value: value.to_string(),
            expected,
        })
    }
}

/// Checks the mesh-wide figures: the worker overhead and the node.
fn check_overhead_and_node(input: &CapacityInput) -> Result<()> {
    let o = &input.overhead;
    for (what, v) in [
        ("overhead.request_cpu_seconds", o.request_cpu_seconds),
        ("overhead.hop_latency_seconds", o.hop_latency_seconds),
        ("overhead.idle_cores", o.idle_cores),
        ("overhead.entry_ca2", o.entry_ca2),
    ] {
        check(|| what.to_string(), v, v >= 0.0, "a finite number ≥ 0")?;
    }
    if let Some(n) = &input.node {
        for (what, v) in [
            ("node.cpu_cores", n.cpu_cores),
            ("node.memory_bytes", n.memory_bytes),
        ] {
            check(|| what.to_string(), v, v >= 0.0, "a finite number ≥ 0")?;
        }
    }
    Ok(())
}

/// Checks one service's resources, scaling and endpoints; a service without a CPU limit
/// gets a note.
fn check_service(s: &ServiceModel, notes: &mut Vec<String>) -> Result<()> {
    let name = &s.name;
    check(
        || format!("service {name}: cpu_request_cores"),
        s.cpu_request_cores,
        s.cpu_request_cores >= 0.0,
        "a finite number of cores ≥ 0",
    )?;
    check(
        || format!("service {name}: memory_request_bytes"),
        s.memory_request_bytes,
        s.memory_request_bytes >= 0.0,
        "a finite number of bytes ≥ 0",
    )?;
    if let Some(l) = s.cpu_limit_cores {
        check(
            || format!("service {name}: cpu_limit_cores"),
            l,
            l > 0.0,
            "a finite number of cores > 0",
        )?;
    } else {
        notes.push(format!(
            "service {name} has no CPU limit: its capacity is computed from its request \
             ({} cores)",
            s.cpu_request_cores
        ));
    }
    check_scaling(s)?;
    if s.cpu_limit_cores.unwrap_or(s.cpu_request_cores) <= 0.0
        && s.endpoints.iter().any(|e| e.cpu_seconds > 0.0)
    {
        return Err(CapacityError::InvalidValue {
            what: format!("service {name}: CPU per replica (limit, else request)"),
            value: "0".into(),
            expected: "cores > 0 for a service that burns CPU",
        });
    }
    for e in &s.endpoints {
        check_endpoint(name, e)?;
    }
    Ok(())
}

/// Checks a service's HPA (bounds, target, a CPU request to scale on) or, without one, its
/// fixed replica count.
fn check_scaling(s: &ServiceModel) -> Result<()> {
    let name = &s.name;
    match &s.hpa {
        Some(h) => {
            if h.min == 0 || h.max < h.min {
                return Err(CapacityError::InvalidValue {
                    what: format!("service {name}: hpa min/max"),
                    value: format!("{}/{}", h.min, h.max),
                    expected: "1 ≤ min ≤ max",
                });
            }
            let t = h.target_utilization_percent;
            check(
                || format!("service {name}: hpa target_utilization_percent"),
                t,
                t > 0.0,
                "a percentage > 0",
            )?;
            check(
                || format!("service {name}: cpu_request_cores (needed by its HPA)"),
                s.cpu_request_cores,
                s.cpu_request_cores > 0.0,
                "a number of cores > 0",
            )?;
        }
        None => {
            if s.replicas == 0 {
                return Err(CapacityError::InvalidValue {
                    what: format!("service {name}: replicas"),
                    value: "0".into(),
                    expected: "at least 1 replica",
                });
            }
        }
    }
    Ok(())
}

/// Checks one endpoint's CPU time, delay and call probabilities.
fn check_endpoint(name: &str, e: &EndpointModel) -> Result<()> {
    let p = &e.path;
    check(
        || format!("{name} {p}: cpu_seconds"),
        e.cpu_seconds,
        e.cpu_seconds >= 0.0,
        "seconds ≥ 0",
    )?;
    check(
        || format!("{name} {p}: delay_seconds_mean"),
        e.delay_seconds_mean,
        e.delay_seconds_mean >= 0.0,
        "seconds ≥ 0",
    )?;
    check(
        || format!("{name} {p}: delay_seconds_variance"),
        e.delay_seconds_variance,
        e.delay_seconds_variance >= 0.0,
        "s² ≥ 0",
    )?;
    check(
        || format!("{name} {p}: delay_seconds_min"),
        e.delay_seconds_min,
        (0.0..=e.delay_seconds_mean).contains(&e.delay_seconds_min),
        "seconds between 0 and the delay's mean",
    )?;
    for c in e.call_groups.iter().flatten() {
        check(
            || format!("{name} {p}: call to {} {} probability", c.service, c.path),
            c.probability,
            (0.0..=1.0).contains(&c.probability),
            "a probability in [0, 1]",
        )?;
    }
    Ok(())
}

/// (service, endpoint) indices of `service path`.
fn find_endpoint(
    input: &CapacityInput,
    index: &HashMap<&str, usize>,
    service: &str,
    path: &str,
) -> Option<(usize, usize)> {
    let s = *index.get(service)?;
    let e = input.services[s]
        .endpoints
        .iter()
        .position(|e| e.path == path)?;
    Some((s, e))
}

/// Every call of every endpoint resolved to the indices of its callee, per call group.
fn resolve_calls(
    input: &CapacityInput,
    index: &HashMap<&str, usize>,
) -> Result<Vec<Vec<Vec<Vec<ResolvedCall>>>>> {
    let mut callees = Vec::with_capacity(input.services.len());
    for s in &input.services {
        let mut per_ep = Vec::with_capacity(s.endpoints.len());
        for e in &s.endpoints {
            let mut groups = Vec::with_capacity(e.call_groups.len());
            for g in &e.call_groups {
                let mut calls = Vec::with_capacity(g.len());
                for c in g {
                    let (cs, ce) =
                        find_endpoint(input, index, &c.service, &c.path).ok_or_else(|| {
                            CapacityError::UnknownCallee {
                                caller: format!("{} {}", s.name, e.path),
                                service: c.service.clone(),
                                path: c.path.clone(),
                            }
                        })?;
                    calls.push(ResolvedCall {
                        service: cs,
                        endpoint: ce,
                        probability: c.probability,
                        repeat: c.repeat,
                        expected_calls: c.probability * f64::from(c.repeat),
                    });
                }
                groups.push(calls);
            }
            per_ep.push(groups);
        }
        callees.push(per_ep);
    }
    Ok(callees)
}

/// Visits of each endpoint per entry request, propagated in topological order.
fn visit_counts(
    input: &CapacityInput,
    callees: &[Vec<Vec<Vec<ResolvedCall>>>],
    topo: &[(usize, usize)],
    entry: (usize, usize),
) -> Vec<Vec<f64>> {
    let mut visits: Vec<Vec<f64>> = input
        .services
        .iter()
        .map(|s| vec![0.0; s.endpoints.len()])
        .collect();
    visits[entry.0][entry.1] = 1.0;
    for &(s, e) in topo {
        let v = visits[s][e];
        for c in callees[s][e].iter().flatten() {
            visits[c.service][c.endpoint] += v * c.expected_calls;
        }
    }
    visits
}

impl Model {
    /// Validates the input and computes visit ratios.
    pub fn new(input: &CapacityInput) -> Result<Model> {
        check_overhead_and_node(input)?;
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut notes = Vec::new();
        for (i, s) in input.services.iter().enumerate() {
            if index.insert(s.name.as_str(), i).is_some() {
                return Err(CapacityError::DuplicateService(s.name.clone()));
            }
            check_service(s, &mut notes)?;
        }
        let entry = find_endpoint(input, &index, &input.entry.service, &input.entry.path)
            .ok_or_else(|| CapacityError::UnknownEntry {
                service: input.entry.service.clone(),
                path: input.entry.path.clone(),
            })?;
        let callees = resolve_calls(input, &index)?;
        let topo = topological_order(input, &callees, entry)?;
        let visits = visit_counts(input, &callees, &topo, entry);
        Ok(Model {
            entry,
            services: input.services.clone(),
            visits,
            topo,
            callees,
            overhead: input.overhead,
            node: input.node,
            notes,
        })
    }

    fn visit_ratio(&self, s: usize) -> f64 {
        self.visits[s].iter().sum()
    }

    /// CPU time of one visit to endpoint `e` of service `s`, the worker's own share included.
    fn visit_cpu(&self, s: usize, e: usize) -> f64 {
        self.services[s].endpoints[e].cpu_seconds + self.overhead.request_cpu_seconds
    }

    /// CPU seconds service `s` burns per entry request.
    fn demand(&self, s: usize) -> f64 {
        (0..self.services[s].endpoints.len())
            .map(|e| self.visits[s][e] * self.visit_cpu(s, e))
            .sum()
    }

    fn cores_per_replica(&self, s: usize) -> f64 {
        let svc = &self.services[s];
        svc.cpu_limit_cores.unwrap_or(svc.cpu_request_cores)
    }

    /// A replica of `s` as a queueing station; the idle load runs on threads of its own, so
    /// it takes only from the quota, not from the request threads.
    fn station(&self, s: usize) -> Station {
        let limit = self.cores_per_replica(s);
        Station {
            cores: (limit - self.idle_cores(s)).max(0.0),
            ..Station::with_cores(limit)
        }
    }

    fn base_replicas(&self, s: usize) -> u32 {
        let svc = &self.services[s];
        svc.hpa.as_ref().map_or(svc.replicas, |h| h.min)
    }

    fn max_replicas(&self, s: usize) -> u32 {
        let svc = &self.services[s];
        svc.hpa.as_ref().map_or(svc.replicas, |h| h.max)
    }

    /// CPU a replica of `s` burns whatever the load: the worker's and the spec's idle load.
    fn idle_cores(&self, s: usize) -> f64 {
        self.overhead.idle_cores + self.services[s].idle_cpu_cores
    }

    /// Cores left for requests in one replica of `s`.
    fn request_cores(&self, s: usize) -> f64 {
        self.station(s).usable_cores()
    }

    /// Entry requests per second one replica of service `s` carries; `None` if it is never
    /// visited.
    fn per_replica_capacity(&self, s: usize) -> Option<f64> {
        let d = self.demand(s);
        (d > 0.0).then(|| self.request_cores(s) / d)
    }

    fn capacity_at(&self, s: usize, replicas: u32) -> Option<f64> {
        self.per_replica_capacity(s)
            .map(|c| c * f64::from(replicas))
    }

    /// Replicas the node admits when `wanted` are asked for (input order), as a scheduler
    /// that binds pods in creation order leaves them: every service's base replicas first
    /// (deployed together, in input order), then the extra ones, in input order. A service
    /// whose next replica does not fit gets no more (its replicas are alike), a later one
    /// with smaller requests still can. Without a node every replica is admitted.
    pub fn admitted(&self, wanted: &[u32]) -> Vec<u32> {
        let Some(node) = self.node else {
            return wanted.to_vec();
        };
        let mut free = (node.cpu_cores, node.memory_bytes);
        let mut out = vec![0u32; wanted.len()];
        let bases: Vec<u32> = (0..wanted.len())
            .map(|s| self.base_replicas(s).min(wanted[s]))
            .collect();
        for (pass, upto) in [&bases[..], wanted].into_iter().enumerate() {
            for (s, &want) in upto.iter().enumerate() {
                if pass == 1 && out[s] < bases[s] {
                    // Its base replicas did not all fit: no extra ones either.
                    continue;
                }
                let svc = &self.services[s];
                let (cpu, memory) = (svc.cpu_request_cores, svc.memory_request_bytes);
                while out[s] < want && cpu <= free.0 + 1e-9 && memory <= free.1 {
                    free = (free.0 - cpu, free.1 - memory);
                    out[s] += 1;
                }
            }
        }
        out
    }

    /// The most replicas of `s` the node admits with the other services at their base.
    fn max_admitted(&self, s: usize) -> u32 {
        let wanted: Vec<u32> = (0..self.services.len())
            .map(|i| {
                if i == s {
                    self.max_replicas(i)
                } else {
                    self.base_replicas(i)
                }
            })
            .collect();
        self.admitted(&wanted)[s]
    }

    /// The HPAs' steady-state replicas at `rate_rps`, before admission.
    fn wanted_at(&self, rate_rps: f64) -> Vec<u32> {
        (0..self.services.len())
            .map(|s| self.hpa_replicas(s, rate_rps))
            .collect()
    }

    /// The most entry requests per second the mesh carries, and where it stops. Without a
    /// node: every service at its maximum. On a node the replicas that fit depend on how
    /// far each HPA scales, so it is the rate the admitted replicas carry just as the
    /// HPAs want them (found by bisection; the carried rate falls as the rate rises).
    fn max_throughput(&self) -> (Option<String>, Option<f64>) {
        let all_max: Vec<u32> = (0..self.services.len())
            .map(|s| self.max_replicas(s))
            .collect();
        let unbounded = self.bottleneck_for(&all_max);
        let (Some(_), Some(top)) = (self.node, unbounded.1) else {
            return unbounded;
        };
        let carried = |r: f64| self.bottleneck_for(&self.admitted(&self.wanted_at(r)));
        if carried(top).1.is_some_and(|c| c >= top) {
            return unbounded;
        }
        let (mut lo, mut hi) = (0.0, top);
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if carried(mid).1.is_some_and(|c| c >= mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let (bottleneck, _) = carried(hi);
        (bottleneck, Some(lo))
    }

    /// Names of the services, in input order.
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(|s| s.name.as_str())
    }

    /// Replicas needed for the per-pod usage (entry rate × demand ÷ replicas, plus the idle
    /// replica's CPU) to be at `ratio` × the HPA's target; `None` when idle CPU alone
    /// exceeds that (no replica count gets there).
    fn replicas_for_ratio(&self, s: usize, h: &HpaModel, rate_rps: f64, ratio: f64) -> Option<f64> {
        let per_pod = self.services[s].cpu_request_cores * h.target_utilization_percent / 100.0;
        let room = ratio * per_pod - self.idle_cores(s);
        (room > 0.0).then(|| rate_rps.max(0.0) * self.demand(s) / room)
    }

    /// The replica count an HPA settles on at entry rate `rate_rps` (the fewest replicas at
    /// or under the target), or the configured count for a service without an HPA.
    pub fn hpa_replicas(&self, service: usize, rate_rps: f64) -> u32 {
        let svc = &self.services[service];
        match &svc.hpa {
            None => svc.replicas,
            Some(h) => {
                let needed = self
                    .replicas_for_ratio(service, h, rate_rps, 1.0)
                    .map_or(f64::from(h.max), ceil_tolerant);
                needed.clamp(f64::from(h.min), f64::from(h.max)) as u32
            }
        }
    }

    /// The counts an HPA can rest at for entry rate `rate_rps`: it does not act while the
    /// usage ratio is within its tolerance of 1, so a load that rose leaves it at the first
    /// count with a ratio ≤ 1.1 and a load that fell at the last with a ratio ≥ 0.9.
    /// `None` without an HPA.
    pub fn hpa_band(&self, service: usize, rate_rps: f64) -> Option<(u32, u32)> {
        let h = self.services[service].hpa.as_ref()?;
        let clamp = |x: f64| x.clamp(f64::from(h.min), f64::from(h.max)) as u32;
        let point = self.hpa_replicas(service, rate_rps);
        let low = self
            .replicas_for_ratio(service, h, rate_rps, 1.0 + HPA_TOLERANCE)
            .map_or(h.max, |r| clamp(ceil_tolerant(r)));
        let high = self
            .replicas_for_ratio(service, h, rate_rps, 1.0 - HPA_TOLERANCE)
            .map_or(h.max, |r| clamp((r + 1e-9).floor()));
        Some((low.min(point), high.max(point)))
    }

    /// Per-service plans (visit ratio, demand, capacity).
    pub fn service_plans(&self) -> Vec<ServicePlan> {
        (0..self.services.len())
            .map(|s| ServicePlan {
                name: self.services[s].name.clone(),
                visit_ratio: self.visit_ratio(s),
                cpu_demand_seconds: self.demand(s),
                cores_per_replica: self.cores_per_replica(s),
                usable_cores_per_replica: self.request_cores(s),
                replicas: self.base_replicas(s),
                max_replicas: self.max_replicas(s),
                capacity_rps: self.capacity_at(s, self.base_replicas(s)),
                capacity_max_rps: self.capacity_at(s, self.max_admitted(s)),
                max_admitted_replicas: Some(self.max_admitted(s))
                    .filter(|&m| m < self.max_replicas(s)),
                hpa: self.services[s].hpa.clone(),
            })
            .collect()
    }

    /// The bottleneck and its capacity for given replica counts (input order).
    fn bottleneck_for(&self, replicas: &[u32]) -> (Option<String>, Option<f64>) {
        let mut best: Option<(usize, f64)> = None;
        for (s, &r) in replicas.iter().enumerate() {
            if let Some(c) = self.capacity_at(s, r)
                && best.is_none_or(|(_, b)| c < b)
            {
                best = Some((s, c));
            }
        }
        match best {
            Some((s, c)) => (Some(self.services[s].name.clone()), Some(c)),
            None => (None, None),
        }
    }

    /// Evaluates the mesh at entry rate `rate_rps` with HPA steady-state replicas.
    pub fn at_rate(&self, rate_rps: f64) -> RatePlan {
        self.at_rate_with(rate_rps, &self.wanted_at(rate_rps))
    }

    /// Evaluates the mesh at entry rate `rate_rps` with the given replicas (input order),
    /// of which the node admits [`Model::admitted`].
    pub fn at_rate_with(&self, rate_rps: f64, wanted: &[u32]) -> RatePlan {
        let replicas = self.admitted(wanted);
        let waits = self.waits(rate_rps, &replicas);
        let services: Vec<ServiceAtRate> = (0..self.services.len())
            .map(|s| {
                let mut at = self.service_at_rate(s, rate_rps, replicas[s], waits[s]);
                at.replicas = wanted[s];
                at.pending = wanted[s].saturating_sub(replicas[s]);
                at
            })
            .collect();
        let saturated = waits.iter().any(Option::is_none);
        let response = (!saturated).then(|| {
            let waits: Vec<Moments> = waits.iter().map(|w| w.unwrap_or(Moments::ZERO)).collect();
            self.response(&waits)
        });
        let (bottleneck, capacity_rps) = self.bottleneck_for(&replicas);
        RatePlan {
            rate_rps,
            services,
            capacity_rps,
            bottleneck,
            latency_mean_ms: response.map(|r| r.mean * 1000.0),
            latency_p99_ms: response.map(|r| r.p99() * 1000.0),
            saturated,
        }
    }

    fn service_at_rate(
        &self,
        s: usize,
        rate_rps: f64,
        r: u32,
        wait: Option<Moments>,
    ) -> ServiceAtRate {
        let svc = &self.services[s];
        let used = rate_rps * self.demand(s);
        let ratio = |capacity: f64| {
            if used == 0.0 {
                0.0
            } else if capacity > 0.0 {
                used / capacity
            } else {
                f64::INFINITY
            }
        };
        let requested = f64::from(r) * svc.cpu_request_cores;
        let idle = f64::from(r) * self.idle_cores(s);
        ServiceAtRate {
            name: svc.name.clone(),
            replicas: r,
            pending: 0,
            replicas_band: self.hpa_band(s, rate_rps),
            utilization: ratio(f64::from(r) * self.request_cores(s)),
            request_utilization: if requested > 0.0 {
                (used + idle) / requested
            } else {
                ratio(0.0)
            },
            queueing_ms: wait.map(|w| w.mean * 1000.0),
        }
    }

    /// Squared coefficient of variation of each service's arrivals, before they are split
    /// over its replicas: the entry stream's, thinned by every call's probability and
    /// merged over callers by rate (Whitt's QNA superposition).
    fn arrival_ca2(&self) -> Vec<f64> {
        let mut num: Vec<Vec<f64>> = self.visits.iter().map(|v| vec![0.0; v.len()]).collect();
        let mut den = num.clone();
        num[self.entry.0][self.entry.1] = self.overhead.entry_ca2;
        den[self.entry.0][self.entry.1] = 1.0;
        for &(s, e) in &self.topo {
            let c2 = if den[s][e] > 0.0 {
                num[s][e] / den[s][e]
            } else {
                1.0
            };
            for c in self.callees[s][e].iter().flatten() {
                let flow = self.visits[s][e] * c.expected_calls;
                num[c.service][c.endpoint] += flow * queue::thinned(c2, c.probability);
                den[c.service][c.endpoint] += flow;
            }
        }
        num.iter()
            .zip(&den)
            .map(|(n, d)| {
                let total: f64 = d.iter().sum();
                if total > 0.0 {
                    n.iter().sum::<f64>() / total
                } else {
                    1.0
                }
            })
            .collect()
    }

    /// Mean CPU per visit of service `s` and the squared coefficient of variation of the
    /// visits' CPU times (their mix over endpoints; each endpoint's CPU is fixed).
    fn service_time(&self, s: usize) -> (f64, f64) {
        let visits = self.visit_ratio(s);
        if visits <= 0.0 {
            return (0.0, 0.0);
        }
        let (mut m1, mut m2) = (0.0, 0.0);
        for (e, v) in self.visits[s].iter().enumerate() {
            let t = self.visit_cpu(s, e);
            m1 += v / visits * t;
            m2 += v / visits * t * t;
        }
        let cs2 = if m1 > 0.0 {
            (m2 / (m1 * m1) - 1.0).max(0.0)
        } else {
            0.0
        };
        (m1, cs2)
    }

    /// The wait of a visit to each service at its replicas: `None` when it cannot keep up.
    fn waits(&self, rate_rps: f64, replicas: &[u32]) -> Vec<Option<Moments>> {
        let ca2 = self.arrival_ca2();
        (0..self.services.len())
            .map(|s| {
                let visits = self.visit_ratio(s);
                if visits <= 0.0 || rate_rps <= 0.0 {
                    return Some(Moments::ZERO);
                }
                let r = replicas[s];
                if r == 0 {
                    return None;
                }
                // Each replica gets its share of the visits, but not a random sample of them:
                // Services balance per connection and a caller's keep-alive connections each
                // carry runs of consecutive requests, so a replica sees stretches of the
                // caller's stream with that stream's variability. (Measured: a paced 40 rps
                // over 2–3 back-end replicas queues no more than over one.)
                let (service, cs2) = self.service_time(s);
                self.station(s)
                    .wait(rate_rps * visits / f64::from(r), service, ca2[s], cs2)
            })
            .collect()
    }

    /// Response time of an entry request given every service's wait.
    fn response(&self, waits: &[Moments]) -> Moments {
        let mut resp: Vec<Vec<Moments>> = self
            .services
            .iter()
            .map(|s| vec![Moments::ZERO; s.endpoints.len()])
            .collect();
        for &(s, e) in self.topo.iter().rev() {
            let ep = &self.services[s].endpoints[e];
            // Without a limit there is no CFS quota to wait out.
            let run = match self.services[s].cpu_limit_cores {
                Some(_) => self.station(s).run_time(ep.cpu_seconds),
                None => ep.cpu_seconds,
            };
            let work = waits[s].then(Moments::fixed(run + self.overhead.hop_latency_seconds));
            let downstream = self.callees[s][e]
                .iter()
                .map(|g| {
                    g.iter().fold(Moments::ZERO, |acc, c| {
                        acc.then(resp[c.service][c.endpoint].call(c.probability, c.repeat))
                    })
                })
                .reduce(Moments::max)
                .unwrap_or(Moments::ZERO);
            let busy = work.then(downstream);
            let delay = Moments {
                mean: ep.delay_seconds_mean,
                variance: ep.delay_seconds_variance,
                floor: ep.delay_seconds_min,
            };
            resp[s][e] = if ep.delay_minimum_total {
                busy.max(delay)
            } else {
                busy.then(delay)
            };
        }
        resp[self.entry.0][self.entry.1]
    }

    /// The allocation that maximises throughput under `budget` (fewest pods among equals);
    /// every service gets at least one replica, HPA bounds are ignored (the budget decides).
    pub fn best_allocation(&self, budget: Budget) -> Result<Allocation> {
        let n = self.services.len();
        let cores: Vec<f64> = (0..n).map(|s| self.cores_per_replica(s)).collect();
        // Pods in u64: a budget near u32::MAX summed over services must not overflow.
        let cost = |replicas: &[u32]| -> (u64, f64) {
            let pods = replicas.iter().map(|&r| u64::from(r)).sum();
            let c = replicas
                .iter()
                .zip(&cores)
                .map(|(r, c)| f64::from(*r) * c)
                .sum();
            (pods, c)
        };
        let fits = |replicas: &[u32]| -> bool {
            let (pods, c) = cost(replicas);
            match budget {
                Budget::Pods(p) => pods <= u64::from(p),
                Budget::Cores(b) => c <= b + 1e-9,
            }
        };
        let minimum = vec![1u32; n];
        if !fits(&minimum) {
            let (pods, c) = cost(&minimum);
            return Err(CapacityError::BudgetTooSmall {
                budget: budget.to_string(),
                services: n,
                needed: match budget {
                    Budget::Pods(_) => format!("{pods} pods"),
                    Budget::Cores(_) => format!("{c} cores"),
                },
            });
        }
        let max_per_service = |s: usize| -> u32 {
            match budget {
                Budget::Pods(p) => p,
                Budget::Cores(b) => (b / cores[s]).floor().min(f64::from(u32::MAX)) as u32,
            }
        };
        const MAX_CANDIDATES: u64 = 2_000_000;
        let total: u64 = (0..n)
            .filter(|&s| self.per_replica_capacity(s).is_some())
            .map(|s| u64::from(max_per_service(s)))
            .sum();
        if total > MAX_CANDIDATES {
            return Err(CapacityError::InvalidValue {
                what: "budget".into(),
                value: budget.to_string(),
                expected: "at most about 2 million candidate replica counts",
            });
        }
        let mut candidates: Vec<f64> = Vec::new();
        for s in 0..n {
            if let Some(c) = self.per_replica_capacity(s) {
                candidates.extend((1..=max_per_service(s)).map(|r| c * f64::from(r)));
            }
        }
        candidates.sort_by(|a, b| b.total_cmp(a));
        candidates.dedup();
        let needed_for = |t: f64| -> Vec<u32> {
            (0..n)
                .map(|s| match self.per_replica_capacity(s) {
                    Some(c) => ceil_tolerant(t / c).max(1.0).min(f64::from(u32::MAX)) as u32,
                    None => 1,
                })
                .collect()
        };
        let replicas = candidates
            .iter()
            .map(|&t| needed_for(t))
            .find(|r| fits(r))
            .unwrap_or(minimum);
        let (pods, c) = cost(&replicas);
        let (bottleneck, throughput_rps) = self.bottleneck_for(&replicas);
        Ok(Allocation {
            budget,
            replicas: self
                .services
                .iter()
                .zip(&replicas)
                .map(|(s, r)| (s.name.clone(), *r))
                .collect(),
            // Within a pod budget (a u32) or a sum of u32 replica counts far below it.
            pods: u32::try_from(pods).unwrap_or(u32::MAX),
            cores: c,
            throughput_rps,
            bottleneck,
        })
    }

    /// The full plan at the given entry rates.
    pub fn plan(&self, rates: &[f64]) -> CapacityPlan {
        let (bottleneck, max_throughput_rps) = self.max_throughput();
        let (es, ee) = self.entry;
        CapacityPlan {
            entry: format!(
                "{} {}",
                self.services[es].name, self.services[es].endpoints[ee].path
            ),
            services: self.service_plans(),
            bottleneck,
            max_throughput_rps,
            rates: rates.iter().map(|&r| self.at_rate(r)).collect(),
            allocation: None,
            node: self.node,
            notes: self.notes.clone(),
            latency_model: LATENCY_MODEL.to_string(),
        }
    }
}

/// `ceil` that ignores floating-point noise just above an integer (40 × 0.025 ÷ 1 is 1.0000000000000002).
fn ceil_tolerant(x: f64) -> f64 {
    (x - 1e-9).ceil().max(0.0)
}

/// Probability that an arrival waits in an M/M/c queue with offered load `a` = λ/μ erlangs.
/// Uses the Erlang B recursion, which is stable for large `c`.
pub fn erlang_c(c: u32, a: f64) -> f64 {
    if a <= 0.0 {
        return 0.0;
    }
    let mut b = 1.0;
    for k in 1..=c {
        b = a * b / (f64::from(k) + a * b);
    }
    let rho = a / f64::from(c);
    if rho >= 1.0 {
        return 1.0;
    }
    b / (1.0 - rho * (1.0 - b))
}

fn topological_order(
    input: &CapacityInput,
    callees: &[Vec<Vec<Vec<ResolvedCall>>>],
    entry: (usize, usize),
) -> Result<Vec<(usize, usize)>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut mark: Vec<Vec<Mark>> = input
        .services
        .iter()
        .map(|s| vec![Mark::New; s.endpoints.len()])
        .collect();
    let mut post = Vec::new();
    // Iterative DFS so a deep chain cannot overflow the stack.
    let mut stack: Vec<((usize, usize), usize)> = vec![(entry, 0)];
    mark[entry.0][entry.1] = Mark::Active;
    while let Some(&mut ((s, e), ref mut next)) = stack.last_mut() {
        let calls: Vec<&ResolvedCall> = callees[s][e].iter().flatten().collect();
        if let Some(c) = calls.get(*next) {
            *next += 1;
            let target = (c.service, c.endpoint);
            match mark[target.0][target.1] {
                Mark::New => {
                    mark[target.0][target.1] = Mark::Active;
                    stack.push((target, 0));
                }
                Mark::Active => {
                    let start = stack.iter().position(|(n, _)| *n == target).unwrap_or(0);
                    let mut names: Vec<String> = stack[start..]
                        .iter()
                        .map(|((s, e), _)| {
                            format!(
                                "{} {}",
                                input.services[*s].name, input.services[*s].endpoints[*e].path
                            )
                        })
                        .collect();
                    names.push(format!(
                        "{} {}",
                        input.services[target.0].name,
                        input.services[target.0].endpoints[target.1].path
                    ));
                    return Err(CapacityError::Cycle {
                        cycle: names.join(" → "),
                    });
                }
                Mark::Done => {}
            }
        } else {
            mark[s][e] = Mark::Done;
            post.push((s, e));
            stack.pop();
        }
    }
    post.reverse();
    Ok(post)
}

/// Plans `input` at the given entry rates (the `meshbench plan` computation).
pub fn plan(input: &CapacityInput, rates: &[f64]) -> Result<CapacityPlan> {
    Ok(Model::new(input)?.plan(rates))
}

/// Plans `input` and adds the best allocation under `budget`.
pub fn plan_with_budget(
    input: &CapacityInput,
    rates: &[f64],
    budget: Budget,
) -> Result<CapacityPlan> {
    let model = Model::new(input)?;
    let mut plan = model.plan(rates);
    plan.allocation = Some(model.best_allocation(budget)?);
    Ok(plan)
}

/// The allocation that maximises throughput under `budget`.
pub fn best_allocation(input: &CapacityInput, budget: Budget) -> Result<Allocation> {
    Model::new(input)?.best_allocation(budget)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        Some(_) => "∞".into(),
        None => "–".into(),
    }
}

impl fmt::Display for CapacityPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Capacity plan for entry {}", self.entry)?;
        writeln!(f)?;
        write_table(f, &self.service_rows())?;
        writeln!(f)?;
        self.write_bottleneck_and_node(f)?;
        if !self.rates.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "At entry rates (HPA steady state, its tolerance band in parentheses; latency \
                 is a {})",
                self.latency_model
            )?;
            write_table(f, &self.rate_rows())?;
        }
        self.write_allocation(f)?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

impl CapacityPlan {
    /// The services table of the printed plan: one row per service, header first.
    fn service_rows(&self) -> Vec<Vec<String>> {
        let mut rows = vec![vec![
            "service".to_string(),
            "visits".into(),
            "cpu ms/req".into(),
            "cores/pod".into(),
            "replicas".into(),
            "capacity rps".into(),
            "max replicas".into(),
            "max capacity rps".into(),
            "hpa target".into(),
        ]];
        for s in &self.services {
            rows.push(vec![
                s.name.clone(),
                format!("{:.3}", s.visit_ratio),
                format!("{:.2}", s.cpu_demand_seconds * 1000.0),
                format!("{:.3}", s.cores_per_replica),
                s.replicas.to_string(),
                opt(s.capacity_rps, 1),
                match s.max_admitted_replicas {
                    Some(fit) => format!("{} ({fit} fit)", s.max_replicas),
                    None => s.max_replicas.to_string(),
                },
                opt(s.capacity_max_rps, 1),
                s.hpa.as_ref().map_or("–".into(), |h| {
                    format!("{}%", h.target_utilization_percent)
                }),
            ]);
        }
        rows
    }

    /// The bottleneck line, and the node's line when replicas were fitted on one.
    fn write_bottleneck_and_node(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Bottleneck: {}   predicted maximum throughput: {} rps",
            self.bottleneck
                .as_deref()
                .unwrap_or("none (no service burns CPU)"),
            opt(self.max_throughput_rps, 1)
        )?;
        if let Some(n) = &self.node {
            writeln!(
                f,
                "Node allocatable: {:.2} cores, {:.0} MiB (replicas that do not fit stay Pending)",
                n.cpu_cores,
                n.memory_bytes / (1024.0 * 1024.0)
            )?;
        }
        Ok(())
    }

    /// The entry-rates table of the printed plan: one row per rate, header first.
    fn rate_rows(&self) -> Vec<Vec<String>> {
        let mut header = vec!["rate rps".to_string()];
        header.extend(self.services.iter().map(|s| format!("{} pods", s.name)));
        header.extend([
            "capacity rps".into(),
            "bottleneck".into(),
            "mean ms (model)".into(),
            "p99 ms (model)".into(),
        ]);
        let mut rows = vec![header];
        for r in &self.rates {
            let mut row = vec![format!("{:.1}", r.rate_rps)];
            row.extend(r.services.iter().map(pods_cell));
            row.push(opt(r.capacity_rps, 1));
            row.push(r.bottleneck.clone().unwrap_or_else(|| "–".into()));
            if r.saturated {
                row.extend(["saturated".into(), "saturated".into()]);
            } else {
                row.extend([opt(r.latency_mean_ms, 1), opt(r.latency_p99_ms, 1)]);
            }
            rows.push(row);
        }
        rows
    }

    /// The best-allocation paragraph, when a budget was given.
    fn write_allocation(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(a) = &self.allocation else {
            return Ok(());
        };
        writeln!(f)?;
        let parts: Vec<String> = a.replicas.iter().map(|(n, r)| format!("{n}={r}")).collect();
        writeln!(
            f,
            "Best allocation for {}: {} ({} pods, {:.2} cores) carries {} rps, bottleneck {}",
            a.budget,
            parts.join(" "),
            a.pods,
            a.cores,
            opt(a.throughput_rps, 1),
            a.bottleneck.as_deref().unwrap_or("none")
        )
    }
}

/// A service's cell of the entry-rates table: replicas, the HPA's band, Pending replicas,
/// and CPU utilization when above 100 %.
fn pods_cell(s: &ServiceAtRate) -> String {
    let mut count = match s.replicas_band {
        Some((lo, hi)) if lo != hi => format!("{} ({lo}–{hi})", s.replicas),
        _ => s.replicas.to_string(),
    };
    if s.pending > 0 {
        count.push_str(&format!(", {} Pending", s.pending));
    }
    if s.utilization > 1.0 {
        format!("{count} ({:.0}% cpu!)", s.utilization * 100.0)
    } else {
        count
    }
}

impl CapacityPlan {
    /// The plan as `meshbench plan` prints it: the readable table, or pretty JSON for CI.
    pub fn render(&self, json: bool) -> String {
        if json {
            // Every field is a plain number, string or list: serialisation cannot fail.
            serde_json::to_string_pretty(self).unwrap_or_default()
        } else {
            self.to_string()
        }
    }
}

/// Writes rows as an aligned text table; the first row is the header.
pub(crate) fn write_table(f: &mut impl fmt::Write, rows: &[Vec<String>]) -> fmt::Result {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    for (ri, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i] - c.chars().count();
                if i == 0 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect();
        writeln!(f, "{}", line.join("  ").trim_end())?;
        if ri == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
            writeln!(f, "{}", "-".repeat(total))?;
        }
    }
    Ok(())
}

/// Predicted figures for one step of a run, as written into `steps` and `services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepPrediction {
    /// The mesh's predicted maximum throughput, requests per second; `None` when no service burns
    /// CPU (the model sees no limit).
    pub max_throughput_rps: Option<f64>,
    /// The service that limits `max_throughput_rps`.
    pub bottleneck: Option<String>,
    /// min(target rate, maximum throughput).
    pub achieved_rps: Option<f64>,
    /// Predicted mean latency of an entry request, ms; `None` when saturated or without a target
    /// rate (closed loop).
    pub latency_mean_ms: Option<f64>,
    /// Predicted 99th percentile latency of an entry request, ms; `None` as for the mean.
    pub latency_p99_ms: Option<f64>,
    /// Per service at the step's rate.
    pub services: BTreeMap<String, ServicePrediction>,
}

/// What the model expects of one service during a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePrediction {
    /// The HPA's steady state (or the configured count).
    pub replicas: u32,
    /// The HPA's tolerance band around it; `None` without an HPA.
    pub replicas_band: Option<(u32, u32)>,
    /// Of `replicas`, those the node has no room for.
    pub pending: u32,
    /// CPU used ÷ CPU requested at `replicas`.
    pub request_utilization: f64,
}

impl Model {
    /// Predictions for a step offered `target_rate_rps` (None for closed-loop steps).
    pub fn predict_step(&self, target_rate_rps: Option<f64>) -> StepPrediction {
        let (bottleneck, max_throughput_rps) = self.max_throughput();
        match target_rate_rps {
            Some(rate) => {
                let at = self.at_rate(rate);
                StepPrediction {
                    achieved_rps: Some(max_throughput_rps.map_or(rate, |m| rate.min(m))),
                    max_throughput_rps,
                    bottleneck,
                    latency_mean_ms: at.latency_mean_ms,
                    latency_p99_ms: at.latency_p99_ms,
                    services: at
                        .services
                        .iter()
                        .map(|s| {
                            let p = ServicePrediction {
                                replicas: s.replicas,
                                replicas_band: s.replicas_band,
                                pending: s.pending,
                                request_utilization: s.request_utilization,
                            };
                            (s.name.clone(), p)
                        })
                        .collect(),
                }
            }
            None => StepPrediction {
                max_throughput_rps,
                bottleneck,
                achieved_rps: None,
                latency_mean_ms: None,
                latency_p99_ms: None,
                services: BTreeMap::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(path: &str, cpu: f64, groups: Vec<Vec<CallModel>>) -> EndpointModel {
        EndpointModel {
            path: path.into(),
            cpu_seconds: cpu,
            delay_seconds_mean: 0.0,
            delay_seconds_variance: 0.0,
            delay_seconds_min: 0.0,
            delay_minimum_total: false,
            call_groups: groups,
        }
    }

    fn call(service: &str, path: &str, probability: f64, repeat: u32) -> CallModel {
        CallModel {
            service: service.into(),
            path: path.into(),
            probability,
            repeat,
        }
    }

    fn svc(name: &str, hpa_max: u32, endpoints: Vec<EndpointModel>) -> ServiceModel {
        ServiceModel {
            name: name.into(),
            replicas: 1,
            cpu_request_cores: 1.0,
            cpu_limit_cores: Some(1.0),
            hpa: Some(HpaModel {
                min: 1,
                max: hpa_max,
                target_utilization_percent: 70.0,
            }),
            idle_cpu_cores: 0.0,
            memory_request_bytes: 0.0,
            endpoints,
        }
    }

    /// The prototype's study: front end 25 ms, back end 100 ms, 1 core each, HPA 70 %,
    /// six pods in all (three per HPA).
    pub(crate) fn reference() -> CapacityInput {
        CapacityInput {
            entry: EntryPoint {
                service: "front".into(),
                path: "/".into(),
            },
            services: vec![
                svc(
                    "front",
                    3,
                    vec![ep("/", 0.025, vec![vec![call("back", "/work", 1.0, 1)]])],
                ),
                svc("back", 3, vec![ep("/work", 0.100, vec![])]),
            ],
            overhead: Overhead::NONE,
            node: None,
        }
    }

    /// A large pod budget over services of very different cost once summed replica
    /// counts past u32::MAX (a panic in debug builds, a wrong answer in release).
    #[test]
    fn a_large_pod_budget_does_not_overflow_the_pod_count() {
        let mut input = reference();
        input.services[0] = svc(
            "front",
            3,
            vec![ep("/", 1e-6, vec![vec![call("back", "/work", 1.0, 1)]])],
        );
        let best = best_allocation(&input, Budget::Pods(1_000_000)).expect("fits");
        assert!(best.pods <= 1_000_000, "{best:?}");
        assert_eq!(best.replicas[0].1 + best.replicas[1].1, best.pods);
    }

    #[test]
    fn reference_case_hpa_settles_at_three_plus_three_but_one_plus_four_carries_40() {
        let plan = plan(&reference(), &[40.0, 60.0]).expect("valid input");
        let front = &plan.services[0];
        let back = &plan.services[1];
        assert_eq!(front.visit_ratio, 1.0);
        assert!((front.cpu_demand_seconds - 0.025).abs() < 1e-12);
        assert!((back.cpu_demand_seconds - 0.100).abs() < 1e-12);
        assert!((front.capacity_rps.unwrap() - 40.0).abs() < 1e-9);
        assert!((back.capacity_max_rps.unwrap() - 30.0).abs() < 1e-9);
        assert_eq!(plan.bottleneck.as_deref(), Some("back"));
        assert!((plan.max_throughput_rps.unwrap() - 30.0).abs() < 1e-9);

        // At 40 rps: front ceil(40·0.025/0.7)=2, back ceil(40·0.1/0.7)=6 → clamped to 3.
        let at40 = &plan.rates[0];
        assert_eq!(
            at40.services.iter().map(|s| s.replicas).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(at40.saturated);
        assert_eq!(at40.latency_mean_ms, None);
        // At 60 rps the HPAs settle on 3 + 3, which carries only 30 rps.
        let at60 = &plan.rates[1];
        assert_eq!(
            at60.services.iter().map(|s| s.replicas).collect::<Vec<_>>(),
            vec![3, 3]
        );
        assert!((at60.capacity_rps.unwrap() - 30.0).abs() < 1e-9);

        let best = best_allocation(&reference(), Budget::Pods(6)).expect("fits");
        assert_eq!(best.replicas, vec![("front".into(), 1), ("back".into(), 4)]);
        assert_eq!(best.pods, 5);
        assert!((best.throughput_rps.unwrap() - 40.0).abs() < 1e-9);

        let by_cores = best_allocation(&reference(), Budget::Cores(6.0)).expect("fits");
        assert_eq!(by_cores.replicas, best.replicas);
    }

    #[test]
    fn visit_ratios_multiply_probability_and_repeat_along_paths() {
        let input = CapacityInput {
            entry: EntryPoint {
                service: "a".into(),
                path: "/".into(),
            },
            services: vec![
                svc(
                    "a",
                    1,
                    vec![ep(
                        "/",
                        0.0,
                        vec![
                            vec![call("b", "/", 0.5, 2), call("c", "/", 1.0, 1)],
                            vec![call("c", "/", 0.25, 4)],
                        ],
                    )],
                ),
                svc(
                    "b",
                    1,
                    vec![ep("/", 0.010, vec![vec![call("c", "/", 1.0, 3)]])],
                ),
                svc("c", 1, vec![ep("/", 0.001, vec![])]),
            ],
            overhead: Overhead::NONE,
            node: None,
        };
        let p = plan(&input, &[]).expect("valid");
        assert_eq!(p.services[1].visit_ratio, 1.0);
        // c: 1 (direct) + 1 (0.25 × 4) + 3 × b's 1.0
        assert!((p.services[2].visit_ratio - 5.0).abs() < 1e-12);
        assert!((p.services[2].cpu_demand_seconds - 0.005).abs() < 1e-12);
        assert_eq!(p.services[0].capacity_rps, None, "a burns no CPU");
        assert_eq!(p.bottleneck.as_deref(), Some("b"));
    }

    #[test]
    fn erlang_c_matches_known_values() {
        // M/M/1: P(wait) = ρ.
        assert!((erlang_c(1, 0.5) - 0.5).abs() < 1e-12);
        // c = 2, a = 1 erlang: C = 1/3.
        assert!((erlang_c(2, 1.0) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(erlang_c(3, 0.0), 0.0);
    }

    fn single(cores: f64, entry_ca2: f64) -> CapacityInput {
        CapacityInput {
            entry: EntryPoint {
                service: "a".into(),
                path: "/".into(),
            },
            services: vec![ServiceModel {
                hpa: None,
                cpu_limit_cores: Some(cores),
                ..svc("a", 1, vec![ep("/", 0.010, vec![])])
            }],
            overhead: Overhead {
                entry_ca2,
                ..Overhead::NONE
            },
            node: None,
        }
    }

    /// One service of 10 ms per request on half-core pods, its HPA allowed six.
    fn half_core_pods(node: NodeModel) -> CapacityInput {
        let mut input = single(0.5, 0.0);
        input.services[0].cpu_request_cores = 0.5;
        input.services[0].memory_request_bytes = 256.0 * MIB;
        input.services[0].hpa = Some(HpaModel {
            min: 1,
            max: 6,
            target_utilization_percent: 70.0,
        });
        input.node = Some(node);
        input
    }

    const MIB: f64 = 1024.0 * 1024.0;

    #[test]
    fn replicas_beyond_the_node_stay_pending_and_carry_nothing() {
        // 2 cores fit four half-core pods: 4 × 0.5 ÷ 10 ms = 200 rps, not 6 × 50 = 300.
        let node = NodeModel {
            cpu_cores: 2.0,
            memory_bytes: 64.0 * 1024.0 * MIB,
        };
        let p = plan(&half_core_pods(node), &[100.0, 280.0]).expect("valid");
        assert_eq!(p.services[0].max_admitted_replicas, Some(4));
        let cap = p.services[0].capacity_max_rps.unwrap();
        assert!((cap - 200.0).abs() < 1e-6, "{cap}");
        let max = p.max_throughput_rps.unwrap();
        assert!((max - 200.0).abs() < 1e-6, "{max}");
        // 100 rps wants 3 (fits); 280 rps wants all 6, of which 2 stay Pending.
        assert_eq!(
            (
                p.rates[0].services[0].replicas,
                p.rates[0].services[0].pending
            ),
            (3, 0)
        );
        assert_eq!(
            (
                p.rates[1].services[0].replicas,
                p.rates[1].services[0].pending
            ),
            (6, 2)
        );
        assert!(p.rates[1].saturated);
        assert!(p.to_string().contains("6 (4 fit)"), "{p}");
        // Memory binds too: 600 MiB fit two pods of 256 MiB.
        let small = NodeModel {
            cpu_cores: 8.0,
            memory_bytes: 600.0 * MIB,
        };
        let p = plan(&half_core_pods(small), &[]).expect("valid");
        assert_eq!(p.services[0].max_admitted_replicas, Some(2));
        // Without a node all six count.
        let mut input = half_core_pods(node);
        input.node = None;
        let p = plan(&input, &[]).expect("valid");
        assert_eq!(p.services[0].max_admitted_replicas, None);
        assert!((p.max_throughput_rps.unwrap() - 300.0).abs() < 1e-6);
    }

    #[test]
    fn base_replicas_are_admitted_first_in_input_order() {
        let model = Model::new(&CapacityInput {
            node: Some(NodeModel {
                cpu_cores: 3.0,
                memory_bytes: f64::MAX,
            }),
            ..reference()
        })
        .expect("valid");
        // Both services at 1 core per pod: three fit.
        let table: [([u32; 2], [u32; 2]); 4] = [
            ([1, 1], [1, 1]),
            ([3, 1], [2, 1]),
            ([1, 3], [1, 2]),
            ([3, 3], [2, 1]),
        ];
        for (wanted, want) in table {
            assert_eq!(model.admitted(&wanted), want, "wanted {wanted:?}");
        }
    }

    #[test]
    fn a_bad_node_is_named() {
        let mut input = reference();
        input.node = Some(NodeModel {
            cpu_cores: f64::NAN,
            memory_bytes: 1.0,
        });
        let e = Model::new(&input).unwrap_err().to_string();
        assert!(e.contains("node.cpu_cores"), "{e}");
    }

    #[test]
    fn one_service_waits_only_when_arrivals_vary() {
        // One replica, 10 ms per request, 50 rps: ρ = 0.5. Paced arrivals never queue
        // (D/D/1: 10 ms); Poisson arrivals wait ρS ÷ 2(1 − ρ) = 5 ms (M/D/1: 15 ms).
        let paced = plan(&single(1.0, 0.0), &[50.0, 100.0]).expect("valid");
        assert!((paced.rates[0].latency_mean_ms.unwrap() - 10.0).abs() < 1e-9);
        assert!((paced.rates[0].latency_p99_ms.unwrap() - 10.0).abs() < 1e-9);
        assert!(paced.rates[1].saturated);
        let poisson = plan(&single(1.0, 1.0), &[50.0]).expect("valid");
        let r = &poisson.rates[0];
        assert!((r.latency_mean_ms.unwrap() - 15.0).abs() < 1e-9, "{r:?}");
        assert!(r.latency_p99_ms.unwrap() > 30.0, "{r:?}");
    }

    #[test]
    fn a_limit_below_one_core_runs_a_request_at_full_speed_and_caps_the_rate() {
        // 500m: 10 ms of CPU takes 10 ms (not 20), but only 50 rps fit in the quota.
        let p = plan(&single(0.5, 0.0), &[10.0, 60.0]).expect("valid");
        assert!((p.rates[0].latency_mean_ms.unwrap() - 10.0).abs() < 1e-9);
        assert!((p.max_throughput_rps.unwrap() - 50.0).abs() < 1e-9);
        assert!(p.rates[1].saturated);
        // 1.5 cores: one request thread, so 100 rps, not 150.
        let p = plan(&single(1.5, 0.0), &[]).expect("valid");
        assert!((p.max_throughput_rps.unwrap() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn each_replica_queues_on_its_own() {
        // Two replicas at 80 Poisson rps, 10 ms: each is an M/D/1 at ρ = 0.4, which waits
        // ρ·S ÷ 2(1 − ρ) ≈ 3.33 ms; one pooled M/D/2 station would wait about a sixth of that.
        let mut input = single(1.0, 1.0);
        input.services[0].replicas = 2;
        let p = plan(&input, &[80.0]).expect("valid");
        let w = p.rates[0].services[0].queueing_ms.unwrap();
        assert!((w - 0.4 * 10.0 / 0.6 * 0.5).abs() < 1e-9, "{w}");
    }

    #[test]
    fn parallel_groups_take_the_expected_maximum_and_minimum_total_overlaps() {
        let mut input = reference();
        input.services[0].endpoints[0].cpu_seconds = 0.0;
        let mut delayed = ep("/work", 0.0, vec![]);
        delayed.delay_seconds_mean = 0.010;
        delayed.delay_seconds_variance = 1e-4; // exponential, mean 10 ms
        input.services[1].endpoints = vec![delayed];
        input.services[0].endpoints[0].call_groups = vec![
            vec![call("back", "/work", 1.0, 1)],
            vec![call("back", "/work", 1.0, 1)],
        ];
        let p = plan(&input, &[1.0]).expect("valid");
        let mean = p.rates[0].latency_mean_ms.unwrap();
        // Two exponential branches of 10 ms: the max of means says 10, the truth is 15.
        assert!(mean > 13.0 && mean < 16.0, "{mean}");

        // minimumTotal 20 ms over 5 ms of work: 20 ms, not 25.
        let mut input = single(1.0, 0.0);
        let e = &mut input.services[0].endpoints[0];
        e.cpu_seconds = 0.005;
        e.delay_seconds_mean = 0.020;
        e.delay_seconds_min = 0.020;
        e.delay_minimum_total = true;
        let p = plan(&input, &[1.0]).expect("valid");
        assert!((p.rates[0].latency_mean_ms.unwrap() - 20.0).abs() < 1e-6);
    }

    #[test]
    fn the_hpa_rests_in_a_band_around_its_target() {
        // back: 100 ms per request, request 1 core, target 70 %: at 14 rps it needs 2.0
        // replicas; within the 10 % tolerance it stays at 2 coming from either side, at
        // 15 rps (2.14) from below it stops at 2 (ratio 1.07) and from above at 3.
        let model = Model::new(&reference()).expect("valid");
        assert_eq!(model.hpa_band(1, 14.0), Some((2, 2)));
        assert_eq!(model.hpa_replicas(1, 15.0), 3);
        assert_eq!(model.hpa_band(1, 15.0), Some((2, 3)));
        // At 18.5 rps (2.64) both ends are 3: 2 is over 1.1 and 4 under 0.9 (and the max).
        assert_eq!(model.hpa_band(1, 18.5), Some((3, 3)));
        // Idle CPU counts toward utilization, as the HPA sees it.
        let mut input = reference();
        input.overhead.idle_cores = 0.35;
        let model = Model::new(&input).expect("valid");
        assert_eq!(model.hpa_replicas(1, 7.0), 2, "7 × 0.1 ÷ (0.7 − 0.35) = 2");
    }

    #[test]
    fn bad_input_is_named() {
        let mut input = reference();
        input.services[0].endpoints[0].call_groups[0][0].service = "nope".into();
        let err = plan(&input, &[]).unwrap_err().to_string();
        assert!(err.contains("front /") && err.contains("nope"), "{err}");

        let mut input = reference();
        input.services[1].endpoints[0].call_groups = vec![vec![call("front", "/", 1.0, 1)]];
        let err = plan(&input, &[]).unwrap_err().to_string();
        assert!(
            err.contains("cycle") && err.contains("front / → back /work → front /"),
            "{err}"
        );

        let mut input = reference();
        input.services[0].endpoints[0].call_groups[0][0].probability = 1.5;
        let err = plan(&input, &[]).unwrap_err().to_string();
        assert!(err.contains("probability") && err.contains("1.5"), "{err}");

        let err = best_allocation(&reference(), Budget::Pods(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 pods") && err.contains("2 pods"), "{err}");
    }

    #[test]
    fn plan_prints_and_serialises() {
        let mut p = plan(&reference(), &[20.0]).expect("valid");
        p.allocation = Some(best_allocation(&reference(), Budget::Pods(6)).expect("fits"));
        let text = p.to_string();
        assert!(text.contains("Bottleneck: back"), "{text}");
        assert!(text.contains("front=1 back=4"), "{text}");
        let json = serde_json::to_value(&p).expect("serialises");
        assert_eq!(json["bottleneck"], "back");
        assert_eq!(json["services"][1]["visit_ratio"], 1.0);
        assert_eq!(json["allocation"]["budget"]["pods"], 6);
    }
}
