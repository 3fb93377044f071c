//! The ServiceMesh controller against a mocked API server (kube's tower-test pattern):
//! each scenario scripts the exact requests a reconcile must make, in order, answers
//! them, and checks every request is covered by the RBAC table.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use meshbench_crds::{Bundle, ServiceMesh};
use meshbench_operator::k8s::mesh_controller::{self, Context, backoff};
use meshbench_operator::k8s::metrics::Metrics;
use meshbench_operator::k8s::rbac;
use meshbench_operator::k8s::render::RenderOptions;
use serde_json::{Value, json};

const NS: &str = "bench";

/// How the fake API server answers one expected request.
enum Reply {
    /// Echo the applied object back, with this Deployment status when it is one.
    Echo,
    /// Echo a Deployment with the given ready replicas (observed, up to date).
    DeploymentReady(i32),
    /// A list of these items.
    List(Vec<Value>),
    /// This object.
    Object(Value),
    /// The mesh with the status from the request (what a status patch returns).
    MeshWithStatus,
}

/// A check on a request body.
type BodyCheck = Box<dyn Fn(&Value) + Send>;

struct Expect {
    method: Method,
    path: String,
    reply: Reply,
    /// Checks on the request body.
    check: Option<BodyCheck>,
}

fn expect(method: Method, path: &str, reply: Reply) -> Expect {
    Expect {
        method,
        path: path.to_string(),
        reply,
        check: None,
    }
}

impl Expect {
    fn check(mut self, f: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Some(Box::new(f));
        self
    }
}

fn core(resource: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/{resource}/{name}")
}
fn apps(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}")
}
fn hpa(name: &str) -> String {
    format!("/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/{name}")
}
fn status_path(name: &str) -> String {
    format!("/apis/meshbench.io/v1alpha1/namespaces/{NS}/servicemeshes/{name}/status")
}
fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
}
fn list_path(kind: &str) -> String {
    match kind {
        "hpa" => format!("/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers"),
        "deployments" => format!("/apis/apps/v1/namespaces/{NS}/deployments"),
        other => format!("/api/v1/namespaces/{NS}/{other}"),
    }
}

/// Serves `script` in order and returns the requests seen as (method, path, query).
async fn serve(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    script: Vec<Expect>,
    mesh: Value,
) -> Vec<(String, String, String)> {
    let mut seen = Vec::new();
    for (i, e) in script.into_iter().enumerate() {
        let (request, send) = handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("request {i} ({} {}) was never made", e.method, e.path));
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or("").to_string();
        assert_eq!(
            (&method, path.as_str()),
            (&e.method, e.path.as_str()),
            "request {i}: expected {} {}, got {method} {path}?{query}",
            e.method,
            e.path
        );
        let (group, resource, verb) = rbac::request_attributes(method.as_str(), &path, &query)
            .unwrap_or_else(|| panic!("{path} is not a resource request"));
        assert!(
            rbac::allows(&group, &resource, &verb),
            "the RBAC table lacks {verb} on {group}/{resource} used by {method} {path}"
        );
        if method == Method::PATCH {
            assert!(query.contains("fieldManager=meshbench"), "{query}");
            assert!(query.contains("force=true"), "{query}");
        }
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        if let Some(check) = &e.check {
            check(&body);
        }
        let reply = match e.reply {
            Reply::Echo => body,
            Reply::DeploymentReady(ready) => {
                let mut d = body;
                d["metadata"]["generation"] = json!(1);
                let desired = d["spec"]["replicas"].as_i64().unwrap_or(1);
                d["spec"]["replicas"] = json!(desired);
                d["status"] = json!({
                    "observedGeneration": 1,
                    "replicas": desired,
                    "updatedReplicas": desired,
                    "readyReplicas": ready,
                });
                d
            }
            Reply::List(items) => json!({"metadata": {}, "items": items}),
            Reply::Object(v) => v,
            Reply::MeshWithStatus => {
                let mut m = mesh.clone();
                m["status"] = body["status"].clone();
                m
            }
        };
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        seen.push((method.to_string(), path, query));
    }
    seen
}

fn quickstart() -> ServiceMesh {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../experiments/quickstart.yaml"
    );
    let bundle = Bundle::load_files(&[path]);
    let mut mesh = bundle.meshes[0].mesh.clone();
    mesh.metadata.namespace = Some(NS.into());
    mesh.metadata.uid = Some("6f1c2a4e-0000-4000-8000-00000000aaaa".into());
    mesh.metadata.generation = Some(1);
    mesh
}

