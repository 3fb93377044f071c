//! `meshbench compare DIR1 DIR2`: per-step differences between two runs, judged against
//! the noise of their repetitions, printed as a table and plotted together.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::analyze::{SCHEMA_VERSION, SERVICE_FIGURES, STEP_FIGURES, service_figure, step_figure};
use crate::capacity::write_table;
use crate::plots::{Chart, Line, Style};
use crate::rundir::{self, Result, RunDirError};
use crate::stats::{self, Estimate, Significance};
use crate::tables::{ServiceRow, StepRow};

/// One figure of one step (and service) in both runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparisonRow {
    /// Mesh of run A (the meshes differ only when the runs share none and have one each).
    pub mesh_a: String,
    /// Mesh of run B paired with `mesh_a`.
    pub mesh_b: String,
    /// Position of the step in the profile, 0-based; warm-up steps are not compared.
    pub step: u32,
    /// Step name from run A's profile.
    pub step_name: String,
    /// Offered rate of the step in run A, requests per second; `None` for a closed-loop step.
    pub target_rate_rps: Option<f64>,
    /// `None` for step figures.
    pub service: Option<String>,
    /// Column of the steps or services table compared (see `STEP_FIGURES`, `SERVICE_FIGURES`).
    pub figure: String,
    /// The figure over run A's repetitions.
    pub a: Estimate,
    /// The figure over run B's repetitions.
    pub b: Estimate,
    /// b − a.
    pub diff: f64,
    /// (b − a) ÷ |a| × 100; `None` when a is 0.
    pub diff_percent: Option<f64>,
    /// Whether `diff` is beyond the noise of the repetitions (Welch's test at 5 %).
    pub significance: Significance,
}

/// The comparison of two run directories.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Directory of run A, the reference.
    pub a: PathBuf,
    /// Directory of run B, compared against A.
    pub b: PathBuf,
    /// One row per figure of each step (and service) both runs have.
    pub rows: Vec<ComparisonRow>,
    /// Steps present in only one run, as text.
    pub unmatched: Vec<String>,
    /// Notes (partial runs, mesh pairing).
    pub notes: Vec<String>,
}

type Groups<'a, T> = BTreeMap<(String, u32, Option<String>), (String, Option<f64>, Vec<&'a T>)>;

fn step_groups(rows: &[StepRow]) -> Groups<'_, StepRow> {
    let mut g: Groups<'_, StepRow> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.warmup) {
        g.entry((r.mesh.clone(), r.step, None))
            .or_insert_with(|| (r.step_name.clone(), r.target_rate_rps, Vec::new()))
            .2
            .push(r);
    }
    g
}

fn service_groups<'a>(rows: &'a [ServiceRow], steps: &[StepRow]) -> Groups<'a, ServiceRow> {
    let warm: BTreeSet<(&str, u32)> = steps
        .iter()
        .filter(|r| r.warmup)
        .map(|r| (r.mesh.as_str(), r.step))
        .collect();
    let rate: BTreeMap<(&str, u32), Option<f64>> = steps
        .iter()
        .map(|r| ((r.mesh.as_str(), r.step), r.target_rate_rps))
        .collect();
    let mut g: Groups<'_, ServiceRow> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| !warm.contains(&(r.mesh.as_str(), r.step)))
    {
        let target = rate.get(&(r.mesh.as_str(), r.step)).copied().flatten();
        g.entry((r.mesh.clone(), r.step, Some(r.service.clone())))
            .or_insert_with(|| (r.step_name.clone(), target, Vec::new()))
            .2
            .push(r);
    }
    g
}

/// Pairs the meshes of two runs: every mesh they share, or their only meshes when each has
/// one (with a note).
pub(crate) fn mesh_pairs(
    a: &[StepRow],
    b: &[StepRow],
    notes: &mut Vec<String>,
) -> Vec<(String, String)> {
    let ma: BTreeSet<&str> = a.iter().map(|r| r.mesh.as_str()).collect();
    let mb: BTreeSet<&str> = b.iter().map(|r| r.mesh.as_str()).collect();
    let common: Vec<(String, String)> = ma
        .intersection(&mb)
        .map(|m| ((*m).to_owned(), (*m).to_owned()))
        .collect();
    if !common.is_empty() {
        return common;
    }
    if ma.len() == 1 && mb.len() == 1 {
        let (x, y) = (
            ma.first().copied().unwrap_or(""),
            mb.first().copied().unwrap_or(""),
        );
        notes.push(format!(
            "no mesh in common: comparing mesh {x} (A) with mesh {y} (B)"
        ));
        return vec![(x.to_owned(), y.to_owned())];
    }
    notes.push("no mesh in common and more than one mesh per run: nothing to pair".into());
    Vec::new()
}

