//! Rendered Kubernetes objects: golden snapshots (regenerate with `UPDATE_GOLDEN=1`),
//! strict round trips through the k8s-openapi types, the Pod Security "restricted"
//! rules, and the rules the controller relies on (no replicas under an HPA, config hash).

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, Service};
use meshbench_crds::{Bundle, ServiceMesh, ValidMesh};
use meshbench_operator::k8s::pss::restricted_violations;
use meshbench_operator::k8s::render::{
    self, RenderOptions, dns_name, render_bundle_yaml_with, render_mesh,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Fixed options so snapshots do not change with the crate version.
fn opts() -> RenderOptions {
    RenderOptions {
        image: "ghcr.io/meshbench/meshbench:test".into(),
        ..RenderOptions::default()
    }
}

fn check_golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let diff_line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the rendered output at line {} (expected {:?}, got {:?}); review \
             and run with UPDATE_GOLDEN=1 to accept",
            path.display(),
            diff_line + 1,
            expected.lines().nth(diff_line),
            actual.lines().nth(diff_line)
        );
    }
}

fn render_file(rel: &str) -> String {
    let bundle = Bundle::load_files(&[root().join(rel)]);
    assert!(bundle.is_valid(), "{:?}", bundle.diagnostics);
    render_bundle_yaml_with(&bundle, &opts()).unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// value → typed → value must be the identity: k8s-openapi ignores unknown fields on
/// input, so a misspelt or misplaced field disappears and the comparison fails.
fn round_trip<T: DeserializeOwned + Serialize>(v: &Value) -> T {
    let typed: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("does not deserialize: {e}\n{v:#}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, v,
        "round trip changed the object (unknown or misplaced field?)"
    );
    typed
}

/// Checks every document strictly and returns the pod specs of workloads.
fn check_documents(docs: &[Value]) -> Vec<PodSpec> {
    let mut pods = Vec::new();
    for d in docs {
        let kind = d["kind"].as_str().unwrap();
        match (d["apiVersion"].as_str().unwrap(), kind) {
            ("v1", "ConfigMap") => {
                round_trip::<ConfigMap>(d);
            }
            ("v1", "Service") => {
                round_trip::<Service>(d);
            }
            ("apps/v1", "Deployment") => {
                let dep = round_trip::<Deployment>(d);
                pods.push(dep.spec.unwrap().template.spec.unwrap());
            }
            ("autoscaling/v2", "HorizontalPodAutoscaler") => {
                round_trip::<HorizontalPodAutoscaler>(d);
            }
            ("batch/v1", "Job") => {
                let job = round_trip::<Job>(d);
                pods.push(job.spec.unwrap().template.spec.unwrap());
            }
            (v, k) => panic!("unexpected object {v}/{k}"),
        }
    }
    pods
}

#[test]
fn quickstart_golden_strict_and_restricted() {
    let yaml = render_file("../experiments/quickstart.yaml");
    check_golden("quickstart.yaml", &yaml);
    let docs = documents(&yaml);
    // 2 services × (ConfigMap, Service, Deployment) + 1 HPA + plan ConfigMap + Job.
    assert_eq!(docs.len(), 9);
    let pods = check_documents(&docs);
    assert_eq!(pods.len(), 3);
    for p in &pods {
        assert_eq!(restricted_violations(p), Vec::<String>::new());
    }
}

#[test]
fn exposed_golden_strict_and_restricted() {
    let yaml = render_file("tests/golden/exposed-input.yaml");
    check_golden("exposed.yaml", &yaml);
    let docs = documents(&yaml);
    for p in check_documents(&docs) {
        assert_eq!(restricted_violations(&p), Vec::<String>::new());
    }
    let svc = |name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(svc("shop-gateway")["spec"]["type"], "NodePort");
    assert_eq!(svc("shop-gateway")["spec"]["ports"][0]["nodePort"], 30080);
    assert_eq!(svc("shop-gateway")["spec"]["ports"][0]["port"], 9000);
    assert_eq!(svc("shop-cart")["spec"]["type"], "LoadBalancer");
    assert_eq!(svc("shop-payment")["spec"]["type"], "ClusterIP");
    let job = docs.iter().find(|d| d["kind"] == "Job").unwrap();
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(job["spec"]["parallelism"], 4);
    assert_eq!(job["spec"]["completions"], 4);
    assert_eq!(job["metadata"]["namespace"], "perf");
    // One sending thread per whole core of the load pod's CPU limit (2).
    let args: Vec<&str> = job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let threads = args.iter().position(|a| *a == "--worker-threads").unwrap();
    assert_eq!(args[threads + 1], "2");
    // The plan targets the gateway through its Service, with the parsed query.
    let plan_cm = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["labels"]["app.kubernetes.io/component"] == "loadgen"
        })
        .unwrap();
    let plan = meshbench_loadgen::load_plan::LoadPlan::from_json(
        plan_cm["data"]["plan.json"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(plan.target, "http://shop-gateway:9000");
    assert_eq!(plan.request.method, "POST");
    assert_eq!(plan.request.query["user"], "7");
    assert_eq!(plan.labels["step"], "0");
}

fn mesh_from(yaml: &str) -> ServiceMesh {
    let bundle = Bundle::from_str("inline.yaml", yaml);
    assert!(bundle.is_valid(), "{:?}", bundle.diagnostics);
    bundle.meshes[0].mesh.clone()
}

/// `mesh`, which must pass validation, as rendering takes it.
fn valid(mesh: ServiceMesh) -> ValidMesh {
    ValidMesh::new(mesh).expect("valid mesh")
}

fn quickstart_mesh() -> ServiceMesh {
    let text = std::fs::read_to_string(root().join("../experiments/quickstart.yaml")).unwrap();
    let bundle = Bundle::from_str("quickstart.yaml", &text);
    bundle.meshes[0].mesh.clone()
}

#[test]
fn owned_objects_carry_owner_reference_and_labels() {
    let mut mesh = quickstart_mesh();
    mesh.metadata.uid = Some("0b5a1e7c-0000-4000-8000-000000000001".into());
    mesh.metadata.namespace = Some("bench".into());
    let objects = render_mesh(&valid(mesh), &opts()).unwrap();
    let values = objects.values().unwrap();
    check_golden(
        "quickstart-owned.yaml",
        &render::to_yaml_stream(&values).unwrap(),
    );
    for v in &values {
        let owner = &v["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ServiceMesh");
        assert_eq!(owner["apiVersion"], "meshbench.io/v1alpha1");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["uid"], "0b5a1e7c-0000-4000-8000-000000000001");
        assert_eq!(v["metadata"]["namespace"], "bench");
        let labels = &v["metadata"]["labels"];
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
            "app.kubernetes.io/part-of",
            "app.kubernetes.io/managed-by",
            "meshbench.io/mesh",
            "meshbench.io/service",
        ] {
            assert!(labels[key].is_string(), "{key} missing in {v}");
        }
    }
}

