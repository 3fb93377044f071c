//! The simulated work of a request: CPU time on the thread's CPU clock, touched memory,
//! and random draws (delays, probabilities) — plus the background load of a replica.
//!
//! CPU cost is CPU time, not a calibrated loop: a calibrated loop consumes more or less
//! CPU than asked whenever the machine is busier or quieter than during calibration, and
//! a wall-clock loop consumes less under contention. Reading `CLOCK_THREAD_CPUTIME_ID`
//! counts exactly the time this thread ran, so `1000m` of CPU limit serves exactly
//! 1 s / cpu_us requests per second.

use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, RngExt, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal};

use crate::config::{DelayConfig, DelayDistribution};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// The thread CPU clock could not be read (never expected on Linux).
    #[error("cannot read the thread CPU clock: {0}")]
    Clock(#[from] nix::Error),
    /// A distribution parameter was rejected.
    #[error("invalid delay distribution: {0}")]
    Distribution(String),
}

/// Result alias for this module.
pub type Result<T, E = WorkError> = std::result::Result<T, E>;

/// CPU time consumed so far by the calling thread.
pub fn thread_cpu_time() -> Result<Duration> {
    let ts = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)?;
    // tv_sec/tv_nsec of a CPU clock are never negative.
    Ok(Duration::new(
        u64::try_from(ts.tv_sec()).unwrap_or(0),
        u32::try_from(ts.tv_nsec()).unwrap_or(0),
    ))
}

/// A small slice of arithmetic, a few microseconds long, between clock reads. Reading the
/// clock is a system call (~0.3 µs), so checking after every slice costs a few percent
/// of the burn at most while overshooting the target by one slice at most.
fn spin_slice(mut x: u64) -> u64 {
    for i in 0..2048u64 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i) ^ (x >> 29);
    }
    x
}

/// Burns `target` of CPU time on the calling thread's CPU clock, counted from `start`
/// (a previous [`thread_cpu_time`] reading, so work done since — e.g. touching memory —
/// is part of the budget). Returns the thread CPU time consumed since `start`.
pub fn burn_cpu_since(start: Duration, target: Duration) -> Result<Duration> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    loop {
        let used = thread_cpu_time()?.saturating_sub(start);
        if used >= target {
            black_box(x);
            return Ok(used);
        }
        x = spin_slice(black_box(x));
    }
}

/// Allocates `bytes` and writes one byte per page so the memory is really resident.
pub fn touch_memory(bytes: u64) -> Vec<u8> {
    let len = usize::try_from(bytes).unwrap_or(usize::MAX);
    let mut buf: Vec<u8> = Vec::new();
    if len == 0 {
        return buf;
    }
    // try_reserve: an allocation failure is reported by the caller as a 500, not an abort.
    if buf.try_reserve_exact(len).is_err() {
        return buf;
    }
    buf.resize(len, 0);
    for i in (0..len).step_by(4096) {
        buf[i] = 1;
    }
    black_box(&mut buf);
    buf
}

/// The random source of one endpoint: a shared seeded generator when the config gives a
/// seed (reproducible draws in arrival order), else the fast thread-local generator.
#[derive(Debug)]
pub enum EndpointRng {
    /// Seeded, shared by all requests of the endpoint.
    Seeded(Mutex<Xoshiro256PlusPlus>),
    /// Thread-local, seeded by the OS.
    Thread,
}

impl EndpointRng {
    /// A generator for the given optional seed.
    pub fn new(seed: Option<u64>) -> Self {
        match seed {
            Some(s) => EndpointRng::Seeded(Mutex::new(Xoshiro256PlusPlus::seed_from_u64(s))),
            None => EndpointRng::Thread,
        }
    }

    /// Runs `f` with the generator.
    pub fn with<T>(&self, f: impl FnOnce(&mut dyn Rng) -> T) -> T {
        match self {
            EndpointRng::Seeded(m) => {
                // A poisoned lock only means another request panicked mid-draw; the
                // generator state is still a valid state.
                let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut *g)
            }
            EndpointRng::Thread => f(&mut rand::rng()),
        }
    }

    /// True with probability `p` (exact for 0 and 1, which draw nothing).
    pub fn chance(&self, p: f64) -> bool {
        if p <= 0.0 {
            false
        } else if p >= 1.0 {
            true
        } else {
            self.with(|r| r.random::<f64>() < p)
        }
    }
}

/// A ready-to-sample delay distribution.
#[derive(Debug, Clone)]
pub enum DelaySampler {
    /// Always the same.
    Fixed(Duration),
    /// Uniform in `[min, max]` microseconds.
    Uniform(u64, u64),
    /// Exponential (microseconds).
    Exponential(Exp<f64>),
    /// Log-normal (microseconds).
    LogNormal(LogNormal<f64>),
}

/// Longest delay ever applied, whatever the tail of the distribution draws.
const MAX_DELAY_US: f64 = 3_600_000_000.0;

