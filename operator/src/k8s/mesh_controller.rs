//! The ServiceMesh controller. A reconcile is fetch (the runtime hands over the mesh) →
//! validate (pure) → build (pure, [`render`](super::render)) → apply (server-side apply,
//! one field manager, forced) → prune → status.
//!
//! No finalizer: every object has the mesh as controlling owner, so the garbage collector
//! deletes them with the mesh; objects of services removed from the spec are found by
//! label and deleted here.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use meshbench_crds::mesh::{ServiceMeshStatus, ServiceStatus};
use meshbench_crds::validate::Issue;
use meshbench_crds::{ServiceMesh, ValidMesh};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::FIELD_MANAGER;
use super::keys;
use super::metrics::Metrics;
use super::render::{self, MeshObjects, RenderOptions, ServiceObjects};
use super::shared::{self, Failures, invalid_message, set_condition};

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "servicemesh";

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum MeshControllerError {
    /// A request to the API server failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The client error.
        source: kube::Error,
    },
    /// The objects could not be rendered.
    #[error(transparent)]
    Render(#[from] render::RenderError),
    /// The mesh is not namespaced (the CRD is; this means a broken object).
    #[error("ServiceMesh {0} has no namespace")]
    NoNamespace(String),
}

impl MeshControllerError {
    /// A bounded label for the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            MeshControllerError::Kube { .. } => "kube",
            MeshControllerError::Render(_) => "render",
            MeshControllerError::NoNamespace(_) => "no_namespace",
        }
    }
}

/// Result alias of this module.
pub type Result<T, E = MeshControllerError> = std::result::Result<T, E>;

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> MeshControllerError {
    let action = action.into();
    move |source| MeshControllerError::Kube { action, source }
}

/// What a reconcile needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Events on meshes.
    pub recorder: Recorder,
    /// Images and commands of the rendered objects.
    pub render: RenderOptions,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per mesh, for the error policy's backoff.
    failures: Failures,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("render", &self.render)
            .finish()
    }
}

impl Context {
    /// A context; Events are reported as `meshbench-operator` from `instance`.
    pub fn new(
        client: Client,
        render: RenderOptions,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: "meshbench-operator".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            render,
            metrics,
            failures: Failures::default(),
        }
    }
}

/// The status of a mesh whose spec is invalid: `Valid=False` with every problem, `Ready`
/// left as it was.
pub fn invalid_status(
    old: &ServiceMeshStatus,
    generation: Option<i64>,
    issues: &[Issue],
    now: &Time,
) -> (ServiceMeshStatus, bool) {
    let mut status = old.clone();
    status.observed_generation = generation;
    let changed = set_condition(
        &mut status.conditions,
        "Valid",
        false,
        "InvalidSpec",
        invalid_message(issues),
        generation,
        now,
    );
    (status, changed)
}

/// Replica counts of one applied service, read from the Deployment the API returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Service name.
    pub service: String,
    /// The Deployment's `spec.replicas` (the HPA's choice when autoscaled).
    pub desired: i32,
    /// Ready replicas.
    pub ready: i32,
    /// The Deployment controller has seen the latest spec.
    pub up_to_date: bool,
}

/// Reads the replica counts of an applied Deployment.
pub fn observe(service: &str, d: &Deployment) -> Observed {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.clone().unwrap_or_default();
    Observed {
        service: service.to_string(),
        desired,
        ready: status.ready_replicas.unwrap_or(0),
        up_to_date: status.observed_generation.is_some()
            && status.observed_generation >= d.metadata.generation
            && status.updated_replicas.unwrap_or(0) >= desired,
    }
}

/// The status of a valid, applied mesh. Returns it and whether `Ready` changed.
pub fn ready_status(
    old: &ServiceMeshStatus,
    generation: Option<i64>,
    observed: &[Observed],
    now: &Time,
) -> (ServiceMeshStatus, bool) {
    let mut status = old.clone();
    status.observed_generation = generation;
    status.services = observed
        .iter()
        .map(|o| ServiceStatus {
            name: o.service.clone(),
            desired_replicas: o.desired,
            ready_replicas: o.ready,
        })
        .collect();
    let ready: Vec<&Observed> = observed
        .iter()
        .filter(|o| o.up_to_date && o.ready >= o.desired)
        .collect();
    status.ready_services = ready.len() as i32;
    status.total_services = observed.len() as i32;
    status.ready_text = Some(format!("{}/{}", ready.len(), observed.len()));
    set_condition(
        &mut status.conditions,
        "Valid",
        true,
        "SpecValid",
        "the spec passed validation".into(),
        generation,
        now,
    );
    let waiting: Vec<String> = observed
        .iter()
        .filter(|o| !(o.up_to_date && o.ready >= o.desired))
        .map(|o| format!("{} ({}/{} ready)", o.service, o.ready, o.desired))
        .collect();
    let all_ready = waiting.is_empty();
    let changed = set_condition(
        &mut status.conditions,
        "Ready",
        all_ready,
        if all_ready {
            "AllReplicasReady"
        } else {
            "ReplicasNotReady"
        },
        if all_ready {
            format!("all {} services have their replicas ready", observed.len())
        } else {
            format!("waiting for {}", waiting.join(", "))
        },
        generation,
        now,
    );
    (status, changed)
}

