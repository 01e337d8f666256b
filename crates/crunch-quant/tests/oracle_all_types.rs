//! The two oracle promises of issue 3, for every listed type in one place:
//!
//! 1. dequantization equals the PyPI `gguf` package's bit for bit (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
//!    Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0), on real SmolLM2 tensors (dequantized from
//!    the Q4_1 test model, then quantized to each type by crunch, with and without importance
//!    weights) and on random tensors (rows of 256, 512, 1536 and 4096, and arbitrary block bytes);
//! 2. quantization of Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, TQ1_0 and TQ2_0 (and the F16 / BF16 conversions)
//!    produces the bytes of `gguf.quants.quantize`, on the same real and random tensors.
//!
//! Both the dequantizer and the reference quantizers are block-local, so each type needs a single
//! oracle run over every test section concatenated (one block per row).

use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use crunch_quant::{dequantize_rows, quantize_rows};
use crunch_testkit::{bytes_f32, f32_bytes, oracle, realistic_importance, realistic_weights, Rng, Scratch};

use GgmlType::*;

const DEQUANT_TYPES: [GgmlType; 17] =
    [F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0];
const REFERENCE_QUANT_TYPES: [GgmlType; 9] = [Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, TQ1_0, TQ2_0, F16, BF16];

/// A named f32 tensor (rows of `row_len`) with optional per-column importance.
struct Section {
    label: String,
    row_len: usize,
    x: Vec<f32>,
    importance: Option<Vec<f32>>,
}

fn quantize(ty: GgmlType, s: &Section, weighted: bool) -> Vec<u8> {
    let mut out = vec![0u8; ty.tensor_size(s.row_len, s.x.len() / s.row_len).unwrap()];
    let imp = if weighted { s.importance.as_deref() } else { None };
    quantize_rows(ty, &s.x, s.row_len, imp, &mut out).unwrap_or_else(|e| panic!("{ty} {}: {e}", s.label));
    out
}

/// Dequantize a concatenation of whole blocks as rows of one block each.
fn dequantize(ty: GgmlType, q: &[u8]) -> Vec<f32> {
    let block = ty.block_size();
    let mut out = vec![0f32; q.len() / ty.type_size() * block];
    dequantize_rows(ty, q, block, &mut out).unwrap();
    out
}

fn run_oracle(cmd: &str, ty: GgmlType, input: &[u8]) -> Vec<u8> {
    let s = Scratch::new("all-types");
    let (i, o) = (s.join("in"), s.join("out"));
    std::fs::write(&i, input).unwrap();
    let block = ty.block_size().to_string();
    oracle(&[cmd, ty.name(), &block, i.to_str().unwrap(), o.to_str().unwrap()]);
    std::fs::read(o).unwrap()
}

/// Offsets of the f16 fields inside one block of `ty` (kept finite in random blocks).
fn f16_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        Q8_0 | Q4_0 | Q5_0 | IQ4_NL | IQ4_XS => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        TQ1_0 => &[52],
        TQ2_0 => &[64],
        F16 => &[0],
        _ => &[],
    }
}

/// `n_blocks` blocks of arbitrary bytes whose float fields are finite (every quant bit pattern and
/// sub-block scale code is exercised, not only what a quantizer produces).
fn random_blocks(ty: GgmlType, n_blocks: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let size = ty.type_size();
    let mut out: Vec<u8> = (0..n_blocks * size).map(|_| rng.next_u64() as u8).collect();
    let finite16 = |bits: u16| if bits & 0x7c00 == 0x7c00 { bits & !0x4000 } else { bits };
    for b in out.chunks_exact_mut(size) {
        match ty {
            F32 => {
                let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let bits = if bits & 0x7f80_0000 == 0x7f80_0000 { bits & !0x4000_0000 } else { bits };
                b.copy_from_slice(&bits.to_le_bytes());
            }
            BF16 => {
                let bits = u16::from_le_bytes([b[0], b[1]]);
                let bits = if bits & 0x7f80 == 0x7f80 { bits & !0x4000 } else { bits };
                b.copy_from_slice(&bits.to_le_bytes());
            }
            _ => {
                for &o in f16_offsets(ty) {
                    let bits = finite16(u16::from_le_bytes([b[o], b[o + 1]]));
                    b[o..o + 2].copy_from_slice(&bits.to_le_bytes());
                }
            }
        }
    }
    out
}

