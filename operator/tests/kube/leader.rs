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
            renew_deadline: Duration::from_millis(300),
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

#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    let lease = "leader-release";
    let mut a = candidate(lease, "pod-a").await;
    let mut b = candidate(lease, "pod-b").await;
    a.acquire().await.unwrap();
    assert!(!b.try_acquire_or_renew().await.unwrap());
    // pod-a shuts down cleanly: pod-b need not wait out the lease duration.
    a.release().await.unwrap();
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "taken without waiting for expiry"
    );
    assert_eq!(holder(lease).await, ("pod-b".into(), 1));
    // Releasing a Lease one no longer holds changes nothing.
    a.release().await.unwrap();
    assert_eq!(holder(lease).await.0, "pod-b");
}

/// An API server that accepts connections and never answers: a renewal that hangs must
/// not outlast the lease. The holder steps down after the renew deadline, before any other
/// candidate could judge the lease expired.
#[tokio::test]
async fn a_holder_whose_renewals_hang_steps_down_before_the_lease_expires() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            open.push(conn);
        }
    });
    let config = kube::Config::new(url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let settings = LeaseSettings {
        name: "hung".into(),
        identity: "pod-a".into(),
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(1),
        renew_every: Duration::from_millis(200),
    };
    let mut elector = LeaderElector::new(Api::<Lease>::namespaced(client, "x"), settings);
    let began = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), elector.hold())
        .await
        .expect("hold() returns");
    let took = began.elapsed();
    assert!(err.to_string().contains("stepped down"), "{err}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "stepped down after {took:?}"
    );
    silent.abort();
}
