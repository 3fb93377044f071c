//! The experiment state machine, written once and driven by either platform.
//!
//! It is pure and serialisable: [`Machine::action`] says what to do next and
//! [`Machine::advance`] takes the outcome. The local runtime drives it in a loop; the
//! Kubernetes controller keeps it in the Benchmark's status and advances it one reconcile
//! at a time, so an operator restart resumes where it was.

use std::time::Duration;

use meshbench_crds::ValidBenchmark;
use meshbench_crds::benchmark::{LoadKind, Phase, RedeployPolicy, StepFailurePolicy};
use meshbench_crds::resolve::PlannedStep;
use serde::{Deserialize, Serialize};

/// What a benchmark will do, derived from its spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentSchedule {
    /// Benchmark name.
    pub benchmark: String,
    /// Meshes, in order.
    pub meshes: Vec<String>,
    /// Repetitions of the whole profile per mesh.
    pub repetitions: u32,
    /// Measured steps of one repetition.
    pub steps: Vec<PlannedStep>,
    /// Warm-up run after every (re)deployment, before the first measured step.
    pub warmup: Option<PlannedStep>,
    /// Pause after each step's load before collecting.
    pub settle: Duration,
    /// When to deploy again.
    pub redeploy: RedeployPolicy,
    /// What a failed step does.
    pub on_failure: StepFailurePolicy,
    /// Open or closed loop.
    pub model: LoadKind,
}

impl ExperimentSchedule {
    /// Builds the schedule of a validated benchmark.
    pub fn new(bench: &ValidBenchmark) -> Self {
        let spec = bench.spec();
        let steps = bench.steps().to_vec();
        let warmup = spec.warmup.as_ref().map(|w| PlannedStep {
            index: 0,
            name: "warmup".to_string(),
            rate: match spec.load.model {
                LoadKind::Open => w.rate.or(steps.first().and_then(|s| s.rate)),
                LoadKind::Closed => None,
            },
            users: match spec.load.model {
                LoadKind::Open => None,
                LoadKind::Closed => w
                    .users
                    .map(|u| u.max(1) as u32)
                    .or(steps.first().and_then(|s| s.users)),
            },
            duration: w.duration.get(),
        });
        Self {
            benchmark: bench.name().to_string(),
            meshes: spec.meshes.clone(),
            repetitions: spec.repetitions.unwrap_or(1).max(1) as u32,
            steps,
            warmup,
            settle: spec.settle.as_ref().map(|s| s.get()).unwrap_or_default(),
            redeploy: spec.redeploy.unwrap_or_default(),
            on_failure: spec.on_step_failure.unwrap_or_default(),
            model: spec.load.model,
        }
    }

    /// Measured steps over all meshes and repetitions.
    pub fn total_steps(&self) -> usize {
        self.meshes.len() * self.repetitions as usize * self.steps.len()
    }
}

/// Position in the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cursor {
    /// Index into [`ExperimentSchedule::meshes`].
    pub mesh: usize,
    /// Repetition, 0-based.
    pub repetition: u32,
    /// Index into [`ExperimentSchedule::steps`].
    pub step: usize,
}

/// What the platform must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Deploy (or redeploy) mesh `mesh` and return once its objects exist.
    Deploy {
        /// Mesh index.
        mesh: usize,
    },
    /// Wait until every service of the mesh has its replicas ready.
    WaitReady {
        /// Mesh index.
        mesh: usize,
    },
    /// Run the warm-up load; its data is kept apart from the steps.
    WarmUp {
        /// Where.
        cursor: Cursor,
    },
    /// Run one measured step's load.
    RunStep {
        /// Which step.
        cursor: Cursor,
    },
    /// Wait before collecting, letting the system settle.
    Settle {
        /// How long.
        duration: Duration,
    },
    /// Collect the metrics of the step just run.
    Collect {
        /// Which step.
        cursor: Cursor,
    },
    /// Remove the deployed mesh.
    Teardown {
        /// Mesh index.
        mesh: usize,
    },
    /// Build the report from everything collected.
    Analyse,
    /// Nothing more to do.
    Finished,
}

