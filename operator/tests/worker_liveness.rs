//! Liveness of a saturated worker under a CPU limit, as the kubelet would see it.
//!
//! A real `meshbench worker` runs in a cgroup limited to 200m (as a pod's `limits.cpu`)
//! with a CPU-heavy endpoint (20 ms per request, so about 10 requests per second fit), and
//! `meshbench loadgen` sends it ten times that for 10 s. Meanwhile `/live` on the worker's
//! health port (`--health-port`, what the rendered liveness probe uses) is probed every
//! 500 ms with a 1 s budget, stricter than the probe's 5 s: every probe must answer 200.
//! So that a pass means something, the test also asserts that the main port really was
//! saturated (served throughput far below the sent rate, median latency above the whole
//! liveness budget) and that the kernel did throttle the worker. `/live` on the main port
//! is probed the same way and reported, for comparison only.
//!
//! Needs a writable cgroup with the cpu controller (root); skipped otherwise, except under
//! CI=true where it fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshbench_loadgen::LoadResult;
use meshbench_runtime::cgroup::{Cgroup, CgroupRoot, Limits};

/// CPU limit of the worker's cgroup, millicores.
const CPU_LIMIT_MILLIS: u64 = 200;
/// Sent rate, requests per second: ten times what 200m fits at 20 ms of CPU per request.
const RATE: u32 = 100;
/// How long the load runs.
const LOAD_FOR: &str = "10s";
/// The loadgen's request timeout: bounds how long it drains after the stage.
const REQUEST_TIMEOUT: &str = "3s";
/// Time between two probes of one port.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Budget of one probe, connection included (the rendered liveness probe allows 5 s).
const PROBE_BUDGET: Duration = Duration::from_secs(1);

/// One endpoint burning 20 ms of CPU per request, no shedding: requests queue.
const CONFIG: &str = r#"{"version":1,"service":"saturated","port":8080,"startup_delay_us":0,"idle_cpu_cores":0.0,"baseline_memory_bytes":0,"drain_grace_us":1000000,"max_request_body_bytes":1048576,"endpoints":[{"path":"/","method":"GET","cpu_us":20000,"memory_bytes":0,"response_bytes":64,"error_rate":0.0,"on_downstream_timeout":"fail","call_groups":[]}]}"#;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The run's cgroup root and the worker's group limited to [`CPU_LIMIT_MILLIS`], or
/// `None` (after saying why) where cgroups cannot be written; under CI that is a failure.
fn limited_group() -> Option<(CgroupRoot, Cgroup)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let run_id = format!("liveness-{}-{nanos}", std::process::id());
    let root = CgroupRoot::create(&run_id).expect("a valid run id");
    if !root.enforcement().is_enforced() {
        let why = format!("cgroups are not usable here: {:?}", root.enforcement());
        assert!(
            !ci(),
            "CI is set but {why}; run the tests as root on a host with a writable cpu controller"
        );
        eprintln!("SKIPPED saturated_worker_stays_live_under_a_cpu_limit: {why}");
        return None;
    }
    let limits = Limits {
        cpu_millis: Some(CPU_LIMIT_MILLIS),
        memory_bytes: None,
        cpu_request_millis: None,
    };
    let group = root
        .replica("worker-0", limits)
        .expect("the worker's cgroup");
    Some((root, group))
}

/// A `meshbench worker` process, killed on drop.
struct Worker {
    child: Child,
    /// Held so the worker never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    main: SocketAddr,
    health: SocketAddr,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a worker with a health listener on a free port, moves it into `group`, and
/// reads both addresses from its stdout.
fn start_worker(group: &Cgroup) -> Worker {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .args(["worker", "--config-json", CONFIG])
        .args(["--listen", "127.0.0.1:0", "--health-port", "0"])
        .env_remove("MESHBENCH_WORKER_CONFIG")
        .env("RUST_LOG", "warn")
        // The worker exits on its own if this test process dies.
        .env(
            meshbench_worker::cli::PARENT_PID_ENV,
            std::process::id().to_string(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn meshbench worker");
    // Moving the process moves all its threads; those it starts later are born inside.
    group
        .add_pid(child.id())
        .expect("move the worker into its cgroup");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let (mut main, mut health) = (None, None);
    while main.is_none() {
        let mut line = String::new();
        let n = stdout
            .read_line(&mut line)
            .expect("read the worker's stdout");
        assert!(n > 0, "the worker exited before listening");
        let addr = |prefix: &str| {
            line.trim()
                .strip_prefix(prefix)
                .map(|a| a.parse::<SocketAddr>().expect("an address"))
        };
        health = health.or_else(|| addr("meshbench-worker health on "));
        main = addr("meshbench-worker listening on ");
    }
    Worker {
        child,
        _stdout: stdout,
        main: main.expect("checked by the loop"),
        health: health.expect("a health line before the listening line"),
    }
}

/// One probe: when it started (since the probing began), how long it took, and the
/// status line or what went wrong.
#[derive(Debug)]
struct Probe {
    at: Duration,
    took: Duration,
    outcome: Result<String, String>,
}

impl Probe {
    /// Answered 200 within the budget.
    fn passed(&self) -> bool {
        self.took <= PROBE_BUDGET
            && self
                .outcome
                .as_deref()
                .is_ok_and(|l| l.starts_with("HTTP/1.1 200"))
    }
}

/// `GET path` on a new connection, as the kubelet probes: the status line.
fn get_status_line(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, PROBE_BUDGET).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(PROBE_BUDGET))
        .and_then(|()| s.set_write_timeout(Some(PROBE_BUDGET)))
        .map_err(|e| format!("socket: {e}"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.34\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    out.lines()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| "empty response".to_owned())
}

/// Probes `GET path` on `addr` every [`PROBE_EVERY`] until `stop` is set.
fn spawn_prober(
    addr: SocketAddr,
    path: &'static str,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<Probe>> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut next = start;
        let mut probes = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let outcome = get_status_line(addr, path);
            probes.push(Probe {
                at: t.duration_since(start),
                took: t.elapsed(),
                outcome,
            });
            next += PROBE_EVERY;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        probes
    })
}

