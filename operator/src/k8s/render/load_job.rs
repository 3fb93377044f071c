//! The objects of one load step: the plan ConfigMap and the Indexed Job running the
//! loadgen instances that read it.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, PodTemplateSpec,
    ResourceRequirements, SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use meshbench_crds::benchmark::{LoadKind, LoadModel, LoadgenResources, Target};
use meshbench_crds::mesh::{HttpMethod, ResourceAmounts};
use meshbench_crds::resolve::{self, PlannedStep, ResolvedService};
use meshbench_crds::{Benchmark, ServiceMesh, ValidBenchmark};
use meshbench_loadgen::load_plan as lp;

use super::{
    LOADGEN_METRICS_PORT, PLAN_KEY, PLAN_PATH, RenderError, RenderOptions, Result, TOKEN_KEY,
    base_pod_spec, config_volume, container_security_context, load_job_name, meta, mounts,
    object_name, to_json, token_secret_name,
};
use crate::k8s::keys;

/// The objects of one load step.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadJobObjects {
    /// The plan every instance reads.
    pub plan_config_map: ConfigMap,
    /// The Indexed Job.
    pub job: Job,
    /// The plan itself.
    pub plan: lp::LoadPlan,
}

/// What one load Job runs: which benchmark, mesh, run and step.
#[derive(Debug, Clone)]
pub struct LoadStep<'a> {
    /// The benchmark.
    pub benchmark: &'a ValidBenchmark,
    /// The mesh under load, one of those the benchmark was validated against. It is the
    /// resource as written, not a [`ValidMesh`](meshbench_crds::ValidMesh): a cluster's
    /// run takes it from its spec snapshot, and meshes are validated by the ServiceMesh
    /// controller, not the Benchmark controller.
    pub mesh: &'a ServiceMesh,
    /// Run id (labels every object and metric of the run).
    pub run_id: &'a str,
    /// The step.
    pub step: &'a PlannedStep,
    /// Ordinal of the step across meshes and repetitions (names the Job).
    pub ordinal: usize,
    /// Repetition (0-based).
    pub repetition: u32,
    /// Whether the benchmark's warm-up runs before this step.
    pub with_warmup: bool,
    /// Common start time of all instances (UTC unix ms).
    pub start_at_unix_ms: Option<u64>,
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

/// The load plan of one step, as the loadgen instances of its Job read it.
pub fn load_plan(step: &LoadStep<'_>) -> Result<lp::LoadPlan> {
    let spec = step.benchmark.spec();
    let mesh = mesh_name(step.mesh)?;
    let target = target_service(step, &mesh)?;
    let path = resolve::endpoint_path(spec.target.path.as_deref()).to_string();
    let method = spec
        .target
        .method
        .or_else(|| target.endpoint(&path).map(|e| e.method))
        .unwrap_or(HttpMethod::Get);
    Ok(lp::LoadPlan {
        target: format!(
            "http://{}:{}",
            object_name(&mesh, &target.name),
            target.port
        ),
        request: request_spec(&spec.target, method, path),
        model: load_model(&spec.load),
        profile: lp::Profile::Stages(vec![lp::Stage {
            name: Some(step.step.name.clone()),
            duration: step.step.duration,
            rate: step.step.rate,
            users: step.step.users,
        }]),
        warm_up: warm_up(step),
        timeout: spec
            .request_timeout
            .as_ref()
            .map(|t| t.get())
            .unwrap_or(resolve::DEFAULT_REQUEST_TIMEOUT),
        instance: lp::InstanceSpec::default(),
        start_at_unix_ms: step.start_at_unix_ms,
        preflight: true,
        labels: plan_labels(step, &mesh),
    })
}

/// The benchmark's target service in the mesh under load, after defaults.
fn target_service(step: &LoadStep<'_>, mesh: &str) -> Result<ResolvedService> {
    let service = &step.benchmark.spec().target.service;
    resolve::resolve_mesh(&step.mesh.spec)
        .into_iter()
        .find(|s| s.name == *service)
        .ok_or_else(|| RenderError::TargetNotFound {
            benchmark: step.benchmark.name().to_string(),
            mesh: mesh.to_string(),
            service: service.clone(),
        })
}

/// The request every instance sends.
fn request_spec(target: &Target, method: HttpMethod, path: String) -> lp::RequestSpec {
    lp::RequestSpec {
        method: method.as_str().to_string(),
        path,
        query: target.query.as_deref().map(parse_query).unwrap_or_default(),
        headers: target.headers.clone(),
        body: target.body.clone(),
    }
}