/// Real SmolLM2 tensors, dequantized by crunch from the Q4_1/Q8_0 test model (whose own
/// dequantization is checked against gguf in `real_model_tensors_dequantize_like_gguf`).
fn real_sections() -> Vec<Section> {
    let model = GgufFile::open(crunch_testkit::smollm2_gguf()).expect("open SmolLM2");
    let mut out = Vec::new();
    // (name, rows taken): ffn_down rows are 1536 wide (a multiple of 256, so every type applies);
    // the 576-wide ones only fit the 32-element block types.
    for (k, (name, rows)) in [
        ("blk.0.ffn_down.weight", 576),
        ("blk.29.ffn_down.weight", 128),
        ("blk.3.attn_q.weight", 96),
        ("token_embd.weight", 64),
    ]
    .into_iter()
    .enumerate()
    {
        let info = model.tensor(name).unwrap_or_else(|| panic!("no tensor {name}"));
        let row_len = info.row_len() as usize;
        let q = &model.tensor_data(info)[..rows * info.ty.row_size(row_len).unwrap()];
        let mut x = vec![0f32; rows * row_len];
        dequantize_rows(info.ty, q, row_len, &mut x).unwrap();
        out.push(Section {
            label: format!("SmolLM2 {name} ({} -> f32, {rows}x{row_len})", info.ty),
            row_len,
            x,
            importance: Some(realistic_importance(row_len, 40 + k as u64)),
        });
    }
    out
}

/// Random tensors with LLM-like statistics, rows of 256, 512, 1536 and 4096, plus rows with exact
/// rounding ties and degenerate blocks.
fn random_sections() -> Vec<Section> {
    let mut out: Vec<Section> = [(256usize, 8usize), (512, 4), (1536, 4), (4096, 2)]
        .into_iter()
        .enumerate()
        .map(|(k, (row_len, rows))| Section {
            label: format!("random {rows}x{row_len}"),
            row_len,
            x: realistic_weights(rows, row_len, 70 + k as u64),
            importance: Some(realistic_importance(row_len, 80 + k as u64)),
        })
        .collect();
    let mut rng = Rng::new(99);
    let mut x: Vec<f32> = (0..512).map(|_| ((rng.next_u64() % 33) as f32 - 16.0) * 0.125).collect();
    x.extend((0..256).map(|i| [1.0, 0.5, -0.5, -0.25][i % 4]));
    x.extend([0.0f32; 256]);
    x.extend([-0.75f32; 256]);
    x.extend((0..256).map(|i| if i == 9 { 5.0 } else { 0.0 }));
    x.extend((0..256).map(|_| rng.normal() * 1e-30));
    x.extend((0..256).map(|_| (rng.uniform() - 0.5) * 1.2e4));
    out.push(Section { label: "ties and degenerate blocks".into(), row_len: 256, x, importance: None });
    out
}

fn sections_for(ty: GgmlType, all: &[Section]) -> impl Iterator<Item = &Section> {
    all.iter().filter(move |s| s.row_len.is_multiple_of(ty.block_size()))
}

fn first_bit_difference(ours: &[f32], theirs: &[f32]) -> Option<usize> {
    (0..ours.len()).find(|&i| ours[i].to_bits() != theirs[i].to_bits())
}

