//! Import of the prototype's Servicegraph and measurement config: the semantics carried
//! over, the output re-loads as valid meshbench documents, and bad inputs are located.

use std::path::Path;

use meshbench_crds::Bundle;
use meshbench_crds::benchmark::{LoadKind, RedeployPolicy};
use meshbench_crds::import::{Imported, import};
use meshbench_crds::mesh::{DelayMode, ExposeType, ServiceSpec};

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/prototype")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn imported(measurement: Option<&str>) -> Imported {
    let graph = read("servicegraph.yaml");
    let m = measurement.map(|f| (f, read(f)));
    match import(
        "servicegraph.yaml",
        &graph,
        m.as_ref().map(|(f, t)| (*f, t.as_str())),
    ) {
        Ok(i) => i,
        Err(ds) => panic!(
            "import failed:\n{}",
            ds.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn service<'a>(i: &'a Imported, name: &str) -> &'a ServiceSpec {
    i.mesh
        .spec
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

#[test]
fn mesh_keeps_the_prototype_semantics() {
    let i = imported(None);
    assert_eq!(i.mesh.metadata.name.as_deref(), Some("shop-graph"));
    assert!(i.benchmark.is_none());
    let names: Vec<&str> = i
        .mesh
        .spec
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["back", "front", "db"], "node order is kept");

    let front = service(&i, "front");
    assert_eq!(front.replicas, Some(1));
    assert_eq!(front.port, Some(80));
    // resources.cpu (millicores) and resources.memory (Mi) are both request and limit.
    let res = front.resources.as_ref().expect("resources");
    for amounts in [&res.requests, &res.limits] {
        let a = amounts.as_ref().expect("requests and limits");
        assert_eq!(a.cpu.as_ref().map(|q| q.0.as_str()), Some("500m"));
        assert_eq!(a.memory.as_ref().map(|q| q.0.as_str()), Some("256Mi"));
    }
    // nodePort becomes a NodePort exposure.
    let expose = front.expose.as_ref().expect("exposed");
    assert_eq!(expose.type_, ExposeType::NodePort);
    assert_eq!(expose.node_port, Some(30080));
    assert!(front.autoscaling.is_none());

    let ep = &front.endpoints[0];
    assert_eq!(ep.path, "/");
    // cpuLoad is milliseconds of CPU per request.
    assert_eq!(ep.cpu.as_ref().map(|d| d.as_str()), Some("25ms"));
    // delay is a minimum total response time.
    let delay = ep.delay.as_ref().expect("delay");
    assert_eq!(delay.fixed.as_ref().map(|d| d.as_str()), Some("100ms"));
    assert_eq!(delay.mode, Some(DelayMode::MinimumTotal));
    // Callouts ran in parallel: each in its own group.
    let calls: Vec<(&str, Option<&str>, Option<&str>)> = ep
        .calls
        .iter()
        .map(|c| (c.service.as_str(), c.path.as_deref(), c.group.as_deref()))
        .collect();
    assert_eq!(
        calls,
        [
            ("back", Some("/work"), Some("callout-0")),
            ("db", Some("/query"), Some("callout-1")),
        ]
    );

    // The HPA maps onto autoscaling.
    let back = service(&i, "back");
    let a = back.autoscaling.as_ref().expect("autoscaling");
    assert_eq!(a.min_replicas, Some(2));
    assert_eq!(a.max_replicas, Some(6));
    assert_eq!(a.target_cpu_utilization, Some(70));
    assert_eq!(a.enabled, None);
    assert!(back.expose.is_none());
    assert!(
        back.endpoints[0].delay.is_none(),
        "no delay given, none added"
    );

    // A path without a leading slash is made absolute; smaller resources carried exactly.
    let db = service(&i, "db");
    assert_eq!(db.endpoints[0].path, "/query");
    assert_eq!(
        db.endpoints[0].cpu.as_ref().map(|d| d.as_str()),
        Some("5ms")
    );
    let lim = db
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .expect("limits");
    assert_eq!(lim.cpu.as_ref().map(|q| q.0.as_str()), Some("250m"));
    assert_eq!(lim.memory.as_ref().map(|q| q.0.as_str()), Some("128Mi"));

    // Renamed nodes are noted.
    assert!(i.notes.is_empty() || i.notes.iter().all(|n| !n.contains("renamed")));
}

