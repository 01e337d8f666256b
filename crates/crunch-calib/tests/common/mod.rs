//! Helpers shared by the calibration tests (GPTQ, pruning): correlated inputs and output error.

#![allow(dead_code)]

use crunch_calib::linalg;
use crunch_testkit::Rng;

/// Inputs with strongly correlated columns and uneven scales, like a transformer's.
pub fn correlated_inputs(n_tok: usize, n_in: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let n_factors = 16;
    let mix: Vec<f32> = (0..n_factors * n_in).map(|_| rng.normal()).collect();
    let scale: Vec<f32> = (0..n_in).map(|_| (rng.normal() * 0.8).exp()).collect();
    let mut x = vec![0f32; n_tok * n_in];
    for t in 0..n_tok {
        let f: Vec<f32> = (0..n_factors).map(|_| rng.normal()).collect();
        for c in 0..n_in {
            let mut v = 0.3 * rng.normal();
            for (i, fi) in f.iter().enumerate() {
                v += fi * mix[i * n_in + c] * 0.25;
            }
            x[t * n_in + c] = v * scale[c];
        }
    }
    x
}

pub fn output_error(x: &[f32], n_in: usize, w: &[f32], wq: &[f32]) -> f64 {
    let n_out = w.len() / n_in;
    let d: Vec<f32> = w.iter().zip(wq).map(|(a, b)| a - b).collect();
    let y = linalg::matmul_xwt(x, n_in, &d, n_out);
    y.iter().map(|v| (*v as f64).powi(2)).sum()
}
