//! Load results: a versioned serde type with per-stage and per-second counts and HDR
//! latency histograms, and an exact merge of the results of several instances.
//!
//! Conventions, fixed for [`RESULT_VERSION`] 1:
//! - Latency and lateness are in **microseconds**, recorded in HDR histograms with 3
//!   significant digits and a lowest value of 1 µs (a 0 µs value is recorded as 1 µs).
//! - Histograms are serialised as [`EncodedHistogram`]: the HdrHistogram "V2 compressed"
//!   encoding (deflate) in standard base64, the format of HdrHistogram interval logs,
//!   readable by the Java, Go, Python and Rust implementations.
//! - Timestamps are UTC unix milliseconds.
//! - A request's outcome and latency belong to the stage and second in which it was
//!   *planned* (open loop) or *sent* (closed loop), whenever it completes; its `sent` and
//!   `late` counts belong to the second in which it actually left, so a stalled sender
//!   shows as a gap and then a burst. Per stage,
//!   `sent = completed + timeouts + connectionErrors + otherErrors` once the run has
//!   drained (requests aborted by a stop excepted); per second only when every request
//!   left in the second it was planned in.
//! - Open-loop latency is measured from the planned send time (coordinated-omission
//!   free); closed-loop latency from the actual send time.
//!
//! This module compiles without the `runner` feature.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

use crate::load_plan::{LoadPlan, ModelKind};

/// Version of the [`LoadResult`] format written by this crate.
pub const RESULT_VERSION: u32 = 1;

/// Significant digits of every histogram.
pub const HISTOGRAM_SIGFIG: u8 = 3;

/// Longest base64 histogram text accepted when decoding (guards against hostile input).
pub const MAX_ENCODED_HISTOGRAM_LEN: usize = 4 << 20;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// An [`EncodedHistogram`] could not be decoded.
    #[error("cannot decode histogram: {0}")]
    Decode(String),
    /// Histograms could not be combined.
    #[error("cannot add histograms: {0}")]
    Add(String),
    /// Results could not be merged; the message names the mismatch.
    #[error("cannot merge results: {0}")]
    Merge(String),
    /// The text is not a load result of a supported version.
    #[error("cannot read load result: {0}")]
    Parse(String),
}

/// Result alias of this module.
pub type Result<T, E = ResultError> = std::result::Result<T, E>;

/// A new, empty histogram with the conventions of this module (µs, 3 digits, auto-resize).
pub fn new_histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 2, HISTOGRAM_SIGFIG)
        .expect("constant histogram bounds are valid");
    h.auto(true);
    h
}

/// An HDR histogram in portable text form (V2 deflate, base64). See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EncodedHistogram(pub String);

impl Default for EncodedHistogram {
    fn default() -> Self {
        Self::encode(&new_histogram())
    }
}

impl EncodedHistogram {
    /// Encodes a histogram.
    pub fn encode(h: &Histogram<u64>) -> Self {
        let mut buf = Vec::new();
        // Serialising into a Vec cannot fail for a valid histogram; an empty text (which
        // decodes as an empty histogram) is the safe fallback if it ever did.
        if V2DeflateSerializer::new().serialize(h, &mut buf).is_err() {
            return Self(String::new());
        }
        Self(base64::engine::general_purpose::STANDARD.encode(buf))
    }

    /// Decodes into a histogram that grows as values are added (for merging).
    pub fn decode(&self) -> Result<Histogram<u64>> {
        if self.0.is_empty() {
            return Ok(new_histogram());
        }
        if self.0.len() > MAX_ENCODED_HISTOGRAM_LEN {
            return Err(ResultError::Decode(format!(
                "{} characters; at most {MAX_ENCODED_HISTOGRAM_LEN} are accepted",
                self.0.len()
            )));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.0.trim())
            .map_err(|e| ResultError::Decode(format!("not base64: {e}")))?;
        let mut h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| ResultError::Decode(format!("not an HDR V2 histogram: {e:?}")))?;
        h.auto(true);
        Ok(h)
    }

    /// Number of values recorded (decodes).
    pub fn count(&self) -> Result<u64> {
        Ok(self.decode()?.len())
    }

    /// Percentile summary (decodes).
    pub fn summary(&self) -> Result<LatencySummary> {
        Ok(LatencySummary::of(&self.decode()?))
    }
}

