//! A run's lifecycle against the real API server, beyond the happy path: two Benchmarks
//! on one mesh take turns, a stale view of a Benchmark neither starts a second run nor
//! rolls its status back, a run that cannot be resumed fails with a reason, and deleting
//! a Benchmark mid-run writes its partial report before the object goes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use meshbench_crds::Benchmark;
use meshbench_crds::benchmark::{BenchmarkStatus, Phase};
use meshbench_operator::k8s::bench_controller::{self, FINALIZER, claim_name};
use serde_json::{Value, json};

use crate::bench_controller::{Operator, apply, documents};
use crate::cluster::cluster;

async fn get(ns: &str, name: &str) -> Option<Benchmark> {
    Api::<Benchmark>::namespaced(cluster().admin().await, ns)
        .get_opt(name)
        .await
        .expect("read benchmark")
}

async fn status(ns: &str, name: &str) -> BenchmarkStatus {
    get(ns, name)
        .await
        .and_then(|b| b.status)
        .unwrap_or_default()
}

/// One reconcile of `name` as the controller runtime would run it, on `bench` when given
/// (a possibly stale view), else on the object as it is now.
async fn reconcile(op: &Operator, ns: &str, name: &str, bench: Option<Benchmark>) {
    let bench = match bench {
        Some(b) => b,
        None => get(ns, name).await.expect("benchmark exists"),
    };
    bench_controller::reconcile(Arc::new(bench), op.bench.clone())
        .await
        .expect("reconcile");
}

fn condition(status: &BenchmarkStatus, type_: &str) -> (String, String, String) {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", status.conditions))
}

