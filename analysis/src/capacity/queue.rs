//! One replica as a queueing station: the worker's request threads under a CFS quota.
//!
//! The worker runs CPU work on a pool as large as the runtime's available parallelism,
//! which follows the CFS quota: ⌊L⌋ threads for a limit of L cores, at least one. So a
//! limit L ≥ 1 gives ⌊L⌋ servers at full speed (the fraction above ⌊L⌋ serves the
//! runtime's own threads), and L < 1 gives one server at full speed that the quota stops
//! for the rest of a 100 ms period once it used L × 100 ms: over many periods it serves at
//! rate L, inside one at full speed.
//!
//! Waits follow Allen–Cunneen's G/G/c approximation, `W = W(M/M/c) × (Ca² + Cs²) ÷ 2`:
//! service times are nearly constant (fixed CPU per endpoint, Cs² from their mix) and
//! open-loop arrivals are paced (Ca² = 0), so an M/M/c model (both 1) over-states waits
//! by 2× or more. One formula covers every limit: c = ⌊L⌋ threads, each at speed
//! min(1, cores ÷ threads) (the idle load takes its share of the quota); with c = 1 and a
//! quota below one core it is Kingman's heavy-traffic form for the backlog of CPU time the
//! quota carries from period to period. A visit's own time is [`Station::run_time`]: its
//! CPU at full speed, plus the rest of each CFS period it runs past below one core.

use super::moments::Moments;

/// The CFS period the kubelet sets (`cpu.cfs_period_us` = 100 ms) and the local platform
/// copies.
const CFS_PERIOD_S: f64 = 0.1;

/// The capacity of one replica: request threads and the cores the quota allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Station {
    /// Requests that run CPU work at once.
    pub threads: u32,
    /// Cores the CFS quota allows (the limit; the request when there is no limit).
    pub cores: f64,
}

impl Station {
    /// A replica with `cores` of CPU limit.
    pub fn with_cores(cores: f64) -> Station {
        let threads = cores.floor().clamp(1.0, f64::from(u32::MAX)) as u32;
        Station { threads, cores }
    }

    /// Cores the replica's requests can use at once: ⌊L⌋ threads, or the quota below 1.
    pub fn usable_cores(&self) -> f64 {
        f64::from(self.threads).min(self.cores)
    }

    /// The wait before a visit gets CPU, at `arrival` visits per second with mean CPU
    /// `service` seconds per visit and squared coefficients of variation `ca2` (arrivals)
    /// and `cs2` (service times). `None` when the station cannot keep up.
    pub fn wait(&self, arrival: f64, service: f64, ca2: f64, cs2: f64) -> Option<Moments> {
        if arrival <= 0.0 || service <= 0.0 {
            return Some(Moments::ZERO);
        }
        let variability = ((ca2 + cs2) / 2.0).max(0.0);
        // ⌊L⌋ threads share what the quota leaves: at full speed unless the idle load takes
        // part of it (then each runs at cores ÷ threads). One thread under a quota below a
        // core serves at the quota's rate over periods, the same formula with speed L.
        let c = f64::from(self.threads);
        let speed = (self.cores / c).min(1.0);
        if speed <= 0.0 {
            return None;
        }
        let service = service / speed;
        let offered = arrival * service;
        let rho = offered / c;
        if rho >= 1.0 {
            return None;
        }
        let p_wait = super::erlang_c(self.threads, offered);
        let when_waiting = service / (c * (1.0 - rho)) * variability;
        Some(exponential_wait(p_wait, when_waiting))
    }

    /// Wall time of `cpu` seconds of CPU on one of the replica's threads. Below one core
    /// the CFS quota stops the thread for the rest of each period once it used
    /// `cores` × the period, so a visit longer than that spans periods: a 50 ms quota makes
    /// 80 ms of CPU take 130 ms (the visit taken to start with a period).
    pub fn run_time(&self, cpu: f64) -> f64 {
        let per_period = self.cores * CFS_PERIOD_S;
        if self.cores >= 1.0 || per_period <= 0.0 || cpu <= per_period {
            return cpu;
        }
        // Less a hair: an exact multiple (140 ms at 700m) must not round up a period.
        let periods = (cpu / per_period - 1e-9).ceil();
        cpu + (periods - 1.0) * (1.0 - self.cores) * CFS_PERIOD_S
    }
}

