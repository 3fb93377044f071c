//! From collected data to report rows: step attribution, per-service summaries, scaling
//! figures, latency from merged histograms, predictions, SLO verdicts and repetition
//! statistics.
//!
//! Aggregation is plain Rust over time-sorted series rather than polars expressions: the
//! figures (time-weighted step functions, carried-in values, scaling events) are sequential
//! by nature, and this keeps the crate's polars features to IO only.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use meshbench_loadgen::result::{Counts, LatencySummary, SecondBucket, StageResult};
use serde::{Deserialize, Serialize};

use crate::capacity::{CapacityPlan, Model, StepPrediction};
use crate::meta::{AnalysisOptions, RunData, RunMeta, StepMeta};
use crate::samples::{Sample, metric};
use crate::saturation::{self, Growth, MeshSaturation, StepFigures};
use crate::scaling;
use crate::slo::{self, RunVerdict, Slo, StepOutcome, StepVerdict};
use crate::stats;
use crate::tables::{LatencyRow, RepetitionRow, ServiceRow, StepRow, Timestamp};

/// Version of the report layout and table schemas.
///
/// 2: `steps` names its rates for what they are (`sent_rate_rps`, `throughput_rps` as the
/// served throughput, `successes_incl_late_rps`; was `achieved_rate_rps` and
/// `successful_rate_rps`), adds `throughput_ratio`, `latency_growth`, `saturated`,
/// `saturation`, and renames `predicted_achieved_rps` to `predicted_throughput_rps`;
/// `run.json` gains `saturation`.
///
/// 3: `steps` adds `response_time_p50_ms`, `response_time_p99_ms` and `lateness_p99_ms`,
/// and `sent_rate_rps` spans until the step's last send; `latency` adds `sent` (requests
/// that left in that second) and its `requests` counts the requests planned in it;
/// `services` adds `predicted_cpu_utilization_error`; `errors` counts outcomes, so
/// requests aborted by a stop are no longer errors.
///
/// Readers of this crate upgrade older tables on read (renamed columns, added ones null).
pub const SCHEMA_VERSION: u32 = 3;

/// The content of `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunJson {
    /// Layout version the directory was written with ([`SCHEMA_VERSION`]); version 1 tables are
    /// upgraded on read.
    pub schema_version: u32,
    /// Version of the analysis crate that wrote the directory.
    pub analysis_version: String,
    /// The runner's metadata; its `partial` is true when the run is incomplete for any reason.
    #[serde(flatten)]
    pub meta: RunMeta,
    /// Steps analysed (all meshes and repetitions); fewer than `steps_planned` makes the run
    /// partial.
    pub steps_completed: u32,
    /// Why the run is partial, when it is.
    pub partial_reason: Option<String>,
    /// The benchmark's SLOs the steps were judged against (empty: no verdict).
    pub slos: Vec<Slo>,
    /// The SLO verdict, per step and for the whole run.
    pub slo: RunVerdict,
    /// Capacity plan per mesh at the run's target rates (a model, not a measurement).
    pub predictions: BTreeMap<String, CapacityPlan>,
    /// The tunables the tables were computed with.
    pub options: AnalysisOptions,
    /// Files of the directory, relative names.
    pub tables: Vec<String>,
    /// Where each mesh saturated (schema 2; empty when read from an older directory).
    #[serde(default)]
    pub saturation: Vec<MeshSaturation>,
}

/// A borrowed sample, so one aggregation serves in-memory samples and a read-back table.
#[derive(Debug, Clone, Copy)]
pub struct SampleRef<'a> {
    /// Instant of the value, UTC unix milliseconds.
    pub ts_ms: i64,
    /// Mesh the service belongs to.
    pub mesh: &'a str,
    /// Service the value is for.
    pub service: &'a str,
    /// Pod name for per-pod metrics; `None` for per-service metrics.
    pub pod: Option<&'a str>,
    /// Metric name, normally one of [`metric`] (others are not summarised).
    pub metric: &'a str,
    /// Value in the unit of the metric.
    pub value: f64,
}

impl<'a> From<&'a Sample> for SampleRef<'a> {
    fn from(s: &'a Sample) -> Self {
        SampleRef {
            ts_ms: s.ts_ms,
            mesh: &s.mesh,
            service: &s.service,
            pod: s.pod.as_deref(),
            metric: &s.metric,
            value: s.value,
        }
    }
}

/// Per-pod values aggregated per instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodAggregate {
    /// Instant, UTC unix milliseconds.
    pub ts_ms: i64,
    /// Σ over pods.
    pub sum: f64,
    /// Pods with a value at this instant.
    pub pods: u32,
    /// Largest pod value.
    pub max: f64,
}

