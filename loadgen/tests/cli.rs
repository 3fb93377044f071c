//! The `meshbench-loadgen` binary as a process: exit codes, SIGTERM, distributed merge.

#![cfg(feature = "runner")]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshbench_loadgen::LoadResult;

const BIN: &str = env!("CARGO_BIN_EXE_meshbench-loadgen");

fn loadgen() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("JOB_COMPLETION_INDEX")
        .env_remove("MESHBENCH_LOADGEN_INSTANCES")
        .env_remove("MESHBENCH_RESULTS_URL")
        .env("RUST_LOG", "warn");
    c
}

fn read_result(path: &Path) -> LoadResult {
    let text = std::fs::read_to_string(path).unwrap();
    LoadResult::from_json(&text).unwrap()
}

#[test]
fn quick_run_writes_the_result_to_stdout() {
    let _g = common::serial();
    let addr = common::start_target();
    let out = loadgen()
        .args([
            "--url",
            &format!("http://{addr}/?x=1"),
            "--rate",
            "50",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = LoadResult::from_json(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(r.stages[0].counts.sent, 50);
    assert_eq!(r.stages[0].counts.ok, 50);
    assert_eq!(r.plan.request.query.get("x").map(String::as_str), Some("1"));
}

#[test]
fn sigterm_writes_a_partial_result() {
    let _g = common::serial();
    let addr = common::start_target();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("result.json");
    let mut child = loadgen()
        .args([
            "--url",
            &format!("http://{addr}/"),
            "--rate",
            "100",
            "--duration",
            "60s",
            "--out",
        ])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "loadgen did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(4));
    let r = read_result(&out);
    assert!(r.partial && r.instances[0].partial && r.stages[0].partial);
    let c = &r.stages[0].counts;
    assert!(c.sent >= 50 && c.sent <= 1000, "sent {}", c.sent);
    assert!(r.stages[0].summary.elapsed_s < 30.0);
}

#[test]
fn two_instances_at_half_rate_merge_to_the_plan() {
    let _g = common::serial();
    let addr = common::start_target();
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "target: http://{addr}\nmodel: {{ type: open, maxInFlight: 50 }}\n\
             profile:\n  stages:\n    - {{ rate: 300, duration: 1s }}\n    - {{ rate: 101, duration: 1s }}\n"
        ),
    )
    .unwrap();
    let start_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 2500;
    let children: Vec<_> = (0..2)
        .map(|i| {
            let out = dir.path().join(format!("r{i}.json"));
            let child = loadgen()
                .arg("--plan")
                .arg(&plan)
                .args([
                    "--instances",
                    "2",
                    "--start-at",
                    &start_at.to_string(),
                    "--out",
                ])
                .arg(&out)
                .env("JOB_COMPLETION_INDEX", i.to_string())
                .spawn()
                .unwrap();
            (child, out)
        })
        .collect();
    let mut results = Vec::new();
    for (mut child, out) in children {
        assert_eq!(child.wait().unwrap().code(), Some(0));
        results.push(read_result(&out));
    }
    assert_eq!(results[0].stages[0].counts.sent, 150);
    assert_eq!(results[1].stages[1].counts.sent, 50);
    // Both started at the agreed wall-clock time.
    let gap = results[0]
        .started_unix_ms
        .abs_diff(results[1].started_unix_ms);
    assert!(gap <= 5, "start times differ by {gap} ms");
    assert!(results[0].started_unix_ms.abs_diff(start_at) <= 5);

    let merged = LoadResult::merge(&results).unwrap();
    assert_eq!(merged.instances.len(), 2);
    for (s, expected) in merged.stages.iter().zip([300u64, 101]) {
        assert_eq!(s.counts.planned, expected);
        assert_eq!(s.counts.sent, expected);
        let sum: u64 = results
            .iter()
            .map(|r| {
                r.stages[s.index as usize]
                    .latency_histogram()
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(s.latency_histogram().unwrap().len(), sum);
        assert_eq!(sum, s.counts.ok);
        assert_eq!(
            s.seconds.iter().map(|b| b.counts.sent).sum::<u64>(),
            expected
        );
    }
}

#[test]
fn unreachable_target_fails_preflight_with_exit_4() {
    let _g = common::serial();
    let out = loadgen()
        .args([
            "--url",
            &format!("http://{}/", common::closed_port()),
            "--rate",
            "10",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: preflight failed"), "{err}");
    assert!(out.stdout.is_empty());
}

/// Exit codes of the shared table (README, `meshbench_common::exit`): 1 for an invalid plan
/// (as `meshbench` for an invalid spec), 2 for a command line that describes no run.
#[test]
fn invalid_plan_is_exit_1_with_the_field_named() {
    let _g = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        "target: http://127.0.0.1:9\nmodel: { type: open }\nprofile: { stages: [ { rate: -5, duration: 1s } ] }\n",
    )
    .unwrap();
    let out = loadgen().arg("--plan").arg(&plan).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("profile.stages[0].rate"), "{err}");

    std::fs::write(
        &plan,
        "target: http://127.0.0.1:9\nmodel: { type: open, bogus: 1 }\n",
    )
    .unwrap();
    let out = loadgen().arg("--plan").arg(&plan).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus") && err.contains("plan.yaml"), "{err}");

    // A plan file that cannot be read is invalid input too.
    let out = loadgen()
        .arg("--plan")
        .arg(dir.path().join("missing.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    let out = loadgen()
        .args(["--url", "http://127.0.0.1:9/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // A start far in the future is refused at once rather than waited for.
    let far = (SystemTime::now() + Duration::from_secs(86_400))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let began = std::time::Instant::now();
    let out = loadgen()
        .args([
            "--url",
            "http://127.0.0.1:9/",
            "--rate",
            "1",
            "--duration",
            "1s",
        ])
        .args(["--start-at", &far])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("startAtUnixMs") && err.contains("in the future"),
        "{err}"
    );
    assert!(began.elapsed() < Duration::from_secs(10));
}

/// Duration flags take what the specs take (`1.5s`), through the one shared parser; a bare
/// number is a usage error with a hint.
#[test]
fn duration_flags_accept_fractions_as_the_spec_does() {
    use clap::Parser;
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: meshbench_loadgen::LoadgenArgs,
    }
    let cli = Cli::try_parse_from([
        "loadgen",
        "--url",
        "http://127.0.0.1:9/",
        "--rate",
        "1",
        "--duration",
        "1.5s",
        "--warm-up",
        "0.5s",
    ])
    .unwrap();
    assert_eq!(cli.args.duration, Duration::from_millis(1500));
    assert_eq!(cli.args.warm_up, Some(Duration::from_millis(500)));
    let e = Cli::try_parse_from([
        "loadgen",
        "--url",
        "http://127.0.0.1:9/",
        "--duration",
        "25",
    ])
    .unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("did you mean 25ms"), "{e}");
}

/// `--out /dev/null` once replaced the machine's /dev/null with a plain file (the result was
/// renamed over it). A FIFO stands in for the device: it must still be a FIFO afterwards
/// and its reader must get the result.
#[test]
fn out_to_a_fifo_writes_through_it_instead_of_replacing_it() {
    use std::os::unix::fs::FileTypeExt as _;
    let _g = common::serial();
    let addr = common::start_target();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("result.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let out = loadgen()
        .args(["--url", &format!("http://{addr}/"), "--rate", "20"])
        .args(["--duration", "1s", "--out"])
        .arg(&fifo)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Checked before joining: had the FIFO been replaced, its reader would never finish.
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let text = reader.join().unwrap();
    assert_eq!(
        LoadResult::from_json(&text).unwrap().stages[0].counts.sent,
        20
    );
}

/// A results receiver that answers `statuses` in turn (the last one from then on) and
/// counts the POSTs; it lives until the test process exits.
fn start_receiver(
    statuses: Vec<u16>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/r",
                axum::routing::post(move |body: String| {
                    let c = c.clone();
                    let statuses = statuses.clone();
                    async move {
                        assert!(
                            LoadResult::from_json(&body).is_ok(),
                            "a whole result each time"
                        );
                        let n = c.fetch_add(1, Ordering::SeqCst);
                        let s = statuses[n.min(statuses.len() - 1)];
                        axum::http::StatusCode::from_u16(s).unwrap()
                    }
                }),
            );
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    (rx.recv().unwrap(), count)
}

#[test]
fn the_result_post_is_retried_while_the_receiver_restarts_and_not_after_a_refusal() {
    let _g = common::serial();
    let addr = common::start_target();
    let run = |receiver: std::net::SocketAddr| {
        loadgen()
            .args([
                "--url",
                &format!("http://{addr}/"),
                "--rate",
                "20",
                "--duration",
                "1s",
            ])
            .args([
                "--out",
                "-",
                "--quiet",
                "--results-url",
                &format!("http://{receiver}/r"),
            ])
            .args(["--results-retry-for", "20s"])
            .output()
            .unwrap()
    };
    // Two 503s (an operator restarting), then accepted: exit 0 after three POSTs.
    let (receiver, count) = start_receiver(vec![503, 503, 204]);
    let out = run(receiver);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
    // A 400 is final: one POST, exit 5 (written but not posted).
    let (receiver, count) = start_receiver(vec![400]);
    let out = run(receiver);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Nobody listening at all: retried until the deadline, then exit 5.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let started = Instant::now();
    let out = loadgen()
        .args([
            "--url",
            &format!("http://{addr}/"),
            "--rate",
            "20",
            "--duration",
            "1s",
        ])
        .args([
            "--out",
            "-",
            "--quiet",
            "--results-url",
            &format!("http://{closed}/r"),
        ])
        .args(["--results-retry-for", "2s"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("gave up after retrying"));
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}
