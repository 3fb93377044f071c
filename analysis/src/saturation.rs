//! Saturation: whether a step asked more of the mesh than it could serve, and where a
//! sweep's mesh saturates.
//!
//! An open-loop generator sends at its target whatever the mesh does, so the sent rate
//! never shows overload. Two signs do: the served throughput falls short of the target, or
//! latency keeps growing through the step as a queue builds up (which shows even while
//! the backlog still drains within the step's window).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tables::StepRow;

/// Served throughput below this share of the target marks a step saturated. Lower than
/// the SLO's customary 0.95 so that a step's last in-flight requests (which end the
/// vegeta window a little after the step) and a spec's small injected error rate do not
/// count as overload.
pub const MIN_SERVED_SHARE: f64 = 0.9;
/// Latency growth (last third ÷ first third of the step) that counts as a queue building up.
pub const MIN_GROWTH: f64 = 2.0;
/// …together with at least this absolute increase of the median, so that sub-millisecond
/// jitter of a fast mesh is not read as a queue.
pub const MIN_GROWTH_MS: f64 = 20.0;
/// A step's throughput below this share of an earlier lower-rate step's, with timeouts, is
/// a goodput collapse.
const COLLAPSE_SHARE: f64 = 0.9;

/// Median latency at the start and at the end of a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Growth {
    /// Mean of the per-second medians of the first third of the seconds with successes, ms.
    pub first_ms: f64,
    /// The same over the last third, ms.
    pub last_ms: f64,
}

impl Growth {
    /// From per-second medians in order (seconds without successes left out); `None` with
    /// fewer than three seconds.
    pub fn of(p50_ms: &[f64]) -> Option<Growth> {
        let n = p50_ms.len();
        if n < 3 {
            return None;
        }
        let third = n / 3;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        Some(Growth {
            first_ms: mean(&p50_ms[..third]),
            last_ms: mean(&p50_ms[n - third..]),
        })
    }

    /// last ÷ first; `None` when the start had no measurable latency.
    pub fn ratio(&self) -> Option<f64> {
        (self.first_ms > 0.0).then(|| self.last_ms / self.first_ms)
    }

    fn queue_builds_up(&self) -> bool {
        self.ratio().is_some_and(|r| r >= MIN_GROWTH)
            && self.last_ms - self.first_ms >= MIN_GROWTH_MS
    }
}

/// What a step measured, as the saturation rules need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepFigures<'a> {
    /// Offered rate of the step, requests per second; `None` for a closed-loop step.
    pub target_rate: Option<f64>,
    /// Served throughput of the step, requests per second.
    pub throughput: Option<f64>,
    /// Requests that timed out in the step.
    pub timeouts: u64,
    /// Median latency at the start and the end of the step; `None` with fewer than three seconds of
    /// successes.
    pub growth: Option<Growth>,
    /// The model's bottleneck service, named in the reason when the step saturated.
    pub predicted_bottleneck: Option<&'a str>,
    /// The highest served throughput of an earlier step of the same sweep with a lower
    /// target rate, and that rate.
    pub earlier_best: Option<(f64, f64)>,
}

/// Whether the step saturated the mesh, and why (text for the tables and the report).
pub fn judge(s: &StepFigures<'_>) -> (bool, Option<String>) {
    let mut reasons = Vec::new();
    if let (Some(target), Some(t)) = (s.target_rate.filter(|t| *t > 0.0), s.throughput)
        && t < MIN_SERVED_SHARE * target
    {
        reasons.push(format!(
            "served {} of {} rps ({:.0} %)",
            rate(t),
            rate(target),
            100.0 * t / target
        ));
    }
    if let Some(g) = s.growth.filter(Growth::queue_builds_up) {
        reasons.push(format!(
            "median latency grew {} → {} ms through the step (queue build-up)",
            ms(g.first_ms),
            ms(g.last_ms)
        ));
    }
    if reasons.is_empty() {
        return (false, None);
    }
    if let Some(b) = s.predicted_bottleneck {
        reasons.push(format!("predicted bottleneck {b}"));
    }
    if let (Some(t), Some((best, at))) = (s.throughput, s.earlier_best)
        && s.timeouts > 0
        && t < COLLAPSE_SHARE * best
    {
        reasons.push(format!(
            "goodput collapse: {} timeouts and {} rps served, below the {} rps served at {} rps \
             (requests the client gave up on still use the mesh's CPU)",
            s.timeouts,
            rate(t),
            rate(best),
            rate(at)
        ));
    }
    (true, Some(reasons.join("; ")))
}

fn rate(x: f64) -> String {
    format!("{x:.1}")
}

fn ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// Where one mesh's sweep saturated, over all repetitions (open-loop, non-warm-up steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshSaturation {
    /// Mesh the figures are for.
    pub mesh: String,
    /// The lowest target rate with a saturated step; `None` when no step saturated.
    pub first_saturated_rate_rps: Option<f64>,
    /// The highest served throughput of a saturated step: the measured capacity.
    pub saturated_throughput_rps: Option<f64>,
    /// The highest target rate at which every repetition's step was not saturated and met
    /// every SLO.
    pub max_rate_within_slos_rps: Option<f64>,
    /// The highest served throughput of any step.
    pub max_throughput_rps: Option<f64>,
    /// The model's bottleneck service.
    pub predicted_bottleneck: Option<String>,
    /// The model's maximum throughput, rps.
    pub predicted_max_throughput_rps: Option<f64>,
    /// One line for the report and the terminal.
    pub summary: String,
}

