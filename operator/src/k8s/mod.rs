//! The Kubernetes platform: what the operator applies (`render`, pure), the ServiceMesh
//! controller (`mesh_controller`), the Benchmark controller (`bench_controller`) with its
//! report volume (`store`), results endpoint (`results`) and report export (`export`),
//! `meshbench results` (`results_client`), the operator process (`operator`: leader
//! election (`leader`), health, metrics), the RBAC the code needs (`rbac`), the Pod
//! Security checks the rendered pods are tested against (`pss`), and Prometheus
//! collection (`promql`, `collect`).
//!
//! The module is called `k8s` rather than `kube` so it does not shadow the `kube` crate
//! inside this crate.

pub mod bench_controller;
pub mod collect;
pub mod export;
pub mod leader;
pub mod mesh_controller;
pub mod metrics;
pub mod operator;
pub mod promql;
pub mod pss;
pub mod rbac;
pub mod render;
pub mod results;
pub mod results_client;
pub mod shared;
pub mod store;
pub mod token;

/// Chooses rustls's crypto provider for the process, before any TLS connection (to the
/// API server, or S3). Both `ring` and `aws-lc-rs` are compiled in (kube uses the first,
/// goose's and object_store's HTTP clients bring the second), and with two rustls will
/// not pick one itself: the first TLS handshake would panic. Idempotent.
pub fn install_tls_provider() {
    // Err means a provider is already installed, which is all this wants.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The one server-side-apply field manager every object and status is written with.
pub const FIELD_MANAGER: &str = "meshbench";

/// Label and annotation keys.
pub mod keys {
    /// Mesh name (selector label).
    pub const MESH: &str = "meshbench.io/mesh";
    /// Service name (selector label).
    pub const SERVICE: &str = "meshbench.io/service";
    /// Benchmark name (load Jobs).
    pub const BENCHMARK: &str = "meshbench.io/benchmark";
    /// Run id (load Jobs).
    pub const RUN: &str = "meshbench.io/run";
    /// Step index (load Jobs).
    pub const STEP: &str = "meshbench.io/step";
    /// Hash of the worker config; changing it rolls the Deployment.
    pub const CONFIG_HASH: &str = "meshbench.io/config-hash";
    /// `app.kubernetes.io/name`.
    pub const APP_NAME: &str = "app.kubernetes.io/name";
    /// `app.kubernetes.io/instance`.
    pub const APP_INSTANCE: &str = "app.kubernetes.io/instance";
    /// `app.kubernetes.io/component`.
    pub const APP_COMPONENT: &str = "app.kubernetes.io/component";
    /// `app.kubernetes.io/part-of`.
    pub const APP_PART_OF: &str = "app.kubernetes.io/part-of";
    /// `app.kubernetes.io/managed-by`.
    pub const APP_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
}
