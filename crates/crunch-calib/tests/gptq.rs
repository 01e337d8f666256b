//! GPTQ on GGUF grids and group-wise integers: the per-type grids read codes back exactly, GPTQ's
//! tensors decode to what it computed, and on correlated inputs GPTQ's output error is below
//! round-to-nearest's.

mod common;
use common::{correlated_inputs, output_error};
use crunch_calib::gptq::{self, grid, GptqOptions};
use crunch_calib::{linalg, Grid};
use crunch_core::GgmlType;
use crunch_quant::hfq::{self, IntSpec};
use crunch_testkit::{realistic_importance, realistic_weights};

/// Encoding a block, reading its grid and re-packing the codes nearest to its decoded values
/// gives back the same bytes, for every type GPTQ supports.
#[test]
fn grids_round_trip_real_blocks() {
    for ty in grid::gptq_types() {
        let g = grid::type_grid(ty).unwrap();
        let k = crunch_quant::kernels(ty).unwrap();
        let bs = ty.block_size();
        let n = bs * 4;
        for (seed, weighted) in [(1u64, false), (2, true)] {
            let x = realistic_weights(1, n, seed);
            let imp = realistic_importance(n, seed);
            let mut bytes = vec![0u8; ty.row_size(n).unwrap()];
            (k.quantize)(&x, weighted.then_some(&imp[..]), &mut bytes);
            let mut y = vec![0f32; n];
            (k.dequantize)(&bytes, &mut y);
            let mut repacked = bytes.clone();
            for (b, blk) in repacked.chunks_exact_mut(ty.type_size()).enumerate() {
                let (mut a, mut off) = (vec![0f32; bs], vec![0f32; bs]);
                g.affine(blk, &mut a, &mut off);
                let codes: Vec<u8> = (0..bs).map(|p| g.round(y[b * bs + p], a[p], off[p])).collect();
                for p in 0..bs {
                    let v = a[p] * g.levels.value(codes[p]) + off[p];
                    let want = y[b * bs + p];
                    assert!((v - want).abs() <= 1e-5 * want.abs().max(1e-3), "{ty}: grid value {v} vs decoded {want}");
                }
                (g.pack)(blk, &codes);
            }
            assert_eq!(repacked, bytes, "{ty}: re-packed codes differ from the encoder's");
        }
    }
}

/// Correlated inputs (1024 tokens), realistic weights and their Hessian `Σ xᵀx`.
fn problem(n_in: usize, n_out: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x = correlated_inputs(1024, n_in, 7);
    let w = realistic_weights(n_out, n_in, 11);
    let mut h = vec![0f32; n_in * n_in];
    linalg::add_xtx(&mut h, &x, n_in);
    (x, w, h)
}

#[test]
fn gptq_beats_round_to_nearest_and_decodes_exactly() {
    let (n_in, n_out) = (512, 48);
    let (x, w, h) = problem(n_in, n_out);
    let diag: Vec<f32> = (0..n_in).map(|i| h[i * n_in + i] / 1024.0).collect();
    for ty in [GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::IQ4_NL, GgmlType::Q3_K, GgmlType::Q6_K, GgmlType::Q5_1] {
        for act_order in [false, true] {
            let opts = GptqOptions { act_order, ..Default::default() };
            let r = gptq::quantize("test", &w, n_in, &h, ty, Some(&diag), opts).unwrap();
            assert_eq!(r.bytes.len(), ty.row_size(n_in).unwrap() * n_out);
            let mut dec = vec![0f32; w.len()];
            crunch_quant::dequantize_rows(ty, &r.bytes, n_in, &mut dec).unwrap();
            assert_eq!(dec, r.weights, "{ty}: bytes decode to GPTQ's weights");
            let mut rtn = vec![0u8; r.bytes.len()];
            crunch_quant::quantize_rows(ty, &w, n_in, Some(&diag), &mut rtn).unwrap();
            let mut rtn_w = vec![0f32; w.len()];
            crunch_quant::dequantize_rows(ty, &rtn, n_in, &mut rtn_w).unwrap();
            let (eg, er) = (output_error(&x, n_in, &w, &r.weights), output_error(&x, n_in, &w, &rtn_w));
            eprintln!("{ty} act_order={act_order}: GPTQ {eg:.4e} vs weighted RTN {er:.4e} ({:.2}x)", er / eg);
            assert!(eg < er * 0.9, "{ty}: GPTQ error {eg} not below RTN {er}");
        }
    }
}

