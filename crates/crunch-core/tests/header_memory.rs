//! The memory a parsed GGUF header takes, measured: a header holding one array of 50 million `u8`
//! must open within the budget of `gguf::limits` (4x the header bytes plus 1 MiB; a `Value` per
//! element used to take 32x). The measurement runs in a child process (this test binary run again
//! on this one test), so no other test's allocations disturb its peak resident memory.

#![cfg(target_os = "linux")]

use crunch_core::gguf::limits::{HEADER_MEMORY_FACTOR, HEADER_MEMORY_SLACK};
use crunch_core::gguf::{GgufFile, Value, ValueType};
use std::io::Write;
use std::path::Path;
use std::process::Command;

const N: u64 = 50_000_000;
const CHILD: &str = "CRUNCH_HEADER_MEMORY_FILE";
const TEST: &str = "array_of_50_million_u8_opens_within_the_memory_budget";

fn byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// GGUF v3, no tensors, one key `big`: an array of `N` u8. Written as it streams; returns its size.
fn write_file(path: &Path) -> u64 {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    w.write_all(b"GGUF").unwrap();
    w.write_all(&3u32.to_le_bytes()).unwrap();
    w.write_all(&0u64.to_le_bytes()).unwrap(); // tensors
    w.write_all(&1u64.to_le_bytes()).unwrap(); // key/values
    w.write_all(&3u64.to_le_bytes()).unwrap();
    w.write_all(b"big").unwrap();
    w.write_all(&(ValueType::Array as u32).to_le_bytes()).unwrap();
    w.write_all(&(ValueType::U8 as u32).to_le_bytes()).unwrap();
    w.write_all(&N.to_le_bytes()).unwrap();
    let chunk: Vec<u8> = (0..251 * 4096).map(byte).collect();
    let mut left = N as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        w.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    w.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// A `kB` field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line[field.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
}

/// In the child: open the file and report how far peak resident memory rose.
fn measure(path: &Path) {
    // Reset the peak to the current resident size (Linux 4.0+); if that is refused, the growth
    // below counts from the current size to a peak that may be older, which only overstates it.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_bytes("VmRSS:");
    let file = GgufFile::open(path).unwrap();
    let array = file.metadata().get("big").and_then(Value::as_array).unwrap();
    let bytes = array.as_u8s().unwrap();
    assert_eq!(bytes.len() as u64, N);
    for i in [0, 1, 250, 251, N / 2, N - 1] {
        assert_eq!(bytes[i as usize], byte(i));
    }
    let peak = status_bytes("VmHWM:");
    println!("growth={}", peak.saturating_sub(before));
    drop(file);
}

#[test]
fn array_of_50_million_u8_opens_within_the_memory_budget() {
    if let Some(path) = std::env::var_os(CHILD) {
        measure(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big-array.gguf");
    let header_bytes = write_file(&path);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // The harness prints the test's name on the same line, before the output.
    let growth: u64 = stdout
        .split_once("growth=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no measurement in the child's output:\n{stdout}"));
    let bound = HEADER_MEMORY_FACTOR * header_bytes + HEADER_MEMORY_SLACK;
    println!(
        "header of {header_bytes} bytes: peak resident memory rose by {growth} bytes ({:.2}x), bound {bound} ({:.2}x)",
        growth as f64 / header_bytes as f64,
        bound as f64 / header_bytes as f64
    );
    // The growth counts the header's pages of the memory map too (read once, as the array is
    // copied out), and still has to stay under the bound the parser keeps for its heap alone.
    assert!(growth <= bound, "opening a {header_bytes}-byte header took {growth} bytes, above {bound}");
}
