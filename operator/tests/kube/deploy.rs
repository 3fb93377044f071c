//! The deployment kit under deploy/: RBAC equals the code's permission table, the
//! kustomization names files that exist, the operator pod meets Pod Security
//! "restricted", and every manifest deserializes into its k8s-openapi type unchanged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use meshbench_crds::Bundle;
use meshbench_operator::k8s::pss::restricted_violations;
use meshbench_operator::k8s::rbac::{self, Scope};
use meshbench_operator::k8s::render::{RenderOptions, render_bundle_yaml_with};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn docs(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy().join(rel)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn strict<T: DeserializeOwned + Serialize>(v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(
        &serde_json::to_value(&t).unwrap(),
        v,
        "unknown or misplaced field"
    );
    t
}

#[test]
fn rbac_manifest_grants_exactly_the_permission_table() {
    let mut granted = BTreeSet::new();
    for d in docs("operator/rbac.yaml") {
        let scope = match d["kind"].as_str().unwrap() {
            "ClusterRole" => Scope::Cluster,
            "Role" => Scope::OperatorNamespace,
            _ => continue,
        };
        let rules = match scope {
            Scope::Cluster => strict::<ClusterRole>(&d).rules.unwrap(),
            Scope::OperatorNamespace => strict::<Role>(&d).rules.unwrap(),
        };
        for r in rules {
            assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());
            for g in r.api_groups.unwrap() {
                for res in r.resources.clone().unwrap() {
                    for v in &r.verbs {
                        assert_ne!(v, "*", "wildcard verbs are not least privilege");
                        assert_ne!(res, "*", "wildcard resources are not least privilege");
                        granted.insert((scope, g.clone(), res.clone(), v.clone()));
                    }
                }
            }
        }
    }
    let table: BTreeSet<_> = rbac::triples().into_iter().collect();
    let missing: Vec<_> = table.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&table).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "rbac.yaml and src/k8s/rbac.rs differ: not granted {missing:?}; granted but unused {extra:?}"
    );
}

#[test]
fn request_attributes_follow_the_authorizer() {
    let a = |m, p, q| rbac::request_attributes(m, p, q).unwrap();
    assert_eq!(
        a(
            "PATCH",
            "/apis/meshbench.io/v1alpha1/namespaces/x/servicemeshes/m/status",
            ""
        ),
        (
            "meshbench.io".into(),
            "servicemeshes/status".into(),
            "patch".into()
        )
    );
    assert_eq!(
        a("GET", "/api/v1/namespaces/x/configmaps", "labelSelector=a"),
        ("".into(), "configmaps".into(), "list".into())
    );
    assert_eq!(
        a("GET", "/apis/apps/v1/deployments", "watch=true&x=1"),
        ("apps".into(), "deployments".into(), "watch".into())
    );
    assert_eq!(
        a("DELETE", "/apis/apps/v1/namespaces/x/deployments/d", ""),
        ("apps".into(), "deployments".into(), "delete".into())
    );
    assert!(!rbac::allows("", "secrets", "list"));
    assert!(!rbac::allows("", "pods", "get"));
}

#[test]
fn kustomization_lists_existing_files_and_the_crds() {
    let k = &docs("kustomization.yaml")[0];
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(resources.contains(&"crds/meshbench.io_crds.yaml"));
    for r in resources {
        assert!(deploy().join(r).is_file(), "{r} does not exist");
    }
}

#[test]
fn operator_manifests_are_strict_and_restricted() {
    for d in docs("operator/operator.yaml")
        .into_iter()
        .chain(docs("operator/namespace.yaml"))
        .chain(docs("operator/rbac.yaml"))
        .chain(docs("operator/networkpolicy.yaml"))
    {
        match d["kind"].as_str().unwrap() {
            "Deployment" => {
                let dep: Deployment = strict(&d);
                let spec = dep.spec.unwrap().template.spec.unwrap();
                assert_eq!(restricted_violations(&spec), Vec::<String>::new());
                assert_eq!(
                    spec.service_account_name.as_deref(),
                    Some("meshbench-operator")
                );
            }
            "Service" => {
                strict::<Service>(&d);
            }
            "PersistentVolumeClaim" => {
                strict::<PersistentVolumeClaim>(&d);
            }
            "Namespace" => {
                strict::<Namespace>(&d);
            }
            "ServiceAccount" => {
                strict::<ServiceAccount>(&d);
            }
            "ClusterRoleBinding" => {
                strict::<ClusterRoleBinding>(&d);
            }
            "RoleBinding" => {
                strict::<RoleBinding>(&d);
            }
            "NetworkPolicy" => {
                strict::<NetworkPolicy>(&d);
            }
            "ClusterRole" | "Role" => {}
            other => panic!("unexpected kind {other}"),
        }
    }
}

