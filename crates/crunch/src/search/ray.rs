//! Search trials as tasks on a Ray cluster.
//!
//! Ray's task API is Python's, so the driver (this process) starts a small bridge,
//! `ray_bridge.py`, with the Python that has `ray` installed. The bridge connects to the cluster,
//! runs every trial it is sent as a task that executes the `crunch` binary on a worker
//! (`crunch job --json …`: the search job itself, given the one point to evaluate and no
//! registry), and streams each task's result back as one JSON line when it finishes. Ray retries
//! a task whose worker or node was lost (`--max-retries`); a task still failing after that, or
//! whose `crunch` exited with an error, comes back as failed, and so does every pending trial if
//! the bridge itself dies: every trial asked for is accounted for. The driver owns the registry.
//!
//! Protocol, one JSON object per line. To the bridge: `{"id", "argv", "env", "num_cpus"}` per
//! trial; end of input = no more trials. From it: `{"event": "connected", "cpus", "nodes"}`,
//! then per trial `{"event": "result", "id", "status": "ok"|"failed", "exit_code", "stdout",
//! "stderr", "node", "attempts", "seconds", "error"}` (and `{"event": "retry", …}` lines);
//! `{"event": "error", "error"}` when it cannot connect.

use super::recipe::Recipe;
use super::Trial;
use crate::error::{Error, Result};
use crate::job::{Job, RayOptions, RunCtx, SearchJob};
use crate::progress::Cancel;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The bridge's source, written to a temporary file for each search.
pub const BRIDGE: &str = include_str!("ray_bridge.py");

/// How long the bridge may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Deserialize)]
struct Event {
    event: String,
    #[serde(default)]
    id: Option<usize>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    stdout: Option<String>,
    #[serde(default)]
    stderr: Option<String>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    cpus: Option<f64>,
}

enum Line {
    Event(Event),
    /// The bridge's output ended (it exited).
    Closed,
}

/// A connected bridge with the trials it runs.
pub struct Cluster {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Line>,
    stderr_tail: Arc<Mutex<String>>,
    slots: usize,
    pending: BTreeSet<usize>,
    template: SearchJob,
    crunch: PathBuf,
    cpus_per_trial: usize,
    cancel: Cancel,
    dir: PathBuf,
    closed: bool,
}

