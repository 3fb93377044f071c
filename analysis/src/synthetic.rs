//! Synthetic runs with known content, for tests, the report benchmark and demos.
//!
//! [`stage`] builds an exact loadgen [`StageResult`] from per-second latencies; [`run`]
//! builds a whole [`RunData`] of a given size (services, pods, duration, resolution).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use meshbench_loadgen::result::{
    Counts, EncodedHistogram, LatencySummary, SecondBucket, StageResult, StageSummary,
    new_histogram,
};

use crate::capacity::{
    CallModel, CapacityInput, EndpointModel, EntryPoint, HpaModel, Model, ServiceModel,
};
use crate::meta::{
    AnalysisOptions, Enforcement, LimitsEnforcement, Platform, RunData, RunMeta, StepLoad, StepMeta,
};
use crate::samples::{Sample, metric};
use crate::slo::Slo;

/// One second of synthetic load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecondSpec {
    /// Latencies of successes, µs.
    pub ok_latencies_us: Vec<u64>,
    /// Non-2xx responses.
    pub errors: u64,
    /// Requests that timed out (no latency recorded).
    pub timeouts: u64,
}

/// A loadgen stage whose counts and histograms are exactly `seconds`.
pub fn stage(
    index: u32,
    name: &str,
    start_ms: i64,
    target_rate: Option<f64>,
    seconds: &[SecondSpec],
) -> StageResult {
    let mut total = Counts::default();
    let mut all = new_histogram();
    let mut buckets = Vec::with_capacity(seconds.len());
    let start = u64::try_from(start_ms).unwrap_or(0);
    // One histogram reused for every second: a fresh one per second fragments the heap.
    let mut h = new_histogram();
    for (i, s) in seconds.iter().enumerate() {
        h.reset();
        for &v in &s.ok_latencies_us {
            // The histograms auto-resize, so recording cannot fail for positive values.
            let _ = h.record(v.max(1));
        }
        let ok = s.ok_latencies_us.len() as u64;
        let sent = ok + s.errors + s.timeouts;
        let counts = Counts {
            planned: sent,
            sent,
            completed: ok + s.errors,
            ok,
            status_2xx: ok,
            status_5xx: s.errors,
            timeouts: s.timeouts,
            ..Counts::default()
        };
        total.add(&counts);
        let _ = all.add(&h);
        buckets.push(SecondBucket {
            second: i as u32,
            start_unix_ms: start + i as u64 * 1000,
            counts,
            ok_summary: LatencySummary::of(&h),
            latency_ok: EncodedHistogram::encode(&h),
            latency_failed: EncodedHistogram::default(),
        });
    }
    let duration_ms = seconds.len() as u64 * 1000;
    let mut st = StageResult {
        index,
        name: name.to_owned(),
        warm_up: false,
        target_rate,
        users: None,
        planned_duration_ms: duration_ms,
        started_unix_ms: start,
        ended_unix_ms: start + duration_ms,
        partial: false,
        counts: total,
        latency_ok: EncodedHistogram::encode(&all),
        latency_failed: EncodedHistogram::default(),
        lateness: EncodedHistogram::default(),
        send_delay: EncodedHistogram::default(),
        last_ok_unix_ms: None,
        last_sent_unix_ms: None,
        response_time_ok: Default::default(),
        seconds: buckets,
        summary: StageSummary::default(),
    };
    // Summaries are derived from the histograms just encoded; recomputing cannot fail.
    let _ = st.recompute_summary();
    st
}

/// Size of a synthetic run.
#[derive(Debug, Clone, PartialEq)]
pub struct Size {
    /// Services of the chain mesh `svc-0 → svc-1 → …`.
    pub services: u32,
    /// Largest replica count of every service (pods sampled = current replicas).
    pub max_pods_per_service: u32,
    /// Steps per repetition.
    pub steps: u32,
    /// Duration of each step, seconds.
    pub step_seconds: u32,
    /// Interval between samples, milliseconds.
    pub resolution_ms: i64,
    /// Repetitions of the whole profile.
    pub repetitions: u32,
    /// Offered rate of the first step; each next step adds as much again.
    pub base_rate: f64,
    /// Keep every service at `max_pods_per_service` (the largest data volume) instead of
    /// following the HPA's steady state.
    pub fixed_pods: bool,
}

