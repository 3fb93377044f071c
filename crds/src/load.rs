//! Loading multi-document YAML files into typed resources, with a [`Diagnostic`] for every
//! problem and no panics on any input.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::benchmark::Benchmark;
use crate::diag::{Diagnostic, suggest};
use crate::locate::{Locator, index_documents};
use crate::mesh::ServiceMesh;
use crate::validate::{Issue, validate_benchmark, validate_mesh};

/// The API version of every meshbench resource.
pub const API_VERSION: &str = "meshbench.io/v1alpha1";
/// Largest input file accepted; specs are small, so anything larger is a mistake.
pub const MAX_FILE_BYTES: usize = 8 << 20;

/// Where a document came from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file as the user named it.
    pub file: String,
    /// 1-based index of the document within the file.
    pub document: usize,
    /// Positions of its fields.
    pub locator: Locator,
}

impl Source {
    /// A diagnostic about `path` in this document.
    pub fn diagnostic(&self, object: Option<String>, issue: Issue) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            document: Some(self.document),
            object,
            position: self.locator.find(&issue.path),
            path: issue.path,
            message: issue.message,
            hint: issue.hint,
        }
    }
}

/// A loaded `ServiceMesh` and its source.
#[derive(Debug, Clone)]
pub struct MeshDoc {
    /// Where it was read.
    pub source: Source,
    /// The resource.
    pub mesh: ServiceMesh,
}

/// A loaded `Benchmark` and its source.
#[derive(Debug, Clone)]
pub struct BenchmarkDoc {
    /// Where it was read.
    pub source: Source,
    /// The resource.
    pub benchmark: Benchmark,
}

/// Every resource read from a set of files, and every problem found in them.
#[derive(Debug, Default)]
pub struct Bundle {
    /// The meshes, in file order.
    pub meshes: Vec<MeshDoc>,
    /// The benchmarks, in file order.
    pub benchmarks: Vec<BenchmarkDoc>,
    /// All problems, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Bundle {
    /// Reads and validates `paths`: syntax, schema, and the semantic rules across all files
    /// (a Benchmark may reference a mesh defined in another file of the set).
    pub fn load_files<P: AsRef<Path>>(paths: &[P]) -> Self {
        let mut bundle = Self::default();
        for p in paths {
            bundle.add_file(p.as_ref());
        }
        bundle.validate();
        bundle
    }

    /// Parses `text` as if read from `name` and validates everything loaded so far.
    pub fn from_str(name: &str, text: &str) -> Self {
        let mut bundle = Self::default();
        bundle.add_text(name, text);
        bundle.validate();
        bundle
    }

    /// True when no problem was found.
    pub fn is_valid(&self) -> bool {
        self.diagnostics.is_empty()
    }

    /// Finds a mesh by name.
    pub fn mesh(&self, name: &str) -> Option<&ServiceMesh> {
        self.meshes
            .iter()
            .map(|d| &d.mesh)
            .find(|m| m.metadata.name.as_deref() == Some(name))
    }

