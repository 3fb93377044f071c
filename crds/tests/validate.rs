//! Loading and semantic validation of spec files: every listed mistake is reported at its
//! exact field path and source position, with the bad value, the expectation and a hint
//! where one helps; every problem of a file is reported in one pass.

use std::path::{Path, PathBuf};

use meshbench_crds::locate::Position;
use meshbench_crds::{Bundle, Diagnostic};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn load(rels: &[&str]) -> Bundle {
    let paths: Vec<PathBuf> = rels.iter().map(|r| fixture(r)).collect();
    Bundle::load_files(&paths)
}

/// Loads an invalid fixture together with the small mesh its benchmarks reference.
fn load_with_tiny(rel: &str) -> Bundle {
    load(&["valid/tiny-mesh.yaml", rel])
}

fn render(b: &Bundle) -> String {
    b.diagnostics
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The single diagnostic at `path`.
fn at_path<'a>(b: &'a Bundle, path: &str) -> &'a Diagnostic {
    let found: Vec<&Diagnostic> = b.diagnostics.iter().filter(|d| d.path == path).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one diagnostic at {path}, got:\n{}",
        render(b)
    );
    found[0]
}

fn pos(line: usize, column: usize) -> Option<Position> {
    Some(Position { line, column })
}

/// Asserts the parts every diagnostic of a located problem must have.
#[track_caller]
fn check(
    d: &Diagnostic,
    file: &str,
    document: usize,
    object: &str,
    position: Option<Position>,
    contains: &[&str],
) {
    assert!(
        d.file.ends_with(file),
        "diagnostic names file {:?}, expected {file}",
        d.file
    );
    assert_eq!(d.document, Some(document), "{d}");
    assert_eq!(d.object.as_deref(), Some(object), "{d}");
    assert_eq!(d.position, position, "{d}");
    for c in contains {
        assert!(d.message.contains(c), "message lacks {c:?}: {d}");
    }
}

fn assert_valid(b: &Bundle) {
    assert!(b.is_valid(), "expected valid, got:\n{}", render(b));
}

// ---------------------------------------------------------------------------------------
// Valid inputs

#[test]
fn valid_fixtures_are_valid() {
    let b = load(&["valid/shop-mesh.yaml"]);
    assert_valid(&b);
    assert_eq!(b.meshes.len(), 1);
    assert_eq!(b.meshes[0].mesh.spec.services.len(), 3);

    let b = load(&["valid/tiny-mesh.yaml"]);
    assert_valid(&b);
}

#[test]
fn every_experiment_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("experiments/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no experiments found in {}",
        dir.display()
    );
    for f in &files {
        let b = Bundle::load_files(std::slice::from_ref(f));
        assert!(b.is_valid(), "{} is invalid:\n{}", f.display(), render(&b));
        assert!(
            !b.meshes.is_empty() || !b.benchmarks.is_empty(),
            "{} defines nothing",
            f.display()
        );
    }
    // The quickstart is one mesh and one benchmark in one file.
    let b = Bundle::load_files(&[dir.join("quickstart.yaml")]);
    assert_eq!((b.meshes.len(), b.benchmarks.len()), (1, 1));
}

#[test]
fn multi_document_file_with_empty_document() {
    let b = load(&["valid/multi-doc.yaml"]);
    assert_valid(&b);
    assert_eq!(b.meshes.len(), 1);
    assert_eq!(b.benchmarks.len(), 1);
    assert_eq!(b.meshes[0].source.document, 1);
    // The empty document between them is counted.
    assert_eq!(b.benchmarks[0].source.document, 3);
    assert_eq!(
        b.benchmarks[0].benchmark.metadata.name.as_deref(),
        Some("pair-users")
    );
}

