//! Trials of candidate Benchmarks for `meshbench search` and `meshbench tune`: each
//! candidate is written as a YAML file of its own (runnable as it is), then simulated
//! in-process or run for real by `meshbench run` in a child process, into a directory of
//! the search's own; what comes back is the run directory's analysis.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use meshbench_analysis::Analysis;
use meshbench_analysis::rundir::{RunDir, write_atomic};
use meshbench_common::exit;

use crate::run::NodeArgs;
use crate::simulate::engine::Overheads;
use crate::simulate::{self, SimulateArgs, calibrate};

/// Where a trial's figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// `meshbench simulate`.
    Simulated,
    /// `meshbench run`.
    Measured,
}

impl Platform {
    /// `simulated` or `measured`: the column value and the subdirectory.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Simulated => "simulated",
            Platform::Measured => "measured",
        }
    }
}

/// The options every trial shares, as flags of `search` and `tune`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrialArgs {
    /// Measure this build's worker costs for the simulator (`simulate --calibrate`).
    #[arg(long)]
    pub calibrate: bool,
    /// Seed of the simulator's random draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// HPA sync period, of the simulator and the real runs.
    #[arg(long, default_value = "15s", value_parser = meshbench_common::duration::parse, value_name = "DURATION")]
    pub hpa_sync: Duration,
    /// metrics-server's `--metric-resolution`, of the simulator and the real runs.
    #[arg(long, default_value = "15s", value_parser = meshbench_common::duration::parse, value_name = "DURATION")]
    pub metric_resolution: Duration,
    /// The node's CPU and memory for pods, of the simulator and the real runs.
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print nothing but errors and the answer; real runs log to `run.log` in their
    /// directory.
    #[arg(long, short)]
    pub quiet: bool,
}

/// A directory of trials: `candidates/`, `simulated/`, `measured/`.
pub struct Trials {
    args: TrialArgs,
    dir: RunDir,
    overheads: Overheads,
    calibrated: bool,
    program: PathBuf,
}

/// A finished trial.
pub struct Trial {
    /// Its analysis (`steps`, `services`, the SLO verdicts).
    pub analysis: Analysis,
    /// Its run directory, relative to the trials' directory.
    pub run_dir: PathBuf,
}

impl Trials {
    /// Calibrates if asked (before anything is written), then creates
    /// `<out>/<name>-<UTC timestamp>/`.
    pub fn new(args: &TrialArgs, out: &Path, name: &str) -> Result<Self, u8> {
        let program = std::env::current_exe().map_err(|e| {
            eprintln!("error: cannot find the meshbench program itself: {e}");
            exit::RUN_FAILED
        })?;
        let overheads = if args.calibrate {
            let c = calibrate::measure(&program).map_err(|e| {
                eprintln!("error: --calibrate: {e}");
                exit::RUN_FAILED
            })?;
            c.overheads()
        } else {
            simulate::release_overheads()
        };
        let dir = RunDir::create(out, name, Utc::now()).map_err(|e| {
            eprintln!(
                "error: cannot create the directory under {}: {e}",
                out.display()
            );
            exit::RUN_FAILED
        })?;
        Ok(Trials {
            args: args.clone(),
            dir,
            overheads,
            calibrated: args.calibrate,
            program,
        })
    }

    /// The trials' directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The worker costs the simulations use.
    pub fn overheads(&self) -> Overheads {
        self.overheads
    }

    /// Whether progress is printed.
    pub fn quiet(&self) -> bool {
        self.args.quiet
    }

