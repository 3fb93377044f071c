//! meshbench orchestration: the `meshbench` CLI, experiment planning, and (in later
//! modules) the local runtime and the Kubernetes controllers.

pub mod cli;
pub mod exit;