/// Adds `b` into `a` (both encoded); exact.
fn add_encoded(a: &EncodedHistogram, b: &EncodedHistogram) -> Result<EncodedHistogram> {
    let mut h = a.decode()?;
    h.add(b.decode()?)
        .map_err(|e| ResultError::Add(format!("{e:?}")))?;
    Ok(EncodedHistogram::encode(&h))
}

/// Percentiles of a latency histogram, in microseconds. All zero when `count` is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencySummary {
    /// Number of values.
    pub count: u64,
    /// Smallest value.
    pub min_us: u64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest value (highest equivalent value of its HDR bucket).
    pub max_us: u64,
}

impl LatencySummary {
    /// Summarises a histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p95_us: h.value_at_quantile(0.95),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Request counts of a stage or a second. Every field adds up exactly under merge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Requests the plan demanded of this instance (open loop: planned send times that fell
    /// due before the stage ended or the run stopped; closed loop: equal to `sent`).
    pub planned: u64,
    /// Requests actually sent.
    pub sent: u64,
    /// Requests that got a complete response (any status) within the timeout.
    pub completed: u64,
    /// Successes: a 2xx response within the timeout.
    pub ok: u64,
    /// Responses with status 100–199.
    pub status_1xx: u64,
    /// Responses with status 200–299.
    pub status_2xx: u64,
    /// Responses with status 300–399.
    pub status_3xx: u64,
    /// Responses with status 400–499.
    pub status_4xx: u64,
    /// Responses with status 500–599.
    pub status_5xx: u64,
    /// Requests without a complete response within the timeout.
    pub timeouts: u64,
    /// Requests that failed to connect or lost the connection.
    pub connection_errors: u64,
    /// Requests that failed otherwise (e.g. an invalid response).
    pub other_errors: u64,
    /// Open loop: requests that left more than the pacing's own tolerance (250 µs
    /// precise, 2.5 ms coarse) after their planned time: every in-flight slot was busy, or
    /// the sender stalled. Every request's lateness is in [`StageResult::lateness`].
    pub late: u64,
    /// Open loop: planned requests never sent because they were later than
    /// `model.maxLateness`.
    pub dropped: u64,
}

impl Counts {
    /// Adds every field of `o`; a sum past `u64::MAX` stays at the maximum (use
    /// [`Counts::try_add`] for counts from outside).
    pub fn add(&mut self, o: &Counts) {
        let mut sum = *self;
        for (a, b) in sum.fields_mut().into_iter().zip(o.fields()) {
            *a = a.saturating_add(b);
        }
        *self = sum;
    }

    /// Adds every field of `o`, failing without a change when a sum overflows: counts in a
    /// result POSTed over the network are not trusted.
    pub fn try_add(&mut self, o: &Counts) -> Result<()> {
        let mut sum = *self;
        for (a, b) in sum.fields_mut().into_iter().zip(o.fields()) {
            *a = a.checked_add(b).ok_or_else(|| {
                ResultError::Merge("a count overflows when results are added".into())
            })?;
        }
        *self = sum;
        Ok(())
    }

    fn fields(&self) -> [u64; 14] {
        [
            self.planned,
            self.sent,
            self.completed,
            self.ok,
            self.status_1xx,
            self.status_2xx,
            self.status_3xx,
            self.status_4xx,
            self.status_5xx,
            self.timeouts,
            self.connection_errors,
            self.other_errors,
            self.late,
            self.dropped,
        ]
    }

    fn fields_mut(&mut self) -> [&mut u64; 14] {
        [
            &mut self.planned,
            &mut self.sent,
            &mut self.completed,
            &mut self.ok,
            &mut self.status_1xx,
            &mut self.status_2xx,
            &mut self.status_3xx,
            &mut self.status_4xx,
            &mut self.status_5xx,
            &mut self.timeouts,
            &mut self.connection_errors,
            &mut self.other_errors,
            &mut self.late,
            &mut self.dropped,
        ]
    }

    /// Requests that failed: sent but not ok (non-2xx, timeouts, errors), plus dropped.
    pub fn failed(&self) -> u64 {
        self.sent
            .saturating_sub(self.ok)
            .saturating_add(self.dropped)
    }

