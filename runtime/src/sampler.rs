//! The metrics sampler standing in for metrics-server and cAdvisor: per-pod CPU and memory
//! from cgroup accounting (or /proc when limits are not enforced), and the workers' own
//! `/metrics` (requests, errors, latency), scraped over loopback.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Cumulative counters read from one worker's `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerCounters {
    /// Requests answered.
    pub requests: f64,
    /// Requests answered with 5xx.
    pub errors: f64,
    /// Sum of request durations, seconds.
    pub duration_sum_s: f64,
    /// Cumulative histogram buckets (upper bound in seconds, count).
    pub buckets: Vec<(f64, f64)>,
}

impl WorkerCounters {
    /// Adds another pod's counters (buckets must share bounds, as they do for one worker
    /// build).
    pub fn add(&mut self, o: &WorkerCounters) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.duration_sum_s += o.duration_sum_s;
        if self.buckets.is_empty() {
            self.buckets = o.buckets.clone();
        } else {
            for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
                a.1 += b.1;
            }
        }
    }

    /// Counters accumulated since `earlier`. A restarted worker starts from zero, so a
    /// decrease means "everything is new".
    pub fn since(&self, earlier: &WorkerCounters) -> WorkerCounters {
        if self.requests < earlier.requests {
            return self.clone();
        }
        WorkerCounters {
            requests: self.requests - earlier.requests,
            errors: (self.errors - earlier.errors).max(0.0),
            duration_sum_s: (self.duration_sum_s - earlier.duration_sum_s).max(0.0),
            buckets: self
                .buckets
                .iter()
                .zip(earlier.buckets.iter().chain(std::iter::repeat(&(0.0, 0.0))))
                .map(|(a, b)| (a.0, (a.1 - b.1).max(0.0)))
                .collect(),
        }
    }

    /// A quantile from the cumulative buckets, interpolated linearly inside the bucket as
    /// Prometheus' `histogram_quantile` does.
    pub fn quantile_s(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let in_bucket = count - prev.1;
                let frac = if in_bucket > 0.0 {
                    (rank - prev.1) / in_bucket
                } else {
                    1.0
                };
                return Some(prev.0 + (le - prev.0) * frac);
            }
            prev = (le, count);
        }
        Some(prev.0)
    }
}

/// Parses the worker's metrics text (Prometheus or OpenMetrics exposition).
pub fn parse_worker_metrics(text: &str) -> WorkerCounters {
    let mut c = WorkerCounters::default();
    let mut buckets: HashMap<String, f64> = HashMap::new();
    for (name, labels, value) in text.lines().filter_map(sample) {
        match name {
            "meshbench_worker_requests_total" => {
                c.requests += value;
                if label(labels, "status").is_some_and(|s| s.starts_with('5')) {
                    c.errors += value;
                }
            }
            "meshbench_worker_request_duration_seconds_sum" => c.duration_sum_s += value,
            "meshbench_worker_request_duration_seconds_bucket" => {
                if let Some(le) = label(labels, "le") {
                    *buckets.entry(le.to_string()).or_default() += value;
                }
            }
            _ => {}
        }
    }
    c.buckets = sorted_buckets(buckets);
    c
}

/// One sample line as `(name, labels, value)`, the labels with their braces; `None` for
/// comments, blank lines and lines without a number.
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (name_labels, value) = line.rsplit_once(' ')?;
    let value = value.trim().parse::<f64>().ok()?;
    let (name, labels) = match name_labels.find('{') {
        Some(i) => (&name_labels[..i], &name_labels[i..]),
        None => (name_labels, ""),
    };
    Some((name, labels, value))
}

/// The summed buckets by upper bound (`+Inf` last), dropping bounds that are no number.
fn sorted_buckets(buckets: HashMap<String, f64>) -> Vec<(f64, f64)> {
    let mut b: Vec<(f64, f64)> = buckets
        .into_iter()
        .filter_map(|(le, v)| {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v))
        })
        .collect();
    b.sort_by(|a, b| a.0.total_cmp(&b.0));
    b
}

fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("{key}=\"");
    let start = labels.find(&pat)? + pat.len();
    let end = labels[start..].find('"')?;
    Some(&labels[start..start + end])
}

/// Fetches `http://addr/metrics` with a plain blocking HTTP/1.0 request: tiny, bounded
/// by `timeout`, and free of connection pools that would keep replicas' sockets open.
pub fn scrape(addr: SocketAddr, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.take(8 << 20).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

/// CPU time and resident memory of a process from /proc, for hosts without cgroup
/// accounting.
pub fn proc_usage(pid: u32) -> Option<(Duration, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    Some((
        Duration::from_secs_f64((utime + stime) as f64 / ticks as f64),
        rss_pages * page,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP meshbench_worker_requests Requests
meshbench_worker_requests_total{service="a",endpoint="/",status="200"} 90
meshbench_worker_requests_total{service="a",endpoint="/",status="503"} 10
meshbench_worker_request_duration_seconds_sum{service="a",endpoint="/"} 2.5
meshbench_worker_request_duration_seconds_bucket{service="a",endpoint="/",le="0.01"} 50
meshbench_worker_request_duration_seconds_bucket{service="a",endpoint="/",le="0.1"} 99
meshbench_worker_request_duration_seconds_bucket{service="a",endpoint="/",le="+Inf"} 100
"#;

    #[test]
    fn parses_counters_and_quantiles() {
        let c = parse_worker_metrics(TEXT);
        assert_eq!(c.requests, 100.0);
        assert_eq!(c.errors, 10.0);
        assert_eq!(c.duration_sum_s, 2.5);
        assert_eq!(c.buckets.len(), 3);
        // Rank 50 is the top of the first bucket.
        assert!((c.quantile_s(0.5).unwrap_or(0.0) - 0.01).abs() < 1e-9);
        // Rank 99 is the top of the second bucket.
        assert!((c.quantile_s(0.99).unwrap_or(0.0) - 0.1).abs() < 1e-9);
    }

    #[test]
    fn deltas_survive_restarts() {
        let a = parse_worker_metrics(TEXT);
        let mut b = a.clone();
        b.requests += 10.0;
        b.buckets[2].1 += 10.0;
        assert_eq!(b.since(&a).requests, 10.0);
        let restarted = WorkerCounters {
            requests: 5.0,
            ..WorkerCounters::default()
        };
        assert_eq!(restarted.since(&a).requests, 5.0);
    }

    #[test]
    fn reads_own_process() {
        let (cpu, rss) = proc_usage(std::process::id()).unwrap_or_default();
        assert!(rss > 0);
        assert!(cpu < Duration::from_secs(100_000));
    }
}