/// The result of carrying out an action.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It worked.
    Ok,
    /// It failed; the message is recorded.
    Failed(String),
    /// The user or the system asked the run to stop.
    Cancelled,
}

/// How many failure messages a [`Machine`] keeps; later ones are counted.
pub const MAX_FAILURE_MESSAGES: usize = 20;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The persisted state of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// Current phase (also what `kubectl get benchmarks` shows).
    pub phase: Phase,
    /// Current position.
    pub cursor: Cursor,
    /// Mesh currently deployed, if any.
    pub deployed: Option<usize>,
    /// The first [`MAX_FAILURE_MESSAGES`] failures, human readable. Bounded because the
    /// machine lives in a Benchmark's status: a run of many failing steps must stay far
    /// below etcd's object size limit.
    pub failures: Vec<String>,
    /// Failures past the first [`MAX_FAILURE_MESSAGES`], counted only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures_omitted: usize,
    /// Steps completed (collected).
    pub completed_steps: usize,
    /// The run stopped early (failure with `onStepFailure: stop`, fatal error, cancel).
    pub stopped_early: bool,
    /// Cancellation was requested.
    pub cancelled: bool,
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

impl Machine {
    /// A run that has not started.
    pub fn new() -> Self {
        Self {
            phase: Phase::Pending,
            cursor: Cursor::default(),
            deployed: None,
            failures: Vec::new(),
            failures_omitted: 0,
            completed_steps: 0,
            stopped_early: false,
            cancelled: false,
        }
    }

    /// The action for the current phase.
    pub fn action(&self, schedule: &ExperimentSchedule) -> Action {
        let c = self.cursor;
        match self.phase {
            Phase::Pending | Phase::Validating => Action::Deploy { mesh: c.mesh },
            // Whatever is deployed goes first: another mesh, or this one for a clean slate.
            Phase::Deploying => match self.deployed {
                Some(m) => Action::Teardown { mesh: m },
                None => Action::Deploy { mesh: c.mesh },
            },
            Phase::WaitingReady => Action::WaitReady { mesh: c.mesh },
            Phase::WarmingUp => Action::WarmUp { cursor: c },
            Phase::Running => Action::RunStep { cursor: c },
            Phase::Settling => Action::Settle {
                duration: schedule.settle,
            },
            Phase::Collecting => Action::Collect { cursor: c },
            Phase::Analysing => match self.deployed {
                Some(m) => Action::Teardown { mesh: m },
                None => Action::Analyse,
            },
            Phase::Succeeded | Phase::Failed => Action::Finished,
        }
    }

    /// The run's overall result once finished: failed when any step failed or the run
    /// stopped early.
    pub fn failed(&self) -> bool {
        self.stopped_early || !self.failures.is_empty()
    }

    /// Every failure message kept, then a line counting the omitted ones.
    pub fn failure_lines(&self) -> Vec<String> {
        let mut lines = self.failures.clone();
        if self.failures_omitted > 0 {
            lines.push(format!(
                "… and {} more failed phase(s), not listed",
                self.failures_omitted
            ));
        }
        lines
    }

