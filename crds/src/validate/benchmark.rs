//! The rules of a Benchmark, and [`ValidBenchmark`], what passing them yields.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Invalid, Issue, check_duration, check_name, check_probability, check_range, first_seen_names,
};
use crate::benchmark::{
    Benchmark, BenchmarkSpec, COLLECTION_QUERY_NAMES, COLLECTION_QUERY_PLACEHOLDERS, Collection,
    LoadKind, LoadModel, Profile, Slos, Stage, Sweep, Target, Warmup,
};
use crate::diag::suggest;
use crate::mesh::{ServiceMesh, ServiceSpec};
use crate::resolve::{PlannedStep, endpoint_path, plan_steps};

/// A Benchmark that passed [`validate_benchmark`] against the meshes it was checked
/// with (so every mesh it names was among them and holds its target), with its profile
/// expanded into steps once: what the experiment plan and the load Jobs take.
///
/// The meshes themselves are not part of it: a cluster's Benchmark controller checks a
/// benchmark against the meshes in its namespace, which the ServiceMesh controller
/// validates on its own (see [`ValidMesh`](super::ValidMesh) for those).
#[derive(Debug, Clone)]
pub struct ValidBenchmark {
    benchmark: Benchmark,
    steps: Vec<PlannedStep>,
}

impl ValidBenchmark {
    /// Validates `benchmark` against `meshes` (those it may name) and plans its steps;
    /// `Err` holds every problem [`validate_benchmark`] finds.
    pub fn new(benchmark: Benchmark, meshes: &[&ServiceMesh]) -> Result<Self, Invalid> {
        Invalid::check(validate_benchmark(&benchmark, meshes))?;
        let steps = plan_steps(&benchmark.spec);
        Ok(Self { benchmark, steps })
    }

    /// The resource as written.
    pub fn benchmark(&self) -> &Benchmark {
        &self.benchmark
    }

    /// The spec as written.
    pub fn spec(&self) -> &BenchmarkSpec {
        &self.benchmark.spec
    }

    /// `metadata.name`, which validation requires.
    pub fn name(&self) -> &str {
        self.benchmark.metadata.name.as_deref().unwrap_or_default()
    }

    /// The measured steps of one repetition, in order.
    pub fn steps(&self) -> &[PlannedStep] {
        &self.steps
    }
}

/// Checks a benchmark, and its references into `meshes` (all meshes of the input set).
pub fn validate_benchmark(bench: &Benchmark, meshes: &[&ServiceMesh]) -> Vec<Issue> {
    let mut out = Vec::new();
    check_name(&mut out, "metadata.name", bench.metadata.name.as_deref());
    let spec = &bench.spec;
    check_mesh_refs(&mut out, spec, meshes);

    let open = spec.load.model == LoadKind::Open;
    check_load_model(&mut out, &spec.load, open);
    check_profile(&mut out, &spec.profile, open);
    if let Some(w) = &spec.warmup {
        check_warmup(&mut out, w, open);
    }
    check_run_settings(&mut out, spec);
    if let Some(c) = &spec.collection {
        check_collection(&mut out, c);
    }
    if let Some(s) = &spec.slos {
        check_slos(&mut out, s);
    }
    out
}

/// Each referenced mesh must be among `meshes` and contain the target.
fn check_mesh_refs(out: &mut Vec<Issue>, spec: &BenchmarkSpec, meshes: &[&ServiceMesh]) {
    if spec.meshes.is_empty() {
        out.push(Issue::new(
            "spec.meshes",
            "is empty; expected the name of at least one ServiceMesh",
        ));
    }
    let names: Vec<&str> = meshes
        .iter()
        .filter_map(|m| m.metadata.name.as_deref())
        .collect();
    for (i, m) in spec.meshes.iter().enumerate() {
        let p = format!("spec.meshes[{i}]");
        let Some(mesh) = meshes
            .iter()
            .find(|x| x.metadata.name.as_deref() == Some(m.as_str()))
        else {
            out.push(unknown_mesh(&p, m, &names));
            continue;
        };
        // The target must exist in every referenced mesh.
        check_target(out, &spec.target, m, mesh);
    }
}

