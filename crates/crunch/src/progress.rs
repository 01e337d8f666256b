//! Progress reporting for long jobs: an indicatif bar on a terminal, plain lines otherwise, or
//! nothing. Library code only calls the [`Progress`] trait.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
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

/// A bar on a terminal, otherwise one plain line per item on stderr.
pub struct TermProgress {
    bar: Option<ProgressBar>,
    quiet: bool,
    total: std::sync::atomic::AtomicU64,
    /// Last tenth of the job reported in plain-line mode.
    last_tenth: std::sync::atomic::AtomicU64,
}

impl TermProgress {
    pub fn new(quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b
        });
        TermProgress { bar, quiet, total: 0.into(), last_tenth: 0.into() }
    }
}

impl Progress for TermProgress {
    fn start(&self, what: &str, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_prefix(what.to_string());
            b.set_length(total);
        }
    }
    fn advance(&self, done: u64, item: &str) {
        match &self.bar {
            Some(b) => {
                b.set_position(done);
                b.set_message(item.to_string());
            }
            None if self.quiet => {}
            None => {
                let total = self.total.load(Ordering::Relaxed).max(1);
                let tenth = done.saturating_mul(10) / total;
                if tenth > self.last_tenth.swap(tenth, Ordering::Relaxed) {
                    eprintln!("[{:3}%] {item}", tenth * 10);
                }
            }
        }
    }
    fn finish(&self, message: &str) {
        match &self.bar {
            Some(b) => b.finish_with_message(message.to_string()),
            None if self.quiet => {}
            None => eprintln!("{message}"),
        }
    }
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
