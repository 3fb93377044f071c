//! The test plays the kubelet for meshbench's own pods on the real control plane (no
//! node agent runs yet): each worker pod the real ReplicaSet controller creates becomes a
//! `meshbench worker` process with the config of its ConfigMap volume and is reported
//! Running and Ready; each pod the real Job controller creates for a load Job becomes a
//! `meshbench loadgen` process with the pod's command line and environment (its
//! `JOB_COMPLETION_INDEX` from the completion-index annotation the Job controller set, the
//! token from its Secret) and is reported Succeeded or Failed by exit code, so the Job
//! controller completes the Job. Pods being deleted are stopped and removed.
//!
//! In-cluster addresses are the only thing rewritten: the load plan's target Service DNS
//! name becomes the address of that Service's worker process.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_meshbench");
const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

pub struct Kubelet {
    client: Client,
    ns: String,
    scratch: tempfile::TempDir,
    /// Worker pods: process and address.
    workers: BTreeMap<String, (tokio::process::Child, String)>,
    /// Service object name (`<mesh>-<service>`) → a ready worker's address.
    services: BTreeMap<String, String>,
    /// Load pods still running.
    loads: BTreeMap<String, tokio::process::Child>,
    /// Load pods that finished (never started again).
    finished: BTreeSet<String>,
    /// Names of the Jobs whose pods ran.
    pub jobs_run: BTreeSet<String>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(addr: &str) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("worker at {addr} never listened");
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn config_map_of(pod: &Pod, volume: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume || volume.is_empty())
        .and_then(|v| v.config_map.as_ref())
        .map(|c| c.name.clone())
}

