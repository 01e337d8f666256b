//! GPTQ on GGUF grids: the per-type grids read codes back exactly, GPTQ's tensors decode to what
//! it computed, and on correlated inputs GPTQ's output error is below round-to-nearest's.

mod common;
use common::{correlated_inputs, output_error};
use crunch_calib::gptq::{self, grid, GptqOptions};
use crunch_calib::linalg;
use crunch_core::GgmlType;
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

#[test]
fn gptq_beats_round_to_nearest_and_decodes_exactly() {
    let n_in = 512;
    let n_out = 48;
    let x = correlated_inputs(1024, n_in, 7);
    let w = realistic_weights(n_out, n_in, 11);
    let mut h = vec![0f32; n_in * n_in];
    linalg::add_xtx(&mut h, &x, n_in);
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
