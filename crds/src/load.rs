//! Loading multi-document YAML files into typed resources, with a [`Diagnostic`] for every
//! problem and no panics on any input.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::benchmark::Benchmark;
use crate::diag::{Diagnostic, suggest};
use crate::locate::{Locator, index_documents};
use crate::mesh::ServiceMesh;
use crate::validate::{
    Invalid, Issue, ValidBenchmark, ValidMesh, validate_benchmark, validate_mesh,
};

/// The API version of every meshbench resource.
pub const API_VERSION: &str = "meshbench.io/v1alpha1";
/// Largest input file accepted; specs are small, so anything larger is a mistake.
pub const MAX_FILE_BYTES: usize = 8 << 20;

const NO_DOCUMENTS: &str =
    "contains no YAML documents; expected a ServiceMesh or Benchmark resource";

/// Where a document came from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file as the user named it.
    pub file: String,
    /// 1-based index of the document within the file.
    pub document: usize,
    /// Positions of its fields.
    pub locator: Locator,
    /// Fields whose invalid or missing value was reported and then replaced by a stand-in,
    /// so the rest of the document could still be checked; semantic rules stay silent at
    /// and below these paths (the stand-in is not what the user wrote).
    pub repaired: Vec<String>,
}

impl Source {
    /// True when `path` is at or below a field replaced by a stand-in.
    pub fn is_repaired(&self, path: &str) -> bool {
        self.repaired.iter().any(|r| is_within(path, r))
    }
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

    /// `bench` checked against every mesh of the bundle (as [`Bundle::validate`] checks
    /// it), and the meshes it names, in its order, each checked on its own: what a run or
    /// a plan of it takes. Always `Ok` for a bundle that [`is_valid`](Self::is_valid).
    pub fn validated(
        &self,
        bench: &Benchmark,
    ) -> Result<(ValidBenchmark, Vec<ValidMesh>), Invalid> {
        let all: Vec<&ServiceMesh> = self.meshes.iter().map(|d| &d.mesh).collect();
        let bench = ValidBenchmark::new(bench.clone(), &all)?;
        let meshes = bench
            .spec()
            .meshes
            .iter()
            .filter_map(|name| self.mesh(name))
            .map(|m| ValidMesh::new(m.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((bench, meshes))
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
        // libyaml rejects a tab that starts a line, but a file of blanks is simply empty.
        if text.trim().is_empty() {
            self.diagnostics.push(Diagnostic::file(name, NO_DOCUMENTS));
            return;
        }
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
                repaired: Vec::new(),
            };
            self.add_value(source, value);
        }
        if seen == 0 {
            self.diagnostics.push(Diagnostic::file(name, NO_DOCUMENTS));
        }
    }

