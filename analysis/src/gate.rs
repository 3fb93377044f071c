//! Regression gates: `meshbench compare BASELINE NEW --fail-on RULES` turns a comparison
//! into a verdict.
//!
//! A rule names a figure of the `steps` or `services` table and the change that counts as a
//! regression, per step (the default) or over the whole run:
//!
//! ```text
//! [run.]FIGURE[@SERVICE]:(+|-)AMOUNT[%]
//! latency_p99_ms:+10%          a step's p99 more than 10 % above the baseline's
//! throughput_rps:-5%           a step's served throughput more than 5 % below
//! error_ratio:+0.005           a step's error ratio more than 0.005 above (absolute)
//! run.replica_seconds:+15%     the run's replica-seconds, all services, more than 15 % above
//! cpu_cores_avg@backend:+20%   one service's CPU per step
//! ```
//!
//! A baseline is a run directory or an expectations file (fixed bounds, see
//! [`crate::expect`]). A difference inside the noise never fails: against a run, when
//! Welch's test finds the two runs' repetitions indistinguishable; against a bound, when the
//! bound lies inside the new run's 95 % confidence interval. With one repetition the noise
//! is unknown and the means alone decide; the output says so.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::analyze::{RunJson, SERVICE_FIGURES, STEP_FIGURES, service_figure, step_figure};
use crate::expect::{Expectations, ExpectationsError, Expected, StepRef};
use crate::rundir::{self, RunDirError};
use crate::stats::{self, Estimate, Significance};
use crate::tables::{ServiceRow, StepRow};

/// Step figures a gate can judge besides [`STEP_FIGURES`].
const EXTRA_STEP_FIGURES: &[&str] = &[
    "throughput_ratio",
    "latency_p90_ms",
    "latency_p95_ms",
    "latency_p999_ms",
    "latency_max_ms",
    "response_time_p50_ms",
    "response_time_p99_ms",
    "lateness_p99_ms",
];

/// The table a figure is a column of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `steps`: one value per step.
    Steps,
    /// `services`: one value per step and service.
    Services,
}

/// How the values of a figure combine, over the services of a step or the steps of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Added up (replica-seconds, cores, replicas).
    Sum,
    /// The largest value: the worst step or service (latency, reaction times).
    Max,
    /// The smallest value: the worst step (throughput ratio).
    Min,
    /// Mean weighted by the steps' durations (rates, averages over time).
    TimeMean,
    /// Mean weighted by the steps' due requests: the run's own error ratio.
    RequestMean,
}

/// A figure a gate can judge, and how it combines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Figure {
    /// Column name.
    pub name: &'static str,
    /// The table the column is in.
    pub source: Source,
    /// Over the services of a step, when no service is named.
    pub over_services: Combine,
    /// Over the steps of a run (`run.` rules and the expectations' `run:`).
    pub over_steps: Combine,
}

impl Figure {
    /// The figure of that column name.
    pub fn named(name: &str) -> Option<Figure> {
        Figure::all().find(|f| f.name == name)
    }

    /// Every figure, steps table first.
    pub fn all() -> impl Iterator<Item = Figure> {
        let steps = STEP_FIGURES
            .iter()
            .chain(EXTRA_STEP_FIGURES)
            .copied()
            .map(|n| Figure::of(n, Source::Steps));
        let services = SERVICE_FIGURES
            .iter()
            .copied()
            .map(|n| Figure::of(n, Source::Services));
        steps.chain(services)
    }

    fn of(name: &'static str, source: Source) -> Figure {
        Figure {
            name,
            source,
            over_services: match name {
                "cpu_utilization_avg" | "scale_up_reaction_s" | "settle_time_s" => Combine::Max,
                _ => Combine::Sum,
            },
            over_steps: over_steps(name),
        }
    }

    /// The figure's value in one step row (step figures only).
    fn of_step(&self, r: &StepRow) -> Option<f64> {
        match self.name {
            "throughput_ratio" => r.throughput_ratio,
            "latency_p90_ms" => r.latency_p90_ms,
            "latency_p95_ms" => r.latency_p95_ms,
            "latency_p999_ms" => r.latency_p999_ms,
            "latency_max_ms" => r.latency_max_ms,
            "response_time_p50_ms" => r.response_time_p50_ms,
            "response_time_p99_ms" => r.response_time_p99_ms,
            "lateness_p99_ms" => r.lateness_p99_ms,
            n => step_figure(r, n),
        }
    }
}

fn over_steps(name: &str) -> Combine {
    match name {
        "error_ratio" => Combine::RequestMean,
        "throughput_ratio" => Combine::Min,
        "replica_seconds" | "direction_changes" => Combine::Sum,
        "replicas_avg" | "cpu_cores_avg" | "cpu_utilization_avg" => Combine::TimeMean,
        n if n.ends_with("_rps") => Combine::TimeMean,
        // Latency, peaks and reaction times: the worst step.
        _ => Combine::Max,
    }
}

