//! meshbench orchestration: the `meshbench` CLI, the experiment state machine shared by
//! both platforms, and the rendering of worker configs from a ServiceMesh.

pub mod cli;
pub mod exit;
pub mod experiment;
pub mod worker_config;
