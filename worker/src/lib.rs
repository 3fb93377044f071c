//! The generic meshbench worker: one HTTP service whose behaviour per endpoint comes
//! from a JSON config ([`WorkerConfig`]) rendered from a ServiceMesh.
//!
//! Per request an endpoint burns CPU time on the thread's CPU clock, holds memory, waits
//! a fixed or random delay, calls downstream services in parallel groups of sequential
//! calls, and may inject errors or shed load; it answers with a JSON envelope of what it
//! did. `/live`, `/ready` and `/metrics` (Prometheus) serve operations; with
//! `--health-port`, `/live` is also served on a port of its own by a dedicated thread
//! ([`health`]), which liveness probes use so that saturation cannot fail them.
//!
//! Entry points: [`main`] for the program (`meshbench-worker`, `meshbench worker`) and
//! [`run`] for its async part (both take [`WorkerArgs`]), [`serve`] to serve a config on a
//! bound listener, [`app`] for the bare router (tests can `oneshot` it).

pub mod cli;
pub mod config;
pub mod downstream;
pub mod health;
pub mod metrics;
pub mod server;
pub mod trace;
pub mod work;

pub use cli::{CliError, WorkerArgs, main, run};
pub use config::WorkerConfig;
pub use health::HealthServer;
pub use server::{WorkerState, app, serve, serve_state};
