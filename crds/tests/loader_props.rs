//! The loader never panics, whatever it is fed: arbitrary bytes and text, mutations of
//! valid specs, deep nesting, alias bombs and huge numbers. Every outcome is either a valid
//! bundle or diagnostics that each carry a message. Case counts are kept small so the
//! whole file runs in seconds.

use std::path::{Path, PathBuf};

use meshbench_crds::Bundle;
use meshbench_crds::import::import;
use meshbench_crds::resolve::{plan_steps, resolve_mesh};
use proptest::prelude::*;
use proptest::sample::Index;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn seeds() -> Vec<String> {
    [
        "valid/shop-mesh.yaml",
        "valid/shop-bench.yaml",
        "valid/multi-doc.yaml",
        "invalid/many-problems.yaml",
        "invalid/required-fields.yaml",
        "prototype/servicegraph.yaml",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(fixture(f)).expect("fixture"))
    .chain(std::iter::once(
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/quickstart.yaml"),
        )
        .expect("quickstart"),
    ))
    .collect()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // No regression files in the source tree; a failure prints its minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The outcome every input must have, and the effective views must not panic either.
fn check_outcome(b: &Bundle, name: &str) -> Result<(), TestCaseError> {
    if b.is_valid() {
        prop_assert!(
            !b.meshes.is_empty() || !b.benchmarks.is_empty(),
            "valid but empty"
        );
    }
    for d in &b.diagnostics {
        prop_assert!(!d.message.trim().is_empty(), "empty message: {d:?}");
        prop_assert_eq!(&d.file, name);
        if let Some(p) = d.position {
            prop_assert!(p.line >= 1 && p.column >= 1, "bad position {p:?}");
        }
        let text = d.to_string();
        prop_assert!(text.starts_with(name) && text.contains("error:"));
    }
    // Resolution is meant for valid specs but must survive anything the loader keeps.
    for m in &b.meshes {
        let _ = resolve_mesh(&m.mesh.spec);
    }
    for bench in &b.benchmarks {
        prop_assert!(plan_steps(&bench.benchmark.spec).len() <= 200);
    }
    Ok(())
}

