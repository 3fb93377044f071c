//! Semantic validation beyond what a schema can express. Every rule reports every
//! violation, each at its exact field path, so a user fixes a spec in one pass.
//!
//! The rules of a mesh are in `mesh.rs` and those of a benchmark in `benchmark.rs`; the
//! checks of single values both use are here. [`ValidMesh`] and [`ValidBenchmark`] are
//! what passing them yields: the platforms, rendering and planning take those, so a
//! spec that was not validated cannot reach them.

mod benchmark;
mod mesh;

use std::collections::BTreeSet;
use std::fmt;

use crate::mesh::ServiceMeshSpec;
use crate::units::Duration;

pub use benchmark::{ValidBenchmark, placeholders, validate_benchmark};
pub use mesh::{ValidMesh, validate_mesh};

/// A problem at a field path, before it is placed in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// Field path, e.g. `spec.services[1].name`; empty for the whole document.
    pub path: String,
    /// What is wrong: the value and what was expected.
    pub message: String,
    /// A suggestion.
    pub hint: Option<String>,
}

impl Issue {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Every problem that kept a spec from becoming a [`ValidMesh`] or a [`ValidBenchmark`].
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// The problems, in the order the rules report them (never empty).
    pub issues: Vec<Issue>,
}

impl Invalid {
    /// `Err` with `issues` unless there are none.
    fn check(issues: Vec<Issue>) -> Result<(), Invalid> {
        if issues.is_empty() {
            Ok(())
        } else {
            Err(Invalid { issues })
        }
    }
}

/// One line per problem: `path: message`, and the hint in parentheses.
impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if !issue.path.is_empty() {
                write!(f, "{}: ", issue.path)?;
            }
            f.write_str(&issue.message)?;
            if let Some(h) = &issue.hint {
                write!(f, " (hint: {h})")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// Whether `s` is a DNS-1123 label (Kubernetes object and Service names).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_name(out: &mut Vec<Issue>, path: &str, name: Option<&str>) {
    match name {
        None | Some("") => out.push(Issue::new(path, "missing; expected a DNS-1123 name (e.g. \"my-mesh\")")),
        Some(n) if !is_dns_label(n) => out.push(
            Issue::new(
                path,
                format!("{n:?} is not a DNS-1123 label; expected at most 63 lower case letters, digits and '-', starting and ending with a letter or digit"),
            )
            .hint(format!("use {:?}", to_dns_label(n))),
        ),
        Some(_) => {}
    }
}

/// Turns an arbitrary name into a valid DNS-1123 label (used by hints and the importer).
pub fn to_dns_label(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let out = out.trim_matches('-');
    let mut out: String = out.chars().take(63).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() { "x".to_string() } else { out }
}

fn check_duration(
    out: &mut Vec<Issue>,
    path: &str,
    d: &Duration,
    positive: bool,
) -> Option<std::time::Duration> {
    match d.try_get() {
        Ok(v) if positive && v.is_zero() => {
            out.push(Issue::new(
                path,
                format!("{:?} is zero; expected a positive duration", d.as_str()),
            ));
            None
        }
        Ok(v) => Some(v),
        Err(e) => {
            out.push(Issue::new(path, e.to_string()));
            None
        }
    }
}

fn check_probability(out: &mut Vec<Issue>, path: &str, p: Option<f64>) {
    if let Some(p) = p
        && !(0.0..=1.0).contains(&p)
    {
        out.push(Issue::new(
            path,
            format!("{p} is outside [0, 1]; expected a probability"),
        ));
    }
}

fn check_range(out: &mut Vec<Issue>, path: &str, v: Option<i64>, lo: i64, hi: i64, what: &str) {
    if let Some(v) = v
        && !(lo..=hi).contains(&v)
    {
        out.push(Issue::new(
            path,
            format!("{v} is out of range; expected {what} between {lo} and {hi}"),
        ));
    }
}

/// Service names in spec order, each once (duplicates and empty names are reported
/// separately).
fn first_seen_names(spec: &ServiceMeshSpec) -> Vec<&str> {
    let mut seen = BTreeSet::new();
    spec.services
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| !n.is_empty() && seen.insert(*n))
        .collect()
}
