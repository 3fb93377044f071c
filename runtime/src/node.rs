//! The machine as one Kubernetes node: what it can allocate to pods, and the scheduler's
//! fit check (`NodeResourcesFit`): a pod is bound when its requests fit what the pods
//! already bound leave, otherwise it stays Pending until room frees up. Pending replicas
//! run nothing, so they carry no load; the HPA counts them as unready (0 % on a scale-up).

/// CPU and memory of a node or a pod's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    /// Millicores.
    pub cpu_millis: u64,
    /// Bytes.
    pub memory_bytes: u64,
}

impl Resources {
    /// Whether `request` fits in what is left of `self` after `used`.
    pub fn fits(&self, used: Resources, request: Resources) -> bool {
        let left = |total: u64, used: u64| total.saturating_sub(used);
        request.cpu_millis <= left(self.cpu_millis, used.cpu_millis)
            && request.memory_bytes <= left(self.memory_bytes, used.memory_bytes)
    }

    /// `self + other × n`, saturating (requests come from user input).
    pub fn plus(self, other: Resources, n: u64) -> Resources {
        Resources {
            cpu_millis: self
                .cpu_millis
                .saturating_add(other.cpu_millis.saturating_mul(n)),
            memory_bytes: self
                .memory_bytes
                .saturating_add(other.memory_bytes.saturating_mul(n)),
        }
    }
}

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// What a node keeps from its pods: GKE's documented reservation for system daemons and
/// the kubelet (CPU: 6 % of the first core, 1 % of the second, 0.5 % of the next two,
/// 0.25 % above four; memory: 25 % of the first 4 GiB, 20 % of the next 4, 10 % of the
/// next 8, 6 % of the next 112, 2 % above 128 GiB, or 255 MiB below 1 GiB) plus the
/// kubelet's default hard eviction threshold `memory.available<100Mi`. A bare kubelet
/// reserves only the eviction threshold; a managed node reserves this, and this is what
/// a user's pods meet on a node of the same size.
pub fn reserved(capacity: Resources) -> Resources {
    let tiers = |total: u64, tiers: &[(u64, f64)], above: f64| -> u64 {
        let mut left = total;
        let mut kept = 0.0;
        for &(size, share) in tiers {
            let part = left.min(size);
            kept += part as f64 * share;
            left -= part;
        }
        (kept + left as f64 * above).round() as u64
    };
    let cpu = tiers(
        capacity.cpu_millis,
        &[(1000, 0.06), (1000, 0.01), (2000, 0.005)],
        0.0025,
    );
    let memory = if capacity.memory_bytes < GIB {
        255 * MIB
    } else {
        tiers(
            capacity.memory_bytes,
            &[
                (4 * GIB, 0.25),
                (4 * GIB, 0.20),
                (8 * GIB, 0.10),
                (112 * GIB, 0.06),
            ],
            0.02,
        )
    };
    Resources {
        cpu_millis: cpu,
        memory_bytes: memory.saturating_add(100 * MIB),
    }
}

/// Capacity minus [`reserved`].
pub fn allocatable(capacity: Resources) -> Resources {
    let r = reserved(capacity);
    Resources {
        cpu_millis: capacity.cpu_millis.saturating_sub(r.cpu_millis),
        memory_bytes: capacity.memory_bytes.saturating_sub(r.memory_bytes),
    }
}

/// This machine's capacity: the CPUs this process may run on (affinity and a cgroup CPU
/// quota count, as `available_parallelism` reads them) and `MemTotal`.
pub fn machine_capacity() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| mem_total(&s))
        .unwrap_or(0);
    Resources {
        cpu_millis: cpus * 1000,
        memory_bytes: memory,
    }
}

fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpu_millis: u64, memory_bytes: u64) -> Resources {
        Resources {
            cpu_millis,
            memory_bytes,
        }
    }

    #[test]
    fn reservation_follows_the_published_tiers() {
        // (cores, GiB) → (reserved millicores, reserved MiB), from GKE's table plus the
        // 100 MiB eviction threshold.
        let table = [
            ((1, 0.5), (60, 255 + 100)),
            ((2, 4.0), (70, 1024 + 100)),
            ((2, 8.0), (70, 1024 + 819 + 100)),
            ((4, 16.0), (80, 1024 + 819 + 819 + 100)),
            ((8, 32.0), (90, 1024 + 819 + 819 + 983 + 100)),
        ];
        for ((cores, gib), (want_cpu, want_mib)) in table {
            let r = reserved(res(cores * 1000, (gib * GIB as f64) as u64));
            assert_eq!(r.cpu_millis, want_cpu, "{cores} cores");
            let mib = r.memory_bytes / MIB;
            assert!(
                mib.abs_diff(want_mib) <= 1,
                "{gib} GiB: {mib} MiB, want {want_mib}"
            );
        }
    }

    #[test]
    fn allocatable_is_capacity_less_the_reservation_and_never_negative() {
        let a = allocatable(res(2000, 24 * GIB));
        assert_eq!(a.cpu_millis, 1930);
        assert_eq!(allocatable(res(0, 0)), res(0, 0));
    }

    #[test]
    fn a_pod_fits_only_in_what_the_bound_pods_leave() {
        let node = res(1930, GIB);
        let pod = res(500, 64 * MIB);
        // (pods already bound, fits)
        for (bound, fits) in [(0, true), (2, true), (3, false)] {
            let used = Resources::default().plus(pod, bound);
            assert_eq!(node.fits(used, pod), fits, "{bound} bound");
        }
        // Memory binds too, and huge requests saturate instead of wrapping.
        assert!(!node.fits(res(0, GIB), res(0, 1)));
        let huge = Resources::default().plus(res(u64::MAX, u64::MAX), 3);
        assert_eq!(huge, res(u64::MAX, u64::MAX));
        assert!(!node.fits(huge, res(1, 0)));
        // A pod without requests always fits (BestEffort).
        assert!(node.fits(huge, res(0, 0)));
    }

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        let text = "MemTotal:       24608408 kB\nMemFree:        1 kB\n";
        assert_eq!(mem_total(text), Some(24_608_408 * 1024));
        assert_eq!(mem_total("nothing"), None);
    }
}