    /// Takes the outcome of [`Machine::action`] and moves to the next phase.
    pub fn advance(&mut self, schedule: &ExperimentSchedule, outcome: Outcome) {
        let action = self.action(schedule);
        if outcome == Outcome::Cancelled {
            self.cancelled = true;
            self.stopped_early = true;
            // Keep what was measured: tear down and analyse.
            self.phase = match self.phase {
                Phase::Analysing => {
                    if matches!(action, Action::Teardown { .. }) {
                        self.deployed = None;
                        Phase::Analysing
                    } else {
                        Phase::Failed
                    }
                }
                Phase::Succeeded | Phase::Failed => self.phase,
                _ => Phase::Analysing,
            };
            return;
        }
        if let Outcome::Failed(msg) = &outcome {
            if self.failures.len() < MAX_FAILURE_MESSAGES {
                self.failures
                    .push(format!("{}: {msg}", describe(&action, schedule)));
            } else {
                self.failures_omitted += 1;
            }
        }
        let ok = outcome == Outcome::Ok;
        match action {
            Action::Teardown { .. } if self.phase == Phase::Analysing => {
                self.deployed = None;
            }
            Action::Teardown { .. } => {
                // Switching meshes or redeploying: now deploy the current one.
                self.deployed = None;
            }
            Action::Deploy { mesh } => {
                if ok {
                    self.deployed = Some(mesh);
                    self.phase = Phase::WaitingReady;
                } else {
                    self.deployed = Some(mesh);
                    self.stop();
                }
            }
            Action::WaitReady { .. } => {
                if ok {
                    self.phase = if schedule.warmup.is_some() {
                        Phase::WarmingUp
                    } else {
                        Phase::Running
                    };
                } else {
                    self.stop();
                }
            }
            Action::WarmUp { .. } => {
                // A failed warm-up is recorded but the steps still run.
                self.phase = Phase::Running;
            }
            Action::RunStep { .. } => {
                if !ok && schedule.on_failure == StepFailurePolicy::Stop {
                    // Collect what the failed step produced, then stop.
                    self.stopped_early = true;
                }
                self.phase = Phase::Settling;
            }
            Action::Settle { .. } => self.phase = Phase::Collecting,
            Action::Collect { .. } => {
                self.completed_steps += 1;
                if self.stopped_early {
                    self.phase = Phase::Analysing;
                } else {
                    self.next_step(schedule);
                }
            }
            Action::Analyse => {
                self.phase = if self.failed() {
                    Phase::Failed
                } else {
                    Phase::Succeeded
                };
            }
            Action::Finished => {}
        }
    }

    fn stop(&mut self) {
        self.stopped_early = true;
        self.phase = Phase::Analysing;
    }

    fn next_step(&mut self, schedule: &ExperimentSchedule) {
        let mut c = self.cursor;
        c.step += 1;
        let mut redeploy = schedule.redeploy == RedeployPolicy::PerStep;
        if c.step >= schedule.steps.len() {
            c.step = 0;
            c.repetition += 1;
            redeploy |= schedule.redeploy == RedeployPolicy::PerMesh;
            if c.repetition >= schedule.repetitions {
                c.repetition = 0;
                c.mesh += 1;
                redeploy = true;
                if c.mesh >= schedule.meshes.len() {
                    self.phase = Phase::Analysing;
                    return;
                }
            }
        }
        self.cursor = c;
        self.phase = if redeploy {
            Phase::Deploying
        } else {
            Phase::Running
        };
    }

    /// Human-readable position, e.g. `quickstart rep 1/2 step 3/5 (rate-30)`.
    pub fn describe_position(&self, schedule: &ExperimentSchedule) -> String {
        let c = self.cursor;
        let step = schedule
            .steps
            .get(c.step)
            .map(|s| s.name.as_str())
            .unwrap_or("");
        format!(
            "{} rep {}/{} step {}/{} ({step})",
            schedule
                .meshes
                .get(c.mesh)
                .map(String::as_str)
                .unwrap_or("?"),
            c.repetition + 1,
            schedule.repetitions,
            c.step + 1,
            schedule.steps.len()
        )
    }
}

