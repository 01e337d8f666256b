//! Model weights kept in their stored type, read straight from the memory-mapped GGUF.

use crunch_core::gguf::{GgufFile, TensorInfo};
use crunch_core::GgmlType;

use crate::error::{ModelError, Result};
use std::sync::Arc;

use crate::matmul::{PackSlot, WeightView};

/// A linear layer's weight: `n_out` rows of `n_in` elements (GGUF dims `[n_in, n_out]`), in the
/// file's type. The bytes stay in the file's memory map.
#[derive(Clone, Debug)]
pub struct Weight {
    pub name: String,
    pub ty: GgmlType,
    pub n_in: usize,
    pub n_out: usize,
    info: TensorInfo,
    /// The repacking for single-token products, made on first use (shared by clones).
    packed: Arc<PackSlot>,
}

impl Weight {
    /// Look up a 2-D tensor and check its shape and that crunch can compute with its type.
    pub fn load(file: &GgufFile, name: &str, n_in: usize, n_out: usize) -> Result<Self> {
        let info = file.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let dims: Vec<u64> = info.dims.to_vec();
        let ok =
            dims.len() >= 2 && dims[0] == n_in as u64 && dims[1] == n_out as u64 && dims[2..].iter().all(|&d| d == 1);
        if !ok {
            return Err(ModelError::BadShape {
                tensor: name.to_string(),
                found: info.shape_string(),
                expected: format!("[{n_in}, {n_out}]"),
            });
        }
        if crunch_quant::kernels(info.ty).is_none() {
            return Err(ModelError::UnsupportedType { tensor: name.to_string(), ty: info.ty, what: "dequantize" });
        }
        Ok(Weight { name: name.to_string(), ty: info.ty, n_in, n_out, info: info.clone(), packed: Arc::default() })
    }

    /// The weight's bytes in `file` (the file it was loaded from).
    pub fn view<'a>(&'a self, file: &'a GgufFile) -> WeightView<'a> {
        WeightView {
            name: &self.name,
            ty: self.ty,
            n_in: self.n_in,
            n_out: self.n_out,
            data: file.tensor_data(&self.info),
        }
    }

    /// Where this weight keeps its repacking for single tokens (pass it to
    /// [`crate::matmul::matmul_packed`] with this weight's view).
    pub fn pack_slot(&self) -> &PackSlot {
        &self.packed
    }

    /// Dequantize row `row` into `out` (`n_in` elements), e.g. a token's embedding.
    pub fn dequantize_row(&self, file: &GgufFile, row: usize, out: &mut [f32]) -> Result<()> {
        self.view(file).dequantize_row(row, out)
    }
}

/// A 1-D tensor of `len` elements as f32, whatever its stored type (norm weights, biases).
pub fn load_vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let info = file.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    if info.n_elements() != len as u64 || info.row_len() != len as u64 {
        return Err(ModelError::BadShape {
            tensor: name.to_string(),
            found: info.shape_string(),
            expected: format!("[{len}]"),
        });
    }
    let k = crunch_quant::kernels(info.ty).ok_or_else(|| ModelError::UnsupportedType {
        tensor: name.to_string(),
        ty: info.ty,
        what: "dequantize",
    })?;
    let mut out = vec![0f32; len];
    (k.dequantize)(file.tensor_data(info), &mut out);
    Ok(out)
}

/// [`load_vector`] when the tensor may be absent.
pub fn load_optional_vector(file: &GgufFile, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
    if file.tensor(name).is_some() {
        load_vector(file, name, len).map(Some)
    } else {
        Ok(None)
    }
}
