//! Latency percentiles and what /proc says about a process.

use std::time::Duration;

/// Latency percentiles of one phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct Percentiles {
    /// The median.
    pub p50: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The 99.9th percentile.
    pub p999: Duration,
    /// The slowest sample.
    pub max: Duration,
}

impl Percentiles {
    /// Nearest-rank percentiles; empty input gives zeros.
    pub fn of(samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1]
        };
        Self { p50: at(0.50), p90: at(0.90), p99: at(0.99), p999: at(0.999), max: samples[samples.len() - 1] }
    }
}

/// CPU time and peak memory of a process, from /proc.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessUsage {
    /// User plus system CPU time so far, at /proc's 10 ms resolution.
    pub cpu: Duration,
    /// The part of `cpu` spent in the kernel (system calls, the network stack).
    pub system: Duration,
    /// Peak resident memory (VmHWM), in KiB.
    pub peak_rss_kib: u64,
    /// Resident memory now (VmRSS), in KiB.
    pub rss_kib: u64,
    /// User plus system CPU time of the children the process has waited for.
    pub waited_children_cpu: Duration,
}

/// USER_HZ: the unit of /proc's CPU times, 100 on every Linux ABI.
const TICKS_PER_SECOND: u64 = 100;

/// Reads process `pid`'s usage from /proc (Linux only); a field /proc lacks reads as zero.
pub fn process_usage(pid: u32) -> std::io::Result<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let cpu_ticks = ticks(11) + ticks(12);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let ms = |ticks: u64| Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND);
    Ok(ProcessUsage {
        cpu: ms(cpu_ticks),
        system: ms(ticks(12)),
        peak_rss_kib: kib("VmHWM:"),
        rss_kib: kib("VmRSS:"),
        // cutime and cstime, the 16th and 17th fields overall.
        waited_children_cpu: ms(ticks(13) + ticks(14)),
    })
}

/// Durations in the unit that reads best: µs below 10 ms, else ms.
pub fn human(d: Duration) -> String {
    let us = d.as_micros();
    if us < 10_000 { format!("{us} µs") } else { format!("{:.1} ms", d.as_secs_f64() * 1000.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        samples.reverse();
        let p = Percentiles::of(&mut samples);
        assert_eq!(p.p50, Duration::from_micros(500));
        assert_eq!(p.p90, Duration::from_micros(900));
        assert_eq!(p.p99, Duration::from_micros(990));
        assert_eq!(p.p999, Duration::from_micros(999));
        assert_eq!(p.max, Duration::from_micros(1000));
        assert_eq!(Percentiles::of(&mut []).p99, Duration::ZERO);
    }

    #[test]
    fn this_process_has_usage() {
        let u = process_usage(std::process::id()).unwrap();
        assert!(u.peak_rss_kib > 0 && u.rss_kib > 0 && u.rss_kib <= u.peak_rss_kib);
        assert!(u.system <= u.cpu);
    }

    /// A child's CPU time shows once it has been waited for (h2load's, in the benchmark).
    #[test]
    fn waited_childrens_cpu_is_counted() {
        let before = process_usage(std::process::id()).unwrap().waited_children_cpu;
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let after = process_usage(std::process::id()).unwrap().waited_children_cpu;
        assert!(after > before, "{before:?} -> {after:?}");
    }
}