#[test]
fn benchmark_keeps_the_measurement_semantics() {
    let i = imported(Some("measurement.yaml"));
    let b = i.benchmark.as_ref().expect("benchmark");
    assert_eq!(b.metadata.name.as_deref(), Some("shop-sweep"));
    let s = &b.spec;
    assert_eq!(s.meshes, ["shop-graph"]);
    // The target is the node whose nodePort equals Load.ServicePort (not the first).
    assert_eq!(s.target.service, "front");
    assert_eq!(s.target.path.as_deref(), Some("/"));
    assert_eq!(s.target.query.as_deref(), Some("size=small"));
    assert_eq!(s.load.model, LoadKind::Open);
    assert_eq!(
        s.load.max_in_flight,
        Some(64),
        "Users bound the requests in flight"
    );
    let sweep = s.profile.sweep.as_ref().expect("a sweep");
    assert!(s.profile.stages.is_none());
    assert_eq!((sweep.from, sweep.to, sweep.step), (10.0, 50.0, 10.0));
    assert_eq!(sweep.step_duration.as_str(), "1m");
    let warmup = s.warmup.as_ref().expect("warmup");
    assert_eq!(warmup.duration.as_str(), "5s");
    assert_eq!(s.request_timeout.as_ref().map(|d| d.as_str()), Some("3s"));
    assert_eq!(s.redeploy, Some(RedeployPolicy::PerStep));
    assert_eq!(s.settle.as_ref().map(|d| d.as_str()), Some("30s"));
    assert_eq!(
        s.collection
            .as_ref()
            .and_then(|c| c.prometheus_url.as_deref()),
        Some("http://10.0.0.5:9090")
    );
    // Facts without a meshbench field are kept as notes.
    let notes = i.notes.join("\n");
    assert!(notes.contains("servicegraph.yaml"), "{notes}");
    assert!(notes.contains("/results/shop"), "{notes}");
    assert!(notes.contains("lab"), "{notes}");
}

#[test]
fn target_falls_back_to_the_first_node() {
    let i = imported(Some("measurement-first-node.yaml"));
    let b = i.benchmark.as_ref().expect("benchmark");
    assert_eq!(b.metadata.name.as_deref(), Some("back-only"));
    assert_eq!(b.spec.target.service, "back");
    assert_eq!(b.spec.target.path.as_deref(), Some("/work"));
    assert_eq!(b.spec.target.query, None);
    assert!(b.spec.warmup.is_none(), "no Preheat, no warm-up");
    assert!(b.spec.request_timeout.is_none());
    let sweep = b.spec.profile.sweep.as_ref().expect("sweep");
    assert_eq!((sweep.from, sweep.to, sweep.step), (5.0, 20.0, 5.0));
    assert_eq!(sweep.step_duration.as_str(), "30s");
    // A port written as a string works too.
    assert_eq!(
        b.spec
            .collection
            .as_ref()
            .and_then(|c| c.prometheus_url.as_deref()),
        Some("http://prometheus.monitoring:9090")
    );
}