/// All series of one service, sorted by time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceSeries {
    /// Replicas the workload is scaled to, as `(ts_ms, count)`; derived from the pods with CPU
    /// samples when the platform reported none.
    pub replicas: Vec<(i64, f64)>,
    /// Ready replicas, `(ts_ms, count)`.
    pub replicas_ready: Vec<(i64, f64)>,
    /// Replicas left Pending for want of room on the node, `(ts_ms, count)`.
    pub replicas_pending: Vec<(i64, f64)>,
    /// The HPA's desired replicas at its last decision, `(ts_ms, count)`.
    pub replicas_desired: Vec<(i64, f64)>,
    /// CPU request of one pod, `(ts_ms, cores)`.
    pub cpu_request: Vec<(i64, f64)>,
    /// CPU limit of one pod, `(ts_ms, cores)`; empty when unlimited.
    pub cpu_limit: Vec<(i64, f64)>,
    /// The HPA's target CPU utilization as a fraction of the request (0.7 = 70 %).
    pub hpa_target: Vec<(i64, f64)>,
    /// CPU used in cores (CPU seconds per second), summed and maxed over pods per instant.
    pub cpu: Vec<PodAggregate>,
    /// Memory working set in bytes, summed and maxed over pods per instant.
    pub memory: Vec<PodAggregate>,
    /// Requests per second the service's workers handled (all pods).
    pub worker_requests: Vec<(i64, f64)>,
    /// Requests per second the workers answered with an error (5xx, shed).
    pub worker_errors: Vec<(i64, f64)>,
    /// Mean worker-side latency over each sampling interval, in milliseconds.
    pub worker_latency_mean: Vec<(i64, f64)>,
    /// 99th percentile of worker-side latency over each sampling interval, in milliseconds.
    pub worker_latency_p99: Vec<(i64, f64)>,
}

/// Series per (mesh, service).
pub type SeriesMap = BTreeMap<(String, String), ServiceSeries>;

fn aggregate_pods(mut v: Vec<(i64, f64)>) -> Vec<PodAggregate> {
    v.sort_by_key(|p| p.0);
    let mut out: Vec<PodAggregate> = Vec::new();
    for (t, x) in v {
        match out.last_mut() {
            Some(a) if a.ts_ms == t => {
                a.sum += x;
                a.pods += 1;
                a.max = a.max.max(x);
            }
            _ => out.push(PodAggregate {
                ts_ms: t,
                sum: x,
                pods: 1,
                max: x,
            }),
        }
    }
    out
}

/// Groups samples into per-service series; non-finite values are dropped.
pub fn group_samples<'a>(samples: impl Iterator<Item = SampleRef<'a>>) -> SeriesMap {
    #[derive(Default)]
    struct Raw {
        s: ServiceSeries,
        cpu: Vec<(i64, f64)>,
        memory: Vec<(i64, f64)>,
    }
    let mut raw: HashMap<(&str, &str), Raw> = HashMap::new();
    for x in samples {
        if !x.value.is_finite() {
            continue;
        }
        let r = raw.entry((x.mesh, x.service)).or_default();
        let p = (x.ts_ms, x.value);
        let per_pod = x.pod.is_some();
        match (x.metric, per_pod) {
            (metric::CPU_CORES, true) => r.cpu.push(p),
            (metric::MEMORY_BYTES, true) => r.memory.push(p),
            (metric::REPLICAS, false) => r.s.replicas.push(p),
            (metric::REPLICAS_READY, false) => r.s.replicas_ready.push(p),
            (metric::REPLICAS_PENDING, false) => r.s.replicas_pending.push(p),
            (metric::REPLICAS_DESIRED, false) => r.s.replicas_desired.push(p),
            (metric::CPU_REQUEST_CORES, false) => r.s.cpu_request.push(p),
            (metric::CPU_LIMIT_CORES, false) => r.s.cpu_limit.push(p),
            (metric::HPA_TARGET_UTILIZATION, false) => r.s.hpa_target.push(p),
            (metric::WORKER_REQUESTS_PER_S, false) => r.s.worker_requests.push(p),
            (metric::WORKER_ERRORS_PER_S, false) => r.s.worker_errors.push(p),
            (metric::WORKER_LATENCY_MEAN_MS, false) => r.s.worker_latency_mean.push(p),
            (metric::WORKER_LATENCY_P99_MS, false) => r.s.worker_latency_p99.push(p),
            _ => {}
        }
    }
    raw.into_iter()
        .map(|((mesh, service), mut r)| {
            let s = &mut r.s;
            for v in [
                &mut s.replicas,
                &mut s.replicas_ready,
                &mut s.replicas_pending,
                &mut s.replicas_desired,
                &mut s.cpu_request,
                &mut s.cpu_limit,
                &mut s.hpa_target,
                &mut s.worker_requests,
                &mut s.worker_errors,
                &mut s.worker_latency_mean,
                &mut s.worker_latency_p99,
            ] {
                v.sort_by_key(|p| p.0);
            }
            s.cpu = aggregate_pods(std::mem::take(&mut r.cpu));
            s.memory = aggregate_pods(std::mem::take(&mut r.memory));
            if s.replicas.is_empty() {
                s.replicas = s.cpu.iter().map(|a| (a.ts_ms, f64::from(a.pods))).collect();
            }
            ((mesh.to_owned(), service.to_owned()), r.s)
        })
        .collect()
}

fn window<T>(v: &[T], ts: impl Fn(&T) -> i64, start: i64, end: i64) -> &[T] {
    let a = v.partition_point(|x| ts(x) < start);
    let b = v.partition_point(|x| ts(x) < end);
    &v[a..b.max(a)]
}

/// Value in force at `ts`: the last at or before it, else the first after it.
fn value_at(v: &[(i64, f64)], ts: i64) -> Option<f64> {
    let i = v.partition_point(|p| p.0 <= ts);
    if i > 0 {
        Some(v[i - 1].1)
    } else {
        v.first().map(|p| p.1)
    }
}

fn mean(it: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = it.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

fn max(it: impl Iterator<Item = f64>) -> Option<f64> {
    it.fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
}

/// Maps samples to steps by time: the step of the same mesh whose window contains the
/// sample; a sample in no window keeps its own `step` (repetition from the latest such step
/// that started before it).
pub struct StepIndex<'a> {
    by_mesh: HashMap<&'a str, Vec<&'a StepMeta>>,
}

