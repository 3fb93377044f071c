//! Lease leader election on the real kube-apiserver, as the operator's ServiceAccount
//! (whose Role allows Leases in its namespace only): one holder at a time, renewal,
//! takeover after the lease duration, and a holder noticing it lost the Lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use meshbench_operator::k8s::leader::{LeaderElector, LeaseSettings};
use serde_json::json;

use crate::cluster::{OPERATOR_SA, cluster};

/// A Lease name of its own per test: the tests share the operator's namespace.
async fn candidate(lease: &str, who: &str) -> LeaderElector {
    LeaderElector::new(
        Api::<Lease>::namespaced(cluster().operator().await, OPERATOR_SA.0),
        LeaseSettings {
            name: lease.into(),
            identity: who.into(),
            lease_duration: Duration::from_millis(400),
            renew_every: Duration::from_millis(100),
        },
    )
}

async fn holder(lease: &str) -> (String, i32) {
    let l = Api::<Lease>::namespaced(cluster().admin().await, OPERATOR_SA.0)
        .get(lease)
        .await
        .expect("the Lease");
    let spec = l.spec.expect("spec");
    (
        spec.holder_identity.unwrap_or_default(),
        spec.lease_transitions.unwrap_or_default(),
    )
}

#[tokio::test]
async fn one_leader_at_a_time_and_takeover_after_expiry() {
    let lease = "leader-takeover";
    let mut a = candidate(lease, "pod-a").await;
    let mut b = candidate(lease, "pod-b").await;
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "first candidate creates the Lease"
    );
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "a held Lease is not taken"
    );
    // The holder renews; the other keeps seeing fresh records and waits.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(!b.try_acquire_or_renew().await.unwrap());
    }
    assert_eq!(holder(lease).await, ("pod-a".into(), 0));
    // pod-a stops renewing (it died): after one lease duration of an unchanged record,
    // pod-b takes over.
    assert!(!b.try_acquire_or_renew().await.unwrap());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "takeover after expiry"
    );
    assert_eq!(holder(lease).await, ("pod-b".into(), 1));
    // pod-a comes back: the record changed, so it is fresh to pod-a and not taken.
    assert!(!a.try_acquire_or_renew().await.unwrap());
}

#[tokio::test]
async fn hold_returns_when_another_replica_took_the_lease() {
    let lease = "leader-lost";
    let mut a = candidate(lease, "pod-a").await;
    a.acquire().await.unwrap();
    // Someone else overwrites the holder (as a second operator that judged it expired).
    Api::<Lease>::namespaced(cluster().admin().await, OPERATOR_SA.0)
        .patch(
            lease,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "holderIdentity": "pod-b" } })),
        )
        .await
        .unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(5), a.hold())
        .await
        .expect("hold() returns once the Lease is lost");
    assert!(lost.to_string().contains("another replica"), "{lost}");
}
