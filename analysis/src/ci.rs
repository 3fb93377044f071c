//! What a CI system reads from one command (`run`, `compare`, `results`): a JUnit report
//! and a Markdown summary, written atomically, the summary also appended to GitHub's
//! `$GITHUB_STEP_SUMMARY`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::gate::{GateReport, RunTables};
use crate::junit::{self, Report};
use crate::rundir::{self, RunDirError};
use crate::summary;

/// The CI view of one command's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The JUnit XML report: a case per step and SLO of a run, or per gate check.
    pub junit: Report,
    /// The Markdown summary, also appended to `$GITHUB_STEP_SUMMARY` when that is set.
    pub markdown: String,
}

impl Document {
    /// A finished (or partial) run: one case per step and SLO, and the step table.
    pub fn for_run(t: &RunTables) -> Document {
        Document {
            junit: Report {
                name: format!("meshbench run {}", t.run.meta.benchmark),
                suites: junit::run_suites(t),
            },
            markdown: summary::run_section(t),
        }
    }

    /// A run directory without a readable report: one failing case saying why, so a
    /// pipeline that expects the file finds it.
    pub fn for_unreadable_run(dir: &Path, error: &str) -> Document {
        Document {
            junit: Report {
                name: "meshbench run".into(),
                suites: junit::unreadable_run_suites(dir, error),
            },
            markdown: format!(
                "### meshbench run: ❌ no readable report in `{}`\n\n{}\n\n",
                dir.display(),
                summary::cell(error)
            ),
        }
    }

    /// A comparison: one case per gate check; the summary shows the new run's steps (when
    /// readable) before the checks.
    pub fn for_gates(report: &GateReport, new_run: Option<&RunTables>) -> Document {
        let mut markdown = new_run.map(summary::run_section).unwrap_or_default();
        markdown.push_str(&summary::gate_section(report));
        Document {
            junit: Report {
                name: format!("meshbench compare {}", report.candidate.display()),
                suites: junit::gate_suites(report),
            },
            markdown,
        }
    }

    /// Writes the JUnit file and the Markdown file when asked (atomically, creating their
    /// directories), and appends the Markdown to `step_summary` when given — unless that is
    /// the Markdown file itself, which is then appended to instead of replaced. Returns the
    /// files written.
    pub fn write(
        &self,
        junit: Option<&Path>,
        markdown: Option<&Path>,
        step_summary: Option<&Path>,
    ) -> rundir::Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        if let Some(path) = junit {
            write_file(path, &self.junit.to_xml())?;
            written.push(path.to_owned());
        }
        let same = |a: &Path, b: &Path| a == b || same_file(a, b);
        if let Some(path) = markdown.filter(|m| !step_summary.is_some_and(|s| same(m, s))) {
            write_file(path, &self.markdown)?;
            written.push(path.to_owned());
        }
        if let Some(path) = step_summary {
            append(path, &self.markdown)?;
            written.push(path.to_owned());
        }
        Ok(written)
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunDirError + '_ {
    move |source| RunDirError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_file(path: &Path, content: &str) -> rundir::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    rundir::write_atomic(path, |w| w.write_all(content.as_bytes()))
}

/// Appends with one write call: GitHub gives each step its own summary file, and other
/// steps' sections stay as they are.
fn append(path: &Path, content: &str) -> rundir::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    let mut text = content.to_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    f.write_all(text.as_bytes()).map_err(io(path))
}
