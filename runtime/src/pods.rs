//! Replicas as OS processes, supervised like the kubelet supervises a pod's container.
//!
//! Each [`Replica`] runs its program in its own process group and cgroup, with stdout
//! and stderr appended to `<log_dir>/<pod>.log`. A supervisor task restarts it whenever
//! it exits (restartPolicy `Always`, as for a Deployment), with the kubelet's
//! CrashLoopBackOff timing (see [`PodsConfig::backoff`]): the first restart at once, then
//! 10 s doubling to 5 min, forgotten once the replica ran 10 min. Every transition is sent
//! as a [`PodEvent`].
//!
//! Start gating: a process must be in its cgroup before it runs any of its own code (a
//! fork after the move inherits the group; before it would escape the limit). Without
//! `pre_exec` (unsafe is forbidden), the child starts as `/bin/sh -c 'read; exec …'`,
//! blocked on a line from its stdin; the supervisor writes the pid into `cgroup.procs`
//! and only then sends the line, so the program is exec'd already inside the group.
//! The shell `exec`s, so the pid is the program's pid and nothing extra stays around.
//!
//! No orphans: stop is SIGTERM to the process group, a grace period, then SIGKILL to the
//! group and the cgroup. Should the runner die without stopping (SIGKILL, abort),
//! - the program is started through `setpriv --pdeathsig KILL` (util-linux) when that is
//!   installed, so the kernel kills it when the runner's thread that spawned it exits;
//! - `MESHBENCH_PARENT_PID` holds the runner's pid, so the worker can exit when its
//!   parent changes (see notes/local.md);
//! - the next run's [`crate::cgroup::cleanup_stale`] kills what is left in the
//!   dead run's cgroups.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::cgroup::{self, Cgroup, CgroupRoot, Limits};

/// Replaced in [`ReplicaSpec::args`] and env values by the port chosen for the replica.
pub const PORT_PLACEHOLDER: &str = "{port}";

/// Env var carrying the runner's pid to every replica (see the module docs).
pub const PARENT_PID_ENV: &str = "MESHBENCH_PARENT_PID";

/// Exit code of the start gate when the runner went away before releasing it.
const GATE_ABORTED: i32 = 125;

/// How many immediate restarts on a fresh port a bind failure gets before it counts as
/// a crash.
const BIND_RETRIES: u32 = 5;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    /// The replica's cgroup could not be created or joined.
    #[error("cgroup of pod {pod}: {source}")]
    Cgroup {
        /// The pod.
        pod: String,
        /// What failed.
        source: cgroup::CgroupError,
    },
    /// The log file could not be opened or written.
    #[error("log file {path} of pod {pod}: {source}")]
    Log {
        /// The pod.
        pod: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The program could not be started.
    #[error("cannot start {program} for pod {pod}: {source}")]
    Spawn {
        /// The pod.
        pod: String,
        /// The program.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No free loopback port could be found.
    #[error("no free port on 127.0.0.1: {0}")]
    Port(std::io::Error),
    /// A spec field is unusable.
    #[error("invalid replica spec: {0}")]
    Spec(String),
    /// A pod of that name is already running.
    #[error("pod {0} is already running")]
    Duplicate(String),
}

/// Result alias for this module.
pub type Result<T, E = PodsError> = std::result::Result<T, E>;

/// What to run for one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSpec {
    /// Service (Deployment) name.
    pub service: String,
    /// Replica index; the pod is named `<service>-<index>`.
    pub index: u32,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments; [`PORT_PLACEHOLDER`] is replaced by the replica's port.
    pub args: Vec<String>,
    /// Extra environment (the runner's environment is inherited); values may contain
    /// [`PORT_PLACEHOLDER`]. `POD_NAME` and [`PARENT_PID_ENV`] are always set.
    pub env: Vec<(String, String)>,
    /// CPU limit in millicores.
    pub cpu_limit_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// CPU request in millicores: the replica's weight when CPU is contended.
    pub cpu_request_millis: Option<u64>,
    /// When the program is started again after it exits (the pod's `restartPolicy`).
    pub restart: RestartPolicy,
    /// The replica's address: `127.0.0.1` for `meshbench run`, a pod IP of its own under
    /// the node agent.
    pub ip: Ipv4Addr,
    /// Working directory of the program (the runner's when `None`).
    pub cwd: Option<PathBuf>,
    /// Whether the program inherits the runner's environment (`meshbench run`) or
    /// starts from `env` and `PATH` alone, as a container does (the node agent: its own
    /// credentials must not leak into pods).
    pub inherit_env: bool,
}

