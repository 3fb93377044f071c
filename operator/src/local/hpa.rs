//! The local runtime's Horizontal Pod Autoscaler: the upstream autoscaling/v2 algorithm
//! for a CPU `Utilization` target, as a pure state machine.
//!
//! It follows `pkg/controller/podautoscaler` (Kubernetes 1.34 era) line by line where
//! the outcome can differ, so a local run scales like a cluster would:
//!
//! * `replica_calculator.go` `GetResourceReplicas` + `groupPods`: utilization is
//!   `Σusage·100 / Σrequest` truncated to a whole percent; the ratio is that over the
//!   target; pods being deleted or failed are dropped, pending pods and pods whose CPU
//!   sample may come from their start-up burst are "unready", pods without a sample are
//!   "missing"; the simple case is `ceil(ratio × readyPods)`, otherwise missing pods count
//!   as 0 % (scale up) or `max(100, target)` % (scale down), unready pods as 0 % (scale up
//!   only), the ratio is recomputed and the proposal dropped if it is within tolerance or
//!   changes direction.
//! * `horizontal.go` `reconcileAutoscaler`: replicas 0 disables scaling; a count outside
//!   `[min, max]` is brought back first; with **no** `behavior` the controller runs its
//!   legacy normalization (max recommendation over the 5-minute downscale window, scale up
//!   by at most `max(2 × current, 4)` per sync); with a `behavior` it runs the
//!   stabilization windows and rate policies, after filling unset fields like the API
//!   server's `GenerateHPAScaleUpRules`/`GenerateHPAScaleDownRules`.
//!
//! No I/O and no clock: the caller passes `now` (seconds on its own monotonic clock) and
//! calls [`Hpa::sync`] every [`SYNC_PERIOD`]; every [`Decision`] carries its inputs and the
//! upstream reason so it can be logged and recorded as samples.

use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior,
};
use serde::Serialize;

/// The controller's sync period (`--horizontal-pod-autoscaler-sync-period`).
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// `--horizontal-pod-autoscaler-tolerance`.
pub const DEFAULT_TOLERANCE: f64 = 0.1;
/// `--horizontal-pod-autoscaler-cpu-initialization-period`.
pub const DEFAULT_CPU_INITIALIZATION_PERIOD: Duration = Duration::from_secs(300);
/// `--horizontal-pod-autoscaler-initial-readiness-delay`.
pub const DEFAULT_INITIAL_READINESS_DELAY: Duration = Duration::from_secs(30);
/// `--horizontal-pod-autoscaler-downscale-stabilization`.
pub const DEFAULT_DOWNSCALE_STABILIZATION: Duration = Duration::from_secs(300);

/// Upstream API validation bounds (`pkg/apis/autoscaling/validation`).
const MAX_PERIOD_SECONDS: i32 = 1800;
const MAX_STABILIZATION_WINDOW_SECONDS: i32 = 3600;

/// Errors of this module: only configuration can be wrong; a sync never fails (metric
/// problems are reported in the [`Decision`], as upstream reports them in conditions).
#[derive(Debug, thiserror::Error)]
pub enum HpaError {
    /// A configuration field has a value the upstream API would reject.
    #[error("invalid HPA configuration: {field} = {value}: expected {expected}")]
    InvalidConfig {
        /// Field path, e.g. `behavior.scaleUp.policies[0].type`.
        field: String,
        /// The offending value as written.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
}

/// Result alias of this module.
pub type Result<T, E = HpaError> = std::result::Result<T, E>;

/// Why the CPU metric gives no replica count this sync (upstream's
/// `FailedGetResourceMetric` messages).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum MetricError {
    /// The selector matched no pods.
    #[error("no pods returned by selector while calculating replica count")]
    NoPods,
    /// A pod's usage sample is negative or not a number.
    #[error("pod {pod}: CPU usage {usage_millis} is not a non-negative number of millicores")]
    BadUsage {
        /// The pod.
        pod: String,
        /// Its sampled usage.
        usage_millis: f64,
    },
    /// No pod had a usable sample.
    #[error("did not receive metrics for targeted pods (pods might be unready)")]
    NoReadyPods,
    /// A pod has no CPU request, so utilization is undefined.
    #[error("missing request for cpu in pod {pod}")]
    MissingRequest {
        /// The pod.
        pod: String,
    },
    /// The samples do not add up to a utilization.
    #[error("no metrics returned matched known pods")]
    NoMatch,
}

fn invalid(field: impl Into<String>, value: impl ToString, expected: &'static str) -> HpaError {
    HpaError::InvalidConfig {
        field: field.into(),
        value: value.to_string(),
        expected,
    }
}

/// Everything the controller knows about one HPA: its spec fields plus the controller
/// flags that shape the algorithm (defaults are the upstream defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct HpaConfig {
    /// `spec.minReplicas` (≥ 1: scale-to-zero is not possible with a CPU metric).
    pub min_replicas: u32,
    /// `spec.maxReplicas`.
    pub max_replicas: u32,
    /// `metrics[].resource.target.averageUtilization` for `cpu`, percent of the request.
    pub target_utilization_percent: u32,
    /// `spec.behavior`; `None` selects the controller's legacy normalization, exactly as
    /// upstream does for an HPA without `behavior`.
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
    /// Controller tolerance; `behavior.scaleUp/scaleDown.tolerance` override it per
    /// direction.
    pub tolerance: f64,
    /// Window after a pod's start in which its CPU sample may be its start-up burst.
    pub cpu_initialization_period: Duration,
    /// Window after a pod's start in which an unready transition means "never ready".
    pub initial_readiness_delay: Duration,
    /// Scale-down stabilization of the legacy path, and of `behavior.scaleDown` when it
    /// leaves `stabilizationWindowSeconds` unset.
    pub downscale_stabilization: Duration,
}

impl HpaConfig {
    /// A configuration from the spec fields (as `i32`, like the API and
    /// `meshbench_crds::resolve::ResolvedAutoscaling`) with upstream controller defaults.
    pub fn new(
        min_replicas: i32,
        max_replicas: i32,
        target_utilization_percent: i32,
        behavior: Option<HorizontalPodAutoscalerBehavior>,
    ) -> Result<Self> {
        let positive = |field: &str, v: i32| {
            u32::try_from(v)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| invalid(field, v, "an integer ≥ 1"))
        };
        let config = HpaConfig {
            min_replicas: positive("minReplicas", min_replicas)?,
            max_replicas: positive("maxReplicas", max_replicas)?,
            target_utilization_percent: positive(
                "targetCPUUtilization",
                target_utilization_percent,
            )?,
            behavior,
            tolerance: DEFAULT_TOLERANCE,
            cpu_initialization_period: DEFAULT_CPU_INITIALIZATION_PERIOD,
            initial_readiness_delay: DEFAULT_INITIAL_READINESS_DELAY,
            downscale_stabilization: DEFAULT_DOWNSCALE_STABILIZATION,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if self.min_replicas < 1 {
            return Err(invalid("minReplicas", self.min_replicas, "an integer ≥ 1"));
        }
        if self.max_replicas < self.min_replicas {
            return Err(invalid(
                "maxReplicas",
                self.max_replicas,
                "an integer ≥ minReplicas",
            ));
        }
        if self.target_utilization_percent < 1 {
            return Err(invalid(
                "targetCPUUtilization",
                self.target_utilization_percent,
                "an integer ≥ 1",
            ));
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(invalid("tolerance", self.tolerance, "a finite number ≥ 0"));
        }
        if self.downscale_stabilization.as_secs() > MAX_STABILIZATION_WINDOW_SECONDS as u64 {
            return Err(invalid(
                "downscaleStabilization",
                format!("{:?}", self.downscale_stabilization),
                "at most 3600 s",
            ));
        }
        if let Some(b) = &self.behavior {
            ResolvedBehavior::resolve(b, self.downscale_stabilization, self.tolerance)?;
        }
        Ok(())
    }
}

/// How one policy limits the change over its period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PolicyKind {
    /// `type: Pods`: at most `value` pods per period.
    Pods,
    /// `type: Percent`: at most `value` % of the replicas at the start of the period.
    Percent,
}

/// One `HPAScalingPolicy`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ScalingPolicy {
    /// `type`.
    pub kind: PolicyKind,
    /// `value` (> 0).
    pub value: u32,
    /// `periodSeconds` (1–1800).
    pub period_seconds: u32,
}

/// `selectPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SelectPolicy {
    /// The policy allowing the largest change (the default).
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// One direction's `HPAScalingRules` with every field filled, as the controller sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingRules {
    /// `stabilizationWindowSeconds`.
    pub stabilization_window_seconds: u32,
    /// `selectPolicy`.
    pub select_policy: SelectPolicy,
    /// `policies` (never empty).
    pub policies: Vec<ScalingPolicy>,
    /// `tolerance`, or the controller's when unset.
    pub tolerance: f64,
}

/// A `behavior` with defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedBehavior {
    /// `scaleUp`.
    pub scale_up: ScalingRules,
    /// `scaleDown`.
    pub scale_down: ScalingRules,
}

