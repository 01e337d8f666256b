//! Handing freed heap memory back to the system.
//!
//! glibc's malloc keeps freed memory in per-thread arenas for reuse. A server whose jobs, header
//! reads and plans run on many threads holds on to tens of MiB more after every load round, all of
//! it free (docs/SERVER.md measures it). [`release_free_memory`] asks the allocator to return what
//! it holds free; the server calls it after every job and, while requests keep coming, at most
//! every [`PERIOD`]. Other allocators and systems return memory their own way: there it does
//! nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the background task looks for freed memory to return.
pub const PERIOD: Duration = Duration::from_secs(5);

/// Set by every request and job end; the background task trims only when it is set.
static DIRTY: AtomicBool = AtomicBool::new(false);

/// Note that memory may have been freed since the last trim.
pub fn mark() {
    DIRTY.store(true, Ordering::Relaxed);
}

/// Return the allocator's free memory to the system now (glibc: `malloc_trim(0)`, which releases
/// free pages of every arena, not only the top of the main heap). Takes a few milliseconds; call
/// it off the async threads.
#[allow(unsafe_code)] // the one FFI call below; the rest of the server is safe code
pub fn release_free_memory() {
    DIRTY.store(false, Ordering::Relaxed);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's own lists under its
    // locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Run forever: every [`PERIOD`], trim if anything marked memory as freed since the last trim.
pub async fn background() {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if DIRTY.load(Ordering::Relaxed) {
            let _ = tokio::task::spawn_blocking(release_free_memory).await;
        }
    }
}
