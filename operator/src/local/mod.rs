//! The local platform.

pub mod cgroup;
pub mod exporter;
pub mod hpa;
pub mod hpa_view;
pub mod node;
pub mod platform;
pub mod pods;
pub mod prometheus;
pub mod proxy;
pub mod sampler;