#[test]
fn benchmark_may_reference_a_mesh_in_another_file() {
    let b = load(&["valid/shop-mesh.yaml", "valid/shop-bench.yaml"]);
    assert_valid(&b);
    assert!(b.mesh("shop").is_some());
    assert_eq!(b.benchmarks.len(), 1);
    assert!(
        b.benchmarks[0]
            .source
            .file
            .ends_with("valid/shop-bench.yaml")
    );

    // Order of the files does not matter.
    assert_valid(&load(&["valid/shop-bench.yaml", "valid/shop-mesh.yaml"]));

    // Alone, the benchmark's mesh is missing, with a hint to pass its file too.
    let b = load(&["valid/shop-bench.yaml"]);
    let d = at_path(&b, "spec.meshes[0]");
    check(
        d,
        "valid/shop-bench.yaml",
        1,
        "Benchmark/shop-sweep",
        pos(7, 12),
        &["\"shop\"", "is not defined in the given files", "expected"],
    );
    assert_eq!(
        d.hint.as_deref(),
        Some("pass the file that defines the mesh too")
    );
    assert_eq!(b.diagnostics.len(), 1, "{}", render(&b));
}

#[test]
fn from_str_matches_load_files() {
    let text = std::fs::read_to_string(fixture("valid/multi-doc.yaml")).expect("fixture");
    let b = Bundle::from_str("inline.yaml", &text);
    assert_valid(&b);
    assert_eq!(b.benchmarks[0].source.file, "inline.yaml");
}

// ---------------------------------------------------------------------------------------
// Every listed mistake

#[test]
fn unknown_call_target_service() {
    let b = load(&["invalid/unknown-call-service.yaml"]);
    assert_eq!(b.diagnostics.len(), 1, "{}", render(&b));
    let d = at_path(&b, "spec.services[1].endpoints[0].calls[0].service");
    check(
        d,
        "invalid/unknown-call-service.yaml",
        1,
        "ServiceMesh/shop",
        pos(15, 15),
        &[
            "unknown service \"bakend\"",
            "expected one of: backend, frontend",
        ],
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean \"backend\"?"));
    // The rendered form names file, line, column, object, document and path.
    let text = d.to_string();
    assert!(
        text.contains("invalid/unknown-call-service.yaml:15:15: error: ServiceMesh/shop (document 1) spec.services[1].endpoints[0].calls[0].service: unknown service \"bakend\""),
        "{text}"
    );
    assert!(
        text.ends_with("\n  hint: did you mean \"backend\"?"),
        "{text}"
    );
}

#[test]
fn unknown_call_target_path() {
    let b = load(&["invalid/unknown-call-path.yaml"]);
    assert_eq!(b.diagnostics.len(), 1, "{}", render(&b));
    let d = at_path(&b, "spec.services[1].endpoints[0].calls[0].path");
    check(
        d,
        "invalid/unknown-call-path.yaml",
        1,
        "ServiceMesh/shop",
        pos(16, 15),
        &[
            "service \"backend\" has no endpoint \"/wrok\"",
            "expected one of: /work",
        ],
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean \"/work\"?"));
}

#[test]
fn call_cycles_are_reported_once_each() {
    let b = load(&["invalid/call-cycle.yaml"]);
    assert_eq!(b.diagnostics.len(), 2, "{}", render(&b));
    let d = at_path(&b, "spec.services[2].endpoints[0].calls[0].service");
    check(
        d,
        "invalid/call-cycle.yaml",
        1,
        "ServiceMesh/loops",
        pos(19, 21),
        &[
            "call cycle a / -> b / -> c / -> a /",
            "expected an acyclic call graph",
        ],
    );
    assert!(d.hint.is_some());
    let d = at_path(&b, "spec.services[3].endpoints[0].calls[0].service");
    check(
        d,
        "invalid/call-cycle.yaml",
        1,
        "ServiceMesh/loops",
        pos(23, 21),
        &["call cycle d /loop -> d /loop", "acyclic"],
    );
}

#[test]
fn duplicate_service_names() {
    let b = load(&["invalid/duplicate-service.yaml"]);
    assert_eq!(b.diagnostics.len(), 1, "{}", render(&b));
    check(
        at_path(&b, "spec.services[1].name"),
        "invalid/duplicate-service.yaml",
        1,
        "ServiceMesh/dup",
        pos(10, 7),
        &[
            "duplicate service name \"api\"",
            "already used by spec.services[0]",
        ],
    );
}

#[test]
fn duplicate_endpoint_paths() {
    let b = load(&["invalid/duplicate-endpoint.yaml"]);
    assert_eq!(b.diagnostics.len(), 1, "{}", render(&b));
    check(
        at_path(&b, "spec.services[0].endpoints[1].path"),
        "invalid/duplicate-endpoint.yaml",
        1,
        "ServiceMesh/dup",
        pos(10, 11),
        &[
            "duplicate endpoint path \"/orders\"",
            "already used by spec.services[0].endpoints[0]",
        ],
    );
}