impl ResolvedBehavior {
    /// Fills a spec `behavior` like the API server's defaulting
    /// (`GenerateHPAScaleUpRules`/`GenerateHPAScaleDownRules`: each of `policies`,
    /// `selectPolicy`, `stabilizationWindowSeconds`, `tolerance` the spec sets replaces
    /// the default; the rest is kept) and the controller's
    /// `maybeInitScaleDownStabilizationWindow`, then validates it like the API would.
    ///
    /// Defaults: scale up — window 0 s, `Max` of {4 pods, 100 %} per 15 s; scale down —
    /// window `downscale_stabilization` (300 s), 100 % per 15 s.
    pub fn resolve(
        behavior: &HorizontalPodAutoscalerBehavior,
        downscale_stabilization: Duration,
        tolerance: f64,
    ) -> Result<Self> {
        let up_default = ScalingRules {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![
                ScalingPolicy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period_seconds: 15,
                },
                ScalingPolicy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period_seconds: 15,
                },
            ],
            tolerance,
        };
        let down_default = ScalingRules {
            // Bounded by HpaConfig::validate, so the cast cannot truncate.
            stabilization_window_seconds: downscale_stabilization.as_secs() as u32,
            select_policy: SelectPolicy::Max,
            policies: vec![ScalingPolicy {
                kind: PolicyKind::Percent,
                value: 100,
                period_seconds: 15,
            }],
            tolerance,
        };
        Ok(ResolvedBehavior {
            scale_up: fill_rules("behavior.scaleUp", behavior.scale_up.as_ref(), up_default)?,
            scale_down: fill_rules(
                "behavior.scaleDown",
                behavior.scale_down.as_ref(),
                down_default,
            )?,
        })
    }
}

fn fill_rules(
    path: &str,
    from: Option<&HPAScalingRules>,
    mut to: ScalingRules,
) -> Result<ScalingRules> {
    let Some(from) = from else {
        return Ok(to);
    };
    if let Some(s) = &from.select_policy {
        to.select_policy = match s.as_str() {
            "Max" => SelectPolicy::Max,
            "Min" => SelectPolicy::Min,
            "Disabled" => SelectPolicy::Disabled,
            _ => {
                return Err(invalid(
                    format!("{path}.selectPolicy"),
                    s,
                    "one of Max, Min, Disabled",
                ));
            }
        };
    }
    if let Some(w) = from.stabilization_window_seconds {
        to.stabilization_window_seconds = u32::try_from(w)
            .ok()
            .filter(|w| *w <= MAX_STABILIZATION_WINDOW_SECONDS as u32)
            .ok_or_else(|| {
                invalid(
                    format!("{path}.stabilizationWindowSeconds"),
                    w,
                    "an integer from 0 to 3600",
                )
            })?;
    }
    if let Some(policies) = &from.policies {
        if policies.is_empty() {
            return Err(invalid(
                format!("{path}.policies"),
                "[]",
                "at least one policy",
            ));
        }
        to.policies = policies
            .iter()
            .enumerate()
            .map(|(i, p)| policy(&format!("{path}.policies[{i}]"), p))
            .collect::<Result<_>>()?;
    }
    if let Some(q) = &from.tolerance {
        to.tolerance = parse_quantity(&q.0).filter(|t| *t >= 0.0).ok_or_else(|| {
            invalid(
                format!("{path}.tolerance"),
                &q.0,
                "a non-negative quantity such as 0.05 or 50m",
            )
        })?;
    }
    Ok(to)
}

fn policy(path: &str, p: &HPAScalingPolicy) -> Result<ScalingPolicy> {
    let kind = match p.type_.as_str() {
        "Pods" => PolicyKind::Pods,
        "Percent" => PolicyKind::Percent,
        _ => return Err(invalid(format!("{path}.type"), &p.type_, "Pods or Percent")),
    };
    let value = u32::try_from(p.value)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| invalid(format!("{path}.value"), p.value, "an integer ≥ 1"))?;
    let period_seconds = u32::try_from(p.period_seconds)
        .ok()
        .filter(|s| (1..=MAX_PERIOD_SECONDS as u32).contains(s))
        .ok_or_else(|| {
            invalid(
                format!("{path}.periodSeconds"),
                p.period_seconds,
                "an integer from 1 to 1800",
            )
        })?;
    Ok(ScalingPolicy {
        kind,
        value,
        period_seconds,
    })
}

/// Parses the decimal forms of a Kubernetes quantity that make sense for a tolerance
/// (`0.1`, `5e-2`, `50m`, `100u`, `1`), as `AsApproximateFloat64` would read them.
fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let (number, scale) = match s.char_indices().last()? {
        (i, 'm') => (&s[..i], 1e-3),
        (i, 'u') => (&s[..i], 1e-6),
        (i, 'n') => (&s[..i], 1e-9),
        (i, 'k') => (&s[..i], 1e3),
        _ => (s, 1.0),
    };
    if number.is_empty()
        || !number
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e' | 'E'))
    {
        return None;
    }
    let v = number.parse::<f64>().ok()? * scale;
    v.is_finite().then_some(v)
}

/// Pod phase, as in `PodStatus.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PodPhase {
    /// Not all containers started; counted as unready.
    Pending,
    /// Running.
    Running,
    /// All containers exited 0 (not excluded upstream either).
    Succeeded,
    /// Failed; excluded.
    Failed,
    /// Unknown.
    Unknown,
}

/// The pod's `Ready` condition.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReadyCondition {
    /// `status == "True"`.
    pub ready: bool,
    /// `lastTransitionTime`, seconds on the caller's clock.
    pub last_transition_time: f64,
}

/// One CPU sample as metrics-server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuMetric {
    /// Average usage over the window, millicores (rounded up to whole millicores, as
    /// `Quantity.MilliValue()` does).
    pub usage_millis: f64,
    /// End of the sample window, seconds on the caller's clock.
    pub timestamp: f64,
    /// Length of the sample window, seconds (metrics-server's default resolution is 15 s).
    pub window: f64,
}

/// What the controller sees of one pod matching the target's selector.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PodSample {
    /// Pod name (only used in messages).
    pub name: String,
    /// Phase.
    pub phase: PodPhase,
    /// `metadata.deletionTimestamp` is set: excluded.
    pub terminating: bool,
    /// `status.startTime`, seconds on the caller's clock; `None` counts as unready.
    pub start_time: Option<f64>,
    /// The `Ready` condition; `None` counts as unready.
    pub ready: Option<ReadyCondition>,
    /// Latest CPU sample; `None` = missing metric.
    pub cpu: Option<CpuMetric>,
    /// Sum of the containers' CPU requests, millicores; 0 means "no request", which makes
    /// the computation fail like upstream's `missing request for cpu`.
    pub cpu_request_millis: u64,
}

impl PodSample {
    /// A running pod, started at `start_time` and ready since `ready_since`, without a
    /// CPU sample yet (add one with [`PodSample::with_cpu`]).
    pub fn running(
        name: impl Into<String>,
        cpu_request_millis: u64,
        start_time: f64,
        ready_since: f64,
    ) -> Self {
        PodSample {
            name: name.into(),
            phase: PodPhase::Running,
            terminating: false,
            start_time: Some(start_time),
            ready: Some(ReadyCondition {
                ready: true,
                last_transition_time: ready_since,
            }),
            cpu: None,
            cpu_request_millis,
        }
    }

    /// The same pod with a CPU sample of `usage_millis` over `[timestamp - window, timestamp]`.
    pub fn with_cpu(mut self, usage_millis: f64, timestamp: f64, window: f64) -> Self {
        self.cpu = Some(CpuMetric {
            usage_millis,
            timestamp,
            window,
        });
        self
    }
}

/// Why the HPA decided what it decided: the upstream condition reasons, plus a few
/// names for outcomes upstream only shows in events or logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// Target has 0 replicas: autoscaling is off (`ScalingActive=False ScalingDisabled`).
    ScalingDisabled,
    /// Replicas above `maxReplicas`: brought down to it without looking at metrics.
    AboveMaxReplicas,
    /// Replicas below `minReplicas`: brought up to it without looking at metrics.
    BelowMinReplicas,
    /// No usable metric (`ScalingActive=False FailedGetResourceMetric`): no change.
    FailedGetResourceMetric,
    /// `now` was not a finite number: nothing was computed or recorded.
    InvalidInput,
    /// The usage ratio is within tolerance: the recommendation is the current count.
    WithinTolerance,
    /// Filling in missing/unready pods reversed the direction (or made the count move
    /// against it): the recommendation is the current count.
    DirectionChanged,
    /// A lower recent recommendation within the scale-up window held the count down.
    ScaleUpStabilized,
    /// A higher recent recommendation within the scale-down window held the count up.
    ScaleDownStabilized,
    /// Scale-up rate limit (policies, or `max(2 × current, 4)` without behavior).
    ScaleUpLimit,
    /// Scale-down rate limit (policies or `Disabled`).
    ScaleDownLimit,
    /// Capped at `maxReplicas`.
    TooManyReplicas,
    /// Raised to `minReplicas`.
    TooFewReplicas,
    /// The recommendation was applied as is.
    DesiredWithinRange,
}