/// The issue for a mesh reference no given file defines: the likely typo, or the missing file.
fn unknown_mesh(p: &str, m: &str, names: &[&str]) -> Issue {
    let issue = Issue::new(
        p,
        if names.is_empty() {
            format!(
                "ServiceMesh {m:?} is not defined in the given files; expected a ServiceMesh with that name"
            )
        } else {
            format!(
                "ServiceMesh {m:?} is not defined in the given files; expected one of: {}",
                names.join(", ")
            )
        },
    );
    match suggest(m, names.iter().copied()) {
        Some(s) => issue.hint(format!("did you mean {s:?}?")),
        None => issue.hint("pass the file that defines the mesh too"),
    }
}

/// The target service must exist in mesh `m`, since every mesh is run with the same target.
fn check_target(out: &mut Vec<Issue>, target: &Target, m: &str, mesh: &ServiceMesh) {
    let svc = mesh.spec.services.iter().find(|s| s.name == target.service);
    match svc {
        None => {
            let svcs: Vec<&str> = first_seen_names(&mesh.spec);
            let mut issue = Issue::new(
                "spec.target.service",
                format!(
                    "service {:?} does not exist in ServiceMesh {m:?}; expected one of: {}",
                    target.service,
                    svcs.join(", ")
                ),
            );
            if let Some(s) = suggest(&target.service, svcs.iter().copied()) {
                issue = issue.hint(format!("did you mean {s:?}?"));
            }
            out.push(issue);
        }
        Some(svc) => check_target_endpoint(out, target, m, svc),
    }
}

/// The target path must be an endpoint of the service, serving the target's method if set.
fn check_target_endpoint(out: &mut Vec<Issue>, target: &Target, m: &str, svc: &ServiceSpec) {
    let path = endpoint_path(target.path.as_deref());
    match svc.endpoints.iter().find(|e| e.path == path) {
        None => {
            let eps: Vec<&str> = svc.endpoints.iter().map(|e| e.path.as_str()).collect();
            out.push(Issue::new(
                "spec.target.path",
                format!("service {:?} of ServiceMesh {m:?} has no endpoint {path:?}; expected one of: {}", svc.name, eps.join(", ")),
            ));
        }
        Some(ep) => {
            if let (Some(want), got) = (
                target.method,
                ep.method.unwrap_or(crate::mesh::HttpMethod::Get),
            ) && want != got
            {
                out.push(Issue::new(
                    "spec.target.method",
                    format!(
                        "{} does not match endpoint {path:?}, which serves {}",
                        want.as_str(),
                        got.as_str()
                    ),
                ));
            }
        }
    }
}

/// `thinkTime` belongs to the closed loop and `maxInFlight` to the open loop only.
fn check_load_model(out: &mut Vec<Issue>, load: &LoadModel, open: bool) {
    check_range(
        out,
        "spec.load.maxInFlight",
        load.max_in_flight.map(i64::from),
        1,
        100_000,
        "a request count",
    );
    if let Some(t) = &load.think_time {
        check_duration(out, "spec.load.thinkTime", t, false);
        if open {
            out.push(Issue::new(
                "spec.load.thinkTime",
                "applies to the closed loop only; expected it unset with model: open",
            ));
        }
    }
    if !open && load.max_in_flight.is_some() {
        out.push(Issue::new("spec.load.maxInFlight", "applies to the open loop only; with model: closed the users bound the requests in flight"));
    }
}

/// A profile is exactly one of explicit stages and a sweep; then that one is checked.
fn check_profile(out: &mut Vec<Issue>, p: &Profile, open: bool) {
    match (&p.stages, &p.sweep) {
        (Some(_), Some(_)) => out.push(Issue::new(
            "spec.profile",
            "sets both stages and sweep; expected exactly one",
        )),
        (None, None) => out.push(Issue::new(
            "spec.profile",
            "sets neither stages nor sweep; expected exactly one",
        )),
        _ => {}
    }
    if let Some(stages) = &p.stages {
        check_stages(out, stages, open);
    }
    if let Some(s) = &p.sweep {
        check_sweep(out, s, open);
    }
}

/// Between 1 and 200 stages, each with a positive duration and the load amount of the model.
fn check_stages(out: &mut Vec<Issue>, stages: &[Stage], open: bool) {
    if stages.is_empty() {
        out.push(Issue::new(
            "spec.profile.stages",
            "is empty; expected at least one stage",
        ));
    }
    if stages.len() > 200 {
        out.push(Issue::new(
            "spec.profile.stages",
            format!("has {} stages; expected at most 200", stages.len()),
        ));
    }
    for (i, s) in stages.iter().enumerate() {
        let sp = format!("spec.profile.stages[{i}]");
        check_duration(out, &format!("{sp}.duration"), &s.duration, true);
        check_load_amount(out, &sp, open, s.rate, s.users, true);
    }
}

