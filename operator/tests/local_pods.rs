//! The local runtime's process layer: cgroup limits and accounting, replica supervision
//! (restart back-off, graceful stop, no orphans) and the Service proxy with readiness.
//!
//! Real processes, real cgroups, real sockets on 127.0.0.1. The cgroup tests skip (with
//! the reason printed) where no cgroup flavour is writable.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use meshbench_runtime::cgroup::{self, CgroupRoot, Limits};
use meshbench_runtime::pods::{PodEvent, PodEventKind, PodPhase, Pods, PodsConfig, ReplicaSpec};
use meshbench_runtime::proxy::{Backend, Balance, ProbeConfig, ProxyConfig, ServiceProxy};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;

// ---------------------------------------------------------------------------------------
// helpers

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A cgroup root for a test, or `None` (after printing why) where cgroups are unusable.
fn enforced_root(test: &str) -> Option<CgroupRoot> {
    let root = CgroupRoot::create(&unique("test")).expect("valid run id");
    if root.enforcement().is_enforced() {
        Some(root)
    } else {
        eprintln!(
            "SKIPPED {test}: cgroups not usable here: {:?}",
            root.enforcement()
        );
        None
    }
}

fn sh(service: &str, index: u32, script: &str) -> ReplicaSpec {
    ReplicaSpec {
        service: service.to_string(),
        index,
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: vec![],
        cpu_limit_millis: None,
        memory_limit_bytes: None,
        cpu_request_millis: None,
        restart: meshbench_runtime::pods::RestartPolicy::Always,
        ip: std::net::Ipv4Addr::LOCALHOST,
        cwd: None,
        inherit_env: true,
    }
}

fn fast_config(log_dir: PathBuf) -> PodsConfig {
    PodsConfig {
        backoff_base: Duration::from_millis(100),
        termination_grace: Duration::from_secs(5),
        ..PodsConfig::new(log_dir)
    }
}

