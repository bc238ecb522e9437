//! Latency percentiles, medians across rounds, and CPU time read from `/proc`.

use std::time::Duration;

/// Latencies of one phase, one entry per completed operation.
#[derive(Clone, Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Adds one operation's latency.
    pub fn push(&mut self, latency: Duration) {
        self.0.push(latency);
    }

    /// Appends another phase's (or task's) latencies.
    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Nearest-rank percentile in milliseconds (`p` in 0..=100); 0 when empty.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        let index = rank.clamp(1, sorted.len()) - 1;
        sorted[index].as_secs_f64() * 1e3
    }
}

/// Median of `values` (mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Linux reports process CPU time in clock ticks of USER_HZ, which is 100 on every
/// architecture Linux supports for user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds used so far by process `pid` ("self" for this one),
/// including threads that have exited; `None` where `/proc` is not available.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after it start past the last ')'.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// CPU time of a process over an interval, as a share of one core.
#[derive(Clone, Debug)]
pub struct CpuMeter {
    pids: Vec<u32>,
    start: Option<f64>,
}

fn total_cpu_seconds(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|pid| cpu_seconds(&pid.to_string())).sum()
}

impl CpuMeter {
    /// Starts measuring process `pid` (this process when `pid` is ours).
    pub fn start(pid: u32) -> Self {
        Self::start_all(&[pid])
    }

    /// Starts measuring the processes `pids` together.
    pub fn start_all(pids: &[u32]) -> Self {
        CpuMeter {
            pids: pids.to_vec(),
            start: total_cpu_seconds(pids),
        }
    }

    /// CPU seconds used since the start.
    pub fn used(&self) -> Option<f64> {
        Some(total_cpu_seconds(&self.pids)? - self.start?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.push(Duration::from_millis(ms));
        }
        assert_eq!(l.percentile_ms(50.0), 50.0);
        assert_eq!(l.percentile_ms(99.0), 99.0);
        assert_eq!(l.percentile_ms(100.0), 100.0);
        assert_eq!(Latencies::default().percentile_ms(50.0), 0.0);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn own_cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(cpu_seconds("self").is_some());
        }
    }
}