async fn events(ns: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(cluster().admin().await, ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

async fn claim(ns: &str, mesh: &str) -> Option<Lease> {
    Api::<Lease>::namespaced(cluster().admin().await, ns)
        .get_opt(&claim_name(mesh))
        .await
        .unwrap()
}

/// A namespace with the mesh and Benchmark `ramp` of the controller tests, and an
/// operator whose report volume is `<volumes>/reports`.
async fn started_ramp(test: &str) -> (String, tempfile::TempDir, Operator) {
    let ns = cluster().namespace(test, &[]).await;
    let (mesh, bench) = documents();
    apply(&ns, Some(mesh), bench).await;
    let volumes = tempfile::tempdir().unwrap();
    let op = Operator::start(&volumes.path().join("reports"), 0).await;
    (ns, volumes, op)
}

/// The mesh and Benchmark `ramp` of the controller tests, plus Benchmark `second` with
/// the same spec on the same mesh.
async fn two_on_one_mesh(ns: &str) {
    let (mesh, bench) = documents();
    apply(ns, Some(mesh), bench.clone()).await;
    let mut second = bench;
    second["metadata"]["name"] = "second".into();
    apply(ns, None, second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_benchmarks_on_one_mesh_take_turns() {
    let ns = cluster().namespace("bench-claims", &[]).await;
    two_on_one_mesh(&ns).await;
    let volumes = tempfile::tempdir().unwrap();
    let op = Operator::start(&volumes.path().join("reports"), 0).await;

    reconcile(&op, &ns, "ramp", None).await;
    let first = status(&ns, "ramp").await.run_id.expect("ramp started");
    let lease = claim(&ns, "shop").await.expect("ramp claims the mesh");
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some(format!("ramp/{first}").as_str())
    );

    // The second waits, says on which run, and starts nothing.
    reconcile(&op, &ns, "second", None).await;
    let waiting = status(&ns, "second").await;
    assert!(waiting.run_id.is_none(), "{waiting:?}");
    let (is, reason, message) = condition(&waiting, "Waiting");
    assert_eq!((is.as_str(), reason.as_str()), ("True", "MeshInUse"));
    assert!(
        message.contains(&format!("Benchmark ramp (run {first})")),
        "{message}"
    );
    assert_eq!(events(&ns, "MeshInUse").await.len(), 1);

    // ramp's run ends (here: cancelled by a spec change); its claim goes with it and the
    // second starts at its next look.
    Api::<Benchmark>::namespaced(cluster().admin().await, &ns)
        .patch(
            "ramp",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "settle": "2s" } })),
        )
        .await
        .unwrap();
    reconcile(&op, &ns, "ramp", None).await;
    assert_eq!(status(&ns, "ramp").await.phase, Phase::Failed);
    assert!(claim(&ns, "shop").await.is_none(), "claim released");
    reconcile(&op, &ns, "second", None).await;
    let started = status(&ns, "second").await;
    let second_run = started.run_id.clone().expect("second started");
    assert_eq!(condition(&started, "Waiting").0, "False");

    // Now ramp's new spec waits for the second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    reconcile(&op, &ns, "ramp", None).await;
    let ramp = status(&ns, "ramp").await;
    assert_eq!(ramp.run_id.as_deref(), Some(first.as_str()), "no new run");
    let (is, _, message) = condition(&ramp, "Waiting");
    assert_eq!(is, "True");
    assert!(
        message.contains(&format!("Benchmark second (run {second_run})")),
        "{message}"
    );
    op.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_view_neither_starts_a_second_run_nor_rolls_the_status_back() {
    let (ns, volumes, op) = started_ramp("bench-stale").await;
    let data = volumes.path().join("reports");

    // A cache that has not seen the run start yet.
    let before_start = get(&ns, "ramp").await.unwrap();
    reconcile(&op, &ns, "ramp", None).await;
    let started = status(&ns, "ramp").await;
    let run = started.run_id.clone().expect("started");
    // Run ids are per second: a second start would get another one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    reconcile(&op, &ns, "ramp", Some(before_start)).await;
    let after = status(&ns, "ramp").await;
    assert_eq!(after.run_id.as_deref(), Some(run.as_str()));
    assert_eq!(
        std::fs::read_dir(data.join(&ns)).unwrap().count(),
        1,
        "one run directory"
    );

    // A cache one transition behind the run: its write would roll the phase back.
    let behind = get(&ns, "ramp").await.unwrap();
    reconcile(&op, &ns, "ramp", None).await;
    let moved = status(&ns, "ramp").await;
    assert_ne!(
        moved.state,
        behind.status.clone().unwrap().state,
        "the run moved on"
    );
    reconcile(&op, &ns, "ramp", Some(behind)).await;
    assert_eq!(status(&ns, "ramp").await.state, moved.state, "rolled back");
    op.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_state_is_unreadable_fails_with_a_reason_and_an_event() {
    let (ns, _volumes, op) = started_ramp("bench-unreadable").await;
    reconcile(&op, &ns, "ramp", None).await;
    assert!(
        get(&ns, "ramp")
            .await
            .unwrap()
            .metadata
            .finalizers
            .is_some()
    );

    // As after a downgrade: a state this version cannot read.
    Api::<Benchmark>::namespaced(cluster().admin().await, &ns)
        .patch_status(
            "ramp",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "state": { "machine": "from the future" } } })),
        )
        .await
        .unwrap();
    reconcile(&op, &ns, "ramp", None).await;
    let failed = status(&ns, "ramp").await;
    assert_eq!(failed.phase, Phase::Failed);
    let (is, reason, message) = condition(&failed, "Failed");
    assert_eq!((is.as_str(), reason.as_str()), ("True", "Unresumable"));
    assert!(message.contains("status.state"), "{message}");
    assert_eq!(condition(&failed, "Complete").0, "False");
    assert_eq!(events(&ns, "Unresumable").await.len(), 1);
    assert!(claim(&ns, "shop").await.is_none(), "claim released");
    let bench = get(&ns, "ramp").await.unwrap();
    assert!(bench.metadata.finalizers.unwrap_or_default().is_empty());
    // And it stays failed: no retry loop.
    reconcile(&op, &ns, "ramp", None).await;
    assert_eq!(status(&ns, "ramp").await.phase, Phase::Failed);
    op.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_report_volume_was_lost_fails_instead_of_retrying() {
    let (ns, volumes, op) = started_ramp("bench-lost-volume").await;
    let data = volumes.path().join("reports");
    reconcile(&op, &ns, "ramp", None).await;
    assert!(!status(&ns, "ramp").await.phase.is_terminal());
    std::fs::remove_dir_all(&data).unwrap();
    reconcile(&op, &ns, "ramp", None).await;
    let failed = status(&ns, "ramp").await;
    assert_eq!(failed.phase, Phase::Failed);
    let (is, reason, message) = condition(&failed, "Failed");
    assert_eq!((is.as_str(), reason.as_str()), ("True", "Unresumable"));
    assert!(message.contains("report volume"), "{message}");
    op.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_benchmark_mid_run_writes_its_partial_report_first() {
    let (ns, volumes, op) = started_ramp("bench-delete").await;
    let data = volumes.path().join("reports");
    reconcile(&op, &ns, "ramp", None).await;
    let run = status(&ns, "ramp").await.run_id.expect("started");
    let bench = get(&ns, "ramp").await.unwrap();
    assert_eq!(bench.metadata.finalizers, Some(vec![FINALIZER.to_string()]));

    Api::<Benchmark>::namespaced(cluster().admin().await, &ns)
        .delete("ramp", &DeleteParams::default())
        .await
        .unwrap();
    // The finalizer holds the object until the report is written.
    let deleting = get(&ns, "ramp").await.expect("held by the finalizer");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    reconcile(&op, &ns, "ramp", None).await;
    assert!(get(&ns, "ramp").await.is_none(), "deleted once finalized");
    let run_json: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join(&ns).join(&run).join("run.json"))
            .expect("the report was written"),
    )
    .unwrap();
    assert_eq!(run_json["partial"], true, "{run_json}");
    assert!(claim(&ns, "shop").await.is_none(), "claim released");
    op.stop();
}
