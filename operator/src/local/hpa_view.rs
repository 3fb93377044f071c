//! What the local HPA sees of a service's pods, emulated as a cluster produces it, so the
//! local HPA decides on the same (late, partial) information a cluster's HPA would:
//!
//! * [`MetricsPipeline`] is metrics-server (`pkg/storage/pod.go` `podStorage`): it scrapes
//!   every pod's cumulative CPU counter every `--metric-resolution` and serves the rate
//!   between a pod's two latest scrapes, stamped with the latest. At an HPA sync that
//!   metric is 0 to one resolution old, and a new pod has none for the first 10–30 s.
//! * [`PodLifecycle`] is the pod status the kubelet reports: a start time that outlives
//!   container restarts, the `Ready` condition's real `lastTransitionTime`, and the
//!   `Pending`/`Running` phase.
//! * [`scale_down_victims`] is the ReplicaSet controller's choice of pods to delete.
//!
//! Pure and clock-injected like [`super::hpa`]: every time is seconds on the runner's
//! clock, passed in by the caller.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Duration;

use super::hpa::{CpuMetric, PodPhase, PodSample, ReadyCondition};

/// metrics-server's default `--metric-resolution`.
pub const DEFAULT_METRIC_RESOLUTION: Duration = Duration::from_secs(15);

/// metrics-server's `freshContainerMinMetricsResolution`: a container younger than this
/// at a scrape gets no synthetic start point, as its rate would be mostly start-up noise.
const FRESH_CONTAINER_MIN_AGE: f64 = 10.0;

/// Guards the schedule against a zero resolution (which would never advance).
const MIN_RESOLUTION: f64 = 1e-3;

/// One scrape of a container: when, and its CPU seconds since the container started.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    t: f64,
    cpu: f64,
}

/// metrics-server's memory of one pod (single container), plus what it takes to turn the
/// runner's counter into the kubelet's per-container one.
#[derive(Debug, Clone)]
struct PodScrapes {
    /// Start of the current process run (the container's `StartTime`).
    run_start: f64,
    /// The runner's counter at `run_start`: a cgroup's counter carries earlier runs' CPU,
    /// the kubelet's starts every container at 0.
    base: f64,
    /// The runner's counter at the latest observation.
    seen: f64,
    /// The point the rate is taken from (`s.prev`).
    prev: Option<Point>,
    /// The latest scrape's point and that scrape's number (`s.last`).
    last: Option<(u64, Point)>,
}

impl PodScrapes {
    fn new(run_start: f64, cpu: f64) -> Self {
        Self {
            run_start,
            // A replica's cgroup and process are new with the pod, so they start at 0.
            base: 0.0,
            seen: cpu,
            prev: None,
            last: None,
        }
    }

    /// Follows the runner's counter across process runs.
    fn track(&mut self, cpu: f64, run_start: f64) {
        if run_start > self.run_start {
            // A new container. A cgroup's counter counted on (the dead process used
            // nothing since, so it is not below the last reading); a process's restarted
            // at 0. The CPU used between the last reading and the exit counts into the
            // new run's first window: under one tick's worth.
            self.base = if cpu >= self.seen { self.seen } else { 0.0 };
            self.run_start = run_start;
        } else if cpu < self.seen {
            // The counter went back within a run. Rebase it; the next scrape's rate spans
            // the drop and is refused, as metrics-server refuses it, and the one after
            // is good again.
            self.base = 0.0;
        }
        self.seen = cpu;
    }

    /// `podStorage.Store` for this pod's container at scrape number `seq`, time `t`.
    fn scrape(&mut self, seq: u64, t: f64, resolution: f64) {
        let point = Point {
            t,
            cpu: (self.seen - self.base).max(0.0),
        };
        let age = t - self.run_start;
        self.prev = if (FRESH_CONTAINER_MIN_AGE..resolution).contains(&age) {
            // A fresh container: its counter was 0 at its start, which makes a usable
            // first window.
            Some(Point {
                t: self.run_start,
                cpu: 0.0,
            })
        } else {
            // The previous scrape's point, if the pod was in that scrape and its
            // container has not restarted since.
            self.last
                .filter(|(s, p)| s + 1 == seq && self.run_start < p.t)
                .map(|(_, p)| p)
        };
        self.last = Some((seq, point));
    }
}

