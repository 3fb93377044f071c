//! Load plans: what traffic to send, at which rate or concurrency, for how long.
//!
//! A [`LoadPlan`] is a plain serde type (camelCase JSON or YAML) owned by the load
//! generator; the operator builds one per benchmark step and hands it to the loadgen
//! in-process or as a file. This module has no runtime dependencies so that consumers
//! (analysis, operator) can use it with `default-features = false`.
//!
//! Durations are written as strings with a unit, as in the CRDs and on the command line
//! (`"250ms"`, `"1.5s"`, `"1m 30s"`; [`meshbench_common::duration`]), or as a number of
//! seconds.
//!
//! ```yaml
//! target: http://127.0.0.1:8080
//! request: { method: GET, path: /api, query: { id: "7" } }
//! model: { type: open, maxInFlight: 1000, maxLateness: 1s }
//! profile:
//!   stages:
//!     - { rate: 100, duration: 10s }
//!     - { rate: 200, duration: 10s, name: double }
//! warmUp: { duration: 5s }
//! timeout: 2s
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Errors of this module: an invalid plan, named by its field path.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A field holds a value outside what the loadgen accepts.
    #[error("invalid plan: {field}: {message}")]
    Invalid {
        /// Field path, e.g. `profile.stages[2].rate`.
        field: String,
        /// What was wrong and what was expected.
        message: String,
    },
    /// The plan text is not valid JSON/YAML for a [`LoadPlan`].
    #[error("cannot parse plan: {0}")]
    Parse(String),
}

/// Result alias of this module.
pub type Result<T, E = PlanError> = std::result::Result<T, E>;

fn invalid(field: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Furthest in the future `startAtUnixMs` may lie: instances of one run start within
/// seconds of each other, so a start further out is a wrong value or a wrong clock, and
/// waiting for it would look like a hang.
pub const MAX_START_AHEAD: std::time::Duration = std::time::Duration::from_secs(3600);

/// Highest open-loop rate a plan may ask for (requests per second, all instances).
pub const MAX_RATE: f64 = 1_000_000.0;
/// Highest number of closed-loop users or open-loop in-flight slots per instance.
pub const MAX_USERS: u32 = 100_000;
/// Longest stage, warm-up or timeout a plan may ask for.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Most stages a plan may expand to (explicit stages or sweep steps).
pub const MAX_STAGES: usize = 10_000;
/// Most instances a distributed run may have.
pub const MAX_INSTANCES: u32 = 10_000;

/// A complete description of one load run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadPlan {
    /// Base URL of the target: `http://` or `https://`, host and optional port, e.g.
    /// `http://127.0.0.1:8080`. [`RequestSpec::path`] is appended to it.
    pub target: String,
    /// The request every simulated client sends.
    #[serde(default)]
    pub request: RequestSpec,
    /// Open loop (arrival rate) or closed loop (users).
    pub model: LoadModel,
    /// The stages of the run, explicit or as a sweep.
    pub profile: Profile,
    /// Optional warm-up before the first stage; measured, but reported as a separate stage
    /// with `warmUp: true` so summaries can leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_up: Option<WarmUp>,
    /// Per-request timeout; a request without a complete response by then counts as a
    /// timeout, not a success. Default 10 s.
    #[serde(default = "default_timeout", with = "duration_serde")]
    pub timeout: Duration,
    /// Which share of the load this process generates (distributed runs).
    #[serde(default)]
    pub instance: InstanceSpec,
    /// Wall-clock start time (UTC unix milliseconds) so that all instances of a
    /// distributed run start together; `None` starts at once. A time in the past starts
    /// at once too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_unix_ms: Option<u64>,
    /// Send one request before the run and refuse to start when the target does not
    /// answer. Default true.
    #[serde(default = "default_true")]
    pub preflight: bool,
    /// Free-form labels copied into the result (mesh, benchmark, run, step, ...), so the
    /// data of one run is never mixed with another.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_true() -> bool {
    true
}

