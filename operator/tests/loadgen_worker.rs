//! The load generator against real workers, both as `meshbench` processes over real
//! sockets: counts agree on both sides, stages keep their rates and timing, SIGTERM leaves
//! a partial result that agrees with what the worker served, and two instances at half the
//! rate merge into exactly the plan's requests.

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

/// Stages keep their timing and rates: a warm-up and two stages from a plan file, each
/// second of each stage planned, sent and answered at its own rate, the stages back to back
/// on the wall clock, and the worker serving exactly what the loadgen counted.
#[test]
fn stages_keep_their_rates_and_timing_against_a_worker() {
    let w = worker();
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        format!(
            r#"{{"target":"http://{}","model":{{"type":"open"}},
                "warmUp":{{"duration":"1s","rate":20}},
                "profile":{{"stages":[{{"rate":50,"duration":"2s"}},{{"rate":150,"duration":"2s"}}]}}}}"#,
            w.addr
        ),
    )
    .expect("plan");
    let before = worker_ok(w.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .args(["loadgen", "--quiet", "--out", "-", "--plan"])
        .arg(&plan)
        .output()
        .expect("loadgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: LoadResult = serde_json::from_slice(&out.stdout).expect("result JSON");
    let expect = [(true, 20u64, 1usize), (false, 50, 2), (false, 150, 2)];
    assert_eq!(r.stages.len(), expect.len());
    for (s, (warm, rate, secs)) in r.stages.iter().zip(expect) {
        assert_eq!(s.warm_up, warm, "stage {}", s.index);
        assert_eq!(s.seconds.len(), secs, "stage {}", s.index);
        for b in &s.seconds {
            assert_eq!(
                (b.counts.planned, b.counts.sent, b.counts.ok),
                (rate, rate, rate),
                "stage {} second {}",
                s.index,
                b.second
            );
        }
        assert_eq!(s.planned_duration_ms, secs as u64 * 1000);
        assert!(!s.partial);
    }
    for pair in r.stages.windows(2) {
        assert_eq!(
            pair[0].started_unix_ms + pair[0].planned_duration_ms,
            pair[1].started_unix_ms,
            "stages are back to back"
        );
        assert_eq!(pair[0].ended_unix_ms, pair[1].started_unix_ms);
    }
    let counted: u64 = r.stages.iter().map(|s| s.counts.ok).sum();
    assert_eq!(counted, 20 + 100 + 300);
    // The preflight request is the worker's one extra.
    assert_eq!(worker_ok(w.addr) - before, counted + 1);
}

/// SIGTERM mid-run: exit 4, a result marked partial, and the worker served no request
/// the loadgen did not send (at most those in flight at the stop go uncounted as ok).
#[test]
fn sigterm_keeps_what_the_worker_served() {
    let w = worker();
    let before = worker_ok(w.addr);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("result.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .args(["loadgen", "--url", &format!("http://{}/", w.addr)])
        .args(["--rate", "200", "--duration", "60s", "--quiet", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loadgen");
    std::thread::sleep(Duration::from_secs(2));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "loadgen did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(4));
    let r: LoadResult =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("result")).expect("JSON");
    assert!(r.partial && r.stages[0].partial);
    let c = &r.stages[0].counts;
    assert!((100..=1200).contains(&c.sent), "sent {}", c.sent);
    assert!(c.ok + 5 >= c.sent, "{c:?}");
    // Let requests in flight at the stop finish on the worker's side.
    std::thread::sleep(Duration::from_millis(200));
    let served = worker_ok(w.addr) - before;
    assert!(
        served > c.ok && served <= c.sent + 1,
        "worker served {served}, loadgen sent {} and counted {} ok",
        c.sent,
        c.ok
    );
}