#[test]
fn output_reloads_as_valid_documents() {
    for m in [
        "measurement.yaml",
        "measurement-first-node.yaml",
        "measurement-from-zero.yaml",
    ] {
        let i = imported(Some(m));
        let yaml = i.to_yaml();
        assert!(
            yaml.starts_with("# Imported from the meshbench prototype"),
            "{yaml}"
        );
        let b = Bundle::from_str("imported.yaml", &yaml);
        assert!(
            b.is_valid(),
            "{m}: imported YAML is invalid:\n{}\n{yaml}",
            b.diagnostics
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert_eq!(b.meshes.len(), 1);
        assert_eq!(b.benchmarks.len(), 1);
        // Round trip: what is read back is what was written.
        assert_eq!(b.meshes[0].mesh.spec, i.mesh.spec);
        assert_eq!(
            Some(&b.benchmarks[0].benchmark.spec),
            i.benchmark.as_ref().map(|b| &b.spec)
        );
    }
    // The mesh alone is valid too.
    let b = Bundle::from_str("mesh.yaml", &imported(None).to_yaml());
    assert!(b.is_valid());
}

fn import_err(graph: &str, measurement: Option<(&str, &str)>) -> Vec<meshbench_crds::Diagnostic> {
    match import("graph.yaml", graph, measurement) {
        Ok(i) => panic!("expected an error, got:\n{}", i.to_yaml()),
        Err(ds) => {
            assert!(!ds.is_empty());
            ds
        }
    }
}

#[test]
fn bad_callout_url_is_located() {
    let ds = import_err(&read("bad-callout.yaml"), None);
    assert_eq!(ds.len(), 1, "{ds:?}");
    let d = &ds[0];
    assert_eq!(d.path, "spec.nodes[0].endpoints[0].callouts[1].url");
    assert_eq!(d.file, "graph.yaml");
    assert_eq!(d.object.as_deref(), Some("Servicegraph"));
    assert!(d.message.contains("\"back:http/work\""), "{d}");
    assert!(d.message.contains("expected service:port/path"), "{d}");
    assert_eq!(d.position.map(|p| (p.line, p.column)), Some((13, 15)));
}

#[test]
fn missing_or_empty_nodes() {
    let ds = import_err(&read("no-nodes.yaml"), None);
    assert_eq!(ds[0].path, "spec");
    assert!(ds[0].message.contains("missing field `nodes`"), "{}", ds[0]);
    assert_eq!(ds[0].position.map(|p| p.line), Some(5));

    let ds = import_err(&read("empty-nodes.yaml"), None);
    assert_eq!(ds[0].path, "spec.nodes");
    assert!(
        ds[0].message.contains("expected at least one node"),
        "{}",
        ds[0]
    );
    assert_eq!(ds[0].position.map(|p| p.line), Some(6));
}

#[test]
fn wrong_kind() {
    let ds = import_err(&read("wrong-kind.yaml"), None);
    let d = ds
        .iter()
        .find(|d| d.path == "kind")
        .expect("a kind diagnostic");
    assert!(
        d.message.contains("\"Deployment\" is not a Servicegraph"),
        "{d}"
    );
    assert_eq!(d.position.map(|p| (p.line, p.column)), Some((2, 1)));

    let ds = import_err(
        "apiVersion: apps/v1\nkind: Servicegraph\nspec:\n  nodes: [{name: a}]\n",
        None,
    );
    assert_eq!(ds[0].path, "apiVersion");
    assert!(ds[0].message.contains("expected dipterv.my.domain/v1beta1"));
}

#[test]
fn bad_measurement_config() {
    let graph = read("servicegraph.yaml");
    let ds = import_err(&graph, Some(("m.yaml", &read("bad-measurement.yaml"))));
    assert_eq!(ds[0].file, "m.yaml");
    assert!(ds[0].message.contains("missing field `QPS`"), "{}", ds[0]);

    let ds = import_err(
        &graph,
        Some((
            "m.yaml",
            "Name: x\nQPS: {From: 1, To: 2, Granularity: one}\nLoad: {Time: 1}\n",
        )),
    );
    assert_eq!(ds[0].path, "QPS.Granularity");
    assert_eq!(ds[0].position.map(|p| p.line), Some(2));

    let ds = import_err(&graph, Some(("m.yaml", "QPS: [")));
    assert!(ds[0].message.contains("invalid YAML"), "{}", ds[0]);
}

#[test]
fn huge_and_odd_numbers_do_not_panic() {
    // Durations beyond what meshbench accepts are located errors, not panics.
    let graph = "kind: Servicegraph\nspec:\n  nodes:\n    - name: a\n      endpoints:\n        - path: /\n          cpuLoad: 1e300\n          delay: .inf\n";
    let ds = import_err(graph, None);
    let paths: Vec<&str> = ds.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.nodes[0].endpoints[0].cpuLoad",
            "spec.nodes[0].endpoints[0].delay"
        ]
    );
    assert!(ds[0].message.contains("expected at most"), "{}", ds[0]);
    assert_eq!(ds[0].position.map(|p| p.line), Some(7));

    let ok = read("servicegraph.yaml");
    for load in [
        "{Time: 1e300}",
        "{Time: .inf}",
        "{Time: 60, Preheat: 1e20}",
        "{Time: 60, TimeOut: -.inf}",
    ] {
        let m = format!("Name: x\nQPS: {{From: 1, To: 2, Granularity: 1}}\nLoad: {load}\n");
        let ds = import_err(&ok, Some(("m.yaml", &m)));
        assert!(ds[0].path.starts_with("Load."), "{}", ds[0]);
        assert_eq!(ds[0].position.map(|p| p.line), Some(3), "{}", ds[0]);
    }

    // Negative, NaN and enormous counts convert without panicking; validation judges them.
    let graph = "kind: Servicegraph\nspec:\n  nodes:\n    - name: Big Node\n      replicas: 2\n      resources: {cpu: 1e300, memory: -5}\n      endpoints:\n        - path: /\n          cpuLoad: -3\n          delay: 0\n";
    let i = import("g.yaml", graph, None).expect("converts");
    assert_eq!(i.mesh.spec.services[0].name, "big-node");
    assert!(
        i.notes.iter().any(|n| n.contains("renamed")),
        "{:?}",
        i.notes
    );
    let m = "Name: x\nQPS: {From: -1e300, To: .nan, Granularity: 0}\nLoad: {Time: -5, Users: 0}\n";
    let i = import("g.yaml", &read("servicegraph.yaml"), Some(("m.yaml", m))).expect("converts");
    let b = Bundle::from_str("out.yaml", &i.to_yaml());
    assert!(!b.is_valid(), "an absurd sweep must not validate");
}