async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &pp, &Patch::Apply(obj))
        .await
        .map_err(kube_err(format!(
            "applying {} {name}",
            K::kind(&K::DynamicType::default())
        )))
}

fn object_name<K: Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

/// Deletes the objects of kind `K` of `mesh` whose service is not in `keep`. Labels select
/// the candidates; only objects the mesh owns (by UID) are deleted, so an object someone
/// else labelled alike, or one of an earlier mesh of the same name, is left alone.
async fn prune<K>(
    api: &Api<K>,
    mesh: &str,
    mesh_uid: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let mut selector = format!("{}={mesh},{}=worker", keys::MESH, keys::APP_COMPONENT);
    if !keep.is_empty() {
        let names: Vec<&str> = keep.iter().map(String::as_str).collect();
        selector.push_str(&format!(",{} notin ({})", keys::SERVICE, names.join(",")));
    }
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err(format!("listing {kind}s of mesh {mesh}")))?;
    let mut deleted = Vec::new();
    let owned = |o: &K| {
        o.meta()
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == mesh_uid)
    };
    for o in list.items.into_iter().filter(owned) {
        let name = object_name(&o);
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted.push(format!("{kind}/{name}")),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(kube_err(format!("deleting {kind} {name}"))(e)),
        }
    }
    Ok(deleted)
}

async fn patch_status(
    api: &Api<ServiceMesh>,
    name: &str,
    status: &ServiceMeshStatus,
) -> Result<()> {
    let patch = serde_json::json!({
        "apiVersion": "meshbench.io/v1alpha1",
        "kind": "ServiceMesh",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_err(format!(
        "writing the status of ServiceMesh {name}"
    )))?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    mesh: &ServiceMesh,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    shared::publish(&ctx.recorder, mesh, type_, reason, action, note).await;
}

/// Applies one service's objects in dependency order and returns its Deployment as the
/// API server has it now.
async fn apply_service(client: &Client, ns: &str, s: &ServiceObjects) -> Result<Deployment> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    apply(&cms, &object_name(&s.config_map), &s.config_map).await?;
    apply(&svcs, &object_name(&s.service_object), &s.service_object).await?;
    let name = object_name(&s.deployment);
    let existing = if s.autoscaled {
        deps.get_opt(&name)
            .await
            .map_err(kube_err(format!("reading Deployment {name}")))?
    } else {
        None
    };
    // Our apply omits `spec.replicas` of an autoscaled Deployment. Were we its only owner,
    // the API server would reset it to 1: hand the current count to another manager
    // first, as the server-side apply reference's "transferring ownership" describes.
    if let Some(d) = existing
        .as_ref()
        .filter(|d| owns_replicas(d, FIELD_MANAGER))
    {
        let current = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        hand_over_replicas(&deps, &name, current).await?;
    }
    let mut dep = apply(&deps, &name, &s.deployment).await?;
    if s.autoscaled && existing.is_none() {
        // A new autoscaled Deployment starts at the spec's `replicas`, written by the
        // hand-over manager so that the HPA alone changes it afterwards.
        dep = hand_over_replicas(&deps, &name, s.initial_replicas).await?;
    }
    if let Some(h) = &s.hpa {
        apply(&hpas, &object_name(h), h).await?;
    }
    Ok(dep)
}

/// The field manager that holds an autoscaled Deployment's `spec.replicas` between our
/// last apply that set it and the HPA's first scale.
pub const HANDOVER_MANAGER: &str = "meshbench-handover-to-hpa";

/// Whether `manager` owns `spec.replicas` of `d` through an apply.
fn owns_replicas(d: &Deployment, manager: &str) -> bool {
    d.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(manager)
            && m.operation.as_deref() == Some("Apply")
            && m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|spec| spec.get("f:replicas"))
                .is_some()
    })
}

async fn hand_over_replicas(
    api: &Api<Deployment>,
    name: &str,
    replicas: i32,
) -> Result<Deployment> {
    let patch = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": { "replicas": replicas },
    });
    api.patch(
        name,
        &PatchParams::apply(HANDOVER_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_err(format!(
        "handing the replicas of Deployment {name} to the HPA"
    )))
}

/// Reconciles one mesh.
#[tracing::instrument(skip_all, fields(mesh = %mesh.name_any(), namespace = ?mesh.namespace()))]
pub async fn reconcile(mesh: Arc<ServiceMesh>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let result = reconcile_inner(&mesh, &ctx).await;
    match &result {
        Ok(_) => ctx.failures.clear(&*mesh),
        Err(e) => ctx.metrics.failure(CONTROLLER, e.metric_label()),
    }
    result
}