/// metrics-server for one service's pods: what `kubectl top pod` and the HPA see.
///
/// Scrapes are on their own fixed grid (`first_scrape + k × resolution`, like the Go
/// ticker metrics-server runs on), but the runner only reads counters on its sample
/// ticks: a scrape happens at the first tick at or after its scheduled time and takes
/// that tick's time as its timestamp, so windows are whole ticks (15 s, 14 or 16 s when
/// the ticks jitter) and a metric is never fresher than it would be on a cluster.
/// Scheduled times a stalled runner skipped are dropped, not caught up (as a Go ticker
/// drops them).
///
/// A pod gets a metric at the second scrape it is in, or at its first one if its
/// container is between 10 s and one resolution old then (metrics-server's fresh
/// container rule, which rates from the container's start). A pod missing from the
/// latest scrape (its process not running) has no metric: metrics-server replaces its
/// store with every scrape. A restart (a later run start) starts the pod over, as a new
/// container does; a counter going back voids the rate across the drop. Either way the
/// metric the latest scrape gave is served until the next scrape, as metrics-server does.
#[derive(Debug, Clone)]
pub struct MetricsPipeline {
    resolution: f64,
    next_scrape: f64,
    /// Scrapes taken so far: the latest one's number.
    scrapes: u64,
    /// Time of the latest scrape.
    latest: Option<f64>,
    pods: BTreeMap<String, PodScrapes>,
}

impl MetricsPipeline {
    /// A pipeline scraping every `resolution` (`--metric-resolution`) from `first_scrape`
    /// on. On a cluster the scrape phase is unrelated to the HPA's syncs; the caller picks
    /// it (see the platform for its choice).
    pub fn new(resolution: Duration, first_scrape: f64) -> Self {
        Self {
            resolution: resolution.as_secs_f64().max(MIN_RESOLUTION),
            next_scrape: if first_scrape.is_finite() {
                first_scrape
            } else {
                0.0
            },
            scrapes: 0,
            latest: None,
            pods: BTreeMap::new(),
        }
    }

    /// Advances the scrape schedule to `clock`. Call it at every sample tick before the
    /// tick's [`MetricsPipeline::observe`] calls, so a scrape happens (and leaves out the
    /// pods that are not running) even when no pod is observed.
    pub fn tick(&mut self, clock: f64) {
        if clock.is_finite() && clock >= self.next_scrape {
            self.scrapes += 1;
            self.latest = Some(clock);
            let missed = ((clock - self.next_scrape) / self.resolution).floor();
            self.next_scrape += (missed + 1.0) * self.resolution;
        }
    }

    /// Feeds one sample tick's reading of a running `pod`: its cumulative CPU seconds (a
    /// counter that may or may not restart with the process) and the start of its current
    /// process run. Use the same `clock` for every pod of one tick: a scrape takes all the
    /// pods observed at its tick.
    pub fn observe(&mut self, clock: f64, pod: &str, cumulative_cpu_seconds: f64, run_start: f64) {
        if !(clock.is_finite() && cumulative_cpu_seconds.is_finite() && run_start.is_finite()) {
            return;
        }
        self.tick(clock);
        let p = self
            .pods
            .entry(pod.to_string())
            .or_insert_with(|| PodScrapes::new(run_start, cumulative_cpu_seconds));
        p.track(cumulative_cpu_seconds, run_start);
        if self.latest.is_some_and(|t| clock <= t) {
            p.scrape(self.scrapes, clock, self.resolution);
        }
    }