impl Size {
    /// One hour, 5 services × 20 pods = 100 pods, 1 s resolution (the report benchmark).
    pub fn one_hour_100_pods() -> Size {
        Size {
            services: 5,
            max_pods_per_service: 20,
            steps: 12,
            step_seconds: 300,
            resolution_ms: 1000,
            repetitions: 1,
            base_rate: 20.0,
            fixed_pods: true,
        }
    }
}

/// A deterministic generator (xorshift), so runs are reproducible without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The capacity input of a synthetic chain mesh `svc-0 → svc-1 → …`.
pub fn chain_mesh(services: u32, max_pods: u32) -> CapacityInput {
    let services = services.max(1);
    CapacityInput {
        entry: EntryPoint {
            service: "svc-0".into(),
            path: "/".into(),
        },
        services: (0..services)
            .map(|i| ServiceModel {
                name: format!("svc-{i}"),
                replicas: 1,
                cpu_request_cores: 0.5,
                cpu_limit_cores: Some(1.0),
                hpa: Some(HpaModel {
                    min: 1,
                    max: max_pods.max(1),
                    target_utilization_percent: 70.0,
                }),
                idle_cpu_cores: 0.0,
                memory_request_bytes: 0.0,
                endpoints: vec![EndpointModel {
                    path: "/".into(),
                    cpu_seconds: 0.005 * f64::from(i + 1),
                    delay_seconds_mean: 0.0,
                    call_groups: if i + 1 < services {
                        vec![vec![CallModel {
                            service: format!("svc-{}", i + 1),
                            path: "/".into(),
                            probability: 1.0,
                            repeat: 1,
                        }]]
                    } else {
                        Vec::new()
                    },
                    ..Default::default()
                }],
            })
            .collect(),
        overhead: Default::default(),
        node: None,
    }
}

/// A complete synthetic run of mesh `mesh` starting at `start`.
pub fn run(size: &Size, mesh: &str, start: DateTime<Utc>) -> RunData {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let model = chain_mesh(size.services, size.max_pods_per_service);
    let capacity = Model::new(&model)
        .ok()
        .and_then(|m| m.plan(&[]).max_throughput_rps)
        .unwrap_or(f64::INFINITY);
    let (steps, load, end_ms) =
        step_loads(size, mesh, start.timestamp_millis(), capacity, &mut rng);
    // Samples after all load results, so the large temporary buffers of histogram
    // encoding are not interleaved with the samples' small strings.
    let mut samples = Vec::new();
    for meta in &steps {
        step_samples(size, mesh, meta, capacity, &mut rng, &mut samples);
    }
    let mut models = BTreeMap::new();
    models.insert(mesh.to_owned(), model);
    RunData {
        meta: run_meta(size, start, end_ms),
        steps,
        samples,
        load,
        models,
        slos: vec![
            Slo::Latency {
                percentile: 99.0,
                max_ms: 50.0,
            },
            Slo::ErrorRate { max_ratio: 0.01 },
        ],
        options: AnalysisOptions::default(),
    }
}

/// Length of one step in ms.
fn step_ms(size: &Size) -> i64 {
    i64::from(size.step_seconds) * 1000
}

/// Successes per second at `rate`: capped just below the model's capacity.
fn ok_rate(rate: f64, capacity: f64) -> f64 {
    rate.min(capacity * 0.98)
}

/// Every step of every repetition, back to back from `t0`, with its load result; and the
/// end of the last step.
fn step_loads(
    size: &Size,
    mesh: &str,
    t0: i64,
    capacity: f64,
    rng: &mut Rng,
) -> (Vec<StepMeta>, Vec<StepLoad>, i64) {
    let step_ms = step_ms(size);
    let mut steps = Vec::new();
    let mut load = Vec::new();
    let mut t = t0;
    for rep in 0..size.repetitions {
        for i in 0..size.steps {
            let rate = size.base_rate * f64::from(i + 1);
            let meta = StepMeta {
                mesh: mesh.to_owned(),
                repetition: rep,
                index: i,
                name: format!("{rate:.0}rps"),
                start_ms: t,
                end_ms: t + step_ms,
                target_rate: Some(rate),
                users: None,
                warmup: false,
            };
            let seconds = seconds_of_step(size, rate, capacity, rng);
            load.push(StepLoad {
                mesh: mesh.to_owned(),
                repetition: rep,
                step: i,
                stage: stage(i, &meta.name, t, Some(rate), &seconds),
            });
            steps.push(meta);
            t += step_ms;
        }
    }
    (steps, load, t)
}

