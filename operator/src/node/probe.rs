//! The kubelet's prober for one container: startup, then readiness and liveness, each
//! on its own period with its thresholds. Readiness is reset when the container starts
//! again; a liveness (or startup) failure run sends SIGTERM to the container's process
//! group, and SIGKILL after the pod's grace period, so the supervisor restarts it as the
//! restart policy says.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use meshbench_runtime::pods::{PodPhase, ReplicaStatus};

/// A probe with the API's defaults filled in.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    action: Action,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

#[derive(Debug, Clone)]
enum Action {
    Http { port: u16, path: String },
    Tcp { port: u16 },
}

fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(v.unwrap_or(default).max(0)).unwrap_or(0))
}

fn count(v: Option<i32>, default: i32) -> u32 {
    u32::try_from(v.unwrap_or(default).max(1)).unwrap_or(1)
}

impl ProbeSpec {
    /// From the pod spec; `ports` resolves named ports. `None` for an action this
    /// prober cannot run (refused at admission) or a port that names nothing.
    pub fn from_probe(p: &Probe, ports: &std::collections::BTreeMap<String, i32>) -> Option<Self> {
        let port = |p: &IntOrString| -> Option<u16> {
            let n = match p {
                IntOrString::Int(n) => *n,
                IntOrString::String(name) => *ports.get(name)?,
            };
            u16::try_from(n).ok().filter(|n| *n > 0)
        };
        let action = if let Some(h) = &p.http_get {
            Action::Http {
                port: port(&h.port)?,
                path: h.path.clone().unwrap_or_else(|| "/".into()),
            }
        } else {
            Action::Tcp {
                port: port(&p.tcp_socket.as_ref()?.port)?,
            }
        };
        Some(Self {
            action,
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: count(p.success_threshold, 1),
            failure_threshold: count(p.failure_threshold, 3),
        })
    }

    async fn run_once(&self, ip: Ipv4Addr) -> bool {
        match &self.action {
            Action::Http { port, path } => {
                meshbench_runtime::proxy::probe(SocketAddr::from((ip, *port)), path, self.timeout)
                    .await
            }
            Action::Tcp { port } => matches!(
                tokio::time::timeout(
                    self.timeout,
                    tokio::net::TcpStream::connect(SocketAddr::from((ip, *port)))
                )
                .await,
                Ok(Ok(_))
            ),
        }
    }
}

/// The probes of one container.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    /// Readiness (ready as soon as running without one).
    pub readiness: Option<ProbeSpec>,
    /// Liveness.
    pub liveness: Option<ProbeSpec>,
    /// Startup (gates the other two).
    pub startup: Option<ProbeSpec>,
}

/// Runs the probes of a container until the status channel closes; keeps `ready` true
/// while the container counts as ready.
pub async fn run(
    probes: Probes,
    ip: Ipv4Addr,
    mut status: watch::Receiver<ReplicaStatus>,
    ready: Arc<AtomicBool>,
    grace: Duration,
) {
    loop {
        // One start of the container: wait until it runs.
        let Some(run) = wait_running(&mut status).await else {
            return;
        };
        // Neither ready before a startup probe passes nor, with a readiness probe, before
        // that passes.
        ready.store(
            probes.readiness.is_none() && probes.startup.is_none(),
            Ordering::Relaxed,
        );
        tokio::select! {
            () = probe_run(&probes, ip, run, &ready, grace) => {}
            () = wait_restart(&mut status, run) => {}
        }
        ready.store(false, Ordering::Relaxed);
    }
}

/// Pid and start time of the container once it runs; `None` when it is gone for good.
async fn wait_running(status: &mut watch::Receiver<ReplicaStatus>) -> Option<(u32, i64)> {
    loop {
        {
            let s = status.borrow_and_update();
            if s.phase == PodPhase::Running
                && let (Some(pid), Some(at)) = (s.pid, s.started_at)
            {
                return Some((pid, at.timestamp_micros()));
            }
            if s.phase == PodPhase::Stopped {
                return None;
            }
        }
        status.changed().await.ok()?;
    }
}

/// Returns when the run `(pid, start)` has ended.
async fn wait_restart(status: &mut watch::Receiver<ReplicaStatus>, run: (u32, i64)) {
    loop {
        {
            let s = status.borrow_and_update();
            let same = s.phase == PodPhase::Running
                && s.pid == Some(run.0)
                && s.started_at.map(|t| t.timestamp_micros()) == Some(run.1);
            if !same {
                return;
            }
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

async fn probe_run(
    probes: &Probes,
    ip: Ipv4Addr,
    run: (u32, i64),
    ready: &AtomicBool,
    grace: Duration,
) {
    if let Some(startup) = &probes.startup
        && !until_verdict(startup, ip, true).await
    {
        kill(run.0, grace).await;
        return;
    }
    if probes.startup.is_some() && probes.readiness.is_none() {
        ready.store(true, Ordering::Relaxed);
    }
    let readiness = async {
        if let Some(p) = &probes.readiness {
            tokio::time::sleep(p.initial_delay).await;
            let mut streak = (0u32, 0u32);
            loop {
                let ok = p.run_once(ip).await;
                streak = if ok {
                    (streak.0.saturating_add(1), 0)
                } else {
                    (0, streak.1.saturating_add(1))
                };
                if streak.0 >= p.success_threshold {
                    ready.store(true, Ordering::Relaxed);
                } else if streak.1 >= p.failure_threshold {
                    ready.store(false, Ordering::Relaxed);
                }
                tokio::time::sleep(p.period).await;
            }
        } else {
            std::future::pending::<()>().await;
        }
    };
    let liveness = async {
        match &probes.liveness {
            Some(p) => {
                until_verdict(p, ip, false).await;
                kill(run.0, grace).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = readiness => {}
        () = liveness => {}
    }
}

/// Probes until `failure_threshold` misses in a row (returns false) or, when
/// `stop_on_success`, `success_threshold` passes (returns true). Never returns true
/// otherwise.
async fn until_verdict(p: &ProbeSpec, ip: Ipv4Addr, stop_on_success: bool) -> bool {
    tokio::time::sleep(p.initial_delay).await;
    let (mut ok_run, mut bad_run) = (0u32, 0u32);
    loop {
        if p.run_once(ip).await {
            ok_run = ok_run.saturating_add(1);
            bad_run = 0;
            if stop_on_success && ok_run >= p.success_threshold {
                return true;
            }
        } else {
            bad_run = bad_run.saturating_add(1);
            ok_run = 0;
            if bad_run >= p.failure_threshold {
                return false;
            }
        }
        tokio::time::sleep(p.period).await;
    }
}

/// SIGTERM to the container's process group, SIGKILL after `grace` if it still runs.
async fn kill(pid: u32, grace: Duration) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    tracing::info!(pid, "probe failed; stopping the container");
    let _ = killpg(Pid::from_raw(raw), Signal::SIGTERM);
    tokio::time::sleep(grace).await;
    let _ = killpg(Pid::from_raw(raw), Signal::SIGKILL);
}
