//! Plots of a run, drawn with plotters as SVG (inlined in the report) and PNG (for papers).
//!
//! Text is laid out with a DejaVu Sans subset shipped in `assets/`, so rendering needs no
//! system fonts; in SVG the text stays text (`font-family: sans-serif`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::analyze::{Analysis, ServiceSeries};

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
static FONT_ONCE: Once = Once::new();

fn register_font() {
    FONT_ONCE.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            tracing::warn!("the shipped plot font could not be loaded; plot text may be missing");
        }
    });
}

/// Plot size in pixels.
pub const SIZE: (u32, u32) = (1000, 460);

/// How a line is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A solid line.
    Line,
    /// Dashed: used for model predictions.
    Dashed,
    /// A solid line with a marker at every point.
    LinePoints,
    /// Markers only, no line (scattered values).
    Points,
}

/// One named series.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Legend label.
    pub name: String,
    /// `(x, y)` in the chart's axis units; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    /// How the line is drawn.
    pub style: Style,
    /// Index into the palette (lines that belong together share a color).
    pub color: usize,
}

/// A chart: lines on linear axes, with optional vertical markers (step boundaries).
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// File stem (`replicas-mesh-a`).
    pub name: String,
    /// Title above the plot.
    pub title: String,
    /// Label of the x axis, with its unit.
    pub x_label: String,
    /// Label of the y axis, with its unit.
    pub y_label: String,
    /// The series, drawn in order and listed in the legend.
    pub lines: Vec<Line>,
    /// x positions of vertical markers (step boundaries), in x axis units.
    pub vlines: Vec<f64>,
}

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn bounds(c: &Chart) -> ((f64, f64), (f64, f64)) {
    let mut x = (f64::INFINITY, f64::NEG_INFINITY);
    let mut y = (0.0f64, f64::NEG_INFINITY);
    for l in &c.lines {
        for &(px, py) in &l.points {
            if px.is_finite() && py.is_finite() {
                x = (x.0.min(px), x.1.max(px));
                y = (y.0.min(py), y.1.max(py));
            }
        }
    }
    for &v in &c.vlines {
        x = (x.0.min(v), x.1.max(v));
    }
    if !x.0.is_finite() {
        x = (0.0, 1.0);
    }
    if x.1 <= x.0 {
        x = (x.0 - 1.0, x.0 + 1.0);
    }
    if !y.1.is_finite() || y.1 <= y.0 {
        y.1 = y.0 + 1.0;
    }
    (x, (y.0, y.1 + (y.1 - y.0) * 0.08))
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Drawing the SVG document failed.
    #[error(transparent)]
    Svg(DrawingAreaErrorKind<std::io::Error>),
    /// Drawing or writing the PNG file failed (boxed: the image encoder's errors are large).
    #[error(transparent)]
    Png(Box<DrawingAreaErrorKind<PngBackendError>>),
}

/// The error type of the PNG backend (plotters does not re-export it by name).
pub type PngBackendError = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    c: &Chart,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    register_font();
    root.fill(&WHITE)?;
    let ((x0, x1), (y0, y1)) = bounds(c);
    let mut chart = ChartBuilder::on(&root)
        .caption(&c.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .label_style(("sans-serif", 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for &v in &c.vlines {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(v, y0), (v, y1)],
            RGBColor(170, 170, 170).stroke_width(1),
        )))?;
    }
    for l in &c.lines {
        let color = PALETTE[l.color % PALETTE.len()];
        let pts: Vec<(f64, f64)> = l
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        let anno = match l.style {
            Style::Line => chart.draw_series(LineSeries::new(pts, color.stroke_width(2)))?,
            Style::Dashed => {
                chart.draw_series(DashedLineSeries::new(pts, 8, 5, color.stroke_width(2)))?
            }
            Style::LinePoints => {
                chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
                chart.draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            }
            Style::Points => {
                chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?
            }
        };
        anno.label(l.name.as_str()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
        });
    }
    if !c.lines.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Renders a chart as an SVG document.
pub fn render_svg(c: &Chart) -> Result<String, PlotError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(root, c).map_err(PlotError::Svg)?;
    }
    Ok(out)
}

/// Renders a chart as a PNG file at `path` (which must end in `.png`).
pub fn render_png(c: &Chart, path: &Path) -> Result<(), PlotError> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    draw(root, c).map_err(|e| PlotError::Png(Box::new(e)))
}