#[test]
fn every_type_dequantizes_like_gguf_bit_for_bit() {
    let mut all = real_sections();
    all.extend(random_sections());
    let all = &all;
    std::thread::scope(|sc| {
        let handles: Vec<_> = DEQUANT_TYPES
            .into_iter()
            .map(|ty| {
                sc.spawn(move || {
                    // (label, byte range) of every piece in the concatenated buffer
                    let mut q = Vec::new();
                    let mut pieces = Vec::new();
                    for s in sections_for(ty, all) {
                        for weighted in [false, true] {
                            if weighted && s.importance.is_none() {
                                continue;
                            }
                            let start = q.len();
                            q.extend(quantize(ty, s, weighted));
                            pieces.push((format!("{} weighted={weighted}", s.label), start..q.len()));
                        }
                    }
                    let start = q.len();
                    q.extend(random_blocks(ty, 4096 / ty.block_size(), 500 + ty.code() as u64));
                    pieces.push(("arbitrary block bytes".into(), start..q.len()));
                    assert!(
                        pieces.iter().any(|(l, _)| l.starts_with("SmolLM2 blk.0.ffn_down")),
                        "{ty}: no real tensor"
                    );

                    let ours = dequantize(ty, &q);
                    let theirs = bytes_f32(&run_oracle("dequantize", ty, &q));
                    assert_eq!(ours.len(), theirs.len(), "{ty}: length");
                    let elems = |bytes: usize| bytes / ty.type_size() * ty.block_size();
                    for (label, r) in &pieces {
                        let (a, b) = (elems(r.start), elems(r.end));
                        if let Some(i) = first_bit_difference(&ours[a..b], &theirs[a..b]) {
                            panic!("{ty} {label}: element {i}: crunch {:e}, gguf {:e}", ours[a + i], theirs[a + i]);
                        }
                    }
                    pieces.len()
                })
            })
            .collect();
        for (ty, h) in DEQUANT_TYPES.iter().zip(handles) {
            let n = h.join().unwrap_or_else(|_| panic!("{ty} failed"));
            println!("{ty}: {n} sections dequantize bit for bit like gguf");
        }
    });
}

#[test]
fn reference_quantizers_match_gguf_byte_for_byte() {
    let mut all = real_sections();
    all.extend(random_sections());
    let all = &all;
    std::thread::scope(|sc| {
        let handles: Vec<_> = REFERENCE_QUANT_TYPES
            .into_iter()
            .map(|ty| {
                sc.spawn(move || {
                    let sections: Vec<&Section> = sections_for(ty, all).collect();
                    let x: Vec<f32> = sections.iter().flat_map(|s| s.x.iter().copied()).collect();
                    let theirs = run_oracle("quantize", ty, &f32_bytes(&x));
                    let size = ty.type_size();
                    let mut off = 0;
                    for s in &sections {
                        let ours = quantize(ty, s, false);
                        let t = &theirs[off..off + ours.len()];
                        if let Some(b) =
                            (0..ours.len() / size).find(|&b| ours[b * size..][..size] != t[b * size..][..size])
                        {
                            panic!(
                                "{ty} {}: block {b} differs\n crunch {:02x?}\n gguf   {:02x?}",
                                s.label,
                                &ours[b * size..][..size],
                                &t[b * size..][..size]
                            );
                        }
                        off += ours.len();
                    }
                    assert_eq!(off, theirs.len(), "{ty}: length");
                    sections.len()
                })
            })
            .collect();
        for (ty, h) in REFERENCE_QUANT_TYPES.iter().zip(handles) {
            let n = h.join().unwrap_or_else(|_| panic!("{ty} failed"));
            println!("{ty}: {n} sections quantize byte for byte like gguf.quants.quantize");
        }
    });
}

/// The test model's own tensors (Q4_1 and Q8_0 in the file, and its F32 norms) dequantize like gguf.
#[test]
fn real_model_tensors_dequantize_like_gguf() {
    let model = GgufFile::open(crunch_testkit::smollm2_gguf()).expect("open SmolLM2");
    let mut seen = std::collections::BTreeSet::new();
    for name in [
        "blk.0.ffn_down.weight",
        "blk.29.ffn_down.weight",
        "blk.3.attn_q.weight",
        "token_embd.weight",
        "blk.0.attn_norm.weight",
    ] {
        let info = model.tensor(name).unwrap_or_else(|| panic!("no tensor {name}"));
        let q = model.tensor_data(info);
        let ours = dequantize(info.ty, q);
        let theirs = bytes_f32(&run_oracle("dequantize", info.ty, q));
        assert_eq!(ours.len(), theirs.len());
        if let Some(i) = first_bit_difference(&ours, &theirs) {
            panic!("{name} ({}): element {i}: crunch {:e}, gguf {:e}", info.ty, ours[i], theirs[i]);
        }
        seen.insert(info.ty);
    }
    assert!(seen.len() >= 2, "expected several storage types, saw {seen:?}");
}