async fn run(mesh: ServiceMesh, script: Vec<Expect>) -> (Action, Vec<(String, String, String)>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let ctx = Arc::new(Context::new(
        client,
        RenderOptions {
            image: "ghcr.io/meshbench/meshbench:test".into(),
            ..RenderOptions::default()
        },
        Arc::new(Metrics::default()),
        Some("test".into()),
    ));
    let mesh_json = serde_json::to_value(&mesh).unwrap();
    let server = tokio::spawn(serve(handle, script, mesh_json));
    let action = tokio::time::timeout(
        Duration::from_secs(30),
        mesh_controller::reconcile(Arc::new(mesh), ctx.clone()),
    )
    .await
    .expect("reconcile timed out")
    .expect("reconcile failed");
    let seen = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("scripted server timed out")
        .expect("scripted server panicked");
    (action, seen)
}

fn apply_service(name: &str, autoscaled: bool, ready: i32) -> Vec<Expect> {
    let mut v = vec![
        expect(Method::PATCH, &core("configmaps", name), Reply::Echo).check(|b| {
            assert_eq!(b["kind"], "ConfigMap");
            assert!(b["data"]["worker.json"].is_string());
        }),
        expect(Method::PATCH, &core("services", name), Reply::Echo),
        expect(Method::PATCH, &apps(name), Reply::DeploymentReady(ready)).check(move |b| {
            // The HPA rule: never write spec.replicas of an autoscaled Deployment.
            assert_eq!(
                b["spec"].get("replicas").is_some(),
                !autoscaled,
                "spec.replicas presence wrong: {b}"
            );
            assert!(
                b["spec"]["template"]["metadata"]["annotations"]["meshbench.io/config-hash"]
                    .is_string()
            );
        }),
    ];
    if autoscaled {
        v.push(expect(Method::PATCH, &hpa(name), Reply::Echo));
    }
    v
}

fn empty_prune() -> Vec<Expect> {
    ["hpa", "deployments", "services", "configmaps"]
        .into_iter()
        .map(|k| expect(Method::GET, &list_path(k), Reply::List(vec![])))
        .collect()
}

#[tokio::test]
async fn create_applies_every_object_then_reports_not_ready() {
    let mut script = Vec::new();
    script.extend(apply_service("quickstart-frontend", false, 0));
    script.extend(apply_service("quickstart-backend", true, 0));
    script.extend(empty_prune());
    script.push(
        expect(
            Method::PATCH,
            &status_path("quickstart"),
            Reply::MeshWithStatus,
        )
        .check(|b| {
            let s = &b["status"];
            assert_eq!(s["observedGeneration"], 1);
            assert_eq!(s["readyText"], "0/2");
            assert_eq!(s["totalServices"], 2);
            assert_eq!(s["services"][1]["name"], "backend");
            let cond = |t: &str| {
                s["conditions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["type"] == t)
                    .unwrap()
                    .clone()
            };
            assert_eq!(cond("Valid")["status"], "True");
            assert_eq!(cond("Ready")["status"], "False");
            assert_eq!(cond("Ready")["reason"], "ReplicasNotReady");
        }),
    );
    script.push(
        expect(Method::POST, &events_path(), Reply::Echo).check(|b| {
            assert_eq!(b["reason"], "NotReady");
            assert_eq!(b["regarding"]["kind"], "ServiceMesh");
        }),
    );
    let (action, seen) = run(quickstart(), script).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    // Prune lists select only this mesh's worker objects of services no longer there.
    let list = &seen[7].2;
    assert!(list.contains("labelSelector="), "{list}");
    let decoded = list
        .replace("%2F", "/")
        .replace("%3D", "=")
        .replace("%2C", ",")
        .replace("%28", "(")
        .replace("%29", ")")
        .replace("%20", " ")
        .replace('+', " ");
    // The first prune list is of HPAs: only the autoscaled backend is kept.
    assert!(
        decoded.contains("meshbench.io/mesh=quickstart,app.kubernetes.io/component=worker,meshbench.io/service notin (backend)"),
        "{decoded}"
    );
}

#[tokio::test]
async fn update_when_ready_sets_ready_and_keeps_transition_times() {
    let mut mesh = quickstart();
    mesh.metadata.generation = Some(2);
    // The status as written by the previous reconcile.
    let prior = meshbench_operator::k8s::mesh_controller::ready_status(
        &Default::default(),
        Some(1),
        &[mesh_controller::Observed {
            service: "backend".into(),
            desired: 1,
            ready: 0,
            up_to_date: true,
        }],
        &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap(),
        ),
    )
    .0;
    mesh.status = Some(prior);
    let mut script = Vec::new();
    script.extend(apply_service("quickstart-frontend", false, 1));
    script.extend(apply_service("quickstart-backend", true, 1));
    script.extend(empty_prune());
    script.push(
        expect(
            Method::PATCH,
            &status_path("quickstart"),
            Reply::MeshWithStatus,
        )
        .check(|b| {
            let s = &b["status"];
            assert_eq!(s["observedGeneration"], 2);
            assert_eq!(s["readyText"], "2/2");
            assert_eq!(s["services"][0]["readyReplicas"], 1);
            let valid = s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Valid")
                .unwrap();
            // Valid stayed True: its transition time is the old one.
            assert_eq!(valid["lastTransitionTime"], "2023-11-14T22:13:20Z");
        }),
    );
    script.push(
        expect(Method::POST, &events_path(), Reply::Echo)
            .check(|b| assert_eq!(b["reason"], "Ready")),
    );
    let (action, _) = run(mesh, script).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

fn existing(kind: &str, api_version: &str, service: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": format!("quickstart-{service}"),
            "namespace": NS,
            "labels": {"meshbench.io/mesh": "quickstart", "meshbench.io/service": service}
        }
    })
}