#[test]
fn indefinite_hessian_retries_then_fails_clearly() {
    let n = 32;
    // Positive diagonal but a large off-diagonal pair: indefinite, and small relative dampening
    // cannot fix it.
    let mut h = vec![0f32; n * n];
    for i in 0..n {
        h[i * n + i] = 1.0;
    }
    h[1] = 10.0;
    h[n] = 10.0;
    let w = realistic_weights(2, n, 3);
    let err = gptq::quantize(
        "blk.0.attn_q.weight",
        &w,
        n,
        &h,
        GgmlType::Q4_0,
        None,
        GptqOptions { tries: 3, ..Default::default() },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("blk.0.attn_q.weight") && err.contains("not positive definite"), "{err}");
}

/// GPTQ onto group-wise integers (symmetric and with zero points, 4 bits, groups of 32 and 128,
/// in order and act-order): the groups decode exactly to the weights GPTQ computed with, every
/// scale and zero is a legal one, and the output error is below round-to-nearest's on the same
/// spec.
#[test]
fn gptq_int_beats_round_to_nearest_and_decodes_exactly() {
    let (n_in, n_out) = (512, 48);
    let (x, w, h) = problem(n_in, n_out);
    for sym in [true, false] {
        for group in [32, 128] {
            let spec = IntSpec { bits: 4, group, sym, zero_min: u8::from(!sym) };
            let rtn_w = Grid::Int(spec).round_trip("test", &w, n_in, None).unwrap();
            let er = output_error(&x, n_in, &w, &rtn_w);
            for act_order in [false, true] {
                let opts = GptqOptions { act_order, ..Default::default() };
                let r = gptq::quantize_int("test", &w, n_in, &h, spec, opts).unwrap();
                let g = &r.groups;
                assert_eq!((g.rows, g.cols, g.spec), (n_out, n_in, spec));
                assert_eq!(
                    (g.codes.len(), g.scales.len(), g.zeros.len()),
                    (n_out * n_in, n_out * n_in / group, n_out * n_in / group)
                );
                assert_eq!(g.dequantize(), r.weights, "{spec:?}: groups decode to GPTQ's weights");
                assert!(g.codes.iter().all(|&c| c <= spec.max_code()));
                if sym {
                    assert!(g.zeros.iter().all(|&z| z == spec.mid()));
                } else {
                    assert!(g.zeros.iter().all(|&z| z >= spec.zero_min && z <= spec.max_code()));
                }
                assert!(g.scales.iter().all(|s| s.to_f32().is_finite() && s.to_f32() >= 0.0));
                let eg = output_error(&x, n_in, &w, &r.weights);
                eprintln!(
                    "int4 g{group} sym={sym} act_order={act_order}: GPTQ {eg:.4e} vs RTN {er:.4e} ({:.2}x)",
                    er / eg
                );
                assert!(eg < er * 0.9, "{spec:?} act_order={act_order}: GPTQ error {eg} not below RTN {er}");
            }
        }
    }
}

/// Each group's scale and zero are round-to-nearest's of the values GPTQ had when it reached the
/// group: the first group (no earlier error fed into it) has exactly RTN's parameters.
#[test]
fn gptq_int_first_group_has_rtn_params() {
    let (n_in, n_out) = (128, 8);
    let x = correlated_inputs(256, n_in, 3);
    let w = realistic_weights(n_out, n_in, 5);
    let mut h = vec![0f32; n_in * n_in];
    linalg::add_xtx(&mut h, &x, n_in);
    let spec = IntSpec { bits: 4, group: 32, sym: false, zero_min: 0 };
    let r = gptq::quantize_int("test", &w, n_in, &h, spec, GptqOptions::default()).unwrap();
    let ng = n_in / 32;
    for row in 0..n_out {
        let (s, z) = hfq::rtn_params(&w[row * n_in..row * n_in + 32], &spec);
        assert_eq!((r.groups.scales[row * ng], r.groups.zeros[row * ng]), (s, z), "row {row}");
    }
}

#[test]
fn gptq_int_refuses_what_does_not_fit_naming_the_tensor() {
    let n = 96;
    let w = realistic_weights(2, n, 3);
    let mut h = vec![0f32; n * n];
    for i in 0..n {
        h[i * n + i] = 1.0;
    }
    let spec = IntSpec { bits: 4, group: 64, sym: true, zero_min: 0 };
    let err =
        gptq::quantize_int("blk.0.attn_q.weight", &w, n, &h, spec, GptqOptions::default()).unwrap_err().to_string();
    assert!(err.contains("blk.0.attn_q.weight") && err.contains("group size 64"), "{err}");
    let mut bad = w.clone();
    bad[n + 5] = f32::NAN;
    let spec = IntSpec { group: 32, ..spec };
    let err =
        gptq::quantize_int("blk.0.attn_q.weight", &bad, n, &h, spec, GptqOptions::default()).unwrap_err().to_string();
    assert!(err.contains("blk.0.attn_q.weight") && err.contains("row 1, column 5"), "{err}");
}