/// The HTTP request sent to the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestSpec {
    /// HTTP method, upper case token (`GET`, `POST`, ...). Default `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Absolute path starting with `/`. Default `/`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Query parameters appended to the path (URL-encoded by the runner).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Request body sent verbatim (UTF-8 text), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl Default for RequestSpec {
    fn default() -> Self {
        Self {
            method: default_method(),
            path: default_path(),
            query: BTreeMap::new(),
            headers: BTreeMap::new(),
            body: None,
        }
    }
}

fn default_method() -> String {
    "GET".to_owned()
}

fn default_path() -> String {
    "/".to_owned()
}

/// How load is generated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum LoadModel {
    /// Constant arrival rate per stage, independent of how fast the target answers
    /// (coordinated-omission free, like wrk2): request `k` of a stage is planned at
    /// `stage start + k / rate` and its latency is measured from that planned time.
    Open {
        /// In-flight bound per instance: at most this many requests are outstanding at
        /// once. A planned request that finds every slot busy is sent late and counted
        /// as late. Default 1000.
        #[serde(default = "default_max_in_flight")]
        max_in_flight: u32,
        /// A request that would be sent later than this after its planned time is dropped
        /// (counted, never sent). `None` never drops: every planned request is sent,
        /// however late.
        #[serde(
            default,
            with = "opt_duration_serde",
            skip_serializing_if = "Option::is_none"
        )]
        max_lateness: Option<Duration>,
    },
    /// A fixed number of users per stage, each sending its next request when the previous
    /// one completed (plus think time): Goose's native model.
    Closed {
        /// Pause of each user after each response. Default 0.
        #[serde(default, with = "duration_serde")]
        think_time: Duration,
    },
}

fn default_max_in_flight() -> u32 {
    1000
}

impl LoadModel {
    /// `"open"` or `"closed"`.
    pub fn kind(&self) -> ModelKind {
        match self {
            LoadModel::Open { .. } => ModelKind::Open,
            LoadModel::Closed { .. } => ModelKind::Closed,
        }
    }
}

/// Open or closed loop, without parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ModelKind {
    /// Arrival rate.
    Open,
    /// Users.
    Closed,
}

/// The stages of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Profile {
    /// Explicit stages, run in order.
    Stages(Vec<Stage>),
    /// A range of rates (open loop) or user counts (closed loop), like the prototype's
    /// QPS sweep: `from`, `from + step`, ... up to and including `to`.
    Sweep(Sweep),
}

/// One stage: a load level held for a duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Stage {
    /// Optional name reported with the stage; default `stage-<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How long the stage lasts.
    #[serde(with = "duration_serde")]
    pub duration: Duration,
    /// Requests per second over all instances (open loop only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Users over all instances (closed loop only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u32>,
}

/// A sweep over load levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sweep {
    /// First level (requests per second, or users in the closed loop).
    pub from: f64,
    /// Last level, included when reached exactly by the steps.
    pub to: f64,
    /// Positive increment between levels (a sweep from high to low is not supported;
    /// list explicit stages instead).
    pub step: f64,
    /// How long each level is held.
    #[serde(with = "duration_serde")]
    pub step_duration: Duration,
}

/// Warm-up stage settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmUp {
    /// How long the warm-up lasts.
    #[serde(with = "duration_serde")]
    pub duration: Duration,
    /// Rate during warm-up (open loop); default the first stage's rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Users during warm-up (closed loop); default the first stage's users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u32>,
}

/// Which share of a distributed run this process generates.
///
/// Open loop: instance `i` of `N` sends the planned requests `i, i+N, i+2N, ...` of each
/// stage, so `N` instances together send exactly the plan. Closed loop: instance `i` runs
/// the users whose global index is `i mod N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceSpec {
    /// Zero-based index of this instance (`JOB_COMPLETION_INDEX` in an Indexed Job).
    #[serde(default)]
    pub index: u32,
    /// Number of instances sharing the plan. Default 1.
    #[serde(default = "default_count")]
    pub count: u32,
}

