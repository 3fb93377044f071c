//! The CRDs of `deploy/crds/` on the real kube-apiserver: every CEL rule rejects a
//! violating object with its message (only a real API server evaluates them), schema
//! bounds are enforced, and `kubectl get` prints the printer columns.

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use meshbench_crds::{Benchmark, ServiceMesh};
use serde_json::{Value, json};

use crate::cluster::cluster;

fn mesh() -> Value {
    json!({
        "apiVersion": "meshbench.io/v1alpha1",
        "kind": "ServiceMesh",
        "metadata": { "name": "m" },
        "spec": {
            "defaults": {
                "resources": {
                    "requests": { "cpu": "100m", "memory": "32Mi" },
                    "limits": { "cpu": "200m", "memory": "64Mi" },
                },
            },
            "services": [{
                "name": "api",
                "replicas": 1,
                "autoscaling": { "minReplicas": 1, "maxReplicas": 3, "targetCPUUtilization": 50 },
                "resources": {
                    "requests": { "cpu": "100m", "memory": "32Mi" },
                    "limits": { "cpu": "200m", "memory": "64Mi" },
                },
                "endpoints": [{
                    "path": "/",
                    "cpu": "1ms",
                    "delay": { "fixed": "1ms" },
                }],
            }],
        },
    })
}

fn bench() -> Value {
    json!({
        "apiVersion": "meshbench.io/v1alpha1",
        "kind": "Benchmark",
        "metadata": { "name": "b" },
        "spec": {
            "meshes": ["m"],
            "target": { "service": "api", "path": "/" },
            "load": { "model": "open" },
            "profile": { "sweep": { "from": 10, "to": 20, "step": 10, "stepDuration": "5s" } },
        },
    })
}

/// `doc` with the value at JSON pointer `at` set to `v` (`None` removes it).
fn with(mut doc: Value, at: &str, v: Option<Value>) -> Value {
    let (parent, key) = at.rsplit_once('/').expect("pointer");
    let p = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"));
    match (p, v) {
        (Value::Object(m), Some(v)) => {
            m.insert(key.to_owned(), v);
        }
        (Value::Object(m), None) => {
            m.remove(key);
        }
        (Value::Array(a), Some(v)) => a[key.parse::<usize>().unwrap()] = v,
        (other, _) => panic!("cannot set {at} in {other}"),
    }
    doc
}

async fn create(ns: &str, doc: &Value) -> Result<(), String> {
    let ar = if doc["kind"] == "ServiceMesh" {
        ApiResource::erase::<ServiceMesh>(&())
    } else {
        ApiResource::erase::<Benchmark>(&())
    };
    let api: Api<DynamicObject> = Api::namespaced_with(cluster().admin().await, ns, &ar);
    let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("object");
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(format!("{} {}", s.code, s.message)),
        Err(e) => panic!("create: {e}"),
    }
}

