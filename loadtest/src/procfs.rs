//! Process measurements from /proc: resident memory, CPU time and bytes written, for the
//! server(s) under test and for the load generator itself.

use std::time::Instant;

/// Clock ticks per second of /proc/PID/stat times (`USER_HZ`, 100 on every Linux ABI in use).
const TICKS_PER_SECOND: f64 = 100.0;

/// Resident set size in KiB (`VmRSS`) of a process; `pid` may be `self`.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&status)
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU seconds (user + system, all threads) a process has used; `pid` may be `self`.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu(&stat)
}

fn parse_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 overall (utime, stime) are 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Bytes a process has handed to `write`-like calls (`wchar` of /proc/PID/io: sockets, pipes
/// and files alike, whether or not they reached a disk), for bytes on the wire.
pub fn written_bytes(pid: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    parse_wchar(&io)
}

fn parse_wchar(io: &str) -> Option<u64> {
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))?
        .trim()
        .parse()
        .ok()
}

/// Summed bytes written by several processes (None if any cannot be read).
pub fn written_sum(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|p| written_bytes(&p.to_string())).sum()
}

/// Summed RSS of several processes (None if any cannot be read).
pub fn rss_sum(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|p| rss_kib(&p.to_string())).sum()
}

/// Summed CPU seconds of several processes (None if any cannot be read).
pub fn cpu_sum(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| cpu_seconds(&p.to_string())).sum()
}

/// CPU use of the server(s) and of this process over a measurement window, and the bytes the
/// server(s) wrote meanwhile.
pub struct CpuWindow {
    start: Instant,
    server: Option<f64>,
    written: Option<u64>,
    own: Option<f64>,
    pids: Vec<u32>,
}

/// What a window measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    /// Window length, seconds.
    pub seconds: f64,
    /// Cores used by the server(s) on average (None without `--server-pid`).
    pub server_cores: Option<f64>,
    /// Cores used by the load generator.
    pub own_cores: Option<f64>,
    /// CPU seconds used by the load generator.
    pub own_seconds: Option<f64>,
    /// CPU seconds used by the server(s).
    pub server_seconds: Option<f64>,
    /// Bytes the server(s) wrote (`wchar`), None without `--server-pid` or /proc/PID/io.
    pub server_written: Option<u64>,
}

impl CpuWindow {
    /// Starts a window now.
    pub fn start(pids: &[u32]) -> Self {
        Self {
            start: Instant::now(),
            server: if pids.is_empty() { None } else { cpu_sum(pids) },
            written: if pids.is_empty() {
                None
            } else {
                written_sum(pids)
            },
            own: cpu_seconds("self"),
            pids: pids.to_vec(),
        }
    }

    /// Ends the window now.
    pub fn finish(&self) -> CpuUse {
        let seconds = self.start.elapsed().as_secs_f64().max(1e-9);
        let server = self.server.and_then(|s0| Some(cpu_sum(&self.pids)? - s0));
        let own = self.own.and_then(|o0| Some(cpu_seconds("self")? - o0));
        let written = self
            .written
            .and_then(|w0| Some(written_sum(&self.pids)?.saturating_sub(w0)));
        CpuUse {
            seconds,
            server_cores: server.map(|s| s / seconds),
            own_cores: own.map(|o| o / seconds),
            own_seconds: own,
            server_seconds: server,
            server_written: written,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tgateway\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads: 3\n";
        assert_eq!(parse_vmrss(status), Some(12345));
        assert_eq!(parse_vmrss("Name: x\n"), None);
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_cpu(stat), Some(3.0));
        assert_eq!(parse_cpu("4242 (x) S 1"), None);
        let io = "rchar: 10\nwchar: 2933172360\nsyscr: 1\n";
        assert_eq!(parse_wchar(io), Some(2_933_172_360));
        assert_eq!(parse_wchar("rchar: 1\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(rss_kib("self").unwrap_or(0) > 0);
        assert!(cpu_seconds("self").is_some());
        assert!(written_bytes("self").is_some());
    }
}
