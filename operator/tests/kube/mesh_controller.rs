//! The ServiceMesh controller against the real kube-apiserver of [`crate::cluster`], run
//! as the operator's ServiceAccount with the deployment kit's RBAC: server-side apply and
//! field ownership, pruning, the garbage collector, PodSecurity admission of the rendered
//! pod templates, and the status it reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use meshbench_crds::{Bundle, ServiceMesh};
use meshbench_operator::k8s::mesh_controller::{self, Context, HANDOVER_MANAGER};
use meshbench_operator::k8s::metrics::Metrics;
use meshbench_operator::k8s::render::RenderOptions;
use serde_json::json;

use crate::cluster::{cluster, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn quickstart() -> ServiceMesh {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../experiments/quickstart.yaml"
    );
    Bundle::load_files(&[path]).meshes[0].mesh.clone()
}

fn mesh_of(yaml: &str) -> ServiceMesh {
    serde_yaml::from_str(yaml).expect("mesh yaml")
}

async fn context() -> Arc<Context> {
    Arc::new(Context::new(
        cluster().operator().await,
        RenderOptions {
            image: "ghcr.io/meshbench/meshbench:test".into(),
            ..RenderOptions::default()
        },
        Arc::new(Metrics::default()),
        Some("test".into()),
    ))
}

/// Creates (or replaces the spec of) `mesh` in `ns` as the admin and returns it as the
/// API server has it (uid, generation).
async fn put(ns: &str, mut mesh: ServiceMesh) -> ServiceMesh {
    let api: Api<ServiceMesh> = Api::namespaced(cluster().admin().await, ns);
    mesh.metadata.namespace = Some(ns.into());
    let name = mesh.name_any();
    match api.get_opt(&name).await.expect("get mesh") {
        None => api
            .create(&PostParams::default(), &mesh)
            .await
            .expect("create mesh"),
        Some(old) => {
            mesh.metadata = old.metadata;
            api.replace(&name, &PostParams::default(), &mesh)
                .await
                .expect("replace mesh")
        }
    }
}

/// One reconcile as the operator; fails the test on any error (a 403 means the RBAC lacks
/// a verb the controller uses).
async fn reconcile(ns: &str, name: &str) {
    let api: Api<ServiceMesh> = Api::namespaced(cluster().admin().await, ns);
    let mesh = api.get(name).await.expect("get mesh");
    mesh_controller::reconcile(Arc::new(mesh), context().await)
        .await
        .unwrap_or_else(|e| panic!("reconcile of {ns}/{name} failed: {e}"));
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    let mut v: Vec<String> = items
        .iter()
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .collect();
    v.sort();
    v
}

async fn list<K>(client: &Client, ns: &str) -> Vec<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
}

fn replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.replicas)
}

#[tokio::test]
async fn reconciles_every_object_by_server_side_apply_as_the_operator() {
    let ns = cluster().namespace("reconcile", &[]).await;
    let mesh = put(&ns, quickstart()).await;
    reconcile(&ns, "quickstart").await;
    let admin = cluster().admin().await;
    let want = vec![
        "quickstart-backend".to_string(),
        "quickstart-frontend".to_string(),
    ];
    let deps: Vec<Deployment> = list(&admin, &ns).await;
    assert_eq!(names(&deps), want);
    assert_eq!(names(&list::<Service>(&admin, &ns).await), want);
    let cms: Vec<ConfigMap> = list(&admin, &ns).await;
    for w in &want {
        assert!(
            names(&cms).contains(w),
            "{w} ConfigMap in {:?}",
            names(&cms)
        );
    }
    let hpas: Vec<HorizontalPodAutoscaler> = list(&admin, &ns).await;
    assert_eq!(names(&hpas), vec!["quickstart-backend"]);
    let uid = mesh.uid().unwrap();
    for d in &deps {
        let owners = d.owner_references();
        assert!(
            owners
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true)),
            "{owners:?}"
        );
        let managers: Vec<_> = d
            .managed_fields()
            .iter()
            .filter_map(|m| m.manager.clone())
            .collect();
        assert!(managers.contains(&"meshbench".to_string()), "{managers:?}");
    }
    // A second reconcile changes nothing: no spec is written again (the Deployment
    // controller's status writes move resourceVersion, so generation is what to compare).
    let generations: BTreeMap<String, Option<i64>> = deps
        .iter()
        .map(|d| (d.name_any(), d.metadata.generation))
        .collect();
    reconcile(&ns, "quickstart").await;
    for d in list::<Deployment>(&admin, &ns).await {
        assert_eq!(
            Some(&d.metadata.generation),
            generations.get(&d.name_any()),
            "{} rewritten",
            d.name_any()
        );
    }
    // No kubelet runs the pods: valid, not ready, and says which services it waits for.
    let status = Api::<ServiceMesh>::namespaced(admin.clone(), &ns)
        .get_status("quickstart")
        .await
        .unwrap()
        .status
        .expect("status");
    let cond = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .cloned()
            .unwrap()
    };
    assert_eq!(cond("Valid").status, "True");
    assert_eq!(cond("Ready").status, "False");
    assert!(
        cond("Ready").message.contains("waiting for"),
        "{:?}",
        cond("Ready")
    );
}

