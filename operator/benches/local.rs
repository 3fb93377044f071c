//! Benchmarks of the local runtime, printed side by side with a reference run in the
//! same invocation (never timed assertions):
//!
//! 1. Time from deploy to all replicas ready for a 20-service mesh with 2 replicas
//!    each (target < 2 s), against starting the same 40 workers as bare processes and
//!    polling their `/ready` directly (no proxies, cgroups or supervision).
//! 2. CPU used by the runner itself (proxies, sampler, HPA) while 1000 rps flow through
//!    it (target < 5 % of one core), against the CPU the replicas behind it use for the
//!    same requests. The load comes from `meshbench loadgen` in its own process, so it is
//!    not counted.
//!
//! Run: `cargo bench -p meshbench-operator --bench local` (as root for cgroup limits).
//! `BENCH_REPS` (default 3) repeats the ready-time measurement; `BENCH_SECS` (default 10)
//! is the length of the 1000 rps run.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshbench_crds::{Bundle, ValidMesh};
use meshbench_operator::local::platform::{LocalOptions, LocalPlatform};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshbench"))
}

fn mesh_yaml(name: &str, services: usize, replicas: usize) -> String {
    let mut y = format!(
        "apiVersion: meshbench.io/v1alpha1\nkind: ServiceMesh\nmetadata: {{ name: {name} }}\nspec:\n  defaults:\n    replicas: {replicas}\n    resources:\n      requests: {{ cpu: 50m, memory: 32Mi }}\n      limits: {{ cpu: 500m, memory: 128Mi }}\n  services:\n"
    );
    for i in 0..services {
        y.push_str(&format!(
            "    - name: s{i}\n      endpoints:\n        - path: /\n          cpu: 0ms\n"
        ));
    }
    y
}

fn cpu_seconds_of_self() -> f64 {
    // utime + stime of this process, in clock ticks (fields 14 and 15 of /proc/self/stat).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the ')' the fields start at 3 (state), so utime (14) is index 11.
    (ticks(11) + ticks(12)) / 100.0
}

fn platform(run_id: &str, dir: &std::path::Path) -> LocalPlatform {
    LocalPlatform::new(
        LocalOptions {
            program: program(),
            log_dir: dir.join("logs"),
            sample_interval: Duration::from_secs(1),
            hpa_sync: Duration::from_secs(15),
            metric_resolution: Duration::from_secs(15),
            hpa_cpu_initialization_period: Duration::from_secs(300),
            ready_timeout: Duration::from_secs(60),
            enforce_limits: true,
            balance: Default::default(),
            node: meshbench_runtime::node::allocatable(meshbench_runtime::node::machine_capacity()),
        },
        run_id,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn ready_time_platform(reps: u64, dir: &std::path::Path) -> f64 {
    let bundle = Bundle::from_str("bench20.yaml", &mesh_yaml("bench20", 20, 2));
    assert!(bundle.is_valid(), "{:?}", bundle.diagnostics);
    let mesh = ValidMesh::new(bundle.meshes[0].mesh.clone()).expect("valid mesh");
    let mut times = Vec::new();
    for r in 0..reps {
        let mut p = platform(&format!("bench-ready-{}-{r}", std::process::id()), dir);
        let start = Instant::now();
        p.deploy(&mesh).await.expect("deploy");
        p.wait_ready().await.expect("ready");
        times.push(start.elapsed().as_secs_f64());
        p.shutdown().await;
    }
    median(times)
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

fn ready(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    s.read(&mut buf)
        .is_ok_and(|n| buf[..n].starts_with(b"HTTP/1.1 200"))
}

fn ready_time_bare(reps: u64) -> f64 {
    let config = r#"{"version":1,"service":"s","port":8080,"startup_delay_us":0,"idle_cpu_cores":0.0,"baseline_memory_bytes":0,"drain_grace_us":2000000,"max_request_body_bytes":1048576,"endpoints":[{"path":"/","method":"GET","cpu_us":0,"memory_bytes":0,"response_bytes":0,"error_rate":0.0,"on_downstream_timeout":"fail","call_groups":[]}]}"#;
    let mut times = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        let mut children = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..40 {
            let addr = free_addr();
            let child = Command::new(program())
                .args(["worker", "--config-json", config, "--listen"])
                .arg(addr.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn worker");
            children.push(child);
            addrs.push(addr);
        }
        let mut pending = addrs.clone();
        while !pending.is_empty() {
            pending.retain(|a| !ready(*a));
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "bare workers not ready"
            );
        }
        times.push(start.elapsed().as_secs_f64());
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    median(times)
}

async fn runner_cpu_at(rate: u64, secs: u64, dir: &std::path::Path) -> (f64, f64, f64) {
    let bundle = Bundle::from_str("bench1k.yaml", &mesh_yaml("bench1k", 1, 2));
    let mesh = ValidMesh::new(bundle.meshes[0].mesh.clone()).expect("valid mesh");
    let mut p = platform(&format!("bench-cpu-{}", std::process::id()), dir);
    p.deploy(&mesh).await.expect("deploy");
    p.wait_ready().await.expect("ready");
    let url = p.service_url("s0").expect("url");
    let _ = p.drain_samples();
    let cpu0 = cpu_seconds_of_self();
    let t0 = Instant::now();
    let out = tokio::process::Command::new(program())
        .args(["loadgen", "--url", &url, "--quiet", "--out"])
        .arg(dir.join("bench-result.json"))
        .args([
            "--rate",
            &rate.to_string(),
            "--duration",
            &format!("{secs}s"),
        ])
        .stdout(Stdio::null())
        .output()
        .await
        .expect("loadgen");
    let wall = t0.elapsed().as_secs_f64();
    let runner = (cpu_seconds_of_self() - cpu0) / wall;
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Replica CPU over the same window, from the sampler's per-pod series.
    let samples = p.drain_samples();
    let mut by_ts: std::collections::BTreeMap<i64, f64> = std::collections::BTreeMap::new();
    for s in samples.iter().filter(|s| s.metric == "cpu_cores") {
        *by_ts.entry(s.ts_ms).or_default() += s.value;
    }
    let replicas = if by_ts.is_empty() {
        f64::NAN
    } else {
        by_ts.values().sum::<f64>() / by_ts.len() as f64
    };
    p.shutdown().await;
    (runner, replicas, wall)
}

fn main() {
    let reps = env_num("BENCH_REPS", 3).max(1);
    let secs = env_num("BENCH_SECS", 10).max(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("local runtime benchmarks (median of {reps} for ready times)");
    let platform_s = rt.block_on(ready_time_platform(reps, dir.path()));
    let bare_s = ready_time_bare(reps);
    println!(
        "ready time, 20 services x 2 replicas: meshbench {:.3} s | bare workers {:.3} s | ratio {:.2} (target < 2 s)",
        platform_s,
        bare_s,
        platform_s / bare_s
    );
    let (runner, replicas, wall) = rt.block_on(runner_cpu_at(1000, secs, dir.path()));
    println!(
        "runner CPU at 1000 rps over {wall:.1} s: {:.1} % of one core | replicas behind it {:.1} % | ratio {:.2} (target < 5 %)",
        runner * 100.0,
        replicas * 100.0,
        runner / replicas
    );
}
