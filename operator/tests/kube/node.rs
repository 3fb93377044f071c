//! `meshbench node` on a real control plane of its own (`control-plane.sh up
//! --with-node`: kube-scheduler and the agent as `system:node:meshbench-node`, so the
//! Node authorizer and NodeRestriction judge every call it makes). Pods are created by
//! the real Deployment, ReplicaSet and Job controllers, bound by the real scheduler, and
//! run by the agent as processes; what is checked is what the API shows and what answers
//! on the pod IPs.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use crate::cluster::eventually;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_meshbench");
pub(crate) const NODE: &str = "meshbench-node";

pub(crate) fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

/// The node control plane's admin kubeconfig, started on first use and torn down when
/// this test binary exits.
pub(crate) fn kubeconfig() -> &'static Path {
    static KC: OnceLock<Result<std::path::PathBuf, String>> = OnceLock::new();
    let kc = KC.get_or_init(|| {
        meshbench_operator::k8s::install_tls_provider();
        let script = root().join("scripts/control-plane.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args([
                "up",
                "--with-node",
                "--owner-pid",
                &std::process::id().to_string(),
            ])
            .env("MESHBENCH_BIN", BIN)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.lines().last().map(str::trim) {
            Some(last) if out.status.success() && !last.is_empty() => Ok(last.into()),
            _ => Err(format!(
                "control-plane.sh up --with-node failed ({})",
                out.status
            )),
        }
    });
    match kc {
        Ok(k) => k,
        Err(e) => panic!("no control plane with a node: {e}"),
    }
}

pub(crate) async fn client() -> Client {
    let kc = Kubeconfig::read_from(kubeconfig()).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

pub(crate) fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("kubectl stdin");
    drop(input);
    let out = child.wait_with_output().expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) async fn namespace(name: &str) -> String {
    let ns = format!("{name}-{}", std::process::id() % 10_000);
    kubectl(&["create", "namespace", &ns], None);
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client().await, &ns);
    eventually(
        Duration::from_secs(30),
        "the default ServiceAccount",
        || {
            let sas = sas.clone();
            async move { sas.get_opt("default").await.ok().flatten() }
        },
    )
    .await;
    ns
}