    /// The metric metrics-server serves for `pod` now: the CPU rate between its two latest
    /// scrapes, `timestamp` = the latest, `window` = the time between them.
    pub fn metric(&self, pod: &str) -> Option<CpuMetric> {
        let p = self.pods.get(pod)?;
        let (seq, last) = p.last?;
        let prev = p.prev?;
        let window = last.t - prev.t;
        // resourceUsage refuses a counter that went back ("unexpected decrease").
        if seq != self.scrapes || window <= 0.0 || last.cpu < prev.cpu {
            return None;
        }
        Some(CpuMetric {
            usage_millis: (last.cpu - prev.cpu) / window * 1000.0,
            timestamp: last.t,
            window,
        })
    }

    /// Drops a removed pod.
    pub fn forget(&mut self, pod: &str) {
        self.pods.remove(pod);
    }
}

/// Where a pod's container is, as the runner sees its process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// Not started yet: the pod is `Pending`.
    NotStarted,
    /// Running.
    Running,
    /// Ran, exited, and waits for its restart. The pod stays `Running` (restartPolicy
    /// Always keeps the phase through CrashLoopBackOff) but is not ready.
    Restarting,
}

/// The kubelet's status of one pod.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PodState {
    created: f64,
    /// When the scheduler bound it to the node (its `status.startTime`); `None` while it
    /// is Pending for want of room.
    bound: Option<f64>,
    started: bool,
    ready: bool,
    transition: f64,
    restarts: u32,
}

impl PodState {
    fn new(created: f64) -> Self {
        Self {
            created,
            bound: Some(created),
            started: false,
            // The kubelet reports Ready=False from the pod's start.
            ready: false,
            transition: created,
            restarts: 0,
        }
    }
}

/// The pods' status as the kubelet reports it. The runner's own view is per process run;
/// the HPA and the ReplicaSet controller need it per pod: a restart keeps the pod (and
/// its start time), and a readiness change is dated when it happens, so a pod that was
/// ready and went unready under load is not mistaken for one that never became ready.
#[derive(Debug, Clone, Default)]
pub struct PodLifecycle {
    pods: BTreeMap<String, PodState>,
}

impl PodLifecycle {
    /// Records a pod's creation and its binding to the node in one (`creationTimestamp`
    /// and `status.startTime`: a pod that fits is bound at once, and no image is pulled).
    /// [`PodLifecycle::update`] creates pods it has not seen too, one tick late.
    pub fn create(&mut self, clock: f64, pod: &str) {
        self.pods
            .entry(pod.to_string())
            .or_insert_with(|| PodState::new(clock));
    }

    /// Records the creation of a pod the node has no room for: Pending, unscheduled,
    /// without a start time or a `Ready` condition until [`PodLifecycle::bind`].
    pub fn create_unbound(&mut self, clock: f64, pod: &str) {
        self.pods.entry(pod.to_string()).or_insert(PodState {
            bound: None,
            ..PodState::new(clock)
        });
    }

    /// The scheduler bound a Pending pod at `clock`: it gets its start time, and the
    /// kubelet's `Ready=False` condition dated then.
    pub fn bind(&mut self, clock: f64, pod: &str) {
        if let Some(s) = self.pods.get_mut(pod)
            && s.bound.is_none()
        {
            s.bound = Some(clock);
            s.transition = clock;
        }
    }

    /// One tick's view of `pod`: its process, whether its readiness probe passes, and its
    /// restart count. The `Ready` transition time moves only when readiness changes.
    pub fn update(&mut self, clock: f64, pod: &str, process: Process, ready: bool, restarts: u32) {
        let s = self
            .pods
            .entry(pod.to_string())
            .or_insert_with(|| PodState::new(clock));
        let ready = ready && process == Process::Running;
        if ready != s.ready {
            s.ready = ready;
            s.transition = clock;
        }
        s.started |= process != Process::NotStarted;
        if s.started && s.bound.is_none() {
            s.bound = Some(clock);
        }
        s.restarts = restarts;
    }

