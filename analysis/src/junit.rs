//! JUnit XML, the test report format GitHub (through report actions), GitLab
//! (`artifacts:reports:junit`) and Jenkins read: one test case per step and SLO of a run,
//! and one per gate check of a comparison, each failure with the measured value and the
//! bound.
//!
//! Written by hand: the format needs four elements and correct escaping, not a dependency.

use std::fmt::Write as _;

use crate::gate::{Check, GateReport, RunTables, num};
use crate::slo::{Slo, StepVerdict};
use crate::tables::StepRow;

/// How one test case ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// The objective held: a bare `<testcase>`.
    Passed,
    /// `<failure message="…">detail</failure>`.
    Failed {
        /// The one-line verdict (the `message` attribute).
        message: String,
        /// Measured value and bound, or why it failed (the element's text).
        detail: String,
    },
    /// `<skipped message="…"/>`: the objective does not apply.
    Skipped {
        /// Why the objective does not apply (the `message` attribute).
        message: String,
    },
}

/// One `<testcase>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Groups cases in the CI's view, e.g. `meshbench.quickstart.slo`.
    pub classname: String,
    /// What was judged, e.g. the step and the SLO.
    pub name: String,
    /// Seconds, e.g. the step's duration.
    pub time_s: Option<f64>,
    /// How the case ended.
    pub status: Status,
    /// `<system-out>`: what was measured when it passed.
    pub output: Option<String>,
}

/// One `<testsuite>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Suite {
    /// What the suite judges, e.g. `meshbench run <benchmark>`.
    pub name: String,
    /// The suite's test cases, in report order.
    pub cases: Vec<Case>,
}

impl Suite {
    fn count(&self, f: impl Fn(&Status) -> bool) -> usize {
        self.cases.iter().filter(|c| f(&c.status)).count()
    }

    /// Failed cases.
    pub fn failures(&self) -> usize {
        self.count(|s| matches!(s, Status::Failed { .. }))
    }

    /// Skipped cases.
    pub fn skipped(&self) -> usize {
        self.count(|s| matches!(s, Status::Skipped { .. }))
    }
}

/// A `<testsuites>` document.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Name of the `<testsuites>` element, e.g. `meshbench run <benchmark>`.
    pub name: String,
    /// The suites, in report order.
    pub suites: Vec<Suite>,
}

impl Report {
    /// All cases.
    pub fn tests(&self) -> usize {
        self.suites.iter().map(|s| s.cases.len()).sum()
    }

    /// Failed cases.
    pub fn failures(&self) -> usize {
        self.suites.iter().map(Suite::failures).sum()
    }

    /// The document as XML.
    pub fn to_xml(&self) -> String {
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let skipped: usize = self.suites.iter().map(Suite::skipped).sum();
        let _ = writeln!(
            x,
            "<testsuites name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{skipped}\">",
            attr(&self.name),
            self.tests(),
            self.failures()
        );
        for s in &self.suites {
            suite_xml(&mut x, s);
        }
        x.push_str("</testsuites>\n");
        x
    }
}

fn suite_xml(x: &mut String, s: &Suite) {
    let time: f64 = s.cases.iter().filter_map(|c| c.time_s).sum();
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{time:.3}\">",
        attr(&s.name),
        s.cases.len(),
        s.failures(),
        s.skipped()
    );
    for c in &s.cases {
        case_xml(x, c);
    }
    x.push_str("  </testsuite>\n");
}

