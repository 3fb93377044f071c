//! The effective view of specs: mesh defaults inherited and overridden field by field,
//! call groups, and the expansion of profiles into steps.

use std::time::Duration;

use meshbench_crds::Bundle;
use meshbench_crds::benchmark::BenchmarkSpec;
use meshbench_crds::mesh::{DelayMode, HttpMethod, ServiceMeshSpec};
use meshbench_crds::resolve::{
    DEFAULT_CALL_TIMEOUT, DEFAULT_PORT, DEFAULT_TARGET_UTILIZATION, PlannedStep, ResolvedCall,
    ResolvedService, plan_steps, resolve_mesh,
};

fn mesh_spec(spec: &str) -> ServiceMeshSpec {
    let text = format!(
        "apiVersion: meshbench.io/v1alpha1\nkind: ServiceMesh\nmetadata: {{name: m}}\nspec:\n{spec}"
    );
    let b = Bundle::from_str("mesh.yaml", &text);
    assert!(
        b.is_valid(),
        "{}",
        b.diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    b.meshes[0].mesh.spec.clone()
}

fn bench_spec(load: &str, profile: &str) -> BenchmarkSpec {
    let text = format!(
        "apiVersion: meshbench.io/v1alpha1\nkind: Benchmark\nmetadata: {{name: b}}\nspec:\n  meshes: [m]\n  target: {{service: web}}\n  load: {load}\n  profile: {profile}\n"
    );
    // Only the mesh reference is unresolved here; the document itself is typed.
    let b = Bundle::from_str("bench.yaml", &text);
    assert_eq!(b.benchmarks.len(), 1, "{:?}", b.diagnostics);
    b.benchmarks[0].benchmark.spec.clone()
}

fn svc<'a>(all: &'a [ResolvedService], name: &str) -> &'a ResolvedService {
    all.iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

const DEFAULTS: &str = "  defaults:
    replicas: 3
    port: 9000
    resources:
      requests: { cpu: 100m, memory: 32Mi }
      limits: { cpu: 500m, memory: 128Mi }
    autoscaling: { minReplicas: 2, maxReplicas: 4 }
    endpoint:
      cpu: 2ms
      memory: 1Mi
      delay: { fixed: 5ms, mode: minimumTotal }
      responseSize: 100
      errorRate: 0.1
      maxInFlight: 10
      callTimeout: 2s
      ignoreCallTimeouts: true
    idle: { cpu: 10m, memory: 16Mi }
    startupDelay: 1s
";

#[test]
fn services_inherit_every_default() {
    let spec = mesh_spec(&format!(
        "{DEFAULTS}  services:
    - name: inherits
      endpoints:
        - path: /
          calls: [{{ service: leaf }}, {{ service: leaf, timeout: 500ms }}]
    - name: leaf
      autoscaling: {{ enabled: false }}
      endpoints:
        - path: /
"
    ));
    let all = resolve_mesh(&spec);
    let s = svc(&all, "inherits");
    assert_eq!(s.replicas, 3);
    assert_eq!(s.port, 9000);
    assert_eq!(s.resources.cpu_request_millis, Some(100));
    assert_eq!(s.resources.cpu_limit_millis, Some(500));
    assert_eq!(s.resources.memory_request_bytes, Some(32 << 20));
    assert_eq!(s.resources.memory_limit_bytes, Some(128 << 20));
    let a = s.autoscaling.as_ref().expect("inherited autoscaling");
    assert_eq!((a.min_replicas, a.max_replicas), (2, 4));
    assert_eq!(a.target_cpu_utilization, DEFAULT_TARGET_UTILIZATION);
    assert_eq!(s.idle_cpu_millis, 10);
    assert_eq!(s.idle_memory_bytes, 16 << 20);
    assert_eq!(s.startup_delay, Duration::from_secs(1));
    assert_eq!(s.readiness_max_in_flight, None);
    assert_eq!(s.readiness_period, Duration::from_secs(1));

    let ep = s.endpoint("/").expect("endpoint");
    assert_eq!(ep.method, HttpMethod::Get);
    assert_eq!(ep.cpu, Duration::from_millis(2));
    assert_eq!(ep.memory_bytes, 1 << 20);
    let delay = ep.delay.as_ref().expect("delay");
    assert_eq!(delay.mode, DelayMode::MinimumTotal);
    assert_eq!(
        delay.delay.fixed.as_ref().map(|d| d.get()),
        Some(Duration::from_millis(5))
    );
    assert_eq!(ep.response_bytes, 100);
    assert_eq!(ep.error_rate, 0.1);
    assert_eq!(ep.max_in_flight, Some(10));
    assert!(ep.ignore_call_timeouts);
    // A call without a timeout takes the endpoint's callTimeout; its own wins otherwise.
    let timeouts: Vec<Duration> = ep.call_groups.concat().iter().map(|c| c.timeout).collect();
    assert_eq!(
        timeouts,
        [Duration::from_secs(2), Duration::from_millis(500)]
    );

    // Opting out of inherited autoscaling.
    assert!(svc(&all, "leaf").autoscaling.is_none());
}