impl<'a> StepIndex<'a> {
    /// Indexes the step windows of every mesh; `steps` may come in any order.
    pub fn new(steps: &'a [StepMeta]) -> Self {
        let mut by_mesh: HashMap<&str, Vec<&StepMeta>> = HashMap::new();
        for s in steps {
            by_mesh.entry(&s.mesh).or_default().push(s);
        }
        for v in by_mesh.values_mut() {
            v.sort_by_key(|s| s.start_ms);
        }
        StepIndex { by_mesh }
    }

    /// (repetition, step) of a sample, if any.
    pub fn locate(&self, mesh: &str, ts_ms: i64, hint: Option<u32>) -> Option<(u32, u32)> {
        let steps = self.by_mesh.get(mesh)?;
        let i = steps.partition_point(|s| s.start_ms <= ts_ms);
        if i > 0 {
            let s = steps[i - 1];
            if ts_ms < s.end_ms {
                return Some((s.repetition, s.index));
            }
        }
        let want = hint?;
        steps[..i]
            .iter()
            .rev()
            .find(|s| s.index == want)
            .map(|s| (s.repetition, s.index))
    }
}

/// The analysis of a run: everything the tables and the report are made of.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The content of `run.json`.
    pub run: RunJson,
    /// Rows of the `steps` table.
    pub steps: Vec<StepRow>,
    /// Rows of the `services` table.
    pub services: Vec<ServiceRow>,
    /// Rows of the `latency` table (one per second of each step).
    pub latency: Vec<LatencyRow>,
    /// Rows of the `repetitions` table (statistics over repetitions; warm-up steps excluded).
    pub repetitions: Vec<RepetitionRow>,
    /// Series per service, for the plots.
    pub series: SeriesMap,
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

struct LatencyFigures {
    mean: f64,
    p50: f64,
    p90: f64,
    p95: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn latency_figures(h: &Histogram<u64>) -> Option<LatencyFigures> {
    if h.is_empty() {
        return None;
    }
    Some(LatencyFigures {
        mean: h.mean() / 1000.0,
        p50: us_to_ms(h.value_at_quantile(0.50)),
        p90: us_to_ms(h.value_at_quantile(0.90)),
        p95: us_to_ms(h.value_at_quantile(0.95)),
        p99: us_to_ms(h.value_at_quantile(0.99)),
        p999: us_to_ms(h.value_at_quantile(0.999)),
        max: us_to_ms(h.max()),
    })
}

/// Latency of one second's successes: the loadgen's own summary when it is consistent with
/// the counts (it is derived from the same histogram), else the decoded histogram.
fn second_figures(b: &SecondBucket) -> Option<LatencyFigures> {
    let s = &b.ok_summary;
    if b.counts.ok == 0 {
        return None;
    }
    if s.count == b.counts.ok {
        return Some(LatencyFigures {
            mean: s.mean_us / 1000.0,
            p50: us_to_ms(s.p50_us),
            p90: us_to_ms(s.p90_us),
            p95: us_to_ms(s.p95_us),
            p99: us_to_ms(s.p99_us),
            p999: us_to_ms(s.p999_us),
            max: us_to_ms(s.max_us),
        });
    }
    b.latency_ok
        .decode()
        .ok()
        .as_ref()
        .and_then(latency_figures)
}

/// Per-second medians of successes (ms), in order, for seconds that had successes.
fn second_medians(seconds: &[SecondBucket]) -> Vec<f64> {
    seconds
        .iter()
        .filter(|b| b.counts.ok > 0)
        .filter_map(|b| {
            if b.ok_summary.count == b.counts.ok {
                Some(us_to_ms(b.ok_summary.p50_us))
            } else {
                let h = b.latency_ok.decode().ok()?;
                (!h.is_empty()).then(|| us_to_ms(h.value_at_quantile(0.5)))
            }
        })
        .collect()
}

/// (predicted − measured) ÷ measured; `None` unless both are known and the measurement > 0.
fn relative_error(predicted: Option<f64>, measured: Option<f64>) -> Option<f64> {
    let (p, m) = (predicted?, measured?);
    (m > 0.0 && p.is_finite()).then(|| (p - m) / m)
}

/// Outcomes that are neither a success nor a timeout. Summed from the outcomes, not
/// `sent − ok − timeouts`: per second the sends are counted when they left and the outcomes
/// when they were planned, and requests aborted by a stop have no outcome at all.
fn errors_of(c: &Counts) -> u64 {
    c.completed
        .saturating_sub(c.ok)
        .saturating_add(c.connection_errors)
        .saturating_add(c.other_errors)
}

/// Runs the whole analysis of `data`. Problems with parts of the input (an undecodable
/// histogram, an invalid capacity model) become warnings in `run.json`, so one bad part
/// never hides the rest.
pub fn analyze(data: &RunData) -> Analysis {
    let mut warnings = data.meta.warnings.clone();
    let steps_meta = sorted_steps(&data.steps);

    // Models and predictions per mesh.
    let models = build_models(data, &mut warnings);
    let predictions = plan_predictions(data, &models);

    // Load results by step.
    let loads = index_loads(data);

    let mut rows = StepRows::with_capacity(steps_meta.len());
    for &s in &steps_meta {
        let load = loads
            .get(&(s.mesh.as_str(), s.repetition, s.index))
            .copied();
        rows.add(data, &models, s, load, &mut warnings);
    }
    let StepRows {
        steps,
        latency,
        verdicts,
        ..
    } = rows;

    // Samples: attribution counts and series.
    let counts = sample_counts(data);
    let series = group_samples(data.samples.iter().map(SampleRef::from));
    let services = service_rows(data, &steps_meta, &models, &series, &counts);

    let repetitions = repetition_rows(&steps, &services);
    let steps_completed = steps_meta.len() as u32;
    let run = run_json(
        data,
        warnings,
        steps_completed,
        &steps,
        verdicts,
        predictions,
    );
    Analysis {
        run,
        steps,
        services,
        latency,
        repetitions,
        series,
    }
}

/// (mesh, repetition, index, start) order: the order of the step, latency and service rows.
fn sorted_steps(steps: &[StepMeta]) -> Vec<&StepMeta> {
    let mut steps_meta: Vec<&StepMeta> = steps.iter().collect();
    steps_meta.sort_by(|a, b| {
        (&a.mesh, a.repetition, a.index, a.start_ms).cmp(&(
            &b.mesh,
            b.repetition,
            b.index,
            b.start_ms,
        ))
    });
    steps_meta
}

/// An invalid model becomes a warning and its mesh goes without predictions.
fn build_models(data: &RunData, warnings: &mut Vec<String>) -> BTreeMap<String, Model> {
    let mut models: BTreeMap<String, Model> = BTreeMap::new();
    for (mesh, input) in &data.models {
        match Model::new(input) {
            Ok(m) => {
                models.insert(mesh.clone(), m);
            }
            Err(e) => warnings.push(format!("capacity model of mesh {mesh} not computed: {e}")),
        }
    }
    models
}

/// Each mesh's capacity plan at the distinct target rates of its steps, ascending.
fn plan_predictions(
    data: &RunData,
    models: &BTreeMap<String, Model>,
) -> BTreeMap<String, CapacityPlan> {
    let mut predictions = BTreeMap::new();
    for (mesh, model) in models {
        let mut rates: Vec<f64> = data
            .steps
            .iter()
            .filter(|s| &s.mesh == mesh)
            .filter_map(|s| s.target_rate)
            .collect();
        rates.sort_by(f64::total_cmp);
        rates.dedup();
        predictions.insert(mesh.clone(), model.plan(&rates));
    }
    predictions
}

/// `None` for a mesh without a (valid) capacity model.
fn step_prediction(models: &BTreeMap<String, Model>, s: &StepMeta) -> Option<StepPrediction> {
    models.get(&s.mesh).map(|m| m.predict_step(s.target_rate))
}

fn index_loads(data: &RunData) -> HashMap<(&str, u32, u32), &StageResult> {
    let mut loads: HashMap<(&str, u32, u32), &StageResult> = HashMap::new();
    for l in &data.load {
        loads.insert((&l.mesh, l.repetition, l.step), &l.stage);
    }
    loads
}

/// Built in step order: a step's saturation judgement needs the earlier steps of its sweep.
struct StepRows<'a> {
    steps: Vec<StepRow>,
    latency: Vec<LatencyRow>,
    verdicts: Vec<StepVerdict>,
    // The best served throughput so far per (mesh, repetition), and its target rate.
    best_so_far: HashMap<(&'a str, u32), (f64, f64)>,
}

impl<'a> StepRows<'a> {
    fn with_capacity(steps: usize) -> Self {
        StepRows {
            steps: Vec::with_capacity(steps),
            latency: Vec::new(),
            verdicts: Vec::new(),
            best_so_far: HashMap::new(),
        }
    }