#[test]
fn min_replicas_above_max_replicas() {
    let b = load(&["invalid/min-gt-max.yaml"]);
    assert_eq!(b.diagnostics.len(), 1, "{}", render(&b));
    check(
        at_path(&b, "spec.services[0].autoscaling.minReplicas"),
        "invalid/min-gt-max.yaml",
        1,
        "ServiceMesh/hpa",
        pos(11, 9),
        &["minReplicas 5 exceeds maxReplicas 2", "expected min <= max"],
    );
}

#[test]
fn requests_above_limits() {
    let b = load(&["invalid/requests-gt-limits.yaml"]);
    assert_eq!(b.diagnostics.len(), 2, "{}", render(&b));
    check(
        at_path(&b, "spec.services[0].resources.requests.cpu"),
        "invalid/requests-gt-limits.yaml",
        1,
        "ServiceMesh/res",
        pos(10, 11),
        &[
            "request 1 exceeds limit 500m",
            "expected requests <= limits",
        ],
    );
    check(
        at_path(&b, "spec.services[0].resources.requests.memory"),
        "invalid/requests-gt-limits.yaml",
        1,
        "ServiceMesh/res",
        pos(11, 11),
        &[
            "request 256Mi exceeds limit 128Mi",
            "expected requests <= limits",
        ],
    );
}

#[test]
fn target_utilization_outside_1_to_100() {
    let b = load(&["invalid/target-utilization.yaml"]);
    assert_eq!(b.diagnostics.len(), 2, "{}", render(&b));
    check(
        at_path(&b, "spec.services[0].autoscaling.targetCPUUtilization"),
        "invalid/target-utilization.yaml",
        1,
        "ServiceMesh/util",
        pos(11, 38),
        &["150 is outside 1–100", "expected a percentage"],
    );
    check(
        at_path(&b, "spec.services[1].autoscaling.targetCPUUtilization"),
        "invalid/target-utilization.yaml",
        1,
        "ServiceMesh/util",
        pos(15, 38),
        &["0 is outside 1–100"],
    );
}

#[test]
fn benchmark_target_must_exist_in_its_mesh() {
    let b = load(&["invalid/bench-target-missing.yaml"]);
    assert_eq!(b.diagnostics.len(), 3, "{}", render(&b));
    let file = "invalid/bench-target-missing.yaml";

    let d = at_path(&b, "spec.target.service");
    check(
        d,
        file,
        2,
        "Benchmark/wrong-service",
        pos(17, 13),
        &[
            "service \"frontent\" does not exist in ServiceMesh \"shop\"",
            "expected one of: frontend",
        ],
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean \"frontend\"?"));

    check(
        at_path(&b, "spec.target.path"),
        file,
        3,
        "Benchmark/wrong-path",
        pos(30, 5),
        &["has no endpoint \"/checkout\"", "expected one of: /"],
    );

    let d = at_path(&b, "spec.meshes[0]");
    check(
        d,
        file,
        4,
        "Benchmark/wrong-mesh",
        pos(40, 12),
        &[
            "ServiceMesh \"shopp\" is not defined",
            "expected one of: shop",
        ],
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean \"shop\"?"));
}

#[test]
fn empty_and_inverted_sweeps() {
    let b = load_with_tiny("invalid/sweeps.yaml");
    assert_eq!(b.diagnostics.len(), 4, "{}", render(&b));
    let file = "invalid/sweeps.yaml";
    check(
        at_path(&b, "spec.profile.sweep.from"),
        file,
        1,
        "Benchmark/inverted",
        pos(11, 14),
        &["from 50 exceeds to 10", "expected an ascending sweep"],
    );
    check(
        at_path(&b, "spec.profile.sweep.step"),
        file,
        2,
        "Benchmark/zero-step",
        pos(25, 7),
        &["0 is not positive", "expected an increment greater than 0"],
    );
    check(
        at_path(&b, "spec.profile.stages"),
        file,
        3,
        "Benchmark/no-stages",
        pos(37, 5),
        &["is empty", "expected at least one stage"],
    );
    check(
        at_path(&b, "spec.profile"),
        file,
        4,
        "Benchmark/no-profile",
        pos(47, 3),
        &["sets neither stages nor sweep", "expected exactly one"],
    );
}

