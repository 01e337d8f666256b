//! A frozen weight kept in its GGUF type in the memory map: `x Wᵀ` by crunch-model's
//! [`matmul`] (the kernels inference uses), `dy W` by rows of `W` dequantized a panel at a time
//! (never an f32 copy of the whole matrix) and multiplied by a blocked f32 GEMM.

use std::sync::Arc;

use rayon::prelude::*;

use crunch_core::gguf::GgufFile;
use crunch_model::matmul::{matmul, MatmulMode};
use crunch_model::weights::Weight;

use crate::ops::linear::Frozen;
use crunch_quant::tiled::{gemm_f32_strided_acc, Strides};

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

    /// `dx = dy W` (`dy`: `n × n_out`) with `W` dequantized a piece at a time and multiplied by
    /// crunch-quant's blocked f32 GEMM; nothing is kept across calls. Two ways to split the work,
    /// by the weight's shape, so that each GEMM has a deep inner dimension and a destination that
    /// stays in cache:
    ///
    /// - wide or square weights (`n_in >= n_out`: Q, K, V, attention output, FFN down): by blocks of
    ///   columns of `dx` ([`backward_column_block`]); a task dequantizes its columns of `W` (whole
    ///   quantization blocks of every row) a panel of rows at a time and accumulates
    ///   `dy · W[:, cols]` over all `n_out` rows into its own `n × cols` block, which is then
    ///   copied into `dx`;
    /// - tall weights (`n_out > n_in`: FFN gate and up, the output projection): by panels
    ///   of rows of `W` ([`backward_panel_rows`]); a task dequantizes its rows and adds
    ///   `dy[:, rows] · W[rows]` into its rayon fold's accumulator (`n × n_in`, a few per call),
    ///   and the accumulators are summed at the end.
    fn backward(&self, dy: &[f32], n: usize) -> Vec<f32> {
        let (n_in, n_out) = (self.weight.n_in, self.weight.n_out);
        assert_eq!(dy.len(), n * n_out, "dy for {n} rows of {n_out}");
        if n == 0 || n_in == 0 || n_out == 0 {
            return vec![0f32; n * n_in];
        }
        if n_in >= n_out {
            self.backward_by_columns(dy, n)
        } else {
            self.backward_by_rows(dy, n)
        }
    }

    /// Every row dequantized (in parallel).
    fn to_dense(&self) -> Vec<f32> {
        let (n_in, n_out) = (self.weight.n_in, self.weight.n_out);
        let view = self.weight.view(&self.file);
        let mut w = vec![0f32; n_in * n_out];
        crunch_quant::dequantize_rows(view.ty, view.data, n_in, &mut w).expect("weight checked by GgufWeight::load");
        w
    }
}

impl GgufWeight {
    /// [`Frozen::backward`] split over blocks of columns of `dx`.
    fn backward_by_columns(&self, dy: &[f32], n: usize) -> Vec<f32> {
        let (n_in, n_out) = (self.weight.n_in, self.weight.n_out);
        let view = self.weight.view(&self.file);
        let ty = view.ty;
        let rb = ty.row_size(n_in).expect("weight checked by GgufWeight::load");
        let dequantize = crunch_quant::kernels(ty).expect("weight checked by GgufWeight::load").dequantize;
        let cw = backward_column_block(n_in, ty.block_size());
        let panel = BACKWARD_PANEL_MAX.min(n_out);
        let ys = Strides { rs: n_out, cs: 1 };
        let blocks: Vec<Vec<f32>> = (0..n_in.div_ceil(cw))
            .into_par_iter()
            .map(|c| {
                let c0 = c * cw;
                let w = cw.min(n_in - c0);
                // Columns c0..c0 + w are whole blocks (cw and n_in are multiples of the block size).
                let (off, len) = (ty.row_size(c0).expect("block multiple"), ty.row_size(w).expect("block multiple"));
                let mut part = vec![0f32; n * w];
                let mut buf = vec![0f32; panel * w];
                let s = Strides { rs: w, cs: 1 };
                for r0 in (0..n_out).step_by(panel) {
                    let rows = panel.min(n_out - r0);
                    for (r, out) in buf.chunks_exact_mut(w).take(rows).enumerate() {
                        dequantize(&view.data[(r0 + r) * rb + off..][..len], out);
                    }
                    gemm_f32_strided_acc(n, w, rows, &mut part, s, &dy[r0..], ys, &buf, s);
                }
                part
            })
            .collect();
        let mut dx = vec![0f32; n * n_in];
        for (c, part) in blocks.iter().enumerate() {
            let (c0, w) = (c * cw, part.len() / n);
            for (dr, pr) in dx.chunks_exact_mut(n_in).zip(part.chunks_exact(w)) {
                dr[c0..c0 + w].copy_from_slice(pr);
            }
        }
        dx
    }