    /// Adds one step's row, SLO verdict and per-second latency rows.
    fn add(
        &mut self,
        data: &RunData,
        models: &BTreeMap<String, Model>,
        s: &'a StepMeta,
        load: Option<&StageResult>,
        warnings: &mut Vec<String>,
    ) {
        let m = measure_step(s, load, warnings);
        let pred = step_prediction(models, s);
        let sweep = (s.mesh.as_str(), s.repetition);
        let earlier_best = (!s.warmup)
            .then(|| self.best_so_far.get(&sweep).copied())
            .flatten();
        let (saturated, saturation) = judge_saturation(s, &m, pred.as_ref(), earlier_best);
        if let (false, Some(t), Some(rate)) = (s.warmup, m.throughput, s.target_rate)
            && earlier_best.is_none_or(|(best, _)| t > best)
        {
            self.best_so_far.insert(sweep, (t, rate));
        }
        let (verdict, violations_text) = slo_verdict(&data.slos, s, &m);
        let slo_pass = (!data.slos.is_empty()).then_some(verdict.pass);
        self.verdicts.push(verdict);
        self.steps.push(step_row(
            s,
            &m,
            pred.as_ref(),
            saturated,
            saturation,
            slo_pass,
            violations_text,
        ));
        if let Some(l) = load {
            push_latency_rows(&mut self.latency, s, l);
        }
    }
}

/// A step's load result reduced to what its row, saturation judgement and SLO verdict share.
struct Measured<'a> {
    load: Option<&'a StageResult>,
    hist: Option<Histogram<u64>>,
    duration_s: f64,
    counts: Option<Counts>,
    requests: Option<u64>,
    lat: Option<LatencyFigures>,
    throughput: Option<f64>,
    growth: Option<Growth>,
}

impl Measured<'_> {
    /// A count as a rate over the step's duration; `None` without time.
    fn per_s(&self, n: u64) -> Option<f64> {
        (self.duration_s > 0.0).then(|| n as f64 / self.duration_s)
    }
}