#[test]
fn services_override_defaults_field_by_field() {
    let spec = mesh_spec(&format!(
        "{DEFAULTS}  services:
    - name: custom
      replicas: 1
      port: 8081
      resources:
        limits: {{ cpu: \"1\" }}
      autoscaling: {{ minReplicas: 1, maxReplicas: 8, targetCPUUtilization: 50 }}
      idle: {{ cpu: 20m }}
      startupDelay: 0s
      readiness: {{ maxInFlight: 5, period: 200ms }}
      endpoints:
        - path: /
          method: POST
          cpu: 7ms
          delay: {{ exponential: {{ mean: 3ms }} }}
          errorRate: 0
          ignoreCallTimeouts: false
"
    ));
    let all = resolve_mesh(&spec);
    let s = svc(&all, "custom");
    assert_eq!(s.replicas, 1);
    assert_eq!(s.port, 8081);
    // Only the CPU limit is overridden; the request and memory still come from defaults.
    assert_eq!(s.resources.cpu_limit_millis, Some(1000));
    assert_eq!(s.resources.cpu_request_millis, Some(100));
    assert_eq!(s.resources.memory_limit_bytes, Some(128 << 20));
    let a = s.autoscaling.as_ref().expect("autoscaling");
    assert_eq!(
        (a.min_replicas, a.max_replicas, a.target_cpu_utilization),
        (1, 8, 50)
    );
    // The service's idle block replaces the default one as a whole.
    assert_eq!(s.idle_cpu_millis, 20);
    assert_eq!(s.idle_memory_bytes, 0);
    assert_eq!(s.startup_delay, Duration::ZERO);
    assert_eq!(s.readiness_max_in_flight, Some(5));
    assert_eq!(s.readiness_period, Duration::from_millis(200));

    let ep = s.endpoint("/").expect("endpoint");
    assert_eq!(ep.method, HttpMethod::Post);
    assert_eq!(ep.cpu, Duration::from_millis(7));
    let delay = ep.delay.as_ref().expect("delay");
    assert!(delay.delay.exponential.is_some());
    assert_eq!(
        delay.mode,
        DelayMode::After,
        "the default mode, not the default delay's"
    );
    assert_eq!(ep.error_rate, 0.0);
    assert!(!ep.ignore_call_timeouts);
    // Not overridden: still inherited.
    assert_eq!(ep.memory_bytes, 1 << 20);
    assert_eq!(ep.max_in_flight, Some(10));
}

#[test]
fn built_in_defaults_without_mesh_defaults() {
    let spec = mesh_spec(
        "  services:
    - name: bare
      resources:
        limits: { cpu: 300m, memory: 64Mi }
      endpoints:
        - path: /
          calls: [{ service: other }]
    - name: other
      endpoints:
        - path: /
",
    );
    let all = resolve_mesh(&spec);
    let s = svc(&all, "bare");
    assert_eq!(s.replicas, 1);
    assert_eq!(s.port, DEFAULT_PORT);
    // As in Kubernetes, a limit without a request makes the request equal to the limit.
    assert_eq!(s.resources.cpu_request_millis, Some(300));
    assert_eq!(s.resources.memory_request_bytes, Some(64 << 20));
    assert!(s.autoscaling.is_none());
    let ep = s.endpoint("/").expect("endpoint");
    assert_eq!(ep.cpu, Duration::ZERO);
    assert!(ep.delay.is_none());
    assert_eq!(ep.max_in_flight, None);
    let call = &ep.call_groups[0][0];
    assert_eq!(
        call,
        &ResolvedCall {
            service: "other".into(),
            path: "/".into(),
            probability: 1.0,
            repeat: 1,
            timeout: DEFAULT_CALL_TIMEOUT,
        }
    );
    let o = svc(&all, "other");
    assert_eq!(o.resources.cpu_request_millis, None);
    assert_eq!(o.resources.cpu_limit_millis, None);
    assert!(o.endpoint("/").expect("endpoint").call_groups.is_empty());
}

fn groups(spec: &ServiceMeshSpec, service: &str, path: &str) -> Vec<Vec<String>> {
    let all = resolve_mesh(spec);
    svc(&all, service)
        .endpoint(path)
        .expect("endpoint")
        .call_groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|c| format!("{}{}", c.service, c.path))
                .collect()
        })
        .collect()
}

