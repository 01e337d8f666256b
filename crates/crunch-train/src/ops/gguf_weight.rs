//! A frozen weight kept in its GGUF type in the memory map: `x Wᵀ` by crunch-model's
//! [`matmul`] (the kernels inference uses), `dy W` by rows of `W` dequantized a panel at a time
//! (never an f32 copy of the whole matrix).

use std::sync::Arc;

use rayon::prelude::*;

use crunch_core::gguf::GgufFile;
use crunch_model::matmul::{matmul, MatmulMode};
use crunch_model::weights::Weight;

use crate::ops::linear::Frozen;
use crunch_quant::tiled::{gemm_f32_strided, Strides};

/// Weight rows dequantized together in [`GgufWeight`]'s backward pass.
const PANEL: usize = 32;

/// A linear weight of a GGUF file, multiplied in its stored type.
pub struct GgufWeight {
    file: Arc<GgufFile>,
    weight: Weight,
    /// How the forward product treats quantized weights (default: as llama.cpp does).
    pub mode: MatmulMode,
}

impl GgufWeight {
    /// The 2-D tensor `name` of `file`, `n_out` rows of `n_in`.
    ///
    /// # Errors
    /// A missing tensor, another shape, a type crunch cannot dequantize, data of the wrong size.
    pub fn load(file: Arc<GgufFile>, name: &str, n_in: usize, n_out: usize) -> crunch_model::Result<Self> {
        let weight = Weight::load(&file, name, n_in, n_out)?;
        if n_out > 0 {
            // Checks the row size and the data length once, so that the products cannot fail later.
            weight.dequantize_row(&file, 0, &mut vec![0f32; n_in])?;
        }
        Ok(GgufWeight { file, weight, mode: MatmulMode::Native })
    }

    pub fn name(&self) -> &str {
        &self.weight.name
    }
}

impl Frozen<f32> for GgufWeight {
    fn n_in(&self) -> usize {
        self.weight.n_in
    }

    fn n_out(&self) -> usize {
        self.weight.n_out
    }

    /// # Panics
    /// When `x` is not `n × n_in` (the weight itself was checked by [`GgufWeight::load`]).
    fn forward(&self, x: &[f32], n: usize) -> Vec<f32> {
        matmul(x, n, &self.weight.view(&self.file), self.mode).expect("weight checked by GgufWeight::load")
    }

