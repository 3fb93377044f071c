//! The runner in-process against a real target on loopback.

#![cfg(feature = "runner")]

mod common;

use std::time::Duration;

use meshbench_loadgen::load_plan::{LoadModel, LoadPlan, Profile, Stage, WarmUp};
use meshbench_loadgen::{CancellationToken, LoadResult, Pacing, RunOptions, run_plan};

fn stage(rate: Option<f64>, users: Option<u32>, ms: u64) -> Stage {
    Stage {
        name: None,
        duration: Duration::from_millis(ms),
        rate,
        users,
    }
}

fn open(max_in_flight: u32, max_lateness: Option<Duration>) -> LoadModel {
    LoadModel::Open {
        max_in_flight,
        max_lateness,
    }
}

fn quiet() -> RunOptions {
    RunOptions {
        progress: false,
        ..RunOptions::default()
    }
}

fn check_consistent(r: &LoadResult) {
    for s in &r.stages {
        let c = &s.counts;
        assert_eq!(
            c.sent,
            c.completed + c.timeouts + c.connection_errors + c.other_errors + c.unfinished(),
            "stage {}",
            s.index
        );
        assert_eq!(c.ok, c.status_2xx);
        let hist =
            s.latency_histogram().unwrap().len() + s.failed_latency_histogram().unwrap().len();
        assert_eq!(
            hist,
            c.sent - c.unfinished(),
            "every finished request is in a histogram"
        );
        let per_second: u64 = s.seconds.iter().map(|b| b.counts.sent).sum();
        assert_eq!(per_second, c.sent, "seconds add up to the stage");
        let planned: u64 = s.seconds.iter().map(|b| b.counts.planned).sum();
        assert_eq!(planned, c.planned, "planned seconds add up to the stage");
    }
}

#[test]
fn open_loop_sends_exactly_the_plan_with_warm_up_apart() {
    let _g = common::serial();
    let addr = common::start_target();
    let mut plan = LoadPlan::single_stage(
        format!("http://{addr}"),
        open(100, None),
        stage(Some(200.0), None, 1000),
    );
    plan.profile = Profile::Stages(vec![
        stage(Some(200.0), None, 1000),
        stage(Some(50.0), None, 1500),
    ]);
    plan.warm_up = Some(WarmUp {
        duration: Duration::from_millis(500),
        rate: Some(100.0),
        users: None,
    });
    let r = common::runtime()
        .block_on(run_plan(&plan, quiet()))
        .unwrap();
    assert!(!r.partial);
    assert_eq!(r.stages.len(), 3);
    assert!(r.stages[0].warm_up && !r.stages[1].warm_up);
    let planned: Vec<u64> = r.stages.iter().map(|s| s.counts.planned).collect();
    assert_eq!(planned, vec![50, 200, 75]);
    for s in &r.stages {
        assert_eq!(
            s.counts.sent, s.counts.planned,
            "stage {}: every planned request is sent",
            s.index
        );
        assert_eq!(s.counts.ok, s.counts.sent, "stage {}: all succeed", s.index);
        assert_eq!(s.counts.dropped, 0);
    }
    // Warm-up is measured but kept out of the totals.
    assert_eq!(r.total_counts().sent, 275);
    assert_eq!(r.latency_histogram().unwrap().len(), 275);
    // Stages follow each other on one timeline.
    for w in r.stages.windows(2) {
        assert_eq!(
            w[1].started_unix_ms - w[0].started_unix_ms,
            w[0].planned_duration_ms
        );
    }
    assert_eq!(r.stages[2].seconds.len(), 2);
    assert_eq!(r.stages[2].seconds[0].counts.planned, 50);
    assert_eq!(r.stages[2].seconds[1].counts.planned, 25);
    assert!((r.stages[1].summary.sent_rate - 200.0).abs() < 1e-6);
    check_consistent(&r);
}

#[test]
fn closed_loop_runs_the_users_of_each_stage() {
    let _g = common::serial();
    let addr = common::start_target();
    let mut plan = LoadPlan::single_stage(
        format!("http://{addr}"),
        LoadModel::Closed {
            think_time: Duration::ZERO,
        },
        stage(None, Some(2), 1000),
    );
    plan.request.path = "/slow".into();
    plan.profile = Profile::Stages(vec![stage(None, Some(2), 1000), stage(None, Some(6), 1000)]);
    let r = common::runtime()
        .block_on(run_plan(&plan, quiet()))
        .unwrap();
    let (a, b) = (&r.stages[0].counts, &r.stages[1].counts);
    // 200 ms per request: each user sends at most 5 requests a second (plus one in
    // flight at the start of the second); generous lower bounds for a busy machine.
    assert!((2..=12).contains(&a.sent), "2 users sent {}", a.sent);
    assert!((6..=36).contains(&b.sent), "6 users sent {}", b.sent);
    assert!(
        b.sent > a.sent,
        "more users, more requests: {} vs {}",
        b.sent,
        a.sent
    );
    assert_eq!(a.planned, a.sent);
    assert_eq!(a.late, 0);
    let p50 = r.stages[1].summary.latency.p50_us;
    assert!(
        p50 >= 190_000,
        "latency of /slow is at least 200 ms, got {p50} µs"
    );
    check_consistent(&r);
}

