//! Ternary formats for BitNet b1.58 / TriLM style weights: every weight is -1, 0 or +1 times one
//! f16 scale per 256-element block. TQ1_0 packs five trits per byte (1.6875 bits per weight), TQ2_0
//! two bits per weight (2.0625). Both quantize exactly as llama.cpp's reference (scale = absolute
//! maximum, trit = round(x / scale)), ignore importance weights and dot against Q8_K.
//!
//! [`absmean`] is BitNet b1.58's rule (scale = mean magnitude, trits computed with the f16 scale as
//! stored), sharing the block packing with the reference quantizers: what ternary training
//! (`crunch_train::ternary`) ternarizes with and exports.

use crate::Kernels;
use crunch_core::GgmlType;

pub mod absmean;
pub mod tq1_0;
pub mod tq2_0;

pub use absmean::{
    absmean_block, absmean_group, absmean_scale, absmean_storage_type, quantize_absmean_rows, quantize_tq1_0_absmean,
    quantize_tq2_0_absmean, ternarize_absmean, ternarize_absmean_rows,
};

pub(crate) fn kernels(ty: GgmlType) -> Option<&'static Kernels> {
    match ty {
        GgmlType::TQ1_0 => Some(&tq1_0::KERNELS),
        GgmlType::TQ2_0 => Some(&tq2_0::KERNELS),
        _ => None,
    }
}

/// The block scale of the ternary formats: the largest magnitude (NaN-blind like C's `MAX`).
#[inline]
pub(crate) fn absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    for &v in x {
        amax = if amax > v.abs() { amax } else { v.abs() };
    }
    amax
}

/// `round(v * id)` shifted to 0, 1, 2 for -1, 0, +1 (round half away from zero, C's `lroundf`).
#[inline]
pub(crate) fn trit(v: f32, id: f32) -> i32 {
    // `as` saturates non-finite products; wrapping keeps the +1 panic-free for them
    ((v * id).round() as i32).wrapping_add(1)
}