impl Reason {
    /// The name used in logs and samples.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ScalingDisabled => "ScalingDisabled",
            Reason::AboveMaxReplicas => "AboveMaxReplicas",
            Reason::BelowMinReplicas => "BelowMinReplicas",
            Reason::FailedGetResourceMetric => "FailedGetResourceMetric",
            Reason::InvalidInput => "InvalidInput",
            Reason::WithinTolerance => "WithinTolerance",
            Reason::DirectionChanged => "DirectionChanged",
            Reason::ScaleUpStabilized => "ScaleUpStabilized",
            Reason::ScaleDownStabilized => "ScaleDownStabilized",
            Reason::ScaleUpLimit => "ScaleUpLimit",
            Reason::ScaleDownLimit => "ScaleDownLimit",
            Reason::TooManyReplicas => "TooManyReplicas",
            Reason::TooFewReplicas => "TooFewReplicas",
            Reason::DesiredWithinRange => "DesiredWithinRange",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one sync, with its inputs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// `now` as passed to [`Hpa::sync`].
    pub time: f64,
    /// Replicas of the target at the sync.
    pub current: u32,
    /// The metric's proposal, before stabilization and limits (`current` when the
    /// metric could not be computed or scaling is disabled).
    pub recommendation: u32,
    /// After the stabilization window, before rate limits and bounds.
    pub stabilized: u32,
    /// What the target should be scaled to; `desired != current` means scale.
    pub desired: u32,
    /// Average utilization over the pods with a usable sample, whole percent of request.
    pub utilization_percent: Option<u32>,
    /// Average usage over the same pods, millicores.
    pub average_usage_millis: Option<i64>,
    /// `utilization / target` before missing/unready pods were filled in.
    pub usage_ratio: Option<f64>,
    /// Pods whose sample was used.
    pub ready_pods: u32,
    /// Pods without a sample.
    pub missing_metrics: u32,
    /// Pending or not-yet-ready pods (set aside; 0 % on scale up).
    pub unready_pods: u32,
    /// Pods being deleted or failed (not counted at all).
    pub ignored_pods: u32,
    /// The deciding reason.
    pub reason: Reason,
    /// A human-readable explanation (upstream's message where there is one).
    pub message: String,
}

impl Decision {
    /// A decision to keep `current`, before anything was looked at (reason
    /// [`Reason::InvalidInput`] until a sync sets one).
    fn unchanged(now: f64, current: u32) -> Self {
        Decision {
            time: now,
            current,
            recommendation: current,
            stabilized: current,
            desired: current,
            utilization_percent: None,
            average_usage_millis: None,
            usage_ratio: None,
            ready_pods: 0,
            missing_metrics: 0,
            unready_pods: 0,
            ignored_pods: 0,
            reason: Reason::InvalidInput,
            message: String::new(),
        }
    }

    /// Whether the target must be resized.
    pub fn rescale(&self) -> bool {
        self.desired != self.current
    }
}

#[derive(Debug, Clone, Copy)]
struct TimestampedRecommendation {
    recommendation: u32,
    time: f64,
}

#[derive(Debug, Clone, Copy)]
struct ScaleEvent {
    change: u32,
    time: f64,
    outdated: bool,
}

/// One HPA: its configuration and the controller's per-HPA memory (recommendations for
/// the stabilization windows, scale events for the rate policies).
#[derive(Debug, Clone)]
pub struct Hpa {
    config: HpaConfig,
    behavior: Option<ResolvedBehavior>,
    tolerances: Tolerances,
    recommendations: Vec<TimestampedRecommendation>,
    scale_up_events: Vec<ScaleEvent>,
    scale_down_events: Vec<ScaleEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Tolerances {
    scale_down: f64,
    scale_up: f64,
}

impl Tolerances {
    fn is_within(self, ratio: f64) -> bool {
        ((1.0 - self.scale_down)..=(1.0 + self.scale_up)).contains(&ratio)
    }
}

/// What the replica calculator concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Scale,
    WithinTolerance,
    DirectionChanged,
}

#[derive(Debug, Clone, Copy, Default)]
struct Groups {
    ready: u32,
    unready: u32,
    missing: u32,
    ignored: u32,
}

#[derive(Debug, Clone)]
struct MetricOutcome {
    replicas: u32,
    utilization: u32,
    average_usage_millis: i64,
    usage_ratio: f64,
    verdict: Verdict,
}

/// `(usage, request)` of one pod in the ratio, millicores.
type Entry = (i64, i64);

/// The pods as `groupPods` sorts them: counts per group, `(usage, request)` of the ready
/// pods and the requests of the unready and missing ones (millicores).
#[derive(Debug, Default)]
struct GroupedPods {
    groups: Groups,
    ready: Vec<Entry>,
    unready: Vec<i64>,
    missing: Vec<i64>,
    /// The first pod without a CPU request (`calculatePodRequests` fails on it).
    bad_request: Option<String>,
}

