//! The control loop of the simulated platform, once per simulated second, as the local
//! platform's: binding Pending pods that fit the node, readiness (the worker's start-up
//! delay and readiness gating, the Service following a probe later), what metrics-server
//! scrapes, the samples of a local run, and the HPA every sync period with the same code
//! and timings the local runtime uses.

use std::collections::BTreeMap;

use meshbench_analysis::samples::{Sample, metric};
use meshbench_runtime::node::Resources;

use super::engine::Engine;
use super::mesh::Service;
use crate::local::hpa_view::{Process, RankedPod, scale_down_victims};

/// What the loop keeps between ticks.
pub struct Control {
    /// Mesh name (the samples' `mesh`).
    pub mesh: String,
    /// Unix ms at simulated time 0.
    pub epoch_ms: i64,
    /// HPA sync period, seconds.
    pub hpa_sync: f64,
    /// When the HPA last ran.
    pub last_hpa: f64,
    /// What the node can give pods.
    pub allocatable: Resources,
    /// Samples taken so far (drained at each Collect).
    pub samples: Vec<Sample>,
    /// Per pod: CPU seconds at the previous tick, and when.
    prev_cpu: BTreeMap<String, (f64, f64)>,
    /// Per service: worker counters at the previous tick (answers, 5xx, latency sum).
    prev_worker: BTreeMap<String, (u64, u64, f64)>,
    /// Per pod: when its readiness last changed.
    ready_changed: BTreeMap<String, f64>,
}

impl Control {
    /// A loop for `mesh` deployed at `now`.
    pub fn new(mesh: &str, epoch_ms: i64, hpa_sync: f64, now: f64, allocatable: Resources) -> Self {
        Self {
            mesh: mesh.to_owned(),
            epoch_ms,
            hpa_sync,
            last_hpa: now,
            allocatable,
            samples: Vec::new(),
            prev_cpu: BTreeMap::new(),
            prev_worker: BTreeMap::new(),
            ready_changed: BTreeMap::new(),
        }
    }

    /// One round at `e.now`.
    pub fn tick(&mut self, e: &mut Engine) {
        let now = e.now;
        let ts = self.epoch_ms + (now * 1000.0).round() as i64;
        self.bind(&mut e.services, now);
        let run_hpa = now - self.last_hpa >= self.hpa_sync - 1e-9;
        if run_hpa {
            self.last_hpa = now;
        }
        for s in &mut e.services {
            self.readiness(s, now);
            self.observe(s, now, ts);
            self.service_samples(s, now, ts);
            if run_hpa && s.hpa.is_some() {
                self.hpa_sync(s, now, ts);
            }
        }
        self.bind(&mut e.services, now);
    }

    /// Binds Pending replicas in creation order while their requests fit.
    fn bind(&mut self, services: &mut [Service], now: f64) {
        let mut used = Resources::default();
        for s in services.iter() {
            let bound = s.live().filter(|r| r.started.is_some()).count();
            used = used.plus(s.requests, bound as u64);
        }
        for s in services.iter_mut() {
            for r in &mut s.replicas {
                if r.started.is_none() && !r.terminating && self.allocatable.fits(used, s.requests)
                {
                    used = used.plus(s.requests, 1);
                    r.started = Some(now);
                    s.lifecycle.bind(now, &r.name);
                }
            }
        }
    }

    /// The worker's `/ready`: failing for its start-up delay, then while readiness gating
    /// holds (in-flight at or above the bound); the Service follows a tick (the probe
    /// and the route propagation) later.
    fn readiness(&mut self, s: &mut Service, now: f64) {
        let startup = s.resolved.startup_delay.as_secs_f64();
        let gate = s.resolved.readiness_max_in_flight;
        let mut changed = false;
        // A scaled-down replica keeps its slot (frames refer to replicas by index) but
        // leaves every view.
        for r in s.replicas.iter_mut().filter(|r| !r.terminating) {
            let Some(started) = r.started else { continue };
            let ready = now >= started + startup && gate.is_none_or(|g| r.in_flight < g);
            if ready != r.ready {
                r.ready = ready;
                self.ready_changed.insert(r.name.clone(), now);
            }
            let since = self.ready_changed.get(&r.name).copied().unwrap_or(now);
            let routed = if now - since >= 1.0 - 1e-9 {
                r.ready
            } else {
                !r.ready && r.routed
            };
            if routed != r.routed {
                r.routed = routed;
                changed = true;
            }
            s.lifecycle
                .update(now, &r.name, Process::Running, r.ready, 0);
        }
        if changed {
            s.reroute();
        }
    }

