//! The load generator as the simulation runs it: the loadgen's plan (open loop: request
//! `k` planned at `k ÷ rate`, at most `maxInFlight` outstanding, a request without a
//! slot leaving late; closed loop: users that send, wait for the answer, think, repeat),
//! and its result in the loadgen's own form, so the analysis reads it as a measured one.
//! Latency counts from the planned time (open loop) or the send (closed loop).

use std::collections::VecDeque;

use hdrhistogram::Histogram;
use meshbench_loadgen::result::{
    Counts, EncodedHistogram, LatencySummary, SecondBucket, StageResult, StageSummary,
    new_histogram,
};

/// Lateness above this counts as late (the loadgen's tolerance).
const LATE_TOLERANCE_S: f64 = 250e-6;

/// How a request ended, as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP status.
    Status(u16),
    /// No connection (no ready endpoint).
    ConnectionError,
}

/// The arrival process.
#[derive(Debug, Clone)]
pub enum Arrivals {
    /// Open loop at `rate` per second, at most `max_in_flight` outstanding.
    Open {
        /// Requests per second.
        rate: f64,
        /// Bound on outstanding requests.
        max_in_flight: u32,
    },
    /// Closed loop: `users` that think `think` seconds between answers and requests.
    Closed {
        /// Users.
        users: u32,
        /// Think time, seconds.
        think: f64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Request {
    planned: f64,
    sent: f64,
    done: bool,
}

/// What one stage of load recorded, per planned second.
struct Second {
    counts: Counts,
    ok: Histogram<u64>,
    failed: Histogram<u64>,
}

/// One stage of load in progress.
pub struct Load {
    /// Target (service index, endpoint index or `None` for a path it does not serve).
    pub target: (usize, Option<usize>),
    /// Client timeout, seconds.
    pub timeout: f64,
    start: f64,
    duration: f64,
    arrivals: Arrivals,
    planned: u64,
    next_k: u64,
    backlog: VecDeque<f64>,
    /// Closed loop: when each idle user sends next, in time order.
    users_due: VecDeque<f64>,
    requests: Vec<Request>,
    in_flight: u32,
    seconds: Vec<Second>,
    lateness: Histogram<u64>,
    response_time_ok: Histogram<u64>,
    last_ok: Option<f64>,
    last_sent: Option<f64>,
}

impl Load {
    /// A stage from `start` for `duration` seconds.
    pub fn new(
        target: (usize, Option<usize>),
        timeout: f64,
        start: f64,
        duration: f64,
        arrivals: Arrivals,
    ) -> Self {
        let n_seconds = (duration.ceil() as usize).max(1);
        let (planned, users_due) = match &arrivals {
            Arrivals::Open { rate, .. } => (planned_requests(*rate, duration), VecDeque::new()),
            Arrivals::Closed { users, .. } => (0, (0..*users).map(|_| start).collect()),
        };
        Self {
            target,
            timeout,
            start,
            duration,
            arrivals,
            planned,
            next_k: 0,
            backlog: VecDeque::new(),
            users_due,
            requests: Vec::new(),
            in_flight: 0,
            seconds: (0..n_seconds)
                .map(|_| Second {
                    counts: Counts::default(),
                    ok: new_histogram(),
                    failed: new_histogram(),
                })
                .collect(),
            lateness: new_histogram(),
            response_time_ok: new_histogram(),
            last_ok: None,
            last_sent: None,
        }
    }

    /// End of the stage's schedule.
    pub fn end(&self) -> f64 {
        self.start + self.duration
    }

    /// Every request planned was sent and answered or timed out.
    pub fn finished(&self, now: f64) -> bool {
        let open_done = self.next_k >= self.planned && self.backlog.is_empty();
        let closed_done = self.users_due.front().is_none_or(|t| *t >= self.end());
        now >= self.end() && open_done && closed_done && self.in_flight == 0
    }

    /// Requests due by `now` go into `sends` (ids); returns when to look again.
    pub fn poll(&mut self, now: f64, sends: &mut Vec<usize>) -> Option<f64> {
        match self.arrivals.clone() {
            Arrivals::Open {
                rate,
                max_in_flight,
            } => {
                while self.next_k < self.planned {
                    let planned = self.start + self.next_k as f64 / rate;
                    if planned > now {
                        break;
                    }
                    self.next_k += 1;
                    self.backlog.push_back(planned);
                }
                while self.in_flight < max_in_flight {
                    let Some(planned) = self.backlog.pop_front() else {
                        break;
                    };
                    sends.push(self.send(planned, now));
                }
                (self.next_k < self.planned).then(|| self.start + self.next_k as f64 / rate)
            }
            Arrivals::Closed { .. } => {
                while let Some(&due) = self.users_due.front() {
                    if due > now || due >= self.end() {
                        break;
                    }
                    self.users_due.pop_front();
                    sends.push(self.send(now, now));
                }
                self.users_due.front().copied().filter(|t| *t < self.end())
            }
        }
    }

    fn send(&mut self, planned: f64, now: f64) -> usize {
        self.in_flight += 1;
        self.requests.push(Request {
            planned,
            sent: now,
            done: false,
        });
        let late = now - planned;
        let _ = self.lateness.record(((late * 1e6) as u64).max(1));
        let planned_s = self.second_of(planned);
        self.seconds[planned_s].counts.planned += 1;
        let sent_s = self.second_of(now);
        self.seconds[sent_s].counts.sent += 1;
        if late > LATE_TOLERANCE_S {
            self.seconds[sent_s].counts.late += 1;
        }
        self.last_sent = Some(now);
        self.requests.len() - 1
    }

    fn second_of(&self, t: f64) -> usize {
        let s = ((t - self.start).max(0.0)).floor() as usize;
        s.min(self.seconds.len() - 1)
    }

    /// Request `id` was answered at `now`.
    pub fn answered(&mut self, id: usize, now: f64, outcome: Outcome) {
        let Some(req) = self.close(id) else { return };
        let latency_us = (((now - req.planned) * 1e6) as u64).max(1);
        let s = self.second_of(req.planned);
        let sec = &mut self.seconds[s];
        match outcome {
            Outcome::Status(code) => {
                sec.counts.completed += 1;
                match code {
                    200..=299 => {
                        sec.counts.status_2xx += 1;
                        sec.counts.ok += 1;
                        let _ = sec.ok.record(latency_us);
                        let rt = (((now - req.sent) * 1e6) as u64).max(1);
                        let _ = self.response_time_ok.record(rt);
                        self.last_ok = Some(now);
                    }
                    300..=399 => sec.counts.status_3xx += 1,
                    400..=499 => sec.counts.status_4xx += 1,
                    _ => sec.counts.status_5xx += 1,
                }
                if !(200..300).contains(&code) {
                    let _ = sec.failed.record(latency_us);
                }
            }
            Outcome::ConnectionError => {
                sec.counts.connection_errors += 1;
                let _ = sec.failed.record(latency_us);
            }
        }
        self.user_done(now);
    }

    /// Request `id` timed out at `now` (if still outstanding).
    pub fn timed_out(&mut self, id: usize, now: f64) {
        let Some(req) = self.close(id) else { return };
        let s = self.second_of(req.planned);
        self.seconds[s].counts.timeouts += 1;
        let latency_us = (((now - req.planned) * 1e6) as u64).max(1);
        let _ = self.seconds[s].failed.record(latency_us);
        self.user_done(now);
    }

    /// The drain is over: requests still outstanding count as timed out, as the
    /// loadgen's do when it stops waiting.
    pub fn abandon_outstanding(&mut self, now: f64) {
        let open: Vec<usize> = (0..self.requests.len())
            .filter(|&i| !self.requests[i].done)
            .collect();
        for id in open {
            self.timed_out(id, now);
        }
    }

    fn close(&mut self, id: usize) -> Option<Request> {
        let req = self.requests.get_mut(id)?;
        if req.done {
            return None;
        }
        req.done = true;
        self.in_flight = self.in_flight.saturating_sub(1);
        Some(*req)
    }

    fn user_done(&mut self, now: f64) {
        if let Arrivals::Closed { think, .. } = self.arrivals {
            self.users_due.push_back(now + think);
        }
    }

    /// The loadgen's result of this stage, its times from `epoch_ms` (the run's start
    /// in Unix ms, at simulated time 0).
    pub fn result(
        &self,
        index: u32,
        name: &str,
        target_rate: Option<f64>,
        users: Option<u32>,
        epoch_ms: i64,
    ) -> StageResult {
        let start_ms = epoch_ms + (self.start * 1000.0).round() as i64;
        let start = u64::try_from(start_ms).unwrap_or(0);
        let mut total = Counts::default();
        let mut all_ok = new_histogram();
        let mut all_failed = new_histogram();
        let buckets: Vec<SecondBucket> = self
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                total.add(&s.counts);
                let _ = all_ok.add(&s.ok);
                let _ = all_failed.add(&s.failed);
                SecondBucket {
                    second: i as u32,
                    start_unix_ms: start + i as u64 * 1000,
                    counts: s.counts,
                    ok_summary: LatencySummary::of(&s.ok),
                    latency_ok: EncodedHistogram::encode(&s.ok),
                    latency_failed: EncodedHistogram::encode(&s.failed),
                }
            })
            .collect();
        total.dropped = self.planned.saturating_sub(total.planned);
        let unix = |t: f64| u64::try_from(epoch_ms + (t * 1000.0).round() as i64).ok();
        let duration_ms = (self.duration * 1000.0).round() as u64;
        let mut st = StageResult {
            index,
            name: name.to_owned(),
            warm_up: false,
            target_rate,
            users,
            planned_duration_ms: duration_ms,
            started_unix_ms: start,
            ended_unix_ms: start + duration_ms,
            partial: false,
            counts: total,
            latency_ok: EncodedHistogram::encode(&all_ok),
            latency_failed: EncodedHistogram::encode(&all_failed),
            lateness: EncodedHistogram::encode(&self.lateness),
            send_delay: EncodedHistogram::encode(&self.lateness),
            last_ok_unix_ms: self.last_ok.and_then(unix),
            last_sent_unix_ms: self.last_sent.and_then(unix),
            response_time_ok: EncodedHistogram::encode(&self.response_time_ok),
            seconds: buckets,
            summary: StageSummary::default(),
        };
        // Derived from the histograms just encoded; recomputing cannot fail.
        let _ = st.recompute_summary();
        st
    }
}

