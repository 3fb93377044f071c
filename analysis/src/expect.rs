//! Expectations files: fixed bounds per step (and over the run) that a run must meet, checked
//! into a repository so a pipeline needs no stored earlier run
//! (`meshbench compare EXPECTATIONS.yaml RUN_DIR`).
//!
//! ```yaml
//! steps:
//!   - mesh: quickstart          # optional: every mesh of the run
//!     step: 0                   # the steps table's `step` (0-based), or its `step_name`
//!     throughput_rps: { min: 9.5 }
//!     latency_p99_ms: { max: 150 }
//!     services:
//!       backend:
//!         cpu_cores_avg: { max: 0.125 }
//! run:                          # optional: figures over the whole run (as `run.` rules)
//!   services:
//!     backend:
//!       replica_seconds: { max: 80 }
//! ```
//!
//! A figure is a column of the steps or services table (see [`crate::gate::Figure`]); a
//! services figure beside `step` combines over the mesh's services as a rule without
//! `@SERVICE` does. Every problem of a file is reported at once, at its field path.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_yaml::{Mapping, Value};

use crate::gate::{Figure, Source, closest, figure_names, suggest_figure};

/// Largest expectations file read; anything larger is a mistake.
const MAX_BYTES: u64 = 1 << 20;

/// A step of the run: its index or its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepRef {
    /// The steps table's `step`, 0-based.
    Index(u32),
    /// The steps table's `step_name`.
    Name(String),
}

impl fmt::Display for StepRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepRef::Index(i) => write!(f, "{i}"),
            StepRef::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// The bounds of one figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expected {
    /// Field path of the figure in the file, e.g. `steps[0].services.backend.cpu_cores_avg`.
    pub path: String,
    /// The figure bounded.
    pub figure: Figure,
    /// Service of a services figure; `None` for a steps figure, or a services figure combined over
    /// the mesh's services.
    pub service: Option<String>,
    /// Smallest passing value (inclusive); `None`: no lower bound.
    pub min: Option<f64>,
    /// Largest passing value (inclusive); `None`: no upper bound.
    pub max: Option<f64>,
}

/// The bounds of one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepExpectation {
    /// Field path of the entry, e.g. `steps[2]`.
    pub path: String,
    /// `None`: every mesh of the run.
    pub mesh: Option<String>,
    /// The step the bounds apply to.
    pub step: StepRef,
    /// Bounds of the step's figures, in file order.
    pub bounds: Vec<Expected>,
}

/// A parsed expectations file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expectations {
    /// Bounds per step, in file order.
    pub steps: Vec<StepExpectation>,
    /// Bounds over the whole run.
    pub run: Vec<Expected>,
}

/// One problem in an expectations file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `steps[1].latency_p99_ms.max`; empty for the whole file.
    pub path: String,
    /// What is wrong: the value and what was expected.
    pub message: String,
    /// A suggestion printed on a line of its own, e.g. the closest known figure name.
    pub hint: Option<String>,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
}

impl Problem {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
            hint: None,
            position: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }
}

/// Every problem of an expectations file, printed as the project's diagnostics are:
/// `file:line:column: error: path: message` and a hint line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectationsError {
    /// The file as the user named it.
    pub file: String,
    /// Its text, so a caller can place each problem (see [`ExpectationsError::locate`]).
    pub text: String,
    /// Every problem found, in the order found.
    pub problems: Vec<Problem>,
}

impl ExpectationsError {
    /// Fills in the line and column of each problem from `find` (field path → position),
    /// e.g. the spec loader's YAML locator.
    pub fn locate(&mut self, find: impl Fn(&str) -> Option<(usize, usize)>) {
        for p in self.problems.iter_mut().filter(|p| p.position.is_none()) {
            p.position = find(&p.path);
        }
    }
}