/// An unreadable histogram becomes a warning and the step's latency is left null.
fn measure_step<'a>(
    s: &StepMeta,
    load: Option<&'a StageResult>,
    warnings: &mut Vec<String>,
) -> Measured<'a> {
    let hist = match load.map(StageResult::latency_histogram) {
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            warnings.push(format!(
                "mesh {} repetition {} step {}: latency histogram unreadable ({e}); latency left null",
                s.mesh, s.repetition, s.index
            ));
            None
        }
        None => None,
    };
    let window_s = (s.end_ms - s.start_ms).max(0) as f64 / 1000.0;
    let duration_s = load
        .map(|l| l.summary.elapsed_s)
        .filter(|d| *d > 0.0)
        .unwrap_or(window_s);
    let counts = load.map(|l| l.counts);
    let requests = counts.map(|c| c.sent.saturating_add(c.dropped));
    let lat = hist.as_ref().and_then(latency_figures);
    let throughput = load
        .map(|l| l.served_throughput(l.summary.elapsed_s))
        .filter(|t| *t > 0.0 || counts.is_some_and(|c| c.ok == 0));
    let growth = load.and_then(|l| Growth::of(&second_medians(&l.seconds)));
    Measured {
        load,
        hist,
        duration_s,
        counts,
        requests,
        lat,
        throughput,
        growth,
    }
}

/// `(saturated, why)`; both `None` for a step without a load result, which cannot be judged.
fn judge_saturation(
    s: &StepMeta,
    m: &Measured<'_>,
    pred: Option<&StepPrediction>,
    earlier_best: Option<(f64, f64)>,
) -> (Option<bool>, Option<String>) {
    match m.load {
        Some(_) => {
            let (sat, why) = saturation::judge(&StepFigures {
                target_rate: s.target_rate,
                throughput: m.throughput,
                timeouts: m.counts.map_or(0, |c| c.timeouts),
                growth: m.growth,
                predicted_bottleneck: pred.and_then(|p| p.bottleneck.as_deref()),
                earlier_best,
            });
            (Some(sat), why)
        }
        None => (None, None),
    }
}

/// The step's verdict, and its violations joined into the text of the step row.
fn slo_verdict(slos: &[Slo], s: &StepMeta, m: &Measured<'_>) -> (StepVerdict, Option<String>) {
    let outcome = StepOutcome {
        requests: m.requests,
        failed: m
            .counts
            .map(|c| c.sent.saturating_add(c.dropped).saturating_sub(c.ok)),
        throughput: m.throughput,
        target_rate: s.target_rate,
        latency_us: m.hist.as_ref(),
    };
    let violations = slo::evaluate(slos, &outcome);
    let pass = violations.is_empty();
    let violations_text = (!violations.is_empty()).then(|| {
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    });
    let verdict = StepVerdict {
        mesh: s.mesh.clone(),
        repetition: s.repetition,
        step: s.index,
        step_name: s.name.clone(),
        warmup: s.warmup,
        pass,
        violations,
    };
    (verdict, violations_text)
}

/// A figure of a summary in ms; `None` when it holds no values.
fn summary_ms(s: &LatencySummary, figure: impl Fn(&LatencySummary) -> u64) -> Option<f64> {
    (s.count > 0).then(|| figure(s) as f64 / 1000.0)
}

fn step_row(
    s: &StepMeta,
    m: &Measured<'_>,
    pred: Option<&StepPrediction>,
    saturated: Option<bool>,
    saturation: Option<String>,
    slo_pass: Option<bool>,
    slo_violations: Option<String>,
) -> StepRow {
    let (counts, requests, throughput, lat) = (m.counts, m.requests, m.throughput, &m.lat);
    StepRow {
        mesh: s.mesh.clone(),
        repetition: s.repetition,
        step: s.index,
        step_name: s.name.clone(),
        warmup: s.warmup,
        start: Timestamp(s.start_ms),
        end: Timestamp(s.end_ms),
        duration_s: m.duration_s,
        target_rate_rps: s.target_rate,
        users: s.users,
        requests,
        sent: counts.map(|c| c.sent),
        successes: counts.map(|c| c.ok),
        errors: counts.map(|c| errors_of(&c)),
        timeouts: counts.map(|c| c.timeouts),
        dropped: counts.map(|c| c.dropped),
        sent_rate_rps: m
            .load
            .filter(|_| m.duration_s > 0.0)
            .map(|l| l.sent_rate(m.duration_s)),
        throughput_rps: throughput,
        successes_incl_late_rps: counts.and_then(|c| m.per_s(c.ok)),
        throughput_ratio: throughput
            .zip(s.target_rate.filter(|t| *t > 0.0))
            .map(|(t, r)| t / r),
        error_ratio: requests
            .filter(|r| *r > 0)
            .zip(counts)
            .map(|(r, c)| r.saturating_sub(c.ok) as f64 / r as f64),
        latency_mean_ms: lat.as_ref().map(|l| l.mean),
        latency_p50_ms: lat.as_ref().map(|l| l.p50),
        latency_p90_ms: lat.as_ref().map(|l| l.p90),
        latency_p95_ms: lat.as_ref().map(|l| l.p95),
        latency_p99_ms: lat.as_ref().map(|l| l.p99),
        latency_p999_ms: lat.as_ref().map(|l| l.p999),
        latency_max_ms: lat.as_ref().map(|l| l.max),
        response_time_p50_ms: m
            .load
            .and_then(|l| summary_ms(&l.summary.response_time, |r| r.p50_us)),
        response_time_p99_ms: m
            .load
            .and_then(|l| summary_ms(&l.summary.response_time, |r| r.p99_us)),
        lateness_p99_ms: m
            .load
            .and_then(|l| summary_ms(&l.summary.lateness, |r| r.p99_us)),
        latency_growth: m.growth.and_then(|g| g.ratio()),
        saturated,
        saturation,
        predicted_max_throughput_rps: pred.and_then(|p| p.max_throughput_rps),
        predicted_bottleneck: pred.and_then(|p| p.bottleneck.clone()),
        predicted_throughput_rps: pred.and_then(|p| p.achieved_rps),
        predicted_latency_mean_ms: pred.and_then(|p| p.latency_mean_ms),
        predicted_latency_p99_ms: pred.and_then(|p| p.latency_p99_ms),
        predicted_throughput_error: relative_error(pred.and_then(|p| p.achieved_rps), throughput),
        predicted_latency_mean_error: relative_error(
            pred.and_then(|p| p.latency_mean_ms),
            lat.as_ref().map(|l| l.mean),
        ),
        predicted_latency_p99_error: relative_error(
            pred.and_then(|p| p.latency_p99_ms),
            lat.as_ref().map(|l| l.p99),
        ),
        slo_pass,
        slo_violations,
        partial: m.load.is_none_or(|l| l.partial),
    }
}

