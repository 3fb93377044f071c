//! What both controllers share: per-object failure backoff, Event publishing and
//! status conditions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use meshbench_crds::validate::Issue;

/// Consecutive reconcile failures per object (`namespace/name`), for an error policy's
/// backoff.
#[derive(Debug, Default)]
pub struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // A poisoned map only holds backoff counters; keep using it.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the failures of `obj` after a successful reconcile.
    pub fn clear<K: ResourceExt>(&self, obj: &K) {
        self.map().remove(&key(obj));
    }

    /// Counts one more failure of `obj`; returns the count and the delay before its retry.
    pub fn record<K: ResourceExt>(&self, obj: &K) -> (u32, Duration) {
        let mut map = self.map();
        let n = map.entry(key(obj)).or_insert(0);
        *n = n.saturating_add(1);
        (*n, backoff(*n))
    }
}

fn key<K: ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The delay before retry number `failures` (1-based): 5 s doubling, at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(16));
    Duration::from_secs(secs.min(300))
}

/// Publishes an Event about `obj`. An Event is informational: failing to publish one is
/// logged, never an error of the reconcile.
pub async fn publish<K>(
    recorder: &Recorder,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish event");
    }
}

/// The message of a `Valid=False` condition: every problem, as `meshbench validate`
/// prints it after the file position (field path, message, hint).
pub fn invalid_message(issues: &[Issue]) -> String {
    let lines: Vec<String> = issues
        .iter()
        .map(|i| {
            let mut s = if i.path.is_empty() {
                i.message.clone()
            } else {
                format!("{}: {}", i.path, i.message)
            };
            if let Some(h) = &i.hint {
                s.push_str(&format!(" (hint: {h})"));
            }
            s
        })
        .collect();
    lines.join("; ")
}

/// Sets condition `type_` in `conditions`, keeping its transition time when its status
/// does not change. Returns true when the status changed (or the condition is new).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> bool {
    let status_text = if status { "True" } else { "False" };
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let changed = previous
        .map(|i| conditions[i].status != status_text)
        .unwrap_or(true);
    let last_transition_time = match previous {
        Some(i) if !changed => conditions[i].last_transition_time.clone(),
        _ => now.clone(),
    };
    let condition = Condition {
        type_: type_.to_string(),
        status: status_text.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
    changed
}