#[tokio::test]
async fn removed_service_is_pruned() {
    let mut mesh = quickstart();
    // backend removed; frontend calls nothing now.
    mesh.spec.services.truncate(1);
    mesh.spec.services[0].endpoints[0].calls.clear();
    let mut script = Vec::new();
    script.extend(apply_service("quickstart-frontend", false, 1));
    let stale = [
        ("hpa", "HorizontalPodAutoscaler", "autoscaling/v2"),
        ("deployments", "Deployment", "apps/v1"),
        ("services", "Service", "v1"),
        ("configmaps", "ConfigMap", "v1"),
    ];
    for (k, kind, v) in stale {
        let obj = existing(kind, v, "backend");
        script.push(expect(
            Method::GET,
            &list_path(k),
            Reply::List(vec![obj.clone()]),
        ));
        let path = format!("{}/quickstart-backend", list_path(k));
        script.push(expect(Method::DELETE, &path, Reply::Object(obj)));
    }
    script.push(
        expect(
            Method::PATCH,
            &status_path("quickstart"),
            Reply::MeshWithStatus,
        )
        .check(|b| assert_eq!(b["status"]["readyText"], "1/1")),
    );
    script.push(
        expect(Method::POST, &events_path(), Reply::Echo).check(|b| {
            assert_eq!(b["reason"], "Pruned");
            let note = b["note"].as_str().unwrap();
            assert!(note.contains("Deployment/quickstart-backend"), "{note}");
            assert!(
                note.contains("HorizontalPodAutoscaler/quickstart-backend"),
                "{note}"
            );
        }),
    );
    script.push(
        expect(Method::POST, &events_path(), Reply::Echo)
            .check(|b| assert_eq!(b["reason"], "Ready")),
    );
    run(mesh, script).await;
}

#[tokio::test]
async fn invalid_spec_only_writes_valid_false() {
    let mut mesh = quickstart();
    mesh.spec.services[0].endpoints[0].calls[0].service = "nowhere".into();
    let expected =
        mesh_controller::invalid_message(&meshbench_crds::validate::validate_mesh(&mesh));
    assert!(expected.contains("nowhere"), "{expected}");
    let script = vec![
        expect(
            Method::PATCH,
            &status_path("quickstart"),
            Reply::MeshWithStatus,
        )
        .check(move |b| {
            let c = &b["status"]["conditions"][0];
            assert_eq!(c["type"], "Valid");
            assert_eq!(c["status"], "False");
            assert_eq!(c["reason"], "InvalidSpec");
            assert_eq!(c["message"], expected.as_str());
        }),
        expect(Method::POST, &events_path(), Reply::Echo).check(|b| {
            assert_eq!(b["type"], "Warning");
            assert_eq!(b["reason"], "InvalidSpec");
        }),
    ];
    let (action, seen) = run(mesh, script).await;
    assert_eq!(action, Action::await_change());
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn deleted_mesh_is_left_to_the_garbage_collector() {
    let mut mesh = quickstart();
    mesh.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let (action, seen) = run(mesh, vec![]).await;
    assert_eq!(action, Action::await_change());
    assert!(seen.is_empty());
}

#[test]
fn backoff_doubles_and_caps() {
    assert_eq!(backoff(1), Duration::from_secs(5));
    assert_eq!(backoff(2), Duration::from_secs(10));
    assert_eq!(backoff(4), Duration::from_secs(40));
    assert_eq!(backoff(30), Duration::from_secs(300));
}