impl fmt::Display for ExpectationsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some((line, col)) = p.position {
                write!(f, ":{line}:{col}")?;
            }
            write!(f, ": error:")?;
            if !p.path.is_empty() {
                write!(f, " {}:", p.path)?;
            }
            write!(f, " {}", p.message)?;
            if let Some(h) = &p.hint {
                write!(f, "\n  hint: {h}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ExpectationsError {}

/// Reads and validates an expectations file.
pub fn load(path: &Path) -> Result<Expectations, ExpectationsError> {
    let file = path.display().to_string();
    let fail = |message: String| ExpectationsError {
        file: file.clone(),
        text: String::new(),
        problems: vec![Problem::new("", message)],
    };
    let size = std::fs::metadata(path)
        .map_err(|e| {
            fail(format!(
                "cannot read the baseline: {e}; expected a run directory or an expectations file"
            ))
        })?
        .len();
    if size > MAX_BYTES {
        return Err(fail(format!(
            "is {size} bytes; expected an expectations file of at most {MAX_BYTES} bytes"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("cannot read as UTF-8 text: {e}; expected YAML")))?;
    parse(&file, &text)
}

/// Parses and validates the text of an expectations file named `file`.
pub fn parse(file: &str, text: &str) -> Result<Expectations, ExpectationsError> {
    let mut problems = Vec::new();
    let exp = match serde_yaml::from_str::<Value>(text) {
        Ok(v) => parse_root(&v, &mut problems),
        Err(e) => {
            let mut p = Problem::new("", format!("invalid YAML: {e}"));
            p.position = e.location().map(|l| (l.line(), l.column()));
            problems.push(p);
            None
        }
    };
    match exp {
        Some(exp) if problems.is_empty() => Ok(exp),
        _ => Err(ExpectationsError {
            file: file.to_owned(),
            text: text.to_owned(),
            problems,
        }),
    }
}

const ROOT_KEYS: &[&str] = &["steps", "run", "description"];

fn parse_root(v: &Value, out: &mut Vec<Problem>) -> Option<Expectations> {
    let Value::Mapping(map) = v else {
        out.push(
            Problem::new(
                "",
                format!(
                    "is {}; expected a mapping with `steps` (and `run`)",
                    kind(v)
                ),
            )
            .hint("see examples/ci/quickstart-expectations.yaml"),
        );
        return None;
    };
    for key in keys(map, "", out) {
        if !ROOT_KEYS.contains(&key.as_str()) {
            out.push(unknown_key("", &key, ROOT_KEYS));
        }
    }
    let steps = match map.get("steps") {
        None => Vec::new(),
        Some(Value::Sequence(seq)) => seq
            .iter()
            .enumerate()
            .filter_map(|(i, e)| parse_step(&format!("steps[{i}]"), e, out))
            .collect(),
        Some(other) => {
            out.push(Problem::new(
                "steps",
                format!(
                    "is {}; expected a list of steps, each `{{ step: 0, FIGURE: {{ max: … }} }}`",
                    kind(other)
                ),
            ));
            Vec::new()
        }
    };
    let run = match map.get("run") {
        None => Vec::new(),
        Some(v) => parse_figures("run", v, &[], out),
    };
    check_duplicates(&steps, out);
    if steps.is_empty() && run.is_empty() && out.is_empty() {
        out.push(
            Problem::new(
                "",
                "holds no bounds; expected `steps` (or `run`) with at least one figure",
            )
            .hint("e.g. steps: [{ step: 0, latency_p99_ms: { max: 50 } }]"),
        );
    }
    Some(Expectations { steps, run })
}

/// The string keys of `map`; other keys are problems.
fn keys(map: &Mapping, path: &str, out: &mut Vec<Problem>) -> Vec<String> {
    let mut ks = Vec::new();
    for k in map.keys() {
        match k {
            Value::String(s) => ks.push(s.clone()),
            other => out.push(Problem::new(
                path,
                format!("has the key {}; expected field names", kind(other)),
            )),
        }
    }
    ks
}

fn unknown_key(path: &str, key: &str, allowed: &[&str]) -> Problem {
    let p = Problem::new(
        join(path, key),
        format!(
            "unknown field {key:?}; expected one of {}",
            allowed.join(", ")
        ),
    );
    match closest(key, allowed.iter().copied()) {
        Some(a) => p.hint(format!("did you mean {a}?")),
        None => p,
    }
}

const STEP_KEYS: &[&str] = &["mesh", "step", "services"];

fn parse_step(path: &str, v: &Value, out: &mut Vec<Problem>) -> Option<StepExpectation> {
    let Value::Mapping(map) = v else {
        out.push(Problem::new(
            path,
            format!(
                "is {}; expected a mapping like {{ step: 0, latency_p99_ms: {{ max: 50 }} }}",
                kind(v)
            ),
        ));
        return None;
    };
    let mesh = match map.get("mesh") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(other) => {
            out.push(Problem::new(
                join(path, "mesh"),
                format!("is {}; expected the name of a mesh of the run", kind(other)),
            ));
            None
        }
    };
    let step = parse_step_ref(path, map.get("step"), out);
    let bounds = parse_figures(path, v, STEP_KEYS, out);
    if bounds.is_empty() {
        out.push(Problem::new(
            path,
            "has no figure; expected at least one, e.g. latency_p99_ms: { max: 50 }",
        ));
    }
    Some(StepExpectation {
        path: path.to_owned(),
        mesh,
        step: step?,
        bounds,
    })
}

fn parse_step_ref(path: &str, v: Option<&Value>, out: &mut Vec<Problem>) -> Option<StepRef> {
    let at = join(path, "step");
    let expected = "expected the step's index (0-based, the steps table's `step`) or its name \
                    (`step_name`, e.g. rate-40)";
    match v {
        None => {
            out.push(Problem::new(at, format!("is missing; {expected}")));
            None
        }
        Some(Value::Number(n)) => match n.as_u64().and_then(|i| u32::try_from(i).ok()) {
            Some(i) => Some(StepRef::Index(i)),
            None => {
                out.push(Problem::new(
                    at,
                    format!("{n} is not a step index; {expected}"),
                ));
                None
            }
        },
        Some(Value::String(s)) if !s.is_empty() => Some(StepRef::Name(s.clone())),
        Some(other) => {
            out.push(Problem::new(at, format!("is {}; {expected}", kind(other))));
            None
        }
    }
}

/// The figures of a step entry (or `run`): step figures at the top, services figures at the
/// top (combined over services) or under `services.NAME`. `skip` are the entry's own keys.
fn parse_figures(path: &str, v: &Value, skip: &[&str], out: &mut Vec<Problem>) -> Vec<Expected> {
    let Value::Mapping(map) = v else {
        out.push(Problem::new(
            path,
            format!("is {}; expected a mapping of figures to bounds", kind(v)),
        ));
        return Vec::new();
    };
    let mut found = Vec::new();
    for key in keys(map, path, out) {
        if key == "services" {
            if let Some(services) = map.get("services") {
                found.extend(parse_services(&join(path, "services"), services, out));
            }
        } else if !skip.contains(&key.as_str()) {
            let at = join(path, &key);
            if let Some(figure) = figure_at(&at, &key, None, out)
                && let Some(bounds) = map.get(key.as_str())
            {
                found.extend(parse_bounds(at, figure, None, bounds, out));
            }
        }
    }
    found
}

fn parse_services(path: &str, v: &Value, out: &mut Vec<Problem>) -> Vec<Expected> {
    let Value::Mapping(map) = v else {
        out.push(Problem::new(
            path,
            format!(
                "is {}; expected service names, each with its figures",
                kind(v)
            ),
        ));
        return Vec::new();
    };
    let mut found = Vec::new();
    for name in keys(map, path, out) {
        let at = join(path, &name);
        let Some(Value::Mapping(figs)) = map.get(name.as_str()) else {
            out.push(Problem::new(
                at,
                "expected a mapping of services figures to bounds",
            ));
            continue;
        };
        for key in keys(figs, &at, out) {
            let fat = join(&at, &key);
            if let Some(figure) = figure_at(&fat, &key, Some(&name), out)
                && let Some(bounds) = figs.get(key.as_str())
            {
                found.extend(parse_bounds(fat, figure, Some(name.clone()), bounds, out));
            }
        }
    }
    found
}

fn figure_at(
    path: &str,
    key: &str,
    service: Option<&str>,
    out: &mut Vec<Problem>,
) -> Option<Figure> {
    let Some(figure) = Figure::named(key) else {
        let p = Problem::new(
            path,
            format!(
                "unknown figure {key:?}; expected a column of the steps or services table: {}",
                figure_names()
            ),
        );
        out.push(match suggest_figure(key) {
            Some(s) => p.hint(format!("did you mean {s}?")),
            None => p,
        });
        return None;
    };
    if let (Some(svc), Source::Steps) = (service, figure.source) {
        out.push(
            Problem::new(
                path,
                format!(
                    "{key} is a figure of the steps table; service {svc} has only services figures"
                ),
            )
            .hint("put it beside `step`, not under `services`"),
        );
        return None;
    }
    Some(figure)
}

fn parse_bounds(
    path: String,
    figure: Figure,
    service: Option<String>,
    v: &Value,
    out: &mut Vec<Problem>,
) -> Option<Expected> {
    let example = format!("e.g. {}: {{ max: 50 }} or {{ min: 9.5 }}", figure.name);
    let Value::Mapping(map) = v else {
        out.push(Problem::new(
            path,
            format!("is {}; expected min and/or max, {example}", kind(v)),
        ));
        return None;
    };
    let mut bound = |key: &str| -> Option<f64> {
        let value = map.get(key)?;
        match value.as_f64().filter(|x| x.is_finite()) {
            Some(x) => Some(x),
            None => {
                out.push(Problem::new(
                    join(&path, key),
                    format!(
                        "is {}; expected a number in the figure's unit (the unit ends its name)",
                        kind(value)
                    ),
                ));
                None
            }
        }
    };
    let (min, max) = (bound("min"), bound("max"));
    for key in keys(map, &path, out) {
        if key != "min" && key != "max" {
            out.push(unknown_key(&path, &key, &["min", "max"]));
        }
    }
    if min.is_none() && max.is_none() {
        if !map.contains_key("min") && !map.contains_key("max") {
            out.push(Problem::new(
                path,
                format!("has no bound; expected min and/or max, {example}"),
            ));
        }
        return None;
    }
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        out.push(Problem::new(
            path,
            format!("min {lo} is above max {hi}; no value can pass"),
        ));
        return None;
    }
    Some(Expected {
        path,
        figure,
        service,
        min,
        max,
    })
}

fn check_duplicates(steps: &[StepExpectation], out: &mut Vec<Problem>) {
    let mut seen: BTreeMap<(Option<&str>, &StepRef), &str> = BTreeMap::new();
    for s in steps {
        if let Some(first) = seen.insert((s.mesh.as_deref(), &s.step), &s.path) {
            out.push(
                Problem::new(
                    join(&s.path, "step"),
                    format!("step {} is already expected in {first}", s.step),
                )
                .hint("put all bounds of a step in one entry"),
            );
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// What a YAML value is, for messages.
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "empty".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_steps_services_and_run_bounds() {
        let text = "\
steps:
  - mesh: quickstart
    step: 0
    throughput_rps: { min: 9.5 }
    latency_p99_ms: { max: 150 }
    replica_seconds: { max: 30 }
    services:
      backend:
        cpu_cores_avg: { min: 0.01, max: 0.125 }
  - step: rate-40
    error_ratio: { max: 0.01 }
run:
  services:
    backend:
      replica_seconds: { max: 80 }
";
        let e = parse("x.yaml", text).unwrap();
        assert_eq!(e.steps.len(), 2);
        assert_eq!(e.steps[0].step, StepRef::Index(0));
        assert_eq!(e.steps[1].step, StepRef::Name("rate-40".into()));
        assert_eq!(e.steps[1].mesh, None);
        let cpu = e.steps[0]
            .bounds
            .iter()
            .find(|b| b.figure.name == "cpu_cores_avg")
            .unwrap();
        assert_eq!(cpu.path, "steps[0].services.backend.cpu_cores_avg");
        assert_eq!((cpu.min, cpu.max), (Some(0.01), Some(0.125)));
        assert_eq!(cpu.service.as_deref(), Some("backend"));
        let total = e.steps[0]
            .bounds
            .iter()
            .find(|b| b.figure.name == "replica_seconds")
            .unwrap();
        assert_eq!(total.service, None);
        assert_eq!(e.run.len(), 1);
        assert_eq!(e.run[0].path, "run.services.backend.replica_seconds");
    }

    #[test]
    fn reports_every_problem_at_its_field_path() {
        let text = "\
stpes: []
steps:
  - step: -1
    latency_p99: { max: 50 }
  - step: 1
    latency_p99_ms: { max: 50ms }
    services:
      backend:
        latency_p99_ms: { max: 5 }
  - step: 2
    throughput_rps: { min: 30, max: 20, avg: 3 }
  - step: 1
    error_ratio: 0.01
";
        let err = parse("exp.yaml", text).unwrap_err();
        let at = |path: &str| {
            err.problems
                .iter()
                .find(|p| p.path == path)
                .unwrap_or_else(|| panic!("no problem at {path}: {err}"))
        };
        assert!(
            at("stpes").hint.as_deref() == Some("did you mean steps?"),
            "{err}"
        );
        assert!(
            at("steps[0].step").message.contains("not a step index"),
            "{err}"
        );
        assert_eq!(
            at("steps[0].latency_p99").hint.as_deref(),
            Some("did you mean latency_p99_ms?")
        );
        assert!(
            at("steps[1].latency_p99_ms.max")
                .message
                .contains("\"50ms\""),
            "{err}"
        );
        assert!(
            at("steps[1].services.backend.latency_p99_ms")
                .message
                .contains("steps table"),
            "{err}"
        );
        assert!(
            at("steps[2].throughput_rps")
                .message
                .contains("min 30 is above max 20")
        );
        assert!(
            at("steps[2].throughput_rps.avg")
                .message
                .contains("expected one of min, max")
        );
        assert!(
            at("steps[3].error_ratio")
                .message
                .contains("expected min and/or max")
        );
        assert!(
            at("steps[3].step")
                .message
                .contains("already expected in steps[1]")
        );
        let text = err.to_string();
        assert!(
            text.starts_with("exp.yaml: error: stpes: unknown field"),
            "{text}"
        );
    }

    #[test]
    fn syntax_errors_have_a_position_and_an_empty_file_is_refused() {
        let err = parse("e.yaml", "steps: [\n").unwrap_err();
        assert!(err.problems[0].message.starts_with("invalid YAML"), "{err}");
        assert!(err.problems[0].position.is_some(), "{err}");
        let err = parse("e.yaml", "steps: []\n").unwrap_err();
        assert!(err.to_string().contains("holds no bounds"), "{err}");
    }
}
