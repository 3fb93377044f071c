//! From a Pod bound to this node to the processes that run it: which program, with which
//! arguments, environment, files and limits. Only meshbench's own commands run; anything
//! else is refused with a reason the pod's status carries.
//!
//! No mount namespaces (unsafe code is forbidden, so no `pre_exec`): a volume is a
//! directory of the pod's on this machine, and a path under a container's `mountPath` in
//! its command, arguments, environment or working directory is rewritten to that
//! directory. Our manifests pass every file by path, so this covers them; a program that
//! opens a fixed path of its own would not see the volume.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Probe};
use kube::ResourceExt;

use meshbench_runtime::pods::RestartPolicy;

/// Why a pod cannot run here (the pod is reported `Failed` with this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// `status.reason`: one CamelCase word.
    pub reason: &'static str,
    /// `status.message`.
    pub message: String,
}

impl Refusal {
    pub(crate) fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// The executables a container may name as its command, and the `meshbench` subcommand
/// each stands for (the standalone binaries are the same `main`s).
const PROGRAMS: [(&str, Option<&str>); 3] = [
    ("meshbench", None),
    ("meshbench-worker", Some("worker")),
    ("meshbench-loadgen", Some("loadgen")),
];

/// One container as a process.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// Container name.
    pub name: String,
    /// Its image (reported back; never pulled).
    pub image: String,
    /// Arguments after the `meshbench` binary.
    pub args: Vec<String>,
    /// Resolved environment.
    pub env: Vec<(String, String)>,
    /// Working directory (rewritten like any path).
    pub cwd: Option<PathBuf>,
    /// CPU limit, memory limit, CPU request.
    pub cpu_limit_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// CPU request in millicores.
    pub cpu_request_millis: Option<u64>,
    /// Probes, as in the spec.
    pub readiness: Option<Probe>,
    /// Liveness probe.
    pub liveness: Option<Probe>,
    /// Startup probe.
    pub startup: Option<Probe>,
    /// Named ports, for probes that name theirs.
    pub ports: BTreeMap<String, i32>,
}

/// What a pod's volume is made of, resolved from the API by the caller.
#[derive(Debug, Clone, Default)]
pub struct VolumeFiles {
    /// Relative path → content.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// The whole pod as processes.
#[derive(Debug, Clone)]
pub struct PodPlan {
    /// Containers, in spec order.
    pub containers: Vec<ContainerPlan>,
    /// Restart policy of every container.
    pub restart: RestartPolicy,
    /// Seconds between SIGTERM and SIGKILL.
    pub grace_seconds: u64,
}

/// The pod's restart policy (the API defaults it to `Always`).
pub fn restart_policy(pod: &Pod) -> RestartPolicy {
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => RestartPolicy::Never,
        Some("OnFailure") => RestartPolicy::OnFailure,
        _ => RestartPolicy::Always,
    }
}