fn push_latency_rows(latency: &mut Vec<LatencyRow>, s: &StepMeta, l: &StageResult) {
    // Figures first, rows after: decoding a histogram allocates a large buffer, and
    // interleaving those with the rows' small strings fragments the heap (hundreds of
    // MiB for an hour of seconds).
    let figures: Vec<Option<LatencyFigures>> = l.seconds.iter().map(second_figures).collect();
    for (b, f) in l.seconds.iter().zip(figures) {
        latency.push(LatencyRow {
            ts: Timestamp(i64::try_from(b.start_unix_ms).unwrap_or(i64::MAX)),
            mesh: s.mesh.clone(),
            repetition: s.repetition,
            step: s.index,
            second: b.second,
            requests: b.counts.planned,
            sent: Some(b.counts.sent),
            successes: b.counts.ok,
            errors: errors_of(&b.counts),
            timeouts: b.counts.timeouts,
            latency_mean_ms: f.as_ref().map(|l| l.mean),
            latency_p50_ms: f.as_ref().map(|l| l.p50),
            latency_p90_ms: f.as_ref().map(|l| l.p90),
            latency_p99_ms: f.as_ref().map(|l| l.p99),
            latency_max_ms: f.as_ref().map(|l| l.max),
        });
    }
}

/// Samples per (mesh, repetition, step, service), attributed to steps by time.
fn sample_counts(data: &RunData) -> HashMap<(&str, u32, u32, &str), u64> {
    let index = StepIndex::new(&data.steps);
    let mut counts: HashMap<(&str, u32, u32, &str), u64> = HashMap::new();
    for x in &data.samples {
        if let Some((r, st)) = index.locate(&x.mesh, x.ts_ms, x.step) {
            *counts.entry((&x.mesh, r, st, &x.service)).or_default() += 1;
        }
    }
    counts
}

/// Includes the model's services, so one it expects gets rows even without samples.
fn services_by_mesh<'a>(
    data: &'a RunData,
    series: &'a SeriesMap,
) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
    let mut service_names: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (mesh, service) in series.keys() {
        service_names.entry(mesh).or_default().insert(service);
    }
    for (mesh, input) in &data.models {
        for s in &input.services {
            service_names.entry(mesh).or_default().insert(&s.name);
        }
    }
    service_names
}

/// One row per step and service of its mesh, with the model's prediction beside it.
fn service_rows(
    data: &RunData,
    steps_meta: &[&StepMeta],
    models: &BTreeMap<String, Model>,
    series: &SeriesMap,
    counts: &HashMap<(&str, u32, u32, &str), u64>,
) -> Vec<ServiceRow> {
    let service_names = services_by_mesh(data, series);
    let empty = ServiceSeries::default();
    let mut services = Vec::new();
    for s in steps_meta {
        let pred = step_prediction(models, s);
        let Some(names) = service_names.get(s.mesh.as_str()) else {
            continue;
        };
        for name in names {
            let ser = series
                .get(&(s.mesh.clone(), (*name).to_owned()))
                .unwrap_or(&empty);
            let samples = counts
                .get(&(s.mesh.as_str(), s.repetition, s.index, *name))
                .copied()
                .unwrap_or(0);
            let mut row = service_row(s, name, ser, samples, data.options.settle_window_ms);
            if let Some(p) = pred.as_ref().and_then(|p| p.services.get(*name)) {
                row.predicted_replicas = Some(p.replicas);
                row.predicted_replicas_low = p.replicas_band.map(|b| b.0);
                row.predicted_replicas_high = p.replicas_band.map(|b| b.1);
                row.predicted_cpu_utilization = Some(p.request_utilization);
                row.predicted_cpu_utilization_error =
                    relative_error(Some(p.request_utilization), row.cpu_utilization_avg);
                row.predicted_replicas_pending = Some(p.pending);
            }
            services.push(row);
        }
    }
    services
}