/// The seconds of one step at `rate`. Successes are capped at the model's capacity; the
/// excess times out and the latency of successes grows as the load nears it.
fn seconds_of_step(size: &Size, rate: f64, capacity: f64, rng: &mut Rng) -> Vec<SecondSpec> {
    let ok_rate = ok_rate(rate, capacity);
    let stretch = 1.0 / (1.0 - (ok_rate / capacity).min(0.95));
    (0..size.step_seconds)
        .map(|_| {
            let n = ok_rate.round() as usize;
            SecondSpec {
                ok_latencies_us: (0..n)
                    .map(|_| (2_000.0 + 1_500.0 * stretch * -rng.next().max(1e-12).ln()) as u64)
                    .collect(),
                errors: u64::from(rng.next() < 0.05),
                timeouts: (rate - ok_rate).round() as u64,
            }
        })
        .collect()
}

/// The samples of one step every `size.resolution_ms`: per service its replicas, CPU
/// request, HPA target and requests per second; per pod its CPU and memory.
fn step_samples(
    size: &Size,
    mesh: &str,
    meta: &StepMeta,
    capacity: f64,
    rng: &mut Rng,
    samples: &mut Vec<Sample>,
) {
    let step_ms = step_ms(size);
    let t = meta.start_ms;
    let ok_rate = ok_rate(meta.target_rate.unwrap_or(0.0), capacity);
    let mut ts = t;
    while ts < t + step_ms {
        let progress = (ts - t) as f64 / step_ms as f64;
        for s in 0..size.services {
            service_samples(size, mesh, s, ts, progress, ok_rate, rng, samples);
        }
        ts += size.resolution_ms;
    }
}

/// The samples of service `svc-{s}` and its pods at `ts`, `progress` (0..1) into a step
/// that serves `ok_rate`.
#[allow(clippy::too_many_arguments)] // one sample point's coordinates, all distinct
fn service_samples(
    size: &Size,
    mesh: &str,
    s: u32,
    ts: i64,
    progress: f64,
    ok_rate: f64,
    rng: &mut Rng,
    samples: &mut Vec<Sample>,
) {
    let svc = format!("svc-{s}");
    let demand = 0.005 * f64::from(s + 1);
    // The HPA's steady state for this step, reached over the first 30 % of it.
    let want = (ok_rate * demand / (0.5 * 0.7)).ceil();
    let replicas = if size.fixed_pods {
        f64::from(size.max_pods_per_service.max(1))
    } else {
        (want * progress.min(0.3) / 0.3)
            .ceil()
            .clamp(1.0, f64::from(size.max_pods_per_service))
    };
    for (name, value) in [
        (metric::REPLICAS, replicas),
        (metric::REPLICAS_READY, replicas),
        (metric::CPU_REQUEST_CORES, 0.5),
        (metric::HPA_TARGET_UTILIZATION, 0.7),
        (metric::WORKER_REQUESTS_PER_S, ok_rate),
    ] {
        samples.push(Sample::service(ts, mesh, &svc, name, value));
    }
    for p in 0..replicas as u32 {
        let pod = format!("{svc}-{p}");
        let cpu = (ok_rate * demand / replicas).min(1.0) * (0.9 + 0.2 * rng.next());
        samples.push(Sample::pod(ts, mesh, &svc, &pod, metric::CPU_CORES, cpu));
        samples.push(Sample::pod(
            ts,
            mesh,
            &svc,
            &pod,
            metric::MEMORY_BYTES,
            5.0e7 + 1.0e6 * rng.next(),
        ));
    }
}

/// The run's metadata: a synthetic local run from `start` to `end_ms`.
fn run_meta(size: &Size, start: DateTime<Utc>, end_ms: i64) -> RunMeta {
    RunMeta {
        benchmark: "synthetic".into(),
        spec: serde_json::json!({ "synthetic": { "services": size.services, "steps": size.steps } }),
        meshbench_version: env!("CARGO_PKG_VERSION").into(),
        platform: Platform::Local,
        limits: LimitsEnforcement {
            mode: Enforcement::Enforced,
            reason: "synthetic data".into(),
        },
        warnings: Vec::new(),
        phases: Vec::new(),
        started_at: start,
        finished_at: DateTime::from_timestamp_millis(end_ms),
        steps_planned: Some(size.steps * size.repetitions),
        partial: false,
        deviations: Vec::new(),
    }
}
