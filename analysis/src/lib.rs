//! meshbench analysis: report tables, scaling figures, plots, the HTML report and the
//! capacity model.
//!
//! The runner feeds a [`RunData`] (step windows, long-form [`Sample`]s from either platform,
//! the loadgen's per-step results, the meshes' capacity inputs and the SLOs) to
//! [`RunDir::update`] after every completed step and to [`RunDir::finish`] at the end. The run
//! directory then holds the tables of `docs/report-schema.md` as Parquet and CSV, `run.json`
//! and `report.html`. [`rebuild_report`] and [`compare::compare`] work from a directory
//! alone; [`capacity::plan`] predicts from a spec alone.
//!
//! This crate links no kube and no goose: its inputs are plain types the operator converts
//! its CRDs into.

pub mod analyze;
pub mod capacity;
pub mod compare;
pub mod meta;
pub mod plots;
pub mod report;
pub mod rundir;
pub mod samples;
pub mod saturation;
pub mod scaling;
pub mod slo;
pub mod stats;
pub mod synthetic;
pub mod tables;

pub use analyze::{Analysis, RunJson, analyze};
pub use capacity::{Budget, CapacityInput, CapacityPlan, best_allocation, plan};
pub use compare::{Comparison, compare};
pub use meta::{
    AnalysisOptions, Enforcement, LimitsEnforcement, Phase, Platform, RunData, RunMeta, StepLoad,
    StepMeta,
};
pub use rundir::{ReportFiles, RunDir, RunDirError, load, rebuild_report};
pub use samples::{Sample, metric};
pub use slo::Slo;
