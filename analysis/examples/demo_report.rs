//! Writes a run directory with a report for a small synthetic run, to look at the layout.
//!
//! `cargo run -p meshbench-analysis --example demo_report -- /tmp/demo`

use chrono::Utc;
use meshbench_analysis::RunDir;
use meshbench_analysis::synthetic::{self, Size};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "demo-report".into());
    let size = Size {
        services: 3,
        max_pods_per_service: 6,
        steps: 6,
        step_seconds: 60,
        resolution_ms: 1000,
        repetitions: 2,
        base_rate: 80.0,
        fixed_pods: false,
    };
    let data = synthetic::run(&size, "chain", Utc::now());
    let dir = RunDir::create(std::path::Path::new(&out), "demo", Utc::now())?;
    let files = dir.finish(&data)?;
    println!("{}", files.html.display());
    Ok(())
}