/// The names of every figure, for messages.
pub fn figure_names() -> String {
    Figure::all().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

/// The closest figure name to a misspelt one, when one is close.
pub fn suggest_figure(input: &str) -> Option<&'static str> {
    closest(input, Figure::all().map(|f| f.name))
}

/// The candidate closest to `input` by edit distance, when close enough to be a typo.
pub(crate) fn closest<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(input, c), c))
        .filter(|(d, c)| *d > 0 && *d <= 2usize.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Whether a rule judges every step or the run as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Each step (of each mesh) separately.
    Step,
    /// The run: the figure combined over the steps of each repetition first.
    Run,
}

/// Which change of a figure is a regression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// `+`: a rise beyond the tolerance fails.
    Up,
    /// `-`: a fall beyond the tolerance fails.
    Down,
}

/// How much change a rule tolerates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Amount {
    /// Percent of the baseline's value.
    Percent(f64),
    /// In the figure's own unit.
    Absolute(f64),
}

/// One `--fail-on` rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    /// The rule as written.
    pub text: String,
    /// Judged per step (the default) or over the whole run (`run.`).
    pub scope: Scope,
    /// The figure judged.
    pub figure: Figure,
    /// `@SERVICE` of a services figure; without it the figure combines over services.
    pub service: Option<String>,
    /// Which change is a regression: `+` a rise, `-` a fall.
    pub direction: Direction,
    /// The change tolerated before the rule fails.
    pub amount: Amount,
}

const RULE_FORMAT: &str = "expected [run.]FIGURE[@SERVICE]:(+|-)AMOUNT[%], \
     e.g. latency_p99_ms:+10%, throughput_rps:-5%, run.replica_seconds:+15% or error_ratio:+0.005";

/// Why a `--fail-on` rule does not parse; each message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// No `:` separates the figure from the tolerance.
    #[error("{rule:?} has no tolerance; {}", RULE_FORMAT)]
    NoTolerance {
        /// The rule as written (trimmed).
        rule: String,
    },
    /// The figure is prefixed with something other than `run.` or `step.`.
    #[error(
        "unknown scope {scope:?} before the figure; expected `run.` (the whole run) or \
         `step.` (each step, the default)"
    )]
    UnknownScope {
        /// The prefix.
        scope: String,
    },
    /// The figure is not a column of the steps or services table.
    #[error(
        "unknown figure {name:?}{hint}; expected a column of the steps or services table: {}",
        figure_names()
    )]
    UnknownFigure {
        /// The name as written.
        name: String,
        /// ` (did you mean …?)`, or empty.
        hint: String,
    },
    /// `FIGURE@` with nothing after the `@`.
    #[error("{figure}@ names no service; expected {figure}@SERVICE, e.g. {figure}@backend")]
    EmptyService {
        /// The figure.
        figure: String,
    },
    /// `@SERVICE` on a figure of the steps table.
    #[error(
        "{figure} is a figure of the steps table, which has no services; @SERVICE goes with \
         figures of the services table ({})",
        SERVICE_FIGURES.join(", ")
    )]
    ServiceOnStepFigure {
        /// The figure.
        figure: String,
    },
    /// The tolerance does not start with `+` or `-`.
    #[error(
        "tolerance {tolerance:?} has no sign; expected +AMOUNT (a rise beyond it fails) or \
         -AMOUNT (a fall beyond it fails), e.g. +10% or -0.005"
    )]
    NoSign {
        /// The tolerance as written (trimmed).
        tolerance: String,
    },
    /// The amount is not a finite non-negative number.
    #[error(
        "tolerance {tolerance:?}: {number:?} is not a non-negative number; expected e.g. +10% \
         (relative to the baseline) or +0.005 (in the figure's unit)"
    )]
    BadAmount {
        /// The tolerance as written (trimmed).
        tolerance: String,
        /// The amount without sign and `%`.
        number: String,
    },
}

impl Rule {
    /// Parses one rule; the error says what was expected (clap prints it after the
    /// argument's name).
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let s = text.trim();
        let Some((target, tolerance)) = s.rsplit_once(':') else {
            return Err(RuleError::NoTolerance { rule: s.to_owned() });
        };
        let (scope, rest) = parse_scope(target)?;
        let (figure, service) = parse_target(rest)?;
        let (direction, amount) = parse_tolerance(tolerance)?;
        Ok(Rule {
            text: s.to_owned(),
            scope,
            figure,
            service,
            direction,
            amount,
        })
    }

    /// The value beyond which the new run fails, given the baseline's.
    pub fn bound(&self, baseline: f64) -> Bound {
        let delta = match self.amount {
            Amount::Percent(p) => baseline.abs() * p / 100.0,
            Amount::Absolute(d) => d,
        };
        match self.direction {
            Direction::Up => Bound::Max(baseline + delta),
            Direction::Down => Bound::Min(baseline - delta),
        }
    }
}