/// Keeps at most `max` points: each bucket contributes its first, smallest and largest
/// point, so peaks (replica overshoot, latency spikes) survive.
pub fn downsample(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 3 {
        return points.to_vec();
    }
    let buckets = max / 3;
    let size = points.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(max);
    for chunk in points.chunks(size) {
        let lo = chunk.iter().min_by(|a, b| a.1.total_cmp(&b.1));
        let hi = chunk.iter().max_by(|a, b| a.1.total_cmp(&b.1));
        let mut pick = vec![chunk[0]];
        pick.extend(lo.copied());
        pick.extend(hi.copied());
        pick.sort_by(|a, b| a.0.total_cmp(&b.0));
        pick.dedup();
        out.extend(pick);
    }
    out
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Picks one latency figure of a row.
type LatencyPick = fn(&crate::tables::LatencyRow) -> Option<f64>;

/// Time axis: origin and unit.
struct TimeAxis {
    t0: i64,
    per: f64,
    label: &'static str,
}

impl TimeAxis {
    fn x(&self, ts_ms: i64) -> f64 {
        (ts_ms - self.t0) as f64 / self.per
    }
}

fn time_axis(a: &Analysis) -> TimeAxis {
    let t0 = a
        .steps
        .iter()
        .map(|s| s.start.0)
        .min()
        .or_else(|| {
            a.series
                .values()
                .flat_map(|s| s.replicas.first())
                .map(|p| p.0)
                .min()
        })
        .unwrap_or(0);
    let t1 = a.steps.iter().map(|s| s.end.0).max().unwrap_or(t0);
    if t1 - t0 > 20 * 60_000 {
        TimeAxis {
            t0,
            per: 60_000.0,
            label: "time since the first step (min)",
        }
    } else {
        TimeAxis {
            t0,
            per: 1000.0,
            label: "time since the first step (s)",
        }
    }
}

/// The time-series charts (replicas, CPU, memory, latency) of every mesh.
pub fn timeseries_charts(a: &Analysis) -> Vec<Chart> {
    let axis = time_axis(a);
    let max = a.run.options.max_plot_points.max(30);
    let mut meshes: Vec<&str> = a.series.keys().map(|k| k.0.as_str()).collect();
    meshes.extend(a.steps.iter().map(|s| s.mesh.as_str()));
    meshes.sort_unstable();
    meshes.dedup();
    meshes
        .into_iter()
        .flat_map(|mesh| mesh_timeseries_charts(a, mesh, &axis, max))
        .collect()
}

/// The replicas, CPU, memory and latency charts of one mesh, with its step boundaries.
fn mesh_timeseries_charts(a: &Analysis, mesh: &str, axis: &TimeAxis, max: usize) -> Vec<Chart> {
    let vlines: Vec<f64> = a
        .steps
        .iter()
        .filter(|s| s.mesh == mesh)
        .map(|s| axis.x(s.start.0))
        .collect();
    let services: Vec<(&String, &ServiceSeries)> = a
        .series
        .iter()
        .filter(|(k, _)| k.0 == mesh)
        .map(|(k, v)| (&k.1, v))
        .collect();
    let chart = |kind: &str, title: &str, y: &str, lines: Vec<Line>| Chart {
        name: format!("{kind}-{}", slug(mesh)),
        title: format!("{title} — mesh {mesh}"),
        x_label: axis.label.into(),
        y_label: y.into(),
        lines,
        vlines: vlines.clone(),
    };
    let lines = |f: &dyn Fn(&ServiceSeries) -> Vec<(f64, f64)>| service_lines(&services, max, f);
    // Replicas are a step function: draw the steps.
    let replicas = lines(&|s| replica_steps(s, axis));
    let cpu = lines(&|s| s.cpu.iter().map(|p| (axis.x(p.ts_ms), p.sum)).collect());
    let mem = lines(&|s| {
        s.memory
            .iter()
            .map(|p| (axis.x(p.ts_ms), p.sum / (1024.0 * 1024.0)))
            .collect()
    });
    vec![
        chart("replicas", "Replicas per service", "replicas", replicas),
        chart("cpu", "CPU per service (all pods)", "CPU (cores)", cpu),
        chart(
            "memory",
            "Memory per service (all pods)",
            "memory (MiB)",
            mem,
        ),
        chart(
            "latency",
            "Latency of successes per second",
            "latency (ms)",
            latency_lines(a, mesh, axis, max),
        ),
    ]
}

/// One line per service of the figure `f` picks, downsampled to `max` points; services
/// without points are left out.
fn service_lines(
    services: &[(&String, &ServiceSeries)],
    max: usize,
    f: &dyn Fn(&ServiceSeries) -> Vec<(f64, f64)>,
) -> Vec<Line> {
    services
        .iter()
        .enumerate()
        .map(|(i, (name, s))| Line {
            name: (*name).clone(),
            points: downsample(&f(s), max),
            style: Style::Line,
            color: i,
        })
        .filter(|l| !l.points.is_empty())
        .collect()
}

/// A service's replicas as a step function: each change drawn as a vertical step.
fn replica_steps(s: &ServiceSeries, axis: &TimeAxis) -> Vec<(f64, f64)> {
    let mut v = Vec::with_capacity(s.replicas.len() * 2);
    for (i, &(t, r)) in s.replicas.iter().enumerate() {
        if i > 0 {
            v.push((axis.x(t), s.replicas[i - 1].1));
        }
        v.push((axis.x(t), r));
    }
    v
}

/// p50, p90 and p99 of the mesh's successes per second, one line each.
fn latency_lines(a: &Analysis, mesh: &str, axis: &TimeAxis, max: usize) -> Vec<Line> {
    let mut lat: Vec<Line> = Vec::new();
    let rows: Vec<&crate::tables::LatencyRow> =
        a.latency.iter().filter(|r| r.mesh == mesh).collect();
    let pick: [(&str, LatencyPick); 3] = [
        ("p50", |r| r.latency_p50_ms),
        ("p90", |r| r.latency_p90_ms),
        ("p99", |r| r.latency_p99_ms),
    ];
    for (i, (name, f)) in pick.iter().enumerate() {
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| f(r).map(|v| (axis.x(r.ts.0), v)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !pts.is_empty() {
            lat.push(Line {
                name: (*name).into(),
                points: downsample(&pts, max),
                style: Style::Line,
                color: i,
            });
        }
    }
    lat
}

/// Mean over repetitions of a step figure, per target rate, for non-warm-up open-loop steps.
fn by_rate(
    a: &Analysis,
    mesh: &str,
    f: impl Fn(&crate::tables::StepRow) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let mut acc: BTreeMap<u64, (f64, f64, u32)> = BTreeMap::new();
    for s in a.steps.iter().filter(|s| s.mesh == mesh && !s.warmup) {
        if let (Some(rate), Some(v)) = (s.target_rate_rps, f(s)) {
            let e = acc.entry(rate.to_bits()).or_insert((rate, 0.0, 0));
            e.1 += v;
            e.2 += 1;
        }
    }
    let mut v: Vec<(f64, f64)> = acc
        .values()
        .map(|(r, s, n)| (*r, s / f64::from(*n)))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The sweep charts of the prototype: served throughput (and, secondary, the sent rate)
/// against the requested rate, and
/// mean/p99 latency against requested rate, with the model's predictions dashed. Empty
/// when no mesh has two or more target rates.
pub fn sweep_charts(a: &Analysis) -> Vec<Chart> {
    let mut meshes: Vec<&str> = a.steps.iter().map(|s| s.mesh.as_str()).collect();
    meshes.sort_unstable();
    meshes.dedup();
    let meshes: Vec<&str> = meshes
        .into_iter()
        .filter(|m| by_rate(a, m, |s| s.target_rate_rps).len() >= 2)
        .collect();
    if meshes.is_empty() {
        return Vec::new();
    }
    let multi = meshes.len() > 1;
    let mut rate_lines = Vec::new();
    let mut lat_lines = Vec::new();
    let mut max_rate: f64 = 0.0;
    for (i, m) in meshes.iter().enumerate() {
        let c = i * 3;
        let requested = by_rate(a, m, |s| s.target_rate_rps);
        max_rate = requested.iter().fold(max_rate, |acc, p| acc.max(p.0));
        rate_lines.extend(sweep_rate_lines(a, m, multi, c));
        lat_lines.extend(sweep_latency_lines(a, m, multi, c));
    }
    rate_lines.insert(
        0,
        Line {
            name: "requested".into(),
            points: vec![(0.0, 0.0), (max_rate, max_rate)],
            style: Style::Line,
            color: 7,
        },
    );
    vec![
        Chart {
            name: "sweep-rate".into(),
            title: "Served throughput vs requested rate".into(),
            x_label: "requested rate (rps)".into(),
            y_label: "rate (rps)".into(),
            lines: rate_lines,
            vlines: Vec::new(),
        },
        Chart {
            name: "sweep-latency".into(),
            title: "Latency of successes vs requested rate".into(),
            x_label: "requested rate (rps)".into(),
            y_label: "latency (ms)".into(),
            lines: lat_lines,
            vlines: Vec::new(),
        },
    ]
}

/// A sweep line's name: prefixed with the mesh when several meshes share the chart.
fn sweep_label(multi: bool, mesh: &str, what: &str) -> String {
    if multi {
        format!("{mesh}: {what}")
    } else {
        what.to_owned()
    }
}

/// One mesh's lines of the rate chart: served throughput, sent rate and the model's
/// prediction (when there is one), in colors `c`, `c + 1`, `c + 2`.
fn sweep_rate_lines(a: &Analysis, m: &str, multi: bool, c: usize) -> Vec<Line> {
    let mut lines = vec![
        Line {
            name: sweep_label(multi, m, "served throughput"),
            points: by_rate(a, m, |s| s.throughput_rps),
            style: Style::LinePoints,
            color: c,
        },
        // Secondary: an open loop sends its target whatever the mesh serves.
        Line {
            name: sweep_label(multi, m, "sent"),
            points: by_rate(a, m, |s| s.sent_rate_rps),
            style: Style::Points,
            color: c + 1,
        },
    ];
    let predicted = by_rate(a, m, |s| s.predicted_throughput_rps);
    if !predicted.is_empty() {
        lines.push(Line {
            name: sweep_label(multi, m, "predicted (model)"),
            points: predicted,
            style: Style::Dashed,
            color: c + 2,
        });
    }
    lines
}

/// One mesh's lines of the latency chart: mean, p99 and the model's mean (when there is
/// one), in colors `c`, `c + 1`, `c + 2`.
fn sweep_latency_lines(a: &Analysis, m: &str, multi: bool, c: usize) -> Vec<Line> {
    let mut lines = vec![
        Line {
            name: sweep_label(multi, m, "mean"),
            points: by_rate(a, m, |s| s.latency_mean_ms),
            style: Style::LinePoints,
            color: c,
        },
        Line {
            name: sweep_label(multi, m, "p99"),
            points: by_rate(a, m, |s| s.latency_p99_ms),
            style: Style::LinePoints,
            color: c + 1,
        },
    ];
    let predicted = by_rate(a, m, |s| s.predicted_latency_mean_ms);
    if !predicted.is_empty() {
        lines.push(Line {
            name: sweep_label(multi, m, "mean, predicted (model)"),
            points: predicted,
            style: Style::Dashed,
            color: c + 2,
        });
    }
    lines
}

/// Every chart of the report, in display order.
pub fn all_charts(a: &Analysis) -> Vec<Chart> {
    let mut v = sweep_charts(a);
    v.extend(timeseries_charts(a));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsample_keeps_peaks_and_bounds_size() {
        let pts: Vec<(f64, f64)> = (0..10_000)
            .map(|i| (i as f64, if i == 5_000 { 99.0 } else { 1.0 }))
            .collect();
        let d = downsample(&pts, 300);
        assert!(d.len() <= 300, "{}", d.len());
        assert!(d.iter().any(|p| p.1 == 99.0));
        assert_eq!(downsample(&pts[..10], 300).len(), 10);
    }

    #[test]
    fn svg_contains_text_and_lines() {
        let c = Chart {
            name: "t".into(),
            title: "Title µ ≤".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            lines: vec![Line {
                name: "svc".into(),
                points: vec![(0.0, 1.0), (1.0, 2.0)],
                style: Style::Dashed,
                color: 0,
            }],
            vlines: vec![0.5],
        };
        let svg = render_svg(&c).expect("renders");
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("Title"));
        assert!(svg.contains("svc"));
    }
}