#[test]
fn zero_durations() {
    let b = load_with_tiny("invalid/zero-durations.yaml");
    assert_eq!(b.diagnostics.len(), 3, "{}", render(&b));
    let file = "invalid/zero-durations.yaml";
    check(
        at_path(&b, "spec.profile.stages[0].duration"),
        file,
        1,
        "Benchmark/zero",
        pos(12, 9),
        &["\"0s\" is zero", "expected a positive duration"],
    );
    check(
        at_path(&b, "spec.warmup.duration"),
        file,
        1,
        "Benchmark/zero",
        pos(14, 5),
        &["\"0ms\" is zero", "expected a positive duration"],
    );
    check(
        at_path(&b, "spec.requestTimeout"),
        file,
        1,
        "Benchmark/zero",
        pos(15, 3),
        &["\"0s\" is zero"],
    );
}

#[test]
fn negative_and_zero_rates_and_negative_durations() {
    let b = load_with_tiny("invalid/negative-values.yaml");
    // The invalid duration of the third stage does not hide the rates of the first two.
    assert_eq!(b.diagnostics.len(), 3, "{}", render(&b));
    let file = "invalid/negative-values.yaml";
    check(
        at_path(&b, "spec.profile.stages[0].rate"),
        file,
        1,
        "Benchmark/negative",
        pos(11, 9),
        &[
            "-5 is not positive",
            "expected requests per second greater than 0",
        ],
    );
    check(
        at_path(&b, "spec.profile.stages[1].rate"),
        file,
        1,
        "Benchmark/negative",
        pos(13, 9),
        &["0 is not positive"],
    );
    check(
        at_path(&b, "spec.profile.stages[2].duration"),
        file,
        1,
        "Benchmark/negative",
        pos(16, 9),
        &["\"-3s\" is not a duration", "cannot be negative"],
    );
}

#[test]
fn closed_loop_sweep_needs_users() {
    let b = load_with_tiny("invalid/closed-zero-users.yaml");
    assert_eq!(b.diagnostics.len(), 1, "{}", render(&b));
    check(
        at_path(&b, "spec.profile.sweep.from"),
        "invalid/closed-zero-users.yaml",
        1,
        "Benchmark/nobody",
        pos(10, 14),
        &["0 is not positive", "expected a user count greater than 0"],
    );
}

#[test]
fn zero_cpu_limit_with_cpu_burning_endpoint() {
    let b = load(&["invalid/cpu-limit-zero.yaml"]);
    // Only the endpoint that burns CPU is a problem, not /health.
    assert_eq!(b.diagnostics.len(), 1, "{}", render(&b));
    check(
        at_path(&b, "spec.services[0].resources.limits.cpu"),
        "invalid/cpu-limit-zero.yaml",
        1,
        "ServiceMesh/starved",
        pos(10, 11),
        &[
            "CPU limit is 0",
            "endpoint \"/\" burns 5ms",
            "expected a positive limit",
        ],
    );
}

#[test]
fn query_overrides_must_name_a_built_in_query_and_known_placeholders() {
    let b = load_with_tiny("invalid/query-overrides.yaml");
    // `memory_bytes` is valid: a known name, `$pod_deployment`, and `$1` of label_replace.
    assert_eq!(b.diagnostics.len(), 2, "{}", render(&b));
    let file = "invalid/query-overrides.yaml";
    let name = at_path(&b, "spec.collection.queries.replica");
    check(
        name,
        file,
        1,
        "Benchmark/queries",
        pos(15, 7),
        &[
            "\"replica\" is not a built-in query",
            "expected one of replicas, replicas_ready, replicas_desired",
            "worker_latency_p99_ms",
        ],
    );
    assert_eq!(name.hint.as_deref(), Some("did you mean \"replicas\"?"));
    let placeholder = at_path(&b, "spec.collection.queries.cpu_cores");
    check(
        placeholder,
        file,
        1,
        "Benchmark/queries",
        pos(16, 7),
        &[
            "unknown placeholder $pods",
            "expected one of $namespace, $mesh, $deployments, $pod_deployment, $window",
        ],
    );
    // The removed pod regex placeholder points at its replacement.
    assert!(
        placeholder
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("group_left (deployment) $pod_deployment")),
        "{placeholder}"
    );
}

