//! Sub-millisecond waits: the load generator's open-loop sends and the worker's delays.
//!
//! tokio's timer wheel has 1 ms ticks and fires a sleep at the first tick after its
//! deadline, so a request paced by `sleep_until` alone leaves 0–2 ms (and more under
//! load) after its planned time — an error every latency measured from the planned time
//! carries — and a worker's 2 ms delay takes about 3. Here every wait goes into one queue whose earliest deadline is armed on a
//! Linux `timerfd`; the runtime's own reactor watches that descriptor, and a driver task
//! wakes every waiter whose time has come. A timerfd is a high-resolution timer without
//! timer slack, so the reactor wakes at the deadline, and the waiter runs on the thread
//! that woke: no pacing thread, no spin, no cross-thread hand-off per request.
//!
//! A wait longer than 1 ms is armed 200 µs early and finished with a short second wait:
//! a CPU idle for milliseconds falls into a deep state (a halted vCPU under KVM) whose
//! exit took 100–200 µs here, while a 200 µs sleep is served from a shallow one. It cut
//! the send delay p99 at 100 rps from about 150 µs to about 85–130 µs, for one more
//! wake-up per request only where requests are at least 1 ms apart.
//!
//! The pacing thread this replaced (a condition variable with 1 µs slack and a 5 µs spin)
//! was as precise but cost about 30 µs of CPU per request at 5000 rps, twice what oha
//! spends on a whole request (`cargo bench -p meshbench-loadgen --bench loadgen`).
//! Elsewhere than Linux the pacer falls back to tokio's timer (1 ms).

#[cfg(target_os = "linux")]
pub use linux::Pacer;

#[cfg(not(target_os = "linux"))]
pub use fallback::Pacer;

#[cfg(target_os = "linux")]
mod linux {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::time::{Duration, Instant};

    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;
    use tokio::sync::oneshot;

    /// A wait longer than this lets the CPU fall into a deep idle state (a halted vCPU
    /// here), whose exit takes 100–200 µs: at 100 requests per second most of the send
    /// delay. Such a wait is armed [`PREWAKE`] early and finished with a short second wait,
    /// which the idle governor (or the hypervisor's halt polling) serves from a shallow
    /// state. Shorter waits, as at thousands of requests per second, get no second
    /// wake-up, so it costs CPU only where requests are few.
    const LONG_WAIT: Duration = Duration::from_millis(1);
    /// How early a long wait's first wake-up is.
    const PREWAKE: Duration = Duration::from_micros(200);

    struct Entry {
        at: Instant,
        seq: u64,
        wake: oneshot::Sender<()>,
    }

    impl PartialEq for Entry {
        fn eq(&self, other: &Self) -> bool {
            (self.at, self.seq) == (other.at, other.seq)
        }
    }
    impl Eq for Entry {}
    impl PartialOrd for Entry {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Entry {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            (self.at, self.seq).cmp(&(other.at, other.seq))
        }
    }

    #[derive(Default)]
    struct Queue {
        waiting: BinaryHeap<Reverse<Entry>>,
        /// The deadline the timer is armed for, if any.
        armed: Option<Instant>,
        seq: u64,
    }

    /// `AsyncFd` wants `AsRawFd`; nix's `TimerFd` offers `AsFd`.
    struct Timer(TimerFd);

    impl AsRawFd for Timer {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }

    struct Shared {
        queue: Mutex<Queue>,
        timer: AsyncFd<Timer>,
    }

    impl Shared {
        /// Queues a wake-up at `at`, arming the timer when it is the earliest; false when
        /// the timer could not be armed (nothing queued then).
        fn enqueue(&self, at: Instant, wake: oneshot::Sender<()>) -> bool {
            let mut q = self.lock();
            if q.armed.is_none_or(|armed| at < armed) && self.arm(&mut q, at).is_err() {
                return false;
            }
            let seq = q.seq;
            q.seq += 1;
            q.waiting.push(Reverse(Entry { at, seq, wake }));
            true
        }

        fn lock(&self) -> MutexGuard<'_, Queue> {
            // The queue holds only wake-ups; a poisoned one is still usable.
            self.queue.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Arms the timer for `at` ([`PREWAKE`] early for a long wait; the wake-up then
        /// finds nothing due and arms `at` itself). A zero relative time would disarm a
        /// timerfd, so a deadline already past is armed 1 ns ahead.
        fn arm(&self, q: &mut Queue, at: Instant) -> nix::Result<()> {
            let d = at.saturating_duration_since(Instant::now());
            let d = if d > LONG_WAIT { d - PREWAKE } else { d }.max(Duration::from_nanos(1));
            self.timer.get_ref().0.set(
                Expiration::OneShot(TimeSpec::from_duration(d)),
                TimerSetTimeFlags::empty(),
            )?;
            q.armed = Some(at);
            Ok(())
        }
    }

    /// The pacer of one run: a timerfd watched by the current runtime and the task that
    /// wakes waiters; the task ends when the pacer is dropped.
    pub struct Pacer {
        shared: Arc<Shared>,
        driver: tokio::task::JoinHandle<()>,
    }

