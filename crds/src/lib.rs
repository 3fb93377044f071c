//! meshbench API types (`ServiceMesh`, `Benchmark`, group `meshbench.io/v1alpha1`),
//! loading of multi-document YAML with precise diagnostics, semantic validation, the
//! effective (defaulted) view of a mesh, and import from the Go/Python prototype.

pub mod benchmark;
pub mod diag;
pub mod import;
pub mod load;
pub mod locate;
pub mod mesh;
pub mod resolve;
pub mod units;
pub mod validate;

pub use benchmark::{Benchmark, BenchmarkSpec, BenchmarkStatus};
pub use diag::Diagnostic;
pub use load::{BenchmarkDoc, Bundle, MeshDoc};
pub use mesh::{ServiceMesh, ServiceMeshSpec, ServiceMeshStatus};
pub use validate::{Invalid, ValidBenchmark, ValidMesh};

use kube::CustomResourceExt;

/// The CustomResourceDefinitions of both kinds as one multi-document YAML stream, exactly
/// as committed under `deploy/crds/` (a test fails when they drift).
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in [ServiceMesh::crd(), Benchmark::crd()] {
        out.push_str("---\n");
        // Serialising a generated CRD cannot fail: it is plain data without maps keyed by
        // non-strings.
        out.push_str(&serde_yaml::to_string(&crd).unwrap_or_default());
    }
    out
}