/// Every replica count the Deployment had while `f` ran.
async fn replica_history<F: std::future::Future<Output = ()>>(
    ns: &str,
    name: &str,
    f: F,
) -> Vec<i32> {
    let api: Api<Deployment> = Api::namespaced(cluster().admin().await, ns);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api, cfg).boxed();
    // The initial listing tells us the watch is established.
    let mut seen = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(Ok(watcher::Event::InitApply(d))) => seen.extend(replicas(&d)),
            Some(Ok(_)) => {}
            other => panic!("watch: {other:?}"),
        }
    }
    f.await;
    // Let the last events arrive.
    let deadline = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            e = stream.next() => if let Some(Ok(watcher::Event::Apply(d))) = e {
                seen.extend(replicas(&d));
            }
        }
    }
    seen
}

const SCALED: &str = r#"
apiVersion: meshbench.io/v1alpha1
kind: ServiceMesh
metadata: { name: scaled }
spec:
  defaults:
    resources: { requests: { cpu: 100m, memory: 32Mi }, limits: { cpu: 200m, memory: 64Mi } }
  services:
    - name: api
      replicas: 3
      endpoints: [{ path: /, cpu: 1ms }]
"#;

#[tokio::test]
async fn switching_to_autoscaling_keeps_the_replica_count_and_the_hpa_owns_it() {
    let ns = cluster().namespace("handover", &[]).await;
    put(&ns, mesh_of(SCALED)).await;
    reconcile(&ns, "scaled").await;
    let deps: Api<Deployment> = Api::namespaced(cluster().admin().await, &ns);
    assert_eq!(replicas(&deps.get("scaled-api").await.unwrap()), Some(3));

    let mut mesh = mesh_of(SCALED);
    mesh.spec.services[0].autoscaling = serde_json::from_value(
        json!({ "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilization": 50 }),
    )
    .unwrap();
    put(&ns, mesh).await;
    let ns2 = ns.clone();
    let history = replica_history(
        &ns,
        "scaled-api",
        async move { reconcile(&ns2, "scaled").await },
    )
    .await;
    assert!(!history.is_empty());
    assert!(
        history.iter().all(|r| *r == 3),
        "replicas went through {history:?}"
    );
    let d = deps.get("scaled-api").await.unwrap();
    let owners: Vec<_> = d
        .managed_fields()
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:replicas"))
                .is_some()
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(
        owners,
        vec![HANDOVER_MANAGER.to_string()],
        "only the hand-over manager owns replicas"
    );

    // The HPA scales through the scale subresource; the operator never undoes it.
    deps.patch_scale(
        "scaled-api",
        &PatchParams {
            field_manager: Some("horizontal-pod-autoscaler-test".into()),
            ..PatchParams::default()
        },
        &Patch::Merge(json!({ "spec": { "replicas": 4 } })),
    )
    .await
    .expect("scale");
    reconcile(&ns, "scaled").await;
    reconcile(&ns, "scaled").await;
    assert_eq!(replicas(&deps.get("scaled-api").await.unwrap()), Some(4));

    // Back to fixed replicas: the operator owns the count again.
    put(&ns, mesh_of(SCALED)).await;
    reconcile(&ns, "scaled").await;
    assert_eq!(replicas(&deps.get("scaled-api").await.unwrap()), Some(3));
    let hpas: Vec<HorizontalPodAutoscaler> = list(&cluster().admin().await, &ns).await;
    assert!(
        hpas.is_empty(),
        "HPA of a service no longer autoscaled is pruned"
    );
}

#[tokio::test]
async fn a_new_autoscaled_service_starts_at_its_replicas() {
    let ns = cluster().namespace("initial", &[]).await;
    let mut mesh = mesh_of(SCALED);
    mesh.spec.services[0].replicas = Some(2);
    mesh.spec.services[0].autoscaling = serde_json::from_value(
        json!({ "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilization": 50 }),
    )
    .unwrap();
    put(&ns, mesh).await;
    reconcile(&ns, "scaled").await;
    let deps: Api<Deployment> = Api::namespaced(cluster().admin().await, &ns);
    assert_eq!(replicas(&deps.get("scaled-api").await.unwrap()), Some(2));
}