    /// Drops a removed pod.
    pub fn forget(&mut self, pod: &str) {
        self.pods.remove(pod);
    }

    /// What the HPA sees of `pod`, given the metric metrics-server serves for it.
    ///
    /// A pod whose container never started is `Pending`, which `groupPods` sets aside as
    /// unready before it looks at metrics or readiness (start time and `Ready` are still
    /// filled in, as the kubelet does). A pod that started is `Running` even while its
    /// container restarts: without a metric it is "missing" (0 % on scale up, 100 % on
    /// scale down), with one its `Ready` condition decides. A pod never seen is `Pending`
    /// without a start time or condition.
    pub fn pod_sample(
        &self,
        pod: &str,
        cpu: Option<CpuMetric>,
        cpu_request_millis: u64,
    ) -> PodSample {
        let Some(s) = self.pods.get(pod) else {
            return PodSample {
                name: pod.to_string(),
                phase: PodPhase::Pending,
                terminating: false,
                start_time: None,
                ready: None,
                cpu: None,
                cpu_request_millis,
            };
        };
        PodSample {
            name: pod.to_string(),
            phase: if s.started {
                PodPhase::Running
            } else {
                PodPhase::Pending
            },
            terminating: false,
            start_time: s.bound,
            ready: s.bound.map(|_| ReadyCondition {
                ready: s.ready,
                last_transition_time: s.transition,
            }),
            cpu: cpu.filter(|_| s.started),
            cpu_request_millis,
        }
    }

    /// What the ReplicaSet controller ranks `pod` by; a pod never seen ranks as a
    /// `Pending` pod created at `clock`.
    pub fn ranked(&self, clock: f64, pod: &str) -> RankedPod {
        let s = self
            .pods
            .get(pod)
            .copied()
            .unwrap_or_else(|| PodState::new(clock));
        RankedPod {
            name: pod.to_string(),
            bound: s.bound.is_some(),
            running: s.started,
            ready: s.ready,
            ready_since: s.ready.then_some(s.transition),
            restarts: s.restarts,
            created: s.created,
        }
    }
}

/// One pod as the ReplicaSet controller ranks it for deletion.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedPod {
    /// Pod name.
    pub name: String,
    /// Bound to the node (rather than Pending for want of room).
    pub bound: bool,
    /// Phase `Running` (its container started at least once) rather than `Pending`.
    pub running: bool,
    /// The `Ready` condition is true.
    pub ready: bool,
    /// When it last became ready, if it is ready.
    pub ready_since: Option<f64>,
    /// Container restarts.
    pub restarts: u32,
    /// Creation time.
    pub created: f64,
}

/// The `n` pods a ReplicaSet deletes when scaled down by `n`, in deletion order.
///
/// Upstream `pkg/controller/replicaset` `getPodsToDelete` sorts by
/// `controller.ActivePodsWithRanks.Less` (`pkg/controller/controller_utils.go`):
/// unscheduled before scheduled, pending before running, not ready before ready, then
/// (both ready) ready more recently first, more restarts first, created more recently
/// first. The criteria that cannot differ locally are left out: `pod-deletion-cost` and
/// the rank by pods on the same node (one node here). Times are compared exactly, as with the
/// `LogarithmicScaleDown` gate off; ties keep the order of `pods`.
pub fn scale_down_victims(pods: &[RankedPod], n: usize) -> Vec<String> {
    let mut ranked: Vec<&RankedPod> = pods.iter().collect();
    ranked.sort_by(|a, b| deletion_order(a, b));
    ranked.into_iter().take(n).map(|p| p.name.clone()).collect()
}

