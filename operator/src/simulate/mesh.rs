//! The simulated mesh: services, their replicas and how a request is served, following
//! the worker (`worker/src/server.rs`): shed when over the endpoint's in-flight bound,
//! then CPU work on one of the replica's CPU threads, then the call groups (in parallel,
//! calls in a group in sequence, a group stopping at its first failure), then the error
//! draw, then the delay. CPU work runs on ⌊limit⌋ threads (at least one) at full speed,
//! and under a limit below one core at full speed while the CFS quota of the 100 ms
//! period lasts — as the kernel does, not as `cpu ÷ limit`.

use std::collections::VecDeque;
use std::time::Duration;

use meshbench_crds::resolve::ResolvedService;
use meshbench_runtime::node::Resources;
use meshbench_worker::config::DelayMode;
use meshbench_worker::work::{DelaySampler, EndpointRng};

use crate::local::hpa::Hpa;
use crate::local::hpa_view::{MetricsPipeline, PodLifecycle};

/// CFS period of the kernel's CPU bandwidth control.
const CFS_PERIOD: f64 = 0.1;

/// One call of a call group, resolved to indexes.
#[derive(Debug, Clone)]
pub struct CallSpec {
    /// Callee service index.
    pub svc: usize,
    /// Callee endpoint index, `None` when the callee has no such path (404).
    pub ep: Option<usize>,
    /// Probability the call is made.
    pub probability: f64,
    /// Times it is made, in sequence.
    pub repeat: u32,
    /// Caller-side timeout, seconds.
    pub timeout: f64,
}

/// One endpoint of a service.
pub struct Endpoint {
    /// Path.
    pub path: String,
    /// CPU seconds per request.
    pub cpu: f64,
    /// Delay sampler and mode.
    pub delay: Option<(DelaySampler, DelayMode)>,
    /// Draws of this endpoint (error, probability, delay).
    pub rng: EndpointRng,
    /// Share of requests answered 500.
    pub error_rate: f64,
    /// 503 when the replica's in-flight count (this one included) would exceed it.
    pub max_in_flight: Option<u32>,
    /// A downstream timeout does not fail the request.
    pub ignore_call_timeouts: bool,
    /// Its work takes a CPU thread (it has CPU or memory work).
    pub pooled: bool,
    /// Call groups (parallel), each a sequence.
    pub groups: Vec<Vec<CallSpec>>,
}

/// One replica (pod) of a service.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Pod name (`<service>-<n>`).
    pub name: String,
    /// Created at.
    pub created: f64,
    /// Bound to the node and started at; `None` while Pending.
    pub started: Option<f64>,
    /// Its readiness probe passes.
    pub ready: bool,
    /// The Service routes to it (readiness plus the propagation delay).
    pub routed: bool,
    /// Scaled down: no new requests, gone once idle.
    pub terminating: bool,
    /// Requests inside the worker (readiness gating counts these).
    pub in_flight: u32,
    /// The same per endpoint (shedding counts these).
    pub ep_in_flight: Vec<u32>,
    /// CPU threads busy.
    pub busy: u32,
    /// Requests waiting for a CPU thread: (frame, CPU seconds).
    pub queue: VecDeque<(usize, f64)>,
    /// CPU seconds used by requests so far.
    pub cpu_used: f64,
    quota: QuotaState,
}

impl Replica {
    fn new(name: String, created: f64, endpoints: usize) -> Self {
        Self {
            name,
            created,
            started: None,
            ready: false,
            routed: false,
            terminating: false,
            in_flight: 0,
            ep_in_flight: vec![0; endpoints],
            busy: 0,
            queue: VecDeque::new(),
            cpu_used: 0.0,
            quota: QuotaState::default(),
        }
    }
}

