//! The standard `process_*` metrics, read from `/proc/self` at scrape time
//! (Linux; elsewhere they are left out): CPU time, resident and virtual
//! memory, open and allowed file descriptors, threads, start time.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};

use super::single;

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, fixed at
/// 100 by the kernel's ABI).
const TICKS: f64 = 100.0;

pub(super) fn encode(enc: &mut DescriptorEncoder) -> fmt::Result {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Ok(());
    };
    // Fields after the command name (which may hold spaces), from field 3.
    let f: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        single(
            enc,
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds.",
            Counter,
            (utime + stime) / TICKS,
        )?;
    }
    if let Some(threads) = field(20) {
        single(
            enc,
            "process_threads",
            "Threads of the process.",
            Gauge,
            threads,
        )?;
    }
    if let Some(vsize) = field(23) {
        single(
            enc,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Gauge,
            vsize,
        )?;
    }
    if let Some(rss) = status_kib("VmRSS:") {
        single(
            enc,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            Gauge,
            rss * 1024.0,
        )?;
    }
    if let (Some(start), Some(boot)) = (field(22), boot_time()) {
        single(
            enc,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            Gauge,
            boot + start / TICKS,
        )?;
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        single(
            enc,
            "process_open_fds",
            "Open file descriptors.",
            Gauge,
            fds.count() as f64,
        )?;
    }
    if let Some(max) = max_fds() {
        single(
            enc,
            "process_max_fds",
            "Most file descriptors the process may open.",
            Gauge,
            max,
        )?;
    }
    Ok(())
}

/// A `kB` value of `/proc/self/status`.
fn status_kib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The system's boot time (Unix seconds), from `/proc/stat`.
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line[6..].trim().parse().ok()
}

/// The soft limit on open files, from `/proc/self/limits`.
fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
