//! The results endpoint treats what reaches it as hostile: every rejection of a POSTed
//! result, request by request through the router (`oneshot`), with tokens checked against
//! real Benchmarks (their UIDs) on the real API server and results from real
//! `meshbench loadgen` processes.

use std::sync::Arc;

use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use kube::api::{Api, PostParams};
use meshbench_crds::Benchmark;
use meshbench_loadgen::LoadResult;
use meshbench_operator::k8s::results::{self, ResultsState};
use meshbench_operator::k8s::store::{SpecSnapshot, Store};
use meshbench_operator::k8s::token::TokenKey;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::cluster::cluster;

const BIN: &str = env!("CARGO_BIN_EXE_meshbench");
const RUN: &str = "ramp-20261130t000000z";

const BENCH: &str = r#"
apiVersion: meshbench.io/v1alpha1
kind: Benchmark
metadata: { name: ramp }
spec:
  meshes: [shop]
  target: { service: api, path: / }
  load: { model: open }
  loadgen: { parallelism: 2 }
  profile:
    stages:
      - { rate: 20, duration: 1s }
      - { rate: 40, duration: 1s }
"#;

/// Creates Benchmark `name` in `ns` (the admin's apply); returns it as stored (with UID).
async fn create(ns: &str, name: &str) -> Benchmark {
    let mut b: Benchmark = serde_yaml::from_str(BENCH).expect("benchmark");
    b.metadata.name = Some(name.into());
    Api::<Benchmark>::namespaced(cluster().admin().await, ns)
        .create(&PostParams::default(), &b)
        .await
        .expect("create benchmark")
}

/// Results of two real loadgen instances against a local HTTP server.
async fn two_instances() -> (Value, Value) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let app = axum::Router::new().route("/", get(|| async { "ok" }));
        let _ = axum::serve(listener, app).await;
    });
    let mut out = Vec::new();
    for i in 0..2 {
        let o = tokio::process::Command::new(BIN)
            .args([
                "loadgen",
                "--url",
                &format!("http://{addr}/"),
                "--rate",
                "20",
            ])
            .args([
                "--duration",
                "1s",
                "--instances",
                "2",
                "--index",
                &i.to_string(),
                "--quiet",
            ])
            .output()
            .await
            .expect("loadgen");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out.push(serde_json::from_slice::<Value>(&o.stdout).expect("result JSON"));
    }
    server.abort();
    (out.remove(0), out.remove(0))
}

