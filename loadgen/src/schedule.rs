//! The open-loop schedule: planned send times shared by all in-flight slots (wrk2 style).
//!
//! Request `k` of stage `s` is planned at `offset(s) + k / rate(s)` from the run's start
//! `t0`. Instance `i` of `N` owns the requests with `k mod N == i`. The requests of one
//! instance form one sequence over all stages, handed out by an atomic cursor: a free slot
//! claims the next planned time and sleeps until it, so requests leave in planned order and
//! no request is skipped when slots are busy — it is claimed late instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::load_plan::{InstanceSpec, ResolvedStage};

/// Where a stage sits on the run's timeline, and this instance's share of its requests.
#[derive(Debug, Clone)]
pub(crate) struct StageClock {
    /// Offset of the stage start from `t0`.
    pub offset: Duration,
    /// Stage length.
    pub duration: Duration,
    /// Target rate over all instances (open loop).
    pub rate: Option<f64>,
    /// Planned requests of the stage over all instances.
    pub planned_all: u64,
    /// Requests of this instance in the stage.
    pub share: u64,
    /// Index of this stage's first request in the instance's sequence.
    pub first: u64,
    /// Closed-loop users of this instance in the stage.
    pub users: u32,
}

/// Lays the stages out on one timeline.
pub(crate) fn clocks(stages: &[ResolvedStage], instance: &InstanceSpec) -> Vec<StageClock> {
    let mut offset = Duration::ZERO;
    let mut first = 0;
    stages
        .iter()
        .map(|s| {
            let planned_all = s.planned_requests();
            let share = instance.share_of(planned_all);
            let c = StageClock {
                offset,
                duration: s.duration,
                rate: s.rate,
                planned_all,
                share,
                first,
                users: s.users_for(instance),
            };
            offset += s.duration;
            first += share;
            c
        })
        .collect()
}

/// A claimed slot of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Planned {
    /// Stage index.
    pub stage: usize,
    /// Global request number `k` within the stage (all instances).
    pub k: u64,
    /// Planned send time, from `t0`.
    pub at: Duration,
    /// Second of the stage the request belongs to.
    pub second: u32,
}

/// Number of `k >= 0` with `k / rate < t` (seconds), consistent with [`second_of`].
pub(crate) fn count_before(rate: f64, t: f64) -> u64 {
    if rate <= 0.0 || t <= 0.0 {
        return 0;
    }
    let mut m = (t * rate).ceil().max(0.0) as u64;
    while m > 0 && (m - 1) as f64 / rate >= t {
        m -= 1;
    }
    while (m as f64) / rate < t {
        m += 1;
    }
    m
}

/// Second of the stage in which request `k` is planned.
pub(crate) fn second_of(rate: f64, k: u64) -> u32 {
    (k as f64 / rate).floor().min(f64::from(u32::MAX)) as u32
}

/// The shared, lock-free schedule of one instance.
#[derive(Debug)]
pub(crate) struct OpenSchedule {
    clocks: Vec<StageClock>,
    instance: InstanceSpec,
    cursor: AtomicU64,
    total: u64,
}

impl OpenSchedule {
    /// A schedule over `clocks` for `instance`.
    pub fn new(clocks: Vec<StageClock>, instance: InstanceSpec) -> Self {
        let total = clocks.iter().map(|c| c.share).sum();
        Self {
            clocks,
            instance,
            cursor: AtomicU64::new(0),
            total,
        }
    }

    /// Claims the next planned request; `None` once the schedule is exhausted.
    pub fn claim(&self) -> Option<Planned> {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        if n >= self.total {
            return None;
        }
        // Stages are few; the last stage with `first <= n` owns `n`.
        let stage = self.clocks.partition_point(|c| c.first <= n) - 1;
        let c = &self.clocks[stage];
        let j = n - c.first;
        let k = u64::from(self.instance.index) + u64::from(self.instance.count) * j;
        let rate = c.rate.unwrap_or(1.0);
        Some(Planned {
            stage,
            k,
            at: c.offset + Duration::from_secs_f64(k as f64 / rate),
            second: second_of(rate, k),
        })
    }

    /// This instance's requests of `stage` planned before `t` seconds into the stage.
    pub fn due_before(&self, stage: usize, t: f64) -> u64 {
        let c = &self.clocks[stage];
        let Some(rate) = c.rate else { return 0 };
        let m = count_before(rate, t).min(c.planned_all);
        self.instance.share_of(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(rate: f64, secs: u64) -> ResolvedStage {
        ResolvedStage {
            index: 0,
            name: "s".into(),
            warm_up: false,
            duration: Duration::from_secs(secs),
            rate: Some(rate),
            users: None,
        }
    }

    #[test]
    fn instances_partition_the_plan() {
        let stages = [stage(10.0, 2), stage(3.0, 1)];
        let mut all = Vec::new();
        for index in 0..3 {
            let inst = InstanceSpec { index, count: 3 };
            let s = OpenSchedule::new(clocks(&stages, &inst), inst);
            let mut last = Duration::ZERO;
            while let Some(p) = s.claim() {
                assert!(p.at >= last, "planned times are handed out in order");
                last = p.at;
                all.push((p.stage, p.k));
            }
            assert!(s.claim().is_none());
        }
        all.sort();
        let expected: Vec<_> = (0..20)
            .map(|k| (0, k))
            .chain((0..3).map(|k| (1, k)))
            .collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn planned_times_follow_the_rate() {
        let stages = [stage(4.0, 1), stage(2.0, 1)];
        let inst = InstanceSpec::default();
        let s = OpenSchedule::new(clocks(&stages, &inst), inst);
        let times: Vec<_> = std::iter::from_fn(|| s.claim())
            .map(|p| p.at.as_millis())
            .collect();
        assert_eq!(times, vec![0, 250, 500, 750, 1000, 1500]);
        assert_eq!(s.due_before(0, 0.5), 2);
        assert_eq!(s.due_before(0, 10.0), 4);
        assert_eq!(s.due_before(1, 0.5), 1);
    }

    #[test]
    fn count_before_matches_second_of() {
        for rate in [1.0, 3.0, 7.5, 100.0, 333.3] {
            for sec in 0..5u32 {
                let n = count_before(rate, f64::from(sec + 1)) - count_before(rate, f64::from(sec));
                let direct = (0..2000u64).filter(|k| second_of(rate, *k) == sec).count() as u64;
                assert_eq!(n, direct, "rate {rate} second {sec}");
            }
        }
    }
}
