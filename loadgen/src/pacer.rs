//! Sub-millisecond pacing of open-loop sends.
//!
//! tokio's timer wheel has 1 ms ticks and fires a sleep at the first tick after its
//! deadline, so a request paced by `sleep_until` alone leaves 0–1 ms (and more under
//! load) after its planned time — an error every latency measured from the planned time
//! carries. Here a slot hands its wait to one pacing thread: it sleeps on a condition
//! variable with a 1 µs timer slack (the default 50 µs slack of a normal thread would undo
//! the precision), spins at most [`SPIN`] before the deadline, and wakes every slot whose
//! time has come. A wait costs a lock, a timed futex wait and one wake-up of the runtime;
//! the spin is kept short because at thousands of requests per second it dominates the
//! cost (measured with `cargo bench -p meshbench-loadgen --bench loadgen` at 5000 rps:
//! a 30 µs spin after a tokio pre-sleep, 85 ms of CPU per 1000 requests; a 5 µs spin and
//! no pre-sleep, 61 ms; tokio's timer alone, ~30 ms but ~1 ms late).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How close to a deadline the pacing thread stops sleeping and spins.
const SPIN: Duration = Duration::from_micros(5);

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
struct Shared {
    queue: Mutex<BinaryHeap<Reverse<Entry>>>,
    changed: Condvar,
    stop: AtomicBool,
    seq: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BinaryHeap<Reverse<Entry>>> {
        // The queue holds only wake-ups; a poisoned one is still usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The pacing thread of one run; stopped when dropped.
pub(crate) struct Pacer {
    shared: Arc<Shared>,
}

impl Pacer {
    /// Starts the pacing thread.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::Builder::new()
            .name("meshbench-pacer".into())
            .spawn(move || run(&s))?;
        Ok(Self { shared })
    }

    /// Waits until `at` with sub-millisecond precision.
    pub async fn sleep_until(&self, at: Instant) {
        let now = Instant::now();
        if at <= now {
            return;
        }
        let (wake, woken) = oneshot::channel();
        let entry = Entry {
            at,
            seq: self.shared.seq.fetch_add(1, Ordering::Relaxed),
            wake,
        };
        let is_first = {
            let mut q = self.shared.lock();
            let first = q.peek().is_none_or(|Reverse(head)| at < head.at);
            q.push(Reverse(entry));
            first
        };
        if is_first {
            self.shared.changed.notify_one();
        }
        // A dropped sender (the pacer stopped) also ends the wait.
        let _ = woken.await;
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.changed.notify_one();
    }
}

/// The pacing thread: wakes each entry at its time.
fn run(shared: &Shared) {
    precise_timer_slack();
    let mut q = shared.lock();
    while !shared.stop.load(Ordering::Acquire) {
        let Some(Reverse(head)) = q.peek() else {
            q = shared.changed.wait(q).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        let now = Instant::now();
        if head.at > now + SPIN {
            let nap = head.at - now - SPIN;
            q = shared
                .changed
                .wait_timeout(q, nap)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            continue;
        }
        let at = head.at;
        drop(q);
        while Instant::now() < at {
            std::hint::spin_loop();
        }
        q = shared.lock();
        let now = Instant::now();
        while q.peek().is_some_and(|Reverse(e)| e.at <= now) {
            if let Some(Reverse(e)) = q.pop() {
                let _ = e.wake.send(());
            }
        }
    }
}

/// A 1 µs timer slack for this thread, so its timed waits end when asked (Linux; a no-op
/// elsewhere or when refused, which costs precision only).
fn precise_timer_slack() {
    #[cfg(target_os = "linux")]
    {
        let _ = nix::sys::prctl::set_timerslack(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lateness of each waiter (negative never: an early wake is an error).
    fn one_round(pacer: &Arc<Pacer>, offsets_us: &[u64]) -> Result<Vec<Duration>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let base = Instant::now() + Duration::from_millis(20);
        rt.block_on(async {
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
                out.push(t.await.unwrap()?);
            }
            Ok(out)
        })
    }

    #[test]
    fn wakes_each_waiter_at_its_time_within_a_fraction_of_a_millisecond() {
        let pacer = Arc::new(Pacer::start().unwrap());
        // Out of order, some far apart, two at the same instant.
        let offsets_us = [7_300u64, 150, 5_000, 5_000, 12_345, 900];
        // A loaded CI machine can deschedule the pacer thread in any one round, so the
        // best of five rounds must be precise; tokio's own timer is ~1 ms late in every
        // round, so a pacer that fell back to it would still fail.
        let mut worst = Vec::new();
        for _ in 0..5 {
            let delays = one_round(&pacer, &offsets_us).unwrap();
            let late = delays.iter().copied().max().unwrap_or_default();
            if late < Duration::from_micros(700) {
                return;
            }
            worst.push(late);
        }
        panic!("every round had a waiter woken late: worst per round {worst:?}");
    }
}