impl Hpa {
    /// Validates `config` (including `behavior`) and starts with an empty history.
    pub fn new(config: HpaConfig) -> Result<Self> {
        config.validate()?;
        let behavior = config
            .behavior
            .as_ref()
            .map(|b| ResolvedBehavior::resolve(b, config.downscale_stabilization, config.tolerance))
            .transpose()?;
        // Per-direction tolerances only exist inside a behavior (`tolerancesForHpa`).
        let tolerances = match &behavior {
            Some(b) => Tolerances {
                scale_down: b.scale_down.tolerance,
                scale_up: b.scale_up.tolerance,
            },
            None => Tolerances {
                scale_down: config.tolerance,
                scale_up: config.tolerance,
            },
        };
        Ok(Hpa {
            config,
            behavior,
            tolerances,
            recommendations: Vec::new(),
            scale_up_events: Vec::new(),
            scale_down_events: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HpaConfig {
        &self.config
    }

    /// The behavior with defaults filled in, `None` on the legacy path.
    pub fn behavior(&self) -> Option<&ResolvedBehavior> {
        self.behavior.as_ref()
    }

    /// One controller sync (`reconcileAutoscaler`) at `now` for a target currently at
    /// `current_replicas` whose selector matches `pods`. If the returned decision says
    /// to rescale, the caller is expected to resize the target to `desired`: the HPA
    /// records that scale event for its rate policies now, as upstream does after a
    /// successful scale update.
    pub fn sync(&mut self, now: f64, current_replicas: u32, pods: &[PodSample]) -> Decision {
        let current = current_replicas;
        let mut decision = Decision::unchanged(now, current);
        if !now.is_finite() {
            decision.message = format!("sync time must be a finite number of seconds, got {now}");
            return decision;
        }
        if self.recommendations.is_empty() {
            // recordInitialRecommendation: the count at the first sync is a recommendation.
            self.recommendations.push(TimestampedRecommendation {
                recommendation: current,
                time: now,
            });
        }
        let (min, max) = (self.config.min_replicas, self.config.max_replicas);

        if current == 0 {
            decision.desired = 0;
            decision.reason = Reason::ScalingDisabled;
            decision.message =
                "scaling is disabled since the replica count of the target is zero".into();
            return decision;
        }
        if current > max {
            decision.desired = max;
            decision.reason = Reason::AboveMaxReplicas;
            decision.message = format!("current number of replicas above maxReplicas {max}");
        } else if current < min {
            decision.desired = min;
            decision.reason = Reason::BelowMinReplicas;
            decision.message = format!("current number of replicas below minReplicas {min}");
        } else {
            self.decide_on_metric(now, current, pods, &mut decision);
        }

        if decision.desired != current {
            self.store_scale_event(now, current, decision.desired);
        }
        decision
    }

    /// The in-range part of `reconcileAutoscaler`: the metric's proposal
    /// (`computeReplicasForMetrics`), then stabilization and rate limits
    /// (`normalizeDesiredReplicas` or its behavior variant). A metric that cannot be
    /// computed leaves `desired` at `current`.
    fn decide_on_metric(
        &mut self,
        now: f64,
        current: u32,
        pods: &[PodSample],
        decision: &mut Decision,
    ) {
        let (groups, outcome) = self.resource_replicas(now, current, pods);
        decision.ready_pods = groups.ready;
        decision.unready_pods = groups.unready;
        decision.missing_metrics = groups.missing;
        decision.ignored_pods = groups.ignored;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                decision.reason = Reason::FailedGetResourceMetric;
                decision.message = format!(
                    "the HPA was unable to compute the replica count: \
                     failed to get cpu utilization: {e}"
                );
                return;
            }
        };
        decision.utilization_percent = Some(outcome.utilization);
        decision.average_usage_millis = Some(outcome.average_usage_millis);
        decision.usage_ratio = Some(outcome.usage_ratio);
        decision.recommendation = outcome.replicas;

        let (stabilized, stabilize_reason, desired, limit_reason) = match &self.behavior {
            None => self.normalize_legacy(now, current, outcome.replicas),
            Some(b) => {
                let b = b.clone();
                self.normalize_with_behavior(now, current, outcome.replicas, &b)
            }
        };
        decision.stabilized = stabilized;
        decision.desired = desired;
        let target = self.config.target_utilization_percent;
        let metric = format!(
            "cpu utilization {}% of request (target {target}%), ratio {:.3}, \
             {} ready / {} missing / {} unready / {} ignored pods",
            outcome.utilization,
            outcome.usage_ratio,
            groups.ready,
            groups.missing,
            groups.unready,
            groups.ignored
        );
        let (reason, why) = deciding_reason(
            &outcome,
            stabilized,
            stabilize_reason,
            desired,
            limit_reason,
        );
        decision.reason = reason;
        decision.message = format!("{why}; {metric}");
    }

    /// `groupPods` + `GetResourceReplicas`.
    fn resource_replicas(
        &self,
        now: f64,
        current: u32,
        pods: &[PodSample],
    ) -> (Groups, std::result::Result<MetricOutcome, MetricError>) {
        if pods.is_empty() {
            return (Groups::default(), Err(MetricError::NoPods));
        }
        let grouped = match self.group_pods(now, pods) {
            Ok(g) => g,
            Err((groups, e)) => return (groups, Err(e)),
        };
        let groups = grouped.groups;
        (groups, self.replicas_for(current, grouped))
    }

    /// `groupPods` (with `calculatePodRequests`' check for a missing request): sorts the
    /// pods into ready (with their sample), unready, missing and ignored. An unusable
    /// sample is an error, returned with the groups counted so far.
    fn group_pods(
        &self,
        now: f64,
        pods: &[PodSample],
    ) -> std::result::Result<GroupedPods, (Groups, MetricError)> {
        let init_period = self.config.cpu_initialization_period.as_secs_f64();
        let readiness_delay = self.config.initial_readiness_delay.as_secs_f64();
        let mut g = GroupedPods::default();
        for pod in pods {
            // calculateRequests covers every listed pod, even the excluded ones.
            if pod.cpu_request_millis == 0 && g.bad_request.is_none() {
                g.bad_request = Some(pod.name.clone());
            }
            let request = i64::try_from(pod.cpu_request_millis).unwrap_or(i64::MAX);
            if pod.terminating || pod.phase == PodPhase::Failed {
                g.groups.ignored += 1;
                continue;
            }
            if pod.phase == PodPhase::Pending {
                g.groups.unready += 1;
                g.unready.push(request);
                continue;
            }
            let Some(metric) = pod.cpu else {
                g.groups.missing += 1;
                g.missing.push(request);
                continue;
            };
            if !(metric.usage_millis.is_finite() && metric.usage_millis >= 0.0) {
                return Err((
                    g.groups,
                    MetricError::BadUsage {
                        pod: pod.name.clone(),
                        usage_millis: metric.usage_millis,
                    },
                ));
            }
            let is_unready = match (pod.ready, pod.start_time) {
                (Some(cond), Some(start)) => {
                    if start + init_period > now {
                        // The sample may span the start-up burst: use it only once a full
                        // window was collected after the pod became ready.
                        !cond.ready || metric.timestamp < cond.last_transition_time + metric.window
                    } else {
                        // Unready and never ready since start: set aside.
                        !cond.ready && start + readiness_delay > cond.last_transition_time
                    }
                }
                _ => true,
            };
            if is_unready {
                g.groups.unready += 1;
                g.unready.push(request);
                continue;
            }
            g.groups.ready += 1;
            // Saturating float-to-int cast; MilliValue() rounds up.
            g.ready.push((metric.usage_millis.ceil() as i64, request));
        }
        Ok(g)
    }

    /// `GetResourceReplicas` after `groupPods`: the ratio of the ready pods, and when
    /// pods are missing or unready, the ratio again with them filled in.
    fn replicas_for(
        &self,
        current: u32,
        grouped: GroupedPods,
    ) -> std::result::Result<MetricOutcome, MetricError> {
        let GroupedPods {
            groups,
            ready,
            unready,
            missing,
            bad_request,
        } = grouped;
        if ready.is_empty() {
            return Err(MetricError::NoReadyPods);
        }
        if let Some(name) = bad_request {
            return Err(MetricError::MissingRequest { pod: name });
        }
        let target = i64::from(self.config.target_utilization_percent);
        let Some((usage_ratio, utilization, average)) = utilization_ratio(&ready, target) else {
            return Err(MetricError::NoMatch);
        };
        let outcome = |replicas: u32, verdict| MetricOutcome {
            replicas,
            utilization,
            average_usage_millis: average,
            usage_ratio,
            verdict,
        };

        let scale_up_with_unready = !unready.is_empty() && usage_ratio > 1.0;
        if !scale_up_with_unready && missing.is_empty() {
            if self.tolerances.is_within(usage_ratio) {
                return Ok(outcome(current, Verdict::WithinTolerance));
            }
            let replicas = ceil_replicas(usage_ratio * f64::from(groups.ready));
            return Ok(outcome(replicas, Verdict::Scale));
        }

        let mut entries = ready;
        if usage_ratio < 1.0 {
            // Scale down: a missing pod may be busy; assume 100 % (or the target if higher).
            let fallback = target.max(100);
            entries.extend(
                missing
                    .iter()
                    .map(|r| (r.saturating_mul(fallback) / 100, *r)),
            );
        } else if usage_ratio > 1.0 {
            // Scale up: a missing pod may be idle; assume 0 %.
            entries.extend(missing.iter().map(|r| (0, *r)));
        }
        if scale_up_with_unready {
            entries.extend(unready.iter().map(|r| (0, *r)));
        }
        let Some((new_ratio, _, _)) = utilization_ratio(&entries, target) else {
            return Err(MetricError::NoMatch);
        };
        if self.tolerances.is_within(new_ratio) {
            return Ok(outcome(current, Verdict::WithinTolerance));
        }
        if (usage_ratio < 1.0 && new_ratio > 1.0) || (usage_ratio > 1.0 && new_ratio < 1.0) {
            return Ok(outcome(current, Verdict::DirectionChanged));
        }
        let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        let replicas = ceil_replicas(new_ratio * f64::from(count));
        if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
            return Ok(outcome(current, Verdict::DirectionChanged));
        }
        Ok(outcome(replicas, Verdict::Scale))
    }

    /// `normalizeDesiredReplicas` (no behavior): returns (stabilized, stabilization
    /// reason, desired, limit reason).
    fn normalize_legacy(
        &mut self,
        now: f64,
        current: u32,
        proposal: u32,
    ) -> (u32, Option<Reason>, u32, Reason) {
        // stabilizeRecommendation: max over the downscale window, for both directions.
        let cutoff = now - self.config.downscale_stabilization.as_secs_f64();
        let mut stabilized = proposal;
        let mut old = None;
        for (i, rec) in self.recommendations.iter().enumerate() {
            if rec.time < cutoff {
                old = Some(i);
            } else if rec.recommendation > stabilized {
                stabilized = rec.recommendation;
            }
        }
        self.remember(old, proposal, now);

        // convertDesiredReplicasWithRules.
        let (min, max) = (self.config.min_replicas, self.config.max_replicas);
        let scale_up_limit = current.saturating_mul(2).max(4);
        let (max_allowed, over_reason) = if max > scale_up_limit {
            (scale_up_limit, Reason::ScaleUpLimit)
        } else {
            (max, Reason::TooManyReplicas)
        };
        let (desired, limit) = if stabilized < min {
            (min, Reason::TooFewReplicas)
        } else if stabilized > max_allowed {
            (max_allowed, over_reason)
        } else {
            (stabilized, Reason::DesiredWithinRange)
        };
        (
            stabilized,
            Some(Reason::ScaleDownStabilized),
            desired,
            limit,
        )
    }