    /// [`Frozen::backward`] split over panels of rows of `W`.
    fn backward_by_rows(&self, dy: &[f32], n: usize) -> Vec<f32> {
        let (n_in, n_out) = (self.weight.n_in, self.weight.n_out);
        let view = self.weight.view(&self.file);
        let rb = view.ty.row_size(n_in).expect("weight checked by GgufWeight::load");
        let dequantize = crunch_quant::kernels(view.ty).expect("weight checked by GgufWeight::load").dequantize;
        let panel = backward_panel_rows(n_out);
        let (ds, ws) = (Strides { rs: n_in, cs: 1 }, Strides { rs: n_in, cs: 1 });
        (0..n_out.div_ceil(panel))
            .into_par_iter()
            .fold(
                || (Vec::new(), Vec::new()),
                |(mut acc, mut buf): (Vec<f32>, Vec<f32>), p| {
                    if acc.is_empty() {
                        acc = vec![0f32; n * n_in];
                    }
                    let r0 = p * panel;
                    let rows = panel.min(n_out - r0);
                    buf.resize(rows * n_in, 0.0);
                    dequantize(&view.data[r0 * rb..(r0 + rows) * rb], &mut buf);
                    // acc (n × n_in) += dy[:, r0..r0 + rows] (row stride n_out) · panel (rows × n_in).
                    let ys = Strides { rs: n_out, cs: 1 };
                    gemm_f32_strided_acc(n, n_in, rows, &mut acc, ds, &dy[r0..], ys, &buf, ws);
                    (acc, buf)
                },
            )
            .map(|(acc, _)| acc)
            .reduce(Vec::new, |a, b| match (a.is_empty(), b.is_empty()) {
                (true, _) => b,
                (_, true) => a,
                _ => {
                    let mut a = a;
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                }
            })
    }
}

/// Most weight rows dequantized at once by a task of [`GgufWeight`]'s backward pass.
const BACKWARD_PANEL_MAX: usize = 256;

/// Columns per task when [`GgufWeight`]'s backward pass splits `dx` by columns: about four
/// tasks per thread, a multiple of the quantization block size `bs` (so that a task dequantizes
/// whole blocks) and of 16 (one AVX-512 vector), at least 64.
pub fn backward_column_block(n_in: usize, bs: usize) -> usize {
    let unit = bs.max(16).next_multiple_of(16);
    let want = n_in.div_ceil(4 * rayon::current_num_threads()).max(64);
    want.next_multiple_of(unit).min(n_in.next_multiple_of(unit))
}

/// Weight rows per task of [`GgufWeight`]'s backward pass: about four tasks per thread (load
/// balance on a shared machine), at least 32 rows (the GEMM's inner dimension; a rayon fold's
/// accumulator is only worth its summing when it takes several panels) and at most 256 (the
/// dequantized panel stays in the L2 cache).
pub fn backward_panel_rows(n_out: usize) -> usize {
    n_out.div_ceil(4 * rayon::current_num_threads()).clamp(32, 256)
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
            assert_eq!(gw.to_dense(), deq, "{ty} as a dense matrix");
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
                let (gq, gd) = (gq.lora.unwrap(), gd.lora.unwrap());
                close(&dxq, &dxd, 1e-5, &format!("{ty} LoRA dx n {n}"));
                close(&gq.a, &gd.a, 1e-5, &format!("{ty} LoRA dA n {n}"));
                close(&gq.b, &gd.b, 1e-5, &format!("{ty} LoRA dB n {n}"));
            }
        }
        assert!(GgufWeight::load(file.clone(), "missing.weight", n_in, n_out).is_err());
        assert!(GgufWeight::load(file, "F32.weight", n_in, n_out + 1).is_err());
    }

    /// The backward pass split many ways equals the dense product of the dequantized matrix: a
    /// tall weight over many panels of rows (several per thread, a short last one, so that several
    /// fold accumulators are summed) and a wide one over many blocks of columns (a narrower last
    /// one).
    #[test]
    fn backward_over_many_panels() {
        let scratch = crunch_testkit::Scratch::new("train-gguf-weight-panels");
        let path = scratch.join("w.gguf");
        let ty = GgmlType::Q4_1;
        let shapes = [("tall", 64, 1100), ("wide", 640, 48)];
        let mut md = Metadata::default();
        md.set("general.architecture", Value::string("llama"));
        let specs: Vec<TensorSpec> = shapes
            .iter()
            .map(|&(name, i, o)| TensorSpec { name: name.into(), ty, dims: vec![i as u64, o as u64] })
            .collect();
        let mut w = GgufWriter::create(&path, md, &specs).unwrap();
        for (seed, &(name, i, o)) in shapes.iter().enumerate() {
            let vals = crunch_testkit::realistic_weights(o, i, 4 + seed as u64);
            let mut bytes = vec![0u8; ty.row_size(i).unwrap() * o];
            (crunch_quant::kernels(ty).unwrap().quantize)(&vals, None, &mut bytes);
            w.write_tensor(name, &bytes).unwrap();
        }
        w.finish().unwrap();
        let file = Arc::new(GgufFile::open(&path).unwrap());
        let threads = rayon::current_num_threads();
        assert!(1100usize.div_ceil(backward_panel_rows(1100)) > 2 * threads);
        let cw = backward_column_block(640, ty.block_size());
        assert!(640usize.div_ceil(cw) > 2 * threads.min(2) && 640 % cw != 0, "column block {cw}");
        let mut rng = crunch_testkit::Rng::new(5);
        for (name, n_in, n_out) in shapes {
            let gw = GgufWeight::load(file.clone(), name, n_in, n_out).unwrap();
            let mut deq = vec![0f32; n_in * n_out];
            for (r, row) in deq.chunks_exact_mut(n_in).enumerate() {
                gw.weight.dequantize_row(&file, r, row).unwrap();
            }
            let dense = Dense::new(n_in, n_out, deq);
            for n in [1, 37] {
                let dy: Vec<f32> = (0..n * n_out).map(|_| rng.normal()).collect();
                close(&gw.backward(&dy, n), &dense.backward(&dy, n), 1e-5, &format!("{name} backward n {n}"));
            }
        }
    }
}