#[test]
fn duration_without_unit_gets_a_hint() {
    let b = load(&["invalid/duration-without-unit.yaml"]);
    // No second, spurious "missing field" for the field that was reported.
    assert_eq!(b.diagnostics.len(), 2, "{}", render(&b));
    let file = "invalid/duration-without-unit.yaml";

    // A quoted "25".
    let d = at_path(&b, "spec.services[0].endpoints[0].cpu");
    check(
        d,
        file,
        1,
        "ServiceMesh/units",
        pos(10, 11),
        &["\"25\" is not a duration", "a unit is required"],
    );
    let hint = d.hint.as_deref().expect("a hint");
    assert!(
        hint.contains("did you mean") && hint.contains("25ms"),
        "{hint}"
    );

    // A bare 25.
    let d = at_path(&b, "spec.profile.stages[0].duration");
    check(
        d,
        file,
        2,
        "Benchmark/units",
        pos(22, 21),
        &["\"25\" is not a duration", "a unit is required"],
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean \"25ms\" or \"25s\"?"));
    assert!(d.to_string().contains("\n  hint: did you mean \"25ms\""));
}

// ---------------------------------------------------------------------------------------
// Every problem at once

#[test]
fn all_problems_of_a_file_are_reported_in_one_pass() {
    let b = load(&["invalid/many-problems.yaml"]);
    let paths: Vec<(usize, &str)> = b
        .diagnostics
        .iter()
        .map(|d| (d.document.unwrap_or(0), d.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        vec![
            (1, "metadata.name"),
            (1, "spec.services[0].resources.requests.cpu"),
            (1, "spec.services[0].endpoints[0].calls[0].service"),
            (1, "spec.services[0].endpoints[0].calls[1].path"),
            (1, "spec.services[1].autoscaling.minReplicas"),
            (1, "spec.services[1].autoscaling.targetCPUUtilization"),
            (1, "spec.services[1].endpoints[1].path"),
            (2, "spec.target.service"),
            (2, "spec.profile.sweep.from"),
        ],
        "{}",
        render(&b)
    );
    // In source order, each with a position.
    let positions: Vec<Position> = b
        .diagnostics
        .iter()
        .map(|d| d.position.expect("every problem is located"))
        .collect();
    let mut sorted = positions.clone();
    sorted.sort_by_key(|p| (p.line, p.column));
    assert_eq!(positions, sorted);
    let name = at_path(&b, "metadata.name");
    assert!(
        name.message
            .contains("\"Many_Problems\" is not a DNS-1123 label")
    );
    assert_eq!(name.hint.as_deref(), Some("use \"many-problems\""));
}

#[test]
fn broken_required_fields_do_not_hide_other_problems() {
    let b = load(&["invalid/required-fields.yaml"]);
    let paths: Vec<(usize, &str)> = b
        .diagnostics
        .iter()
        .map(|d| (d.document.unwrap_or(0), d.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        vec![
            (1, "spec.services[0].name"),
            (1, "spec.services[0].endpoints[0].calls[0].service"),
            (2, "spec"),
            (2, "spec.load.model"),
            (2, "spec.profile.stages[0].rate"),
        ],
        "{}",
        render(&b)
    );
    let file = "invalid/required-fields.yaml";
    check(
        at_path(&b, "spec.services[0].name"),
        file,
        1,
        "ServiceMesh/parts",
        pos(9, 7),
        &["invalid type: sequence", "expected a string"],
    );
    check(
        at_path(&b, "spec"),
        file,
        2,
        "Benchmark/parts",
        pos(19, 1),
        &["missing field `target`"],
    );
    check(
        at_path(&b, "spec.load.model"),
        file,
        2,
        "Benchmark/parts",
        pos(21, 11),
        &["`sideways`", "expected `open` or `closed`"],
    );
    // The stand-ins used to keep checking never appear in a message.
    for d in &b.diagnostics {
        assert!(!d.message.contains("1s"), "{d}");
    }
    // The mesh is still known, so the benchmark's reference to it is not an error.
    assert!(b.mesh("parts").is_some());
}

#[test]
fn documents_are_counted_across_empty_documents() {
    let b = load(&["invalid/multi-doc-positions.yaml"]);
    assert_eq!(b.diagnostics.len(), 1, "{}", render(&b));
    check(
        at_path(&b, "spec.profile.stages[1].duration"),
        "invalid/multi-doc-positions.yaml",
        3,
        "Benchmark/pos",
        pos(25, 21),
        &["\"0s\" is zero"],
    );
}

#[test]
fn problems_in_several_files_are_all_reported_in_file_order() {
    let b = load(&[
        "invalid/duplicate-service.yaml",
        "invalid/min-gt-max.yaml",
        "invalid/empty.yaml",
    ]);
    let files: Vec<&str> = b
        .diagnostics
        .iter()
        .map(|d| d.file.rsplit('/').next().unwrap_or_default())
        .collect();
    assert_eq!(
        files,
        vec!["duplicate-service.yaml", "empty.yaml", "min-gt-max.yaml"],
        "{}",
        render(&b)
    );
}

// ---------------------------------------------------------------------------------------
// Unknown fields

#[test]
fn unknown_top_level_field_with_did_you_mean() {
    let b = load(&["invalid/unknown-field-top.yaml"]);
    assert_eq!(b.diagnostics.len(), 1, "{}", render(&b));
    let d = at_path(&b, "spce");
    check(
        d,
        "invalid/unknown-field-top.yaml",
        1,
        "ServiceMesh/typo",
        pos(5, 1),
        &[
            "unknown field \"spce\"",
            "expected apiVersion, kind, metadata, spec or status",
        ],
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean \"spec\"?"));
}

#[test]
fn unknown_nested_fields_are_all_reported_with_did_you_mean() {
    let b = load(&["invalid/unknown-field-nested.yaml"]);
    assert_eq!(b.diagnostics.len(), 2, "{}", render(&b));
    let file = "invalid/unknown-field-nested.yaml";
    let d = at_path(&b, "spec.services[0].replcas");
    check(
        d,
        file,
        1,
        "ServiceMesh/typo",
        pos(8, 7),
        &["unknown field `replcas`", "expected one of", "`replicas`"],
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean \"replicas\"?"));
    let d = at_path(&b, "spec.services[0].endpoints[0].cpus");
    check(
        d,
        file,
        1,
        "ServiceMesh/typo",
        pos(11, 11),
        &["unknown field `cpus`", "`cpu`"],
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean \"cpu\"?"));
}