fn default_count() -> u32 {
    1
}

impl Default for InstanceSpec {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl InstanceSpec {
    /// How many of `total` items numbered `0..total` fall to this instance (`k mod count ==
    /// index`).
    pub fn share_of(&self, total: u64) -> u64 {
        let (i, n) = (u64::from(self.index), u64::from(self.count.max(1)));
        if total > i {
            (total - i).div_ceil(n)
        } else {
            0
        }
    }
}

/// A stage after expansion of warm-up and sweep: what the runner executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedStage {
    /// Position in the run, 0-based; the warm-up, when present, is index 0.
    pub index: u32,
    /// Stage name (`warm-up`, the stage's name, or `stage-<n>` / `sweep-<level>`).
    pub name: String,
    /// Whether this is the warm-up stage.
    pub warm_up: bool,
    /// Stage length.
    #[serde(with = "duration_serde")]
    pub duration: Duration,
    /// Target rate over all instances (open loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Users over all instances (closed loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u32>,
}

impl ResolvedStage {
    /// Requests the plan demands from all instances in this stage (open loop): request
    /// `k` is planned at `k / rate` for every `k` with `k / rate < duration`.
    pub fn planned_requests(&self) -> u64 {
        match self.rate {
            Some(rate) if rate > 0.0 => {
                let exact = rate * self.duration.as_secs_f64();
                // Planned times are k/rate < duration, so the count is ceil(rate × d),
                // computed robustly against float noise.
                let n = exact.ceil();
                let n = if (n - 1.0 - exact).abs() < 1e-9 {
                    n - 1.0
                } else {
                    n
                };
                n.max(0.0) as u64
            }
            _ => 0,
        }
    }

    /// Offset of planned request `k` from the start of the stage (open loop).
    pub fn planned_offset(&self, k: u64) -> Duration {
        match self.rate {
            Some(rate) if rate > 0.0 => Duration::from_secs_f64(k as f64 / rate),
            _ => Duration::ZERO,
        }
    }

    /// Users of this stage that belong to `instance` (closed loop).
    pub fn users_for(&self, instance: &InstanceSpec) -> u32 {
        instance.share_of(u64::from(self.users.unwrap_or(0))) as u32
    }
}

impl LoadPlan {
    /// A plan with one stage, for quick runs and tests.
    pub fn single_stage(target: impl Into<String>, model: LoadModel, stage: Stage) -> Self {
        Self {
            target: target.into(),
            request: RequestSpec::default(),
            model,
            profile: Profile::Stages(vec![stage]),
            warm_up: None,
            timeout: default_timeout(),
            instance: InstanceSpec::default(),
            start_at_unix_ms: None,
            preflight: true,
            labels: BTreeMap::new(),
        }
    }

