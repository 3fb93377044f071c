//! The definitions of a step's rates and of saturation, on synthetic load results with
//! known answers: late responses, timeouts, a step cut short, a queue building up, a
//! goodput collapse, and the throughput SLO that must fail when the mesh serves too little.

use chrono::DateTime;
use meshbench_analysis::synthetic::{self, SecondSpec};
use meshbench_analysis::tables::StepRow;
use meshbench_analysis::{
    Enforcement, LimitsEnforcement, Platform, RunData, RunMeta, Slo, StepLoad, StepMeta, analyze,
};

const T: i64 = 1_700_000_000_000;

fn meta() -> RunMeta {
    RunMeta {
        benchmark: "rates".into(),
        spec: serde_json::json!({}),
        meshbench_version: "0.1.0-test".into(),
        platform: Platform::Local,
        limits: LimitsEnforcement {
            mode: Enforcement::Enforced,
            reason: "test".into(),
        },
        warnings: vec![],
        phases: vec![],
        started_at: DateTime::from_timestamp_millis(T).expect("valid"),
        finished_at: None,
        steps_planned: None,
        partial: false,
        deviations: Vec::new(),
    }
}

/// `ok` successes per second at `latency_ms` (and `timeouts` per second) for `secs` seconds.
fn seconds(secs: usize, ok: usize, latency_ms: u64, timeouts: u64) -> Vec<SecondSpec> {
    (0..secs)
        .map(|_| SecondSpec {
            ok_latencies_us: vec![latency_ms * 1000; ok],
            errors: 0,
            timeouts,
        })
        .collect()
}

struct Step {
    target: f64,
    secs: Vec<SecondSpec>,
    /// Last success, ms after the step's start.
    last_ok_ms: Option<u64>,
    /// Seconds the stage ran before it was stopped.
    cut_after_s: Option<u64>,
}

fn run(steps: Vec<Step>, slos: Vec<Slo>) -> Vec<StepRow> {
    let mut data = RunData::new(meta());
    data.slos = slos;
    for (i, s) in steps.into_iter().enumerate() {
        let index = i as u32;
        let start = T + i64::from(index) * 100_000;
        let mut stage = synthetic::stage(index, "s", start, Some(s.target), &s.secs);
        stage.last_ok_unix_ms = s.last_ok_ms.map(|d| start as u64 + d);
        if let Some(cut) = s.cut_after_s {
            stage.partial = true;
            stage.planned_duration_ms = stage.seconds.len() as u64 * 1000 * 3;
            stage.ended_unix_ms = start as u64 + cut * 1000;
        }
        stage.recompute_summary().expect("summary");
        data.steps.push(StepMeta {
            mesh: "m".into(),
            repetition: 0,
            index,
            name: format!("s{index}"),
            start_ms: start,
            end_ms: start + stage.seconds.len() as i64 * 1000,
            target_rate: Some(s.target),
            users: None,
            warmup: false,
        });
        data.load.push(StepLoad {
            mesh: "m".into(),
            repetition: 0,
            step: index,
            stage,
        });
    }
    analyze(&data).steps
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() <= 1e-6 * b.abs().max(1.0))
}

#[test]
fn late_responses_count_for_the_step_but_not_as_served_in_time() {
    // 40 rps sent for 10 s; every request succeeded, but the last answer came at 16 s:
    // the mesh served 400 in 16 s.
    let rows = run(
        vec![Step {
            target: 40.0,
            secs: seconds(10, 40, 3000, 0),
            last_ok_ms: Some(16_000),
            cut_after_s: None,
        }],
        vec![Slo::Throughput { min_ratio: 0.95 }],
    );
    let r = &rows[0];
    assert!(close(r.sent_rate_rps, 40.0), "{r:?}");
    assert!(close(r.successes_incl_late_rps, 40.0), "{r:?}");
    assert!(close(r.throughput_rps, 25.0), "{r:?}");
    assert!(close(r.throughput_ratio, 0.625), "{r:?}");
    assert_eq!(r.saturated, Some(true));
    assert!(
        r.saturation
            .as_deref()
            .unwrap()
            .contains("served 25.0 of 40.0 rps")
    );
    assert_eq!(
        r.slo_pass,
        Some(false),
        "the sent rate must not satisfy the SLO"
    );
    assert!(
        r.slo_violations
            .as_deref()
            .unwrap()
            .contains("served throughput/target"),
        "{:?}",
        r.slo_violations
    );
}

