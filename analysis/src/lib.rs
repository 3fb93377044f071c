//! meshbench analysis: report tables, scaling figures, plots, the HTML report and the
//! capacity model.
//!
//! The runner feeds a [`RunData`] (step windows, long-form [`Sample`]s from either platform,
//! the loadgen's per-step results, the meshes' capacity inputs and the SLOs) to
//! [`RunDir::update`] after every completed step and to [`RunDir::finish`] at the end. The run
//! directory then holds the tables of `docs/report-schema.md` as Parquet and CSV, `run.json`
//! and `report.html`. [`rebuild_report`] and [`compare::compare`] work from a directory
//! alone; [`capacity::plan`] predicts from a spec alone. [`gate`] turns a comparison (with a
//! run or with an [`expect`]ations file) into a verdict, and [`ci`] writes what CI systems
//! read: JUnit XML ([`junit`]) and a Markdown summary ([`summary`]).
//!
//! This crate links no kube and no goose: its inputs are plain types the operator converts
//! its CRDs into.

pub mod analyze;
pub mod capacity;
pub mod ci;
pub mod compare;
pub mod expect;
pub mod gate;
pub mod junit;
pub mod meta;
pub mod plots;
pub mod report;
pub mod rundir;
pub mod samples;
pub mod saturation;
pub mod scaling;
pub mod slo;
pub mod stats;
pub mod summary;
pub mod synthetic;
pub mod tables;

pub use analyze::{Analysis, RunJson, analyze};
pub use capacity::{Budget, CapacityInput, CapacityPlan, best_allocation, plan};
pub use compare::{Comparison, compare};
pub use gate::{Baseline, GateReport, Rule, RunTables};
pub use meta::{
    AnalysisOptions, Enforcement, LimitsEnforcement, Phase, Platform, RunData, RunMeta, StepLoad,
    StepMeta,
};
pub use rundir::{ReportFiles, RunDir, RunDirError, load, rebuild_report};
pub use samples::{Sample, metric};
pub use slo::Slo;