impl DelaySampler {
    /// Builds the sampler of a validated config.
    pub fn new(config: &DelayConfig) -> Result<Self> {
        Ok(match config.distribution {
            DelayDistribution::Fixed { value_us } => {
                DelaySampler::Fixed(Duration::from_micros(value_us))
            }
            DelayDistribution::Uniform { min_us, max_us } => DelaySampler::Uniform(min_us, max_us),
            DelayDistribution::Exponential { mean_us } => DelaySampler::Exponential(
                Exp::new(1.0 / mean_us as f64)
                    .map_err(|e| WorkError::Distribution(e.to_string()))?,
            ),
            DelayDistribution::LogNormal { median_us, sigma } => DelaySampler::LogNormal(
                LogNormal::new((median_us as f64).ln(), sigma)
                    .map_err(|e| WorkError::Distribution(e.to_string()))?,
            ),
        })
    }

    /// Draws one delay.
    pub fn sample(&self, rng: &EndpointRng) -> Duration {
        let us = match self {
            DelaySampler::Fixed(d) => return *d,
            DelaySampler::Uniform(lo, hi) => {
                if lo == hi {
                    return Duration::from_micros(*lo);
                }
                return Duration::from_micros(rng.with(|r| r.random_range(*lo..=*hi)));
            }
            DelaySampler::Exponential(d) => rng.with(|r| d.sample(r)),
            DelaySampler::LogNormal(d) => rng.with(|r| d.sample(r)),
        };
        Duration::from_secs_f64(us.clamp(0.0, MAX_DELAY_US) / 1e6)
    }
}

/// Keeps `cores` (a fraction, possibly above 1) of CPU busy in the background until `stop`
/// is set: each thread burns its share of every 10 ms period on its CPU clock and sleeps
/// for the rest.
pub fn spawn_idle_cpu(
    cores: f64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<()> {
    if cores <= 0.0 {
        return Ok(());
    }
    let threads = cores.ceil().max(1.0) as u32;
    let share = cores / f64::from(threads);
    let period = Duration::from_millis(10);
    let busy = period.mul_f64(share);
    for i in 0..threads {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(format!("idle-cpu-{i}"))
            .spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t0 = std::time::Instant::now();
                    let burned = thread_cpu_time().and_then(|s| burn_cpu_since(s, busy));
                    if let Err(e) = burned {
                        tracing::warn!(error = %e, "idle CPU burner stopped");
                        return;
                    }
                    if let Some(rest) = period.checked_sub(t0.elapsed()) {
                        std::thread::sleep(rest);
                    }
                }
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DelayMode;

    #[test]
    fn burn_consumes_at_least_the_target_cpu_time() {
        let start = thread_cpu_time().unwrap();
        let used = burn_cpu_since(start, Duration::from_millis(5)).unwrap();
        assert!(used >= Duration::from_millis(5));
        // Generous sanity bound only: one slice overshoots by microseconds.
        assert!(used < Duration::from_millis(500), "{used:?}");
    }

    #[test]
    fn touched_memory_has_the_requested_size() {
        assert_eq!(touch_memory(3 * 4096 + 5).len(), 3 * 4096 + 5);
        assert!(touch_memory(0).is_empty());
    }

    #[test]
    fn seeded_draws_repeat() {
        let cfg = DelayConfig {
            distribution: DelayDistribution::Exponential { mean_us: 1000 },
            mode: DelayMode::AfterWork,
        };
        let s = DelaySampler::new(&cfg).unwrap();
        let a: Vec<_> = {
            let r = EndpointRng::new(Some(42));
            (0..10).map(|_| s.sample(&r)).collect()
        };
        let b: Vec<_> = {
            let r = EndpointRng::new(Some(42));
            (0..10).map(|_| s.sample(&r)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|d| *d != a[0]));
    }

    #[test]
    fn uniform_stays_in_bounds_and_lognormal_median_is_close() {
        let r = EndpointRng::new(Some(1));
        let u = DelaySampler::new(&DelayConfig {
            distribution: DelayDistribution::Uniform {
                min_us: 100,
                max_us: 200,
            },
            mode: DelayMode::AfterWork,
        })
        .unwrap();
        for _ in 0..1000 {
            let d = u.sample(&r).as_micros();
            assert!((100..=200).contains(&d), "{d}");
        }
        let ln = DelaySampler::new(&DelayConfig {
            distribution: DelayDistribution::LogNormal {
                median_us: 1000,
                sigma: 0.5,
            },
            mode: DelayMode::AfterWork,
        })
        .unwrap();
        let mut v: Vec<u128> = (0..2001).map(|_| ln.sample(&r).as_micros()).collect();
        v.sort_unstable();
        assert!((800..1250).contains(&v[1000]), "median {}", v[1000]);
    }

    #[test]
    fn chance_is_exact_at_the_ends() {
        let r = EndpointRng::new(None);
        assert!((0..100).all(|_| r.chance(1.0)));
        assert!((0..100).all(|_| !r.chance(0.0)));
    }
}