#[test]
fn answers_within_the_step_are_served_at_the_target() {
    let rows = run(
        vec![Step {
            target: 40.0,
            secs: seconds(10, 40, 20, 0),
            last_ok_ms: Some(10_020),
            cut_after_s: None,
        }],
        vec![Slo::Throughput { min_ratio: 0.95 }],
    );
    let r = &rows[0];
    assert!(close(r.throughput_rps, 400.0 / 10.02), "{r:?}");
    assert_eq!(r.saturated, Some(false));
    assert_eq!(r.saturation, None);
    assert_eq!(r.slo_pass, Some(true));
}

#[test]
fn timeouts_are_not_served_and_a_falling_throughput_is_a_collapse() {
    let rows = run(
        vec![
            // 30 rps: 25 served per second, the rest timed out.
            Step {
                target: 30.0,
                secs: seconds(10, 25, 900, 5),
                last_ok_ms: Some(10_900),
                cut_after_s: None,
            },
            // 60 rps: abandoned requests still burn CPU; only 12 per second are served.
            Step {
                target: 60.0,
                secs: seconds(10, 12, 1900, 48),
                last_ok_ms: Some(11_900),
                cut_after_s: None,
            },
        ],
        vec![],
    );
    assert!(close(rows[0].throughput_rps, 250.0 / 10.9), "{:?}", rows[0]);
    assert_eq!(rows[0].timeouts, Some(50));
    assert_eq!(rows[0].saturated, Some(true));
    assert!(!rows[0].saturation.as_deref().unwrap().contains("collapse"));
    let why = rows[1].saturation.as_deref().unwrap();
    assert!(why.contains("goodput collapse: 480 timeouts"), "{why}");
    assert!(why.contains("served at 30.0 rps"), "{why}");
    assert_eq!(rows[1].slo_pass, None, "no SLOs declared");
}

#[test]
fn a_step_cut_short_is_judged_over_the_time_it_ran() {
    // Planned 12 s, stopped after 4 s with 40 rps served throughout.
    let rows = run(
        vec![Step {
            target: 40.0,
            secs: seconds(4, 40, 10, 0),
            last_ok_ms: Some(4_010),
            cut_after_s: Some(4),
        }],
        vec![],
    );
    let r = &rows[0];
    assert!(r.partial);
    assert!(close(r.sent_rate_rps, 40.0), "{r:?}");
    assert!(close(r.throughput_rps, 160.0 / 4.01), "{r:?}");
    assert_eq!(r.saturated, Some(false));
}

#[test]
fn latency_growing_through_the_step_is_saturation_even_at_the_target_rate() {
    // Every request answered within the window, but the median climbs 20 ms → 2 s.
    let mut secs = seconds(9, 30, 20, 0);
    for (i, s) in secs.iter_mut().enumerate() {
        s.ok_latencies_us = vec![20_000 + i as u64 * 250_000; 30];
    }
    let rows = run(
        vec![Step {
            target: 30.0,
            secs,
            last_ok_ms: Some(9_000),
            cut_after_s: None,
        }],
        vec![],
    );
    let r = &rows[0];
    assert!(close(r.throughput_rps, 30.0), "{r:?}");
    assert!(
        r.latency_growth
            .is_some_and(|g| (g - 1770.0 / 270.0).abs() < 0.05),
        "{r:?}"
    );
    assert_eq!(r.saturated, Some(true));
    assert!(r.saturation.as_deref().unwrap().contains("queue build-up"));
}

#[test]
fn the_run_says_where_the_sweep_saturated() {
    let step = |target: f64, served: usize, last_ok_ms: u64| Step {
        target,
        secs: seconds(10, served, 50, 0),
        last_ok_ms: Some(last_ok_ms),
        cut_after_s: None,
    };
    let mut data_steps = vec![step(10.0, 10, 10_050), step(20.0, 20, 10_050)];
    // 40 rps asked, 24.5 served: 400 successes arriving over 16.3 s.
    data_steps.push(Step {
        target: 40.0,
        secs: seconds(10, 40, 3000, 0),
        last_ok_ms: Some(16_327),
        cut_after_s: None,
    });
    let rows = run(data_steps, vec![Slo::Throughput { min_ratio: 0.95 }]);
    let sat = meshbench_analysis::saturation::summarise(&rows);
    assert_eq!(sat.len(), 1);
    let m = &sat[0];
    assert_eq!(m.first_saturated_rate_rps, Some(40.0));
    assert_eq!(m.max_rate_within_slos_rps, Some(20.0));
    assert!(
        m.saturated_throughput_rps
            .is_some_and(|t| (t - 24.5).abs() < 0.01)
    );
    assert!(
        m.summary
            .starts_with("mesh m saturates at ~24.5 rps served (first saturated step: 40.0 rps)"),
        "{}",
        m.summary
    );
    assert!(
        m.summary
            .contains("highest rate served within the SLOs: 20.0 rps")
    );
}
