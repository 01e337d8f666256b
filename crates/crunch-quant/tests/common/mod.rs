//! Helpers shared by crunch-quant's integration tests: real SmolLM2 rows, llama.cpp's C quantizer,
//! SHA-256 of quantized bytes.

#![allow(dead_code)]

use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use crunch_quant::dequantize_rows;
use crunch_testkit::{f32_bytes, Scratch};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::Command;

/// The first `rows` rows (all when `None`) of a real SmolLM2 tensor as f32: dequantized by crunch
/// from the Q4_1/Q8_0 test model, the F32 base the presets are made from (crunch's dequantization of
/// these tensors equals gguf's bit for bit, see `oracle_all_types.rs`). Returns (row length, values).
pub fn smollm2_rows(model: &GgufFile, name: &str, rows: Option<usize>) -> (usize, Vec<f32>) {
    let info = model.tensor(name).unwrap_or_else(|| panic!("no tensor {name} in SmolLM2"));
    let row_len = info.row_len() as usize;
    let data = model.tensor_data(info);
    let q = match rows {
        Some(r) => &data[..r * info.ty.row_size(row_len).unwrap()],
        None => data,
    };
    let mut x = vec![0f32; q.len() / info.ty.row_size(row_len).unwrap() * row_len];
    dequantize_rows(info.ty, q, row_len, &mut x).unwrap();
    (row_len, x)
}

/// The SmolLM2 test model.
pub fn smollm2() -> GgufFile {
    GgufFile::open(crunch_testkit::smollm2_gguf()).expect("open SmolLM2")
}

/// The Python of the llama-cpp-python virtualenv (`CRUNCH_LLAMA_PYTHON` overrides).
pub fn llama_python() -> PathBuf {
    std::env::var_os("CRUNCH_LLAMA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| crunch_testkit::cache_dir().join("llama-venv/bin/python"))
}

/// llama.cpp's own bytes for rows of `cols`: `ggml_quantize_chunk` (with `imp` as the importance
/// weights when given), or the type's reference row quantizer with `reference` (Q8_K), through
/// scripts/compare_quant_bytes.py.
pub fn llama_quantize(ty: GgmlType, x: &[f32], cols: usize, imp: Option<&[f32]>, reference: bool) -> Vec<u8> {
    let s = Scratch::new("llama-q");
    let (inp, imf, out) = (s.join("x.f32"), s.join("imp.f32"), s.join("q.bin"));
    std::fs::write(&inp, f32_bytes(x)).unwrap();
    let script = crunch_testkit::repo_root().join("scripts/compare_quant_bytes.py");
    let mut cmd = Command::new(llama_python());
    let verb = if reference { "from_float_ref" } else { "quantize" };
    cmd.arg(script).args([verb, ty.name(), &cols.to_string()]).arg(&inp).arg(&out);
    if let Some(w) = imp {
        std::fs::write(&imf, f32_bytes(w)).unwrap();
        cmd.arg(&imf);
    }
    let res = cmd.output().expect("run llama.cpp's quantizer (scripts/compare_quant_bytes.py)");
    assert!(res.status.success(), "{ty}: {}", String::from_utf8_lossy(&res.stderr));
    std::fs::read(out).unwrap()
}

/// SHA-256 of `bytes` as lower-case hex (as `sha256sum` prints it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    crunch_core::output::hex(&Sha256::digest(bytes))
}

/// A whole tensor of `ty` for rows of `row_len` (importance-weighted with `imatrix`).
pub fn quantize(ty: GgmlType, x: &[f32], row_len: usize, imatrix: Option<&[f32]>) -> Vec<u8> {
    let mut out = vec![0u8; ty.tensor_size(row_len, x.len() / row_len).unwrap()];
    crunch_quant::quantize_rows(ty, x, row_len, imatrix, &mut out).unwrap();
    out
}

/// Rows of `ty` back to f32.
pub fn dequantize(ty: GgmlType, q: &[u8], row_len: usize) -> Vec<f32> {
    let mut out = vec![0f32; q.len() / ty.row_size(row_len).unwrap() * row_len];
    dequantize_rows(ty, q, row_len, &mut out).unwrap();
    out
}

/// PyPI gguf's dequantization of `q` (rows of `row_len`).
pub fn oracle_dequantize(ty: GgmlType, q: &[u8], row_len: usize) -> Vec<f32> {
    let s = Scratch::new("oracle-dq");
    let (i, o) = (s.join("in.bin"), s.join("out.f32"));
    std::fs::write(&i, q).unwrap();
    crunch_testkit::oracle(&["dequantize", ty.name(), &row_len.to_string(), i.to_str().unwrap(), o.to_str().unwrap()]);
    crunch_testkit::bytes_f32(&std::fs::read(o).unwrap())
}

/// Random block bytes with a random finite f16 scale at offset 0.
pub fn random_blocks(ty: GgmlType, n_blocks: usize, seed: u64) -> Vec<u8> {
    let mut rng = crunch_testkit::Rng::new(seed);
    let size = ty.type_size();
    let mut out: Vec<u8> = (0..n_blocks * size).map(|_| rng.next_u64() as u8).collect();
    for b in out.chunks_exact_mut(size) {
        let mut bits = rng.next_u64() as u16;
        if bits & 0x7c00 == 0x7c00 {
            bits &= !0x4000;
        }
        b[..2].copy_from_slice(&bits.to_le_bytes());
    }
    out
}

/// Deterministic input of the golden-hash tests (exact f32 arithmetic, reproducible in numpy).
pub fn golden_input(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let base = ((i * 7919 % 2001) as f32 - 1000.0) / 16384.0 * (1 + i % 7) as f32;
            if i % 97 == 0 {
                base * 9.0
            } else {
                base
            }
        })
        .collect()
}

/// Deterministic importance weights of the golden-hash tests.
pub fn golden_importance(n: usize) -> Vec<f32> {
    (0..n).map(|i| 1.0 + (i * 31 % 17) as f32 / 4.0).collect()
}

/// Σ imp·(x − back)² with `imp` repeated along the row.
pub fn weighted_error(x: &[f32], back: &[f32], imp: &[f32]) -> f64 {
    x.iter().zip(back).enumerate().map(|(i, (&a, &b))| imp[i % imp.len()] as f64 * ((a - b) as f64).powi(2)).sum()
}

/// FNV-1a of `bytes` (the legacy golden hashes).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