/// `ActivePodsWithRanks.Less` as an ordering: `Less` means `a` goes first.
fn deletion_order(a: &RankedPod, b: &RankedPod) -> Ordering {
    a.bound
        .cmp(&b.bound)
        .then(a.running.cmp(&b.running))
        .then(a.ready.cmp(&b.ready))
        .then_with(|| {
            if a.ready && b.ready {
                after_or_zero(a.ready_since, b.ready_since)
            } else {
                Ordering::Equal
            }
        })
        .then(b.restarts.cmp(&a.restarts))
        .then_with(|| after_or_zero(Some(a.created), Some(b.created)))
}

/// Upstream `afterOrZero`: an unset time first, then the later time first.
fn after_or_zero(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => b.total_cmp(&a),
    }
}

#[cfg(test)]
mod tests {
    use super::super::hpa::{Hpa, HpaConfig};
    use super::*;

    /// Ticks once a second over `ticks`; from `run_start` on, the pod runs at `cores`
    /// (a counter from 0 at its start). Returns the metric after each tick.
    fn feed(
        p: &mut MetricsPipeline,
        ticks: std::ops::RangeInclusive<u32>,
        run_start: f64,
        cores: f64,
    ) -> Vec<(f64, Option<CpuMetric>)> {
        ticks
            .map(|t| {
                let t = f64::from(t);
                p.tick(t);
                if t >= run_start {
                    p.observe(t, "p", cores * (t - run_start), run_start);
                }
                (t, p.metric("p"))
            })
            .collect()
    }

