//! Speed of `meshbench simulate`: an hour of a 20-service chain (4 replicas each, 1 ms of
//! CPU per hop under a 1-core limit) at 1000 rps, the target being under 10 s on
//! one core. Printed beside the simulated time it covers (the speed-up over real time)
//! and the requests and events it simulated per second of wall time; the process's CPU
//! time shows it ran on one core (the simulation is single-threaded).
//!
//! Run: `cargo bench -p meshbench-operator --bench simulate` (a release build).
//! `BENCH_SIM_SECS` (default 3600) is the simulated load's length, `BENCH_SIM_RATE`
//! (default 1000) its rate.

use std::time::Instant;

use meshbench_operator::simulate::{self, SimulateArgs};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A chain `s0 → s1 → … → s19`, the Benchmark holding `rate` for `secs`.
fn spec(services: usize, replicas: usize, rate: u64, secs: u64) -> String {
    let mut y = format!(
        "apiVersion: meshbench.io/v1alpha1\nkind: ServiceMesh\nmetadata: {{ name: chain20 }}\nspec:\n  defaults:\n    replicas: {replicas}\n    resources:\n      requests: {{ cpu: 100m, memory: 32Mi }}\n      limits: {{ cpu: 1, memory: 128Mi }}\n  services:\n"
    );
    for i in 0..services {
        y.push_str(&format!(
            "    - name: s{i}\n      endpoints:\n        - path: /\n          cpu: 1ms\n"
        ));
        if i + 1 < services {
            y.push_str(&format!(
                "          calls: [{{ service: s{}, path: / }}]\n",
                i + 1
            ));
        }
    }
    y.push_str(&format!(
        "---\napiVersion: meshbench.io/v1alpha1\nkind: Benchmark\nmetadata: {{ name: chain20 }}\nspec:\n  meshes: [chain20]\n  target: {{ service: s0, path: / }}\n  load: {{ model: open, maxInFlight: 10000 }}\n  profile:\n    stages: [{{ rate: {rate}, duration: {secs}s }}]\n"
    ));
    y
}

fn cpu_seconds_of_self() -> f64 {
    // utime + stime, fields 14 and 15 of /proc/self/stat (index 11 and 12 after the ')').
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let secs = env_num("BENCH_SIM_SECS", 3600);
    let rate = env_num("BENCH_SIM_RATE", 1000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("chain20.yaml");
    std::fs::write(&file, spec(20, 4, rate, secs)).expect("write spec");
    let args = SimulateArgs {
        files: vec![file],
        out: tmp.path().join("out"),
        benchmark: None,
        seed: 1,
        hpa_sync: std::time::Duration::from_secs(15),
        metric_resolution: std::time::Duration::from_secs(15),
        hpa_cpu_initialization_period: std::time::Duration::from_secs(300),
        cores: Some(1),
        ready_timeout: std::time::Duration::from_secs(60),
        node: meshbench_operator::run::NodeArgs {
            node_cpu: Some(100_000),
            node_memory: Some(100 << 30),
        },
        calibrate: false,
        overheads: None,
        quiet: true,
    };
    println!("## simulate: 20-service chain × 4 replicas, 1 ms per hop, {rate} rps for {secs} s");
    let (cpu0, t0) = (cpu_seconds_of_self(), Instant::now());
    let code = simulate::run(&args);
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds_of_self() - cpu0);
    assert!(matches!(code, 0 | 3), "simulate exited {code}");
    let requests = (rate * secs) as f64;
    println!(
        "wall {wall:.2} s (target < 10 s), CPU {cpu:.2} s ({:.2} cores); {:.0}× real time; {:.2} M requests, {:.0} k requests/s and {:.0} k hops/s simulated",
        cpu / wall,
        secs as f64 / wall,
        requests / 1e6,
        requests / wall / 1e3,
        requests * 20.0 / wall / 1e3,
    );
}
