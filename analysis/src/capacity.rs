//! Analytic capacity model: what a mesh should carry, predicted from its spec alone.
//!
//! The model follows the mesh's call graph from the entry endpoint:
//!
//! - **visit ratio** of an endpoint = expected visits per entry request, the sum over its
//!   callers of `caller visits × probability × repeat`;
//! - **CPU demand** of a service = Σ over its endpoints of `visits × cpu_seconds`, in CPU
//!   seconds per entry request;
//! - **capacity** of a service = `replicas × cores per replica ÷ demand` (cores per replica is
//!   the CPU limit; a service without a limit falls back to its request, which the plan notes);
//! - the **bottleneck** is the service with the smallest capacity at its largest replica
//!   count, and its capacity is the **predicted maximum throughput**;
//! - a service with an HPA settles at `ceil(λ · demand ÷ (request · target))` replicas within
//!   `[min, max]` at an entry rate λ (the upstream HPA's steady state);
//! - **latency** is an open queueing approximation: every service is an M/M/c station (Erlang
//!   C), a request's response time is its queueing delay plus its CPU time plus its added
//!   delay plus its downstream calls (groups in parallel, calls in a group in sequence). It
//!   is a model, labelled as such wherever it is shown.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Errors of the capacity model: all are problems of the input, named precisely.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    /// The entry endpoint does not exist in the mesh.
    #[error("entry endpoint {service} {path} is not defined in the mesh")]
    UnknownEntry { service: String, path: String },
    /// An endpoint calls an endpoint that does not exist.
    #[error("{caller} calls {service} {path}, which is not defined in the mesh")]
    UnknownCallee {
        caller: String,
        service: String,
        path: String,
    },
    /// The call graph has a cycle, so visit ratios are not finite.
    #[error("the call graph has a cycle through {cycle}; the model needs an acyclic graph")]
    Cycle { cycle: String },
    /// A number is out of range.
    #[error("{what} is {value}, expected {expected}")]
    InvalidValue {
        what: String,
        value: String,
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
        budget: String,
        services: usize,
        needed: String,
    },
}

/// Result alias of this module.
pub type Result<T, E = CapacityError> = std::result::Result<T, E>;

/// The endpoint that receives the load (the benchmark's target).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryPoint {
    pub service: String,
    pub path: String,
}

/// Everything the model needs about one mesh, converted from the ServiceMesh spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityInput {
    pub entry: EntryPoint,
    pub services: Vec<ServiceModel>,
}

/// One service of the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceModel {
    pub name: String,
    /// Replicas without an HPA (with an HPA this is only the initial count).
    pub replicas: u32,
    /// CPU request per pod in cores; the HPA's utilization is relative to it.
    pub cpu_request_cores: f64,
    /// CPU limit per pod in cores; `None` means unlimited (the model then uses the request).
    pub cpu_limit_cores: Option<f64>,
    pub hpa: Option<HpaModel>,
    pub endpoints: Vec<EndpointModel>,
}

/// A HorizontalPodAutoscaler on CPU utilization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HpaModel {
    pub min: u32,
    pub max: u32,
    /// Target average CPU utilization in percent of the request (e.g. 70).
    pub target_utilization_percent: f64,
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointModel {
    pub path: String,
    /// CPU time burned per request, in seconds.
    pub cpu_seconds: f64,
    /// Mean of the added (non-CPU) delay per request, in seconds.
    pub delay_seconds_mean: f64,
    /// Downstream calls: groups run in parallel, calls inside a group in sequence.
    pub call_groups: Vec<Vec<CallModel>>,
}

/// One downstream call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallModel {
    pub service: String,
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
    pub name: String,
    /// Expected visits of this service per entry request.
    pub visit_ratio: f64,
    /// CPU seconds this service burns per entry request.
    pub cpu_demand_seconds: f64,
    /// Cores one replica can use (the limit, or the request when there is no limit).
    pub cores_per_replica: f64,
    /// Replicas without scaling (the configured count, or the HPA minimum).
    pub replicas: u32,
    /// Largest replica count (the HPA maximum, or the configured count).
    pub max_replicas: u32,
    /// Entry requests per second this service can carry at `replicas`; `None` if it burns no CPU.
    pub capacity_rps: Option<f64>,
    /// Entry requests per second this service can carry at `max_replicas`.
    pub capacity_max_rps: Option<f64>,
    pub hpa: Option<HpaModel>,
}