/// One service.
pub struct Service {
    /// Name.
    pub name: String,
    /// The resolved spec.
    pub resolved: ResolvedService,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Replicas, Pending ones included, terminating ones until idle.
    pub replicas: Vec<Replica>,
    /// CPU threads per replica (the worker's pool: ⌊limit⌋, at least 1; the machine's
    /// cores without a limit).
    pub threads: u32,
    /// CPU quota per CFS period when the limit is below one core.
    pub quota: Option<f64>,
    /// Requests of one pod.
    pub requests: Resources,
    /// Its HPA.
    pub hpa: Option<Hpa>,
    /// What metrics-server serves the HPA.
    pub metrics: MetricsPipeline,
    /// The pods' status as the HPA sees it.
    pub lifecycle: PodLifecycle,
    /// The HPA's latest decision.
    pub last_desired: Option<u32>,
    /// Next pod number.
    pub next_index: u64,
    /// Indexes of the routed replicas (rebuilt when routing changes).
    pub routable: Vec<usize>,
    /// Requests its workers answered (the worker's counter).
    pub answered: u64,
    /// Of those, answered with a 5xx.
    pub errors: u64,
    /// Sum of the worker-side latencies of the answers, seconds.
    pub latency_sum: f64,
}

/// Options of the platform the simulation stands for.
#[derive(Debug, Clone)]
pub struct PlatformModel {
    /// The machine's cores (threads of a worker without a CPU limit).
    pub cores: u32,
    /// HPA `--horizontal-pod-autoscaler-cpu-initialization-period`.
    pub cpu_initialization_period: Duration,
    /// metrics-server's `--metric-resolution`.
    pub metric_resolution: Duration,
}

impl Service {
    /// A service with no replicas yet.
    pub fn new(
        svc: &ResolvedService,
        endpoints: Vec<Endpoint>,
        model: &PlatformModel,
        first_scrape: f64,
    ) -> Self {
        let limit = svc.resources.cpu_limit_millis;
        let threads = match limit {
            Some(l) => u32::try_from((l / 1000).max(1)).unwrap_or(u32::MAX),
            None => model.cores.max(1),
        };
        let quota = limit
            .filter(|l| *l < 1000)
            .map(|l| l as f64 / 1000.0 * CFS_PERIOD);
        Self {
            name: svc.name.clone(),
            resolved: svc.clone(),
            endpoints,
            replicas: Vec::new(),
            threads,
            quota,
            requests: Resources {
                cpu_millis: svc.resources.cpu_request_millis.unwrap_or(0),
                memory_bytes: svc.resources.memory_request_bytes.unwrap_or(0),
            },
            hpa: crate::local::platform::hpa_of(svc, model.cpu_initialization_period),
            metrics: MetricsPipeline::new(model.metric_resolution, first_scrape),
            lifecycle: PodLifecycle::default(),
            last_desired: None,
            next_index: 0,
            routable: Vec::new(),
            answered: 0,
            errors: 0,
            latency_sum: 0.0,
        }
    }

    /// The replica count the Deployment starts with (the HPA's bounds applied).
    pub fn initial_replicas(&self) -> u32 {
        match &self.resolved.autoscaling {
            Some(a) => self.resolved.replicas.clamp(a.min_replicas, a.max_replicas),
            None => self.resolved.replicas,
        }
        .max(0) as u32
    }

    /// Adds a Pending replica.
    pub fn create(&mut self, clock: f64) -> usize {
        let name = format!("{}-{}", self.name, self.next_index);
        self.next_index += 1;
        self.lifecycle.create_unbound(clock, &name);
        self.replicas
            .push(Replica::new(name, clock, self.endpoints.len()));
        self.replicas.len() - 1
    }

