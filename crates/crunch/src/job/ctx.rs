//! [`RunCtx`]: what a front end hands a job besides the job itself: where progress goes, the
//! cancel token, the job's own thread pool and the registry it records into.

use crate::error::{Error, Result};
use crate::progress::{Cancel, NoProgress, Progress};
use std::path::PathBuf;
use std::sync::Arc;

/// The context one job runs in. Cheap to clone (everything is shared).
#[derive(Clone)]
pub struct RunCtx {
    /// Receives the job's progress events.
    pub progress: Arc<dyn Progress>,
    /// Tripped to stop the job; it then removes its temporary output and returns
    /// [`Error::Cancelled`].
    pub cancel: Cancel,
    /// The job's worker threads: every parallel loop of the job runs here, never on a
    /// process-global pool, so two jobs of one server do not share workers.
    pub pool: Arc<rayon::ThreadPool>,
    /// The registry the job records its run in (`None`: not recorded).
    pub registry: Option<PathBuf>,
}

impl RunCtx {
    /// A context with `threads` workers (0 = all cores), no progress output, a fresh cancel
    /// token and no registry.
    ///
    /// # Errors
    /// The thread pool cannot be created.
    pub fn new(threads: usize) -> Result<Self> {
        Ok(RunCtx { progress: Arc::new(NoProgress), cancel: Cancel::new(), pool: pool(threads)?, registry: None })
    }

    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    pub fn with_cancel(mut self, cancel: Cancel) -> Self {
        self.cancel = cancel;
        self
    }

    pub fn with_registry(mut self, registry: Option<PathBuf>) -> Self {
        self.registry = registry;
        self
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// `Err(Cancelled)` once the job was cancelled.
    pub fn check_cancel(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// A pool of `threads` workers (0 = one per core).
///
/// # Errors
/// The operating system refuses the threads.
pub fn pool(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    let n = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("crunch-worker-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Invalid(format!("cannot start {n} worker threads: {e}")))
}
