//! Report benchmark (prints figures, asserts nothing): build every table, run.json, the
//! report and the plot files for a synthetic 1-hour run of 100 pods sampled every second.
//!
//! Run: `cargo bench -p meshbench-analysis --bench report`
//! Target on the 2-core reference machine: under 3 s and under 1 GiB peak RSS.
//! The reference beside it is the cheapest possible output of the same data: the
//! `timeseries` table alone written as Parquet, so the ratio shows what the analysis adds.

use std::fs;
use std::time::Instant;

use chrono::DateTime;
use meshbench_analysis::RunDir;
use meshbench_analysis::rundir::timeseries_frame;
use meshbench_analysis::synthetic::{self, Size};
use polars::prelude::*;

fn status_kib(field: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak RSS (VmHWM) to the current RSS (Linux ≥ 4.0).
fn reset_peak() -> bool {
    fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn main() {
    let start = DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
    let mut size = Size::one_hour_100_pods();
    // MESHBENCH_BENCH_STEPS scales the run (12 five-minute steps = 1 hour by default).
    if let Some(steps) = std::env::var("MESHBENCH_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        size.steps = steps;
    }
    let before = status_kib("VmRSS:").unwrap_or(0);
    let t = Instant::now();
    let data = synthetic::run(&size, "bench", start);
    let gen_s = t.elapsed().as_secs_f64();
    let input_rss = status_kib("VmRSS:").unwrap_or(0);
    println!(
        "input: {} samples, {} steps, {} load seconds; generated in {gen_s:.2} s, RSS {:.0} MiB (+{:.0} MiB)",
        data.samples.len(),
        data.steps.len(),
        data.load
            .iter()
            .map(|l| l.stage.seconds.len())
            .sum::<usize>(),
        input_rss as f64 / 1024.0,
        input_rss.saturating_sub(before) as f64 / 1024.0
    );
    let tmp = std::env::temp_dir().join(format!("meshbench-report-bench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);

    // Reference: the timeseries table alone as Parquet.
    let peak_ok = reset_peak();
    let t = Instant::now();
    fs::create_dir_all(&tmp).expect("temp dir");
    let mut df = timeseries_frame(&data).expect("frame");
    let f = fs::File::create(tmp.join("reference.parquet")).expect("file");
    ParquetWriter::new(f)
        .with_compression(ParquetCompression::Zstd(None))
        .finish(&mut df)
        .expect("parquet");
    drop(df);
    let ref_s = t.elapsed().as_secs_f64();
    let ref_peak = status_kib("VmHWM:").unwrap_or(0);

    // The measured work: all tables, run.json, report.html, SVG + PNG plots.
    reset_peak();
    let t = Instant::now();
    let dir = RunDir::create(&tmp, "bench", start).expect("run dir");
    let files = dir.finish(&data).expect("report");
    let full_s = t.elapsed().as_secs_f64();
    let full_peak = status_kib("VmHWM:").unwrap_or(0);

    // Breakdown: the analysis alone, and `meshbench report DIR` (read back + render).
    let t = Instant::now();
    let analysis = meshbench_analysis::analyze(&data);
    let analyze_s = t.elapsed().as_secs_f64();
    drop(analysis);
    let t = Instant::now();
    meshbench_analysis::rebuild_report(dir.path()).expect("rebuild");
    let rebuild_s = t.elapsed().as_secs_f64();

    let size_of = |p: &std::path::Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut total = 0;
    for e in fs::read_dir(dir.path()).expect("dir").flatten() {
        total += size_of(&e.path());
    }
    println!(
        "reference (timeseries.parquet only): {ref_s:.2} s, peak RSS {:.0} MiB",
        ref_peak as f64 / 1024.0
    );
    println!(
        "all tables + run.json + report.html + {} plot files: {full_s:.2} s, peak RSS {:.0} MiB{}",
        files.plots.len(),
        full_peak as f64 / 1024.0,
        if peak_ok {
            ""
        } else {
            " (peak not reset: includes input generation)"
        }
    );
    println!(
        "of which analysis alone: {analyze_s:.2} s; `report DIR` (read back + render): {rebuild_s:.2} s"
    );
    println!(
        "ratio full/reference: {:.1}x time; report.html {:.0} KiB; directory {:.1} MiB",
        full_s / ref_s.max(1e-9),
        size_of(&files.html) as f64 / 1024.0,
        total as f64 / 1_048_576.0
    );
    println!(
        "target: < 3 s and < 1024 MiB peak → {}",
        if full_s < 3.0 && full_peak < 1024 * 1024 {
            "met"
        } else {
            "NOT met"
        }
    );
    let _ = fs::remove_dir_all(&tmp);
}
