//! Service level objectives and their verdicts, per step and per run.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One objective a step must meet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Slo {
    /// The given percentile (e.g. 99 or 99.9) of the latency of successes is at most `max_ms`.
    Latency {
        /// The percentile, in percent (99, 99.9).
        percentile: f64,
        /// Largest passing latency at that percentile, milliseconds (inclusive).
        max_ms: f64,
    },
    /// Failed requests ÷ due requests is at most `max_ratio` (0.01 = 1 %).
    ErrorRate {
        /// Largest passing ratio of failed to due requests (inclusive).
        max_ratio: f64,
    },
    /// Served throughput ÷ target rate is at least `min_ratio` (open-loop steps only; the
    /// spec's `minAchievedRatio`). Not the sent rate: an open loop always sends its target.
    #[serde(alias = "achieved")]
    Throughput {
        /// Smallest passing ratio of served throughput to target rate (inclusive).
        min_ratio: f64,
    },
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slo::Latency { percentile, max_ms } => write!(f, "latency p{percentile} ≤ {max_ms} ms"),
            Slo::ErrorRate { max_ratio } => write!(f, "error rate ≤ {}%", max_ratio * 100.0),
            Slo::Throughput { min_ratio } => {
                write!(f, "served throughput/target ≥ {min_ratio}")
            }
        }
    }
}

/// What a step measured, as the SLOs need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome<'a> {
    /// Requests due (sent + dropped); 0 or `None` when nothing ran.
    pub requests: Option<u64>,
    /// Requests due that did not succeed (errors, timeouts, dropped).
    pub failed: Option<u64>,
    /// Served throughput, rps (vegeta's definition; see `steps.throughput_rps`).
    pub throughput: Option<f64>,
    /// Offered rate, requests per second; `None` for a closed-loop step, which the throughput SLO
    /// does not judge.
    pub target_rate: Option<f64>,
    /// Latency of successes in µs, to evaluate any percentile exactly.
    pub latency_us: Option<&'a hdrhistogram::Histogram<u64>>,
}

/// One violated objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// The objective, as text (e.g. "latency p99 ≤ 250 ms").
    pub slo: String,
    /// What was measured, in the objective's unit; `None` when there was nothing to measure.
    pub measured: Option<f64>,
    /// The objective's bound.
    pub limit: f64,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.measured {
            Some(m) => write!(f, "{} (measured {})", self.slo, round_sig(m)),
            None => write!(f, "{} (no requests completed)", self.slo),
        }
    }
}

fn round_sig(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

/// Evaluates every objective for one step; the result is empty when all pass.
pub fn evaluate(slos: &[Slo], outcome: &StepOutcome<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    for slo in slos {
        let name = slo.to_string();
        match *slo {
            Slo::Latency { percentile, max_ms } => {
                let measured = outcome.latency_us.filter(|h| !h.is_empty()).map(|h| {
                    h.value_at_quantile((percentile / 100.0).clamp(0.0, 1.0)) as f64 / 1000.0
                });
                if measured.is_none_or(|m| m > max_ms) {
                    out.push(Violation {
                        slo: name,
                        measured,
                        limit: max_ms,
                    });
                }
            }
            Slo::ErrorRate { max_ratio } => {
                let measured = match (outcome.requests, outcome.failed) {
                    (Some(r), Some(f)) if r > 0 => Some(f as f64 / r as f64),
                    _ => None,
                };
                if measured.is_none_or(|m| m > max_ratio) {
                    out.push(Violation {
                        slo: name,
                        measured,
                        limit: max_ratio,
                    });
                }
            }
            Slo::Throughput { min_ratio } => {
                let Some(target) = outcome.target_rate.filter(|t| *t > 0.0) else {
                    continue;
                };
                let measured = outcome.throughput.map(|a| a / target);
                if measured.is_none_or(|m| m < min_ratio) {
                    out.push(Violation {
                        slo: name,
                        measured,
                        limit: min_ratio,
                    });
                }
            }
        }
    }
    out
}

/// A step's verdict, as stored in `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepVerdict {
    /// Mesh the step ran against.
    pub mesh: String,
    /// Repetition number, 0-based.
    pub repetition: u32,
    /// Position of the step in the profile, 0-based.
    pub step: u32,
    /// Step name from the profile.
    pub step_name: String,
    /// A warm-up step: judged, but left out of the run's verdict.
    pub warmup: bool,
    /// True when no objective was violated.
    pub pass: bool,
    /// The objectives the step violated, in the benchmark's order.
    pub violations: Vec<Violation>,
}

