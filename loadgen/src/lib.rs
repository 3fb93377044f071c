//! meshbench load generator: load plans, results and (feature `runner`) the Goose runner.
//!
//! - [`load_plan`]: the [`load_plan::LoadPlan`] a run executes (stages or sweep, open or
//!   closed loop).
//! - [`result`]: the versioned [`result::LoadResult`] with HDR histograms and an exact merge.
//!
//! Both compile without the default `runner` feature, for consumers such as the analysis
//! crate. With it:
//! - [`run_plan`] runs a plan in-process (the local runtime calls it per step);
//! - [`LoadgenArgs`] and [`main`] are the command line (`meshbench-loadgen` and
//!   `meshbench loadgen` both call [`main`]); [`run`] is its async part.

pub mod load_plan;
pub mod result;

#[cfg(feature = "runner")]
mod cli;
#[cfg(feature = "runner")]
mod client;
#[cfg(feature = "runner")]
mod collector;
#[cfg(feature = "runner")]
pub mod live;
#[cfg(feature = "runner")]
pub mod runner;
#[cfg(feature = "runner")]
mod schedule;

#[cfg(feature = "runner")]
pub use cli::{
    LoadgenArgs, cancel_on_signals, main, parse_start_at, plan_from_args, post_result, run, runtime,
};
#[cfg(feature = "runner")]
pub use collector::RequestRecord;
#[cfg(feature = "runner")]
pub use runner::{Pacing, RunOptions, RunnerError, Tick, run_plan};
#[cfg(feature = "runner")]
pub use tokio_util::sync::CancellationToken;

pub use load_plan::LoadPlan;
pub use result::LoadResult;
