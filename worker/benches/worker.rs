//! Worker benchmarks, printed side by side with reference servers in one invocation:
//!
//! 1. throughput of a no-work endpoint vs a bare axum hello server (wrk), and of a
//!    2-service chain of workers vs a bare axum 2-hop chain;
//! 2. cost of a hop at a fixed 1000 rps: a 3-worker chain vs a direct call;
//! 3. CPU-burn accuracy (CPU consumed per request from /proc/<pid>/stat) for the worker's
//!    thread-CPU-clock burn, a calibrated loop and a wall-clock loop, alone and with one
//!    and two busy processes;
//! 4. resident memory of an idle worker and with 1000 concurrent requests;
//!
//! plus the time from spawn to the first served request.
//!
//! Run: `cargo bench -p meshbench-worker --bench worker` (needs `wrk` on PATH).
//! `MESHBENCH_BENCH_SECS` sets the wrk duration per run (default 8).
//!
//! The reference servers and busy loops are this same executable re-run with
//! `MESHBENCH_BENCH_ROLE` set, so each is its own process whose CPU can be read from /proc.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshbench_worker::metrics::process_usage;
use serde_json::json;

const WORKER: &str = env!("CARGO_BIN_EXE_meshbench-worker");
const ROLE: &str = "MESHBENCH_BENCH_ROLE";
/// Set in a reference server's environment: calibrate the prototype's way (wall clock).
const WALL_CALIBRATION: &str = "MESHBENCH_BENCH_WALL_CALIBRATION";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("hello") => roles::hello(),
        Ok("busy") => roles::busy(),
        _ => {
            // The references are measured with wrk: without it there is nothing to compare,
            // so stop with one line rather than a panic halfway through.
            if Command::new("wrk").arg("--version").output().is_err() {
                eprintln!(
                    "worker bench: wrk is not on PATH (apt-get install -y wrk); nothing measured"
                );
                std::process::exit(1);
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(driver());
        }
    }
}

/// The reference processes.
mod roles {
    use super::*;
    use axum::Router;
    use axum::http::Uri;
    use axum::routing::get;
    use std::hint::black_box;

    /// Spins for `iters` iterations of the same arithmetic as a calibration slice.
    fn spin(iters: u64) -> u64 {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..iters {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i) ^ (x >> 29);
        }
        black_box(x)
    }

    /// The prototype's approach: count how many iterations fit in 100 ms of wall time at
    /// start-up, then burn `ms` as `ms × iterations per ms`. Any CPU the calibrating
    /// thread did not get in those 100 ms makes every later burn short.
    fn calibrate_wall() -> f64 {
        let t = Instant::now();
        let mut iters = 0u64;
        while t.elapsed() < Duration::from_millis(100) {
            spin(black_box(10_000));
            iters += 10_000;
        }
        iters as f64 / t.elapsed().as_secs_f64() / 1000.0
    }

    /// A calibration done properly: iterations per millisecond of this thread's own CPU
    /// time, the median of five 20 ms windows, so neither a preemption nor one odd window
    /// sets the rate.
    fn calibrate_cpu() -> f64 {
        let cpu = || meshbench_worker::work::thread_cpu_time().unwrap_or_default();
        let mut rates: Vec<f64> = (0..5)
            .map(|_| {
                let t0 = cpu();
                let mut iters = 0u64;
                loop {
                    spin(black_box(10_000));
                    iters += 10_000;
                    let used = cpu().saturating_sub(t0);
                    if used >= Duration::from_millis(20) {
                        break iters as f64 / used.as_secs_f64() / 1000.0;
                    }
                }
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        rates[2]
    }

    /// `ms` from a `?ms=<f64>` query (0 when absent).
    fn ms(uri: &Uri) -> f64 {
        uri.query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// A bare axum server: `/` hello, `/chain` one call to `MESHBENCH_BENCH_DOWNSTREAM`,
    /// `/calibrated?ms=` and `/wall?ms=` CPU burns the prototype's ways.
    pub fn hello() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let per_ms = if std::env::var_os(WALL_CALIBRATION).is_some() {
                calibrate_wall()
            } else {
                calibrate_cpu()
            };
            let downstream = std::env::var("MESHBENCH_BENCH_DOWNSTREAM").ok();
            let mut conn = HttpConnector::new();
            conn.set_nodelay(true);
            let client: Client<HttpConnector, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build(conn);
            let app = Router::new()
                .route("/", get(|| async { "Hello, World!" }))
                .route(
                    "/chain",
                    get(move || {
                        let client = client.clone();
                        let url = downstream.clone().unwrap_or_default();
                        async move {
                            let req = Request::get(url).body(Empty::new()).expect("request");
                            match client.request(req).await {
                                Ok(r) => {
                                    let _ = r.into_body().collect().await;
                                    "ok"
                                }
                                Err(_) => "error",
                            }
                        }
                    }),
                )
                .route(
                    "/calibrated",
                    get(move |uri: Uri| async move {
                        let iters = (ms(&uri) * per_ms) as u64;
                        let _ = tokio::task::spawn_blocking(move || spin(iters)).await;
                        "done"
                    }),
                )
                .route(
                    "/wall",
                    get(|uri: Uri| async move {
                        let d = Duration::from_secs_f64(ms(&uri) / 1000.0);
                        let _ = tokio::task::spawn_blocking(move || {
                            let t = Instant::now();
                            while t.elapsed() < d {
                                spin(1000);
                            }
                        })
                        .await;
                        "done"
                    }),
                );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            println!("listening on {}", listener.local_addr().expect("addr"));
            let listener = axum::serve::ListenerExt::tap_io(listener, |t| {
                let _ = t.set_nodelay(true);
            });
            axum::serve(listener, app).await.expect("serve");
        });
    }

    /// Keeps one core busy for at most 10 minutes (the driver kills it much earlier).
    pub fn busy() {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(600) {
            spin(1_000_000);
        }
    }
}

