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
