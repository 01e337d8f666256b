//! Facts about this process and machine: host name, process start time (to tell a live process
//! from a recycled pid), peak resident memory, CPU and memory of the machine. Linux reads `/proc`;
//! elsewhere the answers are `None` and stale runs are found by their heartbeat alone.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Start time of process `pid` in clock ticks since boot (`/proc/PID/stat` field 22), and whether
/// it is a zombie. `None` when the process does not exist (or there is no `/proc`).
fn stat(pid: u32) -> Option<(String, bool)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    let state = fields.first()?;
    Some((fields.get(19)?.to_string(), *state == "Z" || *state == "X"))
}

/// This process's start-time token (see [`is_alive`]).
pub fn self_start_token() -> Option<String> {
    stat(std::process::id()).map(|(s, _)| s)
}

/// Whether `pid` still runs the process that started at `start` (so a recycled pid does not count).
/// `None` when that cannot be told on this system.
pub fn is_alive(pid: u32, start: Option<&str>) -> Option<bool> {
    if !std::path::Path::new("/proc/self/stat").exists() {
        return None;
    }
    Some(match stat(pid) {
        None => false,
        Some((_, true)) => false,
        Some((s, false)) => start.is_none_or(|want| want == s),
    })
}

fn status_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Peak resident memory of this process so far (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// A short description of the machine: OS, architecture, CPU model, core count, memory.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let mem = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| k * 1024)
    });
    serde_json::json!({
        "host": hostname(),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_bytes": mem,
    })
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for a Unix time.
pub fn format_time(unix: f64) -> String {
    let secs = unix.floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(format_time(0.0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400.0), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_700_000_000.5), "2023-11-14 22:13:20");
    }

    #[test]
    fn this_process_is_alive() {
        if let Some(tok) = self_start_token() {
            assert_eq!(is_alive(std::process::id(), Some(&tok)), Some(true));
            assert_eq!(is_alive(std::process::id(), Some("1")), Some(false));
            assert!(peak_rss_bytes().unwrap() > 0);
        }
    }
}
