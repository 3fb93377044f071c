//! meshbench's pods as processes, shared by the local platform (`meshbench run`) and the
//! node agent (`meshbench node`):
//!
//! - [`pods`]: the supervisor: a process per replica with its restart policy and the
//!   kubelet's back-off, status and lifecycle events;
//! - [`cgroup`]: a cgroup per replica for CPU and memory limits and accounting;
//! - [`node`]: the machine as a node, what it can allocate and the scheduler's fit check;
//! - [`proxy`]: a Service as a per-connection proxy with readiness probing;
//! - [`sampler`]: the workers' own metrics, parsed from their exposition text.

pub mod cgroup;
pub mod node;
pub mod pods;
pub mod proxy;
pub mod sampler;
