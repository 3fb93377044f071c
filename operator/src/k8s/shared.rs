//! What both controllers share: per-object failure backoff and Event publishing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};

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