/// A sweep: positive step duration, valid bounds and step, and whole users in a closed loop.
fn check_sweep(out: &mut Vec<Issue>, s: &Sweep, open: bool) {
    let sp = "spec.profile.sweep";
    check_duration(out, &format!("{sp}.stepDuration"), &s.step_duration, true);
    check_sweep_bounds(out, sp, s, open);
    check_sweep_step(out, sp, s);
    if !open && (s.from.fract() != 0.0 || s.step.fract() != 0.0) {
        out.push(Issue::new(
            sp,
            "a closed-loop sweep counts users; expected whole numbers for from and step",
        ));
    }
}

/// `from` and `to` are positive amounts within the model's maximum, ascending.
fn check_sweep_bounds(out: &mut Vec<Issue>, sp: &str, s: &Sweep, open: bool) {
    for (field, v) in [("from", s.from), ("to", s.to)] {
        if !v.is_finite() || v <= 0.0 {
            out.push(Issue::new(
                format!("{sp}.{field}"),
                format!(
                    "{v} is not positive; expected a {} greater than 0",
                    if open { "rate" } else { "user count" }
                ),
            ));
        } else if v > if open { 1_000_000.0 } else { 100_000.0 } {
            out.push(Issue::new(
                format!("{sp}.{field}"),
                if open {
                    format!("{v} is too high; expected at most 1000000 requests per second")
                } else {
                    format!("{v} is too high; expected at most 100000 users")
                },
            ));
        }
    }
    if s.from > s.to {
        out.push(Issue::new(
            format!("{sp}.from"),
            format!(
                "from {} exceeds to {}; expected an ascending sweep (from <= to)",
                s.from, s.to
            ),
        ));
    }
}

/// A positive step giving at most 200 steps, like the explicit stages.
fn check_sweep_step(out: &mut Vec<Issue>, sp: &str, s: &Sweep) {
    if !s.step.is_finite() || s.step <= 0.0 {
        out.push(Issue::new(
            format!("{sp}.step"),
            format!(
                "{} is not positive; expected an increment greater than 0",
                s.step
            ),
        ));
    } else if s.from <= s.to {
        // The same count as `resolve::plan_steps`, which allows for rounding.
        let n = ((s.to - s.from) / s.step + 1e-9).floor() + 1.0;
        if n > 200.0 {
            out.push(Issue::new(
                format!("{sp}.step"),
                format!("gives {n} steps; expected at most 200"),
            ));
        }
    }
}

/// A warmup is checked like a stage, except that its rate or users may be left unset.
fn check_warmup(out: &mut Vec<Issue>, w: &Warmup, open: bool) {
    check_duration(out, "spec.warmup.duration", &w.duration, true);
    check_load_amount(out, "spec.warmup", open, w.rate, w.users, false);
}

/// Settle time, request timeout, repetitions and load generator parallelism.
fn check_run_settings(out: &mut Vec<Issue>, spec: &BenchmarkSpec) {
    if let Some(s) = &spec.settle {
        check_duration(out, "spec.settle", s, false);
    }
    if let Some(t) = &spec.request_timeout {
        check_duration(out, "spec.requestTimeout", t, true);
    }
    check_range(
        out,
        "spec.repetitions",
        spec.repetitions.map(i64::from),
        1,
        100,
        "a repetition count",
    );
    if let Some(l) = &spec.loadgen {
        check_range(
            out,
            "spec.loadgen.parallelism",
            l.parallelism.map(i64::from),
            1,
            64,
            "an instance count",
        );
    }
}

/// Metric collection: an http(s) Prometheus URL, a positive interval and valid query overrides.
fn check_collection(out: &mut Vec<Issue>, c: &Collection) {
    if let Some(url) = &c.prometheus_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        out.push(Issue::new(
            "spec.collection.prometheusUrl",
            format!("{url:?} is not an http(s) URL; expected e.g. \"http://prometheus:9090\""),
        ));
    }
    if let Some(i) = &c.interval {
        check_duration(out, "spec.collection.interval", i, true);
    }
    check_query_overrides(out, &c.queries);
}