/// A wait that is zero with probability `1 − p` and exponential with mean `m` otherwise.
fn exponential_wait(p: f64, m: f64) -> Moments {
    let p = p.clamp(0.0, 1.0);
    Moments {
        mean: p * m,
        variance: (2.0 * p * m * m - p * p * m * m).max(0.0),
        floor: 0.0,
    }
}

/// Squared coefficient of variation of a stream thinned at random: each arrival goes on
/// with probability `p` (a call made with that probability). Thinning makes any stream
/// more Poisson-like.
pub fn thinned(ca2: f64, p: f64) -> f64 {
    p * ca2 + 1.0 - p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_follow_the_quota() {
        assert_eq!(Station::with_cores(0.5).threads, 1);
        assert_eq!(Station::with_cores(1.5).threads, 1);
        assert_eq!(Station::with_cores(2.0).threads, 2);
        assert_eq!(Station::with_cores(0.5).usable_cores(), 0.5);
        assert_eq!(Station::with_cores(1.5).usable_cores(), 1.0);
    }

    #[test]
    fn poisson_arrivals_and_exponential_service_give_the_mm1_wait() {
        // M/M/1, S = 10 ms, ρ = 0.5: Wq = ρS/(1−ρ) = 10 ms.
        let w = Station::with_cores(1.0)
            .wait(50.0, 0.010, 1.0, 1.0)
            .expect("stable");
        assert!((w.mean - 0.010).abs() < 1e-12, "{w:?}");
    }

    #[test]
    fn constant_service_halves_the_wait_and_paced_arrivals_remove_it() {
        let s = Station::with_cores(1.0);
        let md1 = s.wait(50.0, 0.010, 1.0, 0.0).expect("stable");
        assert!((md1.mean - 0.005).abs() < 1e-12, "M/D/1: {md1:?}");
        let dd1 = s.wait(50.0, 0.010, 0.0, 0.0).expect("stable");
        assert_eq!(dd1.mean, 0.0);
    }

    #[test]
    fn a_quota_below_one_core_serves_at_its_rate_over_periods() {
        // 500m, 10 ms per visit: capacity 50 visits/s; at 40/s ρ = 0.8.
        let s = Station::with_cores(0.5);
        assert!(s.wait(50.0, 0.010, 1.0, 0.0).is_none());
        let w = s.wait(40.0, 0.010, 1.0, 0.0).expect("stable");
        // Kingman: ρ · (S/L) · (Ca² + Cs²)/2 ÷ (1 − ρ) = 0.8 · 20 ms · 0.5 ÷ 0.2 = 40 ms.
        assert!((w.mean - 0.040).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn idle_load_slows_the_threads_but_keeps_them_servers() {
        // 2 cores less 10 millicores of idle load: two servers at 0.995 speed, close to
        // M/D/2, not one server at 1.99 cores.
        let full = Station::with_cores(2.0);
        let idle = Station {
            cores: 1.99,
            ..full
        };
        let (a, b) = (
            full.wait(150.0, 0.010, 1.0, 0.0).expect("stable"),
            idle.wait(150.0, 0.010, 1.0, 0.0).expect("stable"),
        );
        assert!(b.mean > a.mean && b.mean < a.mean * 1.1, "{a:?} {b:?}");
        // M/D/2 at ρ = 0.75: Erlang C(2, 1.5) = 0.643; × 10 ms ÷ (2 × 0.25) × ½ = 6.4 ms.
        assert!((a.mean - 0.00643).abs() < 1e-4, "{a:?}");
    }

    #[test]
    fn a_visit_longer_than_the_quota_waits_out_periods() {
        let half = Station::with_cores(0.5);
        assert!((half.run_time(0.080) - 0.130).abs() < 1e-12);
        assert_eq!(half.run_time(0.040), 0.040);
        assert!((half.run_time(0.120) - 0.220).abs() < 1e-12);
        // Two whole quotas of 70 ms: one stall of 30 ms, not two.
        assert!((Station::with_cores(0.7).run_time(0.140) - 0.170).abs() < 1e-12);
        assert_eq!(Station::with_cores(1.0).run_time(0.5), 0.5);
        assert_eq!(Station::with_cores(2.5).run_time(0.5), 0.5);
    }

    #[test]
    fn thinning_tends_to_poisson() {
        assert_eq!(thinned(0.0, 1.0), 0.0);
        assert!((thinned(0.0, 0.25) - 0.75).abs() < 1e-12);
        assert_eq!(thinned(1.0, 0.3), 1.0);
    }
}
