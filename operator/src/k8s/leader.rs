//! Leader election on a `coordination.k8s.io/v1` Lease. kube-runtime has none built in,
//! so this is the client-go algorithm in small: a candidate takes the Lease when it is
//! free or when its record has not changed for `lease_duration` (judged by this process's
//! own clock, so clock skew between nodes does not matter), renews it every
//! `renew_every`, and every write is a compare-and-swap on `resourceVersion`.
//!
//! The holder steps down when it has not renewed for `renew_deadline`, which is shorter
//! than the lease: it stops before another candidate can judge the Lease expired, so two
//! leaders never overlap. Every API call is bounded by a timeout within that budget (a
//! hung connection must not outlast the lease), and a holder shutting down releases the
//! Lease so the next one takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
// Tokio's clock, so tests can run the real durations on paused time.
use tokio::time::Instant;

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The API server refused or failed a Lease request.
    #[error("lease {name}: {source}")]
    Api {
        /// Lease name.
        name: String,
        /// The client error.
        source: kube::Error,
    },
    /// A Lease request did not complete in time.
    #[error("lease {name}: no answer from the API server within {after:?}")]
    Timeout {
        /// Lease name.
        name: String,
        /// The time allowed.
        after: Duration,
    },
    /// Another candidate holds the Lease now.
    #[error("lease {name}: another replica took the lease")]
    Lost {
        /// Lease name.
        name: String,
    },
    /// Renewals failed for the whole renew deadline: this replica stepped down.
    #[error("lease {name}: not renewed within {deadline:?} (last error: {last}); stepped down")]
    SteppedDown {
        /// Lease name.
        name: String,
        /// The renew deadline.
        deadline: Duration,
        /// The last renewal's error.
        last: Box<LeaderError>,
    },
}

/// Result alias of this module.
pub type Result<T, E = LeaderError> = std::result::Result<T, E>;

/// Settings of the election.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// This candidate's identity (its pod name).
    pub identity: String,
    /// How long a record may stay unchanged before another candidate takes over.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it steps down; shorter than
    /// `lease_duration`.
    pub renew_deadline: Duration,
    /// How often the holder renews (and a candidate retries).
    pub renew_every: Duration,
}

impl LeaseSettings {
    /// client-go's defaults, which the operator uses: a 15 s lease renewed every 2 s, given
    /// up after 10 s of failed renewals, before another replica can take it.
    pub fn client_go_defaults(name: String, identity: String) -> Self {
        LeaseSettings {
            name,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
        }
    }
}

/// One candidate's view of the Lease.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The last record seen (holder, renew time) and when it was first seen.
    observed: Option<(String, Instant)>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// `fut`, or [`LeaderError::Timeout`] after `budget`.
async fn bounded<T>(
    name: String,
    budget: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(budget, fut)
        .await
        .unwrap_or(Err(LeaderError::Timeout {
            name,
            after: budget,
        }))
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl LeaderElector {
    /// A candidate for the Lease in `api`'s namespace.
    pub fn new(api: Api<Lease>, settings: LeaseSettings) -> Self {
        Self {
            api,
            settings,
            observed: None,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            name: self.settings.name.clone(),
            source,
        }
    }

    /// Takes or renews the Lease if possible; true when this candidate holds it now. The
    /// whole attempt is bounded by the renew deadline.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let (name, budget) = (self.settings.name.clone(), self.settings.renew_deadline);
        bounded(name, budget, self.attempt()).await
    }

    async fn attempt(&mut self) -> Result<bool> {
        let me = self.settings.identity.clone();
        // Whole seconds, rounded up and at least 1: the API server rejects 0.
        let d = self.settings.lease_duration;
        let secs = i32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .unwrap_or(i32::MAX)
            .max(1);
        let existing = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(|e| self.err(e))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(self.err(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = format!(
            "{holder}@{}",
            spec.renew_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default()
        );
        let seen_at = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record, at));
                at
            }
        };
        let held_by_me = holder == me;
        let expired = holder.is_empty() || seen_at.elapsed() >= self.settings.lease_duration;
        if !held_by_me && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!held_by_me);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(me),
            lease_duration_seconds: Some(secs),
            acquire_time: if held_by_me {
                spec.acquire_time
            } else {
                Some(now())
            },
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..spec
        });
        // `replace` sends the resourceVersion we read: a concurrent writer makes it a 409.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&mut self) -> Result<()> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.settings.renew_every).await;
        }
    }

    /// Renews the Lease until another replica takes it or renewals fail for the renew
    /// deadline (then this replica must stop leading), and returns the reason.
    pub async fn hold(&mut self) -> LeaderError {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.settings.renew_every).await;
            let deadline = self.settings.renew_deadline;
            let Some(left) = deadline.checked_sub(last_ok.elapsed()) else {
                return self.stepped_down(LeaderError::Timeout {
                    name: self.settings.name.clone(),
                    after: deadline,
                });
            };
            // No attempt may run past the deadline.
            let name = self.settings.name.clone();
            match bounded(name, left, self.attempt()).await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => {
                    return LeaderError::Lost {
                        name: self.settings.name.clone(),
                    };
                }
                Err(e) if last_ok.elapsed() < deadline => {
                    tracing::warn!(error = %e, "lease renewal failed; retrying");
                }
                Err(e) => return self.stepped_down(e),
            }
        }
    }

    fn stepped_down(&self, last: LeaderError) -> LeaderError {
        LeaderError::SteppedDown {
            name: self.settings.name.clone(),
            deadline: self.settings.renew_deadline,
            last: Box::new(last),
        }
    }

    /// Gives the Lease up if this candidate holds it (client-go's `ReleaseOnCancel`): the
    /// holder is cleared and the duration set to 1 s, so a successor takes over at once.
    pub async fn release(&mut self) -> Result<()> {
        let (name, budget) = (self.settings.name.clone(), self.settings.renew_deadline);
        bounded(name, budget, self.release_now()).await
    }

    async fn release_now(&mut self) -> Result<()> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(now()),
            ..spec
        });
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote it meanwhile: it is not ours to release any more.
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}