impl std::str::FromStr for Rule {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Rule, RuleError> {
        Rule::parse(s)
    }
}

fn parse_scope(target: &str) -> Result<(Scope, &str), RuleError> {
    match target.split_once('.') {
        None => Ok((Scope::Step, target)),
        Some(("run", rest)) => Ok((Scope::Run, rest)),
        Some(("step", rest)) => Ok((Scope::Step, rest)),
        Some((other, _)) => Err(RuleError::UnknownScope {
            scope: other.to_owned(),
        }),
    }
}

fn parse_target(rest: &str) -> Result<(Figure, Option<String>), RuleError> {
    let (name, service) = match rest.split_once('@') {
        Some((f, s)) => (f, Some(s)),
        None => (rest, None),
    };
    let Some(figure) = Figure::named(name) else {
        let hint = suggest_figure(name)
            .map(|s| format!(" (did you mean {s}?)"))
            .unwrap_or_default();
        return Err(RuleError::UnknownFigure {
            name: name.to_owned(),
            hint,
        });
    };
    match service {
        Some("") => Err(RuleError::EmptyService {
            figure: name.to_owned(),
        }),
        Some(_) if figure.source == Source::Steps => Err(RuleError::ServiceOnStepFigure {
            figure: name.to_owned(),
        }),
        s => Ok((figure, s.map(str::to_owned))),
    }
}

fn parse_tolerance(t: &str) -> Result<(Direction, Amount), RuleError> {
    let t = t.trim();
    let (direction, number) = if let Some(n) = t.strip_prefix('+') {
        (Direction::Up, n)
    } else if let Some(n) = t.strip_prefix('-') {
        (Direction::Down, n)
    } else {
        return Err(RuleError::NoSign {
            tolerance: t.to_owned(),
        });
    };
    let (number, percent) = match number.strip_suffix('%') {
        Some(n) => (n, true),
        None => (number, false),
    };
    let value: f64 = number
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| RuleError::BadAmount {
            tolerance: t.to_owned(),
            number: number.to_owned(),
        })?;
    Ok((
        direction,
        if percent {
            Amount::Percent(value)
        } else {
            Amount::Absolute(value)
        },
    ))
}

/// The value a figure is judged against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// Fails above it.
    Max(f64),
    /// Fails below it.
    Min(f64),
}

impl Bound {
    /// The bound's value.
    pub fn value(self) -> f64 {
        match self {
            Bound::Max(v) | Bound::Min(v) => v,
        }
    }

    /// Whether `x` lies beyond the bound.
    pub fn breached_by(self, x: f64) -> bool {
        match self {
            Bound::Max(l) => x > l,
            Bound::Min(l) => x < l,
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Max(v) => write!(f, "≤ {}", num(*v)),
            Bound::Min(v) => write!(f, "≥ {}", num(*v)),
        }
    }
}

/// Whether a difference is beyond the noise of the repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Noise {
    /// Outside the noise: Welch's test separates the runs, or the bound lies outside the new
    /// run's 95 % confidence interval (the verdict is clear either way).
    Outside,
    /// Inside the noise: a difference that never fails.
    Inside,
    /// One repetition on a side: the means alone decide.
    Unknown,
}

impl Noise {
    fn of_runs(a: &Estimate, b: &Estimate) -> Noise {
        match stats::welch(a, b) {
            Significance::Significant => Noise::Outside,
            Significance::WithinNoise => Noise::Inside,
            Significance::Unknown => Noise::Unknown,
        }
    }

    fn of_bound(m: &Estimate, bound: Bound) -> Noise {
        match (m.ci95_low, m.ci95_high) {
            (Some(lo), Some(hi)) if bound.breached_by(lo) == bound.breached_by(hi) => {
                Noise::Outside
            }
            (Some(_), Some(_)) => Noise::Inside,
            _ => Noise::Unknown,
        }
    }
}

impl fmt::Display for Noise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Noise::Outside => "outside the noise",
            Noise::Inside => "inside the noise",
            Noise::Unknown => "noise unknown (1 repetition)",
        })
    }
}

