//! Everything meshbench puts into a cluster, validated against the Kubernetes OpenAPI
//! schemas of the version k8s-openapi targets (1.34), strictly (unknown fields rejected),
//! by the independent `kubernetes-validate` (PyPI; scripts/install-test-deps.sh installs
//! it): the objects rendered for every experiment — ConfigMaps, Deployments, Services,
//! HPAs, load Jobs — and the deployment kit's manifests and CRDs.

use std::path::{Path, PathBuf};
use std::process::Command;

use meshbench_crds::Bundle;
use meshbench_operator::k8s::render::{RenderOptions, render_bundle_yaml_with};

const KUBERNETES_VERSION: &str = "1.34.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn validator_present() -> bool {
    Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn validate(file: &Path) -> (bool, String) {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k"])
        .arg(KUBERNETES_VERSION)
        .arg(file)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn skip_or_fail() -> bool {
    if validator_present() {
        return false;
    }
    assert!(
        std::env::var_os("MESHBENCH_SKIP_SCHEMA").is_some(),
        "no kubernetes-validate for python3: run scripts/install-test-deps.sh, or set MESHBENCH_SKIP_SCHEMA=1"
    );
    true
}

#[test]
fn rendered_objects_of_every_experiment_pass_the_kubernetes_schemas() {
    if skip_or_fail() {
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("experiments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    let bundle = Bundle::load_files(&files);
    let opts = RenderOptions {
        namespace: Some("lab".into()),
        ..RenderOptions::default()
    };
    let yaml = render_bundle_yaml_with(&bundle, &opts).expect("render");
    for kind in [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "Job",
        "ConfigMap",
    ] {
        assert!(
            yaml.contains(&format!("kind: {kind}\n")),
            "no {kind} rendered"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let (ok, text) = validate(&file);
    assert!(ok, "{text}");
}

#[test]
fn the_deployment_kit_passes_the_kubernetes_schemas() {
    if skip_or_fail() {
        return;
    }
    for rel in [
        "deploy/operator/namespace.yaml",
        "deploy/operator/rbac.yaml",
        "deploy/operator/operator.yaml",
        "deploy/crds/meshbench.io_crds.yaml",
    ] {
        let (ok, text) = validate(&root().join(rel));
        assert!(ok, "{rel}: {text}");
    }
}

/// The validator is not a rubber stamp: a misspelt field fails it.
#[test]
fn a_misspelt_field_fails_the_schema_check() {
    if skip_or_fail() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: lab}\ndatta: {a: b}\n",
    )
    .unwrap();
    let (ok, text) = validate(&file);
    assert!(!ok, "accepted a ConfigMap with `datta`: {text}");
}