/// Waits for the next event matching `pred`, returning it and the events skipped.
async fn wait_event(
    rx: &mut UnboundedReceiver<PodEvent>,
    what: &str,
    pred: impl Fn(&PodEvent) -> bool,
) -> PodEvent {
    let deadline = Duration::from_secs(30);
    tokio::time::timeout(deadline, async {
        loop {
            let ev = rx.recv().await.expect("event channel open");
            if pred(&ev) {
                return ev;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} event within {deadline:?}"))
}

async fn started(rx: &mut UnboundedReceiver<PodEvent>) -> (u32, SocketAddr) {
    match wait_event(rx, "Started", |e| {
        matches!(e.kind, PodEventKind::Started { .. })
    })
    .await
    .kind
    {
        PodEventKind::Started { pid, addr } => (pid, addr),
        _ => unreachable!("filtered above"),
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes (only its parent's reaping is missing).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Pids whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] = state, [1] = ppid, [2] = pgrp
        if fields.get(2).and_then(|p| p.parse::<u32>().ok()) == Some(pgid) && fields[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// cgroups

#[tokio::test]
async fn cpu_limit_is_enforced_and_accounted() {
    let Some(root) = enforced_root("cpu_limit_is_enforced_and_accounted") else {
        return;
    };
    let logs = temp_dir("mb-logs");
    let (pods, mut events) = Pods::new(fast_config(logs.clone()), root.clone());
    let mut spec = sh("busy", 0, "while :; do :; done");
    spec.cpu_limit_millis = Some(200);
    pods.start(spec).expect("start");
    started(&mut events).await;

    let before = pods.stats("busy-0").expect("stats").expect("enforced");
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = pods.stats("busy-0").expect("stats").expect("enforced");
    let wall = t0.elapsed().as_secs_f64();

    let (Some(c0), Some(c1)) = (before.cpu_usage, after.cpu_usage) else {
        panic!("no CPU accounting: {after:?}");
    };
    let share = (c1 - c0).as_secs_f64() / wall;
    println!(
        "busy loop limited to 200m used {:.1} % of a core over {wall:.2} s; throttled {} of {} periods",
        share * 100.0,
        after.cpu_throttled_periods,
        after.cpu_periods
    );
    assert!(share < 0.40, "limit not enforced: {share:.3} cores used");
    assert!(share > 0.02, "busy loop barely ran: {share:.3} cores");
    assert!(after.cpu_throttled_periods > before.cpu_throttled_periods);
    assert!(after.memory_usage_bytes > 0);

    pods.stop_all().await;
    let dirs = root.dirs().to_vec();
    root.cleanup().expect("cleanup");
    for d in dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    let _ = std::fs::remove_dir_all(logs);
}

#[tokio::test]
async fn memory_limit_oom_kill_is_detected_and_restarted() {
    let Some(root) = enforced_root("memory_limit_oom_kill_is_detected_and_restarted") else {
        return;
    };
    let logs = temp_dir("mb-logs");
    let (pods, mut events) = Pods::new(fast_config(logs.clone()), root.clone());
    // dd allocates its 256 MiB block and fills it from /dev/zero: far beyond the limit.
    let mut spec = sh(
        "hog",
        0,
        "exec dd if=/dev/zero of=/dev/null bs=256M count=1",
    );
    spec.memory_limit_bytes = Some(32 * 1024 * 1024);
    pods.start(spec).expect("start");
    started(&mut events).await;
    wait_event(&mut events, "OomKilled", |e| {
        e.kind == PodEventKind::OomKilled
    })
    .await;
    let stats = pods.stats("hog-0").expect("stats").expect("enforced");
    assert!(stats.oom_kills >= 1, "{stats:?}");
    wait_event(&mut events, "Restarted", |e| {
        e.kind == PodEventKind::Restarted { attempt: 1 }
    })
    .await;
    pods.stop_all().await;
    root.cleanup().expect("cleanup");
    let _ = std::fs::remove_dir_all(logs);
}

#[test]
fn groups_are_removed_on_panic_unwind() {
    let Some(root) = enforced_root("groups_are_removed_on_panic_unwind") else {
        return;
    };
    let mut sleeper = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("spawn sleep");
    let pid = sleeper.id();
    let dirs = root.dirs().to_vec();
    let child_dirs = std::thread::spawn(move || {
        let group = root
            .replica(
                "victim-0",
                Limits {
                    cpu_millis: Some(500),
                    memory_bytes: Some(64 << 20),
                    cpu_request_millis: None,
                },
            )
            .expect("replica group");
        group.add_pid(pid).expect("add pid");
        assert_eq!(group.pids(), vec![pid]);
        let dirs = group.dirs();
        let _keep = (root, group);
        if !dirs.is_empty() {
            panic!("simulated runner panic");
        }
        dirs
    })
    .join();
    assert!(child_dirs.is_err(), "the thread panicked");
    for d in &dirs {
        assert!(!d.exists(), "{} survived the panic", d.display());
    }
    let status = sleeper.wait().expect("wait sleep");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
}

/// Helper run as a separate process by `stale_groups_of_a_killed_runner_are_removed`:
/// creates a group with a process in it, reports, and waits to be SIGKILLed.
#[test]
#[ignore = "helper process of stale_groups_of_a_killed_runner_are_removed"]
#[expect(
    clippy::zombie_processes,
    reason = "the sleeper must outlive this process, as a crashed runner's replica does"
)]
fn stale_helper() {
    if std::env::var("MESHBENCH_STALE_HELPER").as_deref() != Ok("1") {
        return;
    }
    let root = CgroupRoot::create(&unique("stale")).expect("root");
    let group = root.replica("orphan-0", Limits::default()).expect("group");
    let sleeper = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("spawn sleep");
    group.add_pid(sleeper.id()).expect("add pid");
    // And a supervised replica, which must not outlive its runner either.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (pods, mut events) = Pods::new(fast_config(temp_dir("mb-logs")), root.clone());
        pods.start(ReplicaSpec {
            service: "orphan".into(),
            index: 1,
            program: "sleep".into(),
            args: vec!["1000".into()],
            env: vec![],
            cpu_limit_millis: None,
            memory_limit_bytes: None,
            cpu_request_millis: None,
            restart: meshbench_runtime::pods::RestartPolicy::Always,
            ip: std::net::Ipv4Addr::LOCALHOST,
            cwd: None,
            inherit_env: true,
        })
        .expect("start");
        let (replica, _) = started(&mut events).await;
        println!(
            "READY {} {} {replica}",
            root.dirs()[0].display(),
            sleeper.id()
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

#[test]
fn stale_groups_of_a_killed_runner_are_removed() {
    let Some(_probe) = enforced_root("stale_groups_of_a_killed_runner_are_removed") else {
        return;
    };
    let mut helper = std::process::Command::new(std::env::current_exe().expect("test exe"))
        .args([
            "--exact",
            "stale_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MESHBENCH_STALE_HELPER", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn helper");
    let stdout = helper.stdout.take().expect("stdout");
    let mut ready = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read helper output");
        // libtest may print "test stale_helper ... " before it on the same line.
        if let Some((_, rest)) = line.split_once("READY ") {
            let f: Vec<&str> = rest.split(' ').collect();
            let pid = |i: usize| f[i].parse::<u32>().expect("READY <dir> <pid> <pid>");
            ready = Some((PathBuf::from(f[0]), pid(1), pid(2)));
            break;
        }
    }
    let (dir, orphan, replica) = ready.expect("helper reported READY");
    // `setpriv` arms the parent-death signal just before it execs the program: wait for
    // that exec, or the kill below can race ahead of it.
    let start = Instant::now();
    while !std::fs::read(format!("/proc/{replica}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(Pid::from_raw(helper.id() as i32), Signal::SIGKILL).expect("kill helper");
    helper.wait().expect("reap helper");
    let pdeathsig = std::process::Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if pdeathsig {
        // The kernel kills the supervised replica when its runner dies.
        let start = Instant::now();
        while alive(replica) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(replica), "replica {replica} outlived its runner");
    }
    assert!(
        dir.exists() && alive(orphan),
        "helper left its group and orphan"
    );

    let removed = cgroup::cleanup_stale();
    assert!(
        removed.contains(&dir),
        "{} not in {removed:?}",
        dir.display()
    );
    assert!(!dir.exists());
    let start = Instant::now();
    while alive(orphan) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(orphan), "orphan {orphan} still alive");
    assert!(!alive(replica), "replica {replica} still alive");
    // Our own live groups are never considered stale.
    assert!(_probe.dirs().iter().all(|d| d.exists()));
}

// ---------------------------------------------------------------------------------------
// supervision (works with or without cgroups)

#[tokio::test]
async fn crashed_replica_restarts_at_once_then_with_exponential_backoff() {
    let root = CgroupRoot::create(&unique("test")).expect("root");
    let logs = temp_dir("mb-logs");
    let (pods, mut events) = Pods::new(fast_config(logs.clone()), root.clone());
    let spec = ReplicaSpec {
        service: "crashy".into(),
        index: 0,
        program: "sleep".into(),
        args: vec!["1000".into()],
        env: vec![],
        cpu_limit_millis: Some(100),
        memory_limit_bytes: Some(64 << 20),
        cpu_request_millis: None,
        restart: meshbench_runtime::pods::RestartPolicy::Always,
        ip: std::net::Ipv4Addr::LOCALHOST,
        cwd: None,
        inherit_env: true,
    };
    pods.start(spec).expect("start");
    let (pid1, addr1) = started(&mut events).await;
    assert_eq!(addr1.ip().to_string(), "127.0.0.1");

    let mut pids = vec![pid1];
    for attempt in 1..=2u32 {
        kill(
            Pid::from_raw(*pids.last().expect("pid") as i32),
            Signal::SIGKILL,
        )
        .expect("kill -9");
        let exited = wait_event(&mut events, "Exited", |e| {
            matches!(e.kind, PodEventKind::Exited { .. })
        })
        .await;
        assert_eq!(
            exited.kind,
            PodEventKind::Exited {
                code: None,
                signal: Some(9)
            }
        );
        let restarted = wait_event(&mut events, "Restarted", |e| {
            matches!(e.kind, PodEventKind::Restarted { .. })
        })
        .await;
        assert_eq!(restarted.kind, PodEventKind::Restarted { attempt });
        // As the kubelet's: no back-off before the first restart, then the base (100 ms
        // here). Lower bounds only.
        let waited = (restarted.ts - exited.ts).to_std().unwrap_or_default();
        let expected = Duration::from_millis(100) * (attempt - 1);
        assert!(
            waited >= expected,
            "restart {attempt} after {waited:?} < {expected:?}"
        );
        let (pid, _) = started(&mut events).await;
        assert!(!pids.contains(&pid));
        pids.push(pid);
    }
    let status = pods.status("crashy-0").expect("status");
    assert_eq!(status.restarts, 2);
    assert_eq!(status.phase, PodPhase::Running);
    let log = std::fs::read_to_string(logs.join("crashy-0.log")).expect("log file");
    assert!(log.contains("crashy-0 start #3"), "{log}");

    pods.stop_all().await;
    wait_event(&mut events, "Stopped", |e| e.kind == PodEventKind::Stopped).await;
    assert!(pids.iter().all(|p| !alive(*p)));
    root.cleanup().expect("cleanup");
    let _ = std::fs::remove_dir_all(logs);
}

#[tokio::test]
async fn stop_is_graceful_then_forceful_and_leaves_no_orphans() {
    let root = CgroupRoot::create(&unique("test")).expect("root");
    let logs = temp_dir("mb-logs");
    let (pods, mut events) = Pods::new(fast_config(logs.clone()), root.clone());

    // Honours SIGTERM: exits at once, well before the 10 s grace.
    pods.start(sh(
        "polite",
        0,
        "trap 'echo bye; exit 0' TERM; sleep 1000 & wait",
    ))
    .expect("start");
    let (polite, _) = started(&mut events).await;
    wait_until("polite's child", || group_members(polite).len() >= 2).await;
    let t = Instant::now();
    assert!(pods.stop("polite-0", Some(Duration::from_secs(10))).await);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "SIGTERM was not honoured"
    );
    assert!(group_members(polite).is_empty(), "polite left processes");
    let log = std::fs::read_to_string(logs.join("polite-0.log")).expect("log");
    assert!(log.contains("bye"), "stdout not captured: {log}");

    // Ignores SIGTERM (and so do its children, which inherit the ignored disposition):
    // everything is SIGKILLed after the grace period.
    pods.start(sh(
        "stubborn",
        0,
        "trap '' TERM; sleep 1000 & sleep 1000 & wait",
    ))
    .expect("start");
    let (stubborn, _) = started(&mut events).await;
    wait_until("stubborn's children", || group_members(stubborn).len() >= 3).await;
    let members = group_members(stubborn);
    let t = Instant::now();
    assert!(
        pods.stop("stubborn-0", Some(Duration::from_millis(300)))
            .await
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    wait_until("stubborn's group to die", || {
        members.iter().all(|p| !alive(*p))
    })
    .await;
    assert!(pods.pods().is_empty());
    root.cleanup().expect("cleanup");
    let _ = std::fs::remove_dir_all(logs);
}

#[tokio::test]
async fn replicas_get_their_port_and_env() {
    let root = CgroupRoot::create(&unique("test")).expect("root");
    let logs = temp_dir("mb-logs");
    let (pods, mut events) = Pods::new(fast_config(logs.clone()), root.clone());
    let mut spec = sh(
        "env",
        4,
        "echo \"port=$0 pod=$POD_NAME parent=$MESHBENCH_PARENT_PID x=$X\"; sleep 1000",
    );
    spec.args.push("{port}".into());
    spec.env.push(("X".into(), "p{port}".into()));
    pods.start(spec).expect("start");
    let (_, addr) = started(&mut events).await;
    let path = logs.join("env-4.log");
    let expected = format!(
        "port={} pod=env-4 parent={} x=p{}",
        addr.port(),
        std::process::id(),
        addr.port()
    );
    wait_until("the echo in the log", || {
        std::fs::read_to_string(&path).is_ok_and(|l| l.contains(&expected))
    })
    .await;
    pods.stop_all().await;
    root.cleanup().expect("cleanup");
    let _ = std::fs::remove_dir_all(logs);
}

// ---------------------------------------------------------------------------------------
// proxy

/// An HTTP server answering its name on `/` and 200/503 on `/ready`.
async fn named_server(name: &'static str, ready: Arc<AtomicBool>) -> SocketAddr {
    let app = Router::new()
        .route("/", get(move || async move { name }))
        .route(
            "/ready",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.load(Ordering::SeqCst) {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// One request on an open (keep-alive) connection; returns the status and body.
async fn request(stream: &mut TcpStream, path: &str) -> std::io::Result<(u16, String)> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the response head",
            ));
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn one_shot(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    request(&mut s, "/").await.expect("request").1
}

struct Pair {
    proxy: ServiceProxy,
    a: SocketAddr,
    b: SocketAddr,
    b_ready: Arc<AtomicBool>,
}

async fn pair() -> Pair {
    let a = named_server("a", Arc::new(AtomicBool::new(true))).await;
    let b_ready = Arc::new(AtomicBool::new(true));
    let b = named_server("b", b_ready.clone()).await;
    // Round robin makes the tests below deterministic; random has its own test. No
    // propagation delay: readiness changes route at once.
    let proxy = ServiceProxy::bind(
        "svc",
        "127.0.0.1:0".parse().expect("addr"),
        ProxyConfig {
            balance: Balance::RoundRobin,
            propagation_delay: Duration::ZERO,
            ..ProxyConfig::default()
        },
    )
    .await
    .expect("proxy");
    proxy.set_endpoints(vec![
        Backend {
            pod: "svc-a".into(),
            addr: a,
            ready: true,
        },
        Backend {
            pod: "svc-b".into(),
            addr: b,
            ready: true,
        },
    ]);
    wait_until("the proxy to accept", || proxy.accepting()).await;
    Pair {
        proxy,
        a,
        b,
        b_ready,
    }
}

#[tokio::test]
async fn new_connections_are_spread_round_robin() {
    let p = pair().await;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..10 {
        *counts
            .entry(one_shot(p.proxy.local_addr()).await)
            .or_insert(0) += 1;
    }
    assert_eq!(counts.get("a"), Some(&5), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&5), "{counts:?}");
    let stats = p.proxy.stats();
    assert_eq!(stats.accepted, 10);
    assert_eq!(stats.backends["svc-a"].connections, 5);
    assert_eq!(stats.backends["svc-b"].connections, 5);
    wait_until("connections to close", || p.proxy.stats().active == 0).await;
    assert!(p.proxy.stats().backends["svc-a"].bytes_from_backend > 0);
}

/// The default, as kube-proxy: each connection picks an endpoint at random — both get a
/// fair share, but not in strict alternation.
#[tokio::test]
async fn new_connections_pick_a_random_endpoint_by_default() {
    let p = pair().await;
    let proxy = ServiceProxy::bind(
        "rand",
        "127.0.0.1:0".parse().expect("addr"),
        ProxyConfig {
            propagation_delay: Duration::ZERO,
            ..ProxyConfig::default()
        },
    )
    .await
    .expect("proxy");
    proxy.set_endpoints(vec![
        Backend {
            pod: "rand-a".into(),
            addr: p.a,
            ready: true,
        },
        Backend {
            pod: "rand-b".into(),
            addr: p.b,
            ready: true,
        },
    ]);
    wait_until("the proxy to accept", || proxy.accepting()).await;
    let mut picks = Vec::new();
    for _ in 0..200 {
        picks.push(one_shot(proxy.local_addr()).await);
    }
    let a = picks.iter().filter(|n| *n == "a").count();
    // Binomial(200, 0.5): outside 60..=140 with probability ~1e-8.
    assert!((60..=140).contains(&a), "a got {a} of 200");
    let alternating = picks.windows(2).all(|w| w[0] != w[1]);
    assert!(!alternating, "strict alternation is round robin");
    let repeats = picks.windows(2).filter(|w| w[0] == w[1]).count();
    assert!(repeats >= 60, "{repeats} repeats of 199 (random: ~100)");
}

#[tokio::test]
async fn keep_alive_connection_stays_on_its_backend() {
    let p = pair().await;
    let mut s = TcpStream::connect(p.proxy.local_addr())
        .await
        .expect("connect");
    let mut names = Vec::new();
    for _ in 0..10 {
        let (status, body) = request(&mut s, "/").await.expect("request");
        assert_eq!(status, 200);
        names.push(body);
    }
    assert!(names.iter().all(|n| n == &names[0]), "{names:?}");
    assert_eq!(p.proxy.stats().accepted, 1);
}

#[tokio::test]
async fn unready_backend_gets_no_new_connections_but_keeps_old_ones() {
    let p = pair().await;
    // Open a connection to b first (round robin: a, then b).
    assert_eq!(one_shot(p.proxy.local_addr()).await, "a");
    let mut to_b = TcpStream::connect(p.proxy.local_addr())
        .await
        .expect("connect");
    assert_eq!(request(&mut to_b, "/").await.expect("req").1, "b");

    assert!(p.proxy.set_ready("svc-b", p.b, false));
    for _ in 0..10 {
        assert_eq!(one_shot(p.proxy.local_addr()).await, "a");
    }
    // As with kube-proxy, an established connection is not cut by readiness.
    assert_eq!(request(&mut to_b, "/").await.expect("req").1, "b");
    assert!(!p.proxy.set_ready("svc-x", p.a, false), "unknown pod");
}

#[tokio::test]
async fn prober_follows_ready_endpoint() {
    let p = pair().await;
    p.b_ready.store(false, Ordering::SeqCst);
    // New members start unready, as new pods do, until a probe passes.
    p.proxy.set_endpoints(vec![]);
    p.proxy
        .set_members([("svc-a".to_string(), p.a), ("svc-b".to_string(), p.b)]);
    assert!(p.proxy.endpoints().iter().all(|b| !b.ready));
    let _prober = p.proxy.spawn_prober(ProbeConfig {
        period: Duration::from_millis(100),
        failure_threshold: 1,
        ..ProbeConfig::default()
    });
    let ready_of = |pod: &str| {
        p.proxy
            .endpoints()
            .iter()
            .find(|b| b.pod == pod)
            .is_some_and(|b| b.ready)
    };
    wait_until("a ready", || ready_of("svc-a")).await;
    wait_until("the proxy to accept", || p.proxy.accepting()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!ready_of("svc-b"), "503 on /ready must keep b unready");
    for _ in 0..4 {
        assert_eq!(one_shot(p.proxy.local_addr()).await, "a");
    }
    p.b_ready.store(true, Ordering::SeqCst);
    wait_until("b ready", || ready_of("svc-b")).await;
    p.b_ready.store(false, Ordering::SeqCst);
    wait_until("b unready again", || !ready_of("svc-b")).await;
    // Membership updates keep the readiness of unchanged endpoints.
    p.proxy.set_members([("svc-a".to_string(), p.a)]);
    assert!(ready_of("svc-a"));
}

/// As behind DNAT, a refused connect is the client's error: the client connection is
/// reset and no other endpoint is tried.
#[tokio::test]
async fn refused_backend_fails_its_client() {
    let a = named_server("a", Arc::new(AtomicBool::new(true))).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    // Round robin: every other connection goes to the dead endpoint.
    let proxy = ServiceProxy::bind(
        "svc",
        "127.0.0.1:0".parse().expect("addr"),
        ProxyConfig {
            balance: Balance::RoundRobin,
            propagation_delay: Duration::ZERO,
            ..ProxyConfig::default()
        },
    )
    .await
    .expect("proxy");
    proxy.set_endpoints(vec![
        Backend {
            pod: "svc-dead".into(),
            addr: dead,
            ready: true,
        },
        Backend {
            pod: "svc-a".into(),
            addr: a,
            ready: true,
        },
    ]);
    wait_until("the proxy to accept", || proxy.accepting()).await;
    let mut served = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(proxy.local_addr())
            .await
            .expect("connect");
        served.push(request(&mut s, "/").await.ok().map(|(_, body)| body));
    }
    let a_served = Some("a".to_string());
    assert_eq!(
        served,
        [
            None,
            a_served.clone(),
            None,
            a_served.clone(),
            None,
            a_served
        ]
    );
    let stats = proxy.stats();
    assert_eq!(stats.backends["svc-dead"].connect_failures, 3, "{stats:?}");
    assert_eq!(stats.backends["svc-a"].connections, 3);
    assert_eq!(stats.rejected, 3);
}

/// A Service without a ready endpoint refuses connections, as kube-proxy's REJECT rule.
#[tokio::test]
async fn no_ready_backend_refuses_connections() {
    let a = named_server("a", Arc::new(AtomicBool::new(true))).await;
    let proxy = ServiceProxy::bind(
        "svc",
        "127.0.0.1:0".parse().expect("addr"),
        ProxyConfig {
            propagation_delay: Duration::ZERO,
            ..ProxyConfig::default()
        },
    )
    .await
    .expect("proxy");
    for endpoints in [
        vec![],
        vec![Backend {
            pod: "svc-a".into(),
            addr: a,
            ready: false,
        }],
    ] {
        proxy.set_endpoints(endpoints);
        wait_until("the proxy to refuse", || !proxy.accepting()).await;
        let err = TcpStream::connect(proxy.local_addr())
            .await
            .expect_err("connect refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
    assert_eq!(proxy.stats().accepted, 0);
}

// ---------------------------------------------------------------------------------------
// all together: supervised HTTP servers behind the proxy

#[tokio::test]
async fn supervised_servers_behind_the_proxy() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        eprintln!("SKIPPED supervised_servers_behind_the_proxy: python3 not found");
        return;
    }
    let root = CgroupRoot::create(&unique("test")).expect("root");
    let logs = temp_dir("mb-logs");
    let (pods, mut events) = Pods::new(fast_config(logs.clone()), root.clone());
    let proxy = ServiceProxy::bind(
        "web",
        "127.0.0.1:0".parse().expect("addr"),
        ProxyConfig::default(),
    )
    .await
    .expect("proxy");
    let _prober = proxy.spawn_prober(ProbeConfig {
        period: Duration::from_millis(200),
        ..ProbeConfig::default()
    });
    let mut members = Vec::new();
    for i in 0..2u32 {
        let dir = logs.join(format!("www{i}"));
        std::fs::create_dir_all(&dir).expect("www dir");
        std::fs::write(dir.join("ready"), "ok").expect("ready file");
        std::fs::write(dir.join("name"), format!("web-{i}")).expect("name file");
        pods.start(ReplicaSpec {
            service: "web".into(),
            index: i,
            program: "python3".into(),
            args: [
                "-m",
                "http.server",
                "{port}",
                "--bind",
                "127.0.0.1",
                "--directory",
            ]
            .map(String::from)
            .into_iter()
            .chain([dir.display().to_string()])
            .collect(),
            env: vec![],
            cpu_limit_millis: Some(500),
            memory_limit_bytes: Some(256 << 20),
            cpu_request_millis: None,
            restart: meshbench_runtime::pods::RestartPolicy::Always,
            ip: std::net::Ipv4Addr::LOCALHOST,
            cwd: None,
            inherit_env: true,
        })
        .expect("start");
        let (_, addr) = started(&mut events).await;
        members.push((format!("web-{i}"), addr));
    }
    proxy.set_members(members);
    wait_until("both replicas ready", || {
        proxy.endpoints().iter().all(|b| b.ready)
    })
    .await;
    // The default propagation delay: routed about a second after ready.
    wait_until("both replicas routed", || {
        proxy.routes().len() == 2 && proxy.accepting()
    })
    .await;
    // Random picks: 40 connections all on one replica has probability 2^-39.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(proxy.local_addr())
            .await
            .expect("connect");
        let (status, body) = request(&mut s, "/name").await.expect("request");
        assert_eq!(status, 200);
        seen.insert(body);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    pods.stop_all().await;
    wait_until("replicas unready after stop", || {
        proxy.endpoints().iter().all(|b| !b.ready)
    })
    .await;
    root.cleanup().expect("cleanup");
    let _ = std::fs::remove_dir_all(logs);
}

/// CPU requests weigh contended CPU as on a node (`cpu.shares` / `cpu.weight` from the
/// kubelet's formula): two spinning replicas pinned to one core, with requests of 200m and
/// 800m, split it about 1 : 4. (Without the weights they split it evenly.)
#[test]
fn contended_cpu_is_split_by_the_replicas_requests() {
    let Some(root) = enforced_root("contended_cpu_is_split_by_the_replicas_requests") else {
        return;
    };
    let group = |name: &str, request: u64| {
        root.replica(
            name,
            Limits {
                cpu_millis: None,
                memory_bytes: None,
                cpu_request_millis: Some(request),
            },
        )
        .expect("replica group")
    };
    let (small, large) = (group("small-0", 200), group("large-0", 800));
    let spin = || {
        std::process::Command::new("taskset")
            .args(["-c", "0", "sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("spawn a spinning process (taskset)")
    };
    let (mut a, mut b) = (spin(), spin());
    small.add_pid(a.id()).expect("add pid");
    large.add_pid(b.id()).expect("add pid");
    let usage = |g: &cgroup::Cgroup| g.stats().ok().flatten().and_then(|s| s.cpu_usage);
    std::thread::sleep(Duration::from_millis(300));
    let before = (usage(&small), usage(&large));
    std::thread::sleep(Duration::from_secs(3));
    let after = (usage(&small), usage(&large));
    let _ = (a.kill(), b.kill(), a.wait(), b.wait());
    let (Some(s0), Some(l0), Some(s1), Some(l1)) = (before.0, before.1, after.0, after.1) else {
        eprintln!("SKIPPED: no CPU accounting for the groups");
        return;
    };
    let (small_cpu, large_cpu) = ((s1 - s0).as_secs_f64(), (l1 - l0).as_secs_f64());
    let ratio = large_cpu / small_cpu;
    assert!(
        (3.0..=5.5).contains(&ratio),
        "800m : 200m got {large_cpu:.2} s : {small_cpu:.2} s of CPU (ratio {ratio:.2}, expected ~4)"
    );
}
