//! Writing a Benchmark's status: conditionally on the resourceVersion the reconcile read,
//! and bounded in size.
//!
//! Every write carries the resourceVersion of the object the reconcile started from (then
//! of its own last write), so a reconcile working from a stale cache fails with a
//! conflict instead of rolling a newer status back or starting a second run; the
//! controller then reconciles again from the fresh object.

use kube::api::{Api, Patch, PatchParams};
use meshbench_analysis::Analysis;
use meshbench_analysis::tables::StepRow;
use meshbench_crds::Benchmark;
use meshbench_crds::benchmark::{BenchmarkStatus, Phase, StepSummary};

use super::{BenchControllerError, Result, RunState, k8s_now, kube_err, rfc3339};
use crate::experiment::ExperimentSchedule;
use crate::k8s::FIELD_MANAGER;
use crate::k8s::shared::set_condition;

/// How many step summaries the status holds: the latest ones. The report on the volume
/// has every step; the status must stay far below etcd's object size limit (1.5 MiB)
/// for the largest schedule the CRD allows (16 meshes × 100 repetitions × 200 steps).
pub const STATUS_STEPS: usize = 20;

/// The Benchmark's status as this reconcile knows it, written only when changed and only
/// over the version it was read from.
pub(super) struct StatusWriter {
    api: Api<Benchmark>,
    name: String,
    resource_version: Option<String>,
    written: BenchmarkStatus,
}

impl StatusWriter {
    /// A writer for `bench` as the reconcile received it.
    pub(super) fn new(api: Api<Benchmark>, bench: &Benchmark) -> Self {
        Self {
            api,
            name: bench.metadata.name.clone().unwrap_or_default(),
            resource_version: bench.metadata.resource_version.clone(),
            written: bench.status.clone().unwrap_or_default(),
        }
    }

    /// Takes the resourceVersion of a write to the Benchmark made meanwhile by this
    /// reconcile.
    pub(super) fn set_resource_version(&mut self, resource_version: Option<String>) {
        if resource_version.is_some() {
            self.resource_version = resource_version;
        }
    }

    /// The resourceVersion the next write goes over.
    pub(super) fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// The status last read or written.
    pub(super) fn current(&self) -> &BenchmarkStatus {
        &self.written
    }