/// Requests of an open-loop stage: `k` is planned at `k ÷ rate` for every `k` with
/// `k ÷ rate < duration` (as the loadgen plans them).
fn planned_requests(rate: f64, duration: f64) -> u64 {
    if !(rate > 0.0 && duration > 0.0) {
        return 0;
    }
    let n = (rate * duration).ceil();
    // Float noise: rate 30 for 1.0 s is 30 requests, not 31.
    let n = if (n - 1.0) / rate >= duration {
        n - 1.0
    } else {
        n
    };
    n.clamp(0.0, u32::MAX as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_loop_plans_rate_times_duration_requests() {
        assert_eq!(planned_requests(30.0, 1.0), 30);
        assert_eq!(planned_requests(10.0, 2.5), 25);
        assert_eq!(planned_requests(3.0, 0.5), 2);
        assert_eq!(planned_requests(0.0, 5.0), 0);
    }

    #[test]
    fn a_full_in_flight_bound_makes_requests_late_and_latency_counts_from_the_plan() {
        let mut l = Load::new(
            (0, Some(0)),
            10.0,
            0.0,
            1.0,
            Arrivals::Open {
                rate: 10.0,
                max_in_flight: 1,
            },
        );
        let mut sends = Vec::new();
        let next = l.poll(0.0, &mut sends);
        assert_eq!(sends, vec![0]);
        assert_eq!(next, Some(0.1));
        sends.clear();
        // The second request is due at 0.1 but the only slot is taken until 0.35.
        assert_eq!(l.poll(0.1, &mut sends), Some(0.2));
        assert!(sends.is_empty());
        l.answered(0, 0.35, Outcome::Status(200));
        l.poll(0.35, &mut sends);
        assert_eq!(sends, vec![1]);
        l.answered(1, 0.4, Outcome::Status(200));
        let r = l.result(1, "s", Some(10.0), None, 0);
        assert_eq!(r.counts.ok, 2);
        assert!(r.counts.late >= 1);
        // The first: planned at 0, answered at 0.35: 350 ms from the plan.
        let max_ms = r.summary.latency.max_us as f64 / 1000.0;
        assert!((max_ms - 350.0).abs() < 1.0, "{max_ms}");
    }
}