/// One service at one entry rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceAtRate {
    pub name: String,
    /// Replicas at this rate: the HPA's steady state, or the configured count.
    pub replicas: u32,
    /// CPU used ÷ CPU available at these replicas (≥ 1 means saturated).
    pub utilization: f64,
    /// CPU used ÷ CPU requested, the figure the HPA compares to its target.
    pub request_utilization: f64,
    /// Mean time a visit waits for a CPU (Erlang C), in ms; `None` when saturated.
    pub queueing_ms: Option<f64>,
}

/// The mesh at one entry rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatePlan {
    pub rate_rps: f64,
    pub services: Vec<ServiceAtRate>,
    /// Throughput the mesh carries with these replicas.
    pub capacity_rps: Option<f64>,
    /// The service that limits `capacity_rps`.
    pub bottleneck: Option<String>,
    /// Predicted mean latency of an entry request (M/M/c model); `None` when saturated.
    pub latency_mean_ms: Option<f64>,
    /// True when some service would need more CPU than its replicas have.
    pub saturated: bool,
}

/// A replica allocation under a budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub budget: Budget,
    /// Replicas per service, in the order of the input.
    pub replicas: Vec<(String, u32)>,
    pub pods: u32,
    pub cores: f64,
    /// Throughput this allocation carries (the model's maximum under the budget).
    pub throughput_rps: Option<f64>,
    pub bottleneck: Option<String>,
}

/// The whole plan, printable as a table or serialisable as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityPlan {
    /// `service path` of the entry endpoint.
    pub entry: String,
    pub services: Vec<ServicePlan>,
    /// Service with the smallest capacity at its largest replica count.
    pub bottleneck: Option<String>,
    /// Capacity of the bottleneck: the most the mesh can carry.
    pub max_throughput_rps: Option<f64>,
    pub rates: Vec<RatePlan>,
    /// Best allocation under a budget, when one was asked for.
    pub allocation: Option<Allocation>,
    /// Assumptions the model made about this input (e.g. a missing CPU limit).
    pub notes: Vec<String>,
    /// How latency is modelled; shown with every latency prediction.
    pub latency_model: String,
}