/// SLOs: percentiles in (0, 100] with positive bounds, and rates that are probabilities.
fn check_slos(out: &mut Vec<Issue>, s: &Slos) {
    for (i, l) in s.latency.iter().enumerate() {
        let lp = format!("spec.slos.latency[{i}]");
        if !(l.percentile > 0.0 && l.percentile <= 100.0) {
            out.push(Issue::new(
                format!("{lp}.percentile"),
                format!(
                    "{} is outside (0, 100]; expected a percentile such as 99",
                    l.percentile
                ),
            ));
        }
        check_duration(out, &format!("{lp}.max"), &l.max, true);
    }
    check_probability(out, "spec.slos.maxErrorRate", s.max_error_rate);
    check_probability(out, "spec.slos.minAchievedRatio", s.min_achieved_ratio);
}

/// Every `spec.collection.queries` override must name a built-in query and use only the
/// collector's placeholders: an unknown name would otherwise be refused only when the
/// first step is collected, and an unknown placeholder would reach Prometheus as-is.
fn check_query_overrides(out: &mut Vec<Issue>, queries: &BTreeMap<String, String>) {
    for (name, expr) in queries {
        let path = format!("spec.collection.queries.{name}");
        if !COLLECTION_QUERY_NAMES.contains(&name.as_str()) {
            out.push(unknown_query(&path, name));
        }
        // Each unknown placeholder once, however often it is used.
        let unknown: BTreeSet<&str> = placeholders(expr)
            .filter(|p| !COLLECTION_QUERY_PLACEHOLDERS.contains(p))
            .collect();
        out.extend(unknown.into_iter().map(|p| unknown_placeholder(&path, p)));
    }
}

fn unknown_query(path: &str, name: &str) -> Issue {
    let issue = Issue::new(
        path,
        format!(
            "{name:?} is not a built-in query; expected one of {}",
            COLLECTION_QUERY_NAMES.join(", ")
        ),
    );
    match suggest(name, COLLECTION_QUERY_NAMES.iter().copied()) {
        Some(s) => issue.hint(format!("did you mean {s:?}?")),
        None => issue,
    }
}

fn unknown_placeholder(path: &str, placeholder: &str) -> Issue {
    let issue = Issue::new(
        path,
        format!(
            "uses the unknown placeholder {placeholder}; expected one of {}",
            COLLECTION_QUERY_PLACEHOLDERS.join(", ")
        ),
    );
    match placeholder {
        // Pod names cannot be predicted from Deployment names (long ones are truncated),
        // so the pod regex placeholder was replaced by a join on the pods' owners.
        "$pods" => issue.hint(
            "select pods by their owner: `<expr> * on (namespace, pod) group_left (deployment) $pod_deployment`",
        ),
        _ => match suggest(placeholder, COLLECTION_QUERY_PLACEHOLDERS.iter().copied()) {
            Some(s) => issue.hint(format!("did you mean {s}?")),
            None => issue,
        },
    }
}

/// The `$name` placeholders of a PromQL template, in order. `$1` and `${1}` (capture
/// references in `label_replace`) are not placeholders.
pub fn placeholders(expr: &str) -> impl Iterator<Item = &str> {
    expr.match_indices('$').filter_map(move |(i, _)| {
        let rest = &expr[i + 1..];
        let len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(rest.len());
        (len > 0).then(|| &expr[i..=i + len])
    })
}

fn check_load_amount(
    out: &mut Vec<Issue>,
    path: &str,
    open: bool,
    rate: Option<f64>,
    users: Option<i32>,
    required: bool,
) {
    if open {
        if users.is_some() {
            out.push(Issue::new(
                format!("{path}.users"),
                "set with model: open; expected `rate` (requests per second)",
            ));
        }
        match rate {
            Some(r) if !r.is_finite() || r <= 0.0 => {
                out.push(Issue::new(
                    format!("{path}.rate"),
                    format!("{r} is not positive; expected requests per second greater than 0"),
                ));
            }
            Some(r) if r > 1_000_000.0 => {
                out.push(Issue::new(
                    format!("{path}.rate"),
                    format!("{r} is too high; expected at most 1000000 requests per second"),
                ));
            }
            None if required => out.push(Issue::new(
                format!("{path}.rate"),
                "missing; an open-loop stage needs a rate (requests per second)",
            )),
            _ => {}
        }
    } else {
        if rate.is_some() {
            out.push(Issue::new(
                format!("{path}.rate"),
                "set with model: closed; expected `users`",
            ));
        }
        match users {
            Some(u) if u <= 0 => out.push(Issue::new(
                format!("{path}.users"),
                format!("{u} is not positive; expected at least 1 user"),
            )),
            None if required => out.push(Issue::new(
                format!("{path}.users"),
                "missing; a closed-loop stage needs a number of users",
            )),
            _ => {}
        }
    }
}
