//! Process metrics read from `/proc` (Linux only; zeros elsewhere).

use std::path::Path;

/// Kernel clock ticks per second assumed when converting `/proc` tick counts.
/// Reading the real value needs `sysconf(_SC_CLK_TCK)` (unsafe FFI, which this
/// crate forbids); it is 100 on every mainstream Linux architecture.
pub const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Why a `/proc` file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProcessStatsError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file did not have the expected shape.
    #[error("parsing {path}: {what}")]
    Parse {
        /// The file.
        path: String,
        /// What was missing or malformed.
        what: &'static str,
    },
}

/// Resource usage of this process, for the standard `process_*` metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// Resident set size, in bytes (`VmRSS` of `/proc/self/status`).
    pub resident_memory_bytes: u64,
    /// Open file descriptors (entries of `/proc/self/fd`).
    pub open_fds: u64,
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Process start time, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads the current values, best effort: anything unreadable (e.g. not on
    /// Linux) is left at 0 and logged at debug level.
    pub fn read() -> Self {
        let mut stats = ProcessStats::default();
        match read_rss("/proc/self/status") {
            Ok(v) => stats.resident_memory_bytes = v,
            Err(e) => tracing::debug!(error = %e, "process RSS unavailable"),
        }
        match count_fds("/proc/self/fd") {
            Ok(v) => stats.open_fds = v,
            Err(e) => tracing::debug!(error = %e, "open fd count unavailable"),
        }
        match read_file("/proc/self/stat").and_then(|s| parse_stat(&s)) {
            Ok((cpu_ticks, start_ticks)) => {
                stats.cpu_seconds = cpu_ticks as f64 / CLOCK_TICKS_PER_SECOND;
                match read_file("/proc/stat").and_then(|s| parse_btime(&s)) {
                    Ok(btime) => {
                        stats.start_time_seconds =
                            btime as f64 + start_ticks as f64 / CLOCK_TICKS_PER_SECOND;
                    }
                    Err(e) => tracing::debug!(error = %e, "boot time unavailable"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "process CPU time unavailable"),
        }
        stats
    }
}

fn read_file(path: &str) -> Result<String, ProcessStatsError> {
    std::fs::read_to_string(path).map_err(|source| ProcessStatsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_rss(path: &str) -> Result<u64, ProcessStatsError> {
    parse_status_rss(&read_file(path)?)
}

fn count_fds(path: &str) -> Result<u64, ProcessStatsError> {
    let entries = std::fs::read_dir(Path::new(path)).map_err(|source| ProcessStatsError::Io {
        path: path.to_owned(),
        source,
    })?;
    // The directory handle used for listing is itself an open fd; leave it in
    // (this is what other Prometheus clients report too).
    Ok(entries.filter(|e| e.is_ok()).count() as u64)
}

/// `VmRSS:   1234 kB` → bytes.
fn parse_status_rss(status: &str) -> Result<u64, ProcessStatsError> {
    let err = |what| ProcessStatsError::Parse {
        path: "/proc/self/status".into(),
        what,
    };
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or_else(|| err("no VmRSS line"))?;
    let kb: u64 = line
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| err("bad VmRSS value"))?;
    Ok(kb * 1024)
}

/// `/proc/self/stat` → (utime + stime, starttime), all in clock ticks.
fn parse_stat(stat: &str) -> Result<(u64, u64), ProcessStatsError> {
    let err = |what| ProcessStatsError::Parse {
        path: "/proc/self/stat".into(),
        what,
    };
    // The command name (field 2) is in parentheses and may contain spaces, so
    // split after the last ')'. The rest starts at field 3 (state).
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| err("no ')' after comm"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, ProcessStatsError> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| err("missing numeric field"))
    };
    Ok((field(14)? + field(15)?, field(22)?))
}

/// `btime 1700000000` line of `/proc/stat` → boot time, seconds since epoch.
fn parse_btime(stat: &str) -> Result<u64, ProcessStatsError> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(ProcessStatsError::Parse {
            path: "/proc/stat".into(),
            what: "no btime line",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let s = "Name:\tsluice\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\nThreads:\t4\n";
        assert_eq!(parse_status_rss(s).expect("rss"), 2048 * 1024);
        assert!(parse_status_rss("Name: x\n").is_err());
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime prio nice threads itreal starttime
        let s = "42 (a ) b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 12345 999 1";
        assert_eq!(parse_stat(s).expect("stat"), (300, 12345));
        assert!(parse_stat("garbage").is_err());
        assert!(parse_stat("1 (x) S 1").is_err());
    }

    #[test]
    fn parses_btime() {
        let s = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        assert_eq!(parse_btime(s).expect("btime"), 1_700_000_000);
        assert!(parse_btime("cpu 1\n").is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_self() {
        let p = ProcessStats::read();
        assert!(p.resident_memory_bytes > 0);
        assert!(p.open_fds >= 3);
        assert!(p.start_time_seconds > 1_000_000_000.0);
    }
}