fn case_xml(x: &mut String, c: &Case) {
    let _ = write!(
        x,
        "    <testcase classname=\"{}\" name=\"{}\"",
        attr(&c.classname),
        attr(&c.name)
    );
    if let Some(t) = c.time_s.filter(|t| t.is_finite() && *t >= 0.0) {
        let _ = write!(x, " time=\"{t:.3}\"");
    }
    x.push_str(">\n");
    match &c.status {
        Status::Passed => {}
        Status::Failed { message, detail } => {
            let _ = writeln!(
                x,
                "      <failure message=\"{}\" type=\"meshbench\">{}</failure>",
                attr(message),
                text(detail)
            );
        }
        Status::Skipped { message } => {
            let _ = writeln!(x, "      <skipped message=\"{}\"/>", attr(message));
        }
    }
    if let Some(out) = &c.output {
        let _ = writeln!(x, "      <system-out>{}</system-out>", text(out));
    }
    x.push_str("    </testcase>\n");
}

/// Drops characters XML 1.0 cannot carry at all (most control characters).
fn xml_chars(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars().filter(|c| {
        matches!(c, '\t' | '\n' | '\r') || (*c >= ' ' && *c != '\u{FFFE}' && *c != '\u{FFFF}')
    })
}

/// Escapes text content.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in xml_chars(s) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes an attribute value (quotes, and line breaks, which a parser would normalise).
pub fn attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in xml_chars(s) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
    out
}

/// The run's cases: whether it completed, then one per step and SLO.
pub fn run_suites(t: &RunTables) -> Vec<Suite> {
    let benchmark = &t.run.meta.benchmark;
    let mut cases = vec![completion_case(t)];
    let many_reps = t.measured_steps().any(|r| r.repetition > 0);
    for v in t.run.slo.steps.iter().filter(|v| !v.warmup) {
        let row = t
            .measured_steps()
            .find(|r| r.mesh == v.mesh && r.repetition == v.repetition && r.step == v.step);
        for slo in &t.run.slos {
            cases.push(slo_case(benchmark, v, row, slo, many_reps));
        }
    }
    vec![Suite {
        name: format!("meshbench run {benchmark}"),
        cases,
    }]
}

fn completion_case(t: &RunTables) -> Case {
    let status = if t.run.meta.partial {
        let why = t
            .run
            .partial_reason
            .clone()
            .unwrap_or_else(|| "the run did not finish".into());
        Status::Failed {
            message: format!("the run is partial: {why}"),
            detail: t.run.meta.warnings.join("\n"),
        }
    } else {
        Status::Passed
    };
    Case {
        classname: format!("meshbench.{}", t.run.meta.benchmark),
        name: "run completed".into(),
        time_s: t
            .run
            .meta
            .finished_at
            .map(|end| (end - t.run.meta.started_at).num_milliseconds() as f64 / 1000.0),
        status,
        output: Some(format!("run directory: {}", t.dir.display())),
    }
}

/// A run directory that cannot be read: one failing case that says why.
pub fn unreadable_run_suites(dir: &std::path::Path, error: &str) -> Vec<Suite> {
    vec![Suite {
        name: "meshbench run".into(),
        cases: vec![Case {
            classname: "meshbench".into(),
            name: "run completed".into(),
            time_s: None,
            status: Status::Failed {
                message: format!("no readable report in {}", dir.display()),
                detail: error.to_owned(),
            },
            output: None,
        }],
    }]
}

fn slo_case(
    benchmark: &str,
    v: &StepVerdict,
    row: Option<&StepRow>,
    slo: &Slo,
    many_reps: bool,
) -> Case {
    let name_slo = slo.to_string();
    let rep = if many_reps {
        format!(", repetition {}", v.repetition)
    } else {
        String::new()
    };
    let violation = v.violations.iter().find(|x| x.slo == name_slo);
    let status = match (violation, slo, row) {
        (Some(x), ..) => Status::Failed {
            message: format!("{x}"),
            detail: format!(
                "measured {}, bound {}",
                x.measured
                    .map_or("nothing (no requests completed)".into(), num),
                num(x.limit)
            ),
        },
        (None, Slo::Throughput { .. }, Some(r)) if r.target_rate_rps.is_none() => Status::Skipped {
            message: "closed-loop step: no target rate to serve".into(),
        },
        _ => Status::Passed,
    };
    Case {
        classname: format!("meshbench.{benchmark}.{}", v.mesh),
        name: format!("step {} ({}){rep}: {name_slo}", v.step, v.step_name),
        time_s: row.map(|r| r.duration_s),
        output: row
            .and_then(|r| slo_measured(slo, r))
            .map(|m| format!("measured {}", num(m))),
        status,
    }
}

