//! Records request outcomes into per-stage and per-second counts and histograms.
//!
//! One mutex guards everything: a record is a few counter increments and two histogram
//! records, far cheaper than the HTTP request it describes. Per-second histograms of
//! seconds that can no longer change much are sealed (encoded) so a long run does not
//! hold thousands of live histograms; a late record into a sealed second decodes it again,
//! so sealing never loses data.

use std::sync::Mutex;
use std::sync::mpsc::Sender;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::result::{Counts, EncodedHistogram, LatencySummary, SecondBucket, new_histogram};

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response with this status within the timeout.
    Status(u16),
    /// No complete response within the timeout.
    Timeout,
    /// Connecting failed or the connection broke.
    Connection,
    /// Any other failure.
    Other,
    /// The run stopped while the request was in flight.
    Aborted,
}

impl Outcome {
    /// Short label for request records and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Status(s) if (200..300).contains(s) => "ok",
            Outcome::Status(_) => "status",
            Outcome::Timeout => "timeout",
            Outcome::Connection => "connection",
            Outcome::Other => "other",
            Outcome::Aborted => "aborted",
        }
    }
}

/// One request, as written to the request log (JSON lines).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// Stage index.
    pub stage: u32,
    /// Second of the stage.
    pub second: u32,
    /// Planned (open loop) or actual (closed loop) send time, µs after the run's start.
    pub planned_us: u64,
    /// How late the slot took it, µs (open loop; 0 when on time).
    pub late_us: u64,
    /// Latency from the planned time (open) or send time (closed), µs; absent when dropped
    /// or aborted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// HTTP status, when a response arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `ok`, `status`, `timeout`, `connection`, `other`, `aborted` or `dropped`.
    pub outcome: &'static str,
}

enum Slot {
    Empty,
    Live(Box<Histogram<u64>>),
    Sealed(EncodedHistogram),
}

impl Slot {
    fn record(&mut self, v: u64) {
        let h = match std::mem::replace(self, Slot::Empty) {
            Slot::Empty => Box::new(new_histogram()),
            Slot::Live(h) => h,
            Slot::Sealed(e) => Box::new(e.decode().unwrap_or_else(|_| new_histogram())),
        };
        let mut h = h;
        record(&mut h, v);
        *self = Slot::Live(h);
    }

    fn seal(&mut self) {
        if let Slot::Live(h) = self {
            *self = Slot::Sealed(EncodedHistogram::encode(h));
        }
    }

    fn encoded(&self) -> EncodedHistogram {
        match self {
            Slot::Empty => EncodedHistogram::default(),
            Slot::Live(h) => EncodedHistogram::encode(h),
            Slot::Sealed(e) => e.clone(),
        }
    }

    fn summary(&self) -> LatencySummary {
        match self {
            Slot::Empty => LatencySummary::default(),
            Slot::Live(h) => LatencySummary::of(h),
            Slot::Sealed(e) => e.summary().unwrap_or_default(),
        }
    }
}

struct SecondAcc {
    counts: Counts,
    ok: Slot,
    failed: Slot,
}

impl SecondAcc {
    fn new() -> Self {
        Self {
            counts: Counts::default(),
            ok: Slot::Empty,
            failed: Slot::Empty,
        }
    }
}

struct StageAcc {
    counts: Counts,
    ok: Histogram<u64>,
    failed: Histogram<u64>,
    lateness: Histogram<u64>,
    send_delay: Histogram<u64>,
    /// Successes' response time from their actual send (µs).
    response_ok: Histogram<u64>,
    seconds: Vec<SecondAcc>,
    /// Seconds below this index are sealed.
    sealed_below: usize,
    /// Wall-clock time (UTC unix ms) the latest success arrived.
    last_ok_unix_ms: Option<u64>,
    /// Wall-clock time (UTC unix ms) the latest request left.
    last_sent_unix_ms: Option<u64>,
}

impl StageAcc {
    fn second(&mut self, s: u32) -> &mut SecondAcc {
        let s = s as usize;
        if self.seconds.len() <= s {
            self.seconds.resize_with(s + 1, SecondAcc::new);
        }
        &mut self.seconds[s]
    }
}

struct Inner {
    stages: Vec<StageAcc>,
    records: Option<Sender<RequestRecord>>,
}

/// How long a finished request took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Elapsed {
    /// From its planned time (open loop) or its send (closed loop): the latency a user
    /// waiting for it saw, free of coordinated omission.
    pub from_planned: Duration,
    /// From when it actually left: the target's response time, without what the client
    /// added before sending.
    pub from_sent: Duration,
}

/// Shared recorder of one run.
pub(crate) struct Collector {
    inner: Mutex<Inner>,
    late_tolerance: Duration,
}