#[test]
fn no_replicas_under_an_hpa_and_hpa_matches_spec() {
    let objects = render_mesh(&valid(quickstart_mesh()), &opts()).unwrap();
    let frontend = &objects.services[0];
    let backend = &objects.services[1];
    assert_eq!(frontend.deployment.spec.as_ref().unwrap().replicas, Some(1));
    assert!(frontend.hpa.is_none());
    assert!(backend.autoscaled);
    let dep = serde_json::to_value(&backend.deployment).unwrap();
    assert!(dep["spec"].get("replicas").is_none(), "{dep}");
    let hpa = serde_json::to_value(backend.hpa.as_ref().unwrap()).unwrap();
    assert_eq!(hpa["spec"]["minReplicas"], 1);
    assert_eq!(hpa["spec"]["maxReplicas"], 3);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "quickstart-backend");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        50
    );
    // behavior is passed through untouched.
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        10
    );
    assert_eq!(
        hpa["spec"]["behavior"]["scaleUp"]["policies"][0]["periodSeconds"],
        5
    );
}

fn config_hash(o: &render::ServiceObjects) -> String {
    o.deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()["meshbench.io/config-hash"]
        .clone()
}

#[test]
fn config_hash_changes_exactly_when_the_worker_config_changes() {
    let a = render_mesh(&valid(quickstart_mesh()), &opts()).unwrap();
    let b = render_mesh(&valid(quickstart_mesh()), &opts()).unwrap();
    assert_eq!(config_hash(&a.services[1]), config_hash(&b.services[1]));

    let mut changed = quickstart_mesh();
    changed.spec.services[1].endpoints[0].cpu = Some("20ms".into());
    let c = render_mesh(&valid(changed), &opts()).unwrap();
    assert_ne!(config_hash(&a.services[1]), config_hash(&c.services[1]));
    // The frontend's config does not depend on the backend's CPU cost.
    assert_eq!(config_hash(&a.services[0]), config_hash(&c.services[0]));

    // Replica count alone is not part of the worker config: no roll.
    let mut scaled = quickstart_mesh();
    scaled.spec.services[0].replicas = Some(3);
    let d = render_mesh(&valid(scaled), &opts()).unwrap();
    assert_eq!(config_hash(&a.services[0]), config_hash(&d.services[0]));
    assert_eq!(
        d.services[0].deployment.spec.as_ref().unwrap().replicas,
        Some(3)
    );
}

