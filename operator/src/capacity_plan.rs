//! `meshbench plan`: the capacity model applied to a spec, before anything runs.

use std::path::PathBuf;
use std::process::ExitCode;

use meshbench_analysis::capacity::{self, Budget, NodeModel};
use meshbench_crds::Bundle;

use crate::{convert, exit};

/// Prints the capacity plan of every mesh of the chosen benchmark.
pub fn plan(
    files: &[PathBuf],
    json: bool,
    benchmark: Option<&str>,
    pod_budget: Option<u32>,
    node: Option<NodeModel>,
) -> ExitCode {
    let bundle = Bundle::load_files(files);
    if !bundle.is_valid() {
        for d in &bundle.diagnostics {
            eprintln!("{d}");
        }
        return exit::code(exit::INVALID);
    }
    let chosen: Vec<_> = bundle
        .benchmarks
        .iter()
        .map(|d| &d.benchmark)
        .filter(|b| benchmark.is_none() || b.metadata.name.as_deref() == benchmark)
        .collect();
    if chosen.is_empty() {
        eprintln!(
            "error: no Benchmark{} in the given files; `plan` needs one for the entry point and the rates",
            benchmark
                .map(|b| format!(" named {b:?}"))
                .unwrap_or_default()
        );
        return exit::code(exit::INVALID);
    }
    let mut out = Vec::new();
    for bench in chosen {
        let (bench, meshes) = match bundle.validated(bench) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::code(exit::INVALID);
            }
        };
        let rates = convert::rates(&bench);
        for mesh in &meshes {
            let mut input = convert::capacity_input(mesh, bench.spec());
            input.node = node;
            let result = match pod_budget {
                Some(p) => capacity::plan_with_budget(&input, &rates, Budget::Pods(p)),
                None => capacity::plan(&input, &rates),
            };
            match result {
                Ok(p) => out.push((bench.name().to_string(), mesh.name().to_string(), p)),
                Err(e) => {
                    eprintln!("error: mesh {}: {e}", mesh.name());
                    return exit::code(exit::INVALID);
                }
            }
        }
    }
    if json {
        let v: Vec<_> = out
            .iter()
            .map(|(b, m, p)| serde_json::json!({"benchmark": b, "mesh": m, "plan": p}))
            .collect();
        match serde_json::to_string_pretty(&v) {
            Ok(s) => exit::out(format!("{s}\n")),
            Err(e) => {
                eprintln!("error: {e}");
                return exit::code(exit::RUN_FAILED);
            }
        }
    } else {
        for (b, m, p) in &out {
            exit::out(format!("# benchmark {b}, mesh {m}\n{p}\n"));
        }
    }
    exit::code(exit::OK)
}