#[test]
fn crds_in_deploy_match_the_generated_ones() {
    let committed = std::fs::read_to_string(deploy().join("crds/meshbench.io_crds.yaml")).unwrap();
    assert_eq!(committed, meshbench_crds::crds_yaml());
}

/// Whether `selector` (matchLabels only, as the kit uses) selects `labels`.
fn selects(selector: &LabelSelector, labels: &Value) -> bool {
    assert!(selector.match_expressions.is_none(), "matchLabels only");
    selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels[k].as_str() == Some(v.as_str()))
}

/// The NetworkPolicy lets exactly the load pods the operator renders reach the results
/// port, and leaves the http port (probes, metrics, the API server's service proxy for
/// `meshbench results`) open; both ports exist on the operator's pod and Service.
#[test]
fn network_policy_opens_the_results_port_to_load_pods_only() {
    let policy: NetworkPolicy = strict(&docs("operator/networkpolicy.yaml")[0]);
    let operator = docs("operator/operator.yaml");
    let deployment = operator.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let service = operator.iter().find(|d| d["kind"] == "Service").unwrap();
    let spec = policy.spec.unwrap();
    assert!(selects(
        &spec.pod_selector.unwrap_or_default(),
        &deployment["spec"]["template"]["metadata"]["labels"]
    ));
    let ports: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["http", "results"]);
    let service_ports: Vec<&str> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["targetPort"].as_str().unwrap())
        .collect();
    assert_eq!(service_ports, ["http", "results"]);

    // A load pod and a worker pod as the operator renders them.
    let bundle = Bundle::load_files(&[deploy().join("../experiments/quickstart.yaml")]);
    let yaml = render_bundle_yaml_with(&bundle, &RenderOptions::default()).unwrap();
    let pod_labels = |kind: &str| -> Value {
        yaml.split("\n---\n")
            .map(|d| serde_yaml::from_str::<Value>(d).unwrap())
            .find(|v| v["kind"] == kind)
            .unwrap()["spec"]["template"]["metadata"]["labels"]
            .clone()
    };
    let (load_pod, worker_pod) = (pod_labels("Job"), pod_labels("Deployment"));
    let rules = spec.ingress.unwrap();
    let port_of = |r: &k8s_openapi::api::networking::v1::NetworkPolicyIngressRule| {
        let ports = r.ports.clone().unwrap();
        assert_eq!(ports.len(), 1);
        match ports[0].port.clone().unwrap() {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s,
            other => panic!("ports by name, not {other:?}"),
        }
    };
    let results: Vec<_> = rules.iter().filter(|r| port_of(r) == "results").collect();
    assert_eq!(results.len(), 1);
    let peers = results[0].from.clone().unwrap();
    assert!(
        peers.iter().all(|p| p.namespace_selector.is_some()),
        "load pods run in the benchmarks' namespaces"
    );
    let admitted = |labels: &Value| {
        peers
            .iter()
            .any(|p| p.pod_selector.as_ref().is_some_and(|s| selects(s, labels)))
    };
    assert!(admitted(&load_pod), "load pods: {load_pod}");
    assert!(!admitted(&worker_pod), "worker pods: {worker_pod}");
    let http: Vec<_> = rules.iter().filter(|r| port_of(r) == "http").collect();
    assert_eq!(http.len(), 1);
    assert!(
        http[0].from.is_none(),
        "the http port takes the API server's proxy"
    );
}
