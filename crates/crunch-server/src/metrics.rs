//! `GET /metrics`: Prometheus text exposition (prometheus-client) of the jobs by kind and state,
//! job durations, queue depth, bytes read and written by jobs, evaluation speed and the
//! process's resident memory, all in the `crunch_` namespace.
//!
//! prometheus-client writes OpenMetrics; the answer is converted to the Prometheus text format
//! 0.0.4 that every scraper and `promtool check metrics` read (counter families named with their
//! `_total` suffix, no `# EOF` / `# UNIT` lines).

use crunch::job::Job;
use crunch_registry::JobState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::path::Path;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub kind: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpeedLabels {
    pub kind: String,
    pub test: String,
}

fn duration_histogram() -> Histogram {
    // 0.1 s .. ~1.8 h
    Histogram::new(exponential_buckets(0.1, 2.0, 16))
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Gauge>,
    duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    queue_depth: Gauge,
    read_bytes: Counter,
    written_bytes: Counter,
    tokens_per_second: Family<SpeedLabels, Gauge<f64, AtomicU64>>,
    rss: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let jobs = Family::<JobLabels, Gauge>::default();
        let duration = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let queue_depth = Gauge::default();
        let read_bytes = Counter::default();
        let written_bytes = Counter::default();
        let tokens_per_second = Family::<SpeedLabels, Gauge<f64, AtomicU64>>::default();
        let rss = Gauge::default();
        let mut registry = Registry::default();
        registry.register("crunch_jobs", "Jobs in the registry by kind and state", jobs.clone());
        registry.register("crunch_job_duration_seconds", "Time jobs took from start to end, by kind", duration.clone());
        registry.register("crunch_queue_depth", "Jobs waiting for a slot", queue_depth.clone());
        registry.register(
            "crunch_read_bytes",
            "Bytes of the input files of the jobs that succeeded",
            read_bytes.clone(),
        );
        registry.register(
            "crunch_written_bytes",
            "Bytes of the output files of the jobs that succeeded",
            written_bytes.clone(),
        );
        registry.register(
            "crunch_eval_tokens_per_second",
            "Evaluation speed of the latest evaluation job, by kind and test",
            tokens_per_second.clone(),
        );
        registry.register("crunch_process_resident_memory_bytes", "Resident memory of the server process", rss.clone());
        Metrics { registry, jobs, duration, queue_depth, read_bytes, written_bytes, tokens_per_second, rss }
    }

    /// A job ended after `seconds` (0 for one cancelled before it started).
    pub fn job_ended(&self, kind: &str, seconds: f64, state: JobState, job: &Job, outcome: Option<&serde_json::Value>) {
        if seconds > 0.0 {
            self.duration.get_or_create(&KindLabels { kind: kind.to_string() }).observe(seconds);
        }
        if state != JobState::Succeeded {
            return;
        }
        let mut j = job.clone();
        let (mut read, mut written) = (0u64, 0u64);
        for (_, role, p) in j.paths_mut() {
            let n = size_of(p, 3);
            match role {
                crunch::job::PathRole::Input => read += n,
                crunch::job::PathRole::Output => written += n,
            }
        }
        self.read_bytes.inc_by(read);
        self.written_bytes.inc_by(written);
        if let Some(o) = outcome {
            let mut speeds = Vec::new();
            find_speeds(o, kind, 0, &mut speeds);
            for (test, v) in speeds {
                self.tokens_per_second.get_or_create(&SpeedLabels { kind: kind.to_string(), test }).set(v);
            }
        }
    }

    /// The exposition, with the gauges read now: `counts` are the jobs per (kind, state).
    pub fn render(&self, counts: &[(String, JobState, u64)], queue_depth: usize) -> String {
        self.jobs.clear();
        for (kind, state, n) in counts {
            self.jobs
                .get_or_create(&JobLabels { kind: kind.clone(), state: state.as_str().to_string() })
                .set(*n as i64);
        }
        self.queue_depth.set(queue_depth as i64);
        if let Some(rss) = resident_bytes() {
            self.rss.set(rss as i64);
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            return String::new();
        }
        to_prometheus_text(&text)
    }
}

/// Size of a file, or of the files in a folder (to `depth` levels).
fn size_of(p: &Path, depth: usize) -> u64 {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => m.len(),
        Ok(m) if m.is_dir() && depth > 0 => {
            std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| size_of(&e.path(), depth - 1)).sum()).unwrap_or(0)
        }
        _ => 0,
    }
}

/// `tokens_per_second` figures in an outcome, named by their `test` (bench: `pp512`, `tg128`)
/// or by the kind.
fn find_speeds(v: &serde_json::Value, kind: &str, depth: usize, out: &mut Vec<(String, f64)>) {
    if depth > 3 {
        return;
    }
    match v {
        serde_json::Value::Object(m) => {
            if let Some(tps) = m.get("tokens_per_second").and_then(|t| t.as_f64()) {
                let test = m.get("test").and_then(|t| t.as_str()).unwrap_or(kind).to_string();
                if tps.is_finite() && !out.iter().any(|(t, _)| *t == test) {
                    out.push((test, tps));
                }
            }
            for x in m.values() {
                find_speeds(x, kind, depth + 1, out);
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                find_speeds(x, kind, depth + 1, out);
            }
        }
        _ => {}
    }
}

/// Resident memory of this process (`VmRSS` of `/proc/self/status`, exact in bytes; the
/// resident page count of `/proc/self/statm` would need the page size from libc).
pub fn resident_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..].split_whitespace().next()?.parse::<u64>().ok().map(|k| k * 1024)
}

/// OpenMetrics (as prometheus-client writes it) to the Prometheus text format 0.0.4.
fn to_prometheus_text(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut counters = std::collections::HashSet::new();
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_prometheus_text() {
        let m = Metrics::new();
        let job: Job = crunch::job::from_json(br#"{"kind":"inspect","path":"/nonexistent"}"#).unwrap();
        let outcome = serde_json::json!({"results": [{"test": "tg128", "tokens_per_second": 12.5}]});
        m.job_ended("bench", 3.0, JobState::Succeeded, &job, Some(&outcome));
        let text = m.render(&[("quantize".into(), JobState::Running, 1)], 2);
        assert!(text.contains("# TYPE crunch_read_bytes_total counter"), "{text}");
        assert!(text.contains("crunch_read_bytes_total 0"), "{text}");
        assert!(text.contains("crunch_jobs{kind=\"quantize\",state=\"running\"} 1"), "{text}");
        assert!(text.contains("crunch_queue_depth 2"), "{text}");
        assert!(text.contains("crunch_eval_tokens_per_second{kind=\"bench\",test=\"tg128\"} 12.5"), "{text}");
        assert!(text.contains("crunch_job_duration_seconds_count{kind=\"bench\"} 1"), "{text}");
        assert!(!text.contains("# EOF"));
        assert!(resident_bytes().unwrap_or(1) > 0);
    }
}