    /// `normalizeDesiredReplicasWithBehaviors`.
    fn normalize_with_behavior(
        &mut self,
        now: f64,
        current: u32,
        proposal: u32,
        behavior: &ResolvedBehavior,
    ) -> (u32, Option<Reason>, u32, Reason) {
        // stabilizeRecommendationWithBehaviors: the lowest recommendation of the scale-up
        // window is a floor, the highest of the scale-down window a ceiling.
        let up_cutoff = now - f64::from(behavior.scale_up.stabilization_window_seconds);
        let down_cutoff = now - f64::from(behavior.scale_down.stabilization_window_seconds);
        let (mut up, mut down) = (proposal, proposal);
        let mut old = None;
        for (i, rec) in self.recommendations.iter().enumerate() {
            if rec.time > up_cutoff {
                up = up.min(rec.recommendation);
            }
            if rec.time > down_cutoff {
                down = down.max(rec.recommendation);
            }
            if rec.time < up_cutoff && rec.time < down_cutoff {
                old = Some(i);
            }
        }
        let stabilized = current.max(up).min(down);
        self.remember(old, proposal, now);
        let stabilize_reason = if proposal >= current {
            Reason::ScaleUpStabilized
        } else {
            Reason::ScaleDownStabilized
        };

        // convertDesiredReplicasWithBehaviorRate.
        let (min, max) = (self.config.min_replicas, self.config.max_replicas);
        let cur = i64::from(current);
        let (desired, limit) = if stabilized > current {
            let limit = scale_up_limit(
                cur,
                now,
                &self.scale_up_events,
                &self.scale_down_events,
                &behavior.scale_up,
            )
            .max(cur);
            let (max_allowed, reason) = if i64::from(max) > limit {
                (limit, Reason::ScaleUpLimit)
            } else {
                (i64::from(max), Reason::TooManyReplicas)
            };
            if i64::from(stabilized) > max_allowed {
                (to_u32(max_allowed), reason)
            } else {
                (stabilized, Reason::DesiredWithinRange)
            }
        } else if stabilized < current {
            let limit = scale_down_limit(
                cur,
                now,
                &self.scale_up_events,
                &self.scale_down_events,
                &behavior.scale_down,
            )
            .min(cur);
            let (min_allowed, reason) = if i64::from(min) < limit {
                (limit, Reason::ScaleDownLimit)
            } else {
                (i64::from(min), Reason::TooFewReplicas)
            };
            if i64::from(stabilized) < min_allowed {
                (to_u32(min_allowed), reason)
            } else {
                (stabilized, Reason::DesiredWithinRange)
            }
        } else {
            (stabilized, Reason::DesiredWithinRange)
        };
        (stabilized, Some(stabilize_reason), desired, limit)
    }

    /// Records the unstabilized recommendation, reusing one expired slot like upstream.
    fn remember(&mut self, old: Option<usize>, recommendation: u32, now: f64) {
        let rec = TimestampedRecommendation {
            recommendation,
            time: now,
        };
        match old {
            Some(i) => self.recommendations[i] = rec,
            None => self.recommendations.push(rec),
        }
    }

    /// `storeScaleEvent`: only with a behavior, reusing slots older than the direction's
    /// longest policy period.
    fn store_scale_event(&mut self, now: f64, previous: u32, new: u32) {
        let Some(behavior) = &self.behavior else {
            return;
        };
        let (events, rules, change) = if new > previous {
            (
                &mut self.scale_up_events,
                &behavior.scale_up,
                new - previous,
            )
        } else {
            (
                &mut self.scale_down_events,
                &behavior.scale_down,
                previous - new,
            )
        };
        let longest = rules
            .policies
            .iter()
            .map(|p| p.period_seconds)
            .max()
            .unwrap_or(0);
        let cutoff = now - f64::from(longest);
        let mut old = None;
        for (i, e) in events.iter_mut().enumerate() {
            if e.time < cutoff {
                e.outdated = true;
            }
            if e.outdated {
                old = Some(i);
            }
        }
        let event = ScaleEvent {
            change,
            time: now,
            outdated: false,
        };
        match old {
            Some(i) => events[i] = event,
            None => events.push(event),
        }
    }
}

/// `GetResourceUtilizationRatio`: (ratio, whole-percent utilization, average millis);
/// `None` when the requests sum to zero.
fn utilization_ratio(entries: &[Entry], target: i64) -> Option<(f64, u32, i64)> {
    let (usage, requests) = entries.iter().fold((0i64, 0i64), |(u, r), (eu, er)| {
        (u.saturating_add(*eu), r.saturating_add(*er))
    });
    if requests == 0 || entries.is_empty() {
        return None;
    }
    let utilization = usage.saturating_mul(100) / requests;
    let ratio = utilization as f64 / target as f64;
    let average = usage / entries.len() as i64;
    Some((
        ratio,
        u32::try_from(utilization).unwrap_or(u32::MAX),
        average,
    ))
}

/// `int32(math.Ceil(x))`, saturating instead of wrapping.
fn ceil_replicas(x: f64) -> u32 {
    x.ceil() as u32
}

fn to_u32(x: i64) -> u32 {
    u32::try_from(x.max(0)).unwrap_or(u32::MAX)
}

/// `getReplicasChangePerPeriod`: events strictly inside the last `period` seconds.
fn change_in_period(events: &[ScaleEvent], now: f64, period: u32) -> i64 {
    let cutoff = now - f64::from(period);
    events
        .iter()
        .filter(|e| e.time > cutoff)
        .map(|e| i64::from(e.change))
        .sum()
}

/// `calculateScaleUpLimitWithScalingRules`.
fn scale_up_limit(
    current: i64,
    now: f64,
    up_events: &[ScaleEvent],
    down_events: &[ScaleEvent],
    rules: &ScalingRules,
) -> i64 {
    let pick: fn(i64, i64) -> i64 = match rules.select_policy {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => i64::min,
        SelectPolicy::Max => i64::max,
    };
    let mut result = match rules.select_policy {
        SelectPolicy::Min => i64::from(i32::MAX),
        _ => i64::from(i32::MIN),
    };
    for p in &rules.policies {
        let start = current - change_in_period(up_events, now, p.period_seconds)
            + change_in_period(down_events, now, p.period_seconds);
        let proposed = match p.kind {
            PolicyKind::Pods => start + i64::from(p.value),
            // Rounded up, or a small percentage would never add a pod.
            PolicyKind::Percent => {
                (start as f64 * (1.0 + f64::from(p.value) / 100.0)).ceil() as i64
            }
        };
        result = pick(result, proposed);
    }
    result
}

/// `calculateScaleDownLimitWithBehaviors`.
fn scale_down_limit(
    current: i64,
    now: f64,
    up_events: &[ScaleEvent],
    down_events: &[ScaleEvent],
    rules: &ScalingRules,
) -> i64 {
    let pick: fn(i64, i64) -> i64 = match rules.select_policy {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => i64::max,
        SelectPolicy::Max => i64::min,
    };
    let mut result = match rules.select_policy {
        SelectPolicy::Min => i64::from(i32::MIN),
        _ => i64::from(i32::MAX),
    };
    for p in &rules.policies {
        let start = current - change_in_period(up_events, now, p.period_seconds)
            + change_in_period(down_events, now, p.period_seconds);
        let proposed = match p.kind {
            PolicyKind::Pods => start - i64::from(p.value),
            // Truncated toward zero like Go's int32(float64).
            PolicyKind::Percent => (start as f64 * (1.0 - f64::from(p.value) / 100.0)) as i64,
        };
        result = pick(result, proposed);
    }
    result
}

/// The reason that decided a sync and its explanation: a rate limit or bound that changed
/// the stabilized count, else a stabilization window that changed the proposal, else the
/// replica calculator's own verdict.
fn deciding_reason(
    outcome: &MetricOutcome,
    stabilized: u32,
    stabilize_reason: Option<Reason>,
    desired: u32,
    limit_reason: Reason,
) -> (Reason, &'static str) {
    if desired != stabilized {
        (limit_reason, limit_message(limit_reason))
    } else if let Some(r) = stabilize_reason.filter(|_| stabilized != outcome.replicas) {
        let why = if r == Reason::ScaleUpStabilized {
            "recent recommendations were lower than current one, applying the lowest recent recommendation"
        } else {
            "recent recommendations were higher than current one, applying the highest recent recommendation"
        };
        (r, why)
    } else {
        match outcome.verdict {
            Verdict::WithinTolerance => (
                Reason::WithinTolerance,
                "the usage ratio is within tolerance, keeping the current count",
            ),
            Verdict::DirectionChanged => (
                Reason::DirectionChanged,
                "counting missing/unready pods would reverse the scale direction, keeping the current count",
            ),
            Verdict::Scale => (limit_reason, limit_message(limit_reason)),
        }
    }
}