/// One gate judged at one place: a rule or an expected bound, for one step or the run, of
/// one mesh (and service).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// The rule as written, or the expectations file's field path of the bound.
    pub gate: String,
    /// Mesh of the new run the check is for.
    pub mesh: String,
    /// The step; `None` for a check over the whole run.
    pub step: Option<u32>,
    /// Name of the step, when known; `None` for a check over the whole run.
    pub step_name: Option<String>,
    /// Service of a services figure; `None` for a steps figure or one combined over services.
    pub service: Option<String>,
    /// Column name of the figure judged.
    pub figure: String,
    /// The baseline run's value (rules against a run directory).
    pub baseline: Option<Estimate>,
    /// The new run's value; `None` when it was not measured (a missing step, a null figure).
    pub measured: Option<Estimate>,
    /// The limit the new run's mean must stay within.
    pub bound: Bound,
    /// Whether the miss (if any) is beyond the repetitions' noise; inside it never fails.
    pub noise: Noise,
    /// The verdict: false when not measured, or beyond the bound and not inside the noise.
    pub pass: bool,
}

impl Check {
    /// Judges `measured` against `bound`: it fails when not measured, or beyond the bound
    /// and not inside the noise.
    fn judge(mut self) -> Check {
        self.pass = match self.measured {
            None => false,
            Some(m) => !self.bound.breached_by(m.mean) || self.noise == Noise::Inside,
        };
        self
    }

    /// Where the check was made: "mesh m, step 2 (rate-40), service backend".
    pub fn place(&self) -> String {
        let mut s = format!("mesh {}", self.mesh);
        match (self.step, &self.step_name) {
            (Some(i), Some(n)) => s.push_str(&format!(", step {i} ({n})")),
            (Some(i), None) => s.push_str(&format!(", step {i}")),
            (None, _) => s.push_str(", whole run"),
        }
        if let Some(svc) = &self.service {
            s.push_str(&format!(", service {svc}"));
        }
        s
    }

    /// By how much the measured mean misses the bound (positive when beyond it), absolute
    /// and as a percentage of the bound.
    pub fn excess(&self) -> Option<(f64, Option<f64>)> {
        let m = self.measured?.mean;
        let b = self.bound.value();
        let over = match self.bound {
            Bound::Max(_) => m - b,
            Bound::Min(_) => b - m,
        };
        Some((over, (b != 0.0).then(|| over / b.abs() * 100.0)))
    }

    /// One line saying what was judged, the values, the bound, by how much it was missed and
    /// whether outside the noise.
    pub fn describe(&self) -> String {
        let verdict = if self.pass { "pass" } else { "FAIL" };
        let Some(m) = self.measured else {
            return format!(
                "{verdict} {}: {}: {} was not measured in the new run (step missing or no value); \
                 bound {}",
                self.gate,
                self.place(),
                self.figure,
                self.bound
            );
        };
        let mut s = format!(
            "{verdict} {}: {}: {} {}",
            self.gate,
            self.place(),
            self.figure,
            est(&m)
        );
        if let Some(b) = self.baseline {
            let diff = m.mean - b.mean;
            let pct = if b.mean != 0.0 {
                format!(", {:+.1} %", diff / b.mean.abs() * 100.0)
            } else {
                String::new()
            };
            s.push_str(&format!(
                " vs baseline {} ({}{pct})",
                est(&b),
                num_signed(diff)
            ));
        }
        s.push_str(&format!(", allowed {}", self.bound));
        if let Some((over, pct)) = self.excess().filter(|(o, _)| *o > 0.0) {
            let pct = pct.map(|p| format!(" = {p:.1} %")).unwrap_or_default();
            s.push_str(&format!(", beyond by {}{pct}", num(over)));
        }
        s.push_str(&format!("; {}", self.noise));
        s
    }
}

fn est(e: &Estimate) -> String {
    match (e.ci95_low, e.ci95_high) {
        (Some(lo), Some(hi)) => format!("{} [{}, {}] n={}", num(e.mean), num(lo), num(hi), e.n),
        _ => num(e.mean),
    }
}

/// A number with a precision that suits its size.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{x:.4}")
    }
}

fn num_signed(x: f64) -> String {
    if x >= 0.0 {
        format!("+{}", num(x))
    } else {
        num(x)
    }
}

/// What a baseline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineKind {
    /// A run directory, judged with `--fail-on` rules.
    Run,
    /// An expectations file of fixed bounds.
    Expectations,
}

/// Every check of one `meshbench compare`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateReport {
    /// The baseline run directory or expectations file.
    pub baseline: PathBuf,
    /// Whether `baseline` is a run directory or an expectations file.
    pub baseline_kind: BaselineKind,
    /// The new run's directory.
    pub candidate: PathBuf,
    /// Every check made, passed or not, in the order judged.
    pub checks: Vec<Check>,
    /// Mesh pairing and partial runs.
    pub notes: Vec<String>,
}

impl GateReport {
    /// True when every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.pass)
    }
}

