//! Lease leader election against the in-memory API server: one holder at a time, renewal,
//! takeover after the lease duration, and a holder noticing it lost the Lease.

use crate::fake_api;

use std::time::Duration;

use fake_api::FakeApi;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use meshbench_operator::k8s::leader::{LeaderElector, LeaseSettings};

const NS: &str = "meshbench";

fn candidate(api: &std::sync::Arc<FakeApi>, who: &str) -> LeaderElector {
    LeaderElector::new(
        Api::<Lease>::namespaced(api.client(NS), NS),
        LeaseSettings {
            name: "meshbench-operator".into(),
            identity: who.into(),
            lease_duration: Duration::from_millis(400),
            renew_every: Duration::from_millis(100),
        },
    )
}

fn holder(api: &FakeApi) -> (String, i64) {
    let lease = api
        .get("coordination.k8s.io", "leases", NS, "meshbench-operator")
        .expect("the Lease");
    (
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap()
            .to_string(),
        lease["spec"]["leaseTransitions"].as_i64().unwrap(),
    )
}

#[tokio::test]
async fn one_leader_at_a_time_and_takeover_after_expiry() {
    let api = FakeApi::new();
    let mut a = candidate(&api, "pod-a");
    let mut b = candidate(&api, "pod-b");
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
    assert_eq!(holder(&api), ("pod-a".into(), 0));
    // pod-a stops renewing (it died): after one lease duration of an unchanged record,
    // pod-b takes over.
    assert!(!b.try_acquire_or_renew().await.unwrap());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "takeover after expiry"
    );
    assert_eq!(holder(&api), ("pod-b".into(), 1));
    // pod-a comes back: the record changed, so it is fresh to pod-a and not taken.
    assert!(!a.try_acquire_or_renew().await.unwrap());
    assert!(api.forbidden.lock().unwrap().is_empty());
}

#[tokio::test]
async fn hold_returns_when_another_replica_took_the_lease() {
    let api = FakeApi::new();
    let mut a = candidate(&api, "pod-a");
    a.acquire().await.unwrap();
    // Someone else overwrites the holder (as a second operator that judged it expired).
    let mut lease = api
        .get("coordination.k8s.io", "leases", NS, "meshbench-operator")
        .unwrap();
    lease["spec"]["holderIdentity"] = "pod-b".into();
    api.update_spec(
        "coordination.k8s.io",
        "leases",
        NS,
        "meshbench-operator",
        lease["spec"].clone(),
    );
    let lost = tokio::time::timeout(Duration::from_secs(5), a.hold())
        .await
        .expect("hold() returns once the Lease is lost");
    assert!(lost.to_string().contains("another replica"), "{lost}");
}
