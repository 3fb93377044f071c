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

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

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