#[tokio::test]
async fn removed_services_are_pruned_and_the_garbage_collector_removes_the_rest() {
    let ns = cluster().namespace("prune", &[]).await;
    put(&ns, quickstart()).await;
    reconcile(&ns, "quickstart").await;
    let admin = cluster().admin().await;
    // Labelled like the back end's objects but not owned by the mesh: never pruned.
    let stranger: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "stranger",
            "labels": {
                "meshbench.io/mesh": "quickstart",
                "meshbench.io/service": "backend",
                "app.kubernetes.io/component": "worker",
            },
        },
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &stranger)
        .await
        .unwrap();

    let mut mesh = quickstart();
    mesh.spec.services.retain(|s| s.name != "backend");
    mesh.spec.services[0].endpoints[0].calls.clear();
    put(&ns, mesh).await;
    reconcile(&ns, "quickstart").await;
    assert_eq!(
        names(&list::<Deployment>(&admin, &ns).await),
        vec!["quickstart-frontend"]
    );
    assert_eq!(
        names(&list::<Service>(&admin, &ns).await),
        vec!["quickstart-frontend"]
    );
    assert!(
        list::<HorizontalPodAutoscaler>(&admin, &ns)
            .await
            .is_empty()
    );
    let cms = names(&list::<ConfigMap>(&admin, &ns).await);
    assert!(cms.contains(&"stranger".to_string()), "{cms:?}");
    assert!(!cms.contains(&"quickstart-backend".to_string()), "{cms:?}");

    // Deleting the mesh: kube-controller-manager's garbage collector removes its children.
    Api::<ServiceMesh>::namespaced(admin.clone(), &ns)
        .delete("quickstart", &DeleteParams::background())
        .await
        .unwrap();
    let a2 = admin.clone();
    let n2 = ns.clone();
    eventually(
        WAIT,
        "the garbage collector to delete the mesh's objects",
        move || {
            let (admin, ns) = (a2.clone(), n2.clone());
            async move {
                let deps = list::<Deployment>(&admin, &ns).await;
                let svcs = list::<Service>(&admin, &ns).await;
                let cms: Vec<String> = names(&list::<ConfigMap>(&admin, &ns).await)
                    .into_iter()
                    .filter(|n| n.starts_with("quickstart-"))
                    .collect();
                (deps.is_empty() && svcs.is_empty() && cms.is_empty()).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn an_invalid_spec_only_sets_valid_false() {
    let ns = cluster().namespace("invalid", &[]).await;
    let mut mesh = quickstart();
    mesh.spec.services[0].endpoints[0].calls[0].service = "nowhere".into();
    let expected = meshbench_operator::k8s::shared::invalid_message(
        &meshbench_crds::validate::validate_mesh(&mesh),
    );
    put(&ns, mesh).await;
    reconcile(&ns, "quickstart").await;
    let admin = cluster().admin().await;
    assert!(list::<Deployment>(&admin, &ns).await.is_empty());
    let status = Api::<ServiceMesh>::namespaced(admin.clone(), &ns)
        .get_status("quickstart")
        .await
        .unwrap()
        .status
        .unwrap();
    let valid = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Valid")
        .unwrap();
    assert_eq!(valid.status, "False");
    assert_eq!(valid.message, expected);
    let events: Vec<Event> = list(&admin, &ns).await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("InvalidSpec")),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_restricted_namespace_admits_every_rendered_pod() {
    let ns = cluster()
        .namespace(
            "restricted",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await;
    put(&ns, quickstart()).await;
    reconcile(&ns, "quickstart").await;
    let admin = cluster().admin().await;
    let (a2, n2) = (admin.clone(), ns.clone());
    // quickstart: frontend 1 replica; backend starts at 1 (its `replicas`).
    let pods = eventually(WAIT, "the ReplicaSets to create the pods", move || {
        let (admin, ns) = (a2.clone(), n2.clone());
        async move {
            let pods: Vec<Pod> = list(&admin, &ns).await;
            (pods.len() >= 2).then_some(pods)
        }
    })
    .await;
    assert_eq!(pods.len(), 2, "{:?}", names(&pods));
    let rejected: Vec<String> = list::<Event>(&admin, &ns)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .map(|e| e.message.unwrap_or_default())
        .collect();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert!(!list::<ReplicaSet>(&admin, &ns).await.is_empty());
}