    /// Sent requests still without an outcome (in flight when the run stopped).
    pub fn unfinished(&self) -> u64 {
        self.sent.saturating_sub(
            self.completed + self.timeouts + self.connection_errors + self.other_errors,
        )
    }
}

/// One second of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecondBucket {
    /// Offset of this second from the start of the stage (0-based).
    pub second: u32,
    /// Wall-clock start of this second (UTC unix ms); after a merge, the earliest instance's.
    pub start_unix_ms: u64,
    /// Counts of the requests planned (open) or sent (closed) in this second, except
    /// `sent` and `late`: the requests that actually left in it.
    pub counts: Counts,
    /// Latency of successes (µs).
    pub latency_ok: EncodedHistogram,
    /// Latency of failures that got a response or timed out (µs).
    pub latency_failed: EncodedHistogram,
    /// Percentiles of `latency_ok`, for readers that do not decode histograms.
    pub ok_summary: LatencySummary,
}

/// Derived figures of a stage, recomputed from counts and histograms after every merge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageSummary {
    /// Seconds the stage ran (its planned duration, or less when the run was stopped).
    pub elapsed_s: f64,
    /// Target rate over all instances of the plan (open loop).
    pub target_rate: Option<f64>,
    /// Planned requests per second of the instances merged here.
    pub planned_rate: f64,
    /// Sent requests per second, over the time they took to leave: from the stage's start
    /// until its last send, at least the stage's length (a sender that fell behind shows
    /// a lower rate, not the planned one).
    pub sent_rate: f64,
    /// Completed requests (any status) per second.
    pub completed_rate: f64,
    /// Successes per second of the stage.
    pub ok_rate: f64,
    /// Successes per second of the time they took to arrive: from the stage's start
    /// until its last success (at least the stage's length). Vegeta's "throughput":
    /// unlike `ok_rate` it does not credit an overloaded stage with the backlog that
    /// was answered after the stage ended.
    #[serde(default)]
    pub throughput: f64,
    /// Successes / (sent + dropped); 0 when nothing was due.
    pub success_ratio: f64,
    /// Late / sent.
    pub late_ratio: f64,
    /// Latency of successes (from the planned time: what a user waiting saw).
    pub latency: LatencySummary,
    /// Response time of successes (from the actual send: what the target took).
    #[serde(default)]
    pub response_time: LatencySummary,
    /// Latency of failures with a response or a timeout.
    pub failed_latency: LatencySummary,
    /// How late requests left (every open-loop request, from 0).
    pub lateness: LatencySummary,
    /// Actual send time minus planned time of every sent request (timer and scheduling
    /// jitter of the loadgen itself).
    pub send_delay: LatencySummary,
}

/// The result of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageResult {
    /// Position in the run (the warm-up, when present, is 0).
    pub index: u32,
    /// Stage name.
    pub name: String,
    /// Whether this stage is the warm-up (measured, but not part of the results proper).
    pub warm_up: bool,
    /// Target rate over all instances (open loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_rate: Option<f64>,
    /// Users over all instances (closed loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u32>,
    /// Planned stage length in milliseconds.
    pub planned_duration_ms: u64,
    /// Wall-clock start (UTC unix ms); after a merge, the earliest.
    pub started_unix_ms: u64,
    /// Wall-clock end of the schedule (not of draining); after a merge, the latest.
    pub ended_unix_ms: u64,
    /// The stage was cut short (the run was stopped during it) or never started.
    pub partial: bool,
    /// Totals of the stage.
    pub counts: Counts,
    /// Latency of successes (µs).
    pub latency_ok: EncodedHistogram,
    /// Latency of failures with a response or a timeout (µs).
    pub latency_failed: EncodedHistogram,
    /// Lateness of every open-loop request, from 0: µs between its planned time and when
    /// it left, whether it waited for a free slot or the sender was slow (below 1 µs
    /// recorded as 1). `counts.late` counts those later than the runner's tolerance.
    pub lateness: EncodedHistogram,
    /// Send delay of every sent open-loop request (µs between planned and actual send).
    pub send_delay: EncodedHistogram,
    /// Response time of successes (µs from when each actually left): the target's part of
    /// `latency_ok`, without the wait before sending. Empty in results of older versions.
    #[serde(default)]
    pub response_time_ok: EncodedHistogram,
    /// Wall-clock time (UTC unix ms) the stage's last success arrived, which may be
    /// after [`StageResult::ended_unix_ms`] when requests were still queued; after a
    /// merge, the latest. Absent when nothing succeeded (or in results of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ok_unix_ms: Option<u64>,
    /// Wall-clock time (UTC unix ms) the stage's last request left; after a merge, the
    /// latest. Sends that slip past the stage's end lower its sent rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sent_unix_ms: Option<u64>,
    /// Per second of the stage, in order of `second`.
    pub seconds: Vec<SecondBucket>,
    /// Derived figures.
    pub summary: StageSummary,
}