    /// Scrapes at 0, 15, 30, ...
    fn pipeline() -> MetricsPipeline {
        MetricsPipeline::new(DEFAULT_METRIC_RESOLUTION, 0.0)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_pod_gets_a_metric_after_two_scrapes_or_one_when_fresh() {
        // (run start, first tick with a metric, its window)
        let cases = [
            // 0.5 s old at the scrape at 0: rated between 0 and 15.
            (-0.5, 15.0, 15.0),
            // Started at the scrape at 0: no point after its start there, and 15 s old
            // (not fresh) at 15: rated between 15 and 30.
            (0.0, 30.0, 15.0),
            // 10 s old at 15: fresh, rated from its start.
            (5.0, 15.0, 10.0),
            // 11.5 s old at 15: fresh.
            (3.5, 15.0, 11.5),
            // 6.5 s old at 15: too young, rated between 15 and 30.
            (8.5, 30.0, 15.0),
        ];
        for (run_start, first, window) in cases {
            let mut p = pipeline();
            let seen = feed(&mut p, 0..=50, run_start, 0.5);
            let Some((t, Some(m))) = seen.iter().find(|(_, m)| m.is_some()).copied() else {
                panic!("no metric for run start {run_start}");
            };
            assert_eq!(t, first, "run start {run_start}");
            assert!(close(m.window, window), "run start {run_start}: {m:?}");
            assert!(close(m.usage_millis, 500.0), "run start {run_start}: {m:?}");
            assert_eq!(m.timestamp, first, "run start {run_start}");
        }
    }

    #[test]
    fn the_metric_is_the_last_scrape_window_and_goes_stale_until_the_next() {
        let mut p = pipeline();
        for (t, m) in feed(&mut p, 0..=31, -0.5, 0.25) {
            if t < 15.0 {
                assert_eq!(m, None, "t={t}");
                continue;
            }
            let m = m.unwrap();
            let last_scrape = if t < 30.0 { 15.0 } else { 30.0 };
            assert_eq!((m.timestamp, m.window), (last_scrape, 15.0), "t={t}");
            assert!(close(m.usage_millis, 250.0), "t={t}: {m:?}");
        }
    }

    #[test]
    fn scrapes_happen_at_the_first_tick_at_or_after_their_schedule() {
        // Scheduled at 0.3, 15.3, 30.3, ...: taken at ticks 1 and 16; a runner stalled
        // from 16 to 50 takes one scrape at 50 and goes on with the grid at 60.3.
        let mut p = MetricsPipeline::new(DEFAULT_METRIC_RESOLUTION, 0.3);
        for t in [0.0, 1.0, 2.0, 15.0, 16.0] {
            p.observe(t, "p", t, -1.0);
        }
        let m = p.metric("p").unwrap();
        assert_eq!((m.timestamp, m.window), (16.0, 15.0));
        for t in [50.0, 60.0] {
            p.observe(t, "p", t, -1.0);
        }
        let m = p.metric("p").unwrap();
        assert_eq!((m.timestamp, m.window), (50.0, 34.0));
        p.observe(61.0, "p", 61.0, -1.0);
        assert_eq!(p.metric("p").unwrap().timestamp, 61.0);
    }

    #[test]
    fn restarts_and_absences_start_a_pod_over() {
        // Running at 1 core from -0.5 until tick 39 (scrapes at 30, 45, 60, 75); from tick
        // 40 on the runner reads (counter, run start), None when the process is down.
        type Reading = fn(f64) -> Option<(f64, f64)>;
        let cases: [(&str, Reading, f64); 4] = [
            // A process counter back near 0 in the same run: the rate 30→45 spans the
            // drop and is refused; 45→60 is good.
            ("counter back", |t| Some((t - 39.9, -0.5)), 60.0),
            // A cgroup counter counting on through a restart at 39.5: 5.5 s old at 45
            // (too young), rated 45→60.
            ("new run", |t| Some((t + 0.5, 39.5)), 60.0),
            // Down at the scrape at 45, restarted at 47.5: 12.5 s old at 60, fresh.
            (
                "fresh restart",
                |t| (t >= 48.0).then_some((39.5 + 0.5 * (t - 47.5), 47.5)),
                60.0,
            ),
            // Left out of the scrape at 45 without a restart: rated 60→75.
            ("absent", |t| (t > 45.0).then_some((t + 0.5, -0.5)), 75.0),
        ];
        for (what, reading, back) in cases {
            let mut p = pipeline();
            feed(&mut p, 0..=39, -0.5, 1.0);
            for t in 40..=80 {
                let t = f64::from(t);
                p.tick(t);
                if let Some((cpu, run_start)) = reading(t) {
                    p.observe(t, "p", cpu, run_start);
                }
                // The scrape at 30 is served until the one at 45.
                let expected = !(45.0..back).contains(&t);
                assert_eq!(p.metric("p").is_some(), expected, "{what} t={t}");
            }
        }
    }

    #[test]
    fn a_fresh_container_after_a_restart_is_rated_from_its_start() {
        // Down after tick 40 (cgroup counter 40.5), restarted at 48 at 0.5 cores: 12 s old
        // at the scrape at 60, rated from its start over 12 s.
        let mut p = pipeline();
        feed(&mut p, 0..=40, -0.5, 1.0);
        for t in 41..=60 {
            let t = f64::from(t);
            p.tick(t);
            if t > 48.0 {
                p.observe(t, "p", 40.5 + 0.5 * (t - 48.0), 48.0);
            }
        }
        let m = p.metric("p").unwrap();
        assert_eq!((m.timestamp, m.window), (60.0, 12.0));
        assert!(close(m.usage_millis, 500.0), "{m:?}");
        p.forget("p");
        assert_eq!(p.metric("p"), None);
    }

    #[test]
    fn readiness_transitions_are_dated_when_they_happen() {
        use Process::{NotStarted, Restarting, Running};
        type Tick = (f64, Process, bool, u32);
        // (ticks of (clock, process, probe passes, restarts) for a pod created at 0,
        // expected Ready, its lastTransitionTime, phase)
        let cases: [(&[Tick], bool, f64, PodPhase); 4] = [
            // Ready at 5, unready under load at 30.
            (
                &[
                    (1.0, Running, false, 0),
                    (5.0, Running, true, 0),
                    (30.0, Running, false, 0),
                ],
                false,
                30.0,
                PodPhase::Running,
            ),
            // Never ready: the transition stays at the start.
            (
                &[(1.0, Running, false, 0), (30.0, Running, false, 0)],
                false,
                0.0,
                PodPhase::Running,
            ),
            // Crashed at 20 (unready whatever the last probe said), ready again at 25.
            (
                &[
                    (5.0, Running, true, 0),
                    (20.0, Restarting, true, 0),
                    (25.0, Running, true, 1),
                ],
                true,
                25.0,
                PodPhase::Running,
            ),
            // Not started yet: pending.
            (
                &[(1.0, NotStarted, false, 0)],
                false,
                0.0,
                PodPhase::Pending,
            ),
        ];
        for (ticks, ready, transition, phase) in cases {
            let mut l = PodLifecycle::default();
            l.create(0.0, "p");
            for &(t, process, probe, restarts) in ticks {
                l.update(t, "p", process, probe, restarts);
            }
            let s = l.pod_sample("p", None, 100);
            let expected = ReadyCondition {
                ready,
                last_transition_time: transition,
            };
            assert_eq!(s.start_time, Some(0.0), "{ticks:?}");
            assert_eq!((s.phase, s.ready), (phase, Some(expected)), "{ticks:?}");
        }
    }

    #[test]
    fn the_hpa_uses_a_pod_that_went_unready_long_after_its_start() {
        let metric = CpuMetric {
            usage_millis: 100.0,
            timestamp: 400.0,
            window: 15.0,
        };
        // (when it went unready, (ready, unready) pods at a sync at 400)
        for (unready_at, groups) in [(100.0, (1, 0)), (20.0, (0, 1))] {
            let mut l = PodLifecycle::default();
            l.create(0.0, "p");
            l.update(1.0, "p", Process::Running, false, 0);
            l.update(5.0, "p", Process::Running, true, 0);
            l.update(unready_at, "p", Process::Running, false, 0);
            let mut hpa = Hpa::new(HpaConfig::new(1, 10, 100, None).unwrap()).unwrap();
            let d = hpa.sync(400.0, 1, &[l.pod_sample("p", Some(metric), 100)]);
            assert_eq!((d.ready_pods, d.unready_pods), groups, "{unready_at}");
        }
    }

    #[test]
    fn pods_without_a_reading_are_pending_or_missing() {
        let metric = CpuMetric {
            usage_millis: 200.0,
            timestamp: 400.0,
            window: 15.0,
        };
        let mut l = PodLifecycle::default();
        for pod in ["ready", "restarting", "pending"] {
            l.create(0.0, pod);
        }
        l.update(1.0, "ready", Process::Running, true, 0);
        l.update(1.0, "restarting", Process::Running, true, 0);
        l.update(2.0, "restarting", Process::Restarting, false, 1);
        l.update(2.0, "pending", Process::NotStarted, false, 0);
        let pods = [
            l.pod_sample("ready", Some(metric), 100),
            // Running phase, no metric: missing.
            l.pod_sample("restarting", None, 100),
            // Pending (a metric could not exist): unready.
            l.pod_sample("pending", Some(metric), 100),
            // Never seen: pending, unready.
            l.pod_sample("unknown", None, 100),
        ];
        assert_eq!(pods[2].cpu, None);
        let mut hpa = Hpa::new(HpaConfig::new(1, 10, 100, None).unwrap()).unwrap();
        let d = hpa.sync(400.0, 4, &pods);
        assert_eq!(
            (d.ready_pods, d.missing_metrics, d.unready_pods),
            (1, 1, 2),
            "{d:?}"
        );
    }

    #[test]
    fn a_pod_pending_for_room_has_no_start_time_until_bound() {
        let mut l = PodLifecycle::default();
        l.create_unbound(3.0, "p");
        l.update(4.0, "p", Process::NotStarted, false, 0);
        let sample = l.pod_sample("p", None, 100);
        assert_eq!(sample.phase, PodPhase::Pending);
        assert_eq!((sample.start_time, sample.ready), (None, None));
        assert!(!l.ranked(5.0, "p").bound);
        l.bind(20.0, "p");
        l.update(21.0, "p", Process::Running, false, 0);
        let sample = l.pod_sample("p", None, 100);
        assert_eq!(sample.phase, PodPhase::Running);
        assert_eq!(sample.start_time, Some(20.0));
        let ready = sample.ready.expect("a bound pod has a Ready condition");
        assert_eq!((ready.ready, ready.last_transition_time), (false, 20.0));
        let r = l.ranked(22.0, "p");
        assert_eq!((r.bound, r.created), (true, 3.0));
    }

    #[test]
    fn start_time_survives_restarts() {
        let mut l = PodLifecycle::default();
        l.create(3.0, "p");
        l.update(4.0, "p", Process::Running, true, 0);
        l.update(50.0, "p", Process::Restarting, false, 0);
        l.update(60.0, "p", Process::Running, true, 1);
        let r = l.ranked(100.0, "p");
        assert_eq!((r.created, r.restarts, r.ready_since), (3.0, 1, Some(60.0)));
        assert_eq!(l.pod_sample("p", None, 100).start_time, Some(3.0));
        l.forget("p");
        assert_eq!(l.ranked(100.0, "p").created, 100.0);
    }

    fn ranked(
        name: &str,
        running: bool,
        ready_since: Option<f64>,
        restarts: u32,
        created: f64,
    ) -> RankedPod {
        RankedPod {
            name: name.to_string(),
            bound: true,
            running,
            ready: ready_since.is_some(),
            ready_since,
            restarts,
            created,
        }
    }

    #[test]
    fn victims_are_ranked_like_the_replicaset_controller() {
        // (case, pods as (name, running, ready since, restarts, created), n, victims)
        let cases = [
            (
                "pending before running",
                vec![
                    ranked("old", true, Some(5.0), 0, 0.0),
                    ranked("pending", false, None, 0, 0.0),
                ],
                1,
                vec!["pending"],
            ),
            (
                "unscheduled before scheduled",
                vec![
                    ranked("bound", false, None, 0, 0.0),
                    RankedPod {
                        bound: false,
                        ..ranked("unbound", false, None, 0, 0.0)
                    },
                ],
                1,
                vec!["unbound"],
            ),
            (
                "unready before ready",
                vec![
                    ranked("ready", true, Some(90.0), 0, 80.0),
                    ranked("unready", true, None, 0, 0.0),
                ],
                1,
                vec!["unready"],
            ),
            (
                "more recently ready first",
                vec![
                    ranked("long", true, Some(10.0), 0, 50.0),
                    ranked("recent", true, Some(60.0), 0, 0.0),
                ],
                1,
                vec!["recent"],
            ),
            (
                "ready time before restarts",
                vec![
                    ranked("crashy", true, Some(10.0), 5, 0.0),
                    ranked("recent", true, Some(60.0), 0, 0.0),
                ],
                1,
                vec!["recent"],
            ),
            (
                "more restarts first",
                vec![
                    ranked("calm", true, None, 0, 50.0),
                    ranked("crashy", true, None, 3, 0.0),
                ],
                1,
                vec!["crashy"],
            ),
            (
                "newer first",
                vec![
                    ranked("a", true, Some(30.0), 0, 0.0),
                    ranked("b", true, Some(30.0), 0, 20.0),
                    ranked("c", true, Some(30.0), 0, 10.0),
                ],
                2,
                vec!["b", "c"],
            ),
            (
                "more than there are",
                vec![
                    ranked("a", true, Some(1.0), 0, 0.0),
                    ranked("b", false, None, 0, 0.0),
                ],
                5,
                vec!["b", "a"],
            ),
        ];
        for (what, pods, n, expected) in cases {
            assert_eq!(scale_down_victims(&pods, n), expected, "{what}");
        }
    }
}