/// The load model with its defaults.
fn load_model(load: &LoadModel) -> lp::LoadModel {
    match load.model {
        LoadKind::Open => lp::LoadModel::Open {
            max_in_flight: load
                .max_in_flight
                .map(|m| m.max(1) as u32)
                .unwrap_or(resolve::DEFAULT_MAX_IN_FLIGHT),
            max_lateness: None,
        },
        LoadKind::Closed => lp::LoadModel::Closed {
            think_time: load
                .think_time
                .as_ref()
                .map(|t| t.get())
                .unwrap_or_default(),
        },
    }
}

/// The benchmark's warm-up when it runs before this step, at the step's load unless it
/// sets its own.
fn warm_up(step: &LoadStep<'_>) -> Option<lp::WarmUp> {
    step.benchmark
        .spec()
        .warmup
        .as_ref()
        .filter(|_| step.with_warmup)
        .map(|w| lp::WarmUp {
            duration: w.duration.get(),
            rate: w.rate.or(step.step.rate),
            users: w.users.map(|u| u.max(1) as u32).or(step.step.users),
        })
}

/// The labels of every result and metric of the step.
fn plan_labels(step: &LoadStep<'_>, mesh: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("benchmark".to_string(), step.benchmark.name().to_string()),
        ("mesh".to_string(), mesh.to_string()),
        ("run".to_string(), step.run_id.to_string()),
        ("repetition".to_string(), step.repetition.to_string()),
        ("step".to_string(), step.step.index.to_string()),
    ])
}

/// Renders the plan ConfigMap and the Indexed Job of one step. Instances share the
/// plan; each takes its share by `JOB_COMPLETION_INDEX` and posts its result to the
/// operator with the benchmark's token (from its Secret).
pub fn render_load_job(step: &LoadStep<'_>, opts: &RenderOptions) -> Result<LoadJobObjects> {
    let bench = step.benchmark.benchmark();
    let mesh = mesh_name(step.mesh)?;
    let namespace = bench.metadata.namespace.clone().or(opts.namespace.clone());
    let owner = bench.controller_owner_ref(&());
    let plan = load_plan(step)?;
    let plan_json = to_json("load plan", &plan)?;
    let name = load_job_name(step.benchmark.name(), step.run_id, step.ordinal);
    let labels = load_job_labels(step, &name, mesh);
    let plan_config_map = ConfigMap {
        metadata: meta(name.clone(), &namespace, labels.clone(), &owner),
        data: Some(BTreeMap::from([(PLAN_KEY.to_string(), plan_json)])),
        ..ConfigMap::default()
    };
    let container = loadgen_container(step, opts, namespace.as_deref());
    let job = load_job(
        &name,
        meta(name.clone(), &namespace, labels, &owner),
        container,
        &plan,
        job_parallelism(bench),
    );
    Ok(LoadJobObjects {
        plan_config_map,
        job,
        plan,
    })
}

/// Loadgen instances of the Job (`spec.loadgen.parallelism`, at least 1).
fn job_parallelism(bench: &Benchmark) -> i32 {
    bench
        .spec
        .loadgen
        .as_ref()
        .and_then(|l| l.parallelism)
        .unwrap_or(1)
        .max(1)
}

/// The labels of the Job, its pods and its plan; empty values are left out.
fn load_job_labels(step: &LoadStep<'_>, name: &str, mesh: String) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (keys::APP_NAME.to_string(), "meshbench-loadgen".to_string()),
        (keys::APP_INSTANCE.to_string(), name.to_string()),
        (keys::APP_COMPONENT.to_string(), "loadgen".to_string()),
        (keys::APP_PART_OF.to_string(), "meshbench".to_string()),
        (
            keys::APP_MANAGED_BY.to_string(),
            "meshbench-operator".to_string(),
        ),
        (
            keys::BENCHMARK.to_string(),
            step.benchmark.name().to_string(),
        ),
        (keys::MESH.to_string(), mesh),
        (keys::RUN.to_string(), step.run_id.to_string()),
        (keys::STEP.to_string(), step.step.index.to_string()),
    ]);
    labels.retain(|_, v| !v.is_empty());
    labels
}