fn limit_message(reason: Reason) -> &'static str {
    match reason {
        Reason::ScaleUpLimit => {
            "the desired replica count is increasing faster than the maximum scale rate"
        }
        Reason::ScaleDownLimit => {
            "the desired replica count is decreasing faster than the maximum scale rate"
        }
        Reason::TooManyReplicas => {
            "the desired replica count is more than the maximum replica count"
        }
        Reason::TooFewReplicas => {
            "the desired replica count is less than the minimum replica count"
        }
        _ => "the desired count is within the acceptable range",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    /// Pods started an hour before `now`, ready since then, each with a fresh sample of
    /// `usage` millicores against `request`.
    fn pods(n: usize, request: u64, usage: f64, now: f64) -> Vec<PodSample> {
        (0..n)
            .map(|i| {
                PodSample::running(format!("p{i}"), request, now - 3600.0, now - 3590.0)
                    .with_cpu(usage, now, 15.0)
            })
            .collect()
    }

    fn config(
        min: u32,
        max: u32,
        target: u32,
        behavior: Option<HorizontalPodAutoscalerBehavior>,
    ) -> HpaConfig {
        HpaConfig::new(min as i32, max as i32, target as i32, behavior).expect("valid config")
    }

    fn rules(
        window: Option<i32>,
        select: Option<&str>,
        policies: Option<Vec<(&str, i32, i32)>>,
    ) -> HPAScalingRules {
        HPAScalingRules {
            stabilization_window_seconds: window,
            select_policy: select.map(str::to_string),
            policies: policies.map(|ps| {
                ps.into_iter()
                    .map(|(t, value, period_seconds)| HPAScalingPolicy {
                        type_: t.to_string(),
                        value,
                        period_seconds,
                    })
                    .collect()
            }),
            tolerance: None,
        }
    }

    fn behavior(
        up: Option<HPAScalingRules>,
        down: Option<HPAScalingRules>,
    ) -> HorizontalPodAutoscalerBehavior {
        HorizontalPodAutoscalerBehavior {
            scale_up: up,
            scale_down: down,
        }
    }

    /// A behavior that scales down immediately (window 0), to look at one sync's maths.
    fn no_down_window() -> Option<HorizontalPodAutoscalerBehavior> {
        Some(behavior(None, Some(rules(Some(0), None, None))))
    }

    struct Row {
        rule: &'static str,
        current: u32,
        pods: Vec<PodSample>,
        recommendation: u32,
        desired: u32,
        reason: Reason,
    }

    /// One sync of a fresh HPA (min 1, max 20, target 100 %, scale-down window 0) per row.
    #[test]
    fn replica_calculation_follows_the_documented_rules() {
        let now = 10_000.0;
        let mixed = |ready: Vec<f64>, extra: Vec<PodSample>| {
            let mut ps: Vec<PodSample> = ready
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    PodSample::running(format!("r{i}"), 100, now - 3600.0, now - 3590.0)
                        .with_cpu(*u, now, 15.0)
                })
                .collect();
            ps.extend(extra);
            ps
        };
        let missing = |name: &str| PodSample::running(name, 100, now - 3600.0, now - 3590.0);
        let not_ready = |name: &str| {
            let mut p = PodSample::running(name, 100, now - 3600.0, now - 3600.0)
                .with_cpu(500.0, now, 15.0);
            p.ready = Some(ReadyCondition {
                ready: false,
                last_transition_time: now - 3600.0,
            });
            p
        };
        let rows = vec![
            Row {
                rule: "doc example: 200m used vs 100m target doubles the replicas",
                current: 3,
                pods: pods(3, 100, 200.0, now),
                recommendation: 6,
                desired: 6,
                reason: Reason::DesiredWithinRange,
            },
            Row {
                rule: "doc example: 50m used vs 100m target halves the replicas",
                current: 4,
                pods: pods(4, 100, 50.0, now),
                recommendation: 2,
                desired: 2,
                reason: Reason::DesiredWithinRange,
            },
            Row {
                rule: "ratio 1.05 is within the 0.1 tolerance: no change",
                current: 4,
                pods: pods(4, 100, 105.0, now),
                recommendation: 4,
                desired: 4,
                reason: Reason::WithinTolerance,
            },
            Row {
                rule: "ratio exactly 1.1 is still within tolerance (inclusive)",
                current: 4,
                pods: pods(4, 100, 110.0, now),
                recommendation: 4,
                desired: 4,
                reason: Reason::WithinTolerance,
            },
            Row {
                rule: "ratio 1.11 is outside tolerance: ceil(1.11 × 4) = 5",
                current: 4,
                pods: pods(4, 100, 111.0, now),
                recommendation: 5,
                desired: 5,
                reason: Reason::DesiredWithinRange,
            },
            Row {
                rule: "missing metrics on scale down count as 100 % of request",
                // 3 × 50 % + 1 missing: naive ceil(0.5 × 3) = 2; with 100 %: 62 % × 4 → 3.
                current: 4,
                pods: mixed(vec![50.0, 50.0, 50.0], vec![missing("m")]),
                recommendation: 3,
                desired: 3,
                reason: Reason::DesiredWithinRange,
            },
            Row {
                rule: "missing metrics on scale up count as 0 %",
                // 3 × 300 % + 1 missing at 0 % → 225 % × 4 = 9.
                current: 4,
                pods: mixed(vec![300.0, 300.0, 300.0], vec![missing("m")]),
                recommendation: 9,
                desired: 8, // max(2 × 4, 4 pods) per 15 s
                reason: Reason::ScaleUpLimit,
            },
            Row {
                rule: "missing metrics at 0 % turning a scale up into a scale down: no change",
                // 3 × 115 % + 1 missing → 86 %: direction flips.
                current: 4,
                pods: mixed(vec![115.0, 115.0, 115.0], vec![missing("m")]),
                recommendation: 4,
                desired: 4,
                reason: Reason::DirectionChanged,
            },
            Row {
                rule: "missing metrics at 100 % bringing a scale down within tolerance: no change",
                // 3 × 87 % + 1 missing → 90 %: within tolerance.
                current: 4,
                pods: mixed(vec![87.0, 87.0, 87.0], vec![missing("m")]),
                recommendation: 4,
                desired: 4,
                reason: Reason::WithinTolerance,
            },
            Row {
                rule: "unready pods count as 0 % on scale up",
                // 2 × 300 % + 2 unready at 0 % → 150 % × 4 = 6; their own 500m would give 16.
                current: 4,
                pods: mixed(vec![300.0, 300.0], vec![not_ready("u1"), not_ready("u2")]),
                recommendation: 6,
                desired: 6,
                reason: Reason::DesiredWithinRange,
            },
            Row {
                rule: "unready pods at 0 % turning a scale up into no scale up",
                // 2 × 150 % + 2 unready → 75 %: flips direction, although they report 500m.
                current: 4,
                pods: mixed(vec![150.0, 150.0], vec![not_ready("u1"), not_ready("u2")]),
                recommendation: 4,
                desired: 4,
                reason: Reason::DirectionChanged,
            },
            Row {
                rule: "unready pods are left out on scale down",
                // 2 × 50 % (+ 2 unready, ignored) → ceil(0.5 × 2) = 1.
                current: 4,
                pods: mixed(vec![50.0, 50.0], vec![not_ready("u1"), not_ready("u2")]),
                recommendation: 1,
                desired: 1,
                reason: Reason::DesiredWithinRange,
            },
            Row {
                rule: "pods being deleted or failed are ignored",
                current: 2,
                pods: {
                    let mut ps = pods(4, 100, 200.0, now);
                    ps[2].terminating = true;
                    ps[3].phase = PodPhase::Failed;
                    ps[2].cpu.as_mut().unwrap().usage_millis = 0.0;
                    ps[3].cpu.as_mut().unwrap().usage_millis = 0.0;
                    ps
                },
                recommendation: 4,
                desired: 4,
                reason: Reason::DesiredWithinRange,
            },
            Row {
                rule: "pending pods are unready",
                current: 3,
                pods: {
                    let mut ps = pods(3, 100, 300.0, now);
                    ps[2].phase = PodPhase::Pending;
                    ps
                },
                // 2 × 300 % + 1 at 0 % = 200 % × 3 = 6.
                recommendation: 6,
                desired: 6,
                reason: Reason::DesiredWithinRange,
            },
            Row {
                rule: "all metrics missing: no change and a FailedGetResourceMetric reason",
                current: 3,
                pods: vec![missing("a"), missing("b"), missing("c")],
                recommendation: 3,
                desired: 3,
                reason: Reason::FailedGetResourceMetric,
            },
            Row {
                rule: "only unready pods have metrics: no change",
                current: 2,
                pods: vec![not_ready("a"), not_ready("b")],
                recommendation: 2,
                desired: 2,
                reason: Reason::FailedGetResourceMetric,
            },
            Row {
                rule: "no pods at all: no change",
                current: 2,
                pods: vec![],
                recommendation: 2,
                desired: 2,
                reason: Reason::FailedGetResourceMetric,
            },
            Row {
                rule: "a pod without a CPU request fails the computation",
                current: 2,
                pods: {
                    let mut ps = pods(2, 100, 300.0, now);
                    ps[1].cpu_request_millis = 0;
                    ps
                },
                recommendation: 2,
                desired: 2,
                reason: Reason::FailedGetResourceMetric,
            },
            Row {
                rule: "clamped to maxReplicas",
                current: 10,
                pods: pods(10, 100, 500.0, now),
                recommendation: 50,
                desired: 20,
                reason: Reason::TooManyReplicas,
            },
            Row {
                rule: "replicas above maxReplicas are brought down without metrics",
                current: 25,
                pods: vec![],
                recommendation: 25,
                desired: 20,
                reason: Reason::AboveMaxReplicas,
            },
            Row {
                rule: "replicas 0 disables autoscaling",
                current: 0,
                pods: vec![],
                recommendation: 0,
                desired: 0,
                reason: Reason::ScalingDisabled,
            },
        ];
        for row in rows {
            let mut hpa = Hpa::new(config(1, 20, 100, no_down_window())).unwrap();
            let d = hpa.sync(now, row.current, &row.pods);
            assert_eq!(
                (d.recommendation, d.desired, d.reason),
                (row.recommendation, row.desired, row.reason),
                "rule: {}\ndecision: {d:#?}",
                row.rule
            );
        }
    }

    #[test]
    fn utilization_is_truncated_to_a_whole_percent() {
        // 451m of 300m requested = 150.33 % → 150 %; target 50 %: ceil(3.0 × 3) = 9, where
        // the exact ratio 3.0067 would give 10.
        let now = 0.0;
        let mut ps = pods(3, 100, 150.0, now);
        ps[0].cpu.as_mut().unwrap().usage_millis = 151.0;
        let mut hpa = Hpa::new(config(1, 20, 50, no_down_window())).unwrap();
        let d = hpa.sync(now, 3, &ps);
        assert_eq!((d.utilization_percent, d.recommendation), (Some(150), 9));
        // The default scale-up policy then allows max(3 + 4, 2 × 3) = 7.
        assert_eq!((d.desired, d.reason), (7, Reason::ScaleUpLimit));
    }

    #[test]
    fn clamped_to_min_replicas() {
        let now = 0.0;
        let mut hpa = Hpa::new(config(3, 10, 100, no_down_window())).unwrap();
        let d = hpa.sync(now, 5, &pods(5, 100, 10.0, now));
        assert_eq!(
            (d.recommendation, d.desired, d.reason),
            (1, 3, Reason::TooFewReplicas)
        );
        let d = hpa.sync(now + 15.0, 2, &pods(2, 100, 10.0, now + 15.0));
        assert_eq!((d.desired, d.reason), (3, Reason::BelowMinReplicas));
    }

    #[test]
    fn decision_reports_inputs() {
        let now = 100.0;
        let mut ps = pods(3, 200, 300.0, now);
        ps.push(PodSample::running("m", 200, 0.0, 1.0));
        let mut hpa = Hpa::new(config(1, 10, 50, None)).unwrap();
        let d = hpa.sync(now, 4, &ps);
        assert_eq!(d.utilization_percent, Some(150));
        assert_eq!(d.average_usage_millis, Some(300));
        assert_eq!(d.usage_ratio, Some(3.0));
        assert_eq!(
            (
                d.ready_pods,
                d.missing_metrics,
                d.unready_pods,
                d.ignored_pods
            ),
            (3, 1, 0, 0)
        );
        assert!(d.rescale());
        assert!(d.message.contains("150%"), "{}", d.message);
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["reason"], "ScaleUpLimit");
    }

    #[test]
    fn cpu_initialization_period_and_readiness_delay() {
        let now = 1000.0;
        let hpa = Hpa::new(config(1, 10, 100, None)).unwrap();
        let pod = |start: f64, ready: bool, transition: f64, sample_end: f64| PodSample {
            name: "p".into(),
            phase: PodPhase::Running,
            terminating: false,
            start_time: Some(start),
            ready: Some(ReadyCondition {
                ready,
                last_transition_time: transition,
            }),
            cpu: Some(CpuMetric {
                usage_millis: 100.0,
                timestamp: sample_end,
                window: 30.0,
            }),
            cpu_request_millis: 100,
        };
        let groups = |p: PodSample| hpa.resource_replicas(now, 1, &[p]).0;
        // Within 5 min of start, ready 40 s ago: a full 30 s window after readiness → used.
        assert_eq!(groups(pod(now - 60.0, true, now - 40.0, now)).ready, 1);
        // Ready only 20 s ago: the window still covers start-up → set aside.
        assert_eq!(groups(pod(now - 60.0, true, now - 20.0, now)).unready, 1);
        // Within the initialization period and not ready → set aside.
        assert_eq!(groups(pod(now - 60.0, false, now - 59.0, now)).unready, 1);
        // After the period, unready since 10 s after start (never ready) → set aside.
        assert_eq!(groups(pod(now - 900.0, false, now - 890.0, now)).unready, 1);
        // After the period, unready since well after start (was ready once) → used.
        assert_eq!(groups(pod(now - 900.0, false, now - 100.0, now)).ready, 1);
        // No start time → unready.
        let mut p = pod(now - 900.0, true, now - 890.0, now);
        p.start_time = None;
        assert_eq!(groups(p).unready, 1);
        // An unready pod without a sample counts as missing (checked first upstream).
        let mut p = pod(now - 60.0, false, now - 59.0, now);
        p.cpu = None;
        assert_eq!(groups(p).missing, 1);
    }

    /// Metrics ask for 2 replicas every 15 s while the target has 4.
    fn scale_down_run(hpa: &mut Hpa, until: f64) -> Vec<(f64, u32, Reason)> {
        let mut current = 4;
        let mut out = Vec::new();
        let mut t = 0.0;
        while t <= until {
            let d = hpa.sync(
                t,
                current,
                &pods(current as usize, 100, 100.0 * 2.0 / current as f64, t),
            );
            out.push((t, d.desired, d.reason));
            current = d.desired;
            t += 15.0;
        }
        out
    }

    #[test]
    fn scale_down_stabilization_keeps_the_max_for_300s_then_drops() {
        // Without behavior (legacy path): the window includes a recommendation exactly
        // 300 s old, so the count drops at the first sync after 300 s.
        let mut hpa = Hpa::new(config(1, 10, 100, None)).unwrap();
        let run = scale_down_run(&mut hpa, 330.0);
        for (t, desired, reason) in &run {
            if *t <= 300.0 {
                assert_eq!(
                    (*desired, *reason),
                    (4, Reason::ScaleDownStabilized),
                    "t={t}"
                );
            } else {
                assert_eq!(*desired, 2, "t={t}");
            }
        }
        // With the documented default behavior (`behavior: {}`): a recommendation exactly
        // 300 s old has left the window (strictly after the cutoff).
        let mut hpa = Hpa::new(config(1, 10, 100, Some(behavior(None, None)))).unwrap();
        let run = scale_down_run(&mut hpa, 330.0);
        for (t, desired, reason) in &run {
            if *t < 300.0 {
                assert_eq!(
                    (*desired, *reason),
                    (4, Reason::ScaleDownStabilized),
                    "t={t}"
                );
            } else {
                assert_eq!(*desired, 2, "t={t}");
            }
        }
    }

    #[test]
    fn scale_down_stabilization_remembers_a_peak() {
        // A peak recommendation of 8 at t=15 holds a later drop for 300 s (legacy path).
        let mut hpa = Hpa::new(config(1, 10, 100, None)).unwrap();
        let d = hpa.sync(0.0, 4, &pods(4, 100, 200.0, 0.0));
        assert_eq!(d.desired, 8);
        let mut last = 8;
        for i in 1..=22 {
            let t = 15.0 * f64::from(i);
            let d = hpa.sync(t, last, &pods(last as usize, 100, 10.0, t));
            if t <= 300.0 {
                assert_eq!(d.desired, 8, "t={t}: {d:?}");
            } else {
                assert_eq!(d.desired, 1, "t={t}: {d:?}");
            }
            last = d.desired;
        }
    }

    #[test]
    fn custom_stabilization_window_of_10_seconds() {
        let b = behavior(None, Some(rules(Some(10), None, None)));
        let mut hpa = Hpa::new(config(1, 10, 100, Some(b))).unwrap();
        let run = scale_down_run(&mut hpa, 30.0);
        assert_eq!(run[0], (0.0, 4, Reason::ScaleDownStabilized));
        assert_eq!(run[1].1, 2);
        assert_eq!(run[2].1, 2);
    }

    #[test]
    fn scale_up_stabilization_uses_the_min_of_the_window() {
        let b = behavior(
            Some(rules(Some(60), None, None)),
            Some(rules(Some(0), None, None)),
        );
        let mut hpa = Hpa::new(config(1, 20, 100, Some(b))).unwrap();
        // t=0: the initial recommendation (2) is the floor of the window.
        let d = hpa.sync(0.0, 2, &pods(2, 100, 300.0, 0.0));
        assert_eq!(
            (d.recommendation, d.desired, d.reason),
            (6, 2, Reason::ScaleUpStabilized)
        );
        let d = hpa.sync(45.0, 2, &pods(2, 100, 300.0, 45.0));
        assert_eq!(d.desired, 2);
        // t=75: the initial 2 is older than 60 s; the lowest left is 6.
        let d = hpa.sync(75.0, 2, &pods(2, 100, 300.0, 75.0));
        assert_eq!((d.desired, d.reason), (6, Reason::DesiredWithinRange));
    }

    /// Metrics ask for `want` replicas; returns the sequence of `desired`.
    fn scale_up_run(hpa: &mut Hpa, start: u32, want: u32, times: &[f64]) -> Vec<(u32, Reason)> {
        let mut current = start;
        times
            .iter()
            .map(|t| {
                let usage = 100.0 * f64::from(want) / f64::from(current);
                let d = hpa.sync(*t, current, &pods(current as usize, 100, usage, *t));
                current = d.desired;
                (d.desired, d.reason)
            })
            .collect()
    }

    #[test]
    fn default_scale_up_policy_is_4_pods_or_100_percent_per_15s_whichever_is_more() {
        let mut hpa = Hpa::new(config(1, 100, 100, Some(behavior(None, None)))).unwrap();
        let run = scale_up_run(&mut hpa, 1, 40, &[0.0, 15.0, 30.0, 45.0, 60.0]);
        // 1 → max(1+4, 2) = 5 → max(9, 10) = 10 → 20 → 40.
        assert_eq!(
            run.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![5, 10, 20, 40, 40]
        );
        assert_eq!(run[0].1, Reason::ScaleUpLimit);
        assert_eq!(run[3].1, Reason::DesiredWithinRange);

        // A sync inside the same 15 s period cannot add more.
        let mut hpa = Hpa::new(config(1, 100, 100, Some(behavior(None, None)))).unwrap();
        let run = scale_up_run(&mut hpa, 1, 40, &[0.0, 10.0, 15.0]);
        assert_eq!(run.iter().map(|r| r.0).collect::<Vec<_>>(), vec![5, 5, 10]);
        assert_eq!(run[1].1, Reason::ScaleUpLimit);
    }

    #[test]
    fn legacy_scale_up_limit_is_twice_current_or_4() {
        let mut hpa = Hpa::new(config(1, 100, 100, None)).unwrap();
        let run = scale_up_run(&mut hpa, 1, 40, &[0.0, 15.0, 30.0, 45.0]);
        assert_eq!(
            run.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![4, 8, 16, 32]
        );
        assert!(run.iter().all(|r| r.1 == Reason::ScaleUpLimit));
    }

    #[test]
    fn select_policy_min_takes_the_smaller_change() {
        let b = behavior(Some(rules(None, Some("Min"), None)), None);
        let mut hpa = Hpa::new(config(1, 100, 100, Some(b))).unwrap();
        let run = scale_up_run(&mut hpa, 2, 40, &[0.0, 15.0, 30.0]);
        // min(2+4, 2×2) = 4 → min(8, 8) = 8 → min(12, 16) = 12.
        assert_eq!(run.iter().map(|r| r.0).collect::<Vec<_>>(), vec![4, 8, 12]);
    }

    #[test]
    fn disabled_scale_down_never_removes_pods() {
        let b = behavior(None, Some(rules(Some(0), Some("Disabled"), None)));
        let mut hpa = Hpa::new(config(1, 10, 100, Some(b))).unwrap();
        let run = scale_down_run(&mut hpa, 60.0);
        assert!(
            run.iter()
                .all(|r| r.1 == 4 && r.2 == Reason::ScaleDownLimit),
            "{run:?}"
        );
        // Scale up still works.
        let d = hpa.sync(75.0, 4, &pods(4, 100, 200.0, 75.0));
        assert_eq!(d.desired, 8);
    }

    #[test]
    fn percent_policy_with_period_60_limits_over_several_syncs() {
        // At most 50 % of the count at the start of any 60 s period.
        let b = behavior(
            None,
            Some(rules(Some(0), None, Some(vec![("Percent", 50, 60)]))),
        );
        let mut hpa = Hpa::new(config(1, 20, 100, Some(b))).unwrap();
        let mut current = 16;
        let mut seen = Vec::new();
        for i in 0..=13 {
            let t = 15.0 * f64::from(i);
            let d = hpa.sync(
                t,
                current,
                &pods(current as usize, 100, 100.0 / current as f64, t),
            );
            current = d.desired;
            seen.push(current);
        }
        // t=0: 16 → 8; t=15..45: the period started at 16 → floor 8; t=60: 8 → 4; ...
        assert_eq!(seen, vec![8, 8, 8, 8, 4, 4, 4, 4, 2, 2, 2, 2, 1, 1]);
    }

    #[test]
    fn pods_policy_counts_scale_downs_within_its_period() {
        let b = behavior(
            None,
            Some(rules(Some(0), None, Some(vec![("Pods", 2, 60)]))),
        );
        let mut hpa = Hpa::new(config(1, 20, 100, Some(b))).unwrap();
        let mut current = 10;
        let mut seen = Vec::new();
        for i in 0..=4 {
            let t = 30.0 * f64::from(i);
            let d = hpa.sync(t, current, &pods(current as usize, 100, 10.0, t));
            current = d.desired;
            seen.push((current, d.reason));
        }
        // t=0: 8; t=30: period start 10 → 8, no change; t=60: event at 0 left → 6; ...
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![8, 8, 6, 6, 4]
        );
        assert_eq!(seen[1].1, Reason::ScaleDownLimit);
    }

    #[test]
    fn behavior_tolerance_overrides_the_controller_tolerance() {
        let mut up = rules(None, None, None);
        up.tolerance = Some(Quantity("50m".into()));
        let mut hpa = Hpa::new(config(1, 20, 100, Some(behavior(Some(up), None)))).unwrap();
        let d = hpa.sync(0.0, 10, &pods(10, 100, 108.0, 0.0));
        assert_eq!(d.desired, 11);
        // Scale down keeps 0.1: 92 % stays.
        let d = hpa.sync(15.0, 11, &pods(11, 100, 92.0, 15.0));
        assert_eq!(d.reason, Reason::WithinTolerance);
    }

    #[test]
    fn behavior_defaults_fill_only_unset_fields() {
        let b = behavior(
            Some(rules(Some(30), None, None)),
            Some(rules(None, Some("Min"), None)),
        );
        let hpa = Hpa::new(config(1, 10, 100, Some(b))).unwrap();
        let r = hpa.behavior().unwrap();
        assert_eq!(r.scale_up.stabilization_window_seconds, 30);
        assert_eq!(r.scale_up.select_policy, SelectPolicy::Max);
        assert_eq!(r.scale_up.policies.len(), 2);
        assert_eq!(r.scale_down.stabilization_window_seconds, 300);
        assert_eq!(r.scale_down.select_policy, SelectPolicy::Min);
        assert_eq!(
            r.scale_down.policies,
            vec![ScalingPolicy {
                kind: PolicyKind::Percent,
                value: 100,
                period_seconds: 15
            }]
        );
        assert_eq!(r.scale_down.tolerance, DEFAULT_TOLERANCE);
    }

    #[test]
    fn invalid_configuration_is_named() {
        let err = |r: Result<HpaConfig>| r.unwrap_err().to_string();
        assert!(err(HpaConfig::new(0, 5, 80, None)).contains("minReplicas = 0"));
        assert!(err(HpaConfig::new(6, 5, 80, None)).contains("maxReplicas = 5"));
        assert!(err(HpaConfig::new(1, 5, 0, None)).contains("targetCPUUtilization"));
        let bad = [
            (
                behavior(Some(rules(None, Some("Fastest"), None)), None),
                "behavior.scaleUp.selectPolicy = Fastest",
            ),
            (
                behavior(
                    None,
                    Some(rules(None, None, Some(vec![("Replicas", 1, 15)]))),
                ),
                "behavior.scaleDown.policies[0].type = Replicas",
            ),
            (
                behavior(None, Some(rules(None, None, Some(vec![("Pods", 1, 0)])))),
                "behavior.scaleDown.policies[0].periodSeconds = 0",
            ),
            (
                behavior(None, Some(rules(None, None, Some(vec![("Pods", 0, 15)])))),
                "behavior.scaleDown.policies[0].value = 0",
            ),
            (
                behavior(None, Some(rules(None, None, Some(vec![])))),
                "behavior.scaleDown.policies = []",
            ),
            (
                behavior(Some(rules(Some(3601), None, None)), None),
                "behavior.scaleUp.stabilizationWindowSeconds = 3601",
            ),
            (
                behavior(
                    Some(HPAScalingRules {
                        tolerance: Some(Quantity("ten".into())),
                        ..Default::default()
                    }),
                    None,
                ),
                "behavior.scaleUp.tolerance = ten",
            ),
        ];
        for (b, expected) in bad {
            let e = err(HpaConfig::new(1, 5, 80, Some(b)));
            assert!(e.contains(expected), "{e} does not contain {expected}");
        }
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_quantity("0.1"), Some(0.1));
        assert_eq!(parse_quantity("50m"), Some(0.05));
        assert_eq!(parse_quantity("5e-2"), Some(0.05));
        assert_eq!(parse_quantity("1"), Some(1.0));
        assert_eq!(parse_quantity("inf"), None);
        assert_eq!(parse_quantity("m"), None);
        assert_eq!(parse_quantity(""), None);
    }

    #[test]
    fn bad_inputs_do_not_panic_or_corrupt_state() {
        let mut hpa = Hpa::new(config(1, 10, 100, None)).unwrap();
        let d = hpa.sync(f64::NAN, 3, &pods(3, 100, 100.0, 0.0));
        assert_eq!((d.desired, d.reason), (3, Reason::InvalidInput));
        let mut ps = pods(3, 100, 100.0, 0.0);
        ps[0].cpu.as_mut().unwrap().usage_millis = -1.0;
        let d = hpa.sync(0.0, 3, &ps);
        assert_eq!((d.desired, d.reason), (3, Reason::FailedGetResourceMetric));
        assert!(d.message.contains("pod p0"), "{}", d.message);
        let d = hpa.sync(15.0, 3, &pods(3, u64::MAX, f64::MAX, 15.0));
        assert!(d.desired <= 10);
    }
}
