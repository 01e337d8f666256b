//! Resident memory of this process, from `/proc/self/status` (Linux; `None` elsewhere).
//!
//! `VmHWM` is the peak resident set, which counts file pages of memory-mapped inputs that are
//! resident; `RssAnon` is the memory the process allocated itself. Streaming jobs sample
//! `RssAnon` as they go to report its peak (the kernel keeps no high-water mark for it).

/// One reading, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemStatus {
    /// Peak resident set (`VmHWM`).
    pub peak_rss: u64,
    /// Resident set now (`VmRSS`).
    pub rss: u64,
    /// Anonymous resident memory now (`RssAnon`).
    pub anon: u64,
    /// File-backed resident memory now (`RssFile`: mapped inputs).
    pub file: u64,
}

/// Read the current figures.
pub fn status() -> Option<MemStatus> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|k| k * 1024)
    };
    Some(MemStatus {
        peak_rss: kib("VmHWM:")?,
        rss: kib("VmRSS:")?,
        anon: kib("RssAnon:").unwrap_or(0),
        file: kib("RssFile:").unwrap_or(0),
    })
}

/// Tracks the peak of anonymous memory across samples.
#[derive(Debug, Default)]
pub struct AnonPeak(std::sync::atomic::AtomicU64);

impl AnonPeak {
    /// Take a sample now.
    pub fn sample(&self) {
        if let Some(s) = status() {
            self.0.fetch_max(s.anon, std::sync::atomic::Ordering::Relaxed);
        }
    }
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_proc_status_on_linux() {
        if cfg!(target_os = "linux") {
            let s = super::status().unwrap();
            assert!(s.peak_rss >= s.rss && s.rss > 0 && s.anon > 0);
        }
    }
}