#[test]
fn busy_slots_make_requests_late_and_past_the_limit_dropped() {
    let _g = common::serial();
    let addr = common::start_target();
    // 4 slots × 200 ms = 20 requests/s of capacity against a plan of 40/s.
    let mut plan = LoadPlan::single_stage(
        format!("http://{addr}"),
        open(4, None),
        stage(Some(40.0), None, 1000),
    );
    plan.request.path = "/slow".into();
    let r = common::runtime()
        .block_on(run_plan(&plan, quiet()))
        .unwrap();
    let s = &r.stages[0];
    assert_eq!(s.counts.planned, 40);
    assert_eq!(s.counts.sent, 40, "late requests are sent, never skipped");
    assert!(s.counts.late >= 10, "late {}", s.counts.late);
    assert!(
        s.summary.lateness.max_us >= 300_000,
        "{:?}",
        s.summary.lateness
    );
    // Latency from the planned time includes the wait for a slot.
    assert!(
        s.summary.latency.max_us >= 500_000,
        "{:?}",
        s.summary.latency
    );
    // The response time from the actual send does not: the target took ~200 ms.
    let rt = &s.summary.response_time;
    assert!((200_000..400_000).contains(&rt.max_us), "{rt:?}");
    assert!(rt.max_us < s.summary.latency.max_us / 2, "{rt:?}");
    assert!(
        r.warnings.iter().any(|w| w.contains("late")),
        "{:?}",
        r.warnings
    );
    check_consistent(&r);

    plan.model = open(4, Some(Duration::from_millis(150)));
    let r = common::runtime()
        .block_on(run_plan(&plan, quiet()))
        .unwrap();
    let c = &r.stages[0].counts;
    assert!(c.dropped >= 5, "dropped {}", c.dropped);
    assert_eq!(c.sent + c.dropped, 40);
    check_consistent(&r);
}

#[test]
fn failures_timeouts_and_request_records() {
    let _g = common::serial();
    let addr = common::start_target();
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("requests.jsonl");
    let mut plan = LoadPlan::single_stage(
        format!("http://{addr}"),
        open(50, None),
        stage(Some(20.0), None, 500),
    );
    plan.request.path = "/fail".into();
    let opts = RunOptions {
        record_requests: Some(records.clone()),
        ..quiet()
    };
    let r = common::runtime().block_on(run_plan(&plan, opts)).unwrap();
    let c = &r.stages[0].counts;
    assert_eq!((c.sent, c.status_5xx, c.ok), (10, 10, 0));
    assert_eq!(r.stages[0].summary.success_ratio, 0.0);
    let lines = std::fs::read_to_string(&records).unwrap();
    assert_eq!(lines.lines().count(), 10);
    assert!(
        lines.lines().all(|l| l.contains("\"status\":503")),
        "{lines}"
    );

    plan.request.path = "/slow".into();
    plan.timeout = Duration::from_millis(50);
    plan.preflight = false;
    let r = common::runtime()
        .block_on(run_plan(&plan, quiet()))
        .unwrap();
    let c = &r.stages[0].counts;
    assert_eq!((c.sent, c.timeouts, c.ok), (10, 10, 0));
    check_consistent(&r);
}

#[test]
fn cancellation_returns_a_partial_result() {
    let _g = common::serial();
    let addr = common::start_target();
    let plan = LoadPlan::single_stage(
        format!("http://{addr}"),
        open(50, None),
        stage(Some(100.0), None, 20_000),
    );
    let cancel = CancellationToken::new();
    let opts = RunOptions {
        cancel: cancel.clone(),
        ..quiet()
    };
    let rt = common::runtime();
    let started = std::time::Instant::now();
    let r = rt
        .block_on(async {
            let c = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1200)).await;
                c.cancel();
            });
            run_plan(&plan, opts).await
        })
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(15), "stopped early");
    assert!(r.partial && r.stages[0].partial);
    let c = &r.stages[0].counts;
    assert!(c.sent >= 50 && c.sent < 2000, "sent {}", c.sent);
    // Planned counts only what fell due before the stop.
    assert!(
        c.planned >= c.sent.saturating_sub(1) && c.planned <= c.sent + 5,
        "{c:?}"
    );
    check_consistent(&r);
}

#[test]
fn live_metrics_endpoint_serves_during_the_run() {
    let _g = common::serial();
    let addr = common::start_target();
    let metrics_addr = common::closed_port();
    let plan = LoadPlan::single_stage(
        format!("http://{addr}"),
        open(20, None),
        stage(Some(50.0), None, 2500),
    );
    let opts = RunOptions {
        metrics_listen: Some(metrics_addr),
        ..quiet()
    };
    let rt = common::runtime();
    let (r, body) = rt.block_on(async {
        let scrape = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1800)).await;
            reqwest_get(&format!("http://{metrics_addr}/metrics")).await
        });
        let r = run_plan(&plan, opts).await.unwrap();
        (r, scrape.await.unwrap())
    });
    assert_eq!(r.stages[0].counts.sent, 125);
    assert!(body.contains("meshbench_loadgen_requests_total"), "{body}");
    assert!(body.contains("outcome=\"ok\""), "{body}");
    assert!(body.contains("meshbench_loadgen_target_rate"), "{body}");
}

