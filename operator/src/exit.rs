//! Exit codes of `meshbench`, documented in the README so CI pipelines can rely on them.
//! They are the one table of all three programs (`meshbench_common::exit`): the `worker`
//! and `loadgen` subcommands exit exactly as `meshbench-worker` and `meshbench-loadgen` do.

pub use meshbench_common::exit::*;
