//! Every Kubernetes permission the operator's code uses, in one table.
//!
//! `deploy/operator/rbac.yaml` grants exactly these (a test compares the two), and the
//! controller tests run as the operator's ServiceAccount on a real API server, so a
//! request the table does not hold fails them with a 403 — the table, the manifests and
//! the code cannot drift apart.

/// Where a permission is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// In every namespace the operator watches (ClusterRole).
    Cluster,
    /// Only in the operator's own namespace (Role), e.g. its token key Secret.
    OperatorNamespace,
}

/// Verbs on one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource, or `resource/subresource`.
    pub resource: &'static str,
    /// Verbs used.
    pub verbs: &'static [&'static str],
    /// Where.
    pub scope: Scope,
}

const OWNED: &[&str] = &["list", "watch", "create", "patch", "delete"];
/// Deployments are also read one by one: who owns an autoscaled one's `spec.replicas`
/// decides whether the count must be handed over to the HPA before an apply.
const DEPLOYMENTS: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];

/// The table.
pub const PERMISSIONS: &[Permission] = &[
    // The ServiceMesh controller watches meshes and writes their status (server-side
    // apply is a PATCH).
    // The Benchmark controller reads the meshes a benchmark names.
    Permission {
        group: "meshbench.io",
        resource: "servicemeshes",
        verbs: &["get", "list", "watch"],
        scope: Scope::Cluster,
    },
    Permission {
        group: "meshbench.io",
        resource: "servicemeshes/status",
        verbs: &["patch"],
        scope: Scope::Cluster,
    },
    // The Benchmark controller watches benchmarks and keeps its run state in their status;
    // it applies its finalizer while a run goes on (PATCH), reads a benchmark by name to
    // check a results token (its UID) and whether a mesh claim's holder still runs.
    Permission {
        group: "meshbench.io",
        resource: "benchmarks",
        verbs: &["get", "list", "watch", "patch"],
        scope: Scope::Cluster,
    },
    Permission {
        group: "meshbench.io",
        resource: "benchmarks/status",
        verbs: &["patch"],
        scope: Scope::Cluster,
    },
    // Load Jobs: applied per step, read for their outcome, deleted once the results are in.
    Permission {
        group: "batch",
        resource: "jobs",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        scope: Scope::Cluster,
    },
    // The per-benchmark results token Secret, for the load Jobs: applied (PATCH, create
    // when the apply creates). Never read: tokens are checked by HMAC.
    Permission {
        group: "",
        resource: "secrets",
        verbs: &["create", "patch"],
        scope: Scope::Cluster,
    },
    // Objects of a mesh: applied (PATCH; create is checked when the apply creates),
    // watched through the controller's `owns`, listed and deleted when pruned.
    Permission {
        group: "",
        resource: "configmaps",
        verbs: OWNED,
        scope: Scope::Cluster,
    },
    Permission {
        group: "",
        resource: "services",
        verbs: OWNED,
        scope: Scope::Cluster,
    },
    Permission {
        group: "apps",
        resource: "deployments",
        verbs: DEPLOYMENTS,
        scope: Scope::Cluster,
    },
    Permission {
        group: "autoscaling",
        resource: "horizontalpodautoscalers",
        verbs: OWNED,
        scope: Scope::Cluster,
    },
    // Events on meshes (the runtime's Recorder creates, then patches a series).
    Permission {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        scope: Scope::Cluster,
    },
    // Leader election, and the claims a run holds on its meshes (released by delete).
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update", "delete"],
        scope: Scope::Cluster,
    },
    // The operator's token key (one Secret, created on first start).
    Permission {
        group: "",
        resource: "secrets",
        verbs: &["get", "create"],
        scope: Scope::OperatorNamespace,
    },
];

/// Whether the table grants `verb` on `group`/`resource` (in any scope).
pub fn allows(group: &str, resource: &str, verb: &str) -> bool {
    PERMISSIONS
        .iter()
        .any(|p| p.group == group && p.resource == resource && p.verbs.contains(&verb))
}

/// Every (scope, group, resource, verb) of the table, sorted.
pub fn triples() -> Vec<(Scope, String, String, String)> {
    let mut v: Vec<_> = PERMISSIONS
        .iter()
        .flat_map(|p| {
            p.verbs.iter().map(move |verb| {
                (
                    p.scope,
                    p.group.to_string(),
                    p.resource.to_string(),
                    verb.to_string(),
                )
            })
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The (group, resource, verb) an API request needs, from its method, path and query, as
/// the API server's authorizer sees it; `None` for paths that are not resource requests.
pub fn request_attributes(
    method: &str,
    path: &str,
    query: &str,
) -> Option<(String, String, String)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_string(), rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, name, sub) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(*n), None),
        [r, n, s] => (*r, Some(*n), Some(*s)),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, name.is_some()) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    let resource = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_string(),
    };
    Some((group, resource, verb.to_string()))
}