async fn reconcile_inner(mesh: &ServiceMesh, ctx: &Context) -> Result<Action> {
    let name = mesh.name_any();
    let ns = mesh
        .namespace()
        .ok_or_else(|| MeshControllerError::NoNamespace(name.clone()))?;
    if mesh.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the owned objects.
        return Ok(Action::await_change());
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    // An invalid spec touches nothing but the status.
    let valid = match ValidMesh::new(mesh.clone()) {
        Ok(valid) => valid,
        Err(invalid) => {
            report_invalid(ctx, mesh, &ns, &invalid.issues, &now).await?;
            return Ok(Action::await_change());
        }
    };
    let objects = render::render_mesh(&valid, &ctx.render)?;
    let observed = apply_all(&ctx.client, &ns, &objects).await?;
    let pruned = prune_removed(&ctx.client, &ns, mesh, &objects).await?;
    report_applied(ctx, mesh, &ns, &observed, &pruned, &now).await
}

/// Writes `Valid=False` with every problem, and publishes a Warning Event when that is
/// news.
async fn report_invalid(
    ctx: &Context,
    mesh: &ServiceMesh,
    ns: &str,
    issues: &[Issue],
    now: &Time,
) -> Result<()> {
    let old = mesh.status.clone().unwrap_or_default();
    let (status, changed) = invalid_status(&old, mesh.metadata.generation, issues, now);
    if status != old {
        let meshes: Api<ServiceMesh> = Api::namespaced(ctx.client.clone(), ns);
        patch_status(&meshes, &mesh.name_any(), &status).await?;
    }
    if changed {
        publish(
            ctx,
            mesh,
            EventType::Warning,
            "InvalidSpec",
            "Validate",
            invalid_message(issues),
        )
        .await;
    }
    Ok(())
}

/// Applies the objects of every service, in spec order; returns their replica counts.
async fn apply_all(client: &Client, ns: &str, objects: &MeshObjects) -> Result<Vec<Observed>> {
    let mut observed = Vec::with_capacity(objects.services.len());
    for s in &objects.services {
        let dep = apply_service(client, ns, s).await?;
        observed.push(observe(&s.service, &dep));
    }
    Ok(observed)
}

/// Deletes the objects of services removed from the spec, and the HPAs of services no
/// longer autoscaled; returns what it deleted.
async fn prune_removed(
    client: &Client,
    ns: &str,
    mesh: &ServiceMesh,
    objects: &MeshObjects,
) -> Result<Vec<String>> {
    let name = mesh.name_any();
    let uid = mesh.metadata.uid.clone().unwrap_or_default();
    let keep: BTreeSet<String> = objects.services.iter().map(|s| s.service.clone()).collect();
    let keep_hpa: BTreeSet<String> = objects
        .services
        .iter()
        .filter(|s| s.autoscaled)
        .map(|s| s.service.clone())
        .collect();
    let mut pruned = Vec::new();
    pruned.extend(
        prune(
            &Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns),
            &name,
            &uid,
            &keep_hpa,
        )
        .await?,
    );
    pruned.extend(
        prune(
            &Api::<Deployment>::namespaced(client.clone(), ns),
            &name,
            &uid,
            &keep,
        )
        .await?,
    );
    pruned.extend(
        prune(
            &Api::<Service>::namespaced(client.clone(), ns),
            &name,
            &uid,
            &keep,
        )
        .await?,
    );
    pruned.extend(
        prune(
            &Api::<ConfigMap>::namespaced(client.clone(), ns),
            &name,
            &uid,
            &keep,
        )
        .await?,
    );
    Ok(pruned)
}

/// Writes the status of an applied mesh, publishes what was pruned and a change of
/// `Ready`, and says when to look again.
async fn report_applied(
    ctx: &Context,
    mesh: &ServiceMesh,
    ns: &str,
    observed: &[Observed],
    pruned: &[String],
    now: &Time,
) -> Result<Action> {
    let old = mesh.status.clone().unwrap_or_default();
    let (status, ready_changed) = ready_status(&old, mesh.metadata.generation, observed, now);
    if status != old {
        let meshes: Api<ServiceMesh> = Api::namespaced(ctx.client.clone(), ns);
        patch_status(&meshes, &mesh.name_any(), &status).await?;
    }
    if !pruned.is_empty() {
        publish(
            ctx,
            mesh,
            EventType::Normal,
            "Pruned",
            "Prune",
            format!("deleted {}", pruned.join(", ")),
        )
        .await;
    }
    let all_ready = status.ready_services == status.total_services;
    if ready_changed {
        publish(
            ctx,
            mesh,
            EventType::Normal,
            if all_ready { "Ready" } else { "NotReady" },
            "Reconcile",
            status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.message.clone())
                .unwrap_or_default(),
        )
        .await;
    }
    // Owned Deployments trigger a reconcile when their status changes; the requeue is a
    // safety net against missed watch events.
    Ok(Action::requeue(if all_ready {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(15)
    }))
}

/// Backoff after a failed reconcile: 5 s doubling per consecutive failure, at most 5 min.
pub fn error_policy(
    mesh: Arc<ServiceMesh>,
    error: &MeshControllerError,
    ctx: Arc<Context>,
) -> Action {
    let (n, delay) = ctx.failures.record(&*mesh);
    tracing::warn!(mesh = %mesh.name_any(), error = %error, failures = n, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

pub use super::shared::backoff;
