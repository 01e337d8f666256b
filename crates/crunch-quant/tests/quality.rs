//! Quantization error of crunch next to llama.cpp's own C quantizer, for the k-quants and the IQ4
//! types, on real SmolLM2 tensors (rows of 1536) and on random rows of 4096: plain RMSE without
//! importance weights, and importance-weighted RMSE with them (the imatrix path).
//!
//! Needs the llama-cpp-python virtualenv (`~/.cache/crunch/llama-venv`, or `CRUNCH_LLAMA_PYTHON`), so
//! it is ignored by default. Run it with
//! `cargo test --release -p crunch-quant --test quality -- --ignored --nocapture`; it prints the
//! Markdown table kept in docs/QUALITY.md and fails if crunch is worse than llama.cpp anywhere.

mod common;

use crunch_core::GgmlType;
use crunch_quant::{dequantize_rows, quantize_rows};
use crunch_testkit::{realistic_importance, realistic_weights};

const TYPES: [GgmlType; 7] = [
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

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
    let model = common::smollm2();
    let mut out = Vec::new();
    for (k, name) in
        ["blk.0.ffn_down.weight", "blk.15.ffn_down.weight", "blk.29.ffn_down.weight"].into_iter().enumerate()
    {
        let (cols, x) = common::smollm2_rows(&model, name, None);
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
                let theirs = common::llama_quantize(ty, x, *cols, w, false);
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