    /// Rebuilds the routing table.
    pub fn reroute(&mut self) {
        self.routable = self
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.routed && !r.terminating)
            .map(|(i, _)| i)
            .collect();
    }

    /// Replicas counted by the Deployment (not terminating).
    pub fn live(&self) -> impl Iterator<Item = &Replica> {
        self.replicas.iter().filter(|r| !r.terminating)
    }

    /// When CPU work of `work` seconds started at `now` on replica `r` ends: at once
    /// plus the work without a quota; under one, as the CFS bandwidth control lets it.
    pub fn cpu_finish(&mut self, r: usize, now: f64, work: f64) -> f64 {
        match self.quota {
            Some(q) => self.replicas[r].quota.finish(q, now, work),
            None => now + work,
        }
    }
}

/// A cgroup's CFS bandwidth state: quota used in the current period. With a limit below
/// one core the worker has one CPU thread, so jobs run one after another.
#[derive(Debug, Clone, Copy)]
pub struct QuotaState {
    period: i64,
    used: f64,
    /// When the thread is free again.
    free_at: f64,
}

impl Default for QuotaState {
    fn default() -> Self {
        Self {
            period: -1,
            used: 0.0,
            free_at: 0.0,
        }
    }
}

impl QuotaState {
    /// When `work` CPU seconds started at `now` end, with `quota` seconds per period: at
    /// full speed while the period's quota lasts, then throttled to the next period.
    pub fn finish(&mut self, quota: f64, now: f64, work: f64) -> f64 {
        if !(quota > 0.0 && work.is_finite() && now.is_finite()) {
            return now + work.max(0.0);
        }
        let mut t = now.max(self.free_at);
        let mut left = work.max(0.0);
        // The tolerance keeps a period boundary reached by adding up (0.7 ÷ 0.1 =
        // 6.999…) in the period it starts.
        let period_at = |t: f64| (t / CFS_PERIOD + 1e-9).floor() as i64;
        if period_at(t) > self.period {
            self.period = period_at(t);
            self.used = 0.0;
        }
        while left > 1e-12 {
            let end = (self.period + 1) as f64 * CFS_PERIOD;
            let run = left.min(quota - self.used).min(end - t).max(0.0);
            self.used += run;
            t += run;
            left -= run;
            if left > 1e-12 && (quota - self.used <= 1e-12 || end - t <= 1e-12) {
                // Throttled (or at the boundary): on to the next period, counted here
                // rather than recomputed from `t`, so no rounding can repeat a period.
                self.period += 1;
                self.used = 0.0;
                t = t.max(end);
            }
        }
        self.free_at = t;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_throttles_work_to_the_next_period() {
        // 250m: 25 ms per 100 ms period. 12 ms fits; a second 12 ms job finishes in the
        // 13 ms left; a third gets 1 ms, then waits for the next period for 11 ms more.
        let mut q = QuotaState::default();
        let quota = 0.025;
        let a = q.finish(quota, 0.0, 0.012);
        assert!((a - 0.012).abs() < 1e-9, "{a}");
        let b = q.finish(quota, a, 0.012);
        assert!((b - 0.024).abs() < 1e-9, "{b}");
        let c = q.finish(quota, b, 0.012);
        assert!((c - 0.111).abs() < 1e-9, "{c}");
        // A period boundary reached by adding up (0.7 is 6.999… periods) starts the
        // next period: 25 ms until 0.625, throttled to 0.7, 5 ms more.
        let mut q = QuotaState::default();
        let e = q.finish(quota, 0.6, 0.030);
        assert!((e - 0.705).abs() < 1e-9, "{e}");
        // A job longer than the quota spans periods: 60 ms at 25 ms per period.
        let mut q = QuotaState::default();
        let d = q.finish(quota, 0.0, 0.060);
        assert!((d - 0.210).abs() < 1e-9, "{d}");
    }

    #[test]
    fn jobs_under_a_quota_run_one_after_another() {
        let mut q = QuotaState::default();
        let quota = 0.05;
        let a = q.finish(quota, 0.0, 0.01);
        let b = q.finish(quota, 0.0, 0.01);
        assert!(
            (a - 0.01).abs() < 1e-9 && (b - 0.02).abs() < 1e-9,
            "{a} {b}"
        );
    }
}