/// Summarises every mesh's sweep from its step rows.
pub fn summarise(steps: &[StepRow]) -> Vec<MeshSaturation> {
    let mut by_mesh: BTreeMap<&str, Vec<&StepRow>> = BTreeMap::new();
    for s in steps
        .iter()
        .filter(|s| !s.warmup && s.target_rate_rps.is_some())
    {
        by_mesh.entry(&s.mesh).or_default().push(s);
    }
    by_mesh
        .into_iter()
        .map(|(mesh, rows)| summarise_mesh(mesh, &rows))
        .collect()
}

fn max_of(it: impl Iterator<Item = f64>) -> Option<f64> {
    it.fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))))
}

fn summarise_mesh(mesh: &str, rows: &[&StepRow]) -> MeshSaturation {
    let saturated = |r: &&&StepRow| r.saturated == Some(true);
    let first_saturated = rows
        .iter()
        .filter(saturated)
        .filter_map(|r| r.target_rate_rps)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))));
    let saturated_throughput = max_of(
        rows.iter()
            .filter(saturated)
            .filter_map(|r| r.throughput_rps),
    );
    let mut by_rate: BTreeMap<u64, bool> = BTreeMap::new();
    for r in rows {
        let ok = r.saturated == Some(false) && r.slo_pass != Some(false) && !r.partial;
        let rate = r.target_rate_rps.unwrap_or_default();
        *by_rate.entry(rate.to_bits()).or_insert(true) &= ok;
    }
    let max_within = max_of(
        by_rate
            .iter()
            .filter(|(_, ok)| **ok)
            .map(|(bits, _)| f64::from_bits(*bits)),
    );
    let max_throughput = max_of(rows.iter().filter_map(|r| r.throughput_rps));
    let bottleneck = rows.iter().find_map(|r| r.predicted_bottleneck.clone());
    let predicted_max = rows.iter().find_map(|r| r.predicted_max_throughput_rps);
    let top_rate = max_of(rows.iter().filter_map(|r| r.target_rate_rps));
    let mut summary = match (first_saturated, saturated_throughput) {
        (Some(at), Some(t)) => format!(
            "mesh {mesh} saturates at ~{} rps served (first saturated step: {} rps)",
            rate(t),
            rate(at)
        ),
        (Some(at), None) => format!("mesh {mesh} saturated from {} rps", rate(at)),
        _ => format!(
            "mesh {mesh} was not saturated up to {} rps (served up to {} rps)",
            top_rate.map_or("-".into(), rate),
            max_throughput.map_or("-".into(), rate)
        ),
    };
    match max_within {
        Some(r) => summary.push_str(&format!(
            "; highest rate served within the SLOs: {} rps",
            rate(r)
        )),
        None => summary.push_str("; no rate was served within the SLOs"),
    }
    if let Some(b) = &bottleneck {
        summary.push_str(&format!(
            "; predicted bottleneck {b}{}",
            predicted_max.map_or(String::new(), |m| format!(" at {} rps", rate(m)))
        ));
    }
    MeshSaturation {
        mesh: mesh.to_owned(),
        first_saturated_rate_rps: first_saturated,
        saturated_throughput_rps: saturated_throughput,
        max_rate_within_slos_rps: max_within,
        max_throughput_rps: max_throughput,
        predicted_bottleneck: bottleneck,
        predicted_max_throughput_rps: predicted_max,
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(target: f64, throughput: f64) -> StepFigures<'static> {
        StepFigures {
            target_rate: Some(target),
            throughput: Some(throughput),
            timeouts: 0,
            growth: None,
            predicted_bottleneck: Some("backend"),
            earlier_best: None,
        }
    }

    #[test]
    fn short_throughput_is_saturation_with_the_bottleneck() {
        let (sat, why) = judge(&load(40.0, 24.5));
        assert!(sat);
        let why = why.unwrap();
        assert!(why.contains("served 24.5 of 40.0 rps (61 %)"), "{why}");
        assert!(why.contains("predicted bottleneck backend"), "{why}");
        assert_eq!(judge(&load(40.0, 39.0)), (false, None));
    }

    #[test]
    fn growing_latency_is_saturation_even_when_the_backlog_drains() {
        let mut l = load(30.0, 29.8);
        l.growth = Growth::of(&[30.0, 32.0, 31.0, 300.0, 900.0, 1500.0]);
        let (sat, why) = judge(&l);
        assert!(sat, "{why:?}");
        assert!(why.unwrap().contains("31.0 → 1200 ms"));
        // A fast mesh's jitter is not a queue: 0.4 → 1.2 ms is 3× but under 20 ms.
        l.growth = Growth::of(&[0.4, 0.4, 0.4, 1.2, 1.2, 1.2]);
        assert_eq!(judge(&l), (false, None));
        assert_eq!(Growth::of(&[1.0, 2.0]), None);
    }

    #[test]
    fn timeouts_with_falling_throughput_are_a_goodput_collapse() {
        let mut l = load(60.0, 12.0);
        l.timeouts = 300;
        l.earlier_best = Some((24.0, 30.0));
        let why = judge(&l).1.unwrap();
        assert!(why.contains("goodput collapse: 300 timeouts"), "{why}");
        assert!(
            why.contains("below the 24.0 rps served at 30.0 rps"),
            "{why}"
        );
        l.timeouts = 0;
        assert!(!judge(&l).1.unwrap().contains("collapse"));
    }
}