/// A pod's `restartPolicy`: whether the supervisor starts the program again after an
/// exit (with the CrashLoopBackOff delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum RestartPolicy {
    /// After every exit (Deployments).
    #[default]
    Always,
    /// After a non-zero exit or a kill only (Jobs that retry in place).
    OnFailure,
    /// Never: the first exit is final (Job pods).
    Never,
}

impl RestartPolicy {
    /// Whether an exit with `code` (None: killed by a signal) is followed by a restart.
    pub fn restarts_after(self, code: Option<i32>) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != Some(0),
            RestartPolicy::Never => false,
        }
    }
}

/// How one run of the program ended (the container's `lastState.terminated`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitRecord {
    /// Exit code; 128 + signal when killed, as a container runtime reports it.
    pub code: i32,
    /// The terminating signal, when killed.
    pub signal: Option<i32>,
    /// Killed by the OOM killer for its memory limit.
    pub oom_killed: bool,
    /// When that run started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
}

impl ReplicaSpec {
    /// The pod name, `<service>-<index>`.
    pub fn pod_name(&self) -> String {
        format!("{}-{}", self.service, self.index)
    }

    /// Whether the program is told its port (otherwise it keeps the one it chose, and a
    /// bind failure cannot be cured by moving it).
    fn uses_port_placeholder(&self) -> bool {
        self.args
            .iter()
            .chain(self.env.iter().map(|(_, v)| v))
            .any(|a| a.contains(PORT_PLACEHOLDER))
    }

    fn limits(&self) -> Limits {
        Limits {
            cpu_millis: self.cpu_limit_millis,
            memory_bytes: self.memory_limit_bytes,
            cpu_request_millis: self.cpu_request_millis,
        }
    }
}

/// Supervision settings shared by all replicas of a run. [`PodsConfig::new`] gives the
/// kubelet's, so a replica crashes, restarts and stops on a cluster's schedule.
#[derive(Debug, Clone)]
pub struct PodsConfig {
    /// Directory of the per-replica log files (created if missing).
    pub log_dir: PathBuf,
    /// Delay before the second restart of a crash streak (kubelet: 10 s); doubled per
    /// restart after it. The first restart has none.
    pub backoff_base: Duration,
    /// Longest restart delay (kubelet: 5 min).
    pub backoff_cap: Duration,
    /// A replica that ran longer than this before exiting starts a new crash streak, so
    /// restarts at once (kubelet: 10 min).
    pub backoff_reset_after: Duration,
    /// Time between SIGTERM and SIGKILL on stop (terminationGracePeriodSeconds: 30 s).
    pub termination_grace: Duration,
}

impl PodsConfig {
    /// Kubernetes defaults, logs in `log_dir`. The back-off numbers are the kubelet's
    /// (pkg/kubelet/kubelet.go): `initialCrashLoopBackOff` 10 s (`backOffPeriod` in older
    /// kubelets) and `MaxCrashLoopBackOff` = `v1beta1.MaxContainerBackOff` 300 s, and its
    /// back-off entry expires when a container ran more than 600 s (`HasExpiredFunc`; in
    /// older kubelets client-go `flowcontrol.Backoff`'s `hasExpired`, twice the 300 s
    /// cap). The `ReduceDefaultCrashLoopBackOffDecay` gate (1 s to 60 s) is alpha, off by
    /// default. 30 s is the API's default `terminationGracePeriodSeconds`.
    pub fn new(log_dir: impl Into<PathBuf>) -> Self {
        Self {
            log_dir: log_dir.into(),
            backoff_base: Duration::from_secs(10),
            backoff_cap: Duration::from_secs(300),
            backoff_reset_after: Duration::from_secs(600),
            termination_grace: Duration::from_secs(30),
        }
    }