/// Each case: what it breaks, the document, and a piece of the message it must be
/// rejected with.
fn invalid_cases() -> Vec<(&'static str, Value, &'static str)> {
    let svc = "/spec/services/0";
    vec![
        // CEL rules.
        (
            "minReplicas > maxReplicas",
            with(
                mesh(),
                &format!("{svc}/autoscaling/minReplicas"),
                Some(json!(5)),
            ),
            "minReplicas must not exceed maxReplicas",
        ),
        (
            "minReplicas > maxReplicas in defaults",
            with(
                mesh(),
                "/spec/defaults/autoscaling",
                Some(json!({ "minReplicas": 4, "maxReplicas": 2 })),
            ),
            "minReplicas must not exceed maxReplicas",
        ),
        (
            "requests.cpu > limits.cpu",
            with(
                mesh(),
                &format!("{svc}/resources/requests/cpu"),
                Some(json!("500m")),
            ),
            "requests.cpu must not exceed limits.cpu",
        ),
        (
            "requests.memory > limits.memory",
            with(
                mesh(),
                &format!("{svc}/resources/requests/memory"),
                Some(json!("1Gi")),
            ),
            "requests.memory must not exceed limits.memory",
        ),
        (
            "requests > limits in defaults",
            with(
                mesh(),
                "/spec/defaults/resources/requests/cpu",
                Some(json!("1")),
            ),
            "requests.cpu must not exceed limits.cpu",
        ),
        (
            "two delay distributions",
            with(
                mesh(),
                &format!("{svc}/endpoints/0/delay"),
                Some(json!({ "fixed": "1ms", "uniform": { "min": "1ms", "max": "2ms" } })),
            ),
            "set exactly one of fixed, uniform, exponential, logNormal",
        ),
        (
            "no delay distribution",
            with(
                mesh(),
                &format!("{svc}/endpoints/0/delay"),
                Some(json!({ "seed": 1 })),
            ),
            "set exactly one of fixed, uniform, exponential, logNormal",
        ),
        (
            "stages and sweep",
            with(
                bench(),
                "/spec/profile/stages",
                Some(json!([{ "rate": 10, "duration": "5s" }])),
            ),
            "set exactly one of stages and sweep",
        ),
        (
            "neither stages nor sweep",
            with(bench(), "/spec/profile/sweep", None),
            "set exactly one of stages and sweep",
        ),
        (
            "sweep from > to",
            with(bench(), "/spec/profile/sweep/from", Some(json!(30))),
            "from must not exceed to",
        ),
        // Schema bounds.
        (
            "utilization above 100",
            with(
                mesh(),
                &format!("{svc}/autoscaling/targetCPUUtilization"),
                Some(json!(150)),
            ),
            "targetCPUUtilization",
        ),
        (
            "negative replicas",
            with(mesh(), &format!("{svc}/replicas"), Some(json!(-1))),
            "replicas",
        ),
        (
            "service name not a DNS label",
            with(mesh(), &format!("{svc}/name"), Some(json!("Not_A_Label"))),
            "name",
        ),
        (
            "service name too long",
            with(mesh(), &format!("{svc}/name"), Some(json!("a".repeat(64)))),
            "name",
        ),
        (
            "a bare number where a duration belongs",
            with(mesh(), &format!("{svc}/endpoints/0/cpu"), Some(json!("25"))),
            "cpu",
        ),
        (
            "error rate above 1",
            with(
                mesh(),
                &format!("{svc}/endpoints/0/errorRate"),
                Some(json!(1.5)),
            ),
            "errorRate",
        ),
        (
            "no services",
            with(mesh(), "/spec/services", Some(json!([]))),
            "services",
        ),
        (
            "unknown load model",
            with(bench(), "/spec/load", Some(json!({ "model": "sideways" }))),
            "model",
        ),
        (
            "no meshes",
            with(bench(), "/spec/meshes", Some(json!([]))),
            "meshes",
        ),
        (
            "repetitions above the bound",
            with(bench(), "/spec/repetitions", Some(json!(100_000))),
            "repetitions",
        ),
    ]
}

#[tokio::test]
async fn cel_rules_and_schema_bounds_reject_invalid_objects_with_their_message() {
    let ns = cluster().namespace("crd-rules", &[]).await;
    // The base documents are valid: each case fails for its own reason only.
    create(&ns, &mesh()).await.expect("valid mesh");
    create(&ns, &bench()).await.expect("valid benchmark");
    let mut wrong = Vec::new();
    for (i, (what, doc, message)) in invalid_cases().into_iter().enumerate() {
        let doc = with(doc, "/metadata/name", Some(json!(format!("case-{i}"))));
        match create(&ns, &doc).await {
            Ok(()) => wrong.push(format!("{what}: accepted")),
            Err(e) if e.starts_with("422") && e.contains(message) => {}
            Err(e) => wrong.push(format!("{what}: rejected with '{e}', expected '{message}'")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn kubectl_prints_the_printer_columns() {
    let ns = cluster().namespace("crd-columns", &[]).await;
    create(&ns, &mesh()).await.expect("mesh");
    create(&ns, &bench()).await.expect("benchmark");
    let out = cluster()
        .kubectl(&["get", "servicemeshes,benchmarks", "-n", &ns])
        .expect("kubectl get");
    let headers: Vec<&str> = out.lines().filter(|l| l.starts_with("NAME")).collect();
    assert_eq!(headers.len(), 2, "{out}");
    for want in ["READY", "VALID", "AGE"] {
        assert!(headers[0].contains(want), "{want} in {}", headers[0]);
    }
    for want in ["PHASE", "STEP", "SERVED RPS", "P99 MS", "SLO", "AGE"] {
        assert!(headers[1].contains(want), "{want} in {}", headers[1]);
    }
    assert!(out.contains("servicemesh.meshbench.io/m"), "{out}");
    assert!(out.contains("benchmark.meshbench.io/b"), "{out}");
    // Short names work.
    let short = cluster()
        .kubectl(&["get", "mesh,bench", "-n", &ns, "-o", "name"])
        .expect("short names");
    assert!(
        short.contains("servicemesh.meshbench.io/m") && short.contains("benchmark.meshbench.io/b"),
        "{short}"
    );
}