/// The prototype's configs mostly start at `QPS.From: 0`, which its script sent at 1 rps:
/// imported as that, said in the output, and valid (a sweep from 0 is not).
#[test]
fn a_sweep_from_zero_is_imported_as_the_prototype_ran_it() {
    let i = imported(Some("measurement-from-zero.yaml"));
    let b = i.benchmark.as_ref().expect("benchmark");
    let rates: Vec<f64> = b
        .spec
        .profile
        .stages
        .as_ref()
        .expect("stages")
        .iter()
        .map(|s| s.rate.unwrap())
        .collect();
    assert_eq!(rates, [1.0, 10.0, 20.0, 30.0]);
    assert!(b.spec.profile.sweep.is_none());
    assert!(
        b.spec
            .profile
            .stages
            .as_ref()
            .unwrap()
            .iter()
            .all(|s| s.duration.as_str() == "20s")
    );
    let yaml = i.to_yaml();
    assert!(
        yaml.contains("QPS.From 0") && yaml.contains("1 rps"),
        "{yaml}"
    );
    // Other sweeps are kept as sweeps.
    let sweep = imported(Some("measurement.yaml"))
        .benchmark
        .unwrap()
        .spec
        .profile;
    assert!(sweep.stages.is_none() && sweep.sweep.is_some());
}

/// `From: 0` with `To` below `Granularity` was one step to the prototype's loop: one
/// stage at 1 rps, valid, and the output says why.
#[test]
fn a_sweep_from_zero_below_one_granularity_is_one_stage_at_one_rps() {
    let m = read("measurement-from-zero.yaml").replace("To: 30", "To: 5");
    let i = import("g.yaml", &read("servicegraph.yaml"), Some(("m.yaml", &m))).expect("converts");
    let b = i.benchmark.as_ref().expect("benchmark");
    let stages = b.spec.profile.stages.as_ref().expect("stages");
    assert_eq!(stages.len(), 1, "{stages:?}");
    assert_eq!(stages[0].rate, Some(1.0));
    let yaml = i.to_yaml();
    assert!(
        yaml.contains("QPS.To 5 is below QPS.Granularity 10"),
        "{yaml}"
    );
    let diagnostics = Bundle::from_str("out.yaml", &yaml).diagnostics;
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
}
