//! Renders the worker's JSON config (owned by the worker crate) from a resolved
//! ServiceMesh service, and the settings of its readiness probe. Both platforms use them:
//! in a cluster downstream calls go to `http://<service>:<port>`, locally to the service's
//! loopback proxy; the cluster renders the probe into the Deployment, the local prober
//! runs it.

use std::time::Duration;

use meshbench_crds::mesh::DelayMode as SpecDelayMode;
use meshbench_crds::resolve::{ResolvedDelay, ResolvedService};
use meshbench_worker::config::{
    CONFIG_VERSION, CallConfig, DelayConfig, DelayDistribution, DelayMode, EndpointConfig, Method,
    TimeoutPolicy, WorkerConfig,
};

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn method(m: meshbench_crds::mesh::HttpMethod) -> Method {
    use meshbench_crds::mesh::HttpMethod as H;
    match m {
        H::Get => Method::Get,
        H::Post => Method::Post,
        H::Put => Method::Put,
        H::Patch => Method::Patch,
        H::Delete => Method::Delete,
    }
}

pub(crate) fn delay(d: &ResolvedDelay) -> Option<DelayConfig> {
    let spec = &d.delay;
    let distribution = if let Some(f) = &spec.fixed {
        DelayDistribution::Fixed {
            value_us: micros(f.get()),
        }
    } else if let Some(u) = &spec.uniform {
        DelayDistribution::Uniform {
            min_us: micros(u.min.get()),
            max_us: micros(u.max.get()),
        }
    } else if let Some(e) = &spec.exponential {
        DelayDistribution::Exponential {
            mean_us: micros(e.mean.get()),
        }
    } else if let Some(l) = &spec.log_normal {
        DelayDistribution::LogNormal {
            median_us: micros(l.median.get()),
            sigma: l.sigma,
        }
    } else {
        return None;
    };
    Some(DelayConfig {
        distribution,
        mode: match d.mode {
            SpecDelayMode::After => DelayMode::AfterWork,
            SpecDelayMode::MinimumTotal => DelayMode::MinimumTotal,
        },
    })
}

/// The worker config of one service of `mesh`. `base_url(service)` gives the address a
/// call to `service` goes to (`http://host:port`, no path).
pub fn worker_config(
    svc: &ResolvedService,
    mesh: &[ResolvedService],
    base_url: &dyn Fn(&str) -> String,
) -> WorkerConfig {
    // A call uses the method its target endpoint serves.
    let target_method = |service: &str, path: &str| {
        mesh.iter()
            .find(|s| s.name == service)
            .and_then(|s| s.endpoint(path))
            .map(|e| method(e.method))
            .unwrap_or_default()
    };
    WorkerConfig {
        version: CONFIG_VERSION,
        service: svc.name.clone(),
        pod: None,
        port: u16::try_from(svc.port).unwrap_or(8080),
        startup_delay_us: micros(svc.startup_delay),
        readiness_max_in_flight: svc.readiness_max_in_flight,
        idle_cpu_cores: svc.idle_cpu_millis as f64 / 1000.0,
        baseline_memory_bytes: svc.idle_memory_bytes,
        drain_grace_us: 30_000_000,
        max_request_body_bytes: 1 << 20,
        cpu_threads: None,
        endpoints: svc
            .endpoints
            .iter()
            .map(|ep| EndpointConfig {
                path: ep.path.clone(),
                method: method(ep.method),
                cpu_us: micros(ep.cpu),
                memory_bytes: ep.memory_bytes,
                delay: ep.delay.as_ref().and_then(delay),
                response_bytes: ep.response_bytes,
                error_rate: ep.error_rate,
                max_in_flight: ep.max_in_flight,
                on_downstream_timeout: if ep.ignore_call_timeouts {
                    TimeoutPolicy::Ignore
                } else {
                    TimeoutPolicy::Fail
                },
                seed: ep.delay.as_ref().and_then(|d| d.delay.seed),
                call_groups: ep
                    .call_groups
                    .iter()
                    .map(|g| {
                        g.iter()
                            .map(|c| CallConfig {
                                url: base_url(&c.service),
                                path: c.path.clone(),
                                method: target_method(&c.service, &c.path),
                                probability: c.probability,
                                repeat: c.repeat,
                                timeout_us: micros(c.timeout),
                                name: Some(format!("{}{}", c.service, c.path)),
                            })
                            .collect()
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub use meshbench_runtime::proxy::ReadinessProbe;

/// The readiness probe of `svc`'s workers. The period is the service's
/// `readiness.period` in whole seconds, at least 1 s: `periodSeconds` is an integer with
/// a minimum of 1, so a shorter period could not be rendered for a cluster.
pub fn readiness_probe(svc: &ResolvedService) -> ReadinessProbe {
    let gated = svc.readiness_max_in_flight.is_some();
    ReadinessProbe {
        path: "/ready",
        period: Duration::from_secs(svc.readiness_period.as_secs().max(1)),
        timeout: Duration::from_secs(1),
        success_threshold: 1,
        failure_threshold: if gated { 1 } else { 3 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshbench_crds::mesh::ServiceMeshSpec;
    use meshbench_crds::resolve::resolve_mesh;

    fn service(readiness_period: Duration) -> ResolvedService {
        let spec: ServiceMeshSpec =
            serde_yaml::from_str("services:\n  - name: web\n    endpoints: [{path: /}]\n")
                .expect("mesh spec");
        let mut svc = resolve_mesh(&spec).remove(0);
        svc.readiness_period = readiness_period;
        svc
    }

    #[test]
    fn readiness_period_is_whole_seconds_of_at_least_one() {
        for (period_ms, want_s) in [(200, 1), (1000, 1), (1500, 1), (2000, 2), (30_000, 30)] {
            let p = readiness_probe(&service(Duration::from_millis(period_ms)));
            assert_eq!(
                p.period,
                Duration::from_secs(want_s),
                "period {period_ms} ms"
            );
        }
    }

    #[test]
    fn without_gating_the_probe_has_the_kubernetes_failure_threshold() {
        let p = readiness_probe(&service(Duration::from_secs(1)));
        assert_eq!(
            p,
            ReadinessProbe {
                path: "/ready",
                period: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
    }

    #[test]
    fn a_gated_service_leaves_at_the_first_miss() {
        let mut svc = service(Duration::from_secs(2));
        svc.readiness_max_in_flight = Some(4);
        let p = readiness_probe(&svc);
        assert_eq!(p.failure_threshold, 1);
        assert_eq!(p.success_threshold, 1);
        assert_eq!(p.period, Duration::from_secs(2));
    }
}