    /// Parses a JSON plan and validates it.
    pub fn from_json(text: &str) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let plan: LoadPlan = deserialize_with_path(de)?;
        plan.validate()?;
        Ok(plan)
    }

    /// Total planned duration of all stages, warm-up included.
    pub fn total_duration(&self) -> Duration {
        self.stages()
            .map(|s| s.iter().map(|s| s.duration).sum())
            .unwrap_or_default()
    }

    /// Expands warm-up and sweep into the list of stages the runner executes.
    pub fn stages(&self) -> Result<Vec<ResolvedStage>> {
        let open = matches!(self.model, LoadModel::Open { .. });
        let body = match &self.profile {
            Profile::Stages(stages) => explicit_stages(stages)?,
            Profile::Sweep(sw) => sweep_stages(sw, open)?,
        };
        let mut out = Vec::with_capacity(body.len() + 1);
        if let Some(w) = &self.warm_up {
            out.push(warm_up_stage(w, &body[0], open));
        }
        for (i, s) in body.into_iter().enumerate() {
            out.push(ResolvedStage {
                index: out.len() as u32,
                name: s.name.unwrap_or_else(|| format!("stage-{i}")),
                warm_up: false,
                duration: s.duration,
                rate: s.rate,
                users: s.users,
            });
        }
        Ok(out)
    }

    /// Checks `startAtUnixMs` against the clock `now`: at most [`MAX_START_AHEAD`] ahead.
    /// (A past start begins at once.)
    pub fn check_start_at(&self, now: std::time::SystemTime) -> Result<()> {
        let Some(ms) = self.start_at_unix_ms else {
            return Ok(());
        };
        let now_ms = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let ahead_ms = u128::from(ms).saturating_sub(now_ms);
        if ahead_ms > MAX_START_AHEAD.as_millis() {
            return Err(invalid(
                "startAtUnixMs",
                format!(
                    "{ms} is {} s in the future; at most {} s ahead is accepted (is the value or this machine's clock wrong?)",
                    ahead_ms / 1000,
                    MAX_START_AHEAD.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// Checks every field; the error names the field path, the value and the expectation.
    pub fn validate(&self) -> Result<()> {
        validate_target(&self.target)?;
        validate_request(&self.request)?;
        check_duration("timeout", self.timeout)?;
        validate_instance(&self.instance)?;
        let open = validate_model(&self.model)?;
        if let Some(w) = &self.warm_up {
            validate_warm_up(w, open)?;
        }
        for s in self.stages()? {
            let field = self.field_of(&s);
            check_duration(&format!("{field}.duration"), s.duration)?;
            if open {
                validate_open_stage(&field, &s)?;
            } else {
                validate_closed_stage(&field, &s)?;
            }
        }
        Ok(())
    }

    /// The field path a resolved stage came from, for error messages.
    fn field_of(&self, s: &ResolvedStage) -> String {
        if s.warm_up {
            "warmUp".to_owned()
        } else {
            match &self.profile {
                Profile::Stages(_) => {
                    let offset = u32::from(self.warm_up.is_some());
                    format!("profile.stages[{}]", s.index - offset)
                }
                Profile::Sweep(_) => "profile.sweep".to_owned(),
            }
        }
    }
}

/// The explicit stages of a profile, within [`MAX_STAGES`] and not empty.
fn explicit_stages(stages: &[Stage]) -> Result<Vec<Stage>> {
    if stages.is_empty() {
        return Err(invalid(
            "profile.stages",
            "is empty; expected at least one stage",
        ));
    }
    if stages.len() > MAX_STAGES {
        return Err(invalid(
            "profile.stages",
            format!(
                "has {} stages; at most {MAX_STAGES} are supported",
                stages.len()
            ),
        ));
    }
    Ok(stages.to_vec())
}

/// The stages a sweep expands to: one per level, `from` to `to` inclusive.
fn sweep_stages(sw: &Sweep, open: bool) -> Result<Vec<Stage>> {
    for (f, v) in [("from", sw.from), ("to", sw.to), ("step", sw.step)] {
        if !v.is_finite() || v <= 0.0 {
            return Err(invalid(
                format!("profile.sweep.{f}"),
                format!("is {v}; expected a positive number"),
            ));
        }
    }
    if sw.to < sw.from {
        return Err(invalid(
            "profile.sweep.to",
            format!("is {} below from = {}; expected to >= from", sw.to, sw.from),
        ));
    }
    let n = ((sw.to - sw.from) / sw.step + 1e-9).floor() + 1.0;
    if n > MAX_STAGES as f64 {
        return Err(invalid(
            "profile.sweep",
            format!("expands to {n} steps; at most {MAX_STAGES} are supported"),
        ));
    }
    let mut body = Vec::new();
    for i in 0..n as usize {
        let level = sw.from + sw.step * i as f64;
        let (rate, users) = if open {
            (Some(level), None)
        } else {
            if level.fract().abs() > 1e-9 {
                return Err(invalid(
                    "profile.sweep",
                    format!("level {level} is not a whole number of users"),
                ));
            }
            (None, Some(level.round() as u32))
        };
        body.push(Stage {
            name: Some(format!("sweep-{level}")),
            duration: sw.step_duration,
            rate,
            users,
        });
    }
    Ok(body)
}

/// The warm-up stage, at index 0; its level defaults to the first stage's.
fn warm_up_stage(w: &WarmUp, first: &Stage, open: bool) -> ResolvedStage {
    let (rate, users) = if open {
        (w.rate.or(first.rate), None)
    } else {
        (None, w.users.or(first.users))
    };
    ResolvedStage {
        index: 0,
        name: "warm-up".to_owned(),
        warm_up: true,
        duration: w.duration,
        rate,
        users,
    }
}

fn validate_instance(instance: &InstanceSpec) -> Result<()> {
    if instance.count == 0 || instance.count > MAX_INSTANCES {
        return Err(invalid(
            "instance.count",
            format!("is {}; expected 1..={MAX_INSTANCES}", instance.count),
        ));
    }
    if instance.index >= instance.count {
        return Err(invalid(
            "instance.index",
            format!(
                "is {} but instance.count is {}; expected index < count",
                instance.index, instance.count
            ),
        ));
    }
    Ok(())
}

/// Checks the model's parameters; true for the open loop.
fn validate_model(model: &LoadModel) -> Result<bool> {
    match model {
        LoadModel::Open {
            max_in_flight,
            max_lateness,
        } => {
            if *max_in_flight == 0 || *max_in_flight > MAX_USERS {
                return Err(invalid(
                    "model.maxInFlight",
                    format!("is {max_in_flight}; expected 1..={MAX_USERS}"),
                ));
            }
            if let Some(l) = max_lateness {
                check_duration("model.maxLateness", *l)?;
            }
            Ok(true)
        }
        LoadModel::Closed { think_time } => {
            if *think_time > MAX_DURATION {
                return Err(invalid(
                    "model.thinkTime",
                    format!("is {think_time:?}; expected at most {MAX_DURATION:?}"),
                ));
            }
            Ok(false)
        }
    }
}

fn validate_warm_up(w: &WarmUp, open: bool) -> Result<()> {
    if open && w.users.is_some() {
        return Err(invalid(
            "warmUp.users",
            "is set but the model is open; use rate",
        ));
    }
    if !open && w.rate.is_some() {
        return Err(invalid(
            "warmUp.rate",
            "is set but the model is closed; use users",
        ));
    }
    Ok(())
}

/// An open-loop stage has a rate in (0, [`MAX_RATE`]] and no users.
fn validate_open_stage(field: &str, s: &ResolvedStage) -> Result<()> {
    if s.users.is_some() {
        return Err(invalid(
            format!("{field}.users"),
            "is set but the model is open; expected rate",
        ));
    }
    match s.rate {
        None => Err(invalid(
            format!("{field}.rate"),
            "is missing; the open model needs a rate (requests per second)",
        )),
        Some(r) if !r.is_finite() || r <= 0.0 || r > MAX_RATE => Err(invalid(
            format!("{field}.rate"),
            format!("is {r}; expected a rate in (0, {MAX_RATE}] requests per second"),
        )),
        Some(_) => Ok(()),
    }
}

/// A closed-loop stage has 1..=[`MAX_USERS`] users and no rate.
fn validate_closed_stage(field: &str, s: &ResolvedStage) -> Result<()> {
    if s.rate.is_some() {
        return Err(invalid(
            format!("{field}.rate"),
            "is set but the model is closed; expected users",
        ));
    }
    match s.users {
        None => Err(invalid(
            format!("{field}.users"),
            "is missing; the closed model needs a number of users",
        )),
        Some(u) if u == 0 || u > MAX_USERS => Err(invalid(
            format!("{field}.users"),
            format!("is {u}; expected 1..={MAX_USERS}"),
        )),
        Some(_) => Ok(()),
    }
}

fn check_duration(field: &str, d: Duration) -> Result<()> {
    if d.is_zero() || d > MAX_DURATION {
        return Err(invalid(
            field,
            format!(
                "is {d:?}; expected a duration in (0s, {}]",
                MAX_DURATION.as_secs()
            ),
        ));
    }
    Ok(())
}

fn validate_target(target: &str) -> Result<()> {
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .ok_or_else(|| {
            invalid(
                "target",
                format!("is {target:?}; expected an http:// or https:// URL such as http://127.0.0.1:8080"),
            )
        })?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Err(invalid(
            "target",
            format!("is {target:?}; expected a host after the scheme"),
        ));
    }
    if rest.contains(['?', '#']) {
        return Err(invalid(
            "target",
            format!("is {target:?}; put the query in request.query, not in the target"),
        ));
    }
    Ok(())
}

fn validate_request(r: &RequestSpec) -> Result<()> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if r.method.is_empty() || !r.method.chars().all(token) {
        return Err(invalid(
            "request.method",
            format!(
                "is {:?}; expected an HTTP method such as GET or POST",
                r.method
            ),
        ));
    }
    if !r.path.starts_with('/')
        || r.path.contains(['?', '#'])
        || r.path.contains(char::is_whitespace)
    {
        return Err(invalid(
            "request.path",
            format!(
                "is {:?}; expected an absolute path such as /api (query in request.query)",
                r.path
            ),
        ));
    }
    for (name, value) in &r.headers {
        if name.is_empty() || !name.chars().all(token) {
            return Err(invalid(
                format!("request.headers.{name}"),
                "is not a valid header name",
            ));
        }
        if value
            .chars()
            .any(|c| c == '\r' || c == '\n' || (c.is_control() && c != '\t'))
        {
            return Err(invalid(
                format!("request.headers.{name}"),
                "has a control character in its value",
            ));
        }
    }
    Ok(())
}

fn deserialize_with_path<'de, D: serde::Deserializer<'de>>(de: D) -> Result<LoadPlan>
where
    D::Error: std::fmt::Display,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        PlanError::Parse(if path == "." {
            e.inner().to_string()
        } else {
            format!("at {path}: {}", e.inner())
        })
    })
}