#[test]
fn call_groups() {
    let spec = mesh_spec(
        "  services:
    - name: front
      endpoints:
        - path: /sequence
          calls:
            - { service: a }
            - { service: b, path: /x }
            - { service: c }
        - path: /mixed
          calls:
            - { service: a }
            - { service: b, path: /x, group: g1 }
            - { service: c }
            - { service: b, path: /y, group: g2 }
            - { service: a, group: g1, probability: 0.5, repeat: 3 }
        - path: /fanout
          calls:
            - { service: a, group: one }
            - { service: b, path: /x, group: two }
            - { service: c, group: three }
    - name: a
      endpoints: [{ path: / }]
    - name: b
      endpoints: [{ path: /x }, { path: /y }]
    - name: c
      endpoints: [{ path: / }]
",
    );
    // Calls without groups: one group, in the order listed (a sequence).
    assert_eq!(groups(&spec, "front", "/sequence"), [["a/", "b/x", "c/"]]);
    // Ungrouped calls form one implicit group; named groups keep the order of their
    // first call; calls keep their order inside a group.
    assert_eq!(
        groups(&spec, "front", "/mixed"),
        vec![vec!["a/", "c/"], vec!["b/x", "a/"], vec!["b/y"],]
    );
    // One group per call is a pure parallel fan-out.
    assert_eq!(groups(&spec, "front", "/fanout"), [["a/"], ["b/x"], ["c/"]]);
    let all = resolve_mesh(&spec);
    let mixed = svc(&all, "front").endpoint("/mixed").expect("endpoint");
    let last = &mixed.call_groups[1][1];
    assert_eq!((last.probability, last.repeat), (0.5, 3));
}

// ---------------------------------------------------------------------------------------
// plan_steps

fn targets(steps: &[PlannedStep]) -> Vec<f64> {
    steps.iter().map(PlannedStep::target).collect()
}

#[test]
fn stages_become_steps_in_order() {
    let spec = bench_spec(
        "{model: open}",
        "{stages: [{rate: 10, duration: 5s}, {name: peak, rate: 25.5, duration: 1m}]}",
    );
    let steps = plan_steps(&spec);
    assert_eq!(
        steps,
        [
            PlannedStep {
                index: 0,
                name: "step-0".into(),
                rate: Some(10.0),
                users: None,
                duration: Duration::from_secs(5),
            },
            PlannedStep {
                index: 1,
                name: "peak".into(),
                rate: Some(25.5),
                users: None,
                duration: Duration::from_secs(60),
            },
        ]
    );

    let spec = bench_spec(
        "{model: closed}",
        "{stages: [{users: 4, duration: 2s}, {users: 8, duration: 3s}]}",
    );
    let steps = plan_steps(&spec);
    assert_eq!(
        steps.iter().map(|s| s.users).collect::<Vec<_>>(),
        [Some(4), Some(8)]
    );
    assert!(steps.iter().all(|s| s.rate.is_none()));
    assert_eq!(targets(&steps), [4.0, 8.0]);
}