    /// metrics-server's scrape and the per-pod samples.
    fn observe(&mut self, s: &mut Service, now: f64, ts: i64) {
        s.metrics.tick(now);
        // The worker's own idle CPU (runtime, probes, scrapes) as the capacity model has
        // it, beside the spec's idle CPU: the HPA sees both.
        let idle = s.resolved.idle_cpu_millis as f64 / 1000.0
            + meshbench_analysis::capacity::Overhead::default().idle_cores;
        for r in s.replicas.iter().filter(|r| !r.terminating) {
            let Some(started) = r.started else { continue };
            let cpu = r.cpu_used + idle * (now - started);
            s.metrics.observe(now, &r.name, cpu, started);
            let (prev, at) = self
                .prev_cpu
                .insert(r.name.clone(), (cpu, now))
                .unwrap_or((0.0, started));
            if now > at {
                let cores = (cpu - prev) / (now - at);
                self.samples.push(Sample::pod(
                    ts,
                    &self.mesh,
                    &s.name,
                    &r.name,
                    metric::CPU_CORES,
                    cores,
                ));
            }
            self.samples.push(Sample::pod(
                ts,
                &self.mesh,
                &s.name,
                &r.name,
                metric::MEMORY_BYTES,
                s.resolved.idle_memory_bytes as f64,
            ));
        }
    }

    fn service_samples(&mut self, s: &Service, now: f64, ts: i64) {
        let live: Vec<_> = s.live().collect();
        let ready = live.iter().filter(|r| r.ready).count();
        let pending = live.iter().filter(|r| r.started.is_none()).count();
        let mut push = |m: &str, v: f64| {
            self.samples
                .push(Sample::service(ts, &self.mesh, &s.name, m, v));
        };
        push(metric::REPLICAS, live.len() as f64);
        push(metric::REPLICAS_READY, ready as f64);
        push(metric::REPLICAS_PENDING, pending as f64);
        if let Some(r) = s.resolved.resources.cpu_request_millis {
            push(metric::CPU_REQUEST_CORES, r as f64 / 1000.0);
        }
        if let Some(l) = s.resolved.resources.cpu_limit_millis {
            push(metric::CPU_LIMIT_CORES, l as f64 / 1000.0);
        }
        if let Some(a) = &s.resolved.autoscaling {
            push(
                metric::HPA_TARGET_UTILIZATION,
                f64::from(a.target_cpu_utilization) / 100.0,
            );
        }
        let totals = (s.answered, s.errors, s.latency_sum);
        let (a0, e0, l0) = self
            .prev_worker
            .insert(s.name.clone(), totals)
            .unwrap_or(totals);
        let (da, de, dl) = (totals.0 - a0, totals.1 - e0, totals.2 - l0);
        let _ = now;
        push(metric::WORKER_REQUESTS_PER_S, da as f64);
        push(metric::WORKER_ERRORS_PER_S, de as f64);
        if da > 0 {
            push(metric::WORKER_LATENCY_MEAN_MS, dl / da as f64 * 1000.0);
        }
    }

    /// One HPA sync, as the local platform's.
    fn hpa_sync(&mut self, s: &mut Service, now: f64, ts: i64) {
        let request = s.resolved.resources.cpu_request_millis.unwrap_or(0);
        let names: Vec<String> = s.live().map(|r| r.name.clone()).collect();
        let pods: Vec<_> = names
            .iter()
            .map(|p| s.lifecycle.pod_sample(p, s.metrics.metric(p), request))
            .collect();
        let Some(hpa) = s.hpa.as_mut() else { return };
        let decision = hpa.sync(now, names.len() as u32, &pods);
        s.last_desired = Some(decision.desired);
        self.samples.extend(crate::local::platform::hpa_samples(
            ts, &self.mesh, &s.name, &decision, &pods,
        ));
        let desired = decision.desired as usize;
        while s.live().count() < desired {
            s.create(now);
        }
        let excess = s.live().count().saturating_sub(desired);
        if excess > 0 {
            let ranked: Vec<RankedPod> =
                s.live().map(|r| s.lifecycle.ranked(now, &r.name)).collect();
            for victim in scale_down_victims(&ranked, excess) {
                if let Some(r) = s.replicas.iter_mut().find(|r| r.name == victim) {
                    r.terminating = true;
                    r.routed = false;
                }
                self.prev_cpu.remove(&victim);
                self.ready_changed.remove(&victim);
                s.metrics.forget(&victim);
                s.lifecycle.forget(&victim);
            }
            s.reroute();
        }
    }
}
