//! Packed single-token products (`crunch_quant::gemv`): every kernel this CPU runs equals the
//! scalar reference, and the result equals one `vec_dot` per row (the path it replaces, with the
//! same quantized activations) up to the order in which float scales are applied — on random
//! blocks with extreme codes, on quantized realistic rows, on real SmolLM2 rows, and at odd shapes.

mod common;

use crunch_core::GgmlType;
use crunch_quant::gemv::{Kernel, Packed};
use crunch_testkit::{realistic_weights, Rng};

/// Every type gemv packs.
const TYPES: [GgmlType; 12] = crunch_quant::gemv::PACKED_TYPES;

/// Byte offsets of a block's f16 scale fields (d, and dmin / m where there is one).
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[0],
    }
}

/// Random block bytes (so every code, sub-scale and minimum occurs, extremes included) with
/// finite f16 scales of either sign between about 2⁻¹⁰ and 2.
fn random_rows(ty: GgmlType, n_in: usize, n_out: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let size = ty.type_size();
    let mut w: Vec<u8> = (0..ty.row_size(n_in).unwrap() * n_out).map(|_| rng.next_u64() as u8).collect();
    for b in w.chunks_exact_mut(size) {
        for &o in f16_fields(ty) {
            let v = (rng.uniform() * 2.0 - 1.0) * 2f32.powi(-((rng.next_u64() % 10) as i32));
            b[o..o + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    w
}

/// Activations with a few large spikes among small values (codes ±127 beside small ones).
fn activations(n: usize, seed: u64) -> Vec<f32> {
    let mut x = realistic_weights(1, n, seed);
    for i in (7..n).step_by(97) {
        x[i] = if i % 2 == 0 { 3.0 } else { -3.0 };
    }
    x
}

/// `vec_dot` of every row with `x` quantized to the type's dot type.
fn per_row(ty: GgmlType, w: &[u8], n_in: usize, x: &[f32]) -> Vec<f32> {
    let k = crunch_quant::kernels(ty).unwrap();
    let mut xq = vec![0u8; k.dot_type.row_size(n_in).unwrap()];
    (crunch_quant::kernels(k.dot_type).unwrap().quantize)(x, None, &mut xq);
    let rb = ty.row_size(n_in).unwrap();
    w.chunks_exact(rb).map(|r| (k.vec_dot.unwrap())(n_in, r, &xq)).collect()
}

/// `|a - b|` within `rel` of the row's scale: the dequantized row's absolute products with `x`
/// (the sum whose terms gemv and `vec_dot` add in different orders).
fn assert_close(ty: GgmlType, what: &str, got: &[f32], want: &[f32], scale: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len());
    for (r, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        assert!(g.is_finite() && w.is_finite(), "{ty} {what} row {r}: {g} vs {w}");
        assert!((g - w).abs() <= rel * (s + 1e-6), "{ty} {what} row {r}: {g} vs {w} (scale {s})");
    }
}

/// Σ |w_i x_i| per row, from the dequantized rows.
fn abs_scale(ty: GgmlType, w: &[u8], n_in: usize, x: &[f32]) -> Vec<f32> {
    let mut wf = vec![0f32; w.len() / ty.row_size(n_in).unwrap() * n_in];
    crunch_quant::dequantize_rows(ty, w, n_in, &mut wf).unwrap();
    wf.chunks_exact(n_in).map(|r| r.iter().zip(x).map(|(a, b)| (a * b).abs()).sum()).collect()
}

fn gemv(kernel: Kernel, ty: GgmlType, w: &[u8], n_in: usize, n_out: usize, x: &[f32]) -> Vec<f32> {
    let p = Packed::with_kernel(kernel, ty, w, n_in, n_out).unwrap_or_else(|| panic!("{ty} {n_in}x{n_out}"));
    let mut y = vec![f32::NAN; n_out];
    assert!(p.gemv(x, &mut y), "{ty} {kernel:?}");
    y
}

/// Check every kernel against the scalar reference (tight) and against `vec_dot` (float order).
fn check(ty: GgmlType, w: &[u8], n_in: usize, n_out: usize, x: &[f32], what: &str) {
    let want = per_row(ty, w, n_in, x);
    let scale = abs_scale(ty, w, n_in, x);
    let reference = gemv(Kernel::Scalar, ty, w, n_in, n_out, x);
    assert_close(ty, &format!("{what} scalar vs vec_dot"), &reference, &want, &scale, 2e-5);
    for kernel in Kernel::available() {
        let y = gemv(kernel, ty, w, n_in, n_out, x);
        assert_close(ty, &format!("{what} {kernel:?} vs scalar"), &y, &reference, &scale, 1e-6);
        assert_close(ty, &format!("{what} {kernel:?} vs vec_dot"), &y, &want, &scale, 2e-5);
    }
}

#[test]
fn kernels_match_reference_on_random_blocks() {
    for ty in TYPES {
        let n_in = if ty.block_size() == 256 { 768 } else { 96 };
        for (n_out, seed) in [(16, 1), (37, 2)] {
            let w = random_rows(ty, n_in, n_out, seed);
            check(ty, &w, n_in, n_out, &activations(n_in, seed + 10), "random blocks");
        }
    }
}

#[test]
fn kernels_match_reference_on_quantized_rows_at_odd_shapes() {
    for ty in TYPES {
        let sizes: &[usize] = if ty.block_size() == 256 { &[256, 512, 1280] } else { &[32, 96, 576] };
        for (i, &n_in) in sizes.iter().enumerate() {
            for n_out in [1, 15, 17, 50] {
                let wf = realistic_weights(n_out, n_in, 100 + i as u64);
                let w = common::quantize(ty, &wf, n_in, None);
                check(ty, &w, n_in, n_out, &activations(n_in, 7 + n_out as u64), &format!("{n_in}x{n_out}"));
            }
        }
    }
}

/// Real rows: SmolLM2's own Q4_1 bytes as shipped, and its weights requantized to every other type
/// (k-quants on ffn_down, the tensor whose rows are a multiple of 256).
#[test]
fn kernels_match_reference_on_smollm2_rows() {
    let model = common::smollm2();
    let info = model.tensor("blk.5.attn_q.weight").expect("blk.5.attn_q.weight");
    let n_in = info.row_len() as usize;
    let rows = 83;
    let raw = &model.tensor_data(info)[..rows * info.ty.row_size(n_in).unwrap()];
    let x = activations(n_in, 31);
    check(info.ty, raw, n_in, rows, &x, "SmolLM2 attn_q as shipped");
    for (tensor, types) in [("blk.5.attn_q.weight", &TYPES[..6]), ("blk.5.ffn_down.weight", &TYPES[6..])] {
        let (n_in, wf) = common::smollm2_rows(&model, tensor, Some(rows));
        let x = activations(n_in, 32);
        for &ty in types {
            let w = common::quantize(ty, &wf, n_in, None);
            check(ty, &w, n_in, rows, &x, &format!("SmolLM2 {tensor}"));
        }
    }
}

#[test]
fn refuses_shapes_it_cannot_pack() {
    for ty in [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q5_K, GgmlType::IQ4_XS] {
        // 288 is a whole number of 32-blocks but not of 256-element super-blocks
        let w = vec![0u8; ty.type_size() * 2];
        assert!(Packed::new(ty, &w, 288, 1).is_none(), "{ty}");
        assert!(Packed::new(ty, &w, 256, 2).is_some(), "{ty}");
        assert!(Packed::new(ty, &w[1..], 256, 2).is_none(), "{ty}");
        let p = Packed::new(ty, &w, 256, 2).unwrap();
        assert!(!p.gemv(&[0.0; 255], &mut [0.0; 2]));
    }
    for ty in [GgmlType::Q4_1, GgmlType::Q5_1] {
        let w = vec![0u8; ty.type_size() * 3];
        assert!(Packed::new(ty, &w, 32, 3).is_some(), "{ty}");
        assert!(Packed::new(ty, &w, 32, 4).is_none(), "{ty}");
    }
}