impl StageResult {
    /// Decoded latency histogram of successes (µs).
    pub fn latency_histogram(&self) -> Result<Histogram<u64>> {
        self.latency_ok.decode()
    }

    /// Decoded latency histogram of failures (µs).
    pub fn failed_latency_histogram(&self) -> Result<Histogram<u64>> {
        self.latency_failed.decode()
    }

    /// Latency of successes at quantile `q` in `[0, 1]`, in µs (0 when empty).
    pub fn latency_quantile_us(&self, q: f64) -> Result<u64> {
        let h = self.latency_histogram()?;
        Ok(if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q.clamp(0.0, 1.0))
        })
    }

    /// Served throughput (vegeta's definition): successes per second from the stage's
    /// start until its last success, over at least `elapsed_s`; 0 without time.
    pub fn served_throughput(&self, elapsed_s: f64) -> f64 {
        let span_s = self
            .last_ok_unix_ms
            .map(|t| t.saturating_sub(self.started_unix_ms) as f64 / 1000.0)
            .unwrap_or(0.0)
            .max(elapsed_s);
        if span_s > 0.0 {
            self.counts.ok as f64 / span_s
        } else {
            0.0
        }
    }

    /// Sent requests per second from the stage's start until its last send, over at
    /// least `elapsed_s`; 0 without time.
    pub fn sent_rate(&self, elapsed_s: f64) -> f64 {
        let span_s = self
            .last_sent_unix_ms
            .map(|t| t.saturating_sub(self.started_unix_ms) as f64 / 1000.0)
            .unwrap_or(0.0)
            .max(elapsed_s);
        if span_s > 0.0 {
            self.counts.sent as f64 / span_s
        } else {
            0.0
        }
    }

    /// Recomputes [`StageResult::summary`] from counts and histograms.
    pub fn recompute_summary(&mut self) -> Result<()> {
        let elapsed_s = (self.ended_unix_ms.saturating_sub(self.started_unix_ms) as f64 / 1000.0)
            .max(if self.partial {
                0.0
            } else {
                self.planned_duration_ms as f64 / 1000.0
            });
        let per_s = |n: u64| {
            if elapsed_s > 0.0 {
                n as f64 / elapsed_s
            } else {
                0.0
            }
        };
        let c = &self.counts;
        let due = c.sent.saturating_add(c.dropped);
        self.summary = StageSummary {
            elapsed_s,
            target_rate: self.target_rate,
            planned_rate: per_s(c.planned),
            sent_rate: self.sent_rate(elapsed_s),
            completed_rate: per_s(c.completed),
            ok_rate: per_s(c.ok),
            throughput: self.served_throughput(elapsed_s),
            success_ratio: if due > 0 {
                c.ok as f64 / due as f64
            } else {
                0.0
            },
            late_ratio: if c.sent > 0 {
                c.late as f64 / c.sent as f64
            } else {
                0.0
            },
            latency: self.latency_ok.summary()?,
            response_time: self.response_time_ok.summary()?,
            failed_latency: self.latency_failed.summary()?,
            lateness: self.lateness.summary()?,
            send_delay: self.send_delay.summary()?,
        };
        for s in &mut self.seconds {
            s.ok_summary = s.latency_ok.summary()?;
        }
        Ok(())
    }
}

/// One loadgen process that contributed to a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    /// Instance index.
    pub index: u32,
    /// Number of instances in the run.
    pub count: u32,
    /// Host name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Wall-clock start of the first stage (UTC unix ms).
    pub started_unix_ms: u64,
    /// Wall-clock end of the run, draining included (UTC unix ms).
    pub finished_unix_ms: u64,
    /// This instance was stopped early.
    pub partial: bool,
    /// CPU time (user + system) the loadgen process used during the run, in ms, when
    /// measured; lets a reader spot a saturated load generator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_ms: Option<f64>,
}