    /// Reads one file (without the cross-document validation; call [`Bundle::validate`]).
    pub fn add_file(&mut self, path: &Path) {
        let name = path.display().to_string();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                self.diagnostics
                    .push(Diagnostic::file(name, format!("cannot read file: {e}")));
                return;
            }
        };
        if bytes.len() > MAX_FILE_BYTES {
            self.diagnostics.push(Diagnostic::file(
                name,
                format!(
                    "file is {} bytes; expected a spec of at most {MAX_FILE_BYTES} bytes",
                    bytes.len()
                ),
            ));
            return;
        }
        match String::from_utf8(bytes) {
            Ok(text) => self.add_text(&name, &text),
            Err(e) => self.diagnostics.push(Diagnostic::file(
                name,
                format!(
                    "is not UTF-8 text (invalid byte at offset {}); expected a YAML file",
                    e.utf8_error().valid_up_to()
                ),
            )),
        }
    }

    /// Parses the documents of one file's text.
    pub fn add_text(&mut self, name: &str, text: &str) {
        let locators = index_documents(text);
        let mut seen = 0usize;
        for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let document = i + 1;
            let value = match <Value as serde::Deserialize>::deserialize(de) {
                Ok(v) => v,
                Err(e) => {
                    let mut d =
                        Diagnostic::file(name, format!("invalid YAML: {}", strip_location(&e)));
                    d.document = Some(document);
                    d.position = e.location().map(|l| crate::locate::Position {
                        line: l.line(),
                        column: l.column(),
                    });
                    self.diagnostics.push(d);
                    // The parser cannot resynchronise after a syntax error.
                    return;
                }
            };
            if value.is_null() {
                continue;
            }
            seen += 1;
            let source = Source {
                file: name.to_string(),
                document,
                locator: locators.get(i).cloned().unwrap_or_default(),
            };
            self.add_value(source, value);
        }
        if seen == 0 {
            self.diagnostics.push(Diagnostic::file(
                name,
                "contains no YAML documents; expected a ServiceMesh or Benchmark resource",
            ));
        }
    }

    fn add_value(&mut self, source: Source, value: Value) {
        let Value::Mapping(map) = &value else {
            self.diagnostics.push(source.diagnostic(
                None,
                Issue::new(
                    "",
                    format!(
                        "is a {}; expected a mapping with apiVersion, kind, metadata and spec",
                        type_name(&value)
                    ),
                ),
            ));
            return;
        };
        let kind = map.get("kind").and_then(Value::as_str).map(str::to_string);
        let name = map
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let object = match (&kind, &name) {
            (Some(k), Some(n)) => Some(format!("{k}/{n}")),
            (Some(k), None) => Some(k.clone()),
            _ => None,
        };
        let mut issues = Vec::new();
        for key in map.keys() {
            match key.as_str() {
                Some("apiVersion" | "kind" | "metadata" | "spec" | "status") => {}
                Some(k) => {
                    let mut issue = Issue::new(
                        k,
                        format!(
                            "unknown field {k:?}; expected apiVersion, kind, metadata, spec or status"
                        ),
                    );
                    if let Some(s) =
                        suggest(k, ["apiVersion", "kind", "metadata", "spec", "status"])
                    {
                        issue.hint = Some(format!("did you mean {s:?}?"));
                    }
                    issues.push(issue);
                }
                None => issues.push(Issue::new("", "mapping keys must be strings")),
            }
        }
        match kind.as_deref() {
            Some("ServiceMesh") | Some("Benchmark") => {}
            Some("Servicegraph") => {
                issues.push(
                    Issue::new("kind", "\"Servicegraph\" is the prototype's format; expected ServiceMesh or Benchmark")
                        .hint("convert it with `meshbench import FILE > mesh.yaml`"),
                );
            }
            Some(other) => issues.push(Issue::new(
                "kind",
                format!("{other:?} is not a meshbench kind; expected ServiceMesh or Benchmark"),
            )),
            None => issues.push(Issue::new(
                "kind",
                "missing; expected ServiceMesh or Benchmark",
            )),
        }
        match map.get("apiVersion").and_then(Value::as_str) {
            Some(API_VERSION) => {}
            Some(v) => issues.push(Issue::new(
                "apiVersion",
                format!("{v:?} is not supported; expected {API_VERSION:?}"),
            )),
            None => issues.push(Issue::new(
                "apiVersion",
                format!("missing; expected {API_VERSION:?}"),
            )),
        }
        if !issues.is_empty() {
            self.push_issues(&source, object, issues);
            return;
        }
        // A document that needed repairs is still kept (and semantically checked) so all
        // of its problems are reported together; the bundle is invalid either way.
        match kind.as_deref() {
            Some("ServiceMesh") => {
                let (mesh, issues) = typed::<ServiceMesh>(value);
                self.push_issues(&source, object, issues);
                if let Some(mesh) = mesh {
                    self.meshes.push(MeshDoc { source, mesh });
                }
            }
            _ => {
                let (benchmark, issues) = typed::<Benchmark>(value);
                self.push_issues(&source, object, issues);
                if let Some(benchmark) = benchmark {
                    self.benchmarks.push(BenchmarkDoc { source, benchmark });
                }
            }
        }
    }

    fn push_issues(&mut self, source: &Source, object: Option<String>, issues: Vec<Issue>) {
        for issue in issues {
            self.diagnostics
                .push(source.diagnostic(object.clone(), issue));
        }
    }

    /// Runs the semantic rules on everything loaded, adding their diagnostics.
    pub fn validate(&mut self) {
        let mut found = Vec::new();
        for doc in &self.meshes {
            let object = Some(format!(
                "ServiceMesh/{}",
                doc.mesh.metadata.name.as_deref().unwrap_or("")
            ));
            for issue in validate_mesh(&doc.mesh) {
                found.push(doc.source.diagnostic(object.clone(), issue));
            }
        }
        let meshes: Vec<&ServiceMesh> = self.meshes.iter().map(|d| &d.mesh).collect();
        for doc in &self.benchmarks {
            let object = Some(format!(
                "Benchmark/{}",
                doc.benchmark.metadata.name.as_deref().unwrap_or("")
            ));
            for issue in validate_benchmark(&doc.benchmark, &meshes) {
                found.push(doc.source.diagnostic(object.clone(), issue));
            }
        }
        // Keep problems in file and document order, as a reader scans the files.
        self.diagnostics.extend(found);
        self.diagnostics.sort_by(|a, b| {
            (&a.file, a.document, a.position.map(|p| (p.line, p.column))).cmp(&(
                &b.file,
                b.document,
                b.position.map(|p| (p.line, p.column)),
            ))
        });
    }
}