/// The run's verdict: it passes when every non-warm-up step passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunVerdict {
    /// `None` when the benchmark declares no SLOs.
    pub pass: Option<bool>,
    /// Every step's verdict, warm-up steps included.
    pub steps: Vec<StepVerdict>,
    /// One line per failing step, e.g. "mesh a, repetition 0, step 3 (60rps): latency p99 ≤ 250 ms (measured 312)".
    pub summary: Vec<String>,
}

impl RunVerdict {
    /// Combines step verdicts.
    pub fn of(slos: &[Slo], steps: Vec<StepVerdict>) -> RunVerdict {
        if slos.is_empty() {
            return RunVerdict {
                pass: None,
                steps: Vec::new(),
                summary: Vec::new(),
            };
        }
        let summary: Vec<String> = steps
            .iter()
            .filter(|s| !s.warmup && !s.pass)
            .map(|s| {
                let v: Vec<String> = s.violations.iter().map(ToString::to_string).collect();
                format!(
                    "mesh {}, repetition {}, step {} ({}): {}",
                    s.mesh,
                    s.repetition,
                    s.step,
                    s.step_name,
                    v.join("; ")
                )
            })
            .collect();
        RunVerdict {
            pass: Some(summary.is_empty()),
            steps,
            summary,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_name_the_violated_objective() {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=100u64 {
            h.record(v * 1000).unwrap(); // 1..100 ms
        }
        let slos = vec![
            Slo::Latency {
                percentile: 99.0,
                max_ms: 50.0,
            },
            Slo::ErrorRate { max_ratio: 0.01 },
            Slo::Throughput { min_ratio: 0.95 },
        ];
        let outcome = StepOutcome {
            requests: Some(100),
            failed: Some(0),
            throughput: Some(99.0),
            target_rate: Some(100.0),
            latency_us: Some(&h),
        };
        let v = evaluate(&slos, &outcome);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].slo, "latency p99 ≤ 50 ms");
        assert!((v[0].measured.unwrap() - 99.0).abs() < 0.1);

        let empty = StepOutcome {
            requests: Some(0),
            failed: Some(0),
            throughput: Some(0.0),
            target_rate: None,
            latency_us: None,
        };
        let v = evaluate(&slos, &empty);
        assert_eq!(
            v.len(),
            2,
            "latency and error rate cannot be shown to hold: {v:?}"
        );
        assert!(v[0].to_string().contains("no requests completed"));
    }

    #[test]
    fn the_throughput_objective_fails_when_the_mesh_serves_less_than_the_target() {
        let slos = [Slo::Throughput { min_ratio: 0.95 }];
        let at = |served: f64| StepOutcome {
            requests: Some(1200),
            failed: Some(0),
            throughput: Some(served),
            target_rate: Some(40.0),
            latency_us: None,
        };
        let v = evaluate(&slos, &at(24.5));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].slo, "served throughput/target ≥ 0.95");
        assert!((v[0].measured.unwrap() - 24.5 / 40.0).abs() < 1e-9);
        assert!(evaluate(&slos, &at(39.9)).is_empty());
        // run.json of schema 1 called it "achieved".
        let old: Slo = serde_json::from_str(r#"{"kind":"achieved","min_ratio":0.9}"#).unwrap();
        assert_eq!(old, Slo::Throughput { min_ratio: 0.9 });
    }
}