impl fmt::Display for GateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.baseline_kind {
            BaselineKind::Run => "baseline run",
            BaselineKind::Expectations => "expectations",
        };
        writeln!(
            f,
            "gates: {} against the {what} {}",
            self.candidate.display(),
            self.baseline.display()
        )?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for c in &self.checks {
            writeln!(f, "  {}", c.describe())?;
        }
        let failed = self.failures().count();
        if failed == 0 {
            writeln!(f, "gates: PASS ({} check(s))", self.checks.len())
        } else {
            writeln!(
                f,
                "gates: FAIL ({failed} of {} check(s) failed)",
                self.checks.len()
            )
        }
    }
}

/// What `meshbench compare` and `meshbench results` read of a run directory.
#[derive(Debug, Clone)]
pub struct RunTables {
    /// The run directory read.
    pub dir: PathBuf,
    /// Its `run.json`.
    pub run: RunJson,
    /// Rows of its `steps` table.
    pub steps: Vec<StepRow>,
    /// Rows of its `services` table.
    pub services: Vec<ServiceRow>,
}

/// How a run ended, as `meshbench run` exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Completed and every SLO held (or there were none).
    Passed,
    /// Completed, and an SLO was violated.
    SloFailed,
    /// Partial: failed, interrupted or cancelled.
    Incomplete,
}

impl RunTables {
    /// Reads `run.json` and the steps and services tables.
    pub fn read(dir: &Path) -> rundir::Result<RunTables> {
        Ok(RunTables {
            dir: dir.to_owned(),
            run: rundir::read_run_json(dir)?,
            steps: rundir::read_table::<StepRow>(dir)?,
            services: rundir::read_table::<ServiceRow>(dir)?,
        })
    }

    /// How the run ended.
    pub fn outcome(&self) -> Outcome {
        if self.run.meta.partial {
            Outcome::Incomplete
        } else if self.run.slo.pass == Some(false) {
            Outcome::SloFailed
        } else {
            Outcome::Passed
        }
    }

    /// The steps that count (not warm-up).
    pub fn measured_steps(&self) -> impl Iterator<Item = &StepRow> {
        self.steps.iter().filter(|r| !r.warmup)
    }

    /// The meshes of the run, in order.
    pub fn meshes(&self) -> BTreeSet<&str> {
        self.steps.iter().map(|r| r.mesh.as_str()).collect()
    }

    /// Whether `mesh` has a service of that name.
    pub fn has_service(&self, mesh: &str, service: &str) -> bool {
        self.services
            .iter()
            .any(|r| r.mesh == mesh && r.service == service)
    }

    fn step_name(&self, mesh: &str, step: u32) -> Option<String> {
        self.measured_steps()
            .find(|r| r.mesh == mesh && r.step == step)
            .map(|r| r.step_name.clone())
    }

    fn step_named(&self, mesh: &str, name: &str) -> Option<u32> {
        self.measured_steps()
            .find(|r| r.mesh == mesh && r.step_name == name)
            .map(|r| r.step)
    }
}

/// (mesh, repetition, step).
type StepKey = (String, u32, u32);
/// (mesh, step); the step is `None` over the whole run.
type Place = (String, Option<u32>);

fn combine(how: Combine, values: &[(f64, f64, f64)]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let vs = values.iter().map(|v| v.0);
    match how {
        Combine::Sum => Some(vs.sum()),
        Combine::Max => vs.reduce(f64::max),
        Combine::Min => vs.reduce(f64::min),
        Combine::TimeMean => Some(weighted(values, |v| v.1)),
        Combine::RequestMean => Some(weighted(values, |v| v.2)),
    }
}

/// Weighted mean of `(value, duration, requests)`; the plain mean when no weight is positive.
fn weighted(values: &[(f64, f64, f64)], weight: impl Fn(&(f64, f64, f64)) -> f64) -> f64 {
    let total: f64 = values.iter().map(&weight).filter(|w| *w > 0.0).sum();
    if total > 0.0 {
        values.iter().map(|v| v.0 * weight(v).max(0.0)).sum::<f64>() / total
    } else {
        values.iter().map(|v| v.0).sum::<f64>() / values.len() as f64
    }
}

/// The figure's value per (mesh, repetition, step): of the named service, or combined over
/// the step's services.
fn step_values(t: &RunTables, fig: &Figure, service: Option<&str>) -> BTreeMap<StepKey, f64> {
    let measured: BTreeSet<StepKey> = t
        .measured_steps()
        .map(|r| (r.mesh.clone(), r.repetition, r.step))
        .collect();
    let mut out = BTreeMap::new();
    match fig.source {
        Source::Steps => {
            for r in t.measured_steps() {
                if let Some(v) = fig.of_step(r).filter(|v| v.is_finite()) {
                    out.insert((r.mesh.clone(), r.repetition, r.step), v);
                }
            }
        }
        Source::Services => {
            let mut parts: BTreeMap<StepKey, Vec<(f64, f64, f64)>> = BTreeMap::new();
            for r in &t.services {
                let key = (r.mesh.clone(), r.repetition, r.step);
                if !measured.contains(&key) || service.is_some_and(|s| s != r.service) {
                    continue;
                }
                if let Some(v) = service_figure(r, fig.name).filter(|v| v.is_finite()) {
                    parts.entry(key).or_default().push((v, 0.0, 0.0));
                }
            }
            for (k, v) in parts {
                if let Some(x) = combine(fig.over_services, &v) {
                    out.insert(k, x);
                }
            }
        }
    }
    out
}