    fn add_value(&mut self, mut source: Source, value: Value) {
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
                let (mesh, issues, repaired) = typed::<ServiceMesh>(value);
                source.repaired = repaired;
                self.push_issues(&source, object, issues);
                if let Some(mesh) = mesh {
                    self.meshes.push(MeshDoc { source, mesh });
                }
            }
            _ => {
                let (benchmark, issues, repaired) = typed::<Benchmark>(value);
                source.repaired = repaired;
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
                if doc.source.is_repaired(&issue.path) {
                    continue;
                }
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
                if doc.source.is_repaired(&issue.path) {
                    continue;
                }
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
/// the document read again, to report every problem at once (up to a bound). A required
/// field that is missing (or was removed) gets a stand-in value, so the document is still
/// typed and the semantic rules still run on the rest of it; the paths of the stand-ins are
/// returned so those rules do not report them a second time.
fn typed<T: DeserializeOwned>(mut value: Value) -> (Option<T>, Vec<Issue>, Vec<String>) {
    use serde_path_to_error::Segment;
    let mut issues = Vec::new();
    // Stand-ins in place, with the index of the next candidate to try.
    let mut stand_ins: Vec<(String, usize)> = Vec::new();
    // Entries removed after their problem was reported.
    let mut removed: Vec<String> = Vec::new();
    let paths = |s: &[(String, usize)]| s.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    for _ in 0..64 {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return (Some(t), issues, paths(&stand_ins)),
            Err(e) => e,
        };
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = e.inner().to_string();
        let mut segments: Vec<Segment> = e.path().iter().cloned().collect();

        if let Some(field) = missing_field(&message) {
            let full = join_path(&path, &field);
            let ours =
                removed.contains(&full) || stand_ins.iter().any(|(p, _)| is_within(&path, p));
            if !ours {
                issues.push(Issue::new(path.clone(), clean_serde_message(&message)));
            }
            segments.push(Segment::Map { key: field });
            if !set_at(&mut value, &segments, stand_in(0, &message)) {
                return (None, issues, paths(&stand_ins));
            }
            stand_ins.push((full, 1));
            continue;
        }
        if let Some(i) = stand_ins.iter().position(|(p, _)| *p == path) {
            // The stand-in does not fit the field's type: try the next candidate.
            let next = stand_ins[i].1;
            stand_ins[i].1 += 1;
            if next >= STAND_IN_CANDIDATES
                || !set_at(&mut value, &segments, stand_in(next, &message))
            {
                return (None, issues, paths(&stand_ins));
            }
            continue;
        }
        if stand_ins.iter().any(|(p, _)| is_within(&path, p)) {
            return (None, issues, paths(&stand_ins));
        }

        let mut unknown = unknown_field(&message);
        // serde_path_to_error already ends the path with the unknown key; older versions
        // stop at the parent.
        if let (Some(u), Some(Segment::Map { key })) = (&unknown, segments.last())
            && key == u
        {
            unknown = None;
        }
        let issue_path = match &unknown {
            Some(f) => join_path(&path, f),
            None => path.clone(),
        };
        let (text, hint) = split_hint(clean_serde_message(&message));
        let mut issue = Issue::new(issue_path.clone(), text);
        issue.hint = serde_hint(&message).or(hint);
        issues.push(issue);
        if !remove_at(&mut value, &segments, unknown.as_deref()) {
            return (None, issues, paths(&stand_ins));
        }
        removed.push(issue_path);
    }
    (None, issues, paths(&stand_ins))
}

/// Number of generic stand-in values [`stand_in`] tries.
const STAND_IN_CANDIDATES: usize = 6;

/// The `n`th value tried for a required field: one of each YAML type, together valid for
/// every field type of the API (names, durations, numbers, objects, lists, flags). The
/// empty string comes first because semantic rules ignore empty names in their listings.
/// For an enum, its first variant, named by serde's "unknown variant" message.
fn stand_in(n: usize, message: &str) -> Value {
    if let Some(variant) = first_expected_variant(message) {
        return Value::String(variant);
    }
    match n {
        0 => Value::String(String::new()),
        1 => Value::String("1s".into()),
        2 => Value::Number(1.into()),
        3 => Value::Mapping(serde_yaml::Mapping::new()),
        4 => Value::Sequence(Vec::new()),
        _ => Value::Bool(false),
    }
}

/// "unknown variant `1s`, expected `open` or `closed`" → `open`.
fn first_expected_variant(m: &str) -> Option<String> {
    let rest = m.strip_prefix("unknown variant `")?;
    let (_, rest) = rest.split_once("expected ")?;
    let rest = rest.strip_prefix("one of ").unwrap_or(rest);
    let rest = rest.strip_prefix('`')?;
    Some(rest.split_once('`')?.0.to_string())
}

/// Sets the map entry at `segments` to `v`, creating it if needed.
fn set_at(value: &mut Value, segments: &[serde_path_to_error::Segment], v: Value) -> bool {
    use serde_path_to_error::Segment;
    let Some((Segment::Map { key }, parents)) = segments.split_last() else {
        return false;
    };
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
        Value::Mapping(m) => {
            m.insert(Value::String(key.clone()), v);
            true
        }
        _ => false,
    }
}

fn missing_field(m: &str) -> Option<String> {
    let rest = m.strip_prefix("missing field `")?;
    Some(rest.split_once('`')?.0.to_string())
}

fn join_path(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Whether `path` is `root` or a field or element below it.
fn is_within(path: &str, root: &str) -> bool {
    path.strip_prefix(root)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// Moves a "did you mean …" suggestion out of a message into the hint.
fn split_hint(message: String) -> (String, Option<String>) {
    match message.find(": did you mean ") {
        Some(i) => (message[..i].to_string(), Some(message[i + 2..].to_string())),
        None => (message, None),
    }
}

/// Removes the map entry at `segments` (or the `unknown` key inside it). Only map entries
/// are removed: removing a list element would shift the indices of later problems.
fn remove_at(
    value: &mut Value,
    segments: &[serde_path_to_error::Segment],
    unknown: Option<&str>,
) -> bool {
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