/// A child process killed when dropped.
struct Proc {
    child: Child,
    url: String,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn cpu(&self) -> f64 {
        process_usage(Some(self.pid())).map_or(0.0, |u| u.0)
    }
    /// Context switches of all live threads (voluntary + involuntary).
    fn switches(&self) -> u64 {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return 0;
        };
        dir.filter_map(Result::ok)
            .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
            .flat_map(|st| {
                st.lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }
    fn rss(&self) -> u64 {
        process_usage(Some(self.pid())).map_or(0, |u| u.1)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_addr(child: &mut Child, prefix: &str) -> String {
    let out = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("read stdout");
    let addr = line
        .trim()
        .rsplit_once(prefix)
        .map(|(_, a)| a.to_owned())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    format!("http://{addr}")
}

fn start_worker(config: serde_json::Value) -> Proc {
    let mut child = Command::new(WORKER)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--config-json",
            &config.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn worker");
    let url = read_addr(&mut child, "listening on ");
    Proc { child, url }
}

fn start_hello(downstream: Option<&str>) -> Proc {
    start_hello_with(downstream, false)
}

/// A bare axum server; `wall_calibration` makes its calibrated loop the prototype's.
fn start_hello_with(downstream: Option<&str>, wall_calibration: bool) -> Proc {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.env(ROLE, "hello").stdout(Stdio::piped());
    if wall_calibration {
        cmd.env(WALL_CALIBRATION, "1");
    }
    if let Some(d) = downstream {
        cmd.env("MESHBENCH_BENCH_DOWNSTREAM", d);
    }
    let mut child = cmd.spawn().expect("spawn hello");
    let url = read_addr(&mut child, "listening on ");
    Proc { child, url }
}

fn start_busy(n: usize) -> Vec<Proc> {
    (0..n)
        .map(|_| {
            let child = Command::new(std::env::current_exe().expect("current exe"))
                .env(ROLE, "busy")
                .spawn()
                .expect("spawn busy");
            Proc {
                child,
                url: String::new(),
            }
        })
        .collect()
}

fn no_work(service: &str) -> serde_json::Value {
    json!({"version": 1, "service": service, "endpoints": [{"path": "/"}]})
}

fn calling(service: &str, downstream: &str) -> serde_json::Value {
    json!({"version": 1, "service": service,
        "endpoints": [{"path": "/", "call_groups": [[{"url": downstream, "path": "/"}]]}]})
}

struct WrkResult {
    rps: f64,
    requests: f64,
    errors: bool,
}

fn wrk(url: &str, secs: u64) -> WrkResult {
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{secs}s"), url])
        .output()
        .expect("run wrk (apt-get install -y wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let errors = text.contains("Non-2xx") || text.contains("Socket errors");
    WrkResult {
        rps,
        requests,
        errors,
    }
}

/// Runs wrk against `url` and reports rps and server CPU µs per request over `procs`.
fn measure_wrk(url: &str, procs: &[&Proc], secs: u64) -> (f64, f64, bool) {
    let before: f64 = procs.iter().map(|p| p.cpu()).sum();
    let r = wrk(url, secs);
    let after: f64 = procs.iter().map(|p| p.cpu()).sum();
    let us_per_req = if r.requests > 0.0 {
        (after - before) / r.requests * 1e6
    } else {
        f64::NAN
    };
    (r.rps, us_per_req, r.errors)
}

/// A row of the CPU-burn table: name, process, path for a burn of `ms`.
type Approach<'a> = (&'a str, &'a Proc, fn(u32) -> String);

type BenchClient = Client<HttpConnector, Empty<Bytes>>;

fn bench_client() -> BenchClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(c)
}

async fn get(client: &BenchClient, url: &str) -> Option<u16> {
    let req = Request::get(url).body(Empty::new()).ok()?;
    let resp = client.request(req).await.ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

async fn metric(client: &BenchClient, url: &str, name: &str) -> f64 {
    let Ok(req) = Request::get(format!("{url}/metrics")).body(Empty::new()) else {
        return 0.0;
    };
    let Ok(resp) = client.request(req).await else {
        return 0.0;
    };
    let Ok(body) = resp.into_body().collect().await else {
        return 0.0;
    };
    String::from_utf8_lossy(&body.to_bytes())
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Open-loop fixed-rate load: request i is sent at t0 + i/rate whether or not earlier
/// ones finished; latency counts from the moment it is sent (tokio's 1 ms timer wheel
/// would otherwise add its own lateness to every sample).
async fn fixed_rate(client: &BenchClient, url: &str, rate: f64, secs: f64) -> (Vec<f64>, usize) {
    let n = (rate * secs) as usize;
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let (c, u) = (client.clone(), url.to_owned());
        set.spawn(async move {
            let sent = Instant::now();
            let ok = get(&c, &u).await == Some(200);
            (sent.elapsed().as_secs_f64() * 1e6, ok)
        });
    }
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    while let Some(r) = set.join_next().await {
        match r {
            Ok((l, true)) => lat.push(l),
            _ => errors += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    (lat, errors)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn wait_live(client: &BenchClient, url: &str) {
    for _ in 0..500 {
        if get(client, &format!("{url}/live")).await == Some(200)
            || get(client, url).await == Some(200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn driver() {
    let secs: u64 = std::env::var("MESHBENCH_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let client = &bench_client();
    // MESHBENCH_BENCH_ONLY=1,3 runs only those sections (0 = start-up).
    let only: Option<Vec<u32>> = std::env::var("MESHBENCH_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let run = |section: u32| only.as_ref().is_none_or(|o| o.contains(&section));
    println!("load average at start: {}", loadavg());
    println!(
        "meshbench worker benchmark ({} CPUs, wrk -t2 -c64 -d{secs}s)",
        num_cpus()
    );

    if run(0) {
        startup(client).await;
    }
    if run(1) {
        throughput(client, secs).await;
    }
    if run(2) {
        hop_cost(client).await;
    }
    if run(3) {
        cpu_accuracy(client).await;
    }
    if run(4) {
        memory(client).await;
    }
    println!("\nload average at end: {}", loadavg());
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn startup(client: &BenchClient) {
    let mut startups = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let p = start_worker(no_work("startup"));
        let first_line = t.elapsed();
        wait_live(client, &p.url).await;
        startups.push((first_line, t.elapsed()));
    }
    let best = startups.iter().map(|s| s.1).min().unwrap_or_default();
    let worst = startups.iter().map(|s| s.1).max().unwrap_or_default();
    println!(
        "\n## 0. start-up: spawn → first /live answered: best {:.1} ms, worst {:.1} ms (5 runs)",
        best.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3
    );
}

async fn throughput(client: &BenchClient, secs: u64) {
    println!("\n## 1. throughput (wrk, same machine, same client)");
    let worker = start_worker(no_work("solo"));
    let hello = start_hello(None);
    let mut rows = Vec::new();
    for round in 0..4 {
        // Alternate which goes first so a drift in background load hits both alike.
        let (h, w) = if round % 2 == 0 {
            let h = measure_wrk(&format!("{}/", hello.url), &[&hello], secs);
            (
                h,
                measure_wrk(&format!("{}/", worker.url), &[&worker], secs),
            )
        } else {
            let w = measure_wrk(&format!("{}/", worker.url), &[&worker], secs);
            (measure_wrk(&format!("{}/", hello.url), &[&hello], secs), w)
        };
        println!(
            "round {round}: bare axum hello {:>9.0} rps {:>6.1} µs CPU/req{} | worker no-work {:>9.0} rps {:>6.1} µs CPU/req{} | ratio {:.2}",
            h.0,
            h.1,
            if h.2 { " (errors!)" } else { "" },
            w.0,
            w.1,
            if w.2 { " (errors!)" } else { "" },
            w.0 / h.0
        );
        rows.push((h, w));
    }
    let mut ratios: Vec<f64> = rows.iter().map(|(h, w)| w.0 / h.0).collect();
    let mut cpu_ratios: Vec<f64> = rows.iter().map(|(h, w)| h.1 / w.1).collect();
    ratios.sort_by(f64::total_cmp);
    cpu_ratios.sort_by(f64::total_cmp);
    let (hs, ws): (f64, f64) = rows
        .iter()
        .fold((0.0, 0.0), |a, r| (a.0 + r.0.0, a.1 + r.1.0));
    println!(
        "throughput ratio worker / bare axum: total {:.2}, median of rounds {:.2} [target ≥ 0.8]; server CPU per request ratio bare / worker: median {:.2}",
        ws / hs,
        (ratios[1] + ratios[2]) / 2.0,
        (cpu_ratios[1] + cpu_ratios[2]) / 2.0
    );
    drop(worker);
    drop(hello);

    // 2-service chains at full speed.
    let wb = start_worker(no_work("b"));
    let wa = start_worker(calling("a", &wb.url));
    let hb = start_hello(None);
    let ha = start_hello(Some(&format!("{}/", hb.url)));
    let hc = measure_wrk(&format!("{}/chain", ha.url), &[&ha, &hb], secs);
    let wc = measure_wrk(&format!("{}/", wa.url), &[&wa, &wb], secs);
    let calls = metric(client, &wa.url, "meshbench_worker_downstream_calls_total").await;
    let conns = metric(
        client,
        &wa.url,
        "meshbench_worker_downstream_connections_total",
    )
    .await;
    println!(
        "2-service chain: bare axum {:>8.0} rps {:>6.1} µs CPU/req | worker {:>8.0} rps {:>6.1} µs CPU/req | ratio {:.2} | worker downstream calls {calls:.0}, new connections {conns:.0} ({:.3} %)",
        hc.0,
        hc.1,
        wc.0,
        wc.1,
        wc.0 / hc.0,
        conns / calls.max(1.0) * 100.0
    );
    drop((wa, wb, ha, hb));
}

/// Latency percentiles and server CPU per request of one fixed-rate run.
struct RateRun {
    lat: Vec<f64>,
    errors: usize,
    cpu_us: f64,
    switches: f64,
}

async fn rate_run(client: &BenchClient, url: &str, procs: &[&Proc]) -> RateRun {
    let _ = fixed_rate(client, url, 1000.0, 1.0).await; // warm-up, connections
    let cpu0: f64 = procs.iter().map(|p| p.cpu()).sum();
    let sw0: u64 = procs.iter().map(|p| p.switches()).sum();
    let (lat, errors) = fixed_rate(client, url, 1000.0, 10.0).await;
    let cpu = procs.iter().map(|p| p.cpu()).sum::<f64>() - cpu0;
    let sw = procs
        .iter()
        .map(|p| p.switches())
        .sum::<u64>()
        .saturating_sub(sw0);
    let n = lat.len().max(1) as f64;
    RateRun {
        lat,
        errors,
        cpu_us: cpu / n * 1e6,
        switches: sw as f64 / n,
    }
}

fn print_rate(name: &str, r: &RateRun) {
    println!(
        "{name:>20}: n {:>6} errors {} p50 {:>6.0} µs p90 {:>6.0} µs p99 {:>6.0} µs max {:>7.0} µs; server CPU {:>6.1} µs/req, {:.1} context switches/req",
        r.lat.len(),
        r.errors,
        pct(&r.lat, 0.5),
        pct(&r.lat, 0.9),
        pct(&r.lat, 0.99),
        pct(&r.lat, 1.0),
        r.cpu_us,
        r.switches
    );
}

fn print_hop(name: &str, direct: &RateRun, chain: &RateRun) {
    println!(
        "{name:>20}: per hop (3-chain − direct)/2: p50 +{:.0} µs, p99 +{:.0} µs, server CPU {:.1} µs",
        (pct(&chain.lat, 0.5) - pct(&direct.lat, 0.5)) / 2.0,
        (pct(&chain.lat, 0.99) - pct(&direct.lat, 0.99)) / 2.0,
        (chain.cpu_us - direct.cpu_us) / 2.0
    );
}

async fn hop_cost(client: &BenchClient) {
    println!("\n## 2. cost of a hop at 1000 rps for 10 s (open loop, latency from send)");
    let c3 = start_worker(no_work("c"));
    let b3 = start_worker(calling("b", &c3.url));
    let a3 = start_worker(calling("a", &b3.url));
    let direct = start_worker(no_work("direct"));
    let wd = rate_run(client, &format!("{}/", direct.url), &[&direct]).await;
    let wc = rate_run(client, &format!("{}/", a3.url), &[&a3, &b3, &c3]).await;
    let mut calls = 0.0;
    let mut conns = 0.0;
    for p in [&a3, &b3] {
        calls += metric(client, &p.url, "meshbench_worker_downstream_calls_total").await;
        conns += metric(
            client,
            &p.url,
            "meshbench_worker_downstream_connections_total",
        )
        .await;
    }
    drop((a3, b3, c3, direct));

    let hc = start_hello(None);
    let hb = start_hello(Some(&format!("{}/", hc.url)));
    let ha = start_hello(Some(&format!("{}/chain", hb.url)));
    let hd = start_hello(None);
    let bd = rate_run(client, &format!("{}/", hd.url), &[&hd]).await;
    let bc = rate_run(client, &format!("{}/chain", ha.url), &[&ha, &hb, &hc]).await;
    drop((ha, hb, hc, hd));

    print_rate("worker direct", &wd);
    print_rate("worker 3-chain", &wc);
    print_rate("bare axum direct", &bd);
    print_rate("bare axum 3-chain", &bc);
    print_hop("worker", &wd, &wc);
    print_hop("bare axum", &bd, &bc);
    // The targets, relative to bare axum measured in the same invocation.
    let hop = |d: &RateRun, c: &RateRun| {
        (
            (pct(&c.lat, 0.5) - pct(&d.lat, 0.5)) / 2.0,
            (c.cpu_us - d.cpu_us) / 2.0,
        )
    };
    let ((w_p50, w_cpu), (a_p50, a_cpu)) = (hop(&wd, &wc), hop(&bd, &bc));
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets per worker hop: p50 ≤ bare axum's + 30 µs ({:+.0} µs: {}), CPU ≤ 1.2 × bare axum's ({:.2} ×: {}); worker downstream calls {calls:.0}, new connections {conns:.0} ({:.2} %)",
        w_p50 - a_p50,
        verdict(w_p50 <= a_p50 + 30.0),
        w_cpu / a_cpu,
        verdict(w_cpu <= 1.2 * a_cpu),
        conns / calls.max(1.0) * 100.0
    );
}

async fn cpu_accuracy(client: &BenchClient) {
    println!("\n## 3. CPU consumed per request (from /proc/<pid>/stat, HTTP handling included)");
    let burner = start_worker(json!({"version": 1, "service": "burn", "endpoints": [
        {"path": "/1", "cpu_us": 1000}, {"path": "/10", "cpu_us": 10000}, {"path": "/50", "cpu_us": 50000}
    ]}));
    let reference = start_hello(None);
    // The prototype's calibration (wall clock) and its worst case: done while both cores
    // were busy.
    let prototype = start_hello_with(None, true);
    let late = {
        let _busy = start_busy(2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        start_hello_with(None, true)
    };
    println!(
        "{:<52} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "approach / load", "1 ms", "err", "10 ms", "err", "50 ms", "err"
    );
    for busy_n in [0usize, 1, 2] {
        let _busy = start_busy(busy_n);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let label = ["alone", "1 busy process", "2 busy processes"][busy_n];
        let approaches: [Approach; 5] = [
            ("thread CPU clock (worker)", &burner, |ms| format!("/{ms}")),
            ("calibrated loop (CPU-time calibration)", &reference, |ms| {
                format!("/calibrated?ms={ms}")
            }),
            (
                "calibrated loop (prototype: wall clock)",
                &prototype,
                |ms| format!("/calibrated?ms={ms}"),
            ),
            ("prototype calibration done busy", &late, |ms| {
                format!("/calibrated?ms={ms}")
            }),
            ("wall-clock loop", &reference, |ms| format!("/wall?ms={ms}")),
        ];
        for (name, proc_, path) in approaches {
            let mut cells = Vec::new();
            for ms in [1u32, 10, 50] {
                // ~1 s of CPU per cell keeps the 10 ms tick of /proc below 1 %.
                let n = 1000 / ms as usize;
                let url = format!("{}{}", proc_.url, path(ms));
                let _ = get(client, &url).await;
                let before = proc_.cpu();
                for _ in 0..n {
                    let _ = get(client, &url).await;
                }
                let per = (proc_.cpu() - before) / n as f64 * 1e3;
                cells.push(format!(
                    "{per:>7.2}ms {:>+7.1}%",
                    (per - f64::from(ms)) / f64::from(ms) * 100.0
                ));
            }
            println!("{:<52} {}", format!("{name}, {label}"), cells.join(" "));
        }
    }
    drop((burner, reference, prototype, late));
}

async fn memory(client: &BenchClient) {
    println!("\n## 4. resident memory");
    let idle = start_worker(json!({"version": 1, "service": "mem", "endpoints": [
        {"path": "/hold", "delay": {"distribution": {"kind": "fixed", "value_us": 3000000}}}
    ]}));
    wait_live(client, &idle.url).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_idle = idle.rss();
    let fan = Arc::new(bench_client());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (c, u) = (fan.clone(), format!("{}/hold", idle.url));
        set.spawn(async move { get(&c, &u).await });
    }
    let mut peak = 0;
    let mut in_flight = 0.0;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        in_flight = metric(client, &idle.url, "meshbench_worker_in_flight").await;
        peak = peak.max(idle.rss());
        if in_flight >= 1000.0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            peak = peak.max(idle.rss());
            break;
        }
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        if matches!(r, Ok(Some(200))) {
            ok += 1;
        }
    }
    let rss_after = idle.rss();
    println!(
        "idle worker RSS {:.1} MiB; with {in_flight:.0} requests in flight {:.1} MiB (+{:.1} MiB per 1000 concurrent requests, {:.1} KiB each); after they finished {:.1} MiB; {ok}/1000 answered 200",
        mib(rss_idle),
        mib(peak),
        mib(peak.saturating_sub(rss_idle)),
        peak.saturating_sub(rss_idle) as f64 / 1024.0 / 1000.0,
        mib(rss_after)
    );
}

fn mib(b: u64) -> f64 {
    b as f64 / 1024.0 / 1024.0
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