/// Checks what this agent cannot run before anything is fetched or started.
pub fn check_supported(pod: &Pod) -> Result<(), Refusal> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| Refusal::new("InvalidPod", "the pod has no spec"))?;
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(Refusal::new(
            "UnsupportedPod",
            "init containers are not supported by the meshbench node agent",
        ));
    }
    if spec
        .ephemeral_containers
        .as_ref()
        .is_some_and(|c| !c.is_empty())
    {
        return Err(Refusal::new(
            "UnsupportedPod",
            "ephemeral containers are not supported by the meshbench node agent",
        ));
    }
    for c in &spec.containers {
        program_args(c)?;
        for (kind, probe) in [
            ("readinessProbe", &c.readiness_probe),
            ("livenessProbe", &c.liveness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            if let Some(p) = probe
                && p.http_get.is_none()
                && p.tcp_socket.is_none()
            {
                return Err(Refusal::new(
                    "UnsupportedProbe",
                    format!(
                        "container {:?}: {kind} must be httpGet or tcpSocket (exec and grpc probes are not supported by the meshbench node agent)",
                        c.name
                    ),
                ));
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        let supported = v.config_map.is_some()
            || v.secret.is_some()
            || v.empty_dir.is_some()
            || v.projected.is_some()
            || v.downward_api.is_some();
        if !supported {
            return Err(Refusal::new(
                "UnsupportedVolume",
                format!(
                    "volume {:?}: only configMap, secret, emptyDir, projected and downwardAPI volumes are supported by the meshbench node agent",
                    v.name
                ),
            ));
        }
    }
    Ok(())
}

/// The arguments after the meshbench binary, or why the container is not meshbench's.
fn program_args(c: &Container) -> Result<Vec<String>, Refusal> {
    let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
    let image_entrypoint = argv.is_empty();
    argv.extend(c.args.clone().unwrap_or_default());
    let refuse = || {
        Refusal::new(
            "UnsupportedContainer",
            format!(
                "container {:?} (image {:?}, command {:?}): the meshbench node agent runs only meshbench's own commands (`meshbench <subcommand>`, `meshbench-worker` or `meshbench-loadgen`)",
                c.name,
                c.image.as_deref().unwrap_or(""),
                argv
            ),
        )
    };
    if image_entrypoint {
        // Without a command the image's entrypoint runs; ours is `meshbench`.
        let ours = c
            .image
            .as_deref()
            .is_some_and(|i| image_name(i).starts_with("meshbench"));
        return if ours {
            allowed_subcommand(c, argv)
        } else {
            Err(refuse())
        };
    }
    let first = Path::new(&argv[0])
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let Some((_, sub)) = PROGRAMS.iter().find(|(p, _)| *p == first) else {
        return Err(refuse());
    };
    let mut args: Vec<String> = sub.iter().map(|s| s.to_string()).collect();
    args.extend(argv.into_iter().skip(1));
    allowed_subcommand(c, args)
}

/// The subcommands a pod may run: what our manifests run, and `validate` (reads files
/// only). Pods run as the agent's user; `node`, `operator` or `run` would hand a pod
/// creator that user's powers on this machine.
const SUBCOMMANDS: [&str; 3] = ["worker", "loadgen", "validate"];

fn allowed_subcommand(c: &Container, args: Vec<String>) -> Result<Vec<String>, Refusal> {
    match args.first() {
        Some(sub) if SUBCOMMANDS.contains(&sub.as_str()) => Ok(args),
        other => Err(Refusal::new(
            "UnsupportedContainer",
            format!(
                "container {:?}: subcommand {:?} is not run by the meshbench node agent (only {})",
                c.name,
                other.map(String::as_str).unwrap_or(""),
                SUBCOMMANDS.join(", ")
            ),
        )),
    }
}

/// `registry/path/name:tag@digest` → `name`.
fn image_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

/// Values the Downward API and env resolution read from the pod and this node.
#[derive(Debug, Clone)]
pub struct PodFacts<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Its IP.
    pub ip: Ipv4Addr,
    /// The node's IP.
    pub host_ip: Ipv4Addr,
}

impl PodFacts<'_> {
    /// A `fieldRef.fieldPath` of the Downward API.
    pub fn field(&self, path: &str) -> Result<String, Refusal> {
        let key = |prefix: &str| path.strip_prefix(prefix).and_then(|p| p.strip_suffix("']"));
        let pod = self.pod;
        let spec = pod.spec.as_ref();
        let value = match path {
            "metadata.name" => pod.name_any(),
            "metadata.namespace" => pod.namespace().unwrap_or_default(),
            "metadata.uid" => pod.uid().unwrap_or_default(),
            "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            "spec.serviceAccountName" => spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            "status.podIP" | "status.podIPs" => self.ip.to_string(),
            "status.hostIP" | "status.hostIPs" => self.host_ip.to_string(),
            _ => {
                if let Some(k) = key("metadata.labels['") {
                    pod.labels().get(k).cloned().unwrap_or_default()
                } else if let Some(k) = key("metadata.annotations['") {
                    pod.annotations().get(k).cloned().unwrap_or_default()
                } else {
                    return Err(Refusal::new(
                        "UnsupportedField",
                        format!("fieldRef {path:?} is not supported by the meshbench node agent"),
                    ));
                }
            }
        };
        Ok(value)
    }
}

