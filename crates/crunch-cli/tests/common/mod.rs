//! Shared helpers for crunch's end-to-end tests: the real binary, scratch folders, the F32 SmolLM2.

#![allow(dead_code)]

use crunch::progress::{Cancel, NoProgress};
use crunch::quantize::{self, Ftype, QuantizeOptions};
use crunch_core::gguf::GgufFile;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `crunch` binary built for these tests.
pub fn crunch_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crunch"))
}

/// Run `crunch ARGS…`.
pub fn crunch(args: &[&str]) -> Output {
    Command::new(crunch_bin()).args(args).output().expect("run crunch")
}

/// SmolLM2 dequantized to F32 by crunch itself (made once, cached beside the test models).
pub fn smollm2_f32() -> PathBuf {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let dest = crunch_testkit::cache_dir().join("models/smollm2-f32.gguf");
    if dest.exists() {
        return dest;
    }
    let src = GgufFile::open(crunch_testkit::smollm2_gguf()).unwrap();
    let mut opts = QuantizeOptions::new(Ftype::F32);
    opts.allow_requantize = true;
    let plan = quantize::build_plan(src.metadata(), src.tensors(), &opts).unwrap();
    quantize::execute(&src, &plan, &dest, None, &NoProgress, &Cancel::new()).unwrap();
    dest
}

/// Names of files in a folder (to check nothing was left behind).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A command's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run `crunch ARGS…` (with `--json` among them), which must succeed; its stdout as JSON.
pub fn ok_json(args: &[&str]) -> serde_json::Value {
    let o = crunch(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Run `crunch ARGS…`, which must fail; its stderr.
pub fn fails(args: &[&str]) -> String {
    let o = crunch(args);
    assert!(!o.status.success(), "{args:?} should fail");
    stderr(&o)
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// SmolLM2 F32 quantized to Q2_K (made once per test process, removed at its end).
pub fn smollm2_q2k() -> &'static Path {
    static Q: std::sync::OnceLock<(crunch_testkit::Scratch, PathBuf)> = std::sync::OnceLock::new();
    &Q.get_or_init(|| {
        let dir = crunch_testkit::Scratch::new("q2k");
        let out = dir.join("q2k.gguf");
        let o = crunch(&["quantize", s(&smollm2_f32()), s(&out), "Q2_K", "-q"]);
        assert!(o.status.success(), "{}", stderr(&o));
        (dir, out)
    })
    .1
}

/// Small fit/search settings (two candidate types, one probe group per tensor kind, a few dozen
/// calibration and held-out tokens): the same settings give the same cached profile.
pub fn small_fit_settings(cache: &Path, registry: &Path) -> Vec<String> {
    let text = crunch_testkit::wikitext_dev().display().to_string();
    let v = [
        "--text",
        &text,
        "--types",
        "Q4_0,Q8_0",
        "--band",
        "30",
        "--calib-ctx",
        "32",
        "--calib-chunks",
        "1",
        "--eval-ctx",
        "64",
        "--eval-chunks",
        "1",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--registry",
        registry.to_str().unwrap(),
        "--quiet",
    ];
    v.iter().map(|s| s.to_string()).collect()
}
