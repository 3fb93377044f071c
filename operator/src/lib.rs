//! meshbench orchestration: the `meshbench` CLI, experiment planning, and (in later
//! modules) the local runtime and the Kubernetes controllers.

pub mod capacity_plan;
pub mod cli;
pub mod convert;
pub mod exit;
pub mod experiment;
pub mod k8s;
pub mod local;
pub mod node;
pub mod run;
pub mod search;
pub mod simulate;
pub mod trials;
pub mod tune;
pub mod worker_config;