    /// Delay before restart number `attempt` (1-based) of a crash streak. As the
    /// kubelet's `doBackOff` (pkg/kubelet/kuberuntime/kuberuntime_manager.go): a container
    /// without a back-off entry starts at once and `Backoff.Next` sets the entry to the
    /// base; each later crash waits the entry, then doubles it up to the cap. So: 0, base,
    /// 2 base, 4 base, … cap.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let Some(doublings) = attempt.checked_sub(2) else {
            return Duration::ZERO;
        };
        let factor = 2u32.saturating_pow(doublings.min(31));
        self.backoff_base
            .checked_mul(factor)
            .unwrap_or(self.backoff_cap)
            .min(self.backoff_cap)
    }

    /// The crash streak after a run of `ran` that followed `streak` crashes in a row ended
    /// in a crash: the kubelet forgets the back-off of a container that ran longer than
    /// `backoff_reset_after`, so a long run starts the count over.
    pub fn crash_streak(&self, streak: u32, ran: Duration) -> u32 {
        if ran > self.backoff_reset_after {
            1
        } else {
            streak.saturating_add(1)
        }
    }
}

/// A replica lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodEvent {
    /// When it happened.
    pub ts: DateTime<Utc>,
    /// The pod.
    pub pod: String,
    /// What happened.
    pub kind: PodEventKind,
}

/// Kinds of [`PodEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PodEventKind {
    /// The program runs (inside its cgroup), serving on `addr` if it honours the port.
    Started {
        /// Its pid (also its process group id).
        pid: u32,
        /// `127.0.0.1:<port>`.
        addr: SocketAddr,
    },
    /// It exited on its own (or by a signal from outside).
    Exited {
        /// Exit code, when it exited normally.
        code: Option<i32>,
        /// Terminating signal, when killed.
        signal: Option<i32>,
    },
    /// It was killed by the OOM killer because of its memory limit.
    OomKilled,
    /// It is being started again after back-off (`attempt` counts restarts, from 1).
    Restarted {
        /// Restart number.
        attempt: u32,
    },
    /// It was stopped by the runner and will not be restarted.
    Stopped,
}

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PodPhase {
    /// Running.
    Running,
    /// Exited, waiting for its restart delay (CrashLoopBackOff).
    BackOff,
    /// Being stopped (SIGTERM sent).
    Terminating,
    /// Stopped for good.
    Stopped,
}

/// The current state of a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaStatus {
    /// Pod name.
    pub pod: String,
    /// Phase.
    pub phase: PodPhase,
    /// Pid of the running program.
    pub pid: Option<u32>,
    /// Address given to the current (or last) run.
    pub addr: SocketAddr,
    /// Restarts so far.
    pub restarts: u32,
    /// When the current run started.
    pub started_at: Option<DateTime<Utc>>,
    /// How the last run ended, once one has.
    pub last_exit: Option<ExitRecord>,
}

/// Picks a loopback port that is free right now (bind to port 0, read, close) and that
/// this process has not handed out recently, so two replicas started together do not get
/// the same one. Another process can still take it before the replica binds; the
/// supervisor then restarts the replica on a new port.
pub fn pick_free_port() -> Result<u16> {
    static RECENT: OnceLock<Mutex<std::collections::VecDeque<u16>>> = OnceLock::new();
    let recent = RECENT.get_or_init(Default::default);
    for _ in 0..64 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(PodsError::Port)?;
        let port = listener.local_addr().map_err(PodsError::Port)?.port();
        drop(listener);
        let mut recent = recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.contains(&port) {
            continue;
        }
        if recent.len() >= 4096 {
            recent.pop_front();
        }
        recent.push_back(port);
        return Ok(port);
    }
    Err(PodsError::Port(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "every port offered by the kernel was handed out recently",
    )))
}

/// Whether `setpriv --pdeathsig` works here (checked once).
fn setpriv_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        std::process::Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn sh_available() -> bool {
    Path::new("/bin/sh").exists()
}