/// `run.json`; the run counts as partial when the runner says so or anything is missing.
fn run_json(
    data: &RunData,
    warnings: Vec<String>,
    steps_completed: u32,
    steps: &[StepRow],
    verdicts: Vec<StepVerdict>,
    predictions: BTreeMap<String, CapacityPlan>,
) -> RunJson {
    let mut meta = data.meta.clone();
    meta.warnings = warnings;
    let partial_reason = partial_reason(&meta, steps_completed, steps);
    meta.partial = partial_reason.is_some();
    RunJson {
        schema_version: SCHEMA_VERSION,
        analysis_version: env!("CARGO_PKG_VERSION").to_owned(),
        meta,
        steps_completed,
        partial_reason,
        slos: data.slos.clone(),
        slo: RunVerdict::of(&data.slos, verdicts),
        predictions,
        options: data.options.clone(),
        tables: Vec::new(),
        saturation: saturation::summarise(steps),
    }
}

fn partial_reason(meta: &RunMeta, completed: u32, steps: &[StepRow]) -> Option<String> {
    if meta.partial {
        return Some("the runner stopped before the plan ended".into());
    }
    if let Some(planned) = meta.steps_planned
        && completed < planned
    {
        return Some(format!("{completed} of {planned} steps completed"));
    }
    if meta.finished_at.is_none() {
        return Some("the run has not finished".into());
    }
    let cut: Vec<String> = steps
        .iter()
        .filter(|s| s.partial)
        .map(|s| format!("{}/{}/{}", s.mesh, s.repetition, s.step))
        .collect();
    (!cut.is_empty()).then(|| format!("steps cut short or without load result: {}", cut.join(", ")))
}

/// The most replicas the HPA wanted during the step, counting the desire it carried in
/// from before the step.
fn desired_max(ser: &ServiceSeries, start: i64, end: i64) -> Option<f64> {
    let carried_desired = ser
        .replicas_desired
        .partition_point(|p| p.0 <= start)
        .checked_sub(1)
        .map(|i| ser.replicas_desired[i].1);
    max(window(&ser.replicas_desired, |p| p.0, start, end)
        .iter()
        .map(|p| p.1)
        .chain(carried_desired))
}

/// CPU used ÷ CPU requested per pod, at each sample of `cpu` with a known request.
fn cpu_utilizations(ser: &ServiceSeries, cpu: &[PodAggregate]) -> Vec<f64> {
    cpu.iter()
        .filter_map(|a| {
            let req = value_at(&ser.cpu_request, a.ts_ms).filter(|r| *r > 0.0)?;
            Some(a.sum / (f64::from(a.pods) * req))
        })
        .collect()
}

/// The workers' mean latency over the step, weighted by their request rate when it is
/// known (else the plain mean).
fn worker_latency_mean_ms(ser: &ServiceSeries, start: i64, end: i64) -> Option<f64> {
    let w_lat = window(&ser.worker_latency_mean, |p| p.0, start, end);
    if ser.worker_requests.is_empty() {
        return mean(w_lat.iter().map(|p| p.1));
    }
    let (num, den) = w_lat.iter().fold((0.0, 0.0), |(n, d), p| {
        let w = value_at(&ser.worker_requests, p.0).unwrap_or(0.0);
        (n + w * p.1, d + w)
    });
    if den > 0.0 {
        Some(num / den)
    } else {
        mean(w_lat.iter().map(|p| p.1))
    }
}

fn service_row(
    s: &StepMeta,
    name: &str,
    ser: &ServiceSeries,
    samples: u64,
    settle_window_ms: i64,
) -> ServiceRow {
    let (start, end) = (s.start_ms, s.end_ms);
    let fig = scaling::figures(&ser.replicas, start, end, settle_window_ms);
    let ready = scaling::figures(&ser.replicas_ready, start, end, settle_window_ms);
    let cpu = window(&ser.cpu, |a| a.ts_ms, start, end);
    let mem = window(&ser.memory, |a| a.ts_ms, start, end);
    let last = end.saturating_sub(1);
    let request = value_at(&ser.cpu_request, last).filter(|r| *r > 0.0);
    let limit = value_at(&ser.cpu_limit, last);
    let target = value_at(&ser.hpa_target, last);
    let utilization = cpu_utilizations(ser, cpu);
    let cpu_utilization_avg = mean(utilization.iter().copied());
    let w_req = window(&ser.worker_requests, |p| p.0, start, end);
    // The literal below only names the figures; each is computed above or in one line.
    ServiceRow {
        mesh: s.mesh.clone(),
        repetition: s.repetition,
        step: s.index,
        step_name: s.name.clone(),
        service: name.to_owned(),
        samples,
        replicas_avg: fig.map(|f| f.avg),
        replicas_min: fig.map(|f| f.min),
        replicas_max: fig.map(|f| f.max),
        replicas_final: fig.map(|f| f.last),
        replicas_ready_avg: ready.map(|f| f.avg),
        replicas_desired_max: desired_max(ser, start, end),
        replicas_pending_max: max(window(&ser.replicas_pending, |p| p.0, start, end)
            .iter()
            .map(|p| p.1)
            .chain(value_at(&ser.replicas_pending, start))),
        cpu_cores_avg: mean(cpu.iter().map(|a| a.sum)),
        cpu_cores_max: max(cpu.iter().map(|a| a.sum)),
        cpu_request_cores: request,
        cpu_limit_cores: limit,
        cpu_utilization_avg,
        cpu_utilization_max: max(utilization.iter().copied()),
        hpa_target_utilization: target,
        cpu_utilization_vs_target: cpu_utilization_avg
            .zip(target.filter(|t| *t > 0.0))
            .map(|(u, t)| u / t),
        memory_bytes_avg: mean(mem.iter().map(|a| a.sum / f64::from(a.pods))),
        memory_bytes_max: max(mem.iter().map(|a| a.max)),
        memory_bytes_total_max: max(mem.iter().map(|a| a.sum)),
        worker_requests_per_s: mean(w_req.iter().map(|p| p.1)),
        worker_errors_per_s: mean(
            window(&ser.worker_errors, |p| p.0, start, end)
                .iter()
                .map(|p| p.1),
        ),
        worker_latency_mean_ms: worker_latency_mean_ms(ser, start, end),
        worker_latency_p99_ms_max: max(window(&ser.worker_latency_p99, |p| p.0, start, end)
            .iter()
            .map(|p| p.1)),
        scale_up_reaction_s: fig.and_then(|f| f.scale_up_reaction_s),
        settle_time_s: fig.and_then(|f| f.settle_time_s),
        overshoot_replicas: fig.map(|f| f.overshoot),
        scale_events: fig.map(|f| f.scale_events),
        direction_changes: fig.map(|f| f.direction_changes),
        replica_seconds: fig.map(|f| f.replica_seconds),
        predicted_replicas: None,
        predicted_replicas_low: None,
        predicted_replicas_high: None,
        predicted_replicas_pending: None,
        predicted_cpu_utilization: None,
        predicted_cpu_utilization_error: None,
    }
}

