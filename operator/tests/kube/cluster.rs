//! A real Kubernetes control plane for this test binary: etcd, kube-apiserver and
//! kube-controller-manager from `scripts/control-plane.sh`, started once per binary on
//! loopback and torn down when the binary exits (the script watches our pid, so a panic or
//! a kill leaves nothing behind). `MESHBENCH_TEST_KUBECONFIG` reuses a running one instead.
//!
//! Each test takes its own namespace. The deployment kit (`deploy/`, CRDs and RBAC) is
//! applied once, so the operator's controllers can run as its ServiceAccount
//! (impersonated), not as the admin: a verb missing from the RBAC fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The operator's identity in `deploy/operator/rbac.yaml`.
pub const OPERATOR_SA: (&str, &str) = ("meshbench", "meshbench-operator");

pub struct Cluster {
    pub kubeconfig: PathBuf,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn start() -> Result<Cluster, String> {
    meshbench_operator::k8s::install_tls_provider();
    let cluster = match std::env::var_os("MESHBENCH_TEST_KUBECONFIG") {
        Some(k) => Cluster {
            kubeconfig: k.into(),
        },
        None => up()?,
    };
    // The deployment kit, as a user installs it (idempotent on a reused control plane).
    cluster.kubectl(&[
        "apply",
        "--server-side",
        "-k",
        &root().join("deploy").to_string_lossy(),
    ])?;
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/servicemeshes.meshbench.io",
        "crd/benchmarks.meshbench.io",
        "--timeout=60s",
    ])?;
    Ok(cluster)
}

fn up() -> Result<Cluster, String> {
    let script = root().join("scripts/control-plane.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["up", "--owner-pid", &std::process::id().to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().trim();
    if !out.status.success() || last.is_empty() {
        return Err(format!(
            "{} up failed ({}); see its output above",
            script.display(),
            out.status
        ));
    }
    Ok(Cluster {
        kubeconfig: last.into(),
    })
}

/// The control plane of this test binary, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(start) {
        Ok(c) => c,
        Err(e) => panic!("no control plane: {e}"),
    }
}

impl Cluster {
    /// Runs kubectl against this cluster; its output, or the error with stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run kubectl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    async fn config(&self) -> Config {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig")
    }

    /// A client with the admin's rights (group `system:masters`).
    pub async fn admin(&self) -> Client {
        Client::try_from(self.config().await).expect("client")
    }

    /// A client acting as the operator's ServiceAccount, with exactly the rights the
    /// deployment kit's RBAC grants it.
    pub async fn operator(&self) -> Client {
        let (ns, name) = OPERATOR_SA;
        self.impersonating(
            &format!("system:serviceaccount:{ns}:{name}"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{ns}"),
                "system:authenticated",
            ],
        )
        .await
    }

    /// A client acting as `user` in `groups`.
    pub async fn impersonating(&self, user: &str, groups: &[&str]) -> Client {
        let mut config = self.config().await;
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        Client::try_from(config).expect("client")
    }

    /// A new namespace for one test, named after it, with the given labels; returns once
    /// its `default` ServiceAccount exists (pods cannot be created before).
    pub async fn namespace(&self, test: &str, labels: &[(&str, &str)]) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let mut base: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        base.truncate(40);
        let name = format!(
            "{}-{}-{}",
            base.trim_matches('-'),
            std::process::id() % 10_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let client = self.admin().await;
        let mut ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
        }))
        .expect("namespace");
        ns.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        let sas: Api<ServiceAccount> = Api::namespaced(client, &name);
        for _ in 0..300 {
            if sas.get_opt("default").await.ok().flatten().is_some() {
                return name;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("namespace {name}: the default ServiceAccount never appeared");
    }
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