/// Text of a log file from `offset` on (at most its last 64 KiB).
fn log_tail(path: &Path, offset: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = offset.max(len.saturating_sub(64 * 1024));
    if f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(64 * 1024).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn looks_like_bind_failure(log: &str) -> bool {
    let l = log.to_ascii_lowercase();
    l.contains("address already in use") || l.contains("os error 98") || l.contains("eaddrinuse")
}

/// What ended a run of the program.
enum RunEnd {
    Exited(std::process::ExitStatus),
    StopRequested(Duration),
}

/// The supervisor's port and counts, carried from one start of the program to the next.
struct Restarts {
    /// Port of the next start.
    port: u16,
    /// Restarts so far.
    restarts: u32,
    /// Crashes in a row, for the back-off.
    crash_streak: u32,
    /// Immediate restarts on a fresh port after a bind failure.
    bind_failures: u32,
}

/// One exit of the program, with what is needed to judge it.
struct Exit {
    status: std::process::ExitStatus,
    pid: u32,
    started: Instant,
    /// The cgroup's OOM kill count before the start.
    oom_before: u64,
    /// Where this start's output begins in the log.
    log_offset: u64,
}

struct Supervisor {
    spec: ReplicaSpec,
    pod: String,
    cfg: Arc<PodsConfig>,
    cgroup: Arc<Cgroup>,
    events: mpsc::UnboundedSender<PodEvent>,
    status: watch::Sender<ReplicaStatus>,
    stop: watch::Receiver<Option<Duration>>,
    log_path: PathBuf,
    /// Process group of the running program, 0 when none; read by `Replica::drop`.
    pgid: Arc<AtomicI32>,
}

impl Supervisor {
    fn emit(&self, kind: PodEventKind) {
        tracing::debug!(pod = %self.pod, ?kind, "pod event");
        let _ = self.events.send(PodEvent {
            ts: Utc::now(),
            pod: self.pod.clone(),
            kind,
        });
    }

    fn set_status(&self, f: impl FnOnce(&mut ReplicaStatus)) {
        self.status.send_modify(f);
    }

    fn open_log(&self, attempt: u32, port: u16) -> Result<(std::fs::File, u64)> {
        let err = |source| PodsError::Log {
            pod: self.pod.clone(),
            path: self.log_path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(err)?;
        let offset = file.metadata().map_err(err)?.len();
        writeln!(
            file,
            "=== meshbench: {} start #{attempt} at {} on {}:{port}: {} {}",
            self.pod,
            Utc::now().to_rfc3339(),
            self.spec.ip,
            self.spec.program.display(),
            self.spec.args.join(" ")
        )
        .map_err(err)?;
        Ok((file, offset))
    }

    /// Starts the program inside the cgroup; returns the child and its pid.
    async fn spawn(&self, port: u16, attempt: u32) -> Result<(Child, u32, u64)> {
        let (log, offset) = self.open_log(attempt, port)?;
        let log_err = log.try_clone().map_err(|source| PodsError::Log {
            pod: self.pod.clone(),
            path: self.log_path.clone(),
            source,
        })?;
        let port_s = port.to_string();
        let subst = |s: &str| s.replace(PORT_PLACEHOLDER, &port_s);

        let mut argv: Vec<String> = Vec::new();
        if setpriv_available() {
            argv.extend(["setpriv", "--pdeathsig", "KILL", "--"].map(String::from));
        }
        argv.push(self.spec.program.to_string_lossy().into_owned());
        argv.extend(self.spec.args.iter().map(|a| subst(a)));

        let gated = self.cgroup.is_enforced() && sh_available();
        let mut cmd = if gated {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(format!(
                    "IFS= read -r _ || exit {GATE_ABORTED}; exec \"$@\" </dev/null"
                ))
                .arg("meshbench-pod")
                .args(&argv)
                .stdin(Stdio::piped());
            c
        } else {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]).stdin(Stdio::null());
            c
        };
        if !self.spec.inherit_env {
            cmd.env_clear().env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        if let Some(dir) = &self.spec.cwd {
            cmd.current_dir(dir);
        }
        cmd.stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .env("POD_NAME", &self.pod)
            .env(PARENT_PID_ENV, std::process::id().to_string());
        for (k, v) in &self.spec.env {
            cmd.env(k, subst(v));
        }
        let spawn_err = |source| PodsError::Spawn {
            pod: self.pod.clone(),
            program: self.spec.program.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let Some(pid) = child.id() else {
            return Err(spawn_err(std::io::Error::other(
                "exited before its pid was read",
            )));
        };
        self.pgid.store(pid as i32, Ordering::SeqCst);
        if !gated && self.cgroup.is_enforced() {
            tracing::warn!(pod = %self.pod, "no /bin/sh for start gating; joining the cgroup right after spawn");
        }
        if let Err(source) = self.cgroup.add_pid(pid) {
            let _ = child.start_kill();
            let _ = child.wait().await;
            self.pgid.store(0, Ordering::SeqCst);
            return Err(PodsError::Cgroup {
                pod: self.pod.clone(),
                source,
            });
        }
        if let Some(mut stdin) = child.stdin.take() {
            // A failed write means the gate already died; wait() will report it.
            let _ = stdin.write_all(b"go\n").await;
            let _ = stdin.shutdown().await;
        }
        Ok((child, pid, offset))
    }

    async fn wait_or_stop(&mut self, child: &mut Child) -> RunEnd {
        loop {
            if let Some(grace) = *self.stop.borrow_and_update() {
                return RunEnd::StopRequested(grace);
            }
            tokio::select! {
                status = child.wait() => {
                    return match status {
                        Ok(s) => RunEnd::Exited(s),
                        // wait() fails only if the child was already reaped.
                        Err(_) => RunEnd::Exited(std::process::ExitStatus::from_raw(0)),
                    };
                }
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        // The Replica handle is gone without stop: stop right away.
                        return RunEnd::StopRequested(Duration::ZERO);
                    }
                }
            }
        }
    }

    fn kill_group(&self, pid: u32, signal: Signal) {
        let _ = killpg(Pid::from_raw(pid as i32), signal);
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL everything left.
    async fn terminate(&self, child: &mut Child, pid: u32, grace: Duration) {
        self.set_status(|s| s.phase = PodPhase::Terminating);
        self.kill_group(pid, Signal::SIGTERM);
        let exited = tokio::time::timeout(grace, child.wait()).await;
        if exited.is_err() {
            tracing::info!(pod = %self.pod, ?grace, "grace period over; SIGKILL");
        }
        self.kill_group(pid, Signal::SIGKILL);
        self.cgroup.kill_all();
        let _ = child.wait().await;
        self.pgid.store(0, Ordering::SeqCst);
    }

    async fn run(mut self) {
        let mut st = Restarts {
            port: self.status.borrow().addr.port(),
            restarts: 0,
            crash_streak: 0,
            bind_failures: 0,
        };
        loop {
            let oom_before = self.cgroup.oom_kills();
            let (mut child, pid, log_offset) = match self.spawn(st.port, st.restarts + 1).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "replica start failed");
                    self.emit(PodEventKind::Exited {
                        code: None,
                        signal: None,
                    });
                    st.crash_streak += 1;
                    if self.back_off(&mut st.restarts, st.crash_streak).await {
                        continue;
                    }
                    break;
                }
            };
            let started = Instant::now();
            self.mark_running(pid, st.port);

            match self.wait_or_stop(&mut child).await {
                RunEnd::StopRequested(grace) => {
                    self.terminate(&mut child, pid, grace).await;
                    break;
                }
                RunEnd::Exited(status) => {
                    let exit = Exit {
                        status,
                        pid,
                        started,
                        oom_before,
                        log_offset,
                    };
                    if !self.after_exit(&mut st, exit).await {
                        break;
                    }
                }
            }
        }
        self.set_status(|s| {
            s.phase = PodPhase::Stopped;
            s.pid = None;
        });
        self.emit(PodEventKind::Stopped);
    }

    /// The program started as `pid`, listening on `port`.
    fn mark_running(&self, pid: u32, port: u16) {
        let addr = SocketAddr::from((self.spec.ip, port));
        self.set_status(|s| {
            s.phase = PodPhase::Running;
            s.pid = Some(pid);
            s.addr = addr;
            s.started_at = Some(Utc::now());
        });
        self.emit(PodEventKind::Started { pid, addr });
    }

    /// Cleans up and reports an exited program, then restarts at once on a fresh port
    /// (a bind failure) or after the back-off; false when stopped meanwhile.
    async fn after_exit(&mut self, st: &mut Restarts, exit: Exit) -> bool {
        // The container's other processes die with its main process.
        self.kill_group(exit.pid, Signal::SIGKILL);
        self.cgroup.kill_all();
        self.pgid.store(0, Ordering::SeqCst);
        let ran = exit.started.elapsed();
        self.set_status(|s| {
            s.phase = PodPhase::BackOff;
            s.pid = None;
        });
        let oom_killed = self.cgroup.oom_kills() > exit.oom_before;
        self.record_exit(&exit, oom_killed);
        if oom_killed {
            self.emit(PodEventKind::OomKilled);
        } else {
            self.emit(PodEventKind::Exited {
                code: exit.status.code(),
                signal: exit.status.signal(),
            });
        }
        if !self.spec.restart.restarts_after(exit.status.code()) {
            return false;
        }
        if exit.status.code() != Some(0)
            && self.spec.uses_port_placeholder()
            && st.bind_failures < BIND_RETRIES
            && ran < Duration::from_secs(10)
            && looks_like_bind_failure(&log_tail(&self.log_path, exit.log_offset))
        {
            st.bind_failures += 1;
            if self.move_port(st) {
                return true;
            }
        }
        st.crash_streak = self.cfg.crash_streak(st.crash_streak, ran);
        self.back_off(&mut st.restarts, st.crash_streak).await
    }

    fn record_exit(&self, exit: &Exit, oom_killed: bool) {
        let signal = exit.status.signal();
        let code = exit
            .status
            .code()
            .unwrap_or_else(|| 128 + signal.unwrap_or(0));
        self.set_status(|s| {
            s.last_exit = Some(ExitRecord {
                code,
                signal,
                oom_killed,
                started_at: s.started_at,
                finished_at: Utc::now(),
            });
        });
    }

    /// After a bind failure: picks a free port and counts a restart; false when no port
    /// could be picked.
    fn move_port(&self, st: &mut Restarts) -> bool {
        match pick_free_port() {
            Ok(p) => {
                tracing::info!(pod = %self.pod, old = st.port, new = p, "port taken; restarting on another");
                st.port = p;
                st.restarts += 1;
                let restarts = st.restarts;
                self.set_status(|s| s.restarts = restarts);
                self.emit(PodEventKind::Restarted { attempt: restarts });
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "no new port");
                false
            }
        }
    }

    /// Waits the CrashLoopBackOff delay; false when stopped meanwhile.
    async fn back_off(&mut self, restarts: &mut u32, crash_streak: u32) -> bool {
        let delay = self.cfg.backoff(crash_streak);
        self.set_status(|s| s.phase = PodPhase::BackOff);
        tracing::info!(pod = %self.pod, ?delay, "back-off before restart");
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            if self.stop.borrow_and_update().is_some() {
                return false;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                changed = self.stop.changed() => if changed.is_err() { return false },
            }
        }
        *restarts += 1;
        self.set_status(|s| s.restarts = *restarts);
        self.emit(PodEventKind::Restarted { attempt: *restarts });
        true
    }
}

