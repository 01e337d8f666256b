//! Non-linear 4-bit formats: IQ4_NL (32-element blocks, one f16 scale) and IQ4_XS (256-element
//! super-blocks with 6-bit sub-block scales). Both map 4-bit codes through llama.cpp's fixed
//! 16-entry code book [`KVALUES`] instead of a uniform grid.
//!
//! Quantization ports llama.cpp's `quantize_row_iq4_nl_impl` search, with and without importance
//! weights, so the bytes equal llama.cpp's `quantize_iq4_nl` / `quantize_iq4_xs`.

use crate::Kernels;
use crunch_core::GgmlType;

pub mod iq1_m;
pub mod iq1_s;
pub(crate) mod iq2_grid;
pub mod iq2_s;
pub mod iq2_xs;
pub mod iq2_xxs;
pub(crate) mod iq3_grid;
pub mod iq3_s;
pub mod iq3_xxs;
pub mod iq4_nl;
pub mod iq4_xs;
mod nonlinear;

pub use nonlinear::KVALUES;

pub(crate) fn kernels(ty: GgmlType) -> Option<&'static Kernels> {
    match ty {
        GgmlType::IQ1_S => Some(&iq1_s::KERNELS),
        GgmlType::IQ1_M => Some(&iq1_m::KERNELS),
        GgmlType::IQ3_XXS => Some(&iq3_xxs::KERNELS),
        GgmlType::IQ3_S => Some(&iq3_s::KERNELS),
        GgmlType::IQ2_XXS => Some(&iq2_xxs::KERNELS),
        GgmlType::IQ2_XS => Some(&iq2_xs::KERNELS),
        GgmlType::IQ2_S => Some(&iq2_s::KERNELS),
        GgmlType::IQ4_NL => Some(&iq4_nl::KERNELS),
        GgmlType::IQ4_XS => Some(&iq4_xs::KERNELS),
        _ => None,
    }
}
