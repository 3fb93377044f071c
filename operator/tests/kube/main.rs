//! The Kubernetes side of the operator, in one test binary: every test here links kube,
//! k8s-openapi, polars and the controllers, and one binary links them once instead of
//! once per file (each link is over a gigabyte of debug objects on a cold build).

mod fake_api;

mod bench_controller;
mod collect;
mod deploy;
mod leader;
mod mesh_controller;
mod render;
mod schema;