/// One supervised replica. Dropping it without [`Replica::stop`] SIGKILLs its processes.
pub struct Replica {
    pod: String,
    spec: ReplicaSpec,
    cgroup: Arc<Cgroup>,
    status: watch::Receiver<ReplicaStatus>,
    stop: watch::Sender<Option<Duration>>,
    task: Option<JoinHandle<()>>,
    pgid: Arc<AtomicI32>,
    default_grace: Duration,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("pod", &self.pod)
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl Replica {
    /// Creates the replica's cgroup with its limits and starts the supervisor (the first
    /// start happens on the supervisor task; watch [`PodEventKind::Started`] or
    /// [`Replica::status`]). Must be called within a tokio runtime.
    pub fn start(
        spec: ReplicaSpec,
        cgroups: &CgroupRoot,
        cfg: Arc<PodsConfig>,
        events: mpsc::UnboundedSender<PodEvent>,
    ) -> Result<Self> {
        let pod = spec.pod_name();
        if spec.service.is_empty() {
            return Err(PodsError::Spec("service name is empty".into()));
        }
        if spec.program.as_os_str().is_empty() {
            return Err(PodsError::Spec(format!("pod {pod}: program is empty")));
        }
        std::fs::create_dir_all(&cfg.log_dir).map_err(|source| PodsError::Log {
            pod: pod.clone(),
            path: cfg.log_dir.clone(),
            source,
        })?;
        let cgroup =
            Arc::new(
                cgroups
                    .replica(&pod, spec.limits())
                    .map_err(|source| PodsError::Cgroup {
                        pod: pod.clone(),
                        source,
                    })?,
            );
        let port = pick_free_port()?;
        let (status_tx, status_rx) = watch::channel(ReplicaStatus {
            pod: pod.clone(),
            phase: PodPhase::BackOff,
            pid: None,
            addr: SocketAddr::from((spec.ip, port)),
            restarts: 0,
            started_at: None,
            last_exit: None,
        });
        let (stop_tx, stop_rx) = watch::channel(None);
        let pgid = Arc::new(AtomicI32::new(0));
        let sup = Supervisor {
            spec: spec.clone(),
            pod: pod.clone(),
            log_path: cfg.log_dir.join(format!("{pod}.log")),
            cfg: cfg.clone(),
            cgroup: cgroup.clone(),
            events,
            status: status_tx,
            stop: stop_rx,
            pgid: pgid.clone(),
        };
        let task = tokio::spawn(sup.run());
        Ok(Self {
            pod,
            spec,
            cgroup,
            status: status_rx,
            stop: stop_tx,
            task: Some(task),
            pgid,
            default_grace: cfg.termination_grace,
        })
    }

    /// Pod name.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// The spec it runs.
    pub fn spec(&self) -> &ReplicaSpec {
        &self.spec
    }

    /// The replica's cgroup, for accounting reads ([`Cgroup::stats`]).
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// The replica's cgroup, shared (for readers that outlive a borrow).
    pub fn shared_cgroup(&self) -> Arc<Cgroup> {
        self.cgroup.clone()
    }

    /// Current status.
    pub fn status(&self) -> ReplicaStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<ReplicaStatus> {
        self.status.clone()
    }

    /// Gracefully stops the replica (SIGTERM, `grace`, SIGKILL; `None` = the configured
    /// termination grace), waits for it, and removes its cgroup.
    pub async fn stop(mut self, grace: Option<Duration>) {
        let grace = grace.unwrap_or(self.default_grace);
        let _ = self.stop.send(Some(grace));
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!(pod = %self.pod, error = %e, "supervisor task failed");
        }
        // Removal retries rmdir with sleeps while the kernel finishes exiting tasks
        // (seconds, per hierarchy); on an async worker that would stall whatever else it
        // runs, the in-process load generator included.
        let cgroup = self.cgroup.clone();
        let removed = tokio::task::spawn_blocking(move || cgroup.remove()).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(pod = %self.pod, error = %e, "cannot remove the replica's cgroup")
            }
            Err(e) => tracing::warn!(pod = %self.pod, error = %e, "cgroup removal task failed"),
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let pgid = self.pgid.load(Ordering::SeqCst);
            if pgid > 0 {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            self.cgroup.kill_all();
        }
    }
}

