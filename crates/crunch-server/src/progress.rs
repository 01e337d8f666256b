//! A job's progress sink: every event updates the job's live view (a `watch` channel the event
//! streams read), and about once a second the view is persisted to the registry.

use crunch_registry::{JobState, Registry};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often progress is written to the registry at most.
pub const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// Where a running job is.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProgressView {
    /// The current stage (`quantize`, `perplexity`, `profile`…), as the job names it.
    pub stage: String,
    /// Units done in this stage (tensors, bytes, chunks… as the stage counts them).
    pub done: u64,
    /// Units in this stage (0 when unknown).
    pub total: u64,
    /// `done / total` in percent.
    pub percent: f64,
    /// What was processed last (a tensor name, a chunk).
    pub item: String,
    /// Seconds since the stage started.
    pub elapsed_s: f64,
    /// Seconds left in this stage, from its pace so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub eta_s: Option<f64>,
    /// The last message of a finished stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the event streams watch: the job's state and progress.
#[derive(Clone, Debug)]
pub struct Live {
    pub state: JobState,
    pub progress: Option<ProgressView>,
}

/// The [`crunch::progress::Progress`] of one job.
pub struct Sink {
    id: i64,
    live: watch::Sender<Live>,
    registry: Arc<Mutex<Registry>>,
    clock: Mutex<Clock>,
}

struct Clock {
    stage_start: Instant,
    last_persist: Option<Instant>,
}

impl Sink {
    pub fn new(id: i64, live: watch::Sender<Live>, registry: Arc<Mutex<Registry>>) -> Self {
        Sink { id, live, registry, clock: Mutex::new(Clock { stage_start: Instant::now(), last_persist: None }) }
    }

    fn update(&self, new_stage: bool, f: impl FnOnce(&mut ProgressView)) {
        let (elapsed, persist) = {
            let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
            if new_stage {
                c.stage_start = Instant::now();
            }
            let persist = c.last_persist.is_none_or(|t| t.elapsed() >= PERSIST_EVERY);
            if persist {
                c.last_persist = Some(Instant::now());
            }
            (c.stage_start.elapsed().as_secs_f64(), persist)
        };
        let mut snapshot = None;
        self.live.send_modify(|l| {
            let p = l.progress.get_or_insert_with(ProgressView::default);
            f(p);
            p.elapsed_s = elapsed;
            p.percent = if p.total > 0 { (p.done as f64 / p.total as f64 * 100.0).clamp(0.0, 100.0) } else { 0.0 };
            p.eta_s = (p.done > 0 && p.total > p.done && elapsed > 0.0)
                .then(|| elapsed * (p.total - p.done) as f64 / p.done as f64);
            if persist {
                snapshot = Some(p.clone());
            }
        });
        if let Some(p) = snapshot {
            let value = serde_json::to_value(&p).unwrap_or_default();
            let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = reg.set_job_progress(self.id, &value) {
                tracing::warn!("job {}: cannot store progress: {e}", self.id);
            }
        }
    }
}

impl crunch::progress::Progress for Sink {
    fn start(&self, what: &str, total: u64) {
        self.update(true, |p| {
            p.stage = what.to_string();
            p.total = total;
            p.done = 0;
            p.item.clear();
            p.message = None;
        });
    }

    fn advance(&self, done: u64, item: &str) {
        self.update(false, |p| {
            p.done = done;
            if p.item != item {
                p.item.clear();
                p.item.push_str(item);
            }
        });
    }

    fn finish(&self, message: &str) {
        self.update(false, |p| {
            if p.total > 0 {
                p.done = p.total;
            }
            p.message = Some(message.to_string());
        });
    }
}