async fn post(
    router: &axum::Router,
    path: &str,
    token: &str,
    body: &Value,
) -> (StatusCode, String) {
    let req = Request::post(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_result_is_refused_and_a_retry_is_idempotent() {
    let ns = cluster().namespace("results", &[]).await;
    let key = TokenKey::new(&[42u8; 32]);
    let benchmark = create(&ns, "ramp").await;
    let other = create(&ns, "other").await;
    let uid = |b: &Benchmark| b.metadata.uid.clone().expect("uid");
    let ramp_token = key.token(&ns, "ramp", &uid(&benchmark));
    let other_token = key.token(&ns, "other", &uid(&other));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    store
        .start_run(
            &ns,
            RUN,
            &SpecSnapshot {
                benchmark: benchmark.clone(),
                meshes: vec![],
            },
        )
        .unwrap();
    let router = results::routes(Arc::new(ResultsState {
        client: cluster().operator().await,
        store: store.clone(),
        token_key: key.clone(),
    }));
    let ramp_token = ramp_token.as_str();
    let (r0, r1) = two_instances().await;
    let at = |step: usize| format!("/v1/results/{ns}/ramp/{RUN}/{step}");

    // No Job runs yet: nothing is accepted.
    let (code, msg) = post(&router, &at(0), ramp_token, &r0).await;
    assert_eq!(code, StatusCode::CONFLICT, "{msg}");
    store.set_current_step(&ns, RUN, 0).unwrap();

    // Tokens: missing, wrong, or another benchmark's (valid for its own runs only).
    let req = Request::post(at(0))
        .body(Body::from(r0.to_string()))
        .unwrap();
    assert_eq!(
        router.clone().oneshot(req).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&router, &at(0), "guess", &r0).await.0,
        StatusCode::FORBIDDEN
    );
    // The token of an earlier Benchmark of the same name (another UID), or of another
    // operator key, opens nothing.
    let earlier = key.token(&ns, "ramp", "00000000-0000-0000-0000-000000000000");
    assert_eq!(
        post(&router, &at(0), &earlier, &r0).await.0,
        StatusCode::FORBIDDEN
    );
    let foreign = TokenKey::new(&[1u8; 32]).token(&ns, "ramp", &uid(&benchmark));
    assert_eq!(
        post(&router, &at(0), &foreign, &r0).await.0,
        StatusCode::FORBIDDEN
    );
    let other_path = format!("/v1/results/{ns}/other/{RUN}/0");
    assert_eq!(
        post(&router, &other_path, &other_token, &r0).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(&router, &other_path, ramp_token, &r0).await.0,
        StatusCode::FORBIDDEN
    );

    // A step that is not the running one.
    assert_eq!(
        post(&router, &at(1), ramp_token, &r0).await.0,
        StatusCode::CONFLICT
    );
    // An instance outside the Job's 0..2.
    let mut outside = r0.clone();
    outside["plan"]["instance"]["index"] = 2.into();
    assert_eq!(
        post(&router, &at(0), ramp_token, &outside).await.0,
        StatusCode::BAD_REQUEST
    );
    // Not a result at all; a path name that cannot be a name.
    assert_eq!(
        post(
            &router,
            &at(0),
            ramp_token,
            &serde_json::json!({"version": 1})
        )
        .await
        .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let (code, _) = post(
        &router,
        &format!("/v1/results/{ns}/ramp/..%2F..%2Fetc/0"),
        ramp_token,
        &r0,
    )
    .await;
    assert!(
        code == StatusCode::BAD_REQUEST || code == StatusCode::NOT_FOUND,
        "{code}"
    );

    // The first result; a retry of it is accepted once; a different one is refused.
    assert_eq!(
        post(&router, &at(0), ramp_token, &r0).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        post(&router, &at(0), ramp_token, &r0).await.0,
        StatusCode::NO_CONTENT
    );
    let mut changed = r0.clone();
    changed["stages"][0]["counts"]["ok"] = 1.into();
    assert_eq!(
        post(&router, &at(0), ramp_token, &changed).await.0,
        StatusCode::CONFLICT
    );

    // Counts that overflow when added to instance 0's: refused with a clear message, no panic.
    let mut huge = r1.clone();
    huge["stages"][0]["counts"]["ok"] = u64::MAX.into();
    let (code, msg) = post(&router, &at(0), ramp_token, &huge).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{msg}");
    assert!(msg.contains("overflow"), "{msg}");

    // The second instance completes the step: two distinct indexes.
    assert_eq!(
        post(&router, &at(0), ramp_token, &r1).await.0,
        StatusCode::NO_CONTENT
    );
    let stored = store.instance_results(&ns, RUN, 0).unwrap();
    assert_eq!(stored.len(), 2);
    assert!(LoadResult::merge(&stored).is_ok());
}

/// The operator's key: created once in its own namespace as its ServiceAccount, then read
/// back by every start (so tokens survive restarts); and that ServiceAccount can read no
/// Secret anywhere else, tokens being checked by HMAC.
#[tokio::test]
async fn the_token_key_is_created_once_and_other_secrets_stay_unreadable() {
    use k8s_openapi::api::core::v1::Secret;
    use meshbench_operator::k8s::token::KEY_SECRET;

    let operator = cluster().operator().await;
    let own_ns = crate::cluster::OPERATOR_SA.0;
    let first = TokenKey::load_or_create(operator.clone(), own_ns)
        .await
        .unwrap();
    let again = TokenKey::load_or_create(operator.clone(), own_ns)
        .await
        .unwrap();
    assert_eq!(first.token("ns", "b", "u"), again.token("ns", "b", "u"));
    let secret = Api::<Secret>::namespaced(cluster().admin().await, own_ns)
        .get(KEY_SECRET)
        .await
        .expect("the key Secret");
    assert!(secret.data.unwrap()["key"].0.len() >= 32);

    let ns = cluster().namespace("results-rbac", &[]).await;
    let denied = Api::<Secret>::namespaced(operator, &ns)
        .get_opt("anything")
        .await
        .expect_err("no Secret reads outside the operator's namespace");
    assert!(
        matches!(&denied, kube::Error::Api(s) if s.code == 403),
        "{denied}"
    );
}