/// Deletes a test's namespace when the test ends (its pods would otherwise hold the
/// node's CPU requests and leave the experiment tests' pods Pending).
pub(crate) struct Cleanup(pub(crate) String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .args(["delete", "namespace", &self.0, "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Waits (up to 4 min) until no pod of another namespace is Pending or Running on the
/// node, so an experiment has the node to itself.
pub(crate) async fn wait_for_room(own: &str) {
    let pods: Api<Pod> = Api::all(client().await);
    let lp = ListParams::default().fields(&format!("spec.nodeName={NODE}"));
    for _ in 0..240 {
        let busy = pods.list(&lp).await.map_or(1, |l| {
            l.items
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() != Some(own))
                .filter(|p| {
                    matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Pending" | "Running")
                    )
                })
                .count()
        });
        if busy == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The quickstart's mesh as `meshbench render` writes it (Deployments, ConfigMaps,
/// Services, the HPA), applied to `ns`.
fn apply_quickstart_mesh(ns: &str) {
    let out = Command::new(BIN)
        .args(["render", "experiments/quickstart.yaml", "-n", ns])
        .current_dir(root())
        .output()
        .expect("meshbench render");
    assert!(
        out.status.success(),
        "render: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).expect("utf-8");
    // The mesh only; the load Job needs the operator's results Secret.
    let mesh: Vec<&str> = yaml
        .split("\n---")
        .filter(|doc| !doc.contains("kind: Job"))
        .collect();
    kubectl(&["apply", "-f", "-"], Some(&mesh.join("\n---")));
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(p: &Pod) -> Option<Ipv4Addr> {
    p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

/// The ready pods of one rendered service.
async fn ready_pods(pods: &Api<Pod>, instance: &str, n: usize) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={instance}"));
    eventually(
        Duration::from_secs(60),
        &format!("{n} ready pod(s) of {instance}"),
        || {
            let (pods, lp) = (pods.clone(), lp.clone());
            async move {
                let ready: Vec<Pod> = pods
                    .list(&lp)
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .filter(is_ready)
                    .collect();
                (ready.len() == n).then_some(ready)
            }
        },
    )
    .await
}

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let url = format!("http://{addr}{path}");
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    Some(resp.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_registers_and_keeps_its_lease() {
    let client = client().await;
    let node = Api::<Node>::all(client.clone())
        .get(NODE)
        .await
        .expect("node");
    let status = node.status.expect("node status");
    let ready = status.conditions.unwrap_or_default();
    assert!(
        ready
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{ready:?}"
    );
    let cap = status.capacity.expect("capacity");
    assert!(cap.contains_key("cpu") && cap.contains_key("memory") && cap.contains_key("pods"));
    assert!(
        node.spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .is_empty()
    );
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let first = leases
        .get(NODE)
        .await
        .expect("lease")
        .spec
        .unwrap()
        .renew_time
        .unwrap();
    let renewed = eventually(Duration::from_secs(25), "a lease renewal", || {
        let leases = leases.clone();
        let first = first.clone();
        async move {
            let t = leases.get(NODE).await.ok()?.spec?.renew_time?;
            (t.0 > first.0).then_some(t)
        }
    })
    .await;
    assert!(renewed.0 > first.0);
}

/// The rendered mesh's workers run on pod IPs of their own, pass their readiness probes,
/// serve on those IPs, scale with the Deployment, and stop when deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_workers_run_ready_on_their_own_pod_ips() {
    let ns = namespace("node-mesh").await;
    let _cleanup = Cleanup(ns.clone());
    apply_quickstart_mesh(&ns);
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let backend = ready_pods(&pods, "quickstart-backend", 1).await;
    let frontend = ready_pods(&pods, "quickstart-frontend", 1).await;
    let b_ip = pod_ip(&backend[0]).expect("backend pod IP");
    let f_ip = pod_ip(&frontend[0]).expect("frontend pod IP");
    assert_ne!(b_ip, f_ip);
    for ip in [b_ip, f_ip] {
        assert_eq!(
            ip.octets()[..2],
            [198, 18],
            "pod IP {ip} from control-plane.sh's pod range"
        );
    }
    assert_eq!(
        backend[0].spec.as_ref().unwrap().node_name.as_deref(),
        Some(NODE)
    );
    // The backend is a leaf: its endpoint answers on the pod IP and the container port.
    assert_eq!(
        http_status(SocketAddr::from((b_ip, 8080)), "/work").await,
        Some(200)
    );
    // The liveness listener is on the same IP.
    assert_eq!(
        http_status(SocketAddr::from((b_ip, 8081)), "/live").await,
        Some(200)
    );
    // The backend's Service answers on its ClusterIP, and the frontend reaches the
    // backend by its Service name (`http://quickstart-backend:8080`), through the agent's
    // hosts file and its proxy on that ClusterIP.
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client().await, &ns);
    let cluster_ip: Ipv4Addr = services
        .get("quickstart-backend")
        .await
        .expect("service")
        .spec
        .and_then(|s| s.cluster_ip)
        .and_then(|ip| ip.parse().ok())
        .expect("cluster IP");
    assert_eq!(
        cluster_ip.octets()[..2],
        [198, 19],
        "ClusterIP {cluster_ip}"
    );
    let via_service = SocketAddr::from((cluster_ip, 8080));
    eventually(
        Duration::from_secs(30),
        "the backend through its ClusterIP",
        || async move { (http_status(via_service, "/work").await == Some(200)).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the frontend's call to the backend",
        || async move {
            (http_status(SocketAddr::from((f_ip, 8080)), "/").await == Some(200)).then_some(())
        },
    )
    .await;

    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client().await, &ns);
    // The HPA would scale it back; take it out first.
    kubectl(&["delete", "hpa", "-n", &ns, "--all"], None);
    deployments
        .patch(
            "quickstart-backend",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 2 } })),
        )
        .await
        .expect("scale");
    let two = ready_pods(&pods, "quickstart-backend", 2).await;
    let ips: BTreeSet<Ipv4Addr> = two.iter().filter_map(pod_ip).collect();
    assert_eq!(ips.len(), 2, "two replicas, two IPs: {ips:?}");
    for ip in &ips {
        assert_eq!(
            http_status(SocketAddr::from((*ip, 8080)), "/work").await,
            Some(200)
        );
    }

    deployments
        .delete("quickstart-frontend", &DeleteParams::foreground())
        .await
        .expect("delete");
    let name = frontend[0].metadata.name.clone().unwrap();
    eventually(Duration::from_secs(60), "the frontend pod gone", || {
        let (pods, name) = (pods.clone(), name.clone());
        async move { pods.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;
    let refused = tokio::net::TcpStream::connect(SocketAddr::from((f_ip, 8080))).await;
    assert!(
        refused.is_err(),
        "the stopped pod's process still listens on {f_ip}"
    );
}

fn job(name: &str, file: &str, completions: i32) -> Job {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "completionMode": "Indexed",
            "completions": completions,
            "parallelism": completions,
            "backoffLimit": 0,
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "check",
                    "image": "ghcr.io/meshbench/meshbench:0.1.0",
                    "command": ["meshbench", "validate", "--quiet"],
                    "args": [format!("/specs/$(JOB_COMPLETION_INDEX)-{file}")],
                    "volumeMounts": [{ "name": "specs", "mountPath": "/specs" }],
                }],
                "volumes": [{ "name": "specs", "configMap": { "name": "specs" } }],
            }},
        },
    }))
    .expect("job")
}

