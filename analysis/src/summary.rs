//! The Markdown summary for CI (`--summary-md`, GitHub's `$GITHUB_STEP_SUMMARY`): a short
//! table of the steps with pass/fail, the gate checks against the baseline, and where
//! report.html is.

use std::fmt::Write as _;

use crate::gate::{BaselineKind, Check, GateReport, Outcome, RunTables, num};
use crate::tables::StepRow;

/// Rows of a table shown at most; the JUnit file and the terminal have all of them.
const MAX_ROWS: usize = 60;

/// Escapes a table cell: `|` ends a cell, a line break ends the row.
pub fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), num)
}

/// One decimal, as the terminal's step table prints rates and latencies.
fn one(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |x| format!("{x:.1}"))
}

/// The run: verdict, one row per step with its SLO verdict, and the report's path.
pub fn run_section(t: &RunTables) -> String {
    let verdict = match t.outcome() {
        Outcome::Passed if t.run.slo.pass.is_some() => "✅ completed, every SLO held",
        Outcome::Passed => "✅ completed (no SLOs)",
        Outcome::SloFailed => "❌ an SLO was violated",
        Outcome::Incomplete => "⚠️ incomplete (failed or interrupted)",
    };
    let mut md = format!(
        "### meshbench run `{}`: {verdict}\n\n",
        cell(&t.run.meta.benchmark)
    );
    if let Some(why) = t
        .run
        .partial_reason
        .as_deref()
        .filter(|_| t.run.meta.partial)
    {
        let _ = writeln!(md, "Partial: {}\n", cell(why));
    }
    md.push_str(
        "| mesh | rep | step | target | served rps | errors | p50 ms | p99 ms | SLO |\n\
         |---|--:|---|--:|--:|--:|--:|--:|---|\n",
    );
    let steps: Vec<&StepRow> = t.measured_steps().collect();
    for r in steps.iter().take(MAX_ROWS) {
        md.push_str(&step_row(t, r));
    }
    if steps.len() > MAX_ROWS {
        let _ = writeln!(
            md,
            "\n… and {} more step(s) in the report.",
            steps.len() - MAX_ROWS
        );
    }
    for s in &t.run.saturation {
        let _ = writeln!(md, "\n{}", cell(&s.summary));
    }
    let _ = writeln!(md, "\nReport: `{}`\n", t.dir.join("report.html").display());
    md
}

fn step_row(t: &RunTables, r: &StepRow) -> String {
    let target = r
        .target_rate_rps
        .map(|v| format!("{v} rps"))
        .or(r.users.map(|u| format!("{u} users")))
        .unwrap_or_else(|| "–".into());
    let slo = match r.slo_pass {
        Some(true) => "✅ pass".to_string(),
        Some(false) => format!("❌ {}", r.slo_violations.as_deref().unwrap_or("fail")),
        None if t.run.slos.is_empty() => "–".into(),
        None => "?".into(),
    };
    let errors = r
        .error_ratio
        .map_or_else(|| "–".into(), |e| format!("{:.2} %", e * 100.0));
    format!(
        "| {} | {} | {} {} | {target} | {} | {errors} | {} | {} | {} |\n",
        cell(&r.mesh),
        r.repetition,
        r.step,
        cell(&r.step_name),
        one(r.throughput_rps),
        one(r.latency_p50_ms),
        one(r.latency_p99_ms),
        cell(&slo)
    )
}

/// The gate checks against the baseline, failures first.
pub fn gate_section(g: &GateReport) -> String {
    let failed = g.failures().count();
    let verdict = if failed == 0 {
        format!("✅ all {} check(s) passed", g.checks.len())
    } else {
        format!("❌ {failed} of {} check(s) failed", g.checks.len())
    };
    let what = match g.baseline_kind {
        BaselineKind::Run => "the baseline run",
        BaselineKind::Expectations => "the expectations",
    };
    let mut md = format!(
        "### Gates against {what} `{}`: {verdict}\n\n",
        g.baseline.display()
    );
    for n in &g.notes {
        let _ = writeln!(md, "Note: {}\n", cell(n));
    }
    md.push_str(
        "| gate | where | figure | baseline | new | allowed | beyond by | noise | verdict |\n\
         |---|---|---|--:|--:|--:|--:|---|---|\n",
    );
    let ordered = g.failures().chain(g.checks.iter().filter(|c| c.pass));
    for c in ordered.take(MAX_ROWS) {
        md.push_str(&gate_row(c));
    }
    if g.checks.len() > MAX_ROWS {
        let _ = writeln!(
            md,
            "\n… and {} more check(s) in the JUnit file.",
            g.checks.len() - MAX_ROWS
        );
    }
    md.push('\n');
    md
}

fn gate_row(c: &Check) -> String {
    let beyond = match c.excess() {
        Some((over, pct)) if over > 0.0 => match pct {
            Some(p) => format!("{} ({p:.1} %)", num(over)),
            None => num(over),
        },
        _ => "–".into(),
    };
    format!(
        "| `{}` | {} | {} | {} | {} | {} | {beyond} | {} | {} |\n",
        cell(&c.gate),
        cell(&c.place()),
        cell(&c.figure),
        opt(c.baseline.map(|b| b.mean)),
        c.measured
            .map_or_else(|| "not measured".into(), |m| num(m.mean)),
        cell(&c.bound.to_string()),
        c.noise,
        if c.pass { "✅ pass" } else { "❌ FAIL" }
    )
}