/// The loadgen's open loop at [`RATE`] on the worker's CPU-heavy endpoint.
fn saturate(main: SocketAddr) -> LoadResult {
    let out = Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .args(["loadgen", "--url", &format!("http://{main}/")])
        .args(["--rate", &RATE.to_string(), "--duration", LOAD_FOR])
        .args(["--timeout", REQUEST_TIMEOUT, "--quiet", "--out", "-"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run meshbench loadgen");
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the loadgen's result JSON")
}

/// Probes made, failed, and the slowest one.
fn summary(probes: &[Probe]) -> String {
    let failed = probes.iter().filter(|p| !p.passed()).count();
    let slowest = probes
        .iter()
        .max_by_key(|p| p.took)
        .map(|p| format!("{:?} at {:?}", p.took, p.at))
        .unwrap_or_default();
    format!(
        "{} probes, {failed} failed or over {PROBE_BUDGET:?}, slowest {slowest}",
        probes.len()
    )
}

#[test]
fn saturated_worker_stays_live_under_a_cpu_limit() {
    let Some((root, group)) = limited_group() else {
        return;
    };
    let worker = start_worker(&group);
    assert_eq!(
        get_status_line(worker.main, "/ready").as_deref(),
        Ok("HTTP/1.1 200 OK"),
        "the idle worker is ready"
    );
    let before = group.stats().expect("cgroup stats").expect("enforced");

    let stop = Arc::new(AtomicBool::new(false));
    let health_prober = spawn_prober(worker.health, "/live", stop.clone());
    let main_prober = spawn_prober(worker.main, "/live", stop.clone());
    let result = saturate(worker.main);
    stop.store(true, Ordering::Relaxed);
    let health = health_prober.join().expect("health prober");
    let main = main_prober.join().expect("main-port prober");
    let after = group.stats().expect("cgroup stats").expect("enforced");

    let stage = result
        .stages
        .iter()
        .find(|s| !s.warm_up)
        .expect("the load stage");
    let served = stage.served_throughput(stage.summary.elapsed_s);
    let p50 = Duration::from_micros(stage.summary.latency.p50_us);
    let throttled = after
        .cpu_throttled_periods
        .saturating_sub(before.cpu_throttled_periods);
    println!(
        "worker at {CPU_LIMIT_MILLIS}m: sent {:.1} rps, served {served:.1} rps, p50 {p50:?}, \
         {} timeouts; throttled in {throttled} CFS periods",
        stage.summary.sent_rate, stage.counts.timeouts
    );
    println!("/live on the health port: {}", summary(&health));
    println!("/live on the main port (not asserted): {}", summary(&main));

    // The load did saturate the worker, or a pass would prove nothing.
    assert!(throttled > 0, "the CPU limit never throttled the worker");
    assert!(
        served < f64::from(RATE) / 2.0,
        "not saturated: served {served:.1} of {RATE} rps"
    );
    assert!(
        p50 > PROBE_BUDGET,
        "not saturated: median latency {p50:?} on the main port is within the liveness budget"
    );
    // Every liveness probe answered in time, throughout the load.
    assert!(
        health.len() >= 10,
        "too few liveness probes: {}",
        health.len()
    );
    let failed: Vec<&Probe> = health.iter().filter(|p| !p.passed()).collect();
    assert!(
        failed.is_empty(),
        "liveness probes failed under saturation ({}): {failed:#?}",
        summary(&health)
    );

    drop(worker);
    root.cleanup().expect("remove the test's cgroups");
}
