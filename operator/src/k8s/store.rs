//! The operator's report volume: one directory per run, `<root>/<namespace>/<run id>/`.
//!
//! A run directory holds the report (the analysis crate's layout: run.json, tables,
//! plots, report.html) and, under `inputs/`, what the report is built from: the spec as
//! it was when the run started, each step's merged load result and its collected samples.
//! Everything the Benchmark controller needs beyond its status lives here, so the
//! controller can rebuild the report at any reconcile, after a restart too. Every file is
//! written atomically.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use meshbench_analysis::rundir::write_atomic;
use meshbench_analysis::{Phase as ReportPhase, Sample};
use meshbench_crds::{Benchmark, ServiceMesh};
use meshbench_loadgen::LoadResult;
use serde::{Deserialize, Serialize};
use std::io::Write as _;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A name that cannot be a path component (empty, `.`/`..`, or with a `/`).
    #[error("{0:?} is not a valid name for a directory of the report volume")]
    BadName(String),
}

/// Result alias of this module.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The spec a run started with: the plan never changes under a running experiment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpecSnapshot {
    /// The Benchmark.
    pub benchmark: Benchmark,
    /// Its meshes, in the order of `spec.meshes`.
    pub meshes: Vec<ServiceMesh>,
}

/// One line of a run's history (`inputs/history.jsonl`): what the report lists of the run's
/// course. It grows with every phase, so it lives on the volume, not in the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HistoryEntry {
    /// A phase of the run ended.
    Phase(ReportPhase),
    /// A warning for the report.
    Warning(String),
}

