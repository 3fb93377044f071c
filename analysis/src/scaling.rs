//! Autoscaling figures of one service during one step, from its replica count over time.
//!
//! The replica count is a step function: a sample's value holds until the next sample. The
//! value at the step's start is the last sample at or before it (carried in from the previous
//! step), so a step that starts with replicas left over from the last one is measured from
//! what it really started with.

/// Time-weighted replica figures and scaling behaviour in a step window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalingFigures {
    /// Time-weighted mean replicas over the covered part of the window.
    pub avg: f64,
    /// Fewest replicas in force during the window.
    pub min: f64,
    /// Most replicas in force during the window.
    pub max: f64,
    /// Replicas at the end of the window.
    pub last: f64,
    /// ∫ replicas dt over the window, in replica-seconds (the cost of the step).
    pub replica_seconds: f64,
    /// Seconds from the step's start to the first increase; `None` without one.
    pub scale_up_reaction_s: Option<f64>,
    /// Seconds from the step's start to the last change, if the count then stayed unchanged
    /// for the settle window before the step ended; 0 when it never changed; `None` when it
    /// was still changing.
    pub settle_time_s: Option<f64>,
    /// Highest count at or after the first increase, minus the final count (≥ 0); 0 without
    /// an increase.
    pub overshoot: f64,
    /// Changes of the count.
    pub scale_events: u32,
    /// Changes whose direction differs from the previous change (thrashing).
    pub direction_changes: u32,
}

/// Computes the figures of `series` (sorted by time, (ts ms, replicas)) within
/// `[start_ms, end_ms)`. `None` when the series has no value in or before the window.
pub fn figures(
    series: &[(i64, f64)],
    start_ms: i64,
    end_ms: i64,
    settle_window_ms: i64,
) -> Option<ScalingFigures> {
    if end_ms <= start_ms {
        return None;
    }
    // Index of the first sample after start.
    let first_after = series.partition_point(|(t, _)| *t <= start_ms);
    let in_window_end = series.partition_point(|(t, _)| *t < end_ms);
    let (eff_start, initial, rest) = if first_after > 0 {
        (
            start_ms,
            series[first_after - 1].1,
            &series[first_after..in_window_end],
        )
    } else if first_after < in_window_end {
        let (t, v) = series[first_after];
        (t, v, &series[first_after + 1..in_window_end])
    } else {
        return None;
    };

    let mut integral = 0.0;
    let mut current = initial;
    let mut since = eff_start;
    let (mut min, mut max) = (initial, initial);
    let mut scale_events = 0u32;
    let mut direction_changes = 0u32;
    let mut last_dir = 0i8;
    let mut first_up: Option<i64> = None;
    let mut peak_after_up = f64::NEG_INFINITY;
    let mut last_change: Option<i64> = None;
    for &(t, v) in rest {
        if v.is_nan() {
            continue;
        }
        integral += current * (t - since) as f64 / 1000.0;
        since = t;
        if v != current {
            let dir: i8 = if v > current { 1 } else { -1 };
            scale_events += 1;
            if last_dir != 0 && dir != last_dir {
                direction_changes += 1;
            }
            last_dir = dir;
            if dir > 0 && first_up.is_none() {
                first_up = Some(t);
            }
            last_change = Some(t);
            current = v;
        }
        if first_up.is_some() {
            peak_after_up = peak_after_up.max(v);
        }
        min = min.min(v);
        max = max.max(v);
    }
    integral += current * (end_ms - since) as f64 / 1000.0;
    let covered_s = (end_ms - eff_start) as f64 / 1000.0;
    let settle_time_s = match last_change {
        None => Some(0.0),
        Some(t) if end_ms - t >= settle_window_ms => Some((t - start_ms) as f64 / 1000.0),
        Some(_) => None,
    };
    Some(ScalingFigures {
        avg: if covered_s > 0.0 {
            integral / covered_s
        } else {
            current
        },
        min,
        max,
        last: current,
        replica_seconds: integral,
        scale_up_reaction_s: first_up.map(|t| (t - start_ms) as f64 / 1000.0),
        settle_time_s,
        overshoot: if first_up.is_some() {
            (peak_after_up - current).max(0.0)
        } else {
            0.0
        },
        scale_events,
        direction_changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_weighted_and_scaling_figures() {
        // 1 replica carried in; up to 3 at 10 s, 5 at 20 s, down to 4 at 40 s; step 0..100 s.
        let s = vec![
            (-5_000, 1.0),
            (10_000, 3.0),
            (20_000, 5.0),
            (30_000, 5.0),
            (40_000, 4.0),
        ];
        let f = figures(&s, 0, 100_000, 30_000).unwrap();
        // 1·10 + 3·10 + 5·20 + 4·60 = 380 replica-seconds over 100 s.
        assert!((f.replica_seconds - 380.0).abs() < 1e-9);
        assert!((f.avg - 3.8).abs() < 1e-9);
        assert_eq!((f.min, f.max, f.last), (1.0, 5.0, 4.0));
        assert_eq!(f.scale_up_reaction_s, Some(10.0));
        assert_eq!(f.settle_time_s, Some(40.0));
        assert_eq!(f.overshoot, 1.0);
        assert_eq!((f.scale_events, f.direction_changes), (3, 1));

        // Still changing 10 s before the end: not settled.
        let f = figures(&s, 0, 50_000, 30_000).unwrap();
        assert_eq!(f.settle_time_s, None);

        // Nothing before or in the window.
        assert!(figures(&s, 200_000, 300_000, 1).unwrap().scale_events == 0);
        assert!(figures(&[], 0, 1, 1).is_none());
        assert!(figures(&[(5, 1.0)], 0, 5, 1).is_none());
    }

    #[test]
    fn window_without_carried_value_starts_at_first_sample() {
        let s = vec![(50_000, 2.0), (75_000, 2.0)];
        let f = figures(&s, 0, 100_000, 1000).unwrap();
        assert_eq!(f.avg, 2.0);
        assert_eq!(f.replica_seconds, 100.0);
        assert_eq!(f.settle_time_s, Some(0.0));
        assert_eq!(f.scale_up_reaction_s, None);
    }
}