/// What the steps table says about an objective, for passing cases.
fn slo_measured(slo: &Slo, r: &StepRow) -> Option<f64> {
    match slo {
        Slo::Latency { percentile, .. } => match (percentile * 10.0).round() as i64 {
            500 => r.latency_p50_ms,
            900 => r.latency_p90_ms,
            950 => r.latency_p95_ms,
            990 => r.latency_p99_ms,
            999 => r.latency_p999_ms,
            _ => None,
        },
        Slo::ErrorRate { .. } => r.error_ratio,
        Slo::Throughput { .. } => r.throughput_ratio,
    }
}

/// The comparison's cases: one per gate check.
pub fn gate_suites(report: &GateReport) -> Vec<Suite> {
    vec![Suite {
        name: format!("meshbench gates against {}", report.baseline.display()),
        cases: report.checks.iter().map(gate_case).collect(),
    }]
}

fn gate_case(c: &Check) -> Case {
    let mut name = c.gate.clone();
    if let Some(s) = c.step {
        name.push_str(&format!(" step {s}"));
    } else if c.step_name.is_none() {
        name.push_str(" whole run");
    }
    if let Some(n) = &c.step_name {
        name.push_str(&format!(" ({n})"));
    }
    if let Some(svc) = &c.service {
        name.push_str(&format!(" service {svc}"));
    }
    let line = c.describe();
    Case {
        classname: format!("meshbench.gate.{}", c.mesh),
        name,
        time_s: None,
        status: if c.pass {
            Status::Passed
        } else {
            Status::Failed {
                message: line.clone(),
                detail: gate_detail(c),
            }
        },
        output: c.pass.then_some(line),
    }
}

fn gate_detail(c: &Check) -> String {
    let mut d = format!("{}\nfigure: {}\nbound: {}\n", c.place(), c.figure, c.bound);
    match c.measured {
        Some(m) => d.push_str(&format!("measured: {} (n={})\n", num(m.mean), m.n)),
        None => d.push_str("measured: nothing\n"),
    }
    if let Some(b) = c.baseline {
        d.push_str(&format!("baseline: {} (n={})\n", num(b.mean), b.n));
    }
    d.push_str(&format!("noise: {}", c.noise));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_control_characters() {
        assert_eq!(text("a < b && c > d"), "a &lt; b &amp;&amp; c &gt; d");
        assert_eq!(
            attr("say \"hi\"\n'x'"),
            "say &quot;hi&quot;&#10;&apos;x&apos;"
        );
        assert_eq!(text("bell\u{7}tab\t"), "belltab\t");
    }

    #[test]
    fn counts_failures_and_skips() {
        let case = |status| Case {
            classname: "c".into(),
            name: "n <1>".into(),
            time_s: Some(1.5),
            status,
            output: None,
        };
        let r = Report {
            name: "r".into(),
            suites: vec![Suite {
                name: "s".into(),
                cases: vec![
                    case(Status::Passed),
                    case(Status::Failed {
                        message: "m".into(),
                        detail: "d".into(),
                    }),
                    case(Status::Skipped {
                        message: "k".into(),
                    }),
                ],
            }],
        };
        let xml = r.to_xml();
        assert!(
            xml.contains(
                "<testsuites name=\"r\" tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\">"
            ),
            "{xml}"
        );
        assert!(xml.contains("name=\"n &lt;1&gt;\" time=\"1.500\""), "{xml}");
        assert!(
            xml.contains("<failure message=\"m\" type=\"meshbench\">d</failure>"),
            "{xml}"
        );
    }
}