/// The figure's value per (mesh, repetition) over the run's steps.
fn run_values(t: &RunTables, fig: &Figure, service: Option<&str>) -> BTreeMap<(String, u32), f64> {
    let weights: BTreeMap<StepKey, (f64, f64)> = t
        .measured_steps()
        .map(|r| {
            let requests = r.requests.unwrap_or(0) as f64;
            (
                (r.mesh.clone(), r.repetition, r.step),
                (r.duration_s, requests),
            )
        })
        .collect();
    // Per (mesh, repetition): (value, duration s, requests) of each step.
    type Parts = BTreeMap<(String, u32), Vec<(f64, f64, f64)>>;
    let mut parts = Parts::new();
    for (key, v) in step_values(t, fig, service) {
        let (d, n) = weights.get(&key).copied().unwrap_or((0.0, 0.0));
        parts.entry((key.0, key.1)).or_default().push((v, d, n));
    }
    parts
        .into_iter()
        .filter_map(|(k, v)| combine(fig.over_steps, &v).map(|x| (k, x)))
        .collect()
}

/// Mean and confidence interval over repetitions, per place.
fn estimates(
    t: &RunTables,
    fig: &Figure,
    service: Option<&str>,
    scope: Scope,
) -> BTreeMap<Place, Estimate> {
    let mut reps: BTreeMap<Place, Vec<f64>> = BTreeMap::new();
    match scope {
        Scope::Step => {
            for ((mesh, _, step), v) in step_values(t, fig, service) {
                reps.entry((mesh, Some(step))).or_default().push(v);
            }
        }
        Scope::Run => {
            for ((mesh, _), v) in run_values(t, fig, service) {
                reps.entry((mesh, None)).or_default().push(v);
            }
        }
    }
    reps.into_iter()
        .filter_map(|(k, v)| stats::estimate(&v).map(|e| (k, e)))
        .collect()
}

/// A gate that cannot be judged: the rule or expectation names something the runs lack.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// A run directory cannot be read.
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// The expectations file is invalid.
    #[error("{0}")]
    Expectations(#[from] ExpectationsError),
    /// A rule or an expectation names a mesh or service that is not in the runs.
    #[error("{0}")]
    Mismatch(String),
}

/// The baseline of `meshbench compare`: a run directory or an expectations file.
#[derive(Debug, Clone)]
pub enum Baseline {
    /// A run directory, judged with `--fail-on` rules.
    Run(Box<RunTables>),
    /// An expectations file of fixed bounds.
    Expectations(Expectations),
}

impl Baseline {
    /// A directory is read as a run, a file as expectations.
    pub fn load(path: &Path) -> Result<Baseline, GateError> {
        if path.is_dir() {
            Ok(Baseline::Run(Box::new(RunTables::read(path)?)))
        } else {
            Ok(Baseline::Expectations(crate::expect::load(path)?))
        }
    }
}

/// Judges the new run against the baseline run with `rules`.
pub fn judge_runs(rules: &[Rule], a: &RunTables, b: &RunTables) -> Result<GateReport, GateError> {
    let mut notes = Vec::new();
    let pairs = crate::compare::mesh_pairs(&a.steps, &b.steps, &mut notes);
    for (label, t) in [("baseline", a), ("new", b)] {
        if t.run.meta.partial {
            notes.push(format!("the {label} run {} is partial", t.dir.display()));
        }
    }
    let mut checks = Vec::new();
    for rule in rules {
        check_rule_service(rule, &pairs, a, b)?;
        checks.extend(judge_rule(rule, &pairs, a, b));
    }
    Ok(GateReport {
        baseline: a.dir.clone(),
        baseline_kind: BaselineKind::Run,
        candidate: b.dir.clone(),
        checks,
        notes,
    })
}

fn check_rule_service(
    rule: &Rule,
    pairs: &[(String, String)],
    a: &RunTables,
    b: &RunTables,
) -> Result<(), GateError> {
    let Some(svc) = &rule.service else {
        return Ok(());
    };
    if pairs
        .iter()
        .any(|(ma, mb)| a.has_service(ma, svc) || b.has_service(mb, svc))
    {
        return Ok(());
    }
    Err(GateError::Mismatch(format!(
        "--fail-on {}: no service {svc:?} in either run",
        rule.text
    )))
}