#[test]
fn unknown_fields_in_a_benchmark() {
    let text = "apiVersion: meshbench.io/v1alpha1\nkind: Benchmark\nmetadata:\n  name: b\nspec:\n  meshes: [tiny]\n  target: { service: web, paht: / }\n  load: { model: open }\n  profile:\n    stages: [{ rate: 1, duration: 1s }]\n  warmpu: { duration: 1s }\n";
    let b = Bundle::from_str("bench.yaml", text);
    let d = at_path(&b, "spec.target.paht");
    assert_eq!(d.hint.as_deref(), Some("did you mean \"path\"?"));
    assert_eq!(d.position, pos(7, 27));
    let d = at_path(&b, "spec.warmpu");
    assert_eq!(d.hint.as_deref(), Some("did you mean \"warmup\"?"));
    assert_eq!(d.position, pos(11, 3));
}

// ---------------------------------------------------------------------------------------
// Files that are not specs

#[test]
fn files_without_documents_are_errors() {
    for name in [
        "invalid/empty.yaml",
        "invalid/whitespace.yaml",
        "invalid/comments-only.yaml",
        "invalid/separators-only.yaml",
    ] {
        let b = load(&[name]);
        assert_eq!(b.diagnostics.len(), 1, "{name}: {}", render(&b));
        let d = &b.diagnostics[0];
        assert!(d.file.ends_with(name));
        assert!(d.message.contains("no YAML documents"), "{d}");
        assert!(
            d.message.contains("expected a ServiceMesh or Benchmark"),
            "{d}"
        );
        assert!(
            d.to_string()
                .contains(": error: contains no YAML documents"),
            "{d}"
        );
    }
    for text in [
        "",
        "\n",
        "   \t  \n",
        "\t\n\t\n",
        "# c\n",
        "---\n",
        "--- # c\n---\n",
    ] {
        let b = Bundle::from_str("inline.yaml", text);
        assert_eq!(b.diagnostics.len(), 1, "{text:?}: {}", render(&b));
        assert!(b.diagnostics[0].message.contains("no YAML documents"));
    }
}

