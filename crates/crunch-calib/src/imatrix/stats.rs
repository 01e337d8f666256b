//! Per-tensor statistics of an importance matrix, as `llama-imatrix --show-statistics` reports
//! them: sum, min, max, mean and standard deviation of the per-column mean squared activations,
//! share of active columns, entropy, share of columns more than one deviation above the mean, and
//! the cosine similarity with the same tensor in the previous block.

use super::Imatrix;
use serde::Serialize;

/// Statistics of one tensor's importance values.
#[derive(Clone, Debug, Serialize)]
pub struct TensorStats {
    pub name: String,
    /// Block index, or `None` for tensors outside blocks.
    pub layer: Option<usize>,
    /// Short name (`attn_q`, `ffn_down`…).
    pub tensor: String,
    pub sum: f32,
    pub min: f32,
    pub max: f32,
    pub mean: f32,
    pub stddev: f32,
    /// Share of columns whose mean squared activation exceeds 1e-5.
    pub active: f32,
    pub n: usize,
    /// Entropy (bits) of the values seen as a distribution.
    pub entropy: f32,
    /// Entropy as a share of its maximum, `log2(n)`.
    pub entropy_norm: f32,
    /// Share of columns more than one standard deviation above the mean.
    pub zd: f32,
    /// Cosine similarity of the raw sums with the same tensor of the previous block.
    pub cossim: Option<f32>,
}

/// Averages per block, weighted by element count.
#[derive(Clone, Debug, Serialize)]
pub struct LayerStats {
    pub layer: usize,
    pub mean_sum: f32,
    pub zd: f32,
    pub cossim: f32,
}

fn split_name(name: &str) -> (Option<usize>, String) {
    let parts: Vec<&str> = name.split('.').collect();
    let layer = parts.iter().position(|p| *p == "blk").and_then(|i| parts.get(i + 1)).and_then(|s| s.parse().ok());
    let tensor = parts
        .iter()
        .position(|p| *p == "weight")
        .filter(|&i| i > 0)
        .map(|i| parts[i - 1].to_string())
        .unwrap_or_else(|| name.to_string());
    (layer, tensor)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb)) as f32
}

/// Statistics of every entry, sorted by short tensor name then by decreasing sum (llama.cpp's order).
pub fn statistics(m: &Imatrix) -> Vec<TensorStats> {
    let mut out = Vec::new();
    for (name, e) in &m.entries {
        let n = e.n_cols();
        let mut acts = Vec::with_capacity(e.sums.len());
        for (i, &c) in e.counts.iter().enumerate() {
            if c > 0 {
                acts.extend(e.sums[i * n..(i + 1) * n].iter().map(|&s| s / c as f32));
            }
        }
        if acts.is_empty() {
            continue;
        }
        let len = acts.len() as f64;
        let sum: f64 = acts.iter().map(|&v| v as f64).sum();
        let sq: f64 = acts.iter().map(|&v| (v as f64).powi(2)).sum();
        let mean = sum / len;
        let dev = (sq / len - mean * mean).max(0.0).sqrt();
        let min = acts.iter().copied().fold(f32::INFINITY, f32::min);
        let max = acts.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let active = 1.0 - acts.iter().filter(|v| v.abs() <= 1e-5).count() as f64 / len;
        let entropy = if sum > 0.0 {
            -acts.iter().map(|&v| v as f64 / sum).filter(|&p| p > 0.0).map(|p| p * p.log2()).sum::<f64>()
        } else {
            0.0
        };
        let zd =
            if dev > 0.0 { acts.iter().filter(|&&v| (v as f64 - mean) / dev > 1.0).count() as f64 / len } else { 0.0 };
        let (layer, tensor) = split_name(name);
        let cossim = layer.filter(|&l| l > 0).and_then(|l| {
            let prev = name.replacen(&format!("blk.{l}."), &format!("blk.{}.", l - 1), 1);
            m.entries.get(&prev).filter(|p| p.sums.len() == e.sums.len()).map(|p| cosine(&e.sums, &p.sums))
        });
        out.push(TensorStats {
            name: name.clone(),
            layer,
            tensor,
            sum: sum as f32,
            min,
            max,
            mean: mean as f32,
            stddev: dev as f32,
            active: active as f32,
            n: acts.len(),
            entropy: entropy as f32,
            entropy_norm: if acts.len() > 1 { (entropy / len.log2()) as f32 } else { 0.0 },
            zd: zd as f32,
            cossim,
        });
    }
    out.sort_by(|a, b| a.tensor.cmp(&b.tensor).then(b.sum.total_cmp(&a.sum)));
    out
}

/// Element-weighted averages per block.
pub fn layer_statistics(stats: &[TensorStats]) -> Vec<LayerStats> {
    let mut acc: std::collections::BTreeMap<usize, (f64, f64, f64, f64)> = Default::default();
    for s in stats {
        if let Some(l) = s.layer {
            let a = acc.entry(l).or_default();
            let n = s.n as f64;
            a.0 += n * s.sum as f64;
            a.1 += n * s.zd as f64;
            a.2 += n * s.cossim.unwrap_or(0.0) as f64;
            a.3 += n;
        }
    }
    acc.into_iter()
        .filter(|(_, a)| a.3 > 0.0)
        .map(|(layer, a)| LayerStats {
            layer,
            mean_sum: (a.0 / a.3) as f32,
            zd: (a.1 / a.3) as f32,
            cossim: (a.2 / a.3) as f32,
        })
        .collect()
}
