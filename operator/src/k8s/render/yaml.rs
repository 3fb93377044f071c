//! The YAML that `meshbench render` prints: the objects of a bundle's meshes and a
//! preview of each benchmark's first load Job.

use meshbench_crds::{Benchmark, Bundle, Invalid, ServiceMesh, ValidBenchmark, ValidMesh};
use serde::Serialize;

use super::{
    LoadStep, MeshObjects, RenderError, RenderOptions, Result, render_load_job, render_mesh,
};

/// Serialises objects as one multi-document YAML stream.
pub fn to_yaml_stream<T: Serialize>(objects: &[T]) -> Result<String> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        let text = serde_yaml::to_string(o).map_err(|e| RenderError::Serialize {
            what: "object as YAML".into(),
            message: e.to_string(),
        })?;
        out.push_str(&text);
    }
    Ok(out)
}

fn value<T: Serialize>(o: &T) -> Result<serde_json::Value> {
    serde_json::to_value(o).map_err(|e| RenderError::Serialize {
        what: "object".into(),
        message: e.to_string(),
    })
}

impl MeshObjects {
    /// Every object as a JSON value, per service in the order ConfigMap, Service,
    /// Deployment, HPA (the order they are applied in).
    pub fn values(&self) -> Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        for s in &self.services {
            out.push(value(&s.config_map)?);
            out.push(value(&s.service_object)?);
            out.push(value(&s.deployment)?);
            if let Some(h) = &s.hpa {
                out.push(value(h)?);
            }
        }
        Ok(out)
    }
}

/// Every object the operator would apply for the documents of `bundle`, as YAML: all
/// objects of each ServiceMesh, and for each Benchmark the load Job (with its plan) of
/// its first step on its first mesh.
pub fn render_bundle_yaml(bundle: &Bundle) -> Result<String> {
    render_bundle_yaml_with(bundle, &RenderOptions::default())
}

/// [`render_bundle_yaml`] with explicit options.
pub fn render_bundle_yaml_with(bundle: &Bundle, opts: &RenderOptions) -> Result<String> {
    if !bundle.is_valid() {
        let text: Vec<String> = bundle.diagnostics.iter().map(ToString::to_string).collect();
        return Err(RenderError::Invalid(text.join("\n")));
    }
    let mut values = Vec::new();
    for doc in &bundle.meshes {
        let mesh = ValidMesh::new(doc.mesh.clone()).map_err(invalid)?;
        values.extend(render_mesh(&mesh, opts)?.values()?);
    }
    for doc in &bundle.benchmarks {
        values.extend(first_load_job(bundle, &doc.benchmark, opts)?);
    }
    to_yaml_stream(&values)
}

/// The plan ConfigMap and the Job of `bench`'s first step on its first mesh, as a
/// preview run.
fn first_load_job(
    bundle: &Bundle,
    bench: &Benchmark,
    opts: &RenderOptions,
) -> Result<Vec<serde_json::Value>> {
    let meshes: Vec<&ServiceMesh> = bundle.meshes.iter().map(|d| &d.mesh).collect();
    let bench = ValidBenchmark::new(bench.clone(), &meshes).map_err(invalid)?;
    let Some(mesh_ref) = bench.spec().meshes.first() else {
        return Ok(Vec::new());
    };
    let mesh = bundle
        .mesh(mesh_ref)
        .ok_or_else(|| RenderError::MeshNotFound {
            benchmark: bench.name().to_string(),
            mesh: mesh_ref.clone(),
        })?;
    let first = bench
        .steps()
        .first()
        .ok_or_else(|| RenderError::NoSteps(bench.name().to_string()))?;
    let objects = render_load_job(
        &LoadStep {
            benchmark: &bench,
            mesh,
            run_id: "preview",
            step: first,
            ordinal: 0,
            repetition: 0,
            with_warmup: true,
            start_at_unix_ms: None,
        },
        opts,
    )?;
    Ok(vec![value(&objects.plan_config_map)?, value(&objects.job)?])
}

/// A spec the bundle's own validation passed cannot fail here; if it did, its problems
/// are reported as the bundle's would be.
fn invalid(e: Invalid) -> RenderError {
    RenderError::Invalid(e.to_string())
}
