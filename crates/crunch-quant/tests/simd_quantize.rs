//! The SIMD quantization paths against their scalar references (same bytes, same bits): the F16C
//! f16 <-> f32 conversions, the AVX2 Q8_0, Q8_1, Q4_0 and Q4_1 quantizers, and the fused `convert_rows` against
//! dequantize-then-quantize. On a CPU without those features both sides run the scalar code and the
//! tests still pass trivially.

use crunch_core::GgmlType;
use crunch_quant::float::{dequantize_f16_scalar, quantize_f16_scalar};
use crunch_quant::legacy::{q4_0, q4_1, q8_0, q8_1};
use crunch_quant::{convert_rows, dequantize_rows, kernels, quantize_rows, QuantError};
use crunch_testkit::{realistic_importance, realistic_weights, Rng};

fn same_bits_or_both_nan(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn f16_to_f32_matches_scalar_for_every_bit_pattern() {
    let all: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
    let k = kernels(GgmlType::F16).unwrap();
    // full vectors plus tails of every length 0..8
    for tail in 0..8 {
        let src = &all[2 * tail..];
        let n = src.len() / 2;
        let (mut fast, mut slow) = (vec![0f32; n], vec![0f32; n]);
        (k.dequantize)(src, &mut fast);
        dequantize_f16_scalar(src, &mut slow);
        for i in 0..n {
            assert!(same_bits_or_both_nan(fast[i], slow[i]), "f16 bits {:#06x}: {} vs {}", i + tail, fast[i], slow[i]);
        }
    }
}

#[test]
fn f32_to_f16_matches_scalar() {
    let mut rng = Rng::new(5);
    let mut x: Vec<f32> = (0..100_003).map(|_| f32::from_bits(rng.next_u64() as u32)).collect();
    // rounding ties, the f16 overflow and subnormal borders, signed zeros, infinities
    x.extend([
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        65504.0,
        65519.99,
        65520.0,
        6.1e-5,
        5.96e-8,
        2.98e-8,
        2.9802326e-8,
        -0.0,
        0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    x.extend(realistic_weights(3, 1000, 2));
    let k = kernels(GgmlType::F16).unwrap();
    let (mut fast, mut slow) = (vec![0u8; 2 * x.len()], vec![0u8; 2 * x.len()]);
    (k.quantize)(&x, None, &mut fast);
    quantize_f16_scalar(&x, &mut slow);
    for (i, (a, b)) in fast.chunks_exact(2).zip(slow.chunks_exact(2)).enumerate() {
        let (a, b) = (half::f16::from_le_bytes([a[0], a[1]]), half::f16::from_le_bytes([b[0], b[1]]));
        assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{}: {a:?} vs {b:?}", x[i]);
    }
}

/// Blocks of 32 that stress the fast paths: realistic rows, exact rounding ties, repeated and
/// opposite-signed maxima, zeros, signed zeros, subnormal and huge scales, infinities and NaN.
fn stress_blocks() -> Vec<f32> {
    let mut rng = Rng::new(11);
    let mut x = realistic_weights(64, 256, 3);
    // amax 127 gives scale 1 for Q8_0: every k + 0.5 is an exact tie
    x.extend((0..32).map(|i| if i == 0 { 127.0 } else { (i as f32 - 16.0) + 0.5 }));
    x.extend((0..32).map(|i| if i == 5 { -127.0 } else { -((i as f32) - 16.0) - 0.5 }));
    // max -8 gives scale 1 for Q4_0
    x.extend((0..32).map(|i| if i == 3 { -8.0 } else { ((rng.next_u64() % 17) as f32 - 8.0) * 0.5 }));
    x.extend((0..32).map(|i| match i {
        4 => 2.0,
        9 => -2.0,
        _ => 0.25,
    }));
    x.extend((0..32).map(|i| match i {
        4 => -2.0,
        9 => 2.0,
        _ => -0.25,
    }));
    x.extend([0.0f32; 32]);
    // zero as the minimum or maximum, with both signs in either order
    x.extend((0..32).map(|i| match i {
        2 => -0.0,
        6 => 0.0,
        _ => 0.5 + i as f32 * 0.01,
    }));
    x.extend((0..32).map(|i| match i {
        2 => 0.0,
        6 => -0.0,
        _ => -0.5 - i as f32 * 0.01,
    }));
    x.extend((0..32).map(|i| if i % 2 == 0 { -0.0 } else { 0.0 }));
    for scale in [1e-38f32, 1e-40, 3e-42, 1.4e-45, 1e30, 3e38] {
        x.extend((0..32).map(|_| rng.normal() * scale));
    }
    for special in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX] {
        x.extend((0..32).map(|i| if i == 7 { special } else { rng.normal() }));
    }
    x.extend((0..32).map(|_| f32::from_bits(rng.next_u64() as u32)));
    x
}

#[test]
fn avx2_q8_0_q8_1_q4_0_q4_1_quantizers_match_scalar() {
    let x = stress_blocks();
    type Scalar = fn(&[f32], &mut [u8]);
    for (ty, scalar) in [
        (GgmlType::Q8_0, q8_0::quantize_scalar as Scalar),
        (GgmlType::Q8_1, q8_1::quantize_scalar),
        (GgmlType::Q4_0, q4_0::quantize_scalar),
        (GgmlType::Q4_1, q4_1::quantize_scalar),
    ] {
        let n = ty.row_size(x.len()).unwrap();
        let (mut fast, mut slow) = (vec![0u8; n], vec![0u8; n]);
        (kernels(ty).unwrap().quantize)(&x, None, &mut fast);
        scalar(&x, &mut slow);
        let size = ty.type_size();
        for (b, (f, s)) in fast.chunks_exact(size).zip(slow.chunks_exact(size)).enumerate() {
            assert_eq!(f, s, "{ty} block {b}: {:?}", &x[32 * b..32 * b + 32]);
        }
        // through the public row API and a misaligned destination too
        let mut shifted = vec![0u8; n + 1];
        quantize_rows(ty, &x, 32, None, &mut shifted[1..]).unwrap();
        assert_eq!(&shifted[1..], &slow[..], "{ty} misaligned");
    }
}

fn separate(src_ty: GgmlType, src: &[u8], dst_ty: GgmlType, row_len: usize, imp: Option<&[f32]>) -> Vec<u8> {
    let rows = src.len() / src_ty.row_size(row_len).unwrap();
    let mut f = vec![0f32; rows * row_len];
    dequantize_rows(src_ty, src, row_len, &mut f).unwrap();
    let mut out = vec![0u8; rows * dst_ty.row_size(row_len).unwrap()];
    quantize_rows(dst_ty, &f, row_len, imp, &mut out).unwrap();
    out
}

#[test]
fn fused_conversion_equals_dequantize_then_quantize() {
    for (k, &(src_ty, dst_ty, row_len, rows, weighted)) in [
        (GgmlType::F16, GgmlType::Q8_0, 4096usize, 40usize, false),
        (GgmlType::F16, GgmlType::Q4_0, 576, 300, false),
        (GgmlType::F16, GgmlType::Q4_K, 1536, 50, true),
        (GgmlType::F32, GgmlType::Q6_K, 256, 700, false),
        (GgmlType::BF16, GgmlType::Q5_K, 512, 9, true),
        (GgmlType::Q4_1, GgmlType::IQ4_NL, 96, 31, true),
        (GgmlType::Q8_0, GgmlType::Q8_0, 64, 5, false),
    ]
    .iter()
    .enumerate()
    {
        let x = realistic_weights(rows, row_len, 30 + k as u64);
        let imp = realistic_importance(row_len, 31 + k as u64);
        let imp = weighted.then_some(&imp[..]);
        let mut src = vec![0u8; rows * src_ty.row_size(row_len).unwrap()];
        quantize_rows(src_ty, &x, row_len, None, &mut src).unwrap();
        let mut fused = vec![0u8; rows * dst_ty.row_size(row_len).unwrap()];
        convert_rows(src_ty, &src, dst_ty, row_len, imp, &mut fused).unwrap();
        assert!(fused == separate(src_ty, &src, dst_ty, row_len, imp), "{src_ty} -> {dst_ty}");
    }
}

#[test]
fn fused_conversion_checks_its_arguments() {
    let src = vec![0u8; 2 * 256 * 3];
    let mut dst = vec![0u8; GgmlType::Q4_K.type_size() * 3];
    assert!(convert_rows(GgmlType::F16, &src, GgmlType::Q4_K, 256, None, &mut dst).is_ok());
    assert!(matches!(
        convert_rows(GgmlType::F16, &src[1..], GgmlType::Q4_K, 256, None, &mut dst),
        Err(QuantError::Length { .. })
    ));
    assert!(matches!(
        convert_rows(GgmlType::F16, &src, GgmlType::Q4_K, 256, None, &mut dst[1..]),
        Err(QuantError::Length { .. })
    ));
    assert!(matches!(
        convert_rows(GgmlType::F16, &src, GgmlType::Q4_K, 128, None, &mut dst),
        Err(QuantError::RowNotBlockMultiple { .. })
    ));
    assert!(matches!(
        convert_rows(GgmlType::F16, &src, GgmlType::Q4_K, 256, Some(&[1.0; 3]), &mut dst),
        Err(QuantError::Length { .. })
    ));
}