#[cfg(test)]
mod paused_time_tests {
    //! The election's timing with the operator's real durations (15 s lease, 10 s renew
    //! deadline, 2 s renewals) on Tokio's paused clock, against a `tower` service that
    //! keeps one Lease with compare-and-swap on `resourceVersion` as kube-apiserver does
    //! and can fail or hang on demand: faults a real API server cannot be made to show.
    //! The protocol against the real kube-apiserver: `tests/kube/leader.rs`.

    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use http::{Request, Response, header};
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::Client;
    use kube::api::Api;
    use tokio::time::Instant;

    use super::{LeaderElector, LeaderError, LeaseSettings};

    const NS: &str = "meshbench-system";

    #[derive(Default)]
    struct Store {
        lease: Option<Lease>,
        version: u64,
        /// Answer every request with a 500.
        failing: bool,
        /// Never answer.
        hung: bool,
        /// Another writer updates the Lease right after each GET, so the reader's
        /// resourceVersion is stale by the time it writes.
        written_after_get: bool,
        /// When each accepted write happened.
        writes: Vec<Instant>,
    }

    type Shared = Arc<Mutex<Store>>;

    fn status(code: u16, reason: &str) -> (u16, serde_json::Value) {
        let body = serde_json::json!({ "kind": "Status", "apiVersion": "v1",
            "status": "Failure", "code": code, "reason": reason, "message": reason });
        (code, body)
    }

    /// What kube-apiserver answers for the Lease routes the elector uses.
    fn answer(store: &mut Store, method: &http::Method, body: &[u8]) -> (u16, serde_json::Value) {
        let sent: Option<Lease> = serde_json::from_slice(body).ok();
        let stored = store.lease.clone();
        match (method.as_str(), stored, sent) {
            ("GET", Some(l), _) => {
                let read = serde_json::to_value(l).expect("lease JSON");
                if store.written_after_get {
                    store.version += 1;
                    let version = store.version.to_string();
                    if let Some(stored) = store.lease.as_mut() {
                        stored.metadata.resource_version = Some(version);
                    }
                }
                (200, read)
            }
            ("GET" | "PUT", None, _) => status(404, "NotFound"),
            ("POST", Some(_), _) => status(409, "AlreadyExists"),
            // Compare-and-swap on resourceVersion, as kube-apiserver does for an update.
            ("PUT", Some(l), Some(s))
                if l.metadata.resource_version != s.metadata.resource_version =>
            {
                status(409, "Conflict")
            }
            ("POST" | "PUT", _, Some(mut l)) => {
                store.version += 1;
                l.metadata.resource_version = Some(store.version.to_string());
                store.writes.push(Instant::now());
                store.lease = Some(l.clone());
                (200, serde_json::to_value(l).expect("lease JSON"))
            }
            _ => status(400, "BadRequest"),
        }
    }