fn compare_groups<T>(
    pairs: &[(String, String)],
    ga: &Groups<'_, T>,
    gb: &Groups<'_, T>,
    figures: &[&str],
    value: impl Fn(&T, &str) -> Option<f64>,
    rows: &mut Vec<ComparisonRow>,
    unmatched: &mut Vec<String>,
) {
    for (ma, mb) in pairs {
        for ((mesh, step, service), (name, rate, ra)) in ga.iter().filter(|(k, _)| &k.0 == ma) {
            let Some((_, _, rb)) = gb.get(&(mb.clone(), *step, service.clone())) else {
                unmatched.push(format!(
                    "A only: mesh {mesh} step {step} ({name}){}",
                    service
                        .as_ref()
                        .map_or(String::new(), |s| format!(" service {s}"))
                ));
                continue;
            };
            for fig in figures {
                let va: Vec<f64> = ra.iter().filter_map(|r| value(r, fig)).collect();
                let vb: Vec<f64> = rb.iter().filter_map(|r| value(r, fig)).collect();
                let (Some(a), Some(b)) = (stats::estimate(&va), stats::estimate(&vb)) else {
                    continue;
                };
                let diff = b.mean - a.mean;
                rows.push(ComparisonRow {
                    mesh_a: ma.clone(),
                    mesh_b: mb.clone(),
                    step: *step,
                    step_name: name.clone(),
                    target_rate_rps: *rate,
                    service: service.clone(),
                    figure: (*fig).to_owned(),
                    a,
                    b,
                    diff,
                    diff_percent: (a.mean != 0.0).then(|| diff / a.mean.abs() * 100.0),
                    significance: stats::welch(&a, &b),
                });
            }
        }
        for ((mesh, step, service), (name, _, _)) in gb.iter().filter(|(k, _)| &k.0 == mb) {
            if !ga.contains_key(&(ma.clone(), *step, service.clone())) {
                unmatched.push(format!(
                    "B only: mesh {mesh} step {step} ({name}){}",
                    service
                        .as_ref()
                        .map_or(String::new(), |s| format!(" service {s}"))
                ));
            }
        }
    }
}

/// Compares the runs in two directories (B against A).
pub fn compare(dir_a: &Path, dir_b: &Path) -> Result<Comparison> {
    let mut notes = Vec::new();
    let mut sides = Vec::new();
    for (label, dir) in [("A", dir_a), ("B", dir_b)] {
        let run = rundir::read_run_json(dir)?;
        if run.schema_version < SCHEMA_VERSION {
            notes.push(format!(
                "run {label} ({}) has report schema {}; its tables were upgraded on read \
                 (renamed columns; figures added since are unknown)",
                dir.display(),
                run.schema_version
            ));
        }
        if run.meta.partial {
            notes.push(format!(
                "run {label} ({}) is partial: {}",
                dir.display(),
                run.partial_reason.as_deref().unwrap_or("incomplete")
            ));
        }
        let steps = rundir::read_table::<StepRow>(dir)?;
        let services = rundir::read_table::<ServiceRow>(dir)?;
        sides.push((steps, services));
    }
    let (sa, va) = &sides[0];
    let (sb, vb) = &sides[1];
    let pairs = mesh_pairs(sa, sb, &mut notes);
    let mut rows = Vec::new();
    let mut unmatched = Vec::new();
    compare_groups(
        &pairs,
        &step_groups(sa),
        &step_groups(sb),
        STEP_FIGURES,
        step_figure,
        &mut rows,
        &mut unmatched,
    );
    compare_groups(
        &pairs,
        &service_groups(va, sa),
        &service_groups(vb, sb),
        SERVICE_FIGURES,
        service_figure,
        &mut rows,
        &mut unmatched,
    );
    Ok(Comparison {
        a: dir_a.to_owned(),
        b: dir_b.to_owned(),
        rows,
        unmatched,
        notes,
    })
}