async fn reqwest_get(url: &str) -> String {
    // A raw HTTP/1.1 GET keeps the test free of an HTTP client dependency.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let u = url.strip_prefix("http://").unwrap();
    let (host, path) = u.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[test]
fn preflight_refuses_an_unreachable_target() {
    let _g = common::serial();
    let plan = LoadPlan::single_stage(
        format!("http://{}", common::closed_port()),
        open(10, None),
        stage(Some(10.0), None, 1000),
    );
    let err = common::runtime()
        .block_on(run_plan(&plan, quiet()))
        .unwrap_err();
    // The run failed (nothing was sent): the shared table's 4.
    assert_eq!(err.exit_code(), 4);
    assert!(err.to_string().contains("preflight"), "{err}");
}

/// The sending thread stalls for 200 ms across a second boundary: the requests due
/// meanwhile leave late, in a burst counted in the second they actually left, and the
/// stall shows in the lateness histogram. (Counts by planned second, or lateness below a
/// threshold ignored, would hide all three.)
#[test]
fn a_stalled_sender_shows_as_late_requests_a_burst_and_lateness() {
    let _g = common::serial();
    let addr = common::start_target();
    let mut plan = LoadPlan::single_stage(
        format!("http://{addr}"),
        open(100, None),
        stage(Some(200.0), None, 3000),
    );
    let start = std::time::SystemTime::now() + Duration::from_millis(800);
    let start_ms = start
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    plan.start_at_unix_ms = Some(start_ms);
    // One thread: blocking it stalls every sender, as a descheduled process would.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt
        .block_on(async {
            let stall_at = start + Duration::from_millis(900);
            tokio::spawn(async move {
                let wait = stall_at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                tokio::time::sleep(wait).await;
                std::thread::sleep(Duration::from_millis(200));
            });
            run_plan(&plan, quiet()).await
        })
        .unwrap();
    let s = &r.stages[0];
    check_consistent(&r);
    assert_eq!(s.counts.sent, 600);
    assert!(s.counts.late >= 25, "late {}", s.counts.late);
    assert!(
        s.summary.lateness.max_us >= 150_000,
        "{:?}",
        s.summary.lateness
    );
    let sent: Vec<u64> = s.seconds.iter().map(|b| b.counts.sent).collect();
    let planned: Vec<u64> = s.seconds.iter().map(|b| b.counts.planned).collect();
    assert_eq!(&planned[..3], [200, 200, 200]);
    assert!(sent[0] <= 190 && sent[1] >= 210, "sent per second {sent:?}");
}

/// Sends leave at their planned time within a fraction of a millisecond (tokio's timer
/// alone is ~1 ms late): the pacing that latency is measured from.
#[test]
fn open_loop_sends_leave_at_their_planned_time() {
    let _g = common::serial();
    let addr = common::start_target();
    let plan = LoadPlan::single_stage(
        format!("http://{addr}"),
        open(100, None),
        stage(Some(500.0), None, 2000),
    );
    let r = common::runtime()
        .block_on(run_plan(&plan, quiet()))
        .unwrap();
    let d = &r.stages[0].summary.send_delay;
    assert!(d.p50_us < 400, "{d:?}");
    let l = &r.stages[0].summary.lateness;
    assert!(l.p50_us < 400, "lateness is recorded from 0: {l:?}");
}

// Elsewhere than Linux both pacings are tokio's timer.
#[cfg(target_os = "linux")]
#[test]
fn coarse_pacing_sends_the_same_plan_later_than_precise_pacing() {
    let _g = common::serial();
    let addr = common::start_target();
    let plan = LoadPlan::single_stage(
        format!("http://{addr}"),
        open(20, None),
        // 3.33 ms apart: the planned times fall everywhere within tokio's 1 ms ticks.
        stage(Some(300.0), None, 1500),
    );
    let run = |pacing| {
        let opts = RunOptions { pacing, ..quiet() };
        let r = common::runtime().block_on(run_plan(&plan, opts)).unwrap();
        check_consistent(&r);
        let s = r.stages.last().unwrap().clone();
        assert_eq!(s.counts.sent, s.counts.planned, "{pacing:?}");
        s.summary.send_delay.mean_us
    };
    let precise = run(Pacing::Precise);
    let coarse = run(Pacing::Coarse);
    // tokio's timer fires on the first 1 ms tick after a deadline; the timerfd at it.
    assert!(
        coarse > precise,
        "mean send delay: coarse {coarse} µs, precise {precise} µs"
    );
}