/// Label shown beside every modelled latency.
pub const LATENCY_MODEL: &str = "model: open network of M/M/c stations (Erlang C), \
     exponential service times, parallel groups as the max of their means";

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
    notes: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct ResolvedCall {
    service: usize,
    endpoint: usize,
    expected_calls: f64,
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

impl Model {
    /// Validates the input and computes visit ratios.
    pub fn new(input: &CapacityInput) -> Result<Model> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut notes = Vec::new();
        for (i, s) in input.services.iter().enumerate() {
            if index.insert(s.name.as_str(), i).is_some() {
                return Err(CapacityError::DuplicateService(s.name.clone()));
            }
            let name = &s.name;
            check(
                || format!("service {name}: cpu_request_cores"),
                s.cpu_request_cores,
                s.cpu_request_cores >= 0.0,
                "a finite number of cores ≥ 0",
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
                for c in e.call_groups.iter().flatten() {
                    check(
                        || format!("{name} {p}: call to {} {} probability", c.service, c.path),
                        c.probability,
                        (0.0..=1.0).contains(&c.probability),
                        "a probability in [0, 1]",
                    )?;
                }
            }
        }
        let find = |service: &str, path: &str| -> Option<(usize, usize)> {
            let s = *index.get(service)?;
            let e = input.services[s]
                .endpoints
                .iter()
                .position(|e| e.path == path)?;
            Some((s, e))
        };
        let entry = find(&input.entry.service, &input.entry.path).ok_or_else(|| {
            CapacityError::UnknownEntry {
                service: input.entry.service.clone(),
                path: input.entry.path.clone(),
            }
        })?;
        let mut callees = Vec::with_capacity(input.services.len());
        for s in &input.services {
            let mut per_ep = Vec::with_capacity(s.endpoints.len());
            for e in &s.endpoints {
                let mut groups = Vec::with_capacity(e.call_groups.len());
                for g in &e.call_groups {
                    let mut calls = Vec::with_capacity(g.len());
                    for c in g {
                        let (cs, ce) = find(&c.service, &c.path).ok_or_else(|| {
                            CapacityError::UnknownCallee {
                                caller: format!("{} {}", s.name, e.path),
                                service: c.service.clone(),
                                path: c.path.clone(),
                            }
                        })?;
                        calls.push(ResolvedCall {
                            service: cs,
                            endpoint: ce,
                            expected_calls: c.probability * f64::from(c.repeat),
                        });
                    }
                    groups.push(calls);
                }
                per_ep.push(groups);
            }
            callees.push(per_ep);
        }
        let topo = topological_order(input, &callees, entry)?;
        let mut visits: Vec<Vec<f64>> = input
            .services
            .iter()
            .map(|s| vec![0.0; s.endpoints.len()])
            .collect();
        visits[entry.0][entry.1] = 1.0;
        for &(s, e) in &topo {
            let v = visits[s][e];
            for c in callees[s][e].iter().flatten() {
                visits[c.service][c.endpoint] += v * c.expected_calls;
            }
        }
        Ok(Model {
            entry,
            services: input.services.clone(),
            visits,
            topo,
            callees,
            notes,
        })
    }

    fn visit_ratio(&self, s: usize) -> f64 {
        self.visits[s].iter().sum()
    }

    fn demand(&self, s: usize) -> f64 {
        self.services[s]
            .endpoints
            .iter()
            .zip(&self.visits[s])
            .map(|(e, v)| e.cpu_seconds * v)
            .sum()
    }

    fn cores_per_replica(&self, s: usize) -> f64 {
        let svc = &self.services[s];
        svc.cpu_limit_cores.unwrap_or(svc.cpu_request_cores)
    }

    fn base_replicas(&self, s: usize) -> u32 {
        let svc = &self.services[s];
        svc.hpa.as_ref().map_or(svc.replicas, |h| h.min)
    }

    fn max_replicas(&self, s: usize) -> u32 {
        let svc = &self.services[s];
        svc.hpa.as_ref().map_or(svc.replicas, |h| h.max)
    }

    /// Entry requests per second one replica of service `s` carries; `None` if it burns no CPU.
    fn per_replica_capacity(&self, s: usize) -> Option<f64> {
        let d = self.demand(s);
        (d > 0.0).then(|| self.cores_per_replica(s) / d)
    }

    fn capacity_at(&self, s: usize, replicas: u32) -> Option<f64> {
        self.per_replica_capacity(s)
            .map(|c| c * f64::from(replicas))
    }

    /// Names of the services, in input order.
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(|s| s.name.as_str())
    }

    /// The replica count an HPA settles on at entry rate `rate_rps`, or the configured count
    /// for a service without an HPA.
    pub fn hpa_replicas(&self, service: usize, rate_rps: f64) -> u32 {
        let svc = &self.services[service];
        match &svc.hpa {
            None => svc.replicas,
            Some(h) => {
                let target = h.target_utilization_percent / 100.0;
                let needed =
                    rate_rps.max(0.0) * self.demand(service) / (svc.cpu_request_cores * target);
                let replicas = ceil_tolerant(needed);
                replicas.clamp(f64::from(h.min), f64::from(h.max)) as u32
            }
        }
    }

    /// Per-service plans (visit ratio, demand, capacity).
    pub fn service_plans(&self) -> Vec<ServicePlan> {
        (0..self.services.len())
            .map(|s| ServicePlan {
                name: self.services[s].name.clone(),
                visit_ratio: self.visit_ratio(s),
                cpu_demand_seconds: self.demand(s),
                cores_per_replica: self.cores_per_replica(s),
                replicas: self.base_replicas(s),
                max_replicas: self.max_replicas(s),
                capacity_rps: self.capacity_at(s, self.base_replicas(s)),
                capacity_max_rps: self.capacity_at(s, self.max_replicas(s)),
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
        let replicas: Vec<u32> = (0..self.services.len())
            .map(|s| self.hpa_replicas(s, rate_rps))
            .collect();
        self.at_rate_with(rate_rps, &replicas)
    }

    /// Evaluates the mesh at entry rate `rate_rps` with the given replicas (input order).
    pub fn at_rate_with(&self, rate_rps: f64, replicas: &[u32]) -> RatePlan {
        let n = self.services.len();
        let mut services = Vec::with_capacity(n);
        let mut wait = vec![None; n];
        let mut saturated = false;
        for s in 0..n {
            let svc = &self.services[s];
            let r = replicas[s];
            let demand = self.demand(s);
            let cores = self.cores_per_replica(s);
            let used = rate_rps * demand;
            let available = f64::from(r) * cores;
            let utilization = if used == 0.0 {
                0.0
            } else if available > 0.0 {
                used / available
            } else {
                f64::INFINITY
            };
            let requested = f64::from(r) * svc.cpu_request_cores;
            let request_utilization = if used == 0.0 {
                0.0
            } else if requested > 0.0 {
                used / requested
            } else {
                f64::INFINITY
            };
            let q = self.queueing_delay(s, rate_rps, r);
            if used > 0.0 && q.is_none() {
                saturated = true;
            }
            wait[s] = q;
            services.push(ServiceAtRate {
                name: svc.name.clone(),
                replicas: r,
                utilization,
                request_utilization,
                queueing_ms: q.map(|w| w * 1000.0),
            });
        }
        let latency_mean_ms = if saturated {
            None
        } else {
            Some(self.response_time(&wait) * 1000.0)
        };
        let (bottleneck, capacity_rps) = self.bottleneck_for(replicas);
        RatePlan {
            rate_rps,
            services,
            capacity_rps,
            bottleneck,
            latency_mean_ms,
            saturated,
        }
    }

    /// Servers per replica and per-server speed: a replica with a limit of L cores runs
    /// max(1, ⌊L⌋) requests at once, each at L ÷ servers cores.
    fn servers(&self, s: usize) -> (u32, f64) {
        let cores = self.cores_per_replica(s);
        let k = cores.floor().max(1.0);
        (k as u32, cores / k)
    }

    /// Mean wait in queue (seconds) of a visit to service `s`; `Some(0)` when it burns no
    /// CPU; `None` when the station is saturated.
    fn queueing_delay(&self, s: usize, rate_rps: f64, replicas: u32) -> Option<f64> {
        let visits = self.visit_ratio(s);
        let demand = self.demand(s);
        if demand == 0.0 || visits == 0.0 || rate_rps <= 0.0 {
            return Some(0.0);
        }
        let (k, speed) = self.servers(s);
        let c = replicas.checked_mul(k)?;
        if c == 0 {
            return None;
        }
        let arrival = rate_rps * visits;
        let service_time = demand / visits / speed;
        let offered = arrival * service_time;
        let rho = offered / f64::from(c);
        if rho >= 1.0 {
            return None;
        }
        let p_wait = erlang_c(c, offered);
        Some(p_wait * service_time / (f64::from(c) * (1.0 - rho)))
    }

    /// Mean response time (seconds) of an entry request given per-service queueing delays.
    fn response_time(&self, wait: &[Option<f64>]) -> f64 {
        let mut resp: Vec<Vec<f64>> = self
            .services
            .iter()
            .map(|s| vec![0.0; s.endpoints.len()])
            .collect();
        for &(s, e) in self.topo.iter().rev() {
            let ep = &self.services[s].endpoints[e];
            let (_, speed) = self.servers(s);
            let own = wait[s].unwrap_or(0.0)
                + if ep.cpu_seconds > 0.0 {
                    ep.cpu_seconds / speed
                } else {
                    0.0
                }
                + ep.delay_seconds_mean;
            let downstream = self.callees[s][e]
                .iter()
                .map(|g| {
                    g.iter()
                        .map(|c| c.expected_calls * resp[c.service][c.endpoint])
                        .sum::<f64>()
                })
                .fold(0.0, f64::max);
            resp[s][e] = own + downstream;
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
        let max_replicas: Vec<u32> = (0..self.services.len())
            .map(|s| self.max_replicas(s))
            .collect();
        let (bottleneck, max_throughput_rps) = self.bottleneck_for(&max_replicas);
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
                s.max_replicas.to_string(),
                opt(s.capacity_max_rps, 1),
                s.hpa.as_ref().map_or("–".into(), |h| {
                    format!("{}%", h.target_utilization_percent)
                }),
            ]);
        }
        write_table(f, &rows)?;
        writeln!(f)?;
        writeln!(
            f,
            "Bottleneck: {}   predicted maximum throughput: {} rps",
            self.bottleneck
                .as_deref()
                .unwrap_or("none (no service burns CPU)"),
            opt(self.max_throughput_rps, 1)
        )?;
        if !self.rates.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "At entry rates (HPA steady state; latency is a {})",
                self.latency_model
            )?;
            let mut header = vec!["rate rps".to_string()];
            header.extend(self.services.iter().map(|s| format!("{} pods", s.name)));
            header.extend([
                "capacity rps".into(),
                "bottleneck".into(),
                "latency ms (model)".into(),
            ]);
            let mut rows = vec![header];
            for r in &self.rates {
                let mut row = vec![format!("{:.1}", r.rate_rps)];
                row.extend(r.services.iter().map(|s| {
                    if s.utilization > 1.0 {
                        format!("{} ({:.0}% cpu!)", s.replicas, s.utilization * 100.0)
                    } else {
                        s.replicas.to_string()
                    }
                }));
                row.push(opt(r.capacity_rps, 1));
                row.push(r.bottleneck.clone().unwrap_or_else(|| "–".into()));
                row.push(if r.saturated {
                    "saturated".into()
                } else {
                    opt(r.latency_mean_ms, 1)
                });
                rows.push(row);
            }
            write_table(f, &rows)?;
        }
        if let Some(a) = &self.allocation {
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
            )?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
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
    pub max_throughput_rps: Option<f64>,
    pub bottleneck: Option<String>,
    /// min(target rate, maximum throughput).
    pub achieved_rps: Option<f64>,
    pub latency_mean_ms: Option<f64>,
    /// Per service: (replicas, CPU utilization of the request).
    pub services: BTreeMap<String, (u32, f64)>,
}

