//! The Kubernetes side of the operator, in one test binary: every test here links kube,
//! k8s-openapi, polars and the controllers, and one binary links them once instead of
//! once per file (each link is over a gigabyte of debug objects on a cold build).
//!
//! Tests that talk to an API server use the real control plane of [`cluster`] (etcd,
//! kube-apiserver and kube-controller-manager built from their Go modules by
//! `scripts/control-plane.sh`); the test plays the kubelet ([`kubelet`]) for the pods the
//! real controllers create. [`node`] starts a second control plane with kube-scheduler
//! and the real node agent (`meshbench node`) instead, and checks the agent;
//! [`node_experiments`] runs whole experiments through it.

mod cluster;
#[path = "../common/csv.rs"]
mod csv;
mod kubelet;

mod bench_controller;
mod collect;
mod crds;
mod deploy;
mod leader;
mod lifecycle;
mod mesh_controller;
mod node;
mod node_experiments;
mod render;
mod results;
mod schema;