    fn fake_api(store: Shared) -> Client {
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let store = store.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.expect("request body");
                let hung = store.lock().expect("store").hung;
                if hung {
                    std::future::pending::<()>().await;
                }
                let (code, json) = {
                    let mut s = store.lock().expect("store");
                    if s.failing {
                        status(500, "InternalError")
                    } else {
                        answer(&mut s, &parts.method, &bytes)
                    }
                };
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(code)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(kube::client::Body::from(
                            serde_json::to_vec(&json).expect("JSON"),
                        ))
                        .expect("response"),
                )
            }
        });
        Client::new(service, NS)
    }

    /// A candidate with the operator's durations (`k8s::operator`).
    fn candidate(store: &Shared, who: &str) -> LeaderElector {
        LeaderElector::new(
            Api::namespaced(fake_api(store.clone()), NS),
            LeaseSettings::client_go_defaults("meshbench-operator".into(), who.into()),
        )
    }

    fn holder(store: &Shared) -> Option<String> {
        let s = store.lock().expect("store");
        s.lease.as_ref()?.spec.as_ref()?.holder_identity.clone()
    }

    #[tokio::test(start_paused = true)]
    async fn takeover_only_after_one_lease_duration_of_an_unchanged_record() {
        let store = Shared::default();
        let (mut a, mut b) = (candidate(&store, "pod-a"), candidate(&store, "pod-b"));
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(
            !b.try_acquire_or_renew().await.unwrap(),
            "b first sees a's record"
        );
        tokio::time::sleep(Duration::from_millis(14_900)).await;
        assert!(
            !b.try_acquire_or_renew().await.unwrap(),
            "14.9 s: not yet expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            b.try_acquire_or_renew().await.unwrap(),
            "15.1 s: taken over"
        );
        assert_eq!(holder(&store).as_deref(), Some("pod-b"));
        assert!(
            !a.try_acquire_or_renew().await.unwrap(),
            "a sees a new record"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_keep_the_record_fresh_for_other_candidates() {
        let store = Shared::default();
        let (mut a, mut b) = (candidate(&store, "pod-a"), candidate(&store, "pod-b"));
        assert!(a.try_acquire_or_renew().await.unwrap());
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(a.try_acquire_or_renew().await.unwrap());
            assert!(
                !b.try_acquire_or_renew().await.unwrap(),
                "a renewed: b waits"
            );
        }
        assert_eq!(holder(&store).as_deref(), Some("pod-a"));
    }

    /// The holder must stop leading before any other candidate can judge the Lease
    /// expired: within the lease duration of its last successful renewal.
    #[tokio::test(start_paused = true)]
    async fn a_holder_that_cannot_renew_steps_down_before_the_lease_expires() {
        let store = Shared::default();
        let mut a = candidate(&store, "pod-a");
        a.acquire().await.unwrap();
        let breaker = {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(7)).await;
                store.lock().expect("store").failing = true;
            })
        };
        let reason = a.hold().await;
        let stepped_down_at = Instant::now();
        breaker.await.unwrap();
        assert!(
            matches!(reason, LeaderError::SteppedDown { .. }),
            "{reason}"
        );
        let last_renewal = *store.lock().expect("store").writes.last().unwrap();
        let after = stepped_down_at - last_renewal;
        assert!(
            after >= Duration::from_secs(10) && after < Duration::from_secs(15),
            "stepped down {after:?} after the last renewal"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_api_server_is_a_timeout_within_the_renew_deadline() {
        let store = Shared::default();
        store.lock().expect("store").hung = true;
        let mut a = candidate(&store, "pod-a");
        let started = Instant::now();
        let err = a.try_acquire_or_renew().await.unwrap_err();
        assert!(matches!(err, LeaderError::Timeout { .. }), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    /// Every write is a compare-and-swap: a renewal over a read another replica's write made
    /// stale is refused, and the candidate does not count itself leader.
    #[tokio::test(start_paused = true)]
    async fn a_write_over_a_stale_read_is_refused() {
        let store = Shared::default();
        let mut a = candidate(&store, "pod-a");
        assert!(a.try_acquire_or_renew().await.unwrap());
        let writes = {
            let mut s = store.lock().expect("store");
            s.written_after_get = true;
            s.writes.len()
        };
        assert!(
            !a.try_acquire_or_renew().await.unwrap(),
            "a renewal over a stale read"
        );
        assert_eq!(store.lock().expect("store").writes.len(), writes);
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_is_taken_at_once() {
        let store = Shared::default();
        let (mut a, mut b) = (candidate(&store, "pod-a"), candidate(&store, "pod-b"));
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(!b.try_acquire_or_renew().await.unwrap());
        a.release().await.unwrap();
        assert_eq!(holder(&store), None);
        assert!(
            b.try_acquire_or_renew().await.unwrap(),
            "no wait after a release"
        );
        // A release by a non-holder leaves the Lease alone.
        a.release().await.unwrap();
        assert_eq!(holder(&store).as_deref(), Some("pod-b"));
    }
}