/// The result of a load run (one instance, or several merged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadResult {
    /// Format version; [`RESULT_VERSION`] for results written by this crate.
    pub version: u32,
    /// The plan that was run (of the first instance, after a merge).
    pub plan: LoadPlan,
    /// Open or closed loop.
    pub model: ModelKind,
    /// Contributing instances, ordered by index.
    pub instances: Vec<InstanceReport>,
    /// Earliest start (UTC unix ms).
    pub started_unix_ms: u64,
    /// Latest end, draining included (UTC unix ms).
    pub finished_unix_ms: u64,
    /// The run was stopped before the plan ended (SIGINT/SIGTERM, cancellation) in at
    /// least one instance; what was measured until then is included.
    pub partial: bool,
    /// One entry per resolved stage of the plan, warm-up first when present.
    pub stages: Vec<StageResult>,
    /// Notes about the run (e.g. a preflight that answered non-2xx, an overloaded loadgen).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl LoadResult {
    /// Parses a JSON result, rejecting unknown versions.
    pub fn from_json(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_str(text)
            .map_err(|e| ResultError::Parse(format!("no version field: {e}")))?;
        if v.version != RESULT_VERSION {
            return Err(ResultError::Parse(format!(
                "version {} is not supported; expected {RESULT_VERSION}",
                v.version
            )));
        }
        serde_json::from_str(text).map_err(|e| ResultError::Parse(e.to_string()))
    }

    /// Stages that are not warm-up.
    pub fn measured_stages(&self) -> impl Iterator<Item = &StageResult> {
        self.stages.iter().filter(|s| !s.warm_up)
    }

    /// Totals over the measured (non warm-up) stages.
    pub fn total_counts(&self) -> Counts {
        let mut c = Counts::default();
        for s in self.measured_stages() {
            c.add(&s.counts);
        }
        c
    }

    /// Merged latency histogram of successes over the measured stages (µs).
    pub fn latency_histogram(&self) -> Result<Histogram<u64>> {
        let mut h = new_histogram();
        for s in self.measured_stages() {
            h.add(s.latency_histogram()?)
                .map_err(|e| ResultError::Add(format!("{e:?}")))?;
        }
        Ok(h)
    }

    /// Merges the results of the instances of one distributed run into one result, exactly:
    /// counts are summed and histograms added, stage by stage and second by second
    /// (seconds are aligned by their offset in the stage). Stages must match in index,
    /// name and warm-up flag; an instance index may appear only once when the run has more
    /// than one instance. Summaries are recomputed.
    pub fn merge(results: &[LoadResult]) -> Result<LoadResult> {
        let first = results
            .first()
            .ok_or_else(|| ResultError::Merge("no results to merge".to_owned()))?;
        let mut seen = BTreeSet::new();
        for (i, r) in results.iter().enumerate() {
            if r.version != RESULT_VERSION {
                return Err(ResultError::Merge(format!(
                    "result {i} has version {}; expected {RESULT_VERSION}",
                    r.version
                )));
            }
            if r.model != first.model {
                return Err(ResultError::Merge(format!(
                    "result {i} is {:?} loop but result 0 is {:?} loop",
                    r.model, first.model
                )));
            }
            if r.stages.len() != first.stages.len() {
                return Err(ResultError::Merge(format!(
                    "result {i} has {} stages but result 0 has {}",
                    r.stages.len(),
                    first.stages.len()
                )));
            }
            for (a, b) in first.stages.iter().zip(&r.stages) {
                if (a.index, &a.name, a.warm_up) != (b.index, &b.name, b.warm_up) {
                    return Err(ResultError::Merge(format!(
                        "result {i} stage {} ({:?}) does not match result 0 stage {} ({:?})",
                        b.index, b.name, a.index, a.name
                    )));
                }
            }
            for inst in &r.instances {
                if inst.count > 1 && !seen.insert((inst.index, inst.count)) {
                    return Err(ResultError::Merge(format!(
                        "instance {} of {} appears twice; each instance may be merged once",
                        inst.index, inst.count
                    )));
                }
            }
        }
        let mut out = first.clone();
        for r in &results[1..] {
            out.started_unix_ms = out.started_unix_ms.min(r.started_unix_ms);
            out.finished_unix_ms = out.finished_unix_ms.max(r.finished_unix_ms);
            out.partial |= r.partial;
            out.instances.extend(r.instances.iter().cloned());
            for w in &r.warnings {
                if !out.warnings.contains(w) {
                    out.warnings.push(w.clone());
                }
            }
            for (a, b) in out.stages.iter_mut().zip(&r.stages) {
                merge_stage(a, b)?;
            }
        }
        out.instances.sort_by_key(|i| i.index);
        for s in &mut out.stages {
            s.recompute_summary()?;
        }
        Ok(out)
    }
}