fn fmt_est(e: &Estimate) -> String {
    match (e.ci95_low, e.ci95_high) {
        (Some(lo), Some(hi)) => format!("{:.3} [{lo:.3}, {hi:.3}] n={}", e.mean, e.n),
        _ => format!("{:.3} n={}", e.mean, e.n),
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "A: {}", self.a.display())?;
        writeln!(f, "B: {}", self.b.display())?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        writeln!(f)?;
        let mut rows = vec![vec![
            "mesh".to_string(),
            "step".into(),
            "service".into(),
            "figure".into(),
            "A mean [95% CI]".into(),
            "B mean [95% CI]".into(),
            "B − A".into(),
            "%".into(),
            "verdict".into(),
        ]];
        for r in &self.rows {
            rows.push(vec![
                if r.mesh_a == r.mesh_b {
                    r.mesh_a.clone()
                } else {
                    format!("{}→{}", r.mesh_a, r.mesh_b)
                },
                format!("{} {}", r.step, r.step_name),
                r.service.clone().unwrap_or_else(|| "–".into()),
                r.figure.clone(),
                fmt_est(&r.a),
                fmt_est(&r.b),
                format!("{:+.3}", r.diff),
                r.diff_percent.map_or("–".into(), |p| format!("{p:+.1}")),
                match r.significance {
                    Significance::Significant => "DIFFERENT".into(),
                    Significance::WithinNoise => "within noise".into(),
                    Significance::Unknown => "noise unknown (1 repetition)".into(),
                },
            ]);
        }
        write_table(f, &rows)?;
        for u in &self.unmatched {
            writeln!(f, "unmatched: {u}")?;
        }
        Ok(())
    }
}

impl Comparison {
    /// Charts of both runs together: served throughput and p99 latency per step (x = requested
    /// rate when every step has one, else the step index).
    pub fn charts(&self) -> Vec<Chart> {
        let step_rows: Vec<&ComparisonRow> =
            self.rows.iter().filter(|r| r.service.is_none()).collect();
        let by_rate = step_rows.iter().all(|r| r.target_rate_rps.is_some());
        let x = |r: &ComparisonRow| {
            if by_rate {
                r.target_rate_rps.unwrap_or(f64::from(r.step))
            } else {
                f64::from(r.step)
            }
        };
        let mut pairs: Vec<(&str, &str)> = step_rows
            .iter()
            .map(|r| (r.mesh_a.as_str(), r.mesh_b.as_str()))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut out = Vec::new();
        for (fig, title, y) in [
            (
                "throughput_rps",
                "Served throughput, A vs B",
                "served throughput (rps)",
            ),
            ("latency_p99_ms", "p99 latency, A vs B", "latency p99 (ms)"),
        ] {
            let mut lines = Vec::new();
            for (i, (ma, mb)) in pairs.iter().enumerate() {
                let mut pa = Vec::new();
                let mut pb = Vec::new();
                for r in step_rows
                    .iter()
                    .filter(|r| r.figure == fig && r.mesh_a == *ma && r.mesh_b == *mb)
                {
                    pa.push((x(r), r.a.mean));
                    pb.push((x(r), r.b.mean));
                }
                pa.sort_by(|a, b| a.0.total_cmp(&b.0));
                pb.sort_by(|a, b| a.0.total_cmp(&b.0));
                lines.push(Line {
                    name: format!("A {ma}"),
                    points: pa,
                    style: Style::LinePoints,
                    color: 2 * i,
                });
                lines.push(Line {
                    name: format!("B {mb}"),
                    points: pb,
                    style: Style::LinePoints,
                    color: 2 * i + 1,
                });
            }
            out.push(Chart {
                name: format!("compare-{}", fig.replace('_', "-")),
                title: title.into(),
                x_label: if by_rate {
                    "requested rate (rps)".into()
                } else {
                    "step".into()
                },
                y_label: y.into(),
                lines,
                vlines: Vec::new(),
            });
        }
        out
    }

    /// Writes the comparison charts as SVG and PNG into `out_dir/plots/`.
    pub fn write_plots(&self, out_dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(out_dir).map_err(|source| RunDirError::Io {
            path: out_dir.to_owned(),
            source,
        })?;
        let mut files = Vec::new();
        for c in self.charts() {
            let svg = crate::plots::render_svg(&c).map_err(|problem| RunDirError::Plot {
                name: c.name.clone(),
                problem,
            })?;
            files.extend(rundir::write_plot_files(out_dir, &c, &svg)?);
        }
        Ok(files)
    }
}