/// The report volume.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Whether `name` is safe as one path component (Kubernetes names always are).
pub fn valid_component(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn component(name: &str) -> Result<&str> {
    if valid_component(name) {
        Ok(name)
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

impl Store {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of run `run` of namespace `ns`.
    pub fn run_dir(&self, ns: &str, run: &str) -> Result<PathBuf> {
        Ok(self.root.join(component(ns)?).join(component(run)?))
    }

    fn inputs(&self, ns: &str, run: &str) -> Result<PathBuf> {
        Ok(self.run_dir(ns, run)?.join("inputs"))
    }

    /// Creates the run directory and records the spec the run starts with.
    pub fn start_run(&self, ns: &str, run: &str, spec: &SpecSnapshot) -> Result<PathBuf> {
        let inputs = self.inputs(ns, run)?;
        std::fs::create_dir_all(inputs.join("results")).map_err(io(&inputs))?;
        write_json(&inputs.join("spec.json"), spec)?;
        self.run_dir(ns, run)
    }

    /// Whether run `run` exists.
    pub fn has_run(&self, ns: &str, run: &str) -> bool {
        self.inputs(ns, run).is_ok_and(|p| p.is_dir())
    }

    /// The spec run `run` started with.
    pub fn spec(&self, ns: &str, run: &str) -> Result<SpecSnapshot> {
        read_json(&self.inputs(ns, run)?.join("spec.json"))
    }

    /// Stores the result of loadgen instance `index` of step `ordinal`.
    pub fn save_instance_result(
        &self,
        ns: &str,
        run: &str,
        ordinal: usize,
        index: u32,
        result: &LoadResult,
    ) -> Result<()> {
        let dir = self.inputs(ns, run)?.join("results");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        write_json(&dir.join(format!("{ordinal}-{index}.json")), result)
    }

    /// Whether instance `index` of step `ordinal` has a stored result, and it.
    pub fn instance_result(
        &self,
        ns: &str,
        run: &str,
        ordinal: usize,
        index: u32,
    ) -> Result<Option<LoadResult>> {
        let path = self
            .inputs(ns, run)?
            .join("results")
            .join(format!("{ordinal}-{index}.json"));
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// Bytes of every instance result stored for run `run`.
    pub fn results_bytes(&self, ns: &str, run: &str) -> Result<u64> {
        let dir = self.inputs(ns, run)?.join("results");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(&dir)(e)),
        };
        Ok(entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .fold(0u64, u64::saturating_add))
    }

    /// Records that step `ordinal` is the one whose load Job runs now: the results
    /// endpoint accepts results for it only.
    pub fn set_current_step(&self, ns: &str, run: &str, ordinal: usize) -> Result<()> {
        write_json(&self.inputs(ns, run)?.join("current-step.json"), &ordinal)
    }

    /// The step whose load Job runs now, if one does.
    pub fn current_step(&self, ns: &str, run: &str) -> Result<Option<usize>> {
        let path = self.inputs(ns, run)?.join("current-step.json");
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// The instance results of step `ordinal` received so far, by instance index.
    pub fn instance_results(&self, ns: &str, run: &str, ordinal: usize) -> Result<Vec<LoadResult>> {
        let dir = self.inputs(ns, run)?.join("results");
        let prefix = format!("{ordinal}-");
        let mut found: Vec<(u32, LoadResult)> = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(index) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".json"))
                .and_then(|i| i.parse::<u32>().ok())
            else {
                continue;
            };
            found.push((index, read_json::<LoadResult>(&entry.path())?));
        }
        found.sort_by_key(|(i, _)| *i);
        Ok(found.into_iter().map(|(_, r)| r).collect())
    }

    /// Stores the merged load result of step `ordinal`.
    pub fn save_step_result(
        &self,
        ns: &str,
        run: &str,
        ordinal: usize,
        result: &LoadResult,
    ) -> Result<()> {
        write_json(
            &self.inputs(ns, run)?.join(format!("step-{ordinal}.json")),
            result,
        )
    }

    /// The merged load result of step `ordinal`, if the step finished.
    pub fn step_result(&self, ns: &str, run: &str, ordinal: usize) -> Result<Option<LoadResult>> {
        let path = self.inputs(ns, run)?.join(format!("step-{ordinal}.json"));
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// Stores the samples collected after step `ordinal`.
    pub fn save_samples(
        &self,
        ns: &str,
        run: &str,
        ordinal: usize,
        samples: &[Sample],
    ) -> Result<()> {
        write_json(
            &self
                .inputs(ns, run)?
                .join(format!("samples-{ordinal}.json")),
            &samples,
        )
    }

    /// Every sample collected in the run, in step order.
    pub fn samples(&self, ns: &str, run: &str, steps: usize) -> Result<Vec<Sample>> {
        let inputs = self.inputs(ns, run)?;
        let mut out = Vec::new();
        for ordinal in 0..steps {
            let path = inputs.join(format!("samples-{ordinal}.json"));
            if path.exists() {
                out.extend(read_json::<Vec<Sample>>(&path)?);
            }
        }
        Ok(out)
    }

    /// Appends to the run's history. Appending is atomic per line up to the page size;
    /// a line cut short by a crash is skipped when read.
    pub fn append_history(&self, ns: &str, run: &str, entry: &HistoryEntry) -> Result<()> {
        let path = self.inputs(ns, run)?.join("history.jsonl");
        let mut line = serde_json::to_vec(entry).map_err(|e| StoreError::Io {
            path: path.clone(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&line))
            .map_err(io(&path))
    }

    /// The run's phases and warnings, in order. A transition repeated after a failed
    /// status write appends the same entry twice: repeats are dropped.
    pub fn history(&self, ns: &str, run: &str) -> Result<(Vec<ReportPhase>, Vec<String>)> {
        let path = self.inputs(ns, run)?.join("history.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(&path)(e)),
        };
        let (mut phases, mut warnings) = (Vec::<ReportPhase>::new(), Vec::<String>::new());
        for entry in text.lines().filter_map(|l| serde_json::from_str(l).ok()) {
            match entry {
                HistoryEntry::Phase(p) => {
                    let repeat = phases
                        .last()
                        .is_some_and(|q| q.name == p.name && q.started_at == p.started_at);
                    if !repeat {
                        phases.push(p);
                    }
                }
                HistoryEntry::Warning(w) => {
                    if !warnings.contains(&w) {
                        warnings.push(w);
                    }
                }
            }
        }
        Ok((phases, warnings))
    }

    /// Removes the run directories not written to since `cutoff`, except the `active`
    /// ones (`(namespace, run id)` of runs in progress). Returns the removed directories.
    pub fn prune(&self, cutoff: SystemTime, active: &HashSet<(String, String)>) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for (ns, run, dir) in self.runs() {
            if active.contains(&(ns, run)) || last_write(&dir) >= cutoff {
                continue;
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed.push(dir),
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot prune a report"),
            }
        }
        removed
    }

    /// Every run directory on the volume: `(namespace, run id, path)`.
    fn runs(&self) -> Vec<(String, String, PathBuf)> {
        let dirs = |d: &Path| -> Vec<(String, PathBuf)> {
            std::fs::read_dir(d)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                        .filter(|(name, _)| valid_component(name))
                        .collect()
                })
                .unwrap_or_default()
        };
        dirs(&self.root)
            .into_iter()
            .flat_map(|(ns, ns_dir)| {
                dirs(&ns_dir)
                    .into_iter()
                    .map(move |(run, dir)| (ns.clone(), run, dir))
            })
            .collect()
    }

    /// The report's files of a run, relative to its directory, sorted; `inputs/` is not
    /// part of the report.
    pub fn report_files(&self, ns: &str, run: &str) -> Result<Vec<String>> {
        let dir = self.run_dir(ns, run)?;
        let mut out = Vec::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).map_err(io(&d))?.flatten() {
                let path = entry.path();
                let rel = path
                    .strip_prefix(&dir)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                if hidden || rel == "inputs" {
                    continue;
                }
                match entry.file_type() {
                    Ok(t) if t.is_dir() => stack.push(path),
                    Ok(t) if t.is_file() => out.push(rel),
                    _ => {}
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The path of report file `rel` of a run, when `rel` is one of its report files.
    pub fn report_file(&self, ns: &str, run: &str, rel: &str) -> Result<Option<PathBuf>> {
        let files = self.report_files(ns, run)?;
        files
            .iter()
            .any(|f| f == rel)
            .then(|| self.run_dir(ns, run).map(|d| d.join(rel)))
            .transpose()
    }
}

/// The latest modification time of a run directory's report and inputs.
fn last_write(dir: &Path) -> SystemTime {
    ["run.json", "inputs", "inputs/history.jsonl", "."]
        .iter()
        .filter_map(|f| {
            std::fs::metadata(dir.join(f))
                .and_then(|m| m.modified())
                .ok()
        })
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, |w| {
        serde_json::to_writer(&mut *w, value).map_err(|e| e.to_string())?;
        w.write_all(b"\n").map_err(|e| e.to_string())
    })
    .map_err(|e| StoreError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| StoreError::Io {
        path: path.to_owned(),
        message: format!("not the expected JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn phase(name: &str, secs: i64) -> ReportPhase {
        ReportPhase {
            name: name.into(),
            started_at: Utc.timestamp_opt(secs, 0).unwrap(),
            finished_at: Some(Utc.timestamp_opt(secs + 1, 0).unwrap()),
        }
    }

    #[test]
    fn history_survives_repeats_and_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        std::fs::create_dir_all(store.inputs("ns", "run").unwrap()).unwrap();
        let (a, b) = (phase("deploy", 0), phase("step 1", 5));
        for e in [
            HistoryEntry::Phase(a.clone()),
            // A transition repeated after a failed status write.
            HistoryEntry::Phase(a.clone()),
            HistoryEntry::Warning("no Prometheus".into()),
            HistoryEntry::Phase(b.clone()),
            HistoryEntry::Warning("no Prometheus".into()),
        ] {
            store.append_history("ns", "run", &e).unwrap();
        }
        let path = store.inputs("ns", "run").unwrap().join("history.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"phase\":{\"name\":\"cut sh").unwrap();
        let (phases, warnings) = store.history("ns", "run").unwrap();
        assert_eq!(phases, vec![a, b]);
        assert_eq!(warnings, vec!["no Prometheus".to_string()]);
        assert_eq!(store.history("ns", "other").unwrap().0, vec![]);
    }

    #[test]
    fn prune_removes_old_runs_but_never_an_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        for run in ["old", "active"] {
            std::fs::create_dir_all(store.inputs("ns", run).unwrap()).unwrap();
        }
        std::fs::write(dir.path().join("ns").join("not-a-run.txt"), "x").unwrap();
        let active = HashSet::from([("ns".to_string(), "active".to_string())]);
        // Everything was written before "now + 1 h".
        let future = SystemTime::now() + std::time::Duration::from_secs(3600);
        assert!(
            store.prune(SystemTime::UNIX_EPOCH, &active).is_empty(),
            "all recent"
        );
        let removed = store.prune(future, &active);
        assert_eq!(removed, vec![dir.path().join("ns").join("old")]);
        assert!(store.has_run("ns", "active"));
        assert!(!store.has_run("ns", "old"));
    }
}