/// The replicas of a run, by pod name.
pub struct Pods {
    cfg: Arc<PodsConfig>,
    cgroups: CgroupRoot,
    events: mpsc::UnboundedSender<PodEvent>,
    replicas: Mutex<BTreeMap<String, Replica>>,
}

impl std::fmt::Debug for Pods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pods")
            .field("cgroups", &self.cgroups)
            .field("pods", &self.pods())
            .finish()
    }
}

impl Pods {
    /// A new, empty set of replicas; events of all of them go to the returned receiver.
    pub fn new(cfg: PodsConfig, cgroups: CgroupRoot) -> (Self, mpsc::UnboundedReceiver<PodEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                cfg: Arc::new(cfg),
                cgroups,
                events: tx,
                replicas: Mutex::new(BTreeMap::new()),
            },
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Replica>> {
        self.replicas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cgroups of the run.
    pub fn cgroups(&self) -> &CgroupRoot {
        &self.cgroups
    }

    /// Starts a replica; fails if a pod of that name is running.
    pub fn start(&self, spec: ReplicaSpec) -> Result<ReplicaStatus> {
        let pod = spec.pod_name();
        let mut map = self.lock();
        if map.contains_key(&pod) {
            return Err(PodsError::Duplicate(pod));
        }
        let replica = Replica::start(spec, &self.cgroups, self.cfg.clone(), self.events.clone())?;
        let status = replica.status();
        map.insert(pod, replica);
        Ok(status)
    }

    /// Names of the managed pods.
    pub fn pods(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Status of every replica.
    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        self.lock().values().map(Replica::status).collect()
    }

    /// Status of one replica.
    pub fn status(&self, pod: &str) -> Option<ReplicaStatus> {
        self.lock().get(pod).map(Replica::status)
    }

    /// Status watch of one replica.
    pub fn watch(&self, pod: &str) -> Option<watch::Receiver<ReplicaStatus>> {
        self.lock().get(pod).map(Replica::watch)
    }

    /// Accounting of one replica (`Ok(None)` without cgroups or for an unknown pod).
    pub fn stats(&self, pod: &str) -> cgroup::Result<Option<cgroup::CgroupStats>> {
        match self.lock().get(pod) {
            Some(r) => r.cgroup().stats(),
            None => Ok(None),
        }
    }

    /// Stops one replica gracefully (see [`Replica::stop`]); false if unknown.
    pub async fn stop(&self, pod: &str, grace: Option<Duration>) -> bool {
        let replica = self.lock().remove(pod);
        match replica {
            Some(r) => {
                r.stop(grace).await;
                true
            }
            None => false,
        }
    }

    /// Stops every replica concurrently with the configured grace period.
    pub async fn stop_all(&self) {
        let all: Vec<Replica> = std::mem::take(&mut *self.lock()).into_values().collect();
        futures::future::join_all(all.into_iter().map(|r| r.stop(None))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_restarts_at_once_then_doubles_and_caps_like_kubelet() {
        let cfg = PodsConfig::new("/tmp");
        let secs: Vec<u64> = (1..=8).map(|a| cfg.backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(cfg.backoff(0), Duration::ZERO);
        assert_eq!(cfg.backoff(1000), Duration::from_secs(300));
    }

    #[test]
    fn crash_streak_starts_over_after_ten_minutes_of_running() {
        let cfg = PodsConfig::new("/tmp");
        let min = |m: u64| Duration::from_secs(60 * m);
        // (run length before each crash, delay before the restart that follows it)
        let runs = [
            (min(0), 0),
            (min(1), 10),
            (min(9), 20),
            (min(10), 40),
            (min(10) + Duration::from_secs(1), 0),
            (min(0), 10),
        ];
        let mut streak = 0;
        for (i, (ran, want)) in runs.into_iter().enumerate() {
            streak = cfg.crash_streak(streak, ran);
            assert_eq!(
                cfg.backoff(streak).as_secs(),
                want,
                "crash {i} after {ran:?}"
            );
        }
    }

    #[test]
    fn free_ports_are_distinct() {
        let a = pick_free_port().unwrap_or(0);
        let b = pick_free_port().unwrap_or(0);
        assert!(a > 0 && b > 0 && a != b);
    }

    #[test]
    fn bind_failures_are_recognised() {
        assert!(looks_like_bind_failure(
            "Error: cannot listen on 127.0.0.1:5: Address already in use (os error 98)"
        ));
        assert!(!looks_like_bind_failure("panicked at src/main.rs"));
    }

    #[test]
    fn pod_name_is_service_dash_index() {
        let spec = ReplicaSpec {
            service: "front".into(),
            index: 3,
            program: "/bin/true".into(),
            args: vec![],
            env: vec![],
            cpu_limit_millis: None,
            memory_limit_bytes: None,
            cpu_request_millis: None,
            restart: RestartPolicy::Always,
            ip: std::net::Ipv4Addr::LOCALHOST,
            cwd: None,
            inherit_env: true,
        };
        assert_eq!(spec.pod_name(), "front-3");
    }
}