impl Model {
    /// Predictions for a step offered `target_rate_rps` (None for closed-loop steps).
    pub fn predict_step(&self, target_rate_rps: Option<f64>) -> StepPrediction {
        let max_replicas: Vec<u32> = (0..self.services.len())
            .map(|s| self.max_replicas(s))
            .collect();
        let (bottleneck, max_throughput_rps) = self.bottleneck_for(&max_replicas);
        match target_rate_rps {
            Some(rate) => {
                let at = self.at_rate(rate);
                StepPrediction {
                    achieved_rps: Some(max_throughput_rps.map_or(rate, |m| rate.min(m))),
                    max_throughput_rps,
                    bottleneck,
                    latency_mean_ms: at.latency_mean_ms,
                    services: at
                        .services
                        .iter()
                        .map(|s| (s.name.clone(), (s.replicas, s.request_utilization)))
                        .collect(),
                }
            }
            None => StepPrediction {
                max_throughput_rps,
                bottleneck,
                achieved_rps: None,
                latency_mean_ms: None,
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

    #[test]
    fn mm1_latency_of_a_single_service() {
        // One replica, 10 ms per request, 50 rps → ρ = 0.5, R = S/(1-ρ) = 20 ms.
        let input = CapacityInput {
            entry: EntryPoint {
                service: "a".into(),
                path: "/".into(),
            },
            services: vec![ServiceModel {
                hpa: None,
                ..svc("a", 1, vec![ep("/", 0.010, vec![])])
            }],
        };
        let p = plan(&input, &[50.0, 100.0]).expect("valid");
        assert!((p.rates[0].latency_mean_ms.unwrap() - 20.0).abs() < 1e-9);
        assert!(p.rates[1].saturated);
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