    /// Each worker dequantizes panels of 32 rows of `W`, multiplies `dy[:, rows] · W[rows]` by
    /// crunch-quant's blocked f32 GEMM and adds it into its own `dx`; the workers' sums are added
    /// at the end.
    fn backward(&self, dy: &[f32], n: usize) -> Vec<f32> {
        let (n_in, n_out) = (self.weight.n_in, self.weight.n_out);
        assert_eq!(dy.len(), n * n_out, "dy for {n} rows of {n_out}");
        if n == 0 || n_in == 0 || n_out == 0 {
            return vec![0f32; n * n_in];
        }
        let view = self.weight.view(&self.file);
        (0..n_out.div_ceil(PANEL))
            .into_par_iter()
            .fold(
                || (vec![0f32; n * n_in], vec![0f32; PANEL * n_in], vec![0f32; n * n_in]),
                |(mut acc, mut panel, mut part), p| {
                    let r0 = p * PANEL;
                    let rows = PANEL.min(n_out - r0);
                    for (j, row) in panel.chunks_exact_mut(n_in).take(rows).enumerate() {
                        view.dequantize_row(r0 + j, row).expect("weight checked by GgufWeight::load");
                    }
                    // part (n × n_in) = dy[:, r0..r0 + rows] (row stride n_out) · panel (rows × n_in).
                    gemm_f32_strided(
                        n,
                        n_in,
                        rows,
                        &mut part,
                        Strides { rs: n_in, cs: 1 },
                        &dy[r0..],
                        Strides { rs: n_out, cs: 1 },
                        &panel,
                        Strides { rs: n_in, cs: 1 },
                    );
                    acc.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
                    (acc, panel, part)
                },
            )
            .map(|(acc, _, _)| acc)
            .reduce(
                || vec![0f32; n * n_in],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Dense, Linear, Lora};
    use crunch_core::gguf::{GgufWriter, Metadata, TensorSpec, Value};
    use crunch_core::GgmlType;

    fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * scale, "{what}: {x} vs {y}");
        }
    }

    /// Quantized and float weights in a GGUF give the products of their dequantized matrices,
    /// alone and under a LoRA pair.
    #[test]
    fn matches_dense_dequantized() {
        let scratch = crunch_testkit::Scratch::new("train-gguf-weight");
        let path = scratch.join("w.gguf");
        let (n_in, n_out) = (64, 70);
        let vals = crunch_testkit::realistic_weights(n_out, n_in, 1);
        let types = [GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4_K];
        let (n_in_k, n_out_k) = (256, 40);
        let vals_k = crunch_testkit::realistic_weights(n_out_k, n_in_k, 2);
        let mut md = Metadata::default();
        md.set("general.architecture", Value::string("llama"));
        let shape = |ty: GgmlType| if ty == GgmlType::Q4_K { (n_in_k, n_out_k) } else { (n_in, n_out) };
        let specs: Vec<TensorSpec> = types
            .iter()
            .map(|&ty| {
                let (i, o) = shape(ty);
                TensorSpec { name: format!("{ty}.weight"), ty, dims: vec![i as u64, o as u64] }
            })
            .collect();
        let mut w = GgufWriter::create(&path, md, &specs).unwrap();
        for &ty in &types {
            let src = if ty == GgmlType::Q4_K { &vals_k } else { &vals };
            let (i, o) = shape(ty);
            let mut bytes = vec![0u8; ty.row_size(i).unwrap() * o];
            (crunch_quant::kernels(ty).unwrap().quantize)(src, None, &mut bytes);
            w.write_tensor(&format!("{ty}.weight"), &bytes).unwrap();
        }
        w.finish().unwrap();
        let file = Arc::new(GgufFile::open(&path).unwrap());
        let mut rng = crunch_testkit::Rng::new(3);
        for &ty in &types {
            let (i, o) = shape(ty);
            let mut gw = GgufWeight::load(file.clone(), &format!("{ty}.weight"), i, o).unwrap();
            gw.mode = MatmulMode::Exact;
            let mut deq = vec![0f32; i * o];
            for (r, row) in deq.chunks_exact_mut(i).enumerate() {
                gw.weight.dequantize_row(&file, r, row).unwrap();
            }
            let dense = Dense::new(i, o, deq);
            for n in [1, 5, 9] {
                let x: Vec<f32> = (0..n * i).map(|_| rng.normal()).collect();
                let dy: Vec<f32> = (0..n * o).map(|_| rng.normal()).collect();
                close(&gw.forward(&x, n), &dense.forward(&x, n), 1e-5, &format!("{ty} forward n {n}"));
                close(&gw.backward(&dy, n), &dense.backward(&dy, n), 1e-5, &format!("{ty} backward n {n}"));
                // llama.cpp's product (activations rounded to the weight's dot type) is close.
                let native =
                    GgufWeight { mode: MatmulMode::Native, ..GgufWeight::load(file.clone(), gw.name(), i, o).unwrap() };
                close(&native.forward(&x, n), &dense.forward(&x, n), 2e-2, &format!("{ty} native forward n {n}"));
                let lora = Lora {
                    rank: 3,
                    a: (0..3 * i).map(|_| 0.1 * rng.normal()).collect(),
                    b: (0..o * 3).map(|_| 0.1 * rng.normal()).collect(),
                    scale: 0.5,
                };
                let ql = Linear::new(
                    Box::new(GgufWeight::load(file.clone(), gw.name(), i, o).unwrap()),
                    None,
                    Some(lora.clone()),
                );
                let dl = Linear::new(Box::new(dense.clone()), None, Some(lora));
                let (_, tq) = ql.forward(&x, n);
                let (_, td) = dl.forward(&x, n);
                let (dxq, gq) = ql.backward(&x, &tq, &dy, n);
                let (dxd, gd) = dl.backward(&x, &td, &dy, n);
                let (gq, gd) = (gq.unwrap(), gd.unwrap());
                close(&dxq, &dxd, 1e-5, &format!("{ty} LoRA dx n {n}"));
                close(&gq.a, &gd.a, 1e-5, &format!("{ty} LoRA dA n {n}"));
                close(&gq.b, &gd.b, 1e-5, &format!("{ty} LoRA dB n {n}"));
            }
        }
        assert!(GgufWeight::load(file.clone(), "missing.weight", n_in, n_out).is_err());
        assert!(GgufWeight::load(file, "F32.weight", n_in, n_out + 1).is_err());
    }
}