/// Expands `$(NAME)` references from `vars` as the kubelet does: an unknown name is left
/// as written, and `$$` escapes a `$`.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
            && let Some(v) = vars.get(&body[..end])
        {
            out.push_str(v);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A container's mount points and the directories standing in for them, longest first
/// (so `/etc/a/b` wins over `/etc/a`).
#[derive(Debug, Clone, Default)]
pub struct Mounts(Vec<(String, PathBuf)>);

impl Mounts {
    /// The mounts of `c`, with `volume_dir(name)` as each volume's directory.
    pub fn of(c: &Container, volume_dir: impl Fn(&str) -> PathBuf) -> Self {
        let mut m: Vec<(String, PathBuf)> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|vm| {
                let mut dir = volume_dir(&vm.name);
                if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                    dir = dir.join(sub);
                }
                (vm.mount_path.trim_end_matches('/').to_owned(), dir)
            })
            .filter(|(path, _)| path.starts_with('/'))
            .collect();
        m.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        Self(m)
    }

    /// `s` with a leading mount path (or one right after `=`, as in `--flag=/path`)
    /// replaced by its directory.
    pub fn rewrite(&self, s: &str) -> String {
        if let Some(r) = self.rewrite_path(s) {
            return r;
        }
        if let Some((flag, value)) = s.split_once('=')
            && let Some(r) = self.rewrite_path(value)
        {
            return format!("{flag}={r}");
        }
        s.to_owned()
    }

    fn rewrite_path(&self, s: &str) -> Option<String> {
        self.0.iter().find_map(|(path, dir)| {
            let rest = s.strip_prefix(path.as_str())?;
            if rest.is_empty() {
                Some(dir.display().to_string())
            } else if rest.starts_with('/') {
                Some(format!("{}{rest}", dir.display()))
            } else {
                None
            }
        })
    }
}

/// The container's plan from its spec, with env already resolved into `env` (name,
/// value, in spec order, `$(VAR)` references not yet expanded).
pub fn container_plan(
    c: &Container,
    env: Vec<(String, String)>,
    mounts: &Mounts,
) -> Result<ContainerPlan, Refusal> {
    // Expansion sees the values as written; each final string is rewritten once (a
    // rewritten path can itself start with a mount path, e.g. a data dir under /tmp).
    let mut vars = BTreeMap::new();
    let mut resolved = Vec::with_capacity(env.len());
    for (name, value) in env {
        let v = expand(&value, &vars);
        vars.insert(name.clone(), v.clone());
        resolved.push((name, mounts.rewrite(&v)));
    }
    let args = program_args(c)?
        .iter()
        .map(|a| mounts.rewrite(&expand(a, &vars)))
        .collect();
    let resources = c.resources.as_ref();
    let quantity = |map: Option<
        &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
                    key: &str,
                    memory: bool|
     -> Result<Option<u64>, Refusal> {
        let Some(q) = map.and_then(|m| m.get(key)) else {
            return Ok(None);
        };
        let parsed = if memory {
            meshbench_crds::units::memory_bytes(q)
        } else {
            meshbench_crds::units::cpu_millis(q)
        };
        parsed.map(Some).map_err(|e| {
            Refusal::new(
                "InvalidResources",
                format!("container {:?}: resources {key}: {e}", c.name),
            )
        })
    };
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    Ok(ContainerPlan {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        args,
        env: resolved,
        cwd: c
            .working_dir
            .as_deref()
            .map(|d| PathBuf::from(mounts.rewrite(d))),
        cpu_limit_millis: quantity(limits, "cpu", false)?,
        memory_limit_bytes: quantity(limits, "memory", true)?,
        cpu_request_millis: quantity(requests, "cpu", false)?,
        readiness: c.readiness_probe.clone(),
        liveness: c.liveness_probe.clone(),
        startup: c.startup_probe.clone(),
        ports: c
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, p.container_port)))
            .collect(),
    })
}

/// An env entry: resolved, or one that reads the API (for the caller to fetch).
pub type EnvEntry<'a> = Result<(String, String), &'a EnvVar>;

