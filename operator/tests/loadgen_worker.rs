//! The load generator against real workers, both as `meshbench` processes over real
//! sockets: counts agree on both sides, and two instances at half the rate merge into
//! exactly the plan's requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshbench_loadgen::LoadResult;

const CONFIG: &str = r#"{"version":1,"service":"target","port":8080,"startup_delay_us":0,"idle_cpu_cores":0.0,"baseline_memory_bytes":0,"drain_grace_us":1000000,"max_request_body_bytes":1048576,"endpoints":[{"path":"/","method":"GET","cpu_us":500,"memory_bytes":0,"response_bytes":64,"error_rate":0.0,"on_downstream_timeout":"fail","call_groups":[]}]}"#;

struct Worker {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn worker() -> Worker {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let child = Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .args([
            "worker",
            "--config-json",
            CONFIG,
            "--listen",
            &addr.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker");
    let w = Worker { child, addr };
    let start = Instant::now();
    while !get(addr, "/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "worker not ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    w
}

/// Requests the worker counted on `/` with status 200, from its own /metrics.
fn worker_ok(addr: SocketAddr) -> u64 {
    let text = get(addr, "/metrics").expect("metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("meshbench_worker_requests_total{")
                && l.contains(r#"status="200""#)
                && l.contains(r#"endpoint="GET /""#)
        })
        .filter_map(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        })
        .sum::<f64>() as u64
}

fn loadgen(url: &str, rate: &str, extra: &[&str]) -> LoadResult {
    let out = Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .args(["loadgen", "--url", url, "--rate", rate, "--duration", "3s"])
        .args(["--quiet", "--out", "-"])
        .args(extra)
        .output()
        .expect("loadgen");
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("result JSON")
}

#[test]
fn open_loop_counts_agree_with_the_worker() {
    let w = worker();
    let before = worker_ok(w.addr);
    let r = loadgen(&format!("http://{}/", w.addr), "100", &[]);
    let c = &r.stages[0].counts;
    // 100 rps for 3 s: the schedule plans exactly 300 requests, all sent and answered.
    assert_eq!((c.planned, c.sent, c.ok), (300, 300, 300), "{c:?}");
    // The preflight request is the worker's one extra.
    let served = worker_ok(w.addr) - before;
    assert!(
        served == 300 || served == 301,
        "worker served {served}, loadgen counted {}",
        c.ok
    );
    let p50 = r.stages[0].summary.latency.p50_us;
    assert!(p50 >= 500, "p50 {p50} µs below the 500 µs CPU burn");
}

#[test]
fn two_instances_at_half_rate_merge_to_the_plan() {
    let w = worker();
    let url = format!("http://{}/", w.addr);
    let start_at = (std::time::SystemTime::now() + Duration::from_secs(2))
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        .to_string();
    let run = |i: &str| {
        let url = url.clone();
        let start_at = start_at.clone();
        let i = i.to_string();
        std::thread::spawn(move || {
            loadgen(
                &url,
                "100",
                &["--instances", "2", "--index", &i, "--start-at", &start_at],
            )
        })
    };
    let (a, b) = (run("0"), run("1"));
    let (a, b) = (a.join().expect("instance 0"), b.join().expect("instance 1"));
    assert_eq!(a.stages[0].counts.sent + b.stages[0].counts.sent, 300);
    let merged = LoadResult::merge(&[a, b]).expect("merge");
    let c = &merged.stages[0].counts;
    assert_eq!((c.planned, c.sent, c.ok), (300, 300, 300), "{c:?}");
}
