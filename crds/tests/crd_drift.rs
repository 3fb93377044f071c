//! The CRD manifests committed under `deploy/crds/` are exactly what the Rust types
//! generate, and they are manifests a real API server accepts: namespaced, with a status
//! subresource, short names, printer columns, CEL rules, bounds on every list and name, and
//! structural schemas throughout.

use std::path::PathBuf;

use serde_json::Value;

const REGENERATE: &str =
    "cargo run -p meshbench-operator -- crds > deploy/crds/meshbench.io_crds.yaml";

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds/meshbench.io_crds.yaml")
}

/// The generated CRDs, as JSON values, keyed by `metadata.name`.
fn generated() -> Vec<Value> {
    let text = meshbench_crds::crds_yaml();
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("generated YAML parses");
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}

fn crd(name: &str) -> Value {
    generated()
        .into_iter()
        .find(|c| c["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no CRD named {name}"))
}

fn root_schema(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

/// The schema at a dotted path; `[]` steps into list items.
fn schema_at<'a>(root: &'a Value, path: &str) -> &'a Value {
    let mut node = root;
    for part in path.split('.') {
        let (name, items) = match part.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (part, false),
        };
        node = &node["properties"][name];
        assert!(!node.is_null(), "no property {name} in {path}");
        if items {
            node = &node["items"];
            assert!(!node.is_null(), "{name} is not a list in {path}");
        }
    }
    node
}

#[test]
fn committed_manifests_match_the_rust_types() {
    let path = committed_path();
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\nGenerate it with: {REGENERATE}",
            path.display()
        )
    });
    let generated = meshbench_crds::crds_yaml();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "deploy/crds/meshbench.io_crds.yaml is out of date with the Rust types \
             (first difference at line {}: committed {:?}, generated {:?}).\n\
             Regenerate it with:\n    {REGENERATE}",
            first + 1,
            committed.lines().nth(first).unwrap_or("<end of file>"),
            generated.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(meshbench_crds::crds_yaml(), meshbench_crds::crds_yaml());
}