/// Records `v` (µs, at least 1), growing the histogram as needed. (`saturating_record`
/// clamps to the current bounds even when auto-resize is on, so it is not used directly.)
pub(crate) fn record(h: &mut Histogram<u64>, v: u64) {
    let v = v.max(1);
    if h.record(v).is_err() {
        h.saturating_record(v);
    }
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn us(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// The counts one request's outcome adds, and whether it succeeded (a 2xx status).
fn outcome_counts(outcome: Outcome) -> (Counts, bool) {
    let mut delta = Counts::default();
    let ok = match outcome {
        Outcome::Status(s) => {
            delta.completed = 1;
            match s {
                100..=199 => delta.status_1xx = 1,
                200..=299 => delta.status_2xx = 1,
                300..=399 => delta.status_3xx = 1,
                400..=499 => delta.status_4xx = 1,
                500..=599 => delta.status_5xx = 1,
                _ => {}
            }
            (200..300).contains(&s)
        }
        Outcome::Timeout => {
            delta.timeouts = 1;
            false
        }
        Outcome::Connection => {
            delta.connection_errors = 1;
            false
        }
        Outcome::Other => {
            delta.other_errors = 1;
            false
        }
        Outcome::Aborted => false,
    };
    delta.ok = u64::from(ok);
    (delta, ok)
}

impl Collector {
    /// A collector for `stages` stages, optionally forwarding every request's record; a
    /// send later than `late_tolerance` counts as late.
    pub fn new(
        stages: usize,
        records: Option<Sender<RequestRecord>>,
        late_tolerance: Duration,
    ) -> Self {
        let stages = (0..stages)
            .map(|_| StageAcc {
                counts: Counts::default(),
                ok: new_histogram(),
                failed: new_histogram(),
                lateness: new_histogram(),
                send_delay: new_histogram(),
                response_ok: new_histogram(),
                seconds: Vec::new(),
                sealed_below: 0,
                last_ok_unix_ms: None,
                last_sent_unix_ms: None,
            })
            .collect();
        Self {
            inner: Mutex::new(Inner { stages, records }),
            late_tolerance,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves counts that are still consistent enough
        // to report; never propagate the poison.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request is leaving in second `second` of its stage: count it, with its send delay
    /// and its lateness (open loop; every request's, from 0 — a request later than
    /// the collector's tolerance, [`crate::runner::Pacing::late_tolerance`], also counts as
    /// late).
    pub fn sent(
        &self,
        stage: usize,
        second: u32,
        send_delay: Option<Duration>,
        lateness: Option<Duration>,
    ) {
        let now = unix_ms_now();
        let mut g = self.lock();
        let st = &mut g.stages[stage];
        st.counts.sent += 1;
        st.last_sent_unix_ms = st.last_sent_unix_ms.max(Some(now));
        if let Some(d) = send_delay {
            record(&mut st.send_delay, us(d).max(1));
        }
        let late = lateness.is_some_and(|l| l > self.late_tolerance);
        if let Some(l) = lateness {
            record(&mut st.lateness, us(l).max(1));
        }
        if late {
            st.counts.late += 1;
        }
        let sec = st.second(second);
        sec.counts.sent += 1;
        if late {
            sec.counts.late += 1;
        }
    }

    /// A planned request was dropped for being later than the plan allows.
    pub fn dropped(&self, stage: usize, second: u32, planned_us: u64, late: Duration) {
        let mut g = self.lock();
        let st = &mut g.stages[stage];
        st.counts.dropped += 1;
        st.second(second).counts.dropped += 1;
        if let Some(tx) = &g.records {
            let _ = tx.send(RequestRecord {
                stage: stage as u32,
                second,
                planned_us,
                late_us: us(late),
                latency_us: None,
                status: None,
                outcome: "dropped",
            });
        }
    }

    /// A request ended.
    pub fn finished(
        &self,
        stage: usize,
        second: u32,
        outcome: Outcome,
        elapsed: Elapsed,
        planned_us: u64,
        late: Duration,
    ) {
        let latency_us = us(elapsed.from_planned);
        let mut g = self.lock();
        let st = &mut g.stages[stage];
        let (delta, ok) = outcome_counts(outcome);
        st.counts.add(&delta);
        if ok {
            st.last_ok_unix_ms = st.last_ok_unix_ms.max(Some(unix_ms_now()));
        }
        let measured = outcome != Outcome::Aborted;
        if measured {
            if ok {
                record(&mut st.ok, latency_us.max(1));
                record(&mut st.response_ok, us(elapsed.from_sent).max(1));
            } else {
                record(&mut st.failed, latency_us.max(1));
            }
        }
        let sec = st.second(second);
        sec.counts.add(&delta);
        if measured {
            if ok {
                sec.ok.record(latency_us);
            } else {
                sec.failed.record(latency_us);
            }
        }
        if let Some(tx) = &g.records {
            let _ = tx.send(RequestRecord {
                stage: stage as u32,
                second,
                planned_us,
                late_us: us(late),
                latency_us: measured.then_some(latency_us),
                status: match outcome {
                    Outcome::Status(s) => Some(s),
                    _ => None,
                },
                outcome: outcome.label(),
            });
        }
    }

    /// Encodes the per-second histograms of `stage` below `second`.
    pub fn seal_before(&self, stage: usize, second: usize) {
        let mut g = self.lock();
        let st = &mut g.stages[stage];
        let upto = second.min(st.seconds.len());
        for s in st.sealed_below.min(upto)..upto {
            st.seconds[s].ok.seal();
            st.seconds[s].failed.seal();
        }
        st.sealed_below = st.sealed_below.max(upto);
    }

    /// Totals of a stage, and the success latency summary of one of its seconds.
    pub fn snapshot(&self, stage: usize, second: u32) -> (Counts, LatencySummary) {
        let g = self.lock();
        let st = &g.stages[stage];
        let summary = st
            .seconds
            .get(second as usize)
            .map(|s| s.ok.summary())
            .unwrap_or_default();
        (st.counts, summary)
    }

    /// Totals over all stages.
    pub fn totals(&self) -> Counts {
        let g = self.lock();
        let mut c = Counts::default();
        for s in &g.stages {
            c.add(&s.counts);
        }
        c
    }

    /// Stops forwarding request records (closes the channel so the writer finishes).
    pub fn close_records(&self) {
        self.lock().records = None;
    }

    /// Final data of a stage (`planned` counts are left to the caller, who knows the plan).
    pub fn stage_data(&self, stage: usize) -> StageData {
        let g = self.lock();
        let st = &g.stages[stage];
        StageData {
            counts: st.counts,
            ok: EncodedHistogram::encode(&st.ok),
            failed: EncodedHistogram::encode(&st.failed),
            lateness: EncodedHistogram::encode(&st.lateness),
            send_delay: EncodedHistogram::encode(&st.send_delay),
            response_ok: EncodedHistogram::encode(&st.response_ok),
            last_ok_unix_ms: st.last_ok_unix_ms,
            last_sent_unix_ms: st.last_sent_unix_ms,
            seconds: st
                .seconds
                .iter()
                .map(|s| SecondData {
                    counts: s.counts,
                    ok: s.ok.encoded(),
                    failed: s.failed.encoded(),
                })
                .collect(),
        }
    }
}

/// Recorded data of one stage.
pub(crate) struct StageData {
    pub counts: Counts,
    pub ok: EncodedHistogram,
    pub failed: EncodedHistogram,
    pub lateness: EncodedHistogram,
    pub send_delay: EncodedHistogram,
    pub response_ok: EncodedHistogram,
    pub last_ok_unix_ms: Option<u64>,
    pub last_sent_unix_ms: Option<u64>,
    /// Indexed by second of the stage.
    pub seconds: Vec<SecondData>,
}

/// Recorded data of one second.
#[derive(Default, Clone)]
pub(crate) struct SecondData {
    pub counts: Counts,
    pub ok: EncodedHistogram,
    pub failed: EncodedHistogram,
}

/// Builds a [`SecondBucket`] with its summary.
pub(crate) fn bucket(
    second: u32,
    start_unix_ms: u64,
    counts: Counts,
    ok: EncodedHistogram,
    failed: EncodedHistogram,
) -> SecondBucket {
    SecondBucket {
        second,
        start_unix_ms,
        counts,
        ok_summary: ok.summary().unwrap_or_default(),
        latency_ok: ok,
        latency_failed: failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sealed_seconds_stay_exact() {
        let c = Collector::new(1, None, crate::runner::LATE_TOLERANCE);
        for i in 0..10u32 {
            c.sent(
                0,
                i % 2,
                Some(Duration::from_micros(5)),
                (i == 3).then_some(Duration::from_millis(2)),
            );
            let outcome = if i == 9 {
                Outcome::Status(503)
            } else {
                Outcome::Status(200)
            };
            c.finished(
                0,
                i % 2,
                outcome,
                Elapsed {
                    from_planned: Duration::from_millis(u64::from(i) + 1),
                    from_sent: Duration::from_millis(u64::from(i) + 1),
                },
                0,
                Duration::ZERO,
            );
            if i == 4 {
                c.seal_before(0, 2);
            }
        }
        let d = c.stage_data(0);
        assert_eq!(d.counts.sent, 10);
        assert_eq!(d.counts.ok, 9);
        assert_eq!(d.counts.status_5xx, 1);
        assert_eq!(d.counts.late, 1);
        assert_eq!(d.ok.count().unwrap(), 9);
        assert_eq!(d.failed.count().unwrap(), 1);
        assert_eq!(d.send_delay.count().unwrap(), 10);
        assert!((9000..=9010).contains(&d.ok.summary().unwrap().max_us));
        let per_second: u64 = d
            .seconds
            .iter()
            .map(|s| s.ok.count().unwrap() + s.failed.count().unwrap())
            .sum();
        assert_eq!(per_second, 10);
        assert_eq!(d.seconds.iter().map(|s| s.counts.sent).sum::<u64>(), 10);
    }
}