fn judge_rule(rule: &Rule, pairs: &[(String, String)], a: &RunTables, b: &RunTables) -> Vec<Check> {
    let svc = rule.service.as_deref();
    let ea = estimates(a, &rule.figure, svc, rule.scope);
    let eb = estimates(b, &rule.figure, svc, rule.scope);
    let mut out = Vec::new();
    for (ma, mb) in pairs {
        for ((_, step), base) in ea.iter().filter(|((m, _), _)| m == ma) {
            let measured = eb.get(&(mb.clone(), *step)).copied();
            let step_name = step.and_then(|s| b.step_name(mb, s).or_else(|| a.step_name(ma, s)));
            out.push(
                Check {
                    gate: rule.text.clone(),
                    mesh: mb.clone(),
                    step: *step,
                    step_name,
                    service: rule.service.clone(),
                    figure: rule.figure.name.to_owned(),
                    baseline: Some(*base),
                    measured,
                    bound: rule.bound(base.mean),
                    noise: measured.map_or(Noise::Unknown, |m| Noise::of_runs(base, &m)),
                    pass: false,
                }
                .judge(),
            );
        }
    }
    out
}

/// Judges the new run against the fixed bounds of an expectations file.
pub fn judge_expectations(
    exp: &Expectations,
    file: &Path,
    b: &RunTables,
) -> Result<GateReport, GateError> {
    let mut checks = Vec::new();
    let meshes: Vec<String> = b.meshes().into_iter().map(str::to_owned).collect();
    for entry in &exp.steps {
        for mesh in entry_meshes(entry.mesh.as_deref(), &entry.path, &meshes)? {
            let step = match &entry.step {
                StepRef::Index(i) => Some(*i),
                StepRef::Name(n) => b.step_named(&mesh, n),
            };
            for e in &entry.bounds {
                check_expected_service(e, &mesh, b)?;
                checks.extend(judge_expected(e, b, &mesh, Scope::Step, step, &entry.step));
            }
        }
    }
    for e in &exp.run {
        for mesh in &meshes {
            check_expected_service(e, mesh, b)?;
            checks.extend(judge_expected(
                e,
                b,
                mesh,
                Scope::Run,
                None,
                &StepRef::Index(0),
            ));
        }
    }
    let mut notes = Vec::new();
    if b.run.meta.partial {
        notes.push(format!("the run {} is partial", b.dir.display()));
    }
    Ok(GateReport {
        baseline: file.to_owned(),
        baseline_kind: BaselineKind::Expectations,
        candidate: b.dir.clone(),
        checks,
        notes,
    })
}

fn entry_meshes(
    mesh: Option<&str>,
    path: &str,
    meshes: &[String],
) -> Result<Vec<String>, GateError> {
    match mesh {
        None => Ok(meshes.to_vec()),
        Some(m) if meshes.iter().any(|x| x == m) => Ok(vec![m.to_owned()]),
        Some(m) => Err(GateError::Mismatch(format!(
            "{path}.mesh: no mesh {m:?} in the run; it has {}",
            meshes.join(", ")
        ))),
    }
}

fn check_expected_service(e: &Expected, mesh: &str, b: &RunTables) -> Result<(), GateError> {
    match &e.service {
        Some(s) if !b.has_service(mesh, s) => Err(GateError::Mismatch(format!(
            "{}: mesh {mesh} of the run has no service {s:?}",
            e.path
        ))),
        _ => Ok(()),
    }
}