/// A short label of an action, for phase records and logs.
pub fn phase_label(action: &Action, schedule: &ExperimentSchedule) -> String {
    let mesh = |m: usize| schedule.meshes.get(m).cloned().unwrap_or_default();
    match action {
        Action::Deploy { mesh: m } => format!("deploy {}", mesh(*m)),
        Action::WaitReady { mesh: m } => format!("wait-ready {}", mesh(*m)),
        Action::WarmUp { cursor } => format!("warmup {}", mesh(cursor.mesh)),
        Action::RunStep { cursor } => format!(
            "step {} rep {} {}",
            mesh(cursor.mesh),
            cursor.repetition,
            schedule
                .steps
                .get(cursor.step)
                .map(|s| s.name.as_str())
                .unwrap_or("")
        ),
        Action::Settle { .. } => "settle".into(),
        Action::Collect { .. } => "collect".into(),
        Action::Teardown { mesh: m } => format!("teardown {}", mesh(*m)),
        Action::Analyse => "analyse".into(),
        Action::Finished => "finished".into(),
    }
}

fn describe(action: &Action, schedule: &ExperimentSchedule) -> String {
    let mesh = |m: usize| {
        schedule
            .meshes
            .get(m)
            .cloned()
            .unwrap_or_else(|| "?".into())
    };
    match action {
        Action::Deploy { mesh: m } => format!("deploy {}", mesh(*m)),
        Action::WaitReady { mesh: m } => format!("wait ready {}", mesh(*m)),
        Action::WarmUp { cursor } => format!("warm-up {}", mesh(cursor.mesh)),
        Action::RunStep { cursor } | Action::Collect { cursor } => format!(
            "{} rep {} step {}",
            mesh(cursor.mesh),
            cursor.repetition,
            schedule
                .steps
                .get(cursor.step)
                .map(|s| s.name.as_str())
                .unwrap_or("?")
        ),
        Action::Settle { .. } => "settle".into(),
        Action::Teardown { mesh: m } => format!("teardown {}", mesh(*m)),
        Action::Analyse => "analyse".into(),
        Action::Finished => "finished".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(
        steps: usize,
        reps: u32,
        meshes: usize,
        redeploy: RedeployPolicy,
        warmup: bool,
    ) -> ExperimentSchedule {
        ExperimentSchedule {
            benchmark: "b".into(),
            meshes: (0..meshes).map(|i| format!("m{i}")).collect(),
            repetitions: reps,
            steps: (0..steps)
                .map(|i| PlannedStep {
                    index: i,
                    name: format!("s{i}"),
                    rate: Some(10.0),
                    users: None,
                    duration: Duration::from_secs(1),
                })
                .collect(),
            warmup: warmup.then(|| PlannedStep {
                index: 0,
                name: "warmup".into(),
                rate: Some(1.0),
                users: None,
                duration: Duration::from_secs(1),
            }),
            settle: Duration::ZERO,
            redeploy,
            on_failure: StepFailurePolicy::Continue,
            model: LoadKind::Open,
        }
    }

    /// Runs the machine to the end, failing the actions `fail` selects; returns the trace.
    fn drive(p: &ExperimentSchedule, fail: impl Fn(&Action) -> bool) -> (Machine, Vec<Action>) {
        let mut m = Machine::new();
        let mut trace = Vec::new();
        for _ in 0..10_000 {
            let a = m.action(p);
            if a == Action::Finished {
                break;
            }
            let outcome = if fail(&a) {
                Outcome::Failed("boom".into())
            } else {
                Outcome::Ok
            };
            trace.push(a);
            m.advance(p, outcome);
        }
        (m, trace)
    }

    fn count(trace: &[Action], f: impl Fn(&Action) -> bool) -> usize {
        trace.iter().filter(|a| f(a)).count()
    }

    #[test]
    fn runs_every_step_of_every_mesh_and_repetition() {
        let p = schedule(3, 2, 2, RedeployPolicy::Never, true);
        let (m, trace) = drive(&p, |_| false);
        assert_eq!(m.phase, Phase::Succeeded);
        assert_eq!(count(&trace, |a| matches!(a, Action::RunStep { .. })), 12);
        assert_eq!(count(&trace, |a| matches!(a, Action::Collect { .. })), 12);
        // One deployment per mesh; the second replaces the first.
        assert_eq!(count(&trace, |a| matches!(a, Action::Deploy { .. })), 2);
        assert_eq!(count(&trace, |a| matches!(a, Action::Teardown { .. })), 2);
        assert_eq!(count(&trace, |a| matches!(a, Action::WarmUp { .. })), 2);
        assert_eq!(trace.last(), Some(&Action::Analyse));
        assert_eq!(m.completed_steps, 12);
    }

    #[test]
    fn per_step_redeploy_deploys_before_every_step() {
        let p = schedule(3, 1, 1, RedeployPolicy::PerStep, true);
        let (_, trace) = drive(&p, |_| false);
        assert_eq!(count(&trace, |a| matches!(a, Action::Deploy { .. })), 3);
        assert_eq!(count(&trace, |a| matches!(a, Action::WarmUp { .. })), 3);
        assert_eq!(count(&trace, |a| matches!(a, Action::Teardown { .. })), 3);
    }

    #[test]
    fn per_mesh_redeploy_deploys_per_repetition() {
        let p = schedule(2, 3, 1, RedeployPolicy::PerMesh, false);
        let (_, trace) = drive(&p, |_| false);
        assert_eq!(count(&trace, |a| matches!(a, Action::Deploy { .. })), 3);
    }

    #[test]
    fn failed_step_continues_by_default_and_fails_the_run() {
        let p = schedule(3, 1, 1, RedeployPolicy::Never, false);
        let (m, trace) = drive(
            &p,
            |a| matches!(a, Action::RunStep { cursor } if cursor.step == 1),
        );
        assert_eq!(count(&trace, |a| matches!(a, Action::Collect { .. })), 3);
        assert_eq!(m.phase, Phase::Failed);
        assert_eq!(m.failures.len(), 1);
    }

    #[test]
    fn failed_step_with_stop_policy_collects_then_stops() {
        let mut p = schedule(3, 1, 1, RedeployPolicy::Never, false);
        p.on_failure = StepFailurePolicy::Stop;
        let (m, trace) = drive(
            &p,
            |a| matches!(a, Action::RunStep { cursor } if cursor.step == 0),
        );
        assert_eq!(count(&trace, |a| matches!(a, Action::Collect { .. })), 1);
        assert!(m.stopped_early);
        assert_eq!(m.phase, Phase::Failed);
        assert!(trace.contains(&Action::Teardown { mesh: 0 }));
    }

    #[test]
    fn failed_deploy_tears_down_and_analyses() {
        let p = schedule(3, 1, 1, RedeployPolicy::Never, false);
        let (m, trace) = drive(&p, |a| matches!(a, Action::Deploy { .. }));
        assert_eq!(count(&trace, |a| matches!(a, Action::RunStep { .. })), 0);
        assert_eq!(trace.last(), Some(&Action::Analyse));
        assert_eq!(m.phase, Phase::Failed);
    }

    #[test]
    fn cancel_keeps_data_and_finishes_partial() {
        let p = schedule(3, 1, 1, RedeployPolicy::Never, false);
        let mut m = Machine::new();
        m.advance(&p, Outcome::Ok); // deploy
        m.advance(&p, Outcome::Ok); // ready
        assert_eq!(
            m.action(&p),
            Action::RunStep {
                cursor: Cursor::default()
            }
        );
        m.advance(&p, Outcome::Cancelled);
        assert_eq!(m.action(&p), Action::Teardown { mesh: 0 });
        m.advance(&p, Outcome::Ok);
        assert_eq!(m.action(&p), Action::Analyse);
        m.advance(&p, Outcome::Ok);
        assert_eq!(m.phase, Phase::Failed);
        assert!(m.cancelled);
    }

    #[test]
    fn state_survives_serialisation_mid_run() {
        let p = schedule(3, 2, 1, RedeployPolicy::Never, false);
        let mut m = Machine::new();
        for _ in 0..7 {
            m.advance(&p, Outcome::Ok);
        }
        let json = serde_json::to_string(&m).unwrap_or_default();
        let restored: Machine = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(restored, m);
        assert_eq!(restored.action(&p), m.action(&p));
    }
}