/// Job pods run their command once (restartPolicy Never) with the index the Job
/// controller gave them expanded in their arguments, read their ConfigMap volume, and
/// end Succeeded or Failed by exit code, so the Job controller completes or fails the Job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_pods_end_by_exit_code_and_complete_their_job() {
    let ns = namespace("node-jobs").await;
    let _cleanup = Cleanup(ns.clone());
    let client = client().await;
    let quickstart = std::fs::read_to_string(root().join("experiments/quickstart.yaml")).unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "specs" },
        "data": {
            "0-good.yaml": quickstart, "1-good.yaml": quickstart,
            "0-bad.yaml": "apiVersion: meshbench.io/v1alpha1\nkind: ServiceMesh\nspec: 3\n",
        },
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await
        .expect("configmap");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(&PostParams::default(), &job("good", "good.yaml", 2))
        .await
        .expect("job");
    jobs.create(&PostParams::default(), &job("bad", "bad.yaml", 1))
        .await
        .expect("job");
    let condition = |jobs: Api<Job>, name: &'static str| async move {
        let j = jobs.get(name).await.ok()?;
        let s = j.status?;
        s.conditions?
            .into_iter()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            .map(|c| (c.type_, s.succeeded.unwrap_or(0), s.failed.unwrap_or(0)))
    };
    let good = eventually(Duration::from_secs(60), "the good Job to finish", || {
        condition(jobs.clone(), "good")
    })
    .await;
    assert_eq!(good, ("Complete".to_string(), 2, 0));
    let bad = eventually(Duration::from_secs(60), "the bad Job to finish", || {
        condition(jobs.clone(), "bad")
    })
    .await;
    assert_eq!(bad.0, "Failed");
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let failed = pods
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name=bad"))
        .await
        .unwrap()
        .items;
    let st = failed[0].status.as_ref().unwrap();
    assert_eq!(st.phase.as_deref(), Some("Failed"));
    let term = st.container_statuses.as_ref().unwrap()[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("terminated state");
    assert_eq!(
        term.exit_code, 1,
        "validate's exit code for an invalid file"
    );
    assert_eq!(term.reason.as_deref(), Some("Error"));
}