#[test]
fn workers_call_each_other_through_mesh_scoped_services() {
    let objects = render_mesh(&valid(quickstart_mesh()), &opts()).unwrap();
    let cm = &objects.services[0].config_map;
    let cfg: meshbench_worker::config::WorkerConfig =
        serde_json::from_str(&cm.data.as_ref().unwrap()[render::WORKER_CONFIG_KEY]).unwrap();
    cfg.validate().unwrap();
    let call = &cfg.endpoints[0].call_groups[0][0];
    assert_eq!(call.url, "http://quickstart-backend:8080");
    assert_eq!(call.path, "/work");
}

#[test]
fn names_are_dns_labels() {
    assert_eq!(dns_name(&["shop", "cart"]), "shop-cart");
    assert_eq!(dns_name(&["1mesh", "a"]), "mb-1mesh-a");
    let long = "a".repeat(60);
    let x = dns_name(&[&long, "frontend"]);
    let y = dns_name(&[&long, "backend"]);
    assert!(x.len() <= 63 && y.len() <= 63, "{x} {y}");
    assert_ne!(x, y);
    assert!(!x.contains("--"));
}

#[test]
fn invalid_input_is_refused_with_the_validate_messages() {
    let bundle = Bundle::from_str(
        "bad.yaml",
        "apiVersion: meshbench.io/v1alpha1\nkind: ServiceMesh\nmetadata: {name: m}\nspec:\n  services:\n    - name: a\n      endpoints:\n        - path: /\n          calls: [{service: nowhere}]\n",
    );
    assert!(!bundle.is_valid());
    let err = render::render_bundle_yaml(&bundle).unwrap_err().to_string();
    for d in &bundle.diagnostics {
        assert!(err.contains(&d.to_string()), "{err}");
    }
}

#[test]
fn restricted_check_catches_violations() {
    let mut spec = render_mesh(&valid(mesh_from(
        "apiVersion: meshbench.io/v1alpha1\nkind: ServiceMesh\nmetadata: {name: m}\nspec:\n  services:\n    - name: a\n      endpoints: [{path: /}]\n",
    )), &opts())
    .unwrap()
    .services[0]
        .deployment
        .spec
        .clone()
        .unwrap()
        .template
        .spec
        .unwrap();
    assert!(restricted_violations(&spec).is_empty());
    spec.host_network = Some(true);
    let sc = spec.containers[0].security_context.as_mut().unwrap();
    sc.allow_privilege_escalation = None;
    sc.capabilities.as_mut().unwrap().drop = None;
    sc.capabilities.as_mut().unwrap().add = Some(vec!["SYS_ADMIN".into()]);
    sc.run_as_non_root = Some(false);
    spec.security_context.as_mut().unwrap().seccomp_profile = None;
    sc.seccomp_profile = None;
    let v = restricted_violations(&spec);
    for needle in [
        "hostNetwork",
        "allowPrivilegeEscalation",
        "capabilities.drop",
        "SYS_ADMIN",
        "runAsNonRoot",
        "seccompProfile",
    ] {
        assert!(
            v.iter().any(|m| m.contains(needle)),
            "{needle} not in {v:?}"
        );
    }
}

/// Load Jobs take their own image when one is set (a worker-only image has no loadgen);
/// the workers keep theirs.
#[test]
fn load_jobs_use_the_loadgen_image_when_set() {
    let bundle = Bundle::load_files(&[root().join("../experiments/quickstart.yaml")]);
    let opts = RenderOptions {
        image: "registry.example/meshbench-worker:1".into(),
        loadgen_image: Some("registry.example/meshbench:1".into()),
        ..RenderOptions::default()
    };
    let yaml = render_bundle_yaml_with(&bundle, &opts).unwrap();
    let mut images = Vec::new();
    for doc in yaml.split("\n---\n").filter(|d| !d.trim().is_empty()) {
        let v: Value = serde_yaml::from_str(doc).unwrap();
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        if let Some(c) = v["spec"]["template"]["spec"]["containers"].as_array() {
            images.push((kind, c[0]["image"].as_str().unwrap().to_string()));
        }
    }
    assert!(
        images.contains(&("Job".into(), "registry.example/meshbench:1".into())),
        "{images:?}"
    );
    assert!(
        images
            .iter()
            .filter(|(k, _)| k == "Deployment")
            .all(|(_, i)| i == "registry.example/meshbench-worker:1"),
        "{images:?}"
    );
}
