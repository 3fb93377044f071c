//! Behaviour of real workers over real HTTP on 127.0.0.1 (in-process servers).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::*;
use serde_json::{Value, json};

fn config(endpoints: Value) -> Value {
    json!({"version": 1, "service": "svc", "pod": "svc-0", "endpoints": endpoints})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_burn_reports_at_least_the_configured_thread_cpu_time() {
    let w = Worker::start(config(json!([{"path": "/cpu", "cpu_us": 20000}]))).await;
    let c = client();
    let r = get(&c, &format!("{}/cpu", w.url)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let env = r.json();
    let cpu = env["timings"]["cpu_us"].as_u64().unwrap();
    assert!(cpu >= 20000, "cpu_us {cpu}");
    assert!(cpu < 2_000_000, "cpu_us {cpu} (sanity bound)");
    assert_eq!(env["service"], "svc");
    assert_eq!(env["pod"], "svc-0");
    assert_eq!(env["endpoint"], "GET /cpu");
    let m = get(&c, &format!("{}/metrics", w.url)).await.text;
    let burned = metric(
        &m,
        "meshbench_worker_cpu_seconds_total",
        &[r#"endpoint="GET /cpu""#],
    )
    .unwrap();
    assert!(burned >= 0.02, "{burned}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_allocated_for_the_request() {
    let w = Worker::start(config(json!([{"path": "/mem", "memory_bytes": 8_388_608}]))).await;
    let r = get(&client(), &format!("{}/mem", w.url)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["memory_bytes"], 8_388_608);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_after_work_and_minimum_total() {
    let w = Worker::start(config(json!([
        {"path": "/after", "cpu_us": 10000,
         "delay": {"distribution": {"kind": "fixed", "value_us": 60000}}},
        {"path": "/min", "cpu_us": 10000,
         "delay": {"distribution": {"kind": "fixed", "value_us": 80000}, "mode": "minimum_total"}},
        {"path": "/min-short", "cpu_us": 30000,
         "delay": {"distribution": {"kind": "fixed", "value_us": 1000}, "mode": "minimum_total"}},
        {"path": "/exp", "seed": 3,
         "delay": {"distribution": {"kind": "exponential", "mean_us": 2000}}}
    ])))
    .await;
    let c = client();
    let after = get(&c, &format!("{}/after", w.url)).await.json();
    assert!(
        after["timings"]["delay_us"].as_u64().unwrap() >= 60000,
        "{after}"
    );
    assert!(
        after["timings"]["total_us"].as_u64().unwrap() >= 70000,
        "{after}"
    );

    let min = get(&c, &format!("{}/min", w.url)).await.json();
    let total = min["timings"]["total_us"].as_u64().unwrap();
    let delay = min["timings"]["delay_us"].as_u64().unwrap();
    assert!(total >= 80000, "{min}");
    // The work counts towards the minimum, so the sleep is shorter than the minimum.
    assert!(delay < 80000, "{min}");

    let short = get(&c, &format!("{}/min-short", w.url)).await.json();
    assert!(
        short["timings"]["delay_us"].as_u64().unwrap() < 30000,
        "{short}"
    );

    let mut delays = Vec::new();
    for _ in 0..5 {
        delays.push(get(&c, &format!("{}/exp", w.url)).await.json()["timings"]["delay_us"].clone());
    }
    assert!(
        delays.iter().any(|d| d != &delays[0]),
        "exponential delays vary: {delays:?}"
    );
    w.stop().await;
}

/// A 2 ms delay takes 2 ms, not the 3 that tokio's 1 ms timer makes of it (its sleeps end
/// on the first tick after the deadline, then wait for the runtime's next turn).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_ends_within_a_fraction_of_a_millisecond_of_its_length() {
    let w = Worker::start(config(json!([
        {"path": "/d", "delay": {"distribution": {"kind": "fixed", "value_us": 2000}}},
        {"path": "/m", "cpu_us": 500,
         "delay": {"distribution": {"kind": "fixed", "value_us": 2000}, "mode": "minimum_total"}}
    ])))
    .await;
    let c = client();
    for (path, field) in [("d", "delay_us"), ("m", "total_us")] {
        let mut took: Vec<u64> = Vec::new();
        for _ in 0..31 {
            let r = get(&c, &format!("{}/{path}", w.url)).await.json();
            took.push(r["timings"][field].as_u64().unwrap());
        }
        took.sort_unstable();
        assert!(took[0] >= 2000, "/{path}: never short, {took:?}");
        // The median, so a loaded machine's odd late wake-up does not decide.
        assert!(
            took[15] < 2600,
            "/{path}: {field} median {} µs of {took:?}",
            took[15]
        );
    }
    w.stop().await;
}

/// A → {group 0: B, group 1: C} in parallel; B → C. Every hop succeeds and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_service_chain_with_parallel_fan_out() {
    let c_svc = Worker::start(json!({"version": 1, "service": "c",
        "endpoints": [{"path": "/c", "cpu_us": 1000}]}))
    .await;
    let b_svc = Worker::start(json!({"version": 1, "service": "b",
        "endpoints": [{"path": "/b", "call_groups": [[{"url": c_svc.url, "path": "/c"}]]}]}))
    .await;
    let a_svc = Worker::start(json!({"version": 1, "service": "a",
    "endpoints": [{"path": "/a", "call_groups": [
        [{"url": b_svc.url, "path": "/b", "name": "b"}],
        [{"url": c_svc.url, "path": "/c", "name": "c", "repeat": 2}]
    ]}]}))
    .await;
    let cl = client();
    for _ in 0..3 {
        let r = get(&cl, &format!("{}/a", a_svc.url)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let calls = r.json()["calls"].as_array().unwrap().clone();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert!(
            calls
                .iter()
                .all(|c| c["outcome"] == "ok" && c["status"] == 200)
        );
        assert_eq!(calls[0]["group"], 0);
        assert_eq!(calls[1]["group"], 1);
        assert_eq!(calls[2]["attempt"], 1);
    }
    let m = get(&cl, &format!("{}/metrics", c_svc.url)).await.text;
    let served = metric(&m, "meshbench_worker_requests_total", &[r#"status="200""#]).unwrap();
    assert_eq!(
        served, 9.0,
        "C serves 2 direct calls and 1 via B per request"
    );
    let ma = get(&cl, &format!("{}/metrics", a_svc.url)).await.text;
    assert_eq!(
        metric(
            &ma,
            "meshbench_worker_downstream_calls_total",
            &[r#"target="c""#, r#"outcome="ok""#]
        ),
        Some(6.0)
    );
    // Keep-alive: sequential requests reuse pooled connections (one per target here).
    let conns = metric(&ma, "meshbench_worker_downstream_connections_total", &[]).unwrap();
    assert!(
        conns <= 3.0,
        "A opened {conns} connections for 9 sequential calls"
    );
    for w in [a_svc, b_svc, c_svc] {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_run_in_parallel_and_calls_in_a_group_in_sequence() {
    let (slow, rec) = recorder(Duration::from_millis(200)).await;
    let (slow2, rec2) = recorder(Duration::from_millis(100)).await;
    let w = Worker::start(config(json!([
        {"path": "/par", "call_groups": [[{"url": slow, "path": "/x"}], [{"url": slow, "path": "/y"}]]},
        {"path": "/seq", "call_groups": [[{"url": slow2, "path": "/x"}, {"url": slow2, "path": "/y"}]]}
    ])))
    .await;
    let c = client();
    assert_eq!(
        get(&c, &format!("{}/par", w.url)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        rec.max_in_flight.load(Ordering::SeqCst),
        2,
        "groups overlap"
    );
    assert_eq!(
        get(&c, &format!("{}/seq", w.url)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        rec2.max_in_flight.load(Ordering::SeqCst),
        1,
        "calls in a group do not overlap"
    );
    assert_eq!(rec2.headers.lock().unwrap().len(), 2);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_probabilities_repeat_and_vary() {
    let (down, _rec) = recorder(Duration::ZERO).await;
    let cfg = config(json!([{"path": "/p", "seed": 7, "error_rate": 0.3,
        "call_groups": [[{"url": down, "probability": 0.5}]]}]));
    let mut runs = Vec::new();
    for _ in 0..2 {
        let w = Worker::start(cfg.clone()).await;
        let c = client();
        let mut seq = Vec::new();
        for _ in 0..40 {
            let r = get(&c, &format!("{}/p", w.url)).await;
            seq.push((
                r.status.as_u16(),
                r.json()["calls"].as_array().unwrap().len(),
            ));
        }
        w.stop().await;
        runs.push(seq);
    }
    assert_eq!(runs[0], runs[1], "same seed, same draws");
    let called = runs[0].iter().filter(|(_, n)| *n == 1).count();
    let errors = runs[0].iter().filter(|(s, _)| *s == 500).count();
    assert!(
        called > 0 && called < 40,
        "probability 0.5 gave {called}/40"
    );
    assert!(errors > 0 && errors < 40, "error_rate 0.3 gave {errors}/40");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_failures_answer_502_with_the_cause() {
    let closed = closed_port_url().await;
    let failing = Worker::start(json!({"version": 1, "service": "bad",
        "endpoints": [{"path": "/", "error_rate": 1.0}]}))
    .await;
    let w = Worker::start(config(json!([
        {"path": "/refused", "call_groups": [[{"url": closed}]]},
        {"path": "/500", "call_groups": [[{"url": failing.url}]]}
    ])))
    .await;
    let c = client();
    let r = get(&c, &format!("{}/refused", w.url)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let env = r.json();
    assert_eq!(env["error"], "downstream_failed");
    assert!(env["cause"].as_str().unwrap().contains(&closed), "{env}");
    assert_eq!(env["calls"][0]["outcome"], "connect_error");

    let r = get(&c, &format!("{}/500", w.url)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let env = r.json();
    assert!(env["cause"].as_str().unwrap().contains("500"), "{env}");
    assert_eq!(env["calls"][0]["status"], 500);

    let injected = get(&c, &failing.url).await;
    assert_eq!(injected.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(injected.json()["error"], "injected");
    w.stop().await;
    failing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_timeout_answers_504_or_is_ignored() {
    let (slow, _rec) = recorder(Duration::from_millis(500)).await;
    let w = Worker::start(config(json!([
        {"path": "/fail", "call_groups": [[{"url": slow, "timeout_us": 50000}]]},
        {"path": "/ignore", "on_downstream_timeout": "ignore",
         "call_groups": [[{"url": slow, "timeout_us": 50000}]]}
    ])))
    .await;
    let c = client();
    let r = get(&c, &format!("{}/fail", w.url)).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    let env = r.json();
    assert_eq!(env["error"], "downstream_timeout");
    assert!(
        env["cause"].as_str().unwrap().contains("timed out"),
        "{env}"
    );
    let r = get(&c, &format!("{}/ignore", w.url)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["calls"][0]["outcome"], "timeout");
    let m = get(&c, &format!("{}/metrics", w.url)).await.text;
    assert_eq!(
        metric(
            &m,
            "meshbench_worker_downstream_calls_total",
            &[r#"outcome="timeout""#, "/fail"]
        ),
        Some(1.0)
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shedding_answers_503_with_retry_after() {
    let w = Worker::start(config(json!([{"path": "/s", "max_in_flight": 2,
        "delay": {"distribution": {"kind": "fixed", "value_us": 400000}}}])))
    .await;
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (c, url) = (c.clone(), format!("{}/s", w.url));
        tasks.push(tokio::spawn(async move { get(&c, &url).await }));
    }
    let mut ok = 0;
    let mut shed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.headers["retry-after"], "1");
                assert_eq!(r.json()["error"], "overloaded");
                shed += 1;
            }
            s => panic!("unexpected {s}: {}", r.text),
        }
    }
    assert!((1..=2).contains(&ok) && shed >= 4, "ok {ok}, shed {shed}");
    let m = get(&c, &format!("{}/metrics", w.url)).await.text;
    assert_eq!(
        metric(&m, "meshbench_worker_shed_requests_total", &["GET /s"]),
        Some(f64::from(shed))
    );
    assert_eq!(
        metric(
            &m,
            "meshbench_worker_requests_total",
            &["GET /s", r#"status="503""#]
        ),
        Some(f64::from(shed))
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_startup_delay_and_in_flight_threshold() {
    let mut cfg = config(json!([{"path": "/slow",
        "delay": {"distribution": {"kind": "fixed", "value_us": 600000}}}]));
    cfg["startup_delay_us"] = json!(300000);
    cfg["readiness_max_in_flight"] = json!(1);
    let w = Worker::start(cfg).await;
    let c = client();
    let r = get(&c, &format!("{}/ready", w.url)).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "during start-up delay"
    );
    assert_eq!(
        get(&c, &format!("{}/live", w.url)).await.status,
        StatusCode::OK
    );
    let ready_url = format!("{}/ready", w.url);
    assert!(eventually(|| async { get(&c, &ready_url).await.status == StatusCode::OK }).await);

    let (c2, url) = (c.clone(), format!("{}/slow", w.url));
    let slow = tokio::spawn(async move { get(&c2, &url).await });
    assert!(
        eventually(|| async {
            get(&c, &ready_url).await.status == StatusCode::SERVICE_UNAVAILABLE
        })
        .await,
        "not ready while 1 request is in flight"
    );
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert_eq!(get(&c, &ready_url).await.status, StatusCode::OK);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_every_family() {
    let (down, _rec) = recorder(Duration::ZERO).await;
    let w = Worker::start(config(json!([{"path": "/m", "cpu_us": 1000,
        "call_groups": [[{"url": down, "name": "rec"}]]}])))
    .await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(
            get(&c, &format!("{}/m", w.url)).await.status,
            StatusCode::OK
        );
    }
    let r = get(&c, &format!("{}/metrics", w.url)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let m = r.text;
    let ep = r#"endpoint="GET /m""#;
    let svc = r#"service="svc""#;
    assert_eq!(
        metric(
            &m,
            "meshbench_worker_requests_total",
            &[svc, ep, r#"status="200""#]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &m,
            "meshbench_worker_request_duration_seconds_bucket",
            &[ep, r#"le="+Inf""#]
        ),
        Some(3.0)
    );
    assert!(
        m.contains(r#"le="0.0001""#) && m.contains(r#"le="30.0""#),
        "µs..s buckets"
    );
    assert_eq!(metric(&m, "meshbench_worker_in_flight", &[ep]), Some(0.0));
    assert!(metric(&m, "meshbench_worker_cpu_seconds_total", &[ep]).unwrap() >= 0.003);
    assert_eq!(
        metric(
            &m,
            "meshbench_worker_downstream_calls_total",
            &[ep, r#"target="rec""#, r#"outcome="ok""#]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(&m, "meshbench_worker_downstream_connections_total", &[svc]),
        Some(1.0)
    );
    assert!(metric(&m, "meshbench_worker_process_cpu_seconds_total", &[svc]).unwrap() > 0.0);
    assert!(metric(&m, "meshbench_worker_process_resident_memory_bytes", &[svc]).unwrap() > 1e6);
    assert_eq!(metric(&m, "meshbench_worker_ready", &[svc]), Some(1.0));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_404_and_methods_405_with_json() {
    let w = Worker::start(config(json!([{"path": "/only"}]))).await;
    let c = client();
    let r = get(&c, &format!("{}/nope", w.url)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.headers["content-type"], "application/json");
    let env = r.json();
    assert_eq!(env["error"], "not_found");
    assert_eq!(env["path"], "/nope");
    assert_eq!(env["endpoints"][0], "GET /only");
    let r = send(
        &c,
        Method::POST,
        &format!("{}/only", w.url),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.json()["error"], "method_not_allowed");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_answer_413() {
    let mut cfg = config(json!([{"path": "/up", "method": "POST"}]));
    cfg["max_request_body_bytes"] = json!(1024);
    let w = Worker::start(cfg).await;
    let c = client();
    let url = format!("{}/up", w.url);
    assert_eq!(
        send(&c, Method::POST, &url, &[], vec![b'a'; 1024])
            .await
            .status,
        StatusCode::OK
    );
    let r = send(&c, Method::POST, &url, &[], vec![b'a'; 4096]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"], "body_too_large");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_has_the_configured_size() {
    let w = Worker::start(config(json!([{"path": "/big", "response_bytes": 100000}]))).await;
    let r = get(&client(), &format!("{}/big", w.url)).await;
    assert_eq!(r.text.len(), 100000);
    assert_eq!(r.json()["endpoint"], "GET /big");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_and_b3_reach_the_downstream() {
    let (down, rec) = recorder(Duration::ZERO).await;
    let mid = Worker::start(json!({"version": 1, "service": "mid",
        "endpoints": [{"path": "/", "call_groups": [[{"url": down}]]}]}))
    .await;
    let w = Worker::start(config(
        json!([{"path": "/t", "call_groups": [[{"url": mid.url}]]}]),
    ))
    .await;
    let c = client();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = send(
        &c,
        Method::GET,
        &format!("{}/t", w.url),
        &[
            ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
            ("x-request-id", "req-42"),
        ],
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.headers["x-request-id"], "req-42");
    let env = r.json();
    assert_eq!(env["trace_id"], trace);
    {
        let seen = rec.headers.lock().unwrap();
        let h = seen.last().unwrap();
        let tp = h["traceparent"].to_str().unwrap();
        assert!(
            tp.starts_with(&format!("00-{trace}-")),
            "two hops down: {tp}"
        );
        assert!(
            !tp.contains("00f067aa0ba902b7"),
            "each hop sends its own span id"
        );
        assert_eq!(h["x-request-id"], "req-42");
    }

    // B3 only: the same trace continues, in B3 and in W3C form.
    let r = send(
        &c,
        Method::GET,
        &format!("{}/t", w.url),
        &[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "1"),
        ],
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let h = rec.headers.lock().unwrap().last().unwrap().clone();
    assert_eq!(h["x-b3-traceid"], "0000000000000000a3ce929d0e0e4736");
    assert_eq!(h["x-b3-sampled"], "1");
    assert!(
        h["traceparent"]
            .to_str()
            .unwrap()
            .contains("0000000000000000a3ce929d0e0e4736")
    );
    assert!(
        h.get("x-request-id").is_some(),
        "a request id is created when absent"
    );
    w.stop().await;
    mid.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_requests_complete_and_leave_nothing_in_flight() {
    let w = Worker::start(config(json!([{"path": "/c", "memory_bytes": 65536,
        "delay": {"distribution": {"kind": "fixed", "value_us": 100000}}}])))
    .await;
    let c = client();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..2000 {
        let (c, url) = (c.clone(), format!("{}/c", w.url));
        tasks.spawn(async move { get(&c, &url).await.status });
    }
    let mut ok = 0;
    while let Some(s) = tasks.join_next().await {
        if s.unwrap() == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 2000, "after {:?}", started.elapsed());
    let m = get(&c, &format!("{}/metrics", w.url)).await.text;
    assert_eq!(
        metric(&m, "meshbench_worker_in_flight", &["GET /c"]),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &m,
            "meshbench_worker_requests_total",
            &["GET /c", r#"status="200""#]
        ),
        Some(2000.0)
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_router_answers_without_a_socket() {
    use tower::ServiceExt;
    let cfg = meshbench_worker::WorkerConfig::from_json(
        &config(json!([{"path": "/x"}])).to_string(),
        "test",
    )
    .unwrap();
    let state = meshbench_worker::WorkerState::new(cfg).unwrap();
    let resp = meshbench_worker::app(state)
        .oneshot(
            axum::http::Request::get("/live")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