    /// Writes `candidates/<label>.yaml` from `docs` (ServiceMesh and Benchmark) and
    /// runs it on `platform` into `<platform>/<label>/`.
    pub fn run(&self, label: &str, docs: &[String], platform: Platform) -> Result<Trial, String> {
        let file = self.write_candidate(label, docs)?;
        let rel = PathBuf::from(platform.name()).join(label);
        let out = self.dir.path().join(&rel);
        match platform {
            Platform::Simulated => self.simulate(&file, &out)?,
            Platform::Measured => self.measure(&file, &out)?,
        }
        let run = single_dir(&out)?;
        let analysis = meshbench_analysis::load(&run)
            .map_err(|e| format!("cannot read the run at {}: {e}", run.display()))?;
        let name = run.file_name().map(PathBuf::from).unwrap_or_default();
        Ok(Trial {
            analysis,
            run_dir: rel.join(name),
        })
    }

    fn write_candidate(&self, label: &str, docs: &[String]) -> Result<PathBuf, String> {
        let text = docs.join("---\n");
        let dir = self.dir.path().join("candidates");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!("{label}.yaml"));
        write_atomic(&path, |w| std::io::Write::write_all(w, text.as_bytes()))
            .map_err(|e| e.to_string())?;
        Ok(path)
    }

    fn simulate(&self, file: &Path, out: &Path) -> Result<(), String> {
        let args = SimulateArgs {
            files: vec![file.to_owned()],
            out: out.to_owned(),
            benchmark: None,
            seed: self.args.seed,
            hpa_sync: self.args.hpa_sync,
            metric_resolution: self.args.metric_resolution,
            hpa_cpu_initialization_period: Duration::from_secs(300),
            cores: None,
            ready_timeout: Duration::from_secs(60),
            node: self.args.node.clone(),
            calibrate: false,
            // Measured once for all trials; without --calibrate the simulator's own default.
            overheads: self.calibrated.then_some(self.overheads),
            quiet: true,
        };
        match simulate::run(&args) {
            exit::OK | exit::SLO_FAILED => Ok(()),
            code => Err(format!(
                "the simulation of {} failed (exit status {code})",
                file.display()
            )),
        }
    }

    fn measure(&self, file: &Path, out: &Path) -> Result<(), String> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("run")
            .arg(file)
            .arg("--out")
            .arg(out)
            .arg("--quiet")
            .arg("--hpa-sync")
            .arg(format!("{}ms", self.args.hpa_sync.as_millis()))
            .arg("--metric-resolution")
            .arg(format!("{}ms", self.args.metric_resolution.as_millis()));
        if let Some(cpu) = self.args.node.node_cpu {
            cmd.arg("--node-cpu").arg(format!("{cpu}m"));
        }
        if let Some(mem) = self.args.node.node_memory {
            cmd.arg("--node-memory").arg(mem.to_string());
        }
        // Quiet: the run's messages (its errors, its SLO verdict) go to a log beside its
        // directory, not the terminal.
        let log = self.args.quiet.then(|| out.join("run.log"));
        let stderr = match &log {
            Some(log) => {
                std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
                std::fs::File::create(log)
                    .map_err(|e| format!("{}: {e}", log.display()))?
                    .into()
            }
            None => Stdio::inherit(),
        };
        let status = cmd
            .stdout(Stdio::null())
            .stderr(stderr)
            .status()
            .map_err(|e| format!("cannot start {}: {e}", self.program.display()))?;
        match status.code().map(|c| c as u8) {
            Some(exit::OK | exit::SLO_FAILED) => Ok(()),
            _ => Err(format!(
                "the run of {} failed ({status}); its directory is under {}{}",
                file.display(),
                out.display(),
                log.map(|l| format!(", its messages in {}", l.display()))
                    .unwrap_or_default()
            )),
        }
    }
}

/// One YAML document of a candidate file.
pub fn yaml<T: serde::Serialize>(doc: &T) -> Result<String, String> {
    serde_yaml::to_string(doc).map_err(|e| format!("cannot write a candidate: {e}"))
}

/// The newest run directory under `out`.
fn single_dir(out: &Path) -> Result<PathBuf, String> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .map_err(|e| format!("{}: {e}", out.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.pop()
        .ok_or_else(|| format!("no run directory was written under {}", out.display()))
}
