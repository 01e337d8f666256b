//! Quantization error of crunch next to llama.cpp's own C quantizer, for the k-quants and the IQ4
//! types, on real SmolLM2 tensors (rows of 1536) and on random rows of 4096: plain RMSE without
//! importance weights, and importance-weighted RMSE with them (the imatrix path).
//!
//! Needs the llama-cpp-python virtualenv (`~/.cache/crunch/llama-venv`, or `CRUNCH_LLAMA_PYTHON`), so
//! it is ignored by default. Run it with
//! `cargo test --release -p crunch-quant --test quality -- --ignored --nocapture`; it prints the
//! Markdown table kept in docs/QUALITY.md and fails if crunch is worse than llama.cpp anywhere.

use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use crunch_quant::{dequantize_rows, quantize_rows};
use crunch_testkit::{f32_bytes, realistic_importance, realistic_weights, Scratch};
use std::path::PathBuf;
use std::process::Command;

const TYPES: [GgmlType; 7] = [
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

fn llama_python() -> PathBuf {
    std::env::var_os("CRUNCH_LLAMA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| crunch_testkit::cache_dir().join("llama-venv/bin/python"))
}

/// llama.cpp's `ggml_quantize_chunk` on rows of `cols` (through scripts/compare_quant_bytes.py).
fn llama_quantize(ty: GgmlType, x: &[f32], cols: usize, imp: Option<&[f32]>) -> Vec<u8> {
    let s = Scratch::new("quality");
    let (inp, imf, out) = (s.join("x.f32"), s.join("imp.f32"), s.join("q.bin"));
    std::fs::write(&inp, f32_bytes(x)).unwrap();
    let script = crunch_testkit::repo_root().join("scripts/compare_quant_bytes.py");
    let mut cmd = Command::new(llama_python());
    cmd.arg(script).args(["quantize", ty.name(), &cols.to_string()]).arg(&inp).arg(&out);
    if let Some(w) = imp {
        std::fs::write(&imf, f32_bytes(w)).unwrap();
        cmd.arg(&imf);
    }
    let res = cmd.output().expect("run llama.cpp quantizer");
    assert!(res.status.success(), "{ty}: {}", String::from_utf8_lossy(&res.stderr));
    std::fs::read(out).unwrap()
}

fn crunch_quantize(ty: GgmlType, x: &[f32], cols: usize, imp: Option<&[f32]>) -> Vec<u8> {
    let mut q = vec![0u8; ty.tensor_size(cols, x.len() / cols).unwrap()];
    quantize_rows(ty, x, cols, imp, &mut q).unwrap();
    q
}

fn dequantize(ty: GgmlType, q: &[u8], cols: usize) -> Vec<f32> {
    let mut y = vec![0f32; q.len() / ty.row_size(cols).unwrap() * cols];
    dequantize_rows(ty, q, cols, &mut y).unwrap();
    y
}

/// sqrt(Σ w[col]·(x - y)² / Σ w[col]) over all elements (w = 1 gives the plain RMSE).
fn rmse(x: &[f32], y: &[f32], cols: usize, w: Option<&[f32]>) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (i, (a, b)) in x.iter().zip(y).enumerate() {
        let wi = w.map_or(1.0, |w| w[i % cols] as f64);
        num += wi * (*a as f64 - *b as f64).powi(2);
        den += wi;
    }
    (num / den).sqrt()
}

/// Inputs: (label, values, columns, importance).
fn inputs() -> Vec<(String, Vec<f32>, usize, Vec<f32>)> {
    let model = GgufFile::open(crunch_testkit::smollm2_gguf()).expect("open SmolLM2");
    let mut out = Vec::new();
    for (k, name) in
        ["blk.0.ffn_down.weight", "blk.15.ffn_down.weight", "blk.29.ffn_down.weight"].into_iter().enumerate()
    {
        let info = model.tensor(name).unwrap_or_else(|| panic!("no tensor {name}"));
        let cols = info.row_len() as usize;
        let x = dequantize(info.ty, model.tensor_data(info), cols);
        out.push((
            format!("SmolLM2 {name} ({}x{cols})", x.len() / cols),
            x,
            cols,
            realistic_importance(cols, 60 + k as u64),
        ));
    }
    out.push(("random 256x4096".into(), realistic_weights(256, 4096, 61), 4096, realistic_importance(4096, 62)));
    out
}

#[test]
#[ignore = "needs the llama-cpp-python virtualenv; prints the table of docs/QUALITY.md"]
fn rmse_no_worse_than_llama_cpp() {
    let inputs = inputs();
    println!(
        "| type | tensor | RMSE crunch | RMSE llama.cpp | weighted RMSE crunch | weighted RMSE llama.cpp | bytes |"
    );
    println!("|---|---|---:|---:|---:|---:|---|");
    let mut worse = Vec::new();
    for ty in TYPES {
        for (label, x, cols, imp) in &inputs {
            let mut cells = Vec::new();
            let mut identical = true;
            for w in [None, Some(&imp[..])] {
                let ours = crunch_quantize(ty, x, *cols, w);
                let theirs = llama_quantize(ty, x, *cols, w);
                identical &= ours == theirs;
                let e_ours = rmse(x, &dequantize(ty, &ours, *cols), *cols, w);
                let e_theirs = rmse(x, &dequantize(ty, &theirs, *cols), *cols, w);
                if e_ours > e_theirs {
                    worse.push(format!("{ty} {label} weighted={}: {e_ours:e} > {e_theirs:e}", w.is_some()));
                }
                cells.push(format!("{e_ours:.6e} | {e_theirs:.6e}"));
            }
            let same = if identical { "identical" } else { "differ" };
            println!("| {ty} | {label} | {} | {} | {same} |", cells[0], cells[1]);
        }
    }
    assert!(worse.is_empty(), "crunch is worse than llama.cpp:\n{}", worse.join("\n"));
}