/// Env entries that need no API read: literal values and Downward API fields. Entries
/// that read a Secret or ConfigMap are returned as `Err(entry)` for the caller to fetch.
pub fn local_env<'a>(
    facts: &PodFacts<'_>,
    env: &'a [EnvVar],
) -> Result<Vec<EnvEntry<'a>>, Refusal> {
    env.iter()
        .map(|e| {
            if let Some(v) = &e.value {
                return Ok(Ok((e.name.clone(), v.clone())));
            }
            let Some(src) = &e.value_from else {
                return Ok(Ok((e.name.clone(), String::new())));
            };
            if let Some(f) = &src.field_ref {
                return Ok(Ok((e.name.clone(), facts.field(&f.field_path)?)));
            }
            if src.secret_key_ref.is_some() || src.config_map_key_ref.is_some() {
                return Ok(Err(e));
            }
            Err(Refusal::new(
                "UnsupportedEnv",
                format!(
                    "env {:?}: only value, fieldRef, secretKeyRef and configMapKeyRef are supported by the meshbench node agent",
                    e.name
                ),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(command: &[&str], image: &str) -> Container {
        Container {
            name: "c".into(),
            image: Some(image.into()),
            command: (!command.is_empty()).then(|| command.iter().map(|s| s.to_string()).collect()),
            ..Container::default()
        }
    }

    #[test]
    fn only_meshbench_commands_run() {
        let args = program_args(&container(
            &["meshbench", "worker", "--config", "x"],
            "nginx",
        ));
        assert_eq!(args.unwrap(), ["worker", "--config", "x"]);
        let args = program_args(&container(&["/usr/local/bin/meshbench-worker"], "any"));
        assert_eq!(args.unwrap(), ["worker"]);
        let mut entrypoint = container(&[], "ghcr.io/x/meshbench:0.1");
        entrypoint.args = Some(vec!["loadgen".into()]);
        assert_eq!(program_args(&entrypoint).unwrap(), ["loadgen"]);
        assert!(program_args(&container(&[], "ghcr.io/x/meshbench:0.1")).is_err());
        for sub in ["node", "operator", "run"] {
            let refused = program_args(&container(&["meshbench", sub], "meshbench")).unwrap_err();
            assert!(refused.message.contains(sub), "{}", refused.message);
        }
        let refused = program_args(&container(&[], "nginx:1.27")).unwrap_err();
        assert_eq!(refused.reason, "UnsupportedContainer");
        assert!(
            refused.message.contains("nginx:1.27"),
            "{}",
            refused.message
        );
        assert!(program_args(&container(&["sh", "-c", "meshbench"], "meshbench")).is_err());
    }

    #[test]
    fn expansion_follows_the_kubelet() {
        let vars: BTreeMap<String, String> =
            [("A".to_string(), "1".to_string())].into_iter().collect();
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("cost $5 $(A", &vars), "cost $5 $(A");
    }

    #[test]
    fn a_path_is_rewritten_once_even_through_a_variable() {
        let m = Mounts(vec![("/tmp".into(), "/tmp/node/volumes/tmp".into())]);
        let mut c = container(&["meshbench", "loadgen"], "meshbench");
        c.args = Some(vec!["--out".into(), "$(OUT)".into()]);
        let env = vec![("OUT".to_string(), "/tmp/r.json".to_string())];
        let plan = container_plan(&c, env, &m).unwrap();
        assert_eq!(
            plan.args,
            ["loadgen", "--out", "/tmp/node/volumes/tmp/r.json"]
        );
        assert_eq!(plan.env[0].1, "/tmp/node/volumes/tmp/r.json");
    }

    #[test]
    fn mount_paths_are_rewritten_longest_first() {
        let m = Mounts(vec![
            (
                "/etc/meshbench/plan.json".into(),
                "/d/plan/plan.json".into(),
            ),
            ("/tmp".into(), "/d/tmp".into()),
        ]);
        assert_eq!(m.rewrite("/etc/meshbench/plan.json"), "/d/plan/plan.json");
        assert_eq!(m.rewrite("/tmp/result.json"), "/d/tmp/result.json");
        assert_eq!(m.rewrite("--out=/tmp/r"), "--out=/d/tmp/r");
        assert_eq!(m.rewrite("/tmpfoo"), "/tmpfoo");
        assert_eq!(m.rewrite("0.0.0.0:9090"), "0.0.0.0:9090");
    }
}
