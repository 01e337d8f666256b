//! Progress reporting for long jobs. Library code only calls the [`Progress`] trait; each front
//! end brings its own sink (a terminal bar in the CLI, server-sent events in the server).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Receives progress events from a job.
pub trait Progress: Send + Sync {
    /// A job of `total` units (bytes, tokens…) begins.
    fn start(&self, what: &str, total: u64);
    /// `done` units are finished; `item` names what was just processed.
    fn advance(&self, done: u64, item: &str);
    /// The job ended.
    fn finish(&self, message: &str);
}

/// Discards events.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64, _: &str) {}
    fn finish(&self, _: &str) {}
}

/// A cancel flag shared with a Ctrl-C handler.
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