#[test]
fn sweeps_include_their_end() {
    let spec = bench_spec(
        "{model: open}",
        "{sweep: {from: 10, to: 50, step: 10, stepDuration: 30s}}",
    );
    let steps = plan_steps(&spec);
    assert_eq!(targets(&steps), [10.0, 20.0, 30.0, 40.0, 50.0]);
    assert_eq!(steps[4].index, 4);
    assert_eq!(steps[0].name, "rate-10");
    assert!(steps.iter().all(|s| s.duration == Duration::from_secs(30)));

    // An end between two steps is not passed.
    let spec = bench_spec(
        "{model: open}",
        "{sweep: {from: 10, to: 45, step: 10, stepDuration: 1s}}",
    );
    assert_eq!(targets(&plan_steps(&spec)), [10.0, 20.0, 30.0, 40.0]);

    // from == to is one step.
    let spec = bench_spec(
        "{model: open}",
        "{sweep: {from: 7, to: 7, step: 1, stepDuration: 1s}}",
    );
    assert_eq!(targets(&plan_steps(&spec)), [7.0]);
}

#[test]
fn fractional_sweeps_do_not_lose_or_overshoot_steps() {
    let spec = bench_spec(
        "{model: open}",
        "{sweep: {from: 0.1, to: 0.3, step: 0.1, stepDuration: 1s}}",
    );
    let steps = plan_steps(&spec);
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert_eq!(targets(&steps), [0.1, 0.2, 0.3]);
    assert_eq!(
        steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["rate-0.1", "rate-0.2", "rate-0.3"]
    );

    let spec = bench_spec(
        "{model: open}",
        "{sweep: {from: 0.7, to: 1.3, step: 0.1, stepDuration: 1s}}",
    );
    let t = targets(&plan_steps(&spec));
    assert_eq!(t, [0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3]);
    assert!(t.iter().all(|v| *v <= 1.3));
}

#[test]
fn closed_loop_sweeps_count_users() {
    let spec = bench_spec(
        "{model: closed}",
        "{sweep: {from: 2, to: 8, step: 2, stepDuration: 10s}}",
    );
    let steps = plan_steps(&spec);
    assert_eq!(
        steps.iter().map(|s| s.users).collect::<Vec<_>>(),
        [Some(2), Some(4), Some(6), Some(8)]
    );
    assert!(steps.iter().all(|s| s.rate.is_none()));
    assert_eq!(steps[0].name, "users-2");
}

#[test]
fn empty_inverted_and_oversized_sweeps() {
    for profile in [
        "{sweep: {from: 50, to: 10, step: 10, stepDuration: 1s}}",
        "{sweep: {from: 10, to: 50, step: 0, stepDuration: 1s}}",
        "{sweep: {from: 10, to: 50, step: -5, stepDuration: 1s}}",
        "{stages: []}",
        "{}",
    ] {
        let spec = bench_spec("{model: open}", profile);
        assert!(plan_steps(&spec).is_empty(), "{profile}");
    }
    // Never more than the 200 steps validation allows, however small the step.
    for profile in [
        "{sweep: {from: 1, to: 1000, step: 1, stepDuration: 1s}}",
        "{sweep: {from: 1, to: 1000000, step: 1e-300, stepDuration: 1s}}",
    ] {
        let spec = bench_spec("{model: open}", profile);
        assert_eq!(plan_steps(&spec).len(), 200, "{profile}");
    }
}

#[test]
fn validation_and_planning_agree_on_the_step_limit() {
    // 0.1..=20.0 by 0.1 is exactly 200 steps: valid, and all of them are planned.
    let text = "apiVersion: meshbench.io/v1alpha1\nkind: ServiceMesh\nmetadata: {name: m}\nspec:\n  services: [{name: web, endpoints: [{path: /}]}]\n---\napiVersion: meshbench.io/v1alpha1\nkind: Benchmark\nmetadata: {name: b}\nspec:\n  meshes: [m]\n  target: {service: web}\n  load: {model: open}\n  profile: {sweep: {from: 0.1, to: 20.0, step: 0.1, stepDuration: 1s}}\n";
    let b = Bundle::from_str("b.yaml", text);
    assert!(b.is_valid(), "{:?}", b.diagnostics);
    let steps = plan_steps(&b.benchmarks[0].benchmark.spec);
    assert_eq!(steps.len(), 200);
    assert_eq!(steps[199].target(), 20.0);

    // One more step is refused by validation rather than silently dropped by planning.
    let b = Bundle::from_str("b.yaml", &text.replace("to: 20.0", "to: 20.1"));
    assert_eq!(b.diagnostics.len(), 1, "{:?}", b.diagnostics);
    assert_eq!(b.diagnostics[0].path, "spec.profile.sweep.step");
    assert!(b.diagnostics[0].message.contains("expected at most 200"));
}