/// The loadgen container: the plan mounted, the token from the benchmark's Secret, its
/// result posted to the operator's results endpoint.
fn loadgen_container(
    step: &LoadStep<'_>,
    opts: &RenderOptions,
    namespace: Option<&str>,
) -> Container {
    let bench = step.benchmark.benchmark();
    let bench_name = step.benchmark.name();
    let resources = bench
        .spec
        .loadgen
        .as_ref()
        .and_then(|l| l.resources.as_ref());
    let results_url = format!(
        "{}/v1/results/{}/{}/{}/{}",
        opts.results_base_url.trim_end_matches('/'),
        namespace.unwrap_or("default"),
        bench_name,
        step.run_id,
        step.ordinal
    );
    Container {
        name: "loadgen".into(),
        image: Some(
            opts.loadgen_image
                .clone()
                .unwrap_or_else(|| opts.image.clone()),
        ),
        image_pull_policy: Some(
            opts.image_pull_policy
                .clone()
                .unwrap_or_else(|| "IfNotPresent".into()),
        ),
        command: Some(opts.loadgen_command.clone()),
        args: Some(vec![
            "--plan".into(),
            PLAN_PATH.into(),
            "--instances".into(),
            job_parallelism(bench).to_string(),
            "--worker-threads".into(),
            loadgen_threads(resources).to_string(),
            "--results-url".into(),
            results_url,
            "--metrics-listen".into(),
            format!("0.0.0.0:{LOADGEN_METRICS_PORT}"),
            "--out".into(),
            "/tmp/result.json".into(),
            "--quiet".into(),
        ]),
        env: Some(vec![
            EnvVar {
                name: "MESHBENCH_RESULTS_TOKEN".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: token_secret_name(bench_name),
                        key: TOKEN_KEY.into(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
            },
            env("RUST_LOG", "info"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: LOADGEN_METRICS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: loadgen_resources(resources),
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts("plan", PLAN_PATH, PLAN_KEY)),
        ..Container::default()
    }
}

/// The Indexed Job `name` running `container` once per instance, none retried, with a
/// deadline of the plan's duration and time to start and report.
fn load_job(
    name: &str,
    metadata: ObjectMeta,
    container: Container,
    plan: &lp::LoadPlan,
    parallelism: i32,
) -> Job {
    let total = plan.total_duration().as_secs()
        + plan.timeout.as_secs()
        // Start-up, the start barrier and the result upload.
        + 300;
    let pod_labels = metadata.labels.clone();
    Job {
        metadata,
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".into()),
            completions: Some(parallelism),
            parallelism: Some(parallelism),
            // A retried instance would send its share of the load twice, late; a failed
            // instance fails the step instead.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(i64::try_from(total).unwrap_or(i64::MAX)),
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: pod_labels,
                    ..ObjectMeta::default()
                }),
                spec: Some(base_pod_spec(
                    container,
                    vec![config_volume("plan", name)],
                    Some("Never"),
                )),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

fn amounts(a: &Option<ResourceAmounts>) -> Option<BTreeMap<String, Quantity>> {
    let a = a.as_ref()?;
    let mut m = BTreeMap::new();
    if let Some(c) = &a.cpu {
        m.insert("cpu".to_string(), c.clone());
    }
    if let Some(mem) = &a.memory {
        m.insert("memory".to_string(), mem.clone());
    }
    (!m.is_empty()).then_some(m)
}

/// Sending threads for a load pod: one per whole core of its CPU limit (else request).
/// The loadgen's default of one thread is its cheapest per request; a pod given more cores
/// should use them.
fn loadgen_threads(r: Option<&LoadgenResources>) -> u64 {
    let cpu = |a: &Option<ResourceAmounts>| {
        a.as_ref()
            .and_then(|a| a.cpu.as_ref())
            .and_then(|q| meshbench_crds::units::cpu_millis(q).ok())
    };
    r.and_then(|r| cpu(&r.limits).or_else(|| cpu(&r.requests)))
        .map(|m| (m / 1000).clamp(1, 64))
        .unwrap_or(1)
}

fn loadgen_resources(r: Option<&LoadgenResources>) -> Option<ResourceRequirements> {
    let r = r?;
    Some(ResourceRequirements {
        requests: amounts(&r.requests),
        limits: amounts(&r.limits),
        ..ResourceRequirements::default()
    })
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn mesh_name(mesh: &ServiceMesh) -> Result<String> {
    mesh.metadata.name.clone().ok_or(RenderError::MissingName {
        kind: "ServiceMesh",
    })
}