#[test]
fn both_crds_are_namespaced_with_status_short_names_and_columns() {
    let all = generated();
    assert_eq!(all.len(), 2);
    for (name, kind, plural, short) in [
        (
            "servicemeshes.meshbench.io",
            "ServiceMesh",
            "servicemeshes",
            &["mesh", "smesh"][..],
        ),
        (
            "benchmarks.meshbench.io",
            "Benchmark",
            "benchmarks",
            &["bench", "bm"][..],
        ),
    ] {
        let c = crd(name);
        assert_eq!(c["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(c["kind"], "CustomResourceDefinition");
        let spec = &c["spec"];
        assert_eq!(spec["group"], "meshbench.io");
        assert_eq!(spec["scope"], "Namespaced", "{name}");
        assert_eq!(spec["names"]["kind"], kind);
        assert_eq!(spec["names"]["plural"], plural);
        let shorts: Vec<&str> = spec["names"]["shortNames"]
            .as_array()
            .expect("short names")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(shorts, short, "{name}");
        assert_eq!(spec["names"]["categories"][0], "meshbench");
        let versions = spec["versions"].as_array().expect("versions");
        assert_eq!(versions.len(), 1);
        let v = &versions[0];
        assert_eq!(v["name"], "v1alpha1");
        assert_eq!(v["served"], true);
        assert_eq!(v["storage"], true);
        assert!(
            v["subresources"]["status"].is_object(),
            "{name} has no status subresource"
        );
        let columns = v["additionalPrinterColumns"].as_array().expect("columns");
        assert!(columns.len() >= 3, "{name}");
        for col in columns {
            let path = col["jsonPath"].as_str().expect("jsonPath");
            assert!(path.starts_with('.'), "{name}: {path}");
            assert!(col["type"].is_string() && col["name"].is_string());
        }
        assert!(
            columns
                .iter()
                .any(|c| c["name"] == "Age" && c["type"] == "date")
        );
        let root = root_schema(&c);
        assert!(root["properties"]["spec"].is_object());
        assert!(root["properties"]["status"].is_object());
        let required: Vec<&str> = root["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(required.contains(&"spec"), "{name}: spec must be required");
    }
    let cols: Vec<String> =
        crd("benchmarks.meshbench.io")["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect();
    for want in ["Phase", "Served RPS", "P99 ms", "SLO"] {
        assert!(
            cols.iter().any(|c| c == want),
            "Benchmark lacks column {want}"
        );
    }
}

fn rules(schema: &Value) -> Vec<String> {
    schema["x-kubernetes-validations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    assert!(
                        r["message"].is_string(),
                        "a CEL rule without a message: {r}"
                    );
                    r["rule"].as_str().expect("rule").to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn cel_rules_where_the_schema_cannot_say_it() {
    let mesh = crd("servicemeshes.meshbench.io");
    let m = root_schema(&mesh);
    for path in ["spec.defaults.autoscaling", "spec.services[].autoscaling"] {
        let r = rules(schema_at(m, path));
        assert!(
            r.iter()
                .any(|r| r.contains("self.minReplicas <= self.maxReplicas")),
            "{path}: {r:?}"
        );
    }
    for path in ["spec.defaults.resources", "spec.services[].resources"] {
        let r = rules(schema_at(m, path));
        assert_eq!(r.len(), 2, "{path}: {r:?}");
        assert!(r.iter().any(|r| r.contains("requests.cpu")));
        assert!(r.iter().any(|r| r.contains("requests.memory")));
    }
    for path in [
        "spec.defaults.endpoint.delay",
        "spec.services[].endpoints[].delay",
    ] {
        let r = rules(schema_at(m, path));
        assert!(
            r.iter()
                .any(|r| r.contains("has(self.fixed)") && r.contains("size() == 1")),
            "{path}: {r:?}"
        );
    }

    let bench = crd("benchmarks.meshbench.io");
    let b = root_schema(&bench);
    let r = rules(schema_at(b, "spec.profile"));
    assert_eq!(r, ["has(self.stages) != has(self.sweep)"]);
    let r = rules(schema_at(b, "spec.profile.sweep"));
    assert_eq!(r, ["self.from <= self.to"]);
}

#[test]
fn lists_and_names_are_bounded() {
    let mesh = crd("servicemeshes.meshbench.io");
    let m = root_schema(&mesh);
    for (path, max) in [
        ("spec.services", 100),
        ("spec.services[].endpoints", 32),
        ("spec.services[].endpoints[].calls", 32),
    ] {
        assert_eq!(schema_at(m, path)["maxItems"], max, "{path}");
    }
    assert_eq!(schema_at(m, "spec.services")["minItems"], 1);
    for (path, max) in [
        ("spec.services[].name", 63),
        ("spec.services[].endpoints[].path", 256),
        ("spec.services[].endpoints[].calls[].service", 63),
        ("spec.services[].endpoints[].calls[].path", 256),
        ("spec.services[].endpoints[].calls[].group", 63),
    ] {
        assert_eq!(schema_at(m, path)["maxLength"], max, "{path}");
    }
    assert!(schema_at(m, "spec.services[].name")["pattern"].is_string());
    let range = schema_at(m, "spec.services[].autoscaling.targetCPUUtilization");
    assert_eq!(
        (range["minimum"].as_f64(), range["maximum"].as_f64()),
        (Some(1.0), Some(100.0))
    );

    let bench = crd("benchmarks.meshbench.io");
    let b = root_schema(&bench);
    assert_eq!(schema_at(b, "spec.profile.stages")["maxItems"], 200);
    assert_eq!(schema_at(b, "spec.meshes")["maxItems"], 16);
    assert_eq!(schema_at(b, "spec.target.service")["maxLength"], 63);
    // Durations are bounded strings with a pattern.
    let d = schema_at(b, "spec.profile.stages[].duration");
    assert_eq!(d["type"], "string");
    assert_eq!(d["maxLength"], 32);
    assert!(d["pattern"].is_string());
}

/// Walks every schema node and reports what a Kubernetes API server would reject as
/// non-structural: a node without a type (unless int-or-string or preserve-unknown), and
/// `$ref`s, `definitions` or typed `anyOf`/`oneOf`/`allOf` that only plain JSON Schema allows.
fn non_structural(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema is not an object"));
        return;
    };
    let flag = |k: &str| obj.get(k).and_then(Value::as_bool) == Some(true);
    if !obj.contains_key("type")
        && !flag("x-kubernetes-int-or-string")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        out.push(format!("{path}: no type"));
    }
    for forbidden in ["$ref", "definitions", "$defs", "$schema", "additionalItems"] {
        if obj.contains_key(forbidden) {
            out.push(format!("{path}: has {forbidden}"));
        }
    }
    for junction in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = obj.get(junction).and_then(Value::as_array) {
            for (i, alt) in list.iter().enumerate() {
                for typed in [
                    "type",
                    "description",
                    "default",
                    "nullable",
                    "additionalProperties",
                ] {
                    if alt.get(typed).is_some() {
                        out.push(format!("{path}.{junction}[{i}]: sets {typed}"));
                    }
                }
            }
        }
    }
    if let Some(t) = obj.get("type").and_then(Value::as_str) {
        if !["object", "array", "string", "integer", "number", "boolean"].contains(&t) {
            out.push(format!("{path}: unknown type {t}"));
        }
        if t == "array" && !obj.contains_key("items") {
            out.push(format!("{path}: array without items"));
        }
    } else if obj.get("type").is_some() {
        out.push(format!("{path}: type is not a single string"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            non_structural(v, &format!("{path}.{k}"), out);
        }
    }
    if let Some(items) = obj.get("items") {
        non_structural(items, &format!("{path}[]"), out);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        non_structural(extra, &format!("{path}{{}}"), out);
    }
}

#[test]
fn every_schema_is_structural() {
    for c in generated() {
        let name = c["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let root = root_schema(&c);
        let mut problems = Vec::new();
        non_structural(root, &name, &mut problems);
        assert!(
            problems.is_empty(),
            "non-structural schema nodes (a real API server rejects them):\n{}",
            problems.join("\n")
        );
        // The walk really visited the deep parts of the tree.
        let mut count = 0usize;
        count_nodes(root, &mut count);
        assert!(count > 50, "{name}: only {count} schema nodes");
    }
}

fn count_nodes(node: &Value, count: &mut usize) {
    *count += 1;
    if let Some(props) = node["properties"].as_object() {
        for v in props.values() {
            count_nodes(v, count);
        }
    }
    if node["items"].is_object() {
        count_nodes(&node["items"], count);
    }
}

#[test]
fn the_structural_check_catches_bad_schemas() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "a": { "description": "no type" },
            "b": { "type": "array" },
            "c": { "$ref": "#/definitions/X", "type": "object" },
            "d": { "type": "object", "anyOf": [{ "type": "string" }] },
            "q": { "x-kubernetes-int-or-string": true, "anyOf": [{}, {}] }
        }
    });
    let mut problems = Vec::new();
    non_structural(&bad, "x", &mut problems);
    assert_eq!(
        problems,
        [
            "x.a: no type",
            "x.b: array without items",
            "x.c: has $ref",
            "x.d.anyOf[0]: sets type"
        ]
    );
}
