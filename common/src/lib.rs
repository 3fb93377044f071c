//! Command-line conventions shared by the three meshbench programs: `meshbench`,
//! `meshbench-worker` and `meshbench-loadgen` (and the `meshbench worker` and
//! `meshbench loadgen` subcommands, which run the same `main` as the standalone binaries).
//!
//! - [`exit`]: the one exit-code table (documented in the README, "Exit codes");
//! - [`error`] and [`warning`]: the one message style on stderr, `error: …` / `warning: …`
//!   like clap's own usage errors, never prefixed with the program's name;
//! - [`duration`]: the one duration parser (`25ms`, `1.5s`, `1m30s`), used by every
//!   command-line flag, the CRDs and load plans;
//! - `logging` (feature `logging`): [`logging::LogArgs`] (`--log-format`) and the tracing
//!   set-up;
//! - [`names`]: Service names of pods under the node agent (its hosts file and search
//!   domains);
//! - `pacer` (feature `pacer`): sub-millisecond waits on a tokio runtime (the loadgen's
//!   open-loop sends, the worker's delays).
//!
//! This crate depends on neither kube nor polars nor goose, so the minimal worker image
//! stays free of them.

pub mod duration;
pub mod exit;
#[cfg(feature = "logging")]
pub mod logging;
pub mod names;
#[cfg(feature = "pacer")]
pub mod pacer;

/// Prints `error: <msg>` on stderr: a failure that ends the command.
pub fn error(msg: impl std::fmt::Display) {
    eprintln!("error: {msg}");
}

/// Prints `warning: <msg>` on stderr: something the user should know; the command goes on
/// (or ended with a partial result).
pub fn warning(msg: impl std::fmt::Display) {
    eprintln!("warning: {msg}");
}

/// Env var the node agent (`meshbench node`) sets to the loopback address it gave the
/// pod. Pods on one machine share its network stack; in a cluster each pod has a network
/// namespace of its own, where binding the wildcard address means the pod's IP.
pub const POD_IP_ENV: &str = "MESHBENCH_POD_IP";

/// The address to bind for `addr`: under the node agent a wildcard address becomes the
/// pod's IP (see [`POD_IP_ENV`]), so two pods can both listen on their container port.
/// Elsewhere, and for a specific address, `addr` itself.
pub fn pod_bind_addr(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if !addr.ip().is_unspecified() {
        return addr;
    }
    std::env::var(POD_IP_ENV)
        .ok()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map_or(addr, |ip| std::net::SocketAddr::new(ip, addr.port()))
}