/// The checks of one expected figure (one per bound) at one place. `step` is `None` for a
/// step entry whose step the run lacks (the checks then fail as not measured).
fn judge_expected(
    e: &Expected,
    b: &RunTables,
    mesh: &str,
    scope: Scope,
    step: Option<u32>,
    wanted: &StepRef,
) -> Vec<Check> {
    let measured = match (scope, step) {
        (Scope::Run, _) => estimates(b, &e.figure, e.service.as_deref(), scope)
            .get(&(mesh.to_owned(), None))
            .copied(),
        (Scope::Step, Some(s)) => estimates(b, &e.figure, e.service.as_deref(), scope)
            .get(&(mesh.to_owned(), Some(s)))
            .copied(),
        (Scope::Step, None) => None,
    };
    let (step, step_name) = match (scope, step, wanted) {
        (Scope::Run, ..) => (None, None),
        (Scope::Step, Some(s), _) => (Some(s), b.step_name(mesh, s)),
        (Scope::Step, None, StepRef::Name(n)) => (None, Some(n.clone())),
        (Scope::Step, None, StepRef::Index(i)) => (Some(*i), None),
    };
    let bounds = e
        .max
        .map(|v| ("max", Bound::Max(v)))
        .into_iter()
        .chain(e.min.map(|v| ("min", Bound::Min(v))));
    bounds
        .map(|(key, bound)| {
            Check {
                gate: format!("{}.{key}", e.path),
                mesh: mesh.to_owned(),
                step,
                step_name: step_name.clone(),
                service: e.service.clone(),
                figure: e.figure.name.to_owned(),
                baseline: None,
                measured,
                bound,
                noise: measured.map_or(Noise::Unknown, |m| Noise::of_bound(&m, bound)),
                pass: false,
            }
            .judge()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_with_scope_service_and_tolerance() {
        let r = Rule::parse("latency_p99_ms:+10%").unwrap();
        assert_eq!(r.scope, Scope::Step);
        assert_eq!(r.figure.name, "latency_p99_ms");
        assert_eq!(r.direction, Direction::Up);
        assert_eq!(r.amount, Amount::Percent(10.0));
        assert_eq!(r.bound(50.0), Bound::Max(55.0));
        let r = Rule::parse("run.replica_seconds@backend:-0.5").unwrap();
        assert_eq!(r.scope, Scope::Run);
        assert_eq!(r.service.as_deref(), Some("backend"));
        assert_eq!(r.amount, Amount::Absolute(0.5));
        assert_eq!(r.direction, Direction::Down);
        assert_eq!(r.bound(10.0), Bound::Min(9.5));
        let r = Rule::parse(" throughput_rps:-5% ").unwrap();
        assert_eq!(r.text, "throughput_rps:-5%");
        assert_eq!(r.bound(40.0), Bound::Min(38.0));
        assert_eq!(
            Rule::parse("error_ratio:+0.005").unwrap().amount,
            Amount::Absolute(0.005)
        );
    }

    #[test]
    fn bad_rules_say_what_was_expected() {
        for (rule, says) in [
            ("latency_p99_ms", "has no tolerance"),
            ("latency_p99_ms:10%", "has no sign"),
            ("latency_p99:+10%", "did you mean latency_p99_ms"),
            ("latency_p99_ms:+ten%", "not a non-negative number"),
            ("latency_p99_ms@frontend:+10%", "steps table"),
            ("replica_seconds@:+10%", "names no service"),
            ("total.replica_seconds:+10%", "unknown scope"),
        ] {
            let e = Rule::parse(rule).unwrap_err().to_string();
            assert!(e.contains(says), "{rule}: {e}");
        }
    }

    #[test]
    fn run_combinations_weigh_as_documented() {
        let v = [(10.0, 10.0, 100.0), (40.0, 30.0, 1200.0)];
        assert_eq!(combine(Combine::Sum, &v), Some(50.0));
        assert_eq!(combine(Combine::Max, &v), Some(40.0));
        assert_eq!(
            combine(Combine::TimeMean, &v),
            Some((100.0 + 1200.0) / 40.0)
        );
        assert_eq!(
            combine(Combine::RequestMean, &v),
            Some((1000.0 + 48_000.0) / 1300.0)
        );
        assert_eq!(combine(Combine::Min, &[]), None);
        assert_eq!(over_steps("latency_p99_ms"), Combine::Max);
        assert_eq!(over_steps("throughput_rps"), Combine::TimeMean);
        assert_eq!(over_steps("replica_seconds"), Combine::Sum);
    }

    fn e(values: &[f64]) -> Estimate {
        stats::estimate(values).unwrap()
    }

    fn check(measured: Estimate, bound: Bound, noise: Noise) -> Check {
        Check {
            gate: "g".into(),
            mesh: "m".into(),
            step: Some(0),
            step_name: Some("s".into()),
            service: None,
            figure: "latency_p99_ms".into(),
            baseline: None,
            measured: Some(measured),
            bound,
            noise,
            pass: false,
        }
        .judge()
    }

    #[test]
    fn a_bound_inside_the_noise_never_fails() {
        let wide = e(&[40.0, 60.0, 50.0]);
        assert_eq!(Noise::of_bound(&wide, Bound::Max(45.0)), Noise::Inside);
        assert!(check(wide, Bound::Max(45.0), Noise::Inside).pass);
        let narrow = e(&[60.0, 61.0, 60.5]);
        assert_eq!(Noise::of_bound(&narrow, Bound::Max(45.0)), Noise::Outside);
        let c = check(narrow, Bound::Max(45.0), Noise::Outside);
        assert!(!c.pass);
        let text = c.describe();
        assert!(
            text.contains("FAIL g: mesh m, step 0 (s): latency_p99_ms"),
            "{text}"
        );
        assert!(text.contains("beyond by 15.50 = 34.4 %"), "{text}");
        assert!(text.contains("outside the noise"), "{text}");
        let one = e(&[46.0]);
        assert_eq!(Noise::of_bound(&one, Bound::Max(45.0)), Noise::Unknown);
        assert!(!check(one, Bound::Max(45.0), Noise::Unknown).pass);
    }
}
