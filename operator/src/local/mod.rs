//! The local platform.

pub mod cgroup;
pub mod hpa;
pub mod platform;
pub mod pods;
pub mod proxy;
pub mod sampler;
