//! Conversions from the API types (crds) into the plain inputs of the analysis crate and
//! the load generator, which link no kube.

use std::collections::BTreeMap;
use std::time::Duration;

use meshbench_analysis::Slo;
use meshbench_analysis::capacity::{
    CallModel, CapacityInput, EndpointModel, EntryPoint, HpaModel, Overhead, ServiceModel,
};
use meshbench_crds::benchmark::{BenchmarkSpec, LoadKind};
use meshbench_crds::mesh::{Delay, DelayMode};
use meshbench_crds::resolve::{PlannedStep, ResolvedEndpoint, ResolvedService, endpoint_path};
use meshbench_crds::{ValidBenchmark, ValidMesh};
use meshbench_loadgen::load_plan::{LoadModel, LoadPlan, RequestSpec, Stage};

/// Mean, variance and smallest value of a delay distribution, in seconds.
fn delay_moments(d: &Delay) -> (f64, f64, f64) {
    if let Some(f) = &d.fixed {
        let v = f.get().as_secs_f64();
        (v, 0.0, v)
    } else if let Some(u) = &d.uniform {
        let (a, b) = (u.min.get().as_secs_f64(), u.max.get().as_secs_f64());
        ((a + b) / 2.0, (b - a).powi(2) / 12.0, a.min(b))
    } else if let Some(e) = &d.exponential {
        let m = e.mean.get().as_secs_f64();
        (m, m * m, 0.0)
    } else if let Some(l) = &d.log_normal {
        // Log-normal with median e^μ and shape σ: mean e^(μ+σ²/2), variance (e^σ² − 1)·mean².
        let s2 = l.sigma * l.sigma;
        let mean = l.median.get().as_secs_f64() * (s2 / 2.0).exp();
        (mean, s2.exp_m1() * mean * mean, 0.0)
    } else {
        (0.0, 0.0, 0.0)
    }
}

/// The capacity model's view of a mesh with the benchmark's entry point.
pub fn capacity_input(mesh: &ValidMesh, bench: &BenchmarkSpec) -> CapacityInput {
    capacity_input_of(mesh.services(), bench)
}

/// [`capacity_input`] of services the caller resolved. A cluster's run builds its models
/// from the meshes of its spec snapshot, which the Benchmark controller does not validate
/// as meshes (the ServiceMesh controller does), so it resolves them itself.
pub fn capacity_input_of(services: &[ResolvedService], bench: &BenchmarkSpec) -> CapacityInput {
    let services = services.iter().map(service_model).collect();
    CapacityInput {
        entry: EntryPoint {
            service: bench.target.service.clone(),
            path: endpoint_path(bench.target.path.as_deref()).to_string(),
        },
        services,
        overhead: Overhead::default(),
        node: None,
    }
}

/// The capacity model's view of one service.
fn service_model(s: &ResolvedService) -> ServiceModel {
    ServiceModel {
        name: s.name.clone(),
        replicas: s.replicas.max(0) as u32,
        cpu_request_cores: s.resources.cpu_request_millis.unwrap_or(0) as f64 / 1000.0,
        cpu_limit_cores: s.resources.cpu_limit_millis.map(|m| m as f64 / 1000.0),
        hpa: s.autoscaling.as_ref().map(|a| HpaModel {
            min: a.min_replicas.max(1) as u32,
            max: a.max_replicas.max(1) as u32,
            target_utilization_percent: f64::from(a.target_cpu_utilization),
        }),
        idle_cpu_cores: s.idle_cpu_millis as f64 / 1000.0,
        memory_request_bytes: s.resources.memory_request_bytes.unwrap_or(0) as f64,
        endpoints: s.endpoints.iter().map(endpoint_model).collect(),
    }
}

