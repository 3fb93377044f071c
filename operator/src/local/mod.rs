//! The local platform: the HPA controller's algorithm, the mesh's services and their
//! replicas on this machine (through `meshbench_runtime`), and the local Prometheus.

pub mod exporter;
pub mod hpa;
pub mod hpa_view;
pub mod platform;
pub mod prometheus;