impl Kubelet {
    pub fn new(client: Client, ns: &str) -> Kubelet {
        Kubelet {
            client,
            ns: ns.to_owned(),
            scratch: tempfile::tempdir().expect("scratch"),
            workers: BTreeMap::new(),
            services: BTreeMap::new(),
            loads: BTreeMap::new(),
            finished: BTreeSet::new(),
            jobs_run: BTreeSet::new(),
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// One pass over the namespace's pods.
    pub async fn sync(&mut self) {
        let pods = self
            .pods()
            .list(&ListParams::default())
            .await
            .expect("list pods")
            .items;
        for pod in pods {
            let name = pod.name_any();
            if pod.metadata.deletion_timestamp.is_some() {
                self.stop(&name).await;
                continue;
            }
            if pod.labels().contains_key(JOB_NAME_LABEL) {
                self.load_pod(&pod).await;
            } else if pod
                .labels()
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                == Some("worker")
            {
                self.worker_pod(&pod).await;
            }
        }
        self.reap().await;
    }

    async fn stop(&mut self, name: &str) {
        if let Some((mut c, _)) = self.workers.remove(name) {
            let _ = c.kill().await;
            self.services
                .retain(|_, addr| self.workers.values().any(|(_, a)| a == addr));
        }
        if let Some(mut c) = self.loads.remove(name) {
            let _ = c.kill().await;
        }
        let _ = self
            .pods()
            .delete(name, &DeleteParams::default().grace_period(0))
            .await;
    }

    /// Reports a pod's status; a pod deleted meanwhile (its Job removed by the
    /// operator) has none to report, as for a real kubelet.
    async fn set_status(&self, name: &str, status: Value) {
        let written = self
            .pods()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await;
        match written {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("pod {name} status: {e}"),
        }
    }

    async fn worker_pod(&mut self, pod: &Pod) {
        let name = pod.name_any();
        if self.workers.contains_key(&name) {
            return;
        }
        let cm_name = config_map_of(pod, "config").expect("worker pod mounts its ConfigMap");
        let cm = Api::<ConfigMap>::namespaced(self.client.clone(), &self.ns)
            .get(&cm_name)
            .await
            .expect("worker ConfigMap");
        let config = cm
            .data
            .unwrap_or_default()
            .remove("worker.json")
            .expect("worker.json");
        let addr = format!("127.0.0.1:{}", free_port());
        let child = tokio::process::Command::new(BIN)
            .args(["worker", "--config-json", &config, "--listen", &addr])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start a worker");
        wait_listening(&addr).await;
        let service = pod
            .labels()
            .get("app.kubernetes.io/instance")
            .cloned()
            .unwrap_or_default();
        self.services.insert(service, addr.clone());
        self.workers.insert(name.clone(), (child, addr));
        let t = now();
        let container = pod.spec.as_ref().unwrap().containers[0].name.clone();
        self.set_status(
            &name,
            json!({
                "phase": "Running",
                "podIP": "127.0.0.1",
                "podIPs": [{ "ip": "127.0.0.1" }],
                "hostIP": "127.0.0.1",
                "startTime": t,
                "conditions": [
                    { "type": "PodScheduled", "status": "True", "lastTransitionTime": t },
                    { "type": "Initialized", "status": "True", "lastTransitionTime": t },
                    { "type": "ContainersReady", "status": "True", "lastTransitionTime": t },
                    { "type": "Ready", "status": "True", "lastTransitionTime": t },
                ],
                "containerStatuses": [{
                    "name": container, "ready": true, "restartCount": 0, "started": true,
                    "image": "meshbench", "imageID": "", "state": { "running": { "startedAt": t } },
                }],
            }),
        )
        .await;
    }

    /// Environment of the pod's first container, resolved as the kubelet would.
    async fn env_of(&self, pod: &Pod) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for e in pod.spec.as_ref().unwrap().containers[0]
            .env
            .iter()
            .flatten()
        {
            let value = if let Some(v) = &e.value {
                v.clone()
            } else if let Some(src) = &e.value_from {
                if let Some(f) = &src.field_ref {
                    let path = f.field_path.as_str();
                    let key =
                        |prefix: &str| path.strip_prefix(prefix).and_then(|p| p.strip_suffix("']"));
                    match (key("metadata.annotations['"), key("metadata.labels['")) {
                        (Some(k), _) => pod.annotations().get(k).cloned().unwrap_or_default(),
                        (_, Some(k)) => pod.labels().get(k).cloned().unwrap_or_default(),
                        _ if path == "metadata.name" => pod.name_any(),
                        _ if path == "metadata.namespace" => self.ns.clone(),
                        _ => panic!("unsupported fieldRef {path}"),
                    }
                } else if let Some(s) = &src.secret_key_ref {
                    let secret = Api::<Secret>::namespaced(self.client.clone(), &self.ns)
                        .get(&s.name)
                        .await
                        .expect("secret");
                    String::from_utf8(secret.data.unwrap()[&s.key].0.clone()).unwrap()
                } else {
                    panic!("unsupported env source {src:?}")
                }
            } else {
                String::new()
            };
            out.push((e.name.clone(), value));
        }
        out
    }

    async fn load_pod(&mut self, pod: &Pod) {
        let name = pod.name_any();
        if self.loads.contains_key(&name) || self.finished.contains(&name) {
            return;
        }
        let job = pod.labels()[JOB_NAME_LABEL].clone();
        assert!(
            pod.annotations().contains_key(INDEX_ANNOTATION),
            "the Job controller annotates Indexed Job pods with their index: {:?}",
            pod.annotations()
        );
        let cm_name = config_map_of(pod, "").expect("load pod mounts its plan");
        let cm = Api::<ConfigMap>::namespaced(self.client.clone(), &self.ns)
            .get(&cm_name)
            .await
            .expect("plan ConfigMap");
        let mut plan: Value =
            serde_json::from_str(&cm.data.unwrap()["plan.json"]).expect("plan JSON");
        let target = plan["target"].as_str().unwrap().to_string();
        let host = target
            .trim_start_matches("http://")
            .split([':', '.', '/'])
            .next()
            .unwrap();
        let addr = self
            .services
            .get(host)
            .unwrap_or_else(|| panic!("no worker for {host}"));
        plan["target"] = json!(format!("http://{addr}"));
        let plan_path: PathBuf = self.scratch.path().join(format!("{name}.plan.json"));
        std::fs::write(&plan_path, plan.to_string()).unwrap();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
        argv.extend(c.args.clone().unwrap_or_default());
        let args: Vec<String> = argv
            .into_iter()
            .skip_while(|a| a != "loadgen")
            .skip(1)
            .map(|a| match a.as_str() {
                "/etc/meshbench/plan.json" => plan_path.display().to_string(),
                a if a.starts_with("0.0.0.0:") => "127.0.0.1:0".to_string(),
                "/tmp/result.json" => self
                    .scratch
                    .path()
                    .join(format!("{name}.result.json"))
                    .display()
                    .to_string(),
                other => other.to_string(),
            })
            .collect();
        let env = self.env_of(pod).await;
        let index = env.iter().find(|(k, _)| k == "JOB_COMPLETION_INDEX");
        assert!(
            index.is_some_and(|(_, v)| v == &pod.annotations()[INDEX_ANNOTATION]),
            "the Job controller gives Indexed Job pods JOB_COMPLETION_INDEX: {env:?}"
        );
        let log = std::fs::File::create(self.scratch.path().join(format!("{name}.log"))).unwrap();
        let child = tokio::process::Command::new(BIN)
            .arg("loadgen")
            .args(&args)
            .envs(env)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start a loadgen instance");
        self.jobs_run.insert(job);
        self.loads.insert(name.clone(), child);
        let t = now();
        self.set_status(
            &name,
            json!({ "phase": "Running", "startTime": t, "podIP": "127.0.0.1" }),
        )
        .await;
    }

    /// Reports finished load pods.
    async fn reap(&mut self) {
        let mut done = Vec::new();
        for (name, child) in &mut self.loads {
            if let Ok(Some(status)) = child.try_wait() {
                done.push((name.clone(), status.code().unwrap_or(-1)));
            }
        }
        for (name, code) in done {
            self.loads.remove(&name);
            self.finished.insert(name.clone());
            let t = now();
            let phase = if code == 0 { "Succeeded" } else { "Failed" };
            if code != 0 {
                let log = std::fs::read_to_string(self.scratch.path().join(format!("{name}.log")));
                eprintln!("load pod {name} exited {code}: {}", log.unwrap_or_default());
            }
            let pod = match self.pods().get_opt(&name).await.expect("get pod") {
                Some(p) => p,
                None => continue,
            };
            let container = pod.spec.as_ref().unwrap().containers[0].name.clone();
            self.set_status(
                &name,
                json!({
                    "phase": phase,
                    "containerStatuses": [{
                        "name": container, "ready": false, "restartCount": 0,
                        "image": "meshbench", "imageID": "",
                        "state": { "terminated": {
                            "exitCode": code, "startedAt": t, "finishedAt": t,
                            "reason": if code == 0 { "Completed" } else { "Error" },
                        } },
                    }],
                }),
            )
            .await;
        }
    }
}