/// Deserialises a document into `T`, turning each serde error into an [`Issue`] at the
/// exact field path. serde stops at the first error, so the offending field is removed and
/// the document read again, to report every problem at once (up to a bound); the repaired
/// value is returned too, so semantic rules can still run on the rest of the document.
fn typed<T: DeserializeOwned>(mut value: Value) -> (Option<T>, Vec<Issue>) {
    let mut issues = Vec::new();
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return (Some(t), issues),
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let message = e.inner().to_string();
                let unknown = unknown_field(&message);
                let mut issue = Issue::new(
                    match &unknown {
                        Some(f) if path.is_empty() => f.clone(),
                        Some(f) => format!("{path}.{f}"),
                        None => path.clone(),
                    },
                    clean_serde_message(&message),
                );
                issue.hint = serde_hint(&message);
                issues.push(issue);
                let segments: Vec<_> = e.path().iter().cloned().collect();
                if !remove_at(&mut value, &segments, unknown.as_deref()) {
                    return (None, issues);
                }
            }
        }
    }
    (None, issues)
}

/// Removes the map entry at `segments` (or the `unknown` key inside it). Only map entries
/// are removed: removing a list element would shift the indices of later problems.
fn remove_at(value: &mut Value, segments: &[serde_path_to_error::Segment], unknown: Option<&str>) -> bool {
    use serde_path_to_error::Segment;
    let (target, parents) = match unknown {
        Some(key) => (Some(key.to_string()), segments),
        None => match segments.split_last() {
            Some((Segment::Map { key }, rest)) => (Some(key.clone()), rest),
            _ => (None, segments),
        },
    };
    let Some(target) = target else { return false };
    let mut node = value;
    for seg in parents {
        node = match (seg, node) {
            (Segment::Map { key }, Value::Mapping(m)) => match m.get_mut(key.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Seq { index }, Value::Sequence(s)) => match s.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match node {
        Value::Mapping(m) => m.remove(target.as_str()).is_some(),
        _ => false,
    }
}

fn unknown_field(m: &str) -> Option<String> {
    let rest = m.strip_prefix("unknown field `")?;
    Some(rest.split_once('`')?.0.to_string())
}

/// serde's messages name Rust types; say what a spec author wrote instead.
fn clean_serde_message(m: &str) -> String {
    m.replace("expected i32", "expected an integer")
        .replace("expected i64", "expected an integer")
        .replace("expected u64", "expected a non-negative integer")
        .replace("expected f64", "expected a number")
        .replace("expected a sequence", "expected a list")
        .replace("expected struct ", "expected a mapping (")
        .replace("invalid type: unit value", "empty value")
}

fn serde_hint(m: &str) -> Option<String> {
    // "unknown field `cpus`, expected one of `cpu`, `memory`"
    let rest = m.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let candidates: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    suggest(field, candidates.iter().copied()).map(|s| format!("did you mean {s:?}?"))
}

fn strip_location(e: &serde_yaml::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Sequence(_) => "list",
        Value::Mapping(_) => "mapping",
        Value::Tagged(_) => "tagged value",
    }
}
