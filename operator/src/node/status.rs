//! A pod's status as the kubelet reports it, from the supervisor's view of its
//! containers: phase, conditions (with transition times kept across reports), container
//! states with the last termination, restart counts, addresses.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use meshbench_runtime::pods::{ExitRecord, PodPhase, ReplicaStatus};

/// One container as the status reports it.
#[derive(Debug, Clone)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// Image from the spec.
    pub image: String,
    /// The supervisor's status.
    pub status: ReplicaStatus,
    /// The prober's verdict.
    pub ready: bool,
}

/// The pod's conditions and when each last changed.
#[derive(Debug, Clone, Default)]
pub struct Conditions(BTreeMap<&'static str, (bool, String)>);

impl Conditions {
    fn set(&mut self, kind: &'static str, status: bool) -> Value {
        let entry = self
            .0
            .entry(kind)
            .or_insert_with(|| (status, time(Utc::now())));
        if entry.0 != status {
            *entry = (status, time(Utc::now()));
        }
        let mut c = json!({
            "type": kind,
            "status": if status { "True" } else { "False" },
            "lastTransitionTime": entry.1,
            "lastProbeTime": null,
        });
        if (kind == "Ready" || kind == "ContainersReady") && !status {
            c["reason"] = json!("ContainersNotReady");
        }
        c
    }
}

/// RFC 3339 at second precision, as the API's `Time`.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn terminated(e: &ExitRecord) -> Value {
    let reason = if e.oom_killed {
        "OOMKilled"
    } else if e.code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let mut t = json!({
        "exitCode": e.code,
        "reason": reason,
        "finishedAt": time(e.finished_at),
    });
    if let Some(s) = e.started_at {
        t["startedAt"] = json!(time(s));
    }
    if let Some(sig) = e.signal {
        t["signal"] = json!(sig);
    }
    json!({ "terminated": t })
}

/// The container's `state` and `lastState`.
fn states(s: &ReplicaStatus) -> (Value, Value) {
    let last = |e: &Option<ExitRecord>| e.as_ref().map_or(json!({}), terminated);
    match s.phase {
        PodPhase::Running | PodPhase::Terminating => (
            json!({ "running": { "startedAt": s.started_at.map(time) } }),
            last(&s.last_exit),
        ),
        PodPhase::BackOff if s.last_exit.is_some() => (
            json!({ "waiting": {
                "reason": "CrashLoopBackOff",
                "message": format!("back-off restarting failed container (restart {})", s.restarts + 1),
            } }),
            last(&s.last_exit),
        ),
        PodPhase::BackOff => (
            json!({ "waiting": { "reason": "ContainerCreating" } }),
            json!({}),
        ),
        PodPhase::Stopped => match &s.last_exit {
            Some(e) => (terminated(e), json!({})),
            None => (
                json!({ "terminated": { "exitCode": 137, "reason": "Error",
                                         "finishedAt": time(Utc::now()) } }),
                json!({}),
            ),
        },
    }
}

/// The pod phase from its containers: Succeeded or Failed once every container ended
/// for good, Running once one has started, Pending before.
pub fn phase(containers: &[ContainerView]) -> &'static str {
    let ended = !containers.is_empty()
        && containers
            .iter()
            .all(|c| c.status.phase == PodPhase::Stopped);
    if ended {
        let all_ok = containers
            .iter()
            .all(|c| c.status.last_exit.as_ref().is_some_and(|e| e.code == 0));
        return if all_ok { "Succeeded" } else { "Failed" };
    }
    let started = containers
        .iter()
        .any(|c| c.status.started_at.is_some() || c.status.last_exit.is_some());
    if started { "Running" } else { "Pending" }
}

/// The pod's whole `status`.
pub fn pod_status(
    ip: Ipv4Addr,
    host_ip: Ipv4Addr,
    start_time: &str,
    containers: &[ContainerView],
    conditions: &mut Conditions,
) -> Value {
    let phase = phase(containers);
    let running = |c: &ContainerView| matches!(c.status.phase, PodPhase::Running);
    let all_ready = !containers.is_empty() && containers.iter().all(|c| running(c) && c.ready);
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let (state, last) = states(&c.status);
            json!({
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "containerID": format!("meshbench://{}", c.status.pod),
                "state": state,
                "lastState": last,
                "ready": running(c) && c.ready,
                "started": running(c),
                "restartCount": c.status.restarts,
            })
        })
        .collect();
    let conds = vec![
        // No sandbox to wait for: the pod's IP and directories exist before it is reported.
        conditions.set("PodReadyToStartContainers", true),
        conditions.set("Initialized", true),
        conditions.set("Ready", all_ready),
        conditions.set("ContainersReady", all_ready),
        conditions.set("PodScheduled", true),
    ];
    json!({
        "phase": phase,
        "conditions": conds,
        "hostIP": host_ip.to_string(),
        "hostIPs": [{ "ip": host_ip.to_string() }],
        "podIP": ip.to_string(),
        "podIPs": [{ "ip": ip.to_string() }],
        "startTime": start_time,
        "containerStatuses": statuses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn view(phase: PodPhase, code: Option<i32>, started: bool) -> ContainerView {
        ContainerView {
            name: "c".into(),
            image: "meshbench".into(),
            status: ReplicaStatus {
                pod: "p".into(),
                phase,
                pid: None,
                addr: SocketAddr::from(([127, 1, 0, 2], 1)),
                restarts: 0,
                started_at: started.then(Utc::now),
                last_exit: code.map(|code| ExitRecord {
                    code,
                    signal: None,
                    oom_killed: false,
                    started_at: None,
                    finished_at: Utc::now(),
                }),
            },
            ready: true,
        }
    }

    #[test]
    fn phase_follows_the_containers() {
        assert_eq!(phase(&[view(PodPhase::BackOff, None, false)]), "Pending");
        assert_eq!(phase(&[view(PodPhase::Running, None, true)]), "Running");
        assert_eq!(phase(&[view(PodPhase::BackOff, Some(1), true)]), "Running");
        assert_eq!(
            phase(&[view(PodPhase::Stopped, Some(0), true)]),
            "Succeeded"
        );
        assert_eq!(
            phase(&[
                view(PodPhase::Stopped, Some(0), true),
                view(PodPhase::Stopped, Some(2), true)
            ]),
            "Failed"
        );
        assert_eq!(
            phase(&[
                view(PodPhase::Stopped, Some(0), true),
                view(PodPhase::Running, None, true)
            ]),
            "Running"
        );
    }

    #[test]
    fn ready_needs_every_container_running_and_ready() {
        let mut conds = Conditions::default();
        let mut c = view(PodPhase::Running, None, true);
        let s = pod_status(
            [127, 1, 0, 2].into(),
            [127, 0, 0, 1].into(),
            "t",
            &[c.clone()],
            &mut conds,
        );
        assert_eq!(s["conditions"][2]["status"], "True");
        c.ready = false;
        let s = pod_status(
            [127, 1, 0, 2].into(),
            [127, 0, 0, 1].into(),
            "t",
            &[c],
            &mut conds,
        );
        assert_eq!(s["conditions"][2]["type"], "Ready");
        assert_eq!(s["conditions"][2]["status"], "False");
        assert_eq!(s["containerStatuses"][0]["ready"], false);
    }
}
