//! Crash-safe outputs: write to a temp file beside the destination, hash while writing, fsync, then
//! rename into place and put a `sha256sum`-format sidecar (`OUT.sha256`) next to it. An output that
//! is dropped before [`AtomicFile::commit`] is removed, so an interrupted run leaves no junk.

use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// An output file being written.
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
    hasher: Sha256,
    written: u64,
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// The temp path used while `dest` is being written.
pub fn temp_path_for(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dest.with_file_name(format!(".{name}.crunch-tmp-{}-{seq}", std::process::id()))
}

/// The sidecar checksum path (`OUT.sha256`).
pub fn sidecar_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

impl AtomicFile {
    /// Start writing `dest` (nothing appears at `dest` until [`commit`](Self::commit)).
    ///
    /// # Errors
    /// The temp file cannot be created (missing folder, permissions).
    pub fn create(dest: impl AsRef<Path>) -> io::Result<Self> {
        let dest = dest.as_ref().to_path_buf();
        let tmp = temp_path_for(&dest);
        let file = File::create(&tmp)?;
        Ok(AtomicFile {
            dest,
            tmp,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
            hasher: Sha256::new(),
            written: 0,
        })
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flush, fsync, rename into place, fsync the folder, write the `.sha256` sidecar.
    /// Returns the SHA-256 of the file as hex.
    ///
    /// # Errors
    /// Any I/O failure; the temp file is removed.
    pub fn commit(mut self) -> io::Result<String> {
        let digest = hex(&std::mem::take(&mut self.hasher).finalize());
        let w = self.writer.take().expect("writer present until commit");
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, &self.dest)?;
        sync_parent(&self.dest);
        let name = self.dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        write_small_atomic(&sidecar_path(&self.dest), format!("{digest}  {name}\n").as_bytes())?;
        Ok(digest)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let w = self.writer.as_mut().ok_or_else(|| io::Error::other("output already committed"))?;
        let n = w.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.writer.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Write a small file atomically (temp + fsync + rename), without a sidecar.
///
/// # Errors
/// Any I/O failure.
pub fn write_small_atomic(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path_for(dest);
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dest)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    sync_parent(dest);
    res
}

/// SHA-256 of a file, streamed, as hex.
///
/// # Errors
/// The file cannot be read.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Result of checking a file against its `.sha256` sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    Ok { sha256: String },
    Mismatch { expected: String, actual: String },
}

/// Check `path` against `path.sha256`.
///
/// # Errors
/// The file or sidecar cannot be read, or the sidecar is not in `sha256sum` format.
pub fn verify_sidecar(path: &Path) -> io::Result<Verified> {
    let side = sidecar_path(path);
    let text = fs::read_to_string(&side)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read checksum file {}: {e}", side.display())))?;
    let expected = text
        .split_whitespace()
        .next()
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{} is not in sha256sum format", side.display()))
        })?
        .to_ascii_lowercase();
    let actual = sha256_file(path)?;
    Ok(if actual == expected { Verified::Ok { sha256: actual } } else { Verified::Mismatch { expected, actual } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_renames_and_writes_sidecar_drop_cleans_up() {
        let dir = std::env::temp_dir().join(format!("crunch-out-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("a.bin");
        let mut f = AtomicFile::create(&dest).unwrap();
        f.write_all(b"hello").unwrap();
        assert!(!dest.exists());
        let sha = f.commit().unwrap();
        assert_eq!(sha, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(fs::read(&dest).unwrap(), b"hello");
        assert_eq!(verify_sidecar(&dest).unwrap(), Verified::Ok { sha256: sha });
        fs::write(&dest, b"hellO").unwrap();
        assert!(matches!(verify_sidecar(&dest).unwrap(), Verified::Mismatch { .. }));

        let dest2 = dir.join("b.bin");
        let mut f = AtomicFile::create(&dest2).unwrap();
        f.write_all(b"partial").unwrap();
        drop(f);
        assert!(!dest2.exists());
        let mut left: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, vec!["a.bin", "a.bin.sha256"], "temp file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }
}
