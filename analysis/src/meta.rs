//! What the runner tells the analysis about a run: step windows, run metadata (for
//! `run.json`), load results per step, and options.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use meshbench_loadgen::result::{LoadResult, StageResult};
use serde::{Deserialize, Serialize};

use crate::capacity::CapacityInput;
use crate::samples::Sample;
use crate::slo::Slo;

/// One step of a run, for one mesh and one repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMeta {
    /// Mesh the step ran against.
    pub mesh: String,
    /// Repetition number, 0-based.
    pub repetition: u32,
    /// Position of the step in the profile, 0-based (the warm-up, when present, is 0).
    pub index: u32,
    /// Step name from the profile (shown in tables and plots).
    pub name: String,
    /// Start of the load of this step, UTC unix ms.
    pub start_ms: i64,
    /// End of the load of this step (exclusive), UTC unix ms.
    pub end_ms: i64,
    /// Offered rate (open loop), requests per second.
    pub target_rate: Option<f64>,
    /// Users (closed loop).
    pub users: Option<u32>,
    /// A warm-up step: tabulated and plotted but excluded from SLO verdicts and sweeps.
    pub warmup: bool,
}

/// Key of a step: (mesh, repetition, index).
pub type StepKey = (String, u32, u32);

impl StepMeta {
    /// The step's key.
    pub fn key(&self) -> StepKey {
        (self.mesh.clone(), self.repetition, self.index)
    }
}

/// Where the run executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// The local runtime: worker processes on this machine.
    Local,
    /// A Kubernetes cluster, through the operator.
    Kubernetes,
    /// No platform: `meshbench simulate`'s model of one.
    Simulated,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Platform::Local => "local",
            Platform::Kubernetes => "kubernetes",
            Platform::Simulated => "simulated",
        })
    }
}

/// Whether CPU and memory limits were enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Enforced by the kernel or the kubelet as specified.
    Enforced,
    /// Some limits enforced, some not (see the reason).
    Partial,
    /// Not enforced: capacity figures of the run are not comparable with the model.
    NotEnforced,
}

impl std::fmt::Display for Enforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Enforcement::Enforced => "enforced",
            Enforcement::Partial => "partially enforced",
            Enforcement::NotEnforced => "not enforced",
        })
    }
}

/// Limits enforcement with its explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsEnforcement {
    /// Whether the limits were enforced, partly or not at all.
    pub mode: Enforcement,
    /// Why, e.g. "cgroup v2 cpu.max writable" or "no delegated cgroup".
    pub reason: String,
}

/// A phase of the run (deploy, warm-up, step, collect, …) with its timestamps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// What the phase did, e.g. a step's label.
    pub name: String,
    /// When the phase began.
    pub started_at: DateTime<Utc>,
    /// When it ended; `None` while it is still running.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Run metadata provided by the runner; `run.json` is this plus computed sections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Benchmark name (the run directory is `<benchmark>-<UTC timestamp>`).
    pub benchmark: String,
    /// The Benchmark and ServiceMesh documents as run.
    pub spec: serde_json::Value,
    /// Version of the meshbench that ran the benchmark.
    pub meshbench_version: String,
    /// Where the run executed.
    pub platform: Platform,
    /// Whether CPU and memory limits were enforced, and why; capacity figures of a run without them
    /// are not comparable with the model.
    pub limits: LimitsEnforcement,
    /// Things the reader should know about the data (missing samples, unenforced limits), one line
    /// each; the analysis adds its own.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The runner's phases in order, with their timestamps.
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// `None` while the run is in progress.
    pub finished_at: Option<DateTime<Utc>>,
    /// Steps the run planned to execute (all meshes and repetitions), when known.
    pub steps_planned: Option<u32>,
    /// True when the run stopped before its plan ended (failure, cancellation).
    #[serde(default)]
    pub partial: bool,
    /// Where the platform differs from Kubernetes (a shortened timing, something it does
    /// not emulate), one line each; empty in a cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deviations: Vec<String>,
}

/// The load result of one step: the loadgen stage that ran during it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLoad {
    /// Mesh the load was sent to.
    pub mesh: String,
    /// Repetition number, 0-based.
    pub repetition: u32,
    /// The step's `index`.
    pub step: u32,
    /// The loadgen's result for the stage, with its histograms.
    pub stage: StageResult,
}

impl StepLoad {
    /// Splits a (merged) load result whose stages are the steps of one mesh and repetition:
    /// stage `index` becomes step `index`.
    pub fn from_result(mesh: &str, repetition: u32, result: &LoadResult) -> Vec<StepLoad> {
        result
            .stages
            .iter()
            .map(|s| StepLoad {
                mesh: mesh.to_owned(),
                repetition,
                step: s.index,
                stage: s.clone(),
            })
            .collect()
    }
}

/// Tunables of the analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisOptions {
    /// Replicas must stay unchanged this long (ms) for a service to count as settled.
    pub settle_window_ms: i64,
    /// Largest number of points per line in plots (longer series are bucketed).
    pub max_plot_points: usize,
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        AnalysisOptions {
            settle_window_ms: 60_000,
            max_plot_points: 1200,
        }
    }
}

/// Everything collected for a run so far: the analysis input.
#[derive(Debug, Clone)]
pub struct RunData {
    /// Run metadata, the basis of `run.json`.
    pub meta: RunMeta,
    /// Completed steps (all meshes and repetitions).
    pub steps: Vec<StepMeta>,
    /// Samples collected so far, in any order; the analysis attributes them to steps by time.
    pub samples: Vec<Sample>,
    /// The loadgen's result of each completed step.
    pub load: Vec<StepLoad>,
    /// Capacity model input per mesh, for predictions.
    pub models: BTreeMap<String, CapacityInput>,
    /// The benchmark's SLOs; empty when it declares none.
    pub slos: Vec<Slo>,
    /// Tunables of the analysis.
    pub options: AnalysisOptions,
}

impl RunData {
    /// An empty run with the given metadata.
    pub fn new(meta: RunMeta) -> RunData {
        RunData {
            meta,
            steps: Vec::new(),
            samples: Vec::new(),
            load: Vec::new(),
            models: BTreeMap::new(),
            slos: Vec::new(),
            options: AnalysisOptions::default(),
        }
    }
}
