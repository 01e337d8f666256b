//! What a calibrated method rounds a weight onto: the blocks of a GGUF type, or group-wise
//! integers as GPU checkpoints store them ([`IntSpec`]: GPTQ, AWQ, compressed-tensors).
//!
//! GPTQ's sweep ([`crate::gptq`]) and AWQ's search ([`crate::awq`]) take a [`Grid`], so both
//! methods serve the GGUF quantizer and the checkpoint export alike.

use crate::error::{CalibError, Result};
use crunch_core::GgmlType;
use crunch_quant::hfq::{self, IntSpec};

/// The grid a weight is rounded onto.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grid {
    /// A GGUF type's blocks (its own quantizer fixes the scales).
    Type(GgmlType),
    /// Group-wise integers: an f16 scale and an integer zero per `group` consecutive columns of
    /// a row.
    Int(IntSpec),
}

impl Grid {
    /// Consecutive values of a row that share scales: the type's block, or the integer group.
    pub fn block(&self) -> usize {
        match self {
            Grid::Type(ty) => ty.block_size(),
            Grid::Int(spec) => spec.group,
        }
    }

    /// `w` (rows of `n_in`) rounded to nearest on this grid and decoded: what a weight computes
    /// with after plain quantization. `importance` (per column) weighs a type's quantizer;
    /// integer groups take none.
    ///
    /// # Errors
    /// Sizes that do not fit the grid, a type without kernels, non-finite weights (integers),
    /// each naming `name`.
    pub fn round_trip(&self, name: &str, w: &[f32], n_in: usize, importance: Option<&[f32]>) -> Result<Vec<f32>> {
        match self {
            Grid::Type(ty) => {
                let quant = |source| CalibError::Quant { tensor: name.to_string(), source };
                let row = ty
                    .row_size(n_in)
                    .ok_or_else(|| CalibError::Invalid(format!("{name}: rows of {n_in} are not whole {ty} blocks")))?;
                let mut q = vec![0u8; row * (w.len() / n_in.max(1))];
                crunch_quant::quantize_rows(*ty, w, n_in, importance, &mut q).map_err(quant)?;
                let mut out = vec![0f32; w.len()];
                crunch_quant::dequantize_rows(*ty, &q, n_in, &mut out).map_err(quant)?;
                Ok(out)
            }
            Grid::Int(spec) => Ok(hfq::quantize_rtn(name, w, n_in, *spec).map_err(CalibError::Invalid)?.dequantize()),
        }
    }
}

impl std::fmt::Display for Grid {
    /// `Q4_K`, or `int4 g128 sym` / `int4 g128 asym`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grid::Type(ty) => write!(f, "{ty}"),
            Grid::Int(s) => write!(f, "int{} g{} {}", s.bits, s.group, if s.sym { "sym" } else { "asym" }),
        }
    }
}