fn merge_stage(a: &mut StageResult, b: &StageResult) -> Result<()> {
    a.started_unix_ms = a.started_unix_ms.min(b.started_unix_ms);
    a.ended_unix_ms = a.ended_unix_ms.max(b.ended_unix_ms);
    a.last_ok_unix_ms = a.last_ok_unix_ms.max(b.last_ok_unix_ms);
    a.last_sent_unix_ms = a.last_sent_unix_ms.max(b.last_sent_unix_ms);
    a.partial |= b.partial;
    a.counts.try_add(&b.counts)?;
    a.latency_ok = add_encoded(&a.latency_ok, &b.latency_ok)?;
    a.latency_failed = add_encoded(&a.latency_failed, &b.latency_failed)?;
    a.lateness = add_encoded(&a.lateness, &b.lateness)?;
    a.send_delay = add_encoded(&a.send_delay, &b.send_delay)?;
    a.response_time_ok = add_encoded(&a.response_time_ok, &b.response_time_ok)?;
    let mut by_second: BTreeMap<u32, SecondBucket> =
        a.seconds.drain(..).map(|s| (s.second, s)).collect();
    for s in &b.seconds {
        match by_second.get_mut(&s.second) {
            Some(t) => {
                t.start_unix_ms = t.start_unix_ms.min(s.start_unix_ms);
                t.counts.try_add(&s.counts)?;
                t.latency_ok = add_encoded(&t.latency_ok, &s.latency_ok)?;
                t.latency_failed = add_encoded(&t.latency_failed, &s.latency_failed)?;
            }
            None => {
                by_second.insert(s.second, s.clone());
            }
        }
    }
    a.seconds = by_second.into_values().collect();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_plan::{LoadModel, Stage};
    use std::time::Duration;

    fn stage_with(values: &[u64], second_start: u64) -> StageResult {
        let mut h = new_histogram();
        for v in values {
            h.record(*v).unwrap();
        }
        let enc = EncodedHistogram::encode(&h);
        let counts = Counts {
            planned: values.len() as u64,
            sent: values.len() as u64,
            completed: values.len() as u64,
            ok: values.len() as u64,
            status_2xx: values.len() as u64,
            ..Counts::default()
        };
        StageResult {
            index: 0,
            name: "s".into(),
            warm_up: false,
            target_rate: Some(10.0),
            users: None,
            planned_duration_ms: 1000,
            started_unix_ms: second_start,
            ended_unix_ms: second_start + 1000,
            partial: false,
            counts,
            latency_ok: enc.clone(),
            latency_failed: EncodedHistogram::default(),
            lateness: EncodedHistogram::default(),
            send_delay: EncodedHistogram::default(),
            response_time_ok: EncodedHistogram::default(),
            last_ok_unix_ms: None,
            last_sent_unix_ms: None,
            seconds: vec![SecondBucket {
                second: 0,
                start_unix_ms: second_start,
                counts,
                latency_ok: enc,
                latency_failed: EncodedHistogram::default(),
                ok_summary: LatencySummary::default(),
            }],
            summary: StageSummary::default(),
        }
    }

    #[test]
    fn throughput_spans_until_the_last_success() {
        // 10 successes sent in a 1 s stage; the backlog's last answer came 4 s later.
        let mut s = stage_with(&[1000; 10], 1_000_000);
        s.last_ok_unix_ms = Some(1_005_000);
        s.recompute_summary().unwrap();
        assert_eq!(s.summary.ok_rate, 10.0);
        assert_eq!(s.summary.throughput, 2.0);
        // Answers within the stage: throughput is the success rate.
        s.last_ok_unix_ms = Some(1_000_900);
        s.recompute_summary().unwrap();
        assert_eq!(s.summary.throughput, 10.0);
        // Merging keeps the latest last success.
        let mut other = stage_with(&[1000; 10], 1_000_000);
        other.last_ok_unix_ms = Some(1_003_000);
        merge_stage(&mut s, &other).unwrap();
        assert_eq!(s.last_ok_unix_ms, Some(1_003_000));
    }

    #[test]
    fn sent_rate_spans_until_the_last_send() {
        // 10 requests of a 1 s stage; a sender that fell behind sent the last at 2.5 s.
        let mut s = stage_with(&[1000; 10], 1_000_000);
        s.last_sent_unix_ms = Some(1_002_500);
        s.recompute_summary().unwrap();
        assert_eq!(s.summary.sent_rate, 4.0);
        // On time: the planned rate.
        s.last_sent_unix_ms = Some(1_000_900);
        s.recompute_summary().unwrap();
        assert_eq!(s.summary.sent_rate, 10.0);
        let mut other = stage_with(&[1000; 10], 1_000_000);
        other.last_sent_unix_ms = Some(1_001_000);
        merge_stage(&mut s, &other).unwrap();
        assert_eq!(s.last_sent_unix_ms, Some(1_001_000));
    }

    fn result(index: u32, values: &[u64]) -> LoadResult {
        let plan = LoadPlan::single_stage(
            "http://127.0.0.1:1",
            LoadModel::Open {
                max_in_flight: 10,
                max_lateness: None,
            },
            Stage {
                name: None,
                duration: Duration::from_secs(1),
                rate: Some(10.0),
                users: None,
            },
        );
        LoadResult {
            version: RESULT_VERSION,
            plan,
            model: ModelKind::Open,
            instances: vec![InstanceReport {
                index,
                count: 2,
                hostname: None,
                started_unix_ms: 1000 + u64::from(index),
                finished_unix_ms: 2000,
                partial: false,
                cpu_time_ms: None,
            }],
            started_unix_ms: 1000 + u64::from(index),
            finished_unix_ms: 2000,
            partial: index == 1,
            stages: vec![stage_with(values, 1000 + u64::from(index))],
            warnings: vec![],
        }
    }

    #[test]
    fn histogram_round_trips() {
        let mut h = new_histogram();
        for v in [1u64, 5, 1000, 123_456, 10_000_000] {
            h.record(v).unwrap();
        }
        let enc = EncodedHistogram::encode(&h);
        let back = enc.decode().unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), h.max());
        assert_eq!(EncodedHistogram::default().count().unwrap(), 0);
        assert!(EncodedHistogram("###".into()).decode().is_err());
        assert!(EncodedHistogram("AAAA".into()).decode().is_err());
    }

    #[test]
    fn merge_is_exact() {
        let a = result(0, &[100, 200, 300]);
        let b = result(1, &[400, 500]);
        let m = LoadResult::merge(&[a, b]).unwrap();
        let s = &m.stages[0];
        assert_eq!(s.counts.sent, 5);
        assert_eq!(s.latency_histogram().unwrap().len(), 5);
        assert_eq!(s.seconds.len(), 1);
        assert_eq!(s.seconds[0].counts.ok, 5);
        assert_eq!(s.seconds[0].start_unix_ms, 1000);
        assert_eq!(s.summary.latency.count, 5);
        assert!(m.partial);
        assert_eq!(m.instances.len(), 2);
        assert_eq!(m.started_unix_ms, 1000);
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(LoadResult::from_json(&text).unwrap(), m);
    }

    #[test]
    fn merge_rejects_mismatch_and_duplicates() {
        let a = result(0, &[1]);
        let mut b = result(1, &[2]);
        b.stages[0].name = "other".into();
        let err = LoadResult::merge(&[a.clone(), b]).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        let err = LoadResult::merge(&[a.clone(), a]).unwrap_err().to_string();
        assert!(err.contains("appears twice"), "{err}");
        assert!(LoadResult::merge(&[]).is_err());
    }

    #[test]
    fn rejects_unknown_version() {
        let mut r = result(0, &[1]);
        r.version = 99;
        let err = LoadResult::from_json(&serde_json::to_string(&r).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("version 99"), "{err}");
    }
}