    /// Writes `status` if it differs from the last one. [`BenchControllerError::Stale`] when the object
    /// changed since it was read.
    pub(super) async fn write(&mut self, status: &BenchmarkStatus) -> Result<()> {
        if *status == self.written {
            return Ok(());
        }
        let patch = serde_json::json!({
            "apiVersion": "meshbench.io/v1alpha1",
            "kind": "Benchmark",
            // Server-side apply takes a resourceVersion in the body as a precondition.
            "metadata": { "resourceVersion": self.resource_version },
            "status": status,
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        match self
            .api
            .patch_status(&self.name, &pp, &Patch::Apply(&patch))
            .await
        {
            Ok(b) => {
                self.resource_version = b.metadata.resource_version;
                self.written = status.clone();
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Err(BenchControllerError::Stale(self.name.clone()))
            }
            Err(e) => Err(kube_err(format!(
                "writing the status of Benchmark {}",
                self.name
            ))(e)),
        }
    }

    /// Writes the status fields derived from the run's state, and the state itself.
    pub(super) async fn write_state(
        &mut self,
        status: &mut BenchmarkStatus,
        state: &RunState,
        schedule: &ExperimentSchedule,
    ) -> Result<()> {
        apply_state(status, state, schedule);
        self.write(status).await
    }
}

/// The status fields derived from the machine, and the state itself.
pub(super) fn apply_state(
    status: &mut BenchmarkStatus,
    state: &RunState,
    schedule: &ExperimentSchedule,
) {
    status.phase = state.machine.phase;
    status.next_step = i32::try_from(state.machine.completed_steps).unwrap_or(i32::MAX);
    status.current_step = (!state.machine.phase.is_terminal()).then(|| {
        format!(
            "{} (step {}/{})",
            state.machine.describe_position(schedule),
            state.machine.completed_steps + 1,
            schedule.total_steps()
        )
    });
    status.state = serde_json::to_value(state).ok();
}

/// The end of a run in the status: `Complete` and `Failed` as a Job has them.
pub(super) fn finish(status: &mut BenchmarkStatus, state: &RunState, generation: Option<i64>) {
    status.finished_at = Some(rfc3339(chrono::Utc::now()));
    let ok = state.machine.phase == Phase::Succeeded;
    let reason = if state.machine.cancelled {
        "Cancelled"
    } else if ok {
        "Succeeded"
    } else {
        "Failed"
    };
    let message = if state.machine.failures.is_empty() {
        format!("{} step(s) completed", state.machine.completed_steps)
    } else {
        state.machine.failure_lines().join("; ")
    };
    set_outcome(status, ok, reason, message, generation);
}

/// Sets `Complete` to `ok` and `Failed` to its opposite, with one reason and message.
pub(super) fn set_outcome(
    status: &mut BenchmarkStatus,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) {
    let now = k8s_now();
    set_condition(
        &mut status.conditions,
        "Complete",
        ok,
        reason,
        message.clone(),
        generation,
        &now,
    );
    set_condition(
        &mut status.conditions,
        "Failed",
        !ok,
        reason,
        message,
        generation,
        &now,
    );
}

/// The step summaries and aggregates of the status, from the latest analysis: the latest
/// [`STATUS_STEPS`] steps only.
pub(super) fn summarise(status: &mut BenchmarkStatus, analysis: &Analysis) {
    let first = analysis.steps.len().saturating_sub(STATUS_STEPS);
    status.steps = analysis.steps[first..]
        .iter()
        .map(|row| step_summary(row, analysis))
        .collect();
    status.saturation = analysis
        .run
        .saturation
        .iter()
        .map(|m| m.summary.clone())
        .collect();
    if let Some(last) = status.steps.last() {
        status.throughput_rps = Some(last.throughput_rps);
        status.p99_ms = Some(last.p99_ms);
    }
}

fn step_summary(row: &StepRow, analysis: &Analysis) -> StepSummary {
    let verdicts =
        || {
            analysis.run.slo.steps.iter().filter(|s| {
                s.mesh == row.mesh && s.repetition == row.repetition && s.step == row.step
            })
        };
    StepSummary {
        mesh: row.mesh.clone(),
        repetition: row.repetition as i32,
        step: row.step as i32,
        target: row
            .target_rate_rps
            .or(row.users.map(f64::from))
            .unwrap_or_default(),
        throughput_rps: row.throughput_rps.unwrap_or_default(),
        sent_rps: row.sent_rate_rps.unwrap_or_default(),
        saturation: row.saturation.clone(),
        error_rate: row.error_ratio.unwrap_or_default(),
        p50_ms: row.latency_p50_ms.unwrap_or_default(),
        p99_ms: row.latency_p99_ms.unwrap_or_default(),
        slo_passed: verdicts().all(|s| s.pass),
        violations: verdicts()
            .flat_map(|s| s.violations.iter().map(|v| v.to_string()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::Outcome;
    use meshbench_crds::benchmark::BenchmarkSpec;
    use meshbench_crds::mesh::ServiceMeshSpec;
    use meshbench_crds::{Benchmark, ServiceMesh, ValidBenchmark};

    /// The largest schedule the CRD admits, with names at their longest.
    fn largest_spec() -> BenchmarkSpec {
        let long = |i: usize| format!("{i:02}{}", "m".repeat(61));
        let stages: Vec<String> = (0..200)
            .map(|i| format!("{{ rate: {}, duration: 1s }}", i + 1))
            .collect();
        let meshes: Vec<String> = (0..16).map(long).collect();
        let yaml = format!(
            "meshes: [{}]\ntarget: {{ service: api, path: / }}\nload: {{ model: open }}\nrepetitions: 100\nprofile:\n  stages: [{}]\n",
            meshes.join(", "),
            stages.join(", ")
        );
        serde_yaml::from_str(&yaml).expect("spec")
    }

    /// `spec` as a validated Benchmark named `b`, checked against meshes of the names it
    /// uses, each serving its target.
    fn valid(spec: BenchmarkSpec) -> ValidBenchmark {
        let meshes: Vec<ServiceMesh> = spec
            .meshes
            .iter()
            .map(|name| {
                let mesh: ServiceMeshSpec =
                    serde_yaml::from_str("services:\n  - name: api\n    endpoints: [{path: /}]\n")
                        .expect("mesh spec");
                ServiceMesh::new(name, mesh)
            })
            .collect();
        let refs: Vec<&ServiceMesh> = meshes.iter().collect();
        ValidBenchmark::new(Benchmark::new("b", spec), &refs).expect("valid benchmark")
    }

    fn summary(i: usize) -> StepSummary {
        StepSummary {
            mesh: format!("{i:02}{}", "m".repeat(61)),
            repetition: 99,
            step: 199,
            target: 1e6,
            throughput_rps: 123_456.789,
            sent_rps: 123_456.789,
            saturation: Some("s".repeat(300)),
            error_rate: 0.123_456,
            p50_ms: 1234.5678,
            p99_ms: 12345.678,
            slo_passed: false,
            violations: vec!["v".repeat(200); 4],
        }
    }

    /// The status of the largest allowed run, every step failing (the worst case for the
    /// failure messages), stays far below etcd's 1.5 MiB object limit.
    #[test]
    fn the_largest_plan_keeps_the_status_small() {
        let schedule = ExperimentSchedule::new(&valid(largest_spec()));
        assert_eq!(schedule.total_steps(), 16 * 100 * 200);
        let mut state = RunState::new(0);
        let mut transitions = 0usize;
        while !state.machine.phase.is_terminal() {
            let outcome = match state.machine.action(&schedule) {
                crate::experiment::Action::RunStep { .. } => Outcome::Failed("x".repeat(500)),
                _ => Outcome::Ok,
            };
            state.machine.advance(&schedule, outcome);
            transitions += 1;
            assert!(transitions < 10_000_000, "the machine does not end");
        }
        let mut status = BenchmarkStatus {
            steps: (0..STATUS_STEPS).map(summary).collect(),
            saturation: (0..16).map(|_| "s".repeat(400)).collect(),
            ..BenchmarkStatus::default()
        };
        apply_state(&mut status, &state, &schedule);
        finish(&mut status, &state, Some(1));
        let bytes = serde_json::to_vec(&status).unwrap().len();
        assert!(bytes < 128 * 1024, "status of {bytes} bytes");
        assert!(
            state.machine.failures_omitted > 0,
            "the bound was exercised"
        );
        let message = &status
            .conditions
            .iter()
            .find(|c| c.type_ == "Failed")
            .unwrap()
            .message;
        assert!(message.contains("more failed phase(s)"), "{message}");
    }
}
