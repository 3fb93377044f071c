//! The `meshbench-worker` binary as a real process: exit codes, SIGTERM draining, and the
//! background load of a replica.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_meshbench-worker");

/// Starts the binary with an inline config on 127.0.0.1:0 and returns it with its URL.
fn spawn(config: &serde_json::Value) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--config-json",
            &config.to_string(),
        ])
        .env_remove("MESHBENCH_WORKER_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("meshbench-worker listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, format!("http://{addr}"))
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..1000 {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("worker did not exit within 20 s");
}

/// Exit codes of the shared table (README, `meshbench_common::exit`): 1 for a config that
/// is invalid or cannot be read, 2 (usage) when none is given; messages start `error: `.
#[test]
fn invalid_config_exits_1_and_a_missing_one_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.json");
    std::fs::write(
        &path,
        r#"{"version":1,"service":"a","endpoints":[{"path":"/","error_rate":2}]}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("endpoints[0].error_rate") && err.contains("probability"),
        "{err}"
    );
    assert!(err.starts_with("error: "), "{err}");

    std::fs::write(
        &path,
        r#"{"version":1,"service":"a","endpoints":[{"path":"/","cpu":"5ms"}]}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field `cpu`") && err.contains("worker.json"),
        "{err}"
    );

    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("missing.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.json"));

    let out = Command::new(BIN)
        .env_remove("MESHBENCH_WORKER_CONFIG")
        .env_remove("MESHBENCH_WORKER_CONFIG_JSON")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

#[test]
fn check_prints_the_config_with_defaults() {
    let out = Command::new(BIN)
        .args([
            "--check",
            "--config-json",
            r#"{"version":1,"service":"a","endpoints":[]}"#,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["port"], 8080);
    assert_eq!(v["drain_grace_us"], 30_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let (mut child, url) = spawn(&json!({"version": 1, "service": "drain",
        "drain_grace_us": 10_000_000,
        "endpoints": [{"path": "/slow", "delay": {"distribution": {"kind": "fixed", "value_us": 800000}}}]}));
    let c = client();
    let (c2, slow_url) = (c.clone(), format!("{url}/slow"));
    let slow = tokio::spawn(async move { get(&c2, &slow_url).await });
    let metrics_url = format!("{url}/metrics");
    assert!(
        eventually(|| async {
            metric(
                &get(&c, &metrics_url).await.text,
                "meshbench_worker_in_flight",
                &["/slow"],
            ) == Some(1.0)
        })
        .await
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let r = slow.await.unwrap();
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the in-flight request completes: {}",
        r.text
    );
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // Gone: a new connection is refused.
    let fresh = common::client();
    let req = axum::http::Request::get(format!("{url}/live"))
        .body(http_body_util::Full::new(axum::body::Bytes::new()))
        .unwrap();
    assert!(fresh.request(req).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_at_the_grace_period() {
    let (mut child, url) = spawn(&json!({"version": 1, "service": "drain",
        "drain_grace_us": 200_000,
        "endpoints": [{"path": "/stuck", "delay": {"distribution": {"kind": "fixed", "value_us": 60_000_000}}}]}));
    let c = client();
    let (c2, stuck_url) = (c.clone(), format!("{url}/stuck"));
    let _stuck = tokio::spawn(async move {
        let req = axum::http::Request::get(stuck_url)
            .body(http_body_util::Full::new(axum::body::Bytes::new()))
            .unwrap();
        c2.request(req).await.is_ok()
    });
    let metrics_url = format!("{url}/metrics");
    assert!(
        eventually(|| async {
            metric(
                &get(&c, &metrics_url).await.text,
                "meshbench_worker_in_flight",
                &["/stuck"],
            ) == Some(1.0)
        })
        .await
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child))
        .await
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "exits after the grace period, not after 60 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_cpu_and_baseline_memory_are_held_by_the_process() {
    let (mut child, url) = spawn(&json!({"version": 1, "service": "idle",
        "idle_cpu_cores": 0.3, "baseline_memory_bytes": 67_108_864, "endpoints": []}));
    let c = client();
    let m1 = get(&c, &format!("{url}/metrics")).await.text;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m2 = get(&c, &format!("{url}/metrics")).await.text;
    let cpu = |m: &str| metric(m, "meshbench_worker_process_cpu_seconds_total", &[]).unwrap();
    let rss = metric(&m2, "meshbench_worker_process_resident_memory_bytes", &[]).unwrap();
    assert!(rss >= 67_108_864.0, "rss {rss}");
    let used = cpu(&m2) - cpu(&m1);
    // Generous bounds: 0.3 core for ~1 s, on a shared machine.
    assert!((0.05..1.5).contains(&used), "idle CPU {used} s in ~1 s");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