/// Step figures summarised over repetitions.
pub const STEP_FIGURES: &[&str] = &[
    "throughput_rps",
    "sent_rate_rps",
    "successes_incl_late_rps",
    "error_ratio",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p99_ms",
];

/// Service figures summarised over repetitions.
pub const SERVICE_FIGURES: &[&str] = &[
    "replicas_avg",
    "replicas_max",
    "cpu_cores_avg",
    "cpu_utilization_avg",
    "scale_up_reaction_s",
    "settle_time_s",
    "overshoot_replicas",
    "direction_changes",
    "replica_seconds",
];

/// A step figure by its column name.
pub fn step_figure(r: &StepRow, name: &str) -> Option<f64> {
    match name {
        "throughput_rps" => r.throughput_rps,
        "sent_rate_rps" => r.sent_rate_rps,
        "successes_incl_late_rps" => r.successes_incl_late_rps,
        "error_ratio" => r.error_ratio,
        "latency_mean_ms" => r.latency_mean_ms,
        "latency_p50_ms" => r.latency_p50_ms,
        "latency_p99_ms" => r.latency_p99_ms,
        _ => None,
    }
}

/// A service figure by its column name.
pub fn service_figure(r: &ServiceRow, name: &str) -> Option<f64> {
    match name {
        "replicas_avg" => r.replicas_avg,
        "replicas_max" => r.replicas_max,
        "cpu_cores_avg" => r.cpu_cores_avg,
        "cpu_utilization_avg" => r.cpu_utilization_avg,
        "scale_up_reaction_s" => r.scale_up_reaction_s,
        "settle_time_s" => r.settle_time_s,
        "overshoot_replicas" => r.overshoot_replicas,
        "direction_changes" => r.direction_changes.map(f64::from),
        "replica_seconds" => r.replica_seconds,
        _ => None,
    }
}

/// Mean and 95 % CI over repetitions of every figure, per (mesh, step[, service]).
pub fn repetition_rows(steps: &[StepRow], services: &[ServiceRow]) -> Vec<RepetitionRow> {
    let mut out = Vec::new();
    let mut by_step: BTreeMap<(&str, u32), (&str, Vec<&StepRow>)> = BTreeMap::new();
    for r in steps.iter().filter(|r| !r.warmup) {
        by_step
            .entry((&r.mesh, r.step))
            .or_insert_with(|| (&r.step_name, Vec::new()))
            .1
            .push(r);
    }
    for ((mesh, step), (name, rows)) in &by_step {
        for fig in STEP_FIGURES {
            let v: Vec<f64> = rows.iter().filter_map(|r| step_figure(r, fig)).collect();
            if let Some(e) = stats::estimate(&v) {
                out.push(rep_row(mesh, *step, name, None, fig, e));
            }
        }
    }
    let warm: BTreeSet<(&str, u32)> = steps
        .iter()
        .filter(|r| r.warmup)
        .map(|r| (r.mesh.as_str(), r.step))
        .collect();
    let mut by_service: BTreeMap<(&str, u32, &str), (&str, Vec<&ServiceRow>)> = BTreeMap::new();
    for r in services
        .iter()
        .filter(|r| !warm.contains(&(r.mesh.as_str(), r.step)))
    {
        by_service
            .entry((&r.mesh, r.step, &r.service))
            .or_insert_with(|| (&r.step_name, Vec::new()))
            .1
            .push(r);
    }
    for ((mesh, step, service), (name, rows)) in &by_service {
        for fig in SERVICE_FIGURES {
            let v: Vec<f64> = rows.iter().filter_map(|r| service_figure(r, fig)).collect();
            if let Some(e) = stats::estimate(&v) {
                out.push(rep_row(mesh, *step, name, Some(service), fig, e));
            }
        }
    }
    out
}

fn rep_row(
    mesh: &str,
    step: u32,
    name: &str,
    service: Option<&str>,
    figure: &str,
    e: stats::Estimate,
) -> RepetitionRow {
    RepetitionRow {
        mesh: mesh.to_owned(),
        step,
        step_name: name.to_owned(),
        service: service.map(str::to_owned),
        figure: figure.to_owned(),
        n: e.n,
        mean: e.mean,
        std: e.std,
        ci95_low: e.ci95_low,
        ci95_high: e.ci95_high,
    }
}

/// Formats a UTC instant for file names: `20240131T120000Z`.
pub fn compact_timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}