#[test]
fn non_utf8_file_is_a_clear_error() {
    let b = load(&["invalid/latin1.yaml"]);
    assert_eq!(b.diagnostics.len(), 1, "{}", render(&b));
    let d = &b.diagnostics[0];
    assert!(d.message.contains("not UTF-8"), "{d}");
    assert!(d.message.contains("offset 73"), "{d}");
    assert!(d.message.contains("expected a YAML file"), "{d}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let b = load(&["invalid/does-not-exist.yaml"]);
    assert_eq!(b.diagnostics.len(), 1);
    assert!(b.diagnostics[0].message.contains("cannot read file"));
    assert!(b.diagnostics[0].file.ends_with("does-not-exist.yaml"));
}

#[test]
fn syntax_errors_are_located() {
    let b = load(&["invalid/syntax-error.yaml"]);
    assert_eq!(b.diagnostics.len(), 1, "{}", render(&b));
    let d = &b.diagnostics[0];
    assert!(d.message.starts_with("invalid YAML:"), "{d}");
    assert_eq!(d.document, Some(1));
    assert_eq!(d.position.map(|p| p.line), Some(3));
}

#[test]
fn non_meshbench_kind() {
    let b = load(&["invalid/other-kind.yaml"]);
    assert_eq!(b.diagnostics.len(), 2, "{}", render(&b));
    let d = at_path(&b, "kind");
    check(
        d,
        "invalid/other-kind.yaml",
        1,
        "Deployment/web",
        pos(2, 1),
        &[
            "\"Deployment\" is not a meshbench kind",
            "expected ServiceMesh or Benchmark",
        ],
    );
    let d = at_path(&b, "apiVersion");
    assert!(d.message.contains("\"apps/v1\" is not supported"));
    assert!(d.message.contains("expected \"meshbench.io/v1alpha1\""));

    let b = Bundle::from_str(
        "k.yaml",
        "apiVersion: meshbench.io/v1alpha1\nmetadata: {name: x}\n",
    );
    let d = at_path(&b, "kind");
    assert!(
        d.message
            .contains("missing; expected ServiceMesh or Benchmark")
    );
}

#[test]
fn servicegraph_kind_hints_at_import() {
    let b = load(&["prototype/servicegraph.yaml"]);
    let d = at_path(&b, "kind");
    check(
        d,
        "prototype/servicegraph.yaml",
        1,
        "Servicegraph/shop_graph",
        pos(4, 1),
        &[
            "\"Servicegraph\" is the prototype's format",
            "expected ServiceMesh or Benchmark",
        ],
    );
    let hint = d.hint.as_deref().expect("a hint");
    assert!(hint.contains("meshbench import"), "{hint}");
}

#[test]
fn document_that_is_not_a_mapping() {
    let b = load(&["invalid/not-a-mapping.yaml"]);
    assert_eq!(b.diagnostics.len(), 1, "{}", render(&b));
    let d = &b.diagnostics[0];
    assert!(d.message.contains("is a list"), "{d}");
    assert!(d.message.contains("expected a mapping"), "{d}");
    assert_eq!(d.position, pos(1, 1));
}

/// `spec.report` was accepted and ignored; it is not part of the API any more, and a
/// document that still has it is told so instead of silently losing the setting.
#[test]
fn a_report_block_is_rejected_not_ignored() {
    let text = r#"
apiVersion: meshbench.io/v1alpha1
kind: Benchmark
metadata: { name: b }
spec:
  meshes: [m]
  target: { service: api, path: / }
  profile: { stages: [{ rate: 10, duration: 5s }] }
  report: { formats: [csv] }
"#;
    let b = Bundle::from_str("bench.yaml", text);
    let d = at_path(&b, "spec.report");
    assert!(
        d.message.contains("unknown field `report`"),
        "{}",
        render(&b)
    );
}
