//! Mesh claims: a run holds each of its meshes through a `coordination.k8s.io/v1` Lease
//! (`meshbench-claim-<mesh>`) in the mesh's namespace, so two Benchmarks never load or
//! redeploy one mesh at once. Creating a Lease is atomic, so of two runs starting together
//! exactly one gets each mesh; a run takes its meshes in name order and gives back what it
//! took when one is held, so two runs wanting the same meshes cannot deadlock.
//!
//! A claim names its run (`holderIdentity` `<benchmark>/<run id>`) and is owned by its
//! Benchmark (deleting it collects the claim). A claim whose Benchmark is gone, was
//! recreated, or no longer runs that run is stale and is taken over with a
//! resourceVersion precondition.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::{Client, Resource, ResourceExt};
use meshbench_crds::Benchmark;

use super::{Result, RunState, kube_err};
use crate::k8s::{keys, render};

/// A mesh another run holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The mesh.
    pub mesh: String,
    /// The Benchmark whose run holds it.
    pub benchmark: String,
    /// That run.
    pub run: String,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mesh {} is in use by Benchmark {} (run {})",
            self.mesh, self.benchmark, self.run
        )
    }
}

/// The Lease that claims `mesh`.
pub fn claim_name(mesh: &str) -> String {
    render::dns_name(&["meshbench-claim", mesh])
}

fn holder(bench: &Benchmark, run_id: &str) -> String {
    format!("{}/{run_id}", bench.name_any())
}

fn claim(bench: &Benchmark, mesh: &str, run_id: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(claim_name(mesh)),
            labels: Some(BTreeMap::from([
                (keys::MESH.to_string(), mesh.to_string()),
                (keys::BENCHMARK.to_string(), bench.name_any()),
                (
                    keys::APP_MANAGED_BY.to_string(),
                    "meshbench-operator".to_string(),
                ),
            ])),
            owner_references: bench.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder(bench, run_id)),
            acquire_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..LeaseSpec::default()
        }),
    }
}

fn owner_uid(lease: &Lease) -> Option<&str> {
    lease
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Benchmark")
        .map(|o| o.uid.as_str())
}

/// Claims every mesh of `meshes` for run `run_id` of `bench`, or none: `Ok(Some(held))`
/// names a mesh another run holds (the claims taken in this attempt are given back).
pub async fn acquire(
    client: &Client,
    bench: &Benchmark,
    run_id: &str,
    meshes: &[String],
) -> Result<Option<Held>> {
    let ns = bench.namespace().unwrap_or_default();
    let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let mut ordered: Vec<&String> = meshes.iter().collect();
    ordered.sort();
    ordered.dedup();
    let mut taken = Vec::new();
    for mesh in ordered {
        match take(client, &api, bench, mesh, run_id).await? {
            None => taken.push(mesh.clone()),
            Some(held) => {
                release(client, bench, &taken).await?;
                return Ok(Some(held));
            }
        }
    }
    Ok(None)
}

/// Takes one claim; `Some` when another live run holds it.
async fn take(
    client: &Client,
    api: &Api<Lease>,
    bench: &Benchmark,
    mesh: &str,
    run_id: &str,
) -> Result<Option<Held>> {
    let name = claim_name(mesh);
    let wanted = claim(bench, mesh, run_id);
    match api.create(&PostParams::default(), &wanted).await {
        Ok(_) => return Ok(None),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(kube_err(format!("creating Lease {name}"))(e)),
    }
    let Some(existing) = api
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("reading Lease {name}")))?
    else {
        // Released in between: try again next reconcile.
        return Ok(Some(Held {
            mesh: mesh.to_string(),
            benchmark: "?".into(),
            run: "?".into(),
        }));
    };
    let ours = owner_uid(&existing) == bench.metadata.uid.as_deref();
    if !ours && let Some(held) = live_holder(client, bench, mesh, &existing).await? {
        return Ok(Some(held));
    }
    // Ours from an earlier attempt, or stale: take it over unless it changed meanwhile.
    let mut lease = wanted;
    lease.metadata.resource_version = existing.metadata.resource_version.clone();
    match api.replace(&name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some(Held {
            mesh: mesh.to_string(),
            benchmark: "?".into(),
            run: "?".into(),
        })),
        Err(e) => Err(kube_err(format!("taking over Lease {name}"))(e)),
    }
}

/// The run holding `lease`, if that run still goes on.
async fn live_holder(
    client: &Client,
    bench: &Benchmark,
    mesh: &str,
    lease: &Lease,
) -> Result<Option<Held>> {
    let identity = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    let Some((benchmark, run)) = identity.split_once('/') else {
        return Ok(None);
    };
    let api: Api<Benchmark> =
        Api::namespaced(client.clone(), &bench.namespace().unwrap_or_default());
    let Some(other) = api
        .get_opt(benchmark)
        .await
        .map_err(kube_err(format!("reading Benchmark {benchmark}")))?
    else {
        return Ok(None);
    };
    let status = other.status.clone().unwrap_or_default();
    let running = status.run_id.as_deref() == Some(run)
        && !status.phase.is_terminal()
        && status
            .state
            .and_then(|v| serde_json::from_value::<RunState>(v).ok())
            .is_some();
    let same_object = owner_uid(lease) == other.metadata.uid.as_deref();
    Ok((running && same_object).then(|| Held {
        mesh: mesh.to_string(),
        benchmark: benchmark.to_string(),
        run: run.to_string(),
    }))
}

/// Gives back the claims `bench` holds on `meshes`; claims of other runs are left alone.
pub async fn release(client: &Client, bench: &Benchmark, meshes: &[String]) -> Result<()> {
    let ns = bench.namespace().unwrap_or_default();
    let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
    for mesh in meshes {
        let name = claim_name(mesh);
        let Some(lease) = api
            .get_opt(&name)
            .await
            .map_err(kube_err(format!("reading Lease {name}")))?
        else {
            continue;
        };
        if owner_uid(&lease) != bench.metadata.uid.as_deref() {
            continue;
        }
        // Only the version read: a claim taken over meanwhile is not deleted.
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: lease.metadata.uid.clone(),
                resource_version: lease.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => {}
            Err(e) => return Err(kube_err(format!("releasing Lease {name}"))(e)),
        }
    }
    Ok(())
}