    impl Pacer {
        /// Creates the timer and starts its driver task on the current tokio runtime
        /// (which must have I/O enabled); fails outside one.
        pub fn start() -> std::io::Result<Self> {
            let runtime = tokio::runtime::Handle::try_current()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let _entered = runtime.enter();
            let timer = TimerFd::new(
                ClockId::CLOCK_MONOTONIC,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )?;
            let shared = Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                timer: register(Timer(timer))?,
            });
            let driver = runtime.spawn(drive(shared.clone()));
            Ok(Self { shared, driver })
        }

        /// Waits until `at` with sub-millisecond precision.
        pub async fn sleep_until(&self, at: Instant) {
            if at <= Instant::now() {
                return;
            }
            let (wake, woken) = oneshot::channel();
            if !self.shared.enqueue(at, wake) {
                // Cannot happen with a valid descriptor; late beats never.
                tokio::time::sleep_until(at.into()).await;
                return;
            }
            // A dropped sender (the pacer stopped) also ends the wait.
            let _ = woken.await;
        }
    }

    impl std::fmt::Debug for Pacer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let waiting = self.shared.lock().waiting.len();
            f.debug_struct("Pacer").field("waiting", &waiting).finish()
        }
    }

    impl Drop for Pacer {
        fn drop(&mut self) {
            self.driver.abort();
        }
    }

    /// Registers the timer with the runtime's reactor. tokio deprecated the safe
    /// constructor because an `AsRawFd` could hand out a different descriptor later; a
    /// `Timer` owns its descriptor and always returns that one, and the workspace forbids
    /// `unsafe`, so the safe one is kept.
    #[allow(deprecated)]
    fn register(timer: Timer) -> std::io::Result<AsyncFd<Timer>> {
        AsyncFd::with_interest(timer, Interest::READABLE)
    }

    /// Waits for the timer, wakes every waiter whose time has come, arms the next
    /// deadline; ends when the runtime's reactor goes away.
    async fn drive(shared: Arc<Shared>) {
        // Set when the timer could not be armed: the next deadline is then kept by tokio.
        let mut fallback: Option<Instant> = None;
        loop {
            match fallback {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => {
                    let Ok(mut ready) = shared.timer.readable().await else {
                        return;
                    };
                    // A one-shot timer has at most one expiry pending, so one read takes
                    // it and the readiness is cleared by hand: the read that would only
                    // return EAGAIN is a syscall per request at high rates. A readiness
                    // event newer than this guard survives the clear (tokio's tick check).
                    let _ = ready.get_inner().0.wait();
                    ready.clear_ready();
                }
            }
            fallback = wake_due(&shared);
        }
    }

    /// Wakes the due waiters and arms the timer for the next one; returns that deadline
    /// if arming failed.
    fn wake_due(shared: &Shared) -> Option<Instant> {
        let mut q = shared.lock();
        let now = Instant::now();
        while q.waiting.peek().is_some_and(|Reverse(e)| e.at <= now) {
            if let Some(Reverse(e)) = q.waiting.pop() {
                let _ = e.wake.send(());
            }
        }
        q.armed = None;
        let next = q.waiting.peek().map(|Reverse(e)| e.at)?;
        shared.arm(&mut q, next).err().map(|_| next)
    }
}

#[cfg(not(target_os = "linux"))]
mod fallback {
    use std::time::Instant;

    /// tokio's timer: 1 ms resolution.
    #[derive(Debug)]
    pub struct Pacer;

    impl Pacer {
        /// Always succeeds.
        pub fn start() -> std::io::Result<Self> {
            Ok(Self)
        }

        /// Waits until `at` on tokio's timer.
        pub async fn sleep_until(&self, at: Instant) {
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    /// Lateness of each waiter (negative never: an early wake is an error).
    async fn one_round(pacer: &Arc<Pacer>, offsets_us: &[u64]) -> Result<Vec<Duration>, String> {
        let base = Instant::now() + Duration::from_millis(20);
        let tasks: Vec<_> = offsets_us
            .iter()
            .map(|&us| {
                let p = pacer.clone();
                let at = base + Duration::from_micros(us);
                tokio::spawn(async move {
                    p.sleep_until(at).await;
                    let now = Instant::now();
                    now.checked_duration_since(at)
                        .ok_or_else(|| format!("{us} µs: woke {:?} early", at - now))
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.map_err(|e| e.to_string())??);
        }
        Ok(out)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn wakes_each_waiter_at_its_time_within_a_fraction_of_a_millisecond() {
        let pacer = Arc::new(Pacer::start().unwrap());
        // Out of order (a later wait arms an earlier deadline), some far apart, two at
        // the same instant.
        let offsets_us = [7_300u64, 150, 5_000, 5_000, 12_345, 900];
        // A loaded CI machine can deschedule the runtime in any one round, so the best of
        // five rounds must be precise; tokio's own timer is ~1 ms late in every round, so
        // a pacer that fell back to it would still fail.
        let mut worst = Vec::new();
        for _ in 0..5 {
            let delays = one_round(&pacer, &offsets_us).await.unwrap();
            let late = delays.iter().copied().max().unwrap_or_default();
            if late < Duration::from_micros(700) {
                return;
            }
            worst.push(late);
        }
        panic!("every round had a waiter woken late: worst per round {worst:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn starting_outside_a_runtime_is_an_error_not_a_panic() {
        assert!(Pacer::start().is_err());
    }
}