fn python(o: &RayOptions) -> PathBuf {
    o.python
        .clone()
        .or_else(|| std::env::var_os("CRUNCH_RAY_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

impl Cluster {
    /// Start the bridge and wait until it is connected to the cluster at `o.address`.
    ///
    /// # Errors
    /// No Python, no `ray` module, an unreachable cluster (naming `search.ray.address`).
    pub fn start(j: &SearchJob, o: &RayOptions, out_dir: &Path, ctx: &RunCtx) -> Result<Cluster> {
        if o.cpus_per_trial == 0 {
            return Err(Error::field("search.ray.cpus_per_trial", "must be at least 1"));
        }
        let crunch = match &o.crunch {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| Error::io("the crunch binary", e))?,
        };
        let dir = std::env::temp_dir().join(format!("crunch-ray-{}-{}", std::process::id(), next_n()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let script = dir.join("ray_bridge.py");
        std::fs::write(&script, BRIDGE).map_err(|e| Error::io(&script, e))?;
        let py = python(o);
        let mut child = Command::new(&py)
            .arg(&script)
            .arg("--address")
            .arg(&o.address)
            .arg("--max-retries")
            .arg(o.max_retries.to_string())
            .arg("--num-cpus")
            .arg(o.cpus_per_trial.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                Error::field("search.ray.python", format!("{}: {e} (a Python with `ray` installed)", py.display()))
            })?;
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Event>(&line) {
                    Ok(e) => {
                        if tx.send(Line::Event(e)).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!("ray bridge: unreadable line ({e}): {line}"),
                }
            }
            let _ = tx.send(Line::Closed);
        });
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        let tail = stderr_tail.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(err);
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                t.push_str(&String::from_utf8_lossy(&buf[..n]));
                if t.len() > 16384 {
                    let cut = t.len() - 8192;
                    let cut = (cut..t.len()).find(|&i| t.is_char_boundary(i)).unwrap_or(t.len());
                    t.drain(..cut);
                }
            }
        });
        let mut template = j.clone();
        template.ray = None;
        template.strategy = "grid".into();
        template.budget = None;
        template.out_dir = Some(out_dir.to_path_buf());
        let mut c = Cluster {
            child,
            stdin,
            rx,
            stderr_tail,
            slots: 1,
            pending: BTreeSet::new(),
            template,
            crunch,
            cpus_per_trial: o.cpus_per_trial,
            cancel: ctx.cancel.clone(),
            dir,
            closed: false,
        };
        let t0 = Instant::now();
        loop {
            if ctx.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            match c.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Line::Event(e)) if e.event == "connected" => {
                    let cpus = e.cpus.unwrap_or(1.0).max(0.0) as usize;
                    c.slots = (cpus / o.cpus_per_trial).max(1);
                    tracing::info!("ray: connected to {} ({cpus} CPUs, {} trials at a time)", o.address, c.slots);
                    return Ok(c);
                }
                Ok(Line::Event(e)) if e.event == "error" => {
                    return Err(Error::field(
                        "search.ray.address",
                        format!("{}: {}", o.address, e.error.unwrap_or_default()),
                    ));
                }
                Ok(Line::Event(_)) => {}
                Ok(Line::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::field(
                        "search.ray.address",
                        format!("{}: the Ray bridge exited: {}", o.address, c.tail()),
                    ));
                }
                Err(RecvTimeoutError::Timeout) if t0.elapsed() > CONNECT_TIMEOUT => {
                    return Err(Error::field(
                        "search.ray.address",
                        format!("{}: not connected after {} s", o.address, CONNECT_TIMEOUT.as_secs()),
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn tail(&self) -> String {
        let t = self.stderr_tail.lock().unwrap_or_else(|p| p.into_inner());
        let lines: Vec<&str> = t.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// A failed trial, with the reason.
    fn failed(msg: String) -> Trial {
        Trial { predicted_kld: f64::NAN, error: Some(msg), ..Trial::default() }
    }

    fn result(&self, e: Event) -> Trial {
        let node = e.node.clone();
        let attempts = e.attempts;
        let mut t = if e.status.as_deref() == Some("ok") {
            parse_trial(e.stdout.as_deref().unwrap_or_default()).unwrap_or_else(Self::failed)
        } else {
            let why = e
                .error
                .clone()
                .or_else(|| {
                    e.stderr.as_ref().map(|s| s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string())
                })
                .unwrap_or_default();
            let code = e.exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default();
            Self::failed(format!("failed on the cluster after {} attempt(s){code}: {why}", attempts.unwrap_or(1)))
        };
        t.node = node;
        t.attempts = attempts;
        t
    }
}

/// The one trial in a worker's `crunch job` output.
fn parse_trial(stdout: &str) -> std::result::Result<Trial, String> {
    #[derive(Deserialize)]
    struct Out {
        candidates: Vec<Trial>,
    }
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    let o: Out = serde_json::from_str(line).map_err(|e| format!("unreadable trial from the worker ({e})"))?;
    o.candidates.into_iter().next().ok_or_else(|| "the worker returned no trial".to_string())
}

impl super::Executor for Cluster {
    fn slots(&self) -> usize {
        self.slots
    }

    fn submit(&mut self, id: usize, _recipe: &Recipe, point: &[f64]) -> Result<()> {
        let mut job = self.template.clone();
        job.trial_points = vec![point.to_vec()];
        let json = serde_json::to_string(&Job::Search(job)).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut env = serde_json::Map::new();
        env.insert("CRUNCH_REGISTRY".into(), "off".into());
        if let Ok(c) = std::env::var("CRUNCH_CACHE") {
            env.insert("CRUNCH_CACHE".into(), c.into());
        }
        let line = serde_json::json!({
            "id": id,
            "argv": [self.crunch.display().to_string(), "job", "--threads", self.cpus_per_trial.to_string(), "--json", json],
            "env": env,
            "num_cpus": self.cpus_per_trial,
        });
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(Error::Invalid("the Ray bridge is closed".into()));
        };
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| Error::Invalid(format!("the Ray bridge stopped taking trials: {e}; {}", self.tail())))?;
        self.pending.insert(id);
        Ok(())
    }

    fn next(&mut self) -> Result<Option<(usize, Trial)>> {
        loop {
            let Some(&first) = self.pending.iter().next() else { return Ok(None) };
            if self.closed {
                // The bridge is gone: what it had is failed, one at a time.
                self.pending.remove(&first);
                let why = format!("the Ray bridge exited before the trial came back: {}", self.tail());
                return Ok(Some((first, Self::failed(why))));
            }
            if self.cancel.is_cancelled() {
                let _ = self.child.kill();
                return Err(Error::Cancelled);
            }
            match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Line::Event(e)) if e.event == "result" => {
                    let Some(id) = e.id.filter(|i| self.pending.contains(i)) else {
                        tracing::warn!("ray bridge: result for an unknown trial {:?}", e.id);
                        continue;
                    };
                    self.pending.remove(&id);
                    return Ok(Some((id, self.result(e))));
                }
                Ok(Line::Event(e)) if e.event == "retry" => {
                    tracing::warn!("ray: trial {:?} lost a worker, retrying: {}", e.id, e.error.unwrap_or_default());
                }
                Ok(Line::Event(_)) => {}
                Ok(Line::Closed) | Err(RecvTimeoutError::Disconnected) => self.closed = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // End of input: the bridge reports what is left and exits.
        self.stdin.take();
        let t0 = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if t0.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn next_n() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_workers_trial() {
        let t = parse_trial("noise\n{\"kind\":\"search\",\"candidates\":[{\"file_bytes\":5,\"bpw\":4.5,\"predicted_kld\":null,\"measured\":null,\"ram\":null,\"quantize_seconds\":1.0,\"output\":null,\"run_id\":null,\"error\":null,\"types\":{}}]}\n").unwrap();
        assert_eq!(t.file_bytes, 5);
        assert!(t.predicted_kld.is_nan());
        assert!(parse_trial("garbage").unwrap_err().contains("unreadable"));
        assert!(parse_trial("{\"candidates\":[]}").unwrap_err().contains("no trial"));
    }
}