/// Parses a YAML (or JSON, a YAML subset) plan and validates it.
#[cfg(feature = "runner")]
pub fn from_yaml(text: &str) -> Result<LoadPlan> {
    // serde_yaml 0.9 reads externally tagged enums only from YAML tags (`!stages`); going
    // through a JSON value accepts the same documents as JSON (`stages: [...]`).
    let value: serde_json::Value =
        serde_yaml::from_str(text).map_err(|e| PlanError::Parse(e.to_string()))?;
    let plan: LoadPlan = deserialize_with_path(value)?;
    plan.validate()?;
    Ok(plan)
}

/// Serde for [`Duration`]: writes a humantime string (`"1s 500ms"`); reads what
/// [`meshbench_common::duration::parse`] accepts (`"1.5s"` too) or a number of seconds.
pub mod duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    /// Writes a humantime string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Seconds(f64),
    }

    /// Reads a duration string (the one parser of CRDs and flags) or a number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(t) => meshbench_common::duration::parse(&t).map_err(D::Error::custom),
            Repr::Seconds(s) => Duration::try_from_secs_f64(s).map_err(|_| {
                D::Error::custom(format!(
                    "{s} is not a duration; expected non-negative seconds"
                ))
            }),
        }
    }
}

/// Serde for `Option<Duration>` with [`duration_serde`].
pub mod opt_duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a humantime string or null.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_serde::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads a duration string, a number of seconds, or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::duration_serde")] Duration);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_plan(json_profile: &str) -> String {
        format!(
            r#"{{"target":"http://127.0.0.1:1","model":{{"type":"open"}},"profile":{json_profile}}}"#
        )
    }

    #[test]
    fn durations_read_as_in_the_spec() {
        let plan = LoadPlan::from_json(&open_plan(
            r#"{"stages":[{"rate":100,"duration":"1.5s"},{"rate":5,"duration":"0.5m"}]}"#,
        ))
        .unwrap();
        let stages = plan.stages().unwrap();
        assert_eq!(stages[0].duration, Duration::from_millis(1500));
        assert_eq!(stages[1].duration, Duration::from_secs(30));
    }

    #[test]
    fn parses_defaults_and_durations() {
        let plan = LoadPlan::from_json(&open_plan(
            r#"{"stages":[{"rate":100,"duration":"1s 500ms"},{"rate":5,"duration":2}]}"#,
        ))
        .unwrap();
        assert_eq!(plan.request.method, "GET");
        assert_eq!(plan.timeout, Duration::from_secs(10));
        let stages = plan.stages().unwrap();
        assert_eq!(stages[0].duration, Duration::from_millis(1500));
        assert_eq!(stages[0].planned_requests(), 150);
        assert_eq!(stages[1].planned_requests(), 10);
        assert_eq!(stages[1].name, "stage-1");
        assert_eq!(
            plan.model,
            LoadModel::Open {
                max_in_flight: 1000,
                max_lateness: None
            }
        );
    }

    #[test]
    fn sweep_and_warm_up_expand() {
        let mut plan = LoadPlan::from_json(&open_plan(
            r#"{"sweep":{"from":100,"to":300,"step":100,"stepDuration":"2s"}}"#,
        ))
        .unwrap();
        plan.warm_up = Some(WarmUp {
            duration: Duration::from_secs(1),
            rate: None,
            users: None,
        });
        let s = plan.stages().unwrap();
        assert_eq!(s.len(), 4);
        assert!(s[0].warm_up);
        assert_eq!(s[0].rate, Some(100.0));
        assert_eq!(s[3].rate, Some(300.0));
        assert_eq!(s[3].index, 3);
        assert_eq!(plan.total_duration(), Duration::from_secs(7));
    }

    #[test]
    fn instance_shares_add_up() {
        for total in [0u64, 1, 7, 100, 101] {
            let n = 3;
            let sum: u64 = (0..n)
                .map(|index| InstanceSpec { index, count: n }.share_of(total))
                .sum();
            assert_eq!(sum, total);
        }
    }

    #[test]
    fn errors_name_the_field() {
        let err = LoadPlan::from_json(&open_plan(r#"{"stages":[{"rate":-1,"duration":"1s"}]}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("profile.stages[0].rate"), "{err}");
        let err = LoadPlan::from_json(&open_plan(r#"{"stages":[{"users":3,"duration":"1s"}]}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("profile.stages[0].users"), "{err}");
        let err = LoadPlan::from_json(&open_plan(r#"{"stages":[{"rate":1,"duration":"soon"}]}"#))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("profile.stages[0].duration") && err.contains("soon"),
            "{err}"
        );
        let err = LoadPlan::from_json(
            r#"{"target":"ftp://x","model":{"type":"open"},"profile":{"stages":[{"rate":1,"duration":1}]}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("target"), "{err}");
        let err = LoadPlan::from_json(&open_plan(r#"{"stages":[]}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("profile.stages"), "{err}");
    }

    #[test]
    fn round_trips() {
        let plan = LoadPlan::from_json(
            r#"{"target":"http://h:1","model":{"type":"closed","thinkTime":"10ms"},
               "profile":{"stages":[{"users":4,"duration":"1s"}]},
               "request":{"method":"POST","path":"/x","query":{"a":"b"},"headers":{"x-y":"z"},"body":"hi"},
               "instance":{"index":1,"count":2},"startAtUnixMs":5}"#,
        )
        .unwrap();
        let text = serde_json::to_string(&plan).unwrap();
        assert_eq!(LoadPlan::from_json(&text).unwrap(), plan);
        assert_eq!(plan.stages().unwrap()[0].users_for(&plan.instance), 2);
    }
}