fn load(text: &str) -> Result<(), TestCaseError> {
    let b = Bundle::from_str("fuzz.yaml", text);
    check_outcome(&b, "fuzz.yaml")
}

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    InsertChar(Index, char),
    ReplaceChar(Index, char),
    Truncate(Index),
    Indent(Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let yaml_chars = prop_oneof![
        prop::sample::select(vec![
            ':', '-', ' ', '\t', '\n', '[', ']', '{', '}', ',', '#', '&', '*', '!', '|', '>', '\'',
            '"', '%', '@', '`', '?', '0', '9', '.', 'e', '\u{0}', '\u{feff}', 'é',
        ]),
        any::<char>(),
    ];
    prop_oneof![
        any::<Index>().prop_map(Mutation::DeleteLine),
        any::<Index>().prop_map(Mutation::DuplicateLine),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<Index>(), yaml_chars.clone()).prop_map(|(i, c)| Mutation::InsertChar(i, c)),
        (any::<Index>(), yaml_chars).prop_map(|(i, c)| Mutation::ReplaceChar(i, c)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 0u8..8).prop_map(|(i, n)| Mutation::Indent(i, n)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let chars: Vec<char> = text.chars().collect();
    match m {
        Mutation::DeleteLine(i) if !lines.is_empty() => {
            lines.remove(i.index(lines.len()));
        }
        Mutation::DuplicateLine(i) if !lines.is_empty() => {
            let k = i.index(lines.len());
            lines.insert(k, lines[k].clone());
        }
        Mutation::SwapLines(a, b) if !lines.is_empty() => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
        }
        Mutation::Indent(i, n) if !lines.is_empty() => {
            let k = i.index(lines.len());
            lines[k] = format!("{}{}", " ".repeat(usize::from(*n)), lines[k]);
        }
        Mutation::InsertChar(i, c) => {
            let mut chars = chars;
            let k = i.index(chars.len() + 1);
            chars.insert(k, *c);
            return chars.into_iter().collect();
        }
        Mutation::ReplaceChar(i, c) if !chars.is_empty() => {
            let mut chars = chars;
            let k = i.index(chars.len());
            chars[k] = *c;
            return chars.into_iter().collect();
        }
        Mutation::Truncate(i) => {
            let k = i.index(chars.len() + 1);
            return chars[..k].iter().collect();
        }
        _ => {}
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        load(&text)?;
    }

    #[test]
    fn yaml_like_text_never_panics(
        text in r"(apiVersion|kind|metadata|spec|services|name|endpoints|path|calls|service|ServiceMesh|Benchmark|meshbench\.io/v1alpha1|profile|sweep|stages|rate|duration|[-:\[\]{}, \n#&*!|>'0-9.a-z])*"
    ) {
        load(&text)?;
    }

    #[test]
    fn mutated_specs_never_panic(
        seed in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let seeds = seeds();
        let mut text = seeds[seed.index(seeds.len())].clone();
        for m in &mutations {
            text = apply(&text, m);
        }
        load(&text)?;
    }

    #[test]
    fn importer_never_panics_on_mutated_prototypes(
        mutations in prop::collection::vec(mutation(), 1..6),
        with_measurement in any::<bool>(),
    ) {
        let mut graph = std::fs::read_to_string(fixture("prototype/servicegraph.yaml")).expect("fixture");
        let mut measurement = std::fs::read_to_string(fixture("prototype/measurement.yaml")).expect("fixture");
        for (i, m) in mutations.iter().enumerate() {
            if i % 2 == 0 { graph = apply(&graph, m) } else { measurement = apply(&measurement, m) }
        }
        let m = with_measurement.then_some(("m.yaml", measurement.as_str()));
        match import("g.yaml", &graph, m) {
            Ok(i) => {
                // Whatever was imported can be printed and loaded again.
                let b = Bundle::from_str("imported.yaml", &i.to_yaml());
                check_outcome(&b, "imported.yaml")?;
            }
            Err(ds) => {
                prop_assert!(!ds.is_empty());
                for d in ds {
                    prop_assert!(!d.message.is_empty());
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn arbitrary_bytes_through_files_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let path = std::env::temp_dir().join(format!(
            "meshbench-crds-props-{}-{:?}.yaml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, &bytes).expect("temp file");
        let b = Bundle::load_files(std::slice::from_ref(&path));
        let _ = std::fs::remove_file(&path);
        let name = path.display().to_string();
        check_outcome(&b, &name)?;
        prop_assert!(!b.is_valid() || std::str::from_utf8(&bytes).is_ok());
    }
}

#[test]
fn deep_nesting_never_overflows_the_stack() {
    let n = 10_000;
    let inputs = [
        "[".repeat(n),
        format!("{}{}", "[".repeat(n), "]".repeat(n)),
        "{a: ".repeat(n),
        format!("{}1{}", "{a: ".repeat(n), "}".repeat(n)),
        "- ".repeat(n),
        format!("spec:\n  services: {}", "[".repeat(n)),
        // Nested block mappings, deep enough to pass every recursion limit.
        (0..300)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect::<String>(),
        format!(
            "apiVersion: meshbench.io/v1alpha1\nkind: ServiceMesh\nmetadata: {{name: x}}\nspec:\n  defaults: {}1{}\n",
            "{a: ".repeat(n),
            "}".repeat(n)
        ),
    ];
    for text in &inputs {
        let b = Bundle::from_str("deep.yaml", text);
        assert!(!b.is_valid());
        assert!(b.diagnostics.iter().all(|d| !d.message.is_empty()));
    }
}

#[test]
fn alias_bombs_are_refused() {
    let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = (b'a' + (i - 1) as u8) as char;
        let cur = (b'a' + i as u8) as char;
        text.push_str(&format!(
            "{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        ));
    }
    let b = Bundle::from_str("bomb.yaml", &text);
    assert!(!b.is_valid());
    assert!(b.diagnostics.iter().all(|d| !d.message.is_empty()));
}

#[test]
fn huge_numbers_are_errors_not_panics() {
    let huge = "9".repeat(400);
    let mesh = |field: &str| {
        format!(
            "apiVersion: meshbench.io/v1alpha1\nkind: ServiceMesh\nmetadata: {{name: m}}\nspec:\n  services:\n    - name: web\n      {field}\n      endpoints:\n        - path: /\n          cpu: 1ms\n"
        )
    };
    for field in [
        format!("replicas: {huge}"),
        "replicas: 1e400".to_string(),
        "replicas: -2147483649".to_string(),
        "port: 18446744073709551616".to_string(),
        "resources: {limits: {cpu: 99999999999999999999999E18}}".to_string(),
        format!("resources: {{requests: {{memory: {huge}Ei}}}}"),
        "startupDelay: 99999999999999999999h".to_string(),
        "startupDelay: 1e308s".to_string(),
        "startupDelay: .inf".to_string(),
        "autoscaling: {maxReplicas: 4294967296, targetCPUUtilization: -1}".to_string(),
    ] {
        let b = Bundle::from_str("huge.yaml", &mesh(&field));
        assert!(!b.is_valid(), "{field} was accepted");
        // Located at the field; integers beyond 64 bits are refused by the YAML reader
        // itself, which names the field in its message.
        assert!(
            b.diagnostics
                .iter()
                .all(|d| d.path.starts_with("spec.services[0].")
                    || d.message.contains("spec.services[0].")),
            "{field}: {:?}",
            b.diagnostics
        );
        assert!(
            b.diagnostics
                .iter()
                .all(|d| d.position.is_some_and(|p| p.line == 6 || p.line == 7)),
            "{field}: {:?}",
            b.diagnostics
        );
    }

    let bench = |profile: &str| {
        format!(
            "apiVersion: meshbench.io/v1alpha1\nkind: ServiceMesh\nmetadata: {{name: m}}\nspec:\n  services: [{{name: web, endpoints: [{{path: /}}]}}]\n---\napiVersion: meshbench.io/v1alpha1\nkind: Benchmark\nmetadata: {{name: b}}\nspec:\n  meshes: [m]\n  target: {{service: web}}\n  load: {{model: open}}\n  profile: {profile}\n"
        )
    };
    for profile in [
        "{sweep: {from: 1, to: 1e308, step: 1e-308, stepDuration: 1s}}".to_string(),
        "{sweep: {from: 1e308, to: 1e308, step: 1, stepDuration: 1s}}".to_string(),
        "{sweep: {from: .nan, to: .inf, step: .nan, stepDuration: 1s}}".to_string(),
        "{sweep: {from: 1, to: 10, step: 1, stepDuration: 1e9h}}".to_string(),
        format!("{{stages: [{{rate: {huge}, duration: 1s}}]}}"),
        "{stages: [{rate: 1e400, duration: 1s}]}".to_string(),
    ] {
        let b = Bundle::from_str("huge.yaml", &bench(&profile));
        assert!(!b.is_valid(), "{profile} was accepted");
        assert!(
            b.diagnostics
                .iter()
                .all(|d| d.path.starts_with("spec.profile")),
            "{profile}: {:?}",
            b.diagnostics
        );
        for doc in &b.benchmarks {
            assert!(plan_steps(&doc.benchmark.spec).len() <= 200);
        }
    }
}

#[test]
fn many_documents_and_long_lines() {
    let doc = std::fs::read_to_string(fixture("valid/tiny-mesh.yaml")).expect("fixture");
    let text = format!("{doc}---\n").repeat(300);
    let b = Bundle::from_str("many.yaml", &text);
    assert_eq!(b.meshes.len(), 300);
    // Three hundred meshes of the same name are each valid on their own.
    assert!(b.is_valid(), "{:?}", b.diagnostics.first());

    let long = format!(
        "apiVersion: meshbench.io/v1alpha1\nkind: ServiceMesh\nmetadata: {{name: {}}}\nspec: {{services: []}}\n",
        "x".repeat(100_000)
    );
    let b = Bundle::from_str("long.yaml", &long);
    assert!(!b.is_valid());
}

#[test]
fn oversized_files_are_refused_before_parsing() {
    let path = std::env::temp_dir().join(format!("meshbench-crds-big-{}.yaml", std::process::id()));
    let big = vec![b'#'; meshbench_crds::load::MAX_FILE_BYTES + 1];
    std::fs::write(&path, &big).expect("temp file");
    let b = Bundle::load_files(std::slice::from_ref(&path));
    let _ = std::fs::remove_file(&path);
    assert_eq!(b.diagnostics.len(), 1);
    assert!(
        b.diagnostics[0]
            .message
            .contains("expected a spec of at most")
    );
}
