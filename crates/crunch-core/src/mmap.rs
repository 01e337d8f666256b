//! Read-only memory maps of input files: the one place in crunch-core that needs `unsafe`.

#![allow(unsafe_code)]

use memmap2::Mmap;
use std::fs::File;
use std::path::Path;

/// A read-only view of a whole file. Empty files are represented without a map; a file built in
/// memory (e.g. a model decoded on load) is held as its bytes.
pub struct Mapped {
    map: Option<Mmap>,
    owned: Vec<u8>,
}

impl Mapped {
    /// Map `path` read-only.
    ///
    /// # Errors
    /// The file cannot be opened or mapped.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Mapped { map: None, owned: Vec::new() });
        }
        // SAFETY: the map is read-only and crunch never writes its inputs. Another process
        // truncating the file while it is mapped could fault; that is the accepted contract of
        // every mmap-based model loader (llama.cpp included) and cannot be prevented from here.
        let map = unsafe { Mmap::map(&file)? };
        Ok(Mapped { map: Some(map), owned: Vec::new() })
    }

    /// Bytes already in memory, seen through the same interface (prefetch and release do nothing).
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        Mapped { map: None, owned: bytes }
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&self.owned)
    }

    /// Ask the kernel to start reading `[offset, offset + len)` in the background, so a job that
    /// works on one part of the file while the next is read overlaps computation and I/O.
    /// Advisory: errors are ignored.
    pub fn prefetch(&self, offset: usize, len: usize) {
        let Some(map) = &self.map else { return };
        let end = offset.saturating_add(len).min(map.len());
        if end > offset {
            let _ = map.advise_range(memmap2::Advice::WillNeed, offset, end - offset);
        }
    }

    /// Tell the kernel the pages of `[offset, offset + len)` are no longer needed, so a job that
    /// streams through a large file keeps its resident memory near one tensor, not the file.
    /// Later reads of the range still see the file's contents (read back from disk).
    pub fn release(&self, offset: usize, len: usize) {
        let Some(map) = &self.map else { return };
        let page = 4096;
        let start = offset.div_ceil(page) * page;
        let end = (offset.saturating_add(len) / page * page).min(map.len());
        if end <= start {
            return;
        }
        // SAFETY: the map is a private read-only file mapping; MADV_DONTNEED only drops clean
        // pages, which the kernel re-reads from the file on the next access, so no slice handed
        // out by `bytes` ever observes different contents. Errors are advisory and ignored.
        #[cfg(unix)]
        unsafe {
            let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start);
        }
    }
}