/// A pod whose container is not a meshbench command fails at once with the reason, as a
/// kubelet rejects a pod it cannot admit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_pods_fail_with_the_reason() {
    let ns = namespace("node-foreign").await;
    let _cleanup = Cleanup(ns.clone());
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": { "containers": [{ "name": "web", "image": "nginx:1.27" }] },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("pod");
    let status = eventually(Duration::from_secs(30), "the pod to fail", || {
        let pods = pods.clone();
        async move {
            let s = pods.get("web").await.ok()?.status?;
            (s.phase.as_deref() == Some("Failed")).then_some(s)
        }
    })
    .await;
    assert_eq!(status.reason.as_deref(), Some("UnsupportedContainer"));
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("nginx:1.27") && message.contains("meshbench"),
        "{message}"
    );
}

/// A container whose liveness probe keeps failing is stopped and started again, and the
/// restart shows in its status (count and last termination).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_restarts_the_container() {
    let ns = namespace("node-liveness").await;
    let _cleanup = Cleanup(ns.clone());
    apply_quickstart_mesh(&ns);
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "unhealthy" },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "worker",
                "image": "ghcr.io/meshbench/meshbench:0.1.0",
                "command": ["meshbench", "worker"],
                "args": ["--config", "/etc/meshbench/worker.json"],
                // Nothing listens there.
                "livenessProbe": { "tcpSocket": { "port": 9 }, "periodSeconds": 1, "failureThreshold": 2 },
                "volumeMounts": [{ "name": "config", "mountPath": "/etc/meshbench" }],
            }],
            "volumes": [{ "name": "config", "configMap": { "name": "quickstart-backend" } }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("pod");
    let cs = eventually(Duration::from_secs(60), "a restart", || {
        let pods = pods.clone();
        async move {
            let s = pods.get("unhealthy").await.ok()?.status?;
            let c = s.container_statuses?.into_iter().next()?;
            (c.restart_count >= 1 && c.last_state.as_ref()?.terminated.is_some()).then_some(c)
        }
    })
    .await;
    let last = cs.last_state.unwrap().terminated.unwrap();
    assert!(last.finished_at.is_some(), "{last:?}");
}

/// The node's `/metrics/resource` feeds the real metrics-server, whose `metrics.k8s.io`
/// the real HPA controller reads: the rendered backend's HPA reports a current CPU
/// utilization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_metrics_reach_the_hpa_through_metrics_server() {
    let ns = namespace("node-metrics").await;
    let _cleanup = Cleanup(ns.clone());
    apply_quickstart_mesh(&ns);
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let backend = ready_pods(&pods, "quickstart-backend", 1).await;
    let name = backend[0].metadata.name.clone().unwrap();
    let client = client().await;
    let url = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}");
    let usage = eventually(
        Duration::from_secs(90),
        "pod metrics from metrics-server",
        || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let req = http::Request::get(&url).body(Vec::new()).ok()?;
                let v: serde_json::Value = client.request(req).await.ok()?;
                let c = v["containers"].as_array()?.first()?.clone();
                Some(c["usage"].clone())
            }
        },
    )
    .await;
    assert!(
        usage["memory"].as_str().is_some_and(|m| m != "0"),
        "{usage}"
    );
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        Api::namespaced(client, &ns);
    let current = eventually(
        Duration::from_secs(120),
        "the HPA's current CPU utilization",
        || {
            let hpas = hpas.clone();
            async move {
                let s = hpas.get("quickstart-backend").await.ok()?.status?;
                let m = s.current_metrics?.into_iter().next()?;
                m.resource?.current.average_utilization
            }
        },
    )
    .await;
    assert!(current >= 0, "{current}");
}