/// The capacity model's view of one endpoint: its CPU, the moments of its delay, and
/// its calls.
fn endpoint_model(e: &ResolvedEndpoint) -> EndpointModel {
    let delay = e.delay.as_ref();
    let (mean, variance, min) = delay.map_or((0.0, 0.0, 0.0), |d| delay_moments(&d.delay));
    EndpointModel {
        path: e.path.clone(),
        cpu_seconds: e.cpu.as_secs_f64(),
        delay_seconds_mean: mean,
        delay_seconds_variance: variance,
        delay_seconds_min: min,
        delay_minimum_total: delay.is_some_and(|d| d.mode == DelayMode::MinimumTotal),
        call_groups: e
            .call_groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|c| CallModel {
                        service: c.service.clone(),
                        path: c.path.clone(),
                        probability: c.probability,
                        repeat: c.repeat,
                    })
                    .collect()
            })
            .collect(),
    }
}

/// The SLOs of a benchmark.
pub fn slos(bench: &BenchmarkSpec) -> Vec<Slo> {
    let Some(s) = &bench.slos else {
        return Vec::new();
    };
    let mut out: Vec<Slo> = s
        .latency
        .iter()
        .map(|l| Slo::Latency {
            percentile: l.percentile,
            max_ms: l.max.get().as_secs_f64() * 1000.0,
        })
        .collect();
    if let Some(e) = s.max_error_rate {
        out.push(Slo::ErrorRate { max_ratio: e });
    }
    if let Some(a) = s.min_achieved_ratio {
        out.push(Slo::Throughput { min_ratio: a });
    }
    out
}

/// The load plan of one step (or the warm-up) against `target_url`.
pub fn step_plan(
    bench: &BenchmarkSpec,
    step: &PlannedStep,
    target_url: &str,
    warmup: bool,
) -> LoadPlan {
    let t = &bench.target;
    let query: BTreeMap<String, String> = t
        .query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect();
    let model = match bench.load.model {
        LoadKind::Open => LoadModel::Open {
            max_in_flight: bench
                .load
                .max_in_flight
                .map(|m| m.max(1) as u32)
                .unwrap_or(meshbench_crds::resolve::DEFAULT_MAX_IN_FLIGHT),
            max_lateness: None,
        },
        LoadKind::Closed => LoadModel::Closed {
            think_time: bench
                .load
                .think_time
                .as_ref()
                .map(|d| d.get())
                .unwrap_or(Duration::ZERO),
        },
    };
    let mut plan = LoadPlan::single_stage(
        target_url,
        model,
        Stage {
            name: Some(if warmup {
                "warmup".into()
            } else {
                step.name.clone()
            }),
            duration: step.duration,
            rate: step.rate,
            users: step.users,
        },
    );
    plan.request = RequestSpec {
        method: t
            .method
            .map(|m| m.as_str().to_string())
            .unwrap_or_else(|| "GET".into()),
        path: endpoint_path(t.path.as_deref()).to_string(),
        query,
        headers: t.headers.clone(),
        body: t.body.clone(),
    };
    plan.timeout = bench
        .request_timeout
        .as_ref()
        .map(|d| d.get())
        .unwrap_or(meshbench_crds::resolve::DEFAULT_REQUEST_TIMEOUT);
    plan
}

/// The rates of a benchmark's measured steps (open loop), for `plan`.
pub fn rates(bench: &ValidBenchmark) -> Vec<f64> {
    bench.steps().iter().filter_map(|s| s.rate).collect()
}

/// Records one measured step of mesh `mesh` in the analysis input: its timing and load
/// from the loadgen stage that ran it. Both platforms record steps this way.
pub fn record_step(
    data: &mut meshbench_analysis::RunData,
    mesh: &str,
    cursor: crate::experiment::Cursor,
    step: &PlannedStep,
    stage: &meshbench_loadgen::result::StageResult,
) {
    let mut stage = stage.clone();
    stage.index = cursor.step as u32;
    data.steps.push(meshbench_analysis::StepMeta {
        mesh: mesh.to_string(),
        repetition: cursor.repetition,
        index: cursor.step as u32,
        name: step.name.clone(),
        start_ms: stage.started_unix_ms as i64,
        end_ms: stage.ended_unix_ms as i64,
        target_rate: step.rate,
        users: step.users,
        warmup: false,
    });
    data.load.push(meshbench_analysis::StepLoad {
        mesh: mesh.to_string(),
        repetition: cursor.repetition,
        step: cursor.step as u32,
        stage,
    });
}
