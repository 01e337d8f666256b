//! The command line's progress sinks: an indicatif bar on a terminal, plain lines otherwise
//! ([`TermProgress`]), or one line per item ([`Lines`], for the evaluations' running estimates).

use crunch::progress::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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

impl TermProgress {
    /// Shared, for a job's context.
    pub fn shared(quiet: bool) -> Arc<dyn Progress> {
        Arc::new(TermProgress::new(quiet))
    }
}

/// Prints each progress item as a line on stderr (the running estimates).
pub struct Lines {
    pub quiet: bool,
}

impl Lines {
    pub fn shared(quiet: bool) -> Arc<dyn Progress> {
        Arc::new(Lines { quiet })
    }
}

impl Progress for Lines {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64, item: &str) {
        if !self.quiet {
            eprintln!("{item}");
        }
    }
    fn finish(&self, _: &str) {}
}
