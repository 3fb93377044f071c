//! `report.html`: one self-contained file (inline CSS and SVG, no scripts, no network) with
//! the run's parameters, verdicts, the step table with predictions beside measurements, the
//! plots and the per-service table.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::analyze::{Analysis, RunJson};
use crate::meta::RunMeta;
use crate::plots::{self, Chart};
use crate::rundir::{self, ReportFiles, RunDirError};
use crate::tables::{RepetitionRow, ServiceRow, StepRow};

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A prediction with the model's relative error beside it, e.g. `15.20 (−11 %)`.
fn with_error(value: String, error: Option<f64>) -> String {
    match error {
        Some(e) if e.is_finite() => format!("{value} ({:+.0} %)", e * 100.0),
        _ => value,
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

fn int<T: ToString>(v: Option<T>) -> String {
    v.map_or("–".into(), |x| x.to_string())
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}\
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}\
table{border-collapse:collapse;font-size:13px;margin:.5em 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}\
th{background:#f4f4f4}td.l,th.l{text-align:left}.model{background:#f3f0ff}\
.badge{display:inline-block;padding:2px 10px;border-radius:4px;font-weight:bold;color:#fff}\
.pass{background:#2c8a2c}.fail{background:#c0392b}.none{background:#888}\
.partial{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em;margin:1em 0}\
.plot svg{max-width:100%;height:auto;border:1px solid #eee;margin:.4em 0}\
pre{background:#f8f8f8;padding:.8em;overflow-x:auto;font-size:12px}.note{color:#666;font-size:13px}";

fn table(out: &mut String, header: &[(&str, bool)], rows: &[Vec<(String, bool)>]) {
    out.push_str("<table><thead><tr>");
    for (h, model) in header {
        let class = if *model { " class=\"model\"" } else { "" };
        let _ = write!(out, "<th{class}>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for (i, (c, left)) in r.iter().enumerate() {
            let model = header.get(i).is_some_and(|h| h.1);
            let class = match (left, model) {
                (true, true) => " class=\"l model\"",
                (true, false) => " class=\"l\"",
                (false, true) => " class=\"model\"",
                (false, false) => "",
            };
            let _ = write!(out, "<td{class}>{}</td>", escape(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

fn l(s: impl Into<String>) -> (String, bool) {
    (s.into(), true)
}

fn r(s: impl Into<String>) -> (String, bool) {
    (s.into(), false)
}

/// Renders the report from an analysis and its charts rendered as SVG.
pub fn render_html(a: &Analysis, charts: &[(Chart, String)]) -> String {
    let run = &a.run;
    let m = &run.meta;
    let mut o = String::with_capacity(64 * 1024);
    head_and_title(&mut o, run);
    saturation_section(&mut o, run);
    parameters_section(&mut o, run);
    list_section(&mut o, "Warnings", &m.warnings);
    list_section(&mut o, "SLO violations", &run.slo.summary);
    steps_section(&mut o, &a.steps);
    plots_section(&mut o, charts);
    services_section(&mut o, &a.services);
    repetitions_section(&mut o, &a.repetitions);
    capacity_section(&mut o, run);
    phases_section(&mut o, m);
    spec_and_footer(&mut o, run);
    o
}

/// The document head, the title with the run's SLO badge, and the partial-run notice.
fn head_and_title(o: &mut String, run: &RunJson) {
    let m = &run.meta;
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>meshbench — {}</title><style>{CSS}</style></head><body>",
        escape(&m.benchmark)
    );
    let (badge, text) = match run.slo.pass {
        Some(true) => ("pass", "SLOs PASS"),
        Some(false) => ("fail", "SLOs FAIL"),
        None => ("none", "no SLOs"),
    };
    let _ = write!(
        o,
        "<h1>{}</h1><p>started {} · platform {} · <span class=\"badge {badge}\">{text}</span></p>",
        escape(&m.benchmark),
        m.started_at.to_rfc3339(),
        m.platform
    );
    if m.partial {
        let _ = write!(
            o,
            "<div class=\"partial\"><b>Partial run:</b> {}. The tables hold every step completed so far.</div>",
            escape(run.partial_reason.as_deref().unwrap_or("incomplete"))
        );
    }
}

fn parameters_section(o: &mut String, run: &RunJson) {
    let m = &run.meta;
    o.push_str("<h2>Parameters</h2>");
    let mut params = vec![
        vec![l("benchmark"), l(m.benchmark.clone())],
        vec![l("meshbench version"), l(m.meshbench_version.clone())],
        vec![
            l("analysis version / schema"),
            l(format!("{} / {}", run.analysis_version, run.schema_version)),
        ],
        vec![l("platform"), l(m.platform.to_string())],
        vec![
            l("limits"),
            l(format!("{}: {}", m.limits.mode, m.limits.reason)),
        ],
        vec![l("started"), l(m.started_at.to_rfc3339())],
        vec![
            l("finished"),
            l(m.finished_at.map_or("–".into(), |t| t.to_rfc3339())),
        ],
        vec![
            l("steps completed"),
            l(match m.steps_planned {
                Some(p) => format!("{} of {p}", run.steps_completed),
                None => run.steps_completed.to_string(),
            }),
        ],
        vec![
            l("settle window"),
            l(format!(
                "{} s",
                run.options.settle_window_ms as f64 / 1000.0
            )),
        ],
    ];
    for s in &run.slos {
        params.push(vec![l("SLO"), l(s.to_string())]);
    }
    table(o, &[("parameter", false), ("value", false)], &params);
}

/// A headed bullet list, left out entirely when there is nothing to list.
fn list_section(o: &mut String, heading: &str, items: &[String]) {
    if !items.is_empty() {
        let _ = write!(o, "<h2>{heading}</h2><ul>");
        for w in items {
            let _ = write!(o, "<li>{}</li>", escape(w));
        }
        o.push_str("</ul>");
    }
}

fn steps_section(o: &mut String, steps: &[StepRow]) {
    o.push_str("<h2>Steps</h2><p class=\"note\">Served rps is the served throughput: successes per second until the step's last success arrived (vegeta's definition); sent rps is what the load generator sent, which an open loop keeps at the target whatever the mesh serves (lower only when the load generator fell behind). Latency counts from each request's planned send time (coordinated-omission free); response time from the moment it actually left, so the difference is what the load generator added. Shaded columns are predictions of the capacity model, not measurements; the model's error beside each, (predicted − measured) ÷ measured.</p>");
    let header = [
        ("mesh", false),
        ("rep", false),
        ("step", false),
        ("name", false),
        ("target rps", false),
        ("served rps", false),
        ("served/target", false),
        ("predicted rps (error)", true),
        ("sent rps", false),
        ("error ratio", false),
        ("p50 ms", false),
        ("p99 ms", false),
        ("response p99 ms", false),
        ("mean ms", false),
        ("predicted mean ms (error)", true),
        ("predicted p99 ms (error)", true),
        ("bottleneck", true),
        ("saturated", false),
        ("SLO", false),
    ];
    let rows: Vec<Vec<(String, bool)>> = steps.iter().map(step_cells).collect();
    table(o, &header, &rows);
}

/// One row of the steps table, in the order of the header in `steps_section`.
fn step_cells(s: &StepRow) -> Vec<(String, bool)> {
    vec![
        l(s.mesh.clone()),
        r(s.repetition.to_string()),
        r(s.step.to_string()),
        l(format!(
            "{}{}",
            s.step_name,
            if s.warmup { " (warm-up)" } else { "" }
        )),
        r(num(s.target_rate_rps, 1)),
        r(num(s.throughput_rps, 1)),
        r(num(s.throughput_ratio, 2)),
        r(with_error(
            num(s.predicted_throughput_rps, 1),
            s.predicted_throughput_error,
        )),
        r(num(s.sent_rate_rps, 1)),
        r(num(s.error_ratio, 4)),
        r(num(s.latency_p50_ms, 2)),
        r(num(s.latency_p99_ms, 2)),
        r(num(s.response_time_p99_ms, 2)),
        r(num(s.latency_mean_ms, 2)),
        r(with_error(
            num(s.predicted_latency_mean_ms, 2),
            s.predicted_latency_mean_error,
        )),
        r(with_error(
            num(s.predicted_latency_p99_ms, 2),
            s.predicted_latency_p99_error,
        )),
        l(s.predicted_bottleneck.clone().unwrap_or_else(|| "–".into())),
        l(match (s.saturated, &s.saturation) {
            (Some(true), why) => format!("SATURATED: {}", why.as_deref().unwrap_or("")),
            (Some(false), _) => "no".into(),
            (None, _) => "–".into(),
        }),
        l(match (s.slo_pass, &s.slo_violations) {
            (None, _) => "–".into(),
            (Some(true), _) => "pass".into(),
            (Some(false), v) => format!("FAIL: {}", v.as_deref().unwrap_or("")),
        }),
    ]
}

fn plots_section(o: &mut String, charts: &[(Chart, String)]) {
    o.push_str("<h2>Plots</h2><p class=\"note\">Grey vertical lines mark step starts; dashed lines are model predictions.</p>");
    for (c, svg) in charts {
        let _ = write!(
            o,
            "<div class=\"plot\" id=\"plot-{}\">{svg}</div>",
            escape(&c.name)
        );
    }
    if charts.is_empty() {
        o.push_str("<p>No data to plot yet.</p>");
    }
}

fn services_section(o: &mut String, services: &[ServiceRow]) {
    o.push_str("<h2>Services</h2>");
    let header = [
        ("mesh", false),
        ("rep", false),
        ("step", false),
        ("service", false),
        ("replicas avg", false),
        ("max", false),
        ("final", false),
        ("predicted replicas", true),
        ("CPU cores avg", false),
        ("CPU util. avg", false),
        ("predicted util. (error)", true),
        ("util./target", false),
        ("memory max MiB", false),
        ("reaction s", false),
        ("settle s", false),
        ("overshoot", false),
        ("direction changes", false),
        ("replica-s", false),
    ];
    let rows: Vec<Vec<(String, bool)>> = services.iter().map(service_cells).collect();
    table(o, &header, &rows);
}

/// One row of the services table, in the order of the header in `services_section`.
fn service_cells(s: &ServiceRow) -> Vec<(String, bool)> {
    vec![
        l(s.mesh.clone()),
        r(s.repetition.to_string()),
        r(s.step.to_string()),
        l(s.service.clone()),
        r(num(s.replicas_avg, 2)),
        r(num(s.replicas_max, 0)),
        r(num(s.replicas_final, 0)),
        r(
            match (
                s.predicted_replicas,
                s.predicted_replicas_low,
                s.predicted_replicas_high,
            ) {
                (Some(p), Some(lo), Some(hi)) if lo != hi => format!("{p} ({lo}–{hi})"),
                (p, ..) => int(p),
            },
        ),
        r(num(s.cpu_cores_avg, 3)),
        r(num(s.cpu_utilization_avg, 3)),
        r(with_error(
            num(s.predicted_cpu_utilization, 3),
            s.predicted_cpu_utilization_error,
        )),
        r(num(s.cpu_utilization_vs_target, 2)),
        r(num(s.memory_bytes_max.map(|b| b / 1_048_576.0), 1)),
        r(num(s.scale_up_reaction_s, 1)),
        r(num(s.settle_time_s, 1)),
        r(num(s.overshoot_replicas, 0)),
        r(int(s.direction_changes)),
        r(num(s.replica_seconds, 0)),
    ]
}

/// Left out until some figure has two or more repetitions: one repetition has no interval.
fn repetitions_section(o: &mut String, repetitions: &[RepetitionRow]) {
    if repetitions.iter().any(|r| r.n >= 2) {
        o.push_str("<h2>Repetitions</h2><p class=\"note\">Mean and 95 % confidence interval (Student t) over repetitions.</p>");
        let rows: Vec<Vec<(String, bool)>> = repetitions
            .iter()
            .filter(|x| x.service.is_none())
            .map(|x| {
                vec![
                    l(x.mesh.clone()),
                    r(x.step.to_string()),
                    l(x.step_name.clone()),
                    l(x.figure.clone()),
                    r(x.n.to_string()),
                    r(num(Some(x.mean), 3)),
                    r(format!("[{}, {}]", num(x.ci95_low, 3), num(x.ci95_high, 3))),
                ]
            })
            .collect();
        table(
            o,
            &[
                ("mesh", false),
                ("step", false),
                ("name", false),
                ("figure", false),
                ("n", false),
                ("mean", false),
                ("95 % CI", false),
            ],
            &rows,
        );
    }
}

fn capacity_section(o: &mut String, run: &RunJson) {
    if !run.predictions.is_empty() {
        o.push_str("<h2>Capacity model</h2><p class=\"note\">Predicted from the spec alone; latency is a queueing model, not a measurement.</p>");
        for (mesh, plan) in &run.predictions {
            let _ = write!(
                o,
                "<h3>mesh {}</h3><pre>{}</pre>",
                escape(mesh),
                escape(&plan.to_string())
            );
        }
    }
}

fn phases_section(o: &mut String, m: &RunMeta) {
    if !m.phases.is_empty() {
        o.push_str("<h2>Phases</h2>");
        let rows: Vec<Vec<(String, bool)>> = m
            .phases
            .iter()
            .map(|p| {
                vec![
                    l(p.name.clone()),
                    l(p.started_at.to_rfc3339()),
                    l(p.finished_at.map_or("–".into(), |t| t.to_rfc3339())),
                ]
            })
            .collect();
        table(
            o,
            &[("phase", false), ("started", false), ("finished", false)],
            &rows,
        );
    }
}

/// The spec as run, then the list of the directory's tables that closes the document.
fn spec_and_footer(o: &mut String, run: &RunJson) {
    let spec = serde_json::to_string_pretty(&run.meta.spec).unwrap_or_default();
    let _ = write!(
        o,
        "<h2>Spec</h2><details><summary>Benchmark and mesh documents as run</summary><pre>{}</pre></details>",
        escape(&spec)
    );
    o.push_str("<p class=\"note\">Tables: ");
    for t in &run.tables {
        let _ = write!(o, "{} ", escape(t));
    }
    o.push_str("(schemas in docs/report-schema.md)</p></body></html>\n");
}

/// Renders the charts and writes `report.html` (atomically); with `files`, also writes each
/// plot as `plots/<name>.svg` and `.png`.
pub(crate) fn write_report(
    dir: &Path,
    a: &Analysis,
    files: bool,
) -> Result<ReportFiles, RunDirError> {
    let charts = plots::all_charts(a);
    let mut rendered = Vec::with_capacity(charts.len());
    let mut plot_files = Vec::new();
    for c in charts {
        let svg = plots::render_svg(&c).map_err(|problem| RunDirError::Plot {
            name: c.name.clone(),
            problem,
        })?;
        if files {
            plot_files.extend(rundir::write_plot_files(dir, &c, &svg)?);
        }
        rendered.push((c, svg));
    }
    let html = render_html(a, &rendered);
    let path = dir.join("report.html");
    rundir::write_atomic(&path, |w| w.write_all(html.as_bytes()))?;
    Ok(ReportFiles {
        html: path,
        plots: plot_files,
    })
}

/// Where each mesh saturated, stated before anything else so a reader cannot miss it.
fn saturation_section(o: &mut String, run: &RunJson) {
    if run.saturation.is_empty() {
        return;
    }
    o.push_str("<h2>Saturation</h2><ul class=\"saturation\">");
    for m in &run.saturation {
        let _ = write!(o, "<li>{}</li>", escape(&m.summary));
    }
    o.push_str("</ul>");
}
