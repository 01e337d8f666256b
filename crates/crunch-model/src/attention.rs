//! Causal grouped-query attention over the cached keys and values.

use rayon::prelude::*;

use crate::matmul::dot_f32;

/// Head layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub n_head: usize,
    /// KV heads; query head `h` reads KV head `h / (n_head / n_head_kv)`.
    pub n_head_kv: usize,
    pub head_dim: usize,
}

/// Attention for `n_tokens` queries at positions `pos0..pos0 + n_tokens`.
///
/// `q` is `n_tokens × (n_head * head_dim)`; `k` and `v` hold at least `pos0 + n_tokens` rows of
/// `n_head_kv * head_dim` (the cache, this batch included). Query `t` sees positions `0..=pos0 + t`.
/// Scores are scaled by `1 / sqrt(head_dim)` and soft-maxed in f32. Returns `n_tokens × (n_head *
/// head_dim)`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], pos0: usize, n_tokens: usize, s: AttnShape) -> Vec<f32> {
    if n_tokens >= GEMM_MIN_TOKENS && s.head_dim > 0 && s.n_head_kv > 0 {
        return attention_gemm(q, k, v, pos0, n_tokens, s);
    }
    let d = s.head_dim;
    let q_row = s.n_head * d;
    let kv_row = s.n_head_kv * d;
    let group = (s.n_head / s.n_head_kv.max(1)).max(1);
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; n_tokens * q_row];
    if d == 0 {
        return out;
    }
    out.par_chunks_mut(q_row).zip(q.par_chunks(q_row)).enumerate().for_each(|(t, (o, qt))| {
        let n_kv = pos0 + t + 1;
        let mut scores = vec![0f32; n_kv];
        for h in 0..s.n_head {
            let kvh = h / group;
            let qh = &qt[h * d..(h + 1) * d];
            let mut max = f32::NEG_INFINITY;
            for (j, sc) in scores.iter_mut().enumerate() {
                let kj = &k[j * kv_row + kvh * d..j * kv_row + (kvh + 1) * d];
                *sc = dot_f32(qh, kj) * scale;
                max = max.max(*sc);
            }
            let mut sum = 0f32;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            let inv = 1.0 / sum;
            let oh = &mut o[h * d..(h + 1) * d];
            for (j, &p) in scores.iter().enumerate() {
                let vj = &v[j * kv_row + kvh * d..j * kv_row + (kvh + 1) * d];
                let p = p * inv;
                for (a, &b) in oh.iter_mut().zip(vj) {
                    *a += p * b;
                }
            }
        }
    });
    out
}

/// From this many queries on, each head's scores and outputs are two blocked matrix products.
const GEMM_MIN_TOKENS: usize = 8;

/// [`attention`] as matrix products per head (prompt processing): `S = Q Kᵀ` over all cached
/// positions, causal mask and softmax per row, `O = P V`. Heads run in parallel.
fn attention_gemm(q: &[f32], k: &[f32], v: &[f32], pos0: usize, n: usize, s: AttnShape) -> Vec<f32> {
    use crunch_quant::tiled::gemm_f32_panel;
    let d = s.head_dim;
    let q_row = s.n_head * d;
    let kv_row = s.n_head_kv * d;
    let group = (s.n_head / s.n_head_kv).max(1);
    let n_kv = pos0 + n;
    let scale = 1.0 / (d as f32).sqrt();
    let heads: Vec<Vec<f32>> = (0..s.n_head)
        .into_par_iter()
        .map(|h| {
            let kvh = h / group;
            let gather = |src: &[f32], rows: usize, stride: usize, off: usize| -> Vec<f32> {
                let mut out = Vec::with_capacity(rows * d);
                for r in 0..rows {
                    out.extend_from_slice(&src[r * stride + off..r * stride + off + d]);
                }
                out
            };
            let qh = gather(q, n, q_row, h * d);
            let kh = gather(k, n_kv, kv_row, kvh * d);
            // scores: row t = query t against every key
            let mut p = vec![0f32; n * n_kv];
            gemm_f32_panel(&qh, n, d, &kh, n_kv, &mut p);
            for (t, row) in p.chunks_exact_mut(n_kv).enumerate() {
                let visible = pos0 + t + 1;
                let mut max = f32::NEG_INFINITY;
                for sc in row[..visible].iter_mut() {
                    *sc *= scale;
                    max = max.max(*sc);
                }
                let mut sum = 0f32;
                for sc in row[..visible].iter_mut() {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let inv = 1.0 / sum;
                row[..visible].iter_mut().for_each(|x| *x *= inv);
                row[visible..].fill(0.0);
            }
            // Vᵀ of this head: d rows of n_kv
            let mut vt = vec![0f32; d * n_kv];
            for j in 0..n_kv {
                let vj = &v[j * kv_row + kvh * d..j * kv_row + (kvh + 1) * d];
                for (i, &x) in vj.iter().enumerate() {
                    vt[i * n_kv + j] = x;
                }
            }
            let mut o = vec![0f32; n * d];
            gemm_f32_panel(&p, n, n_kv, &vt, d, &mut o);
            o
        })
        .collect();
    let mut out = vec![0f32; n * q_row];
    for (h, o) in heads.iter().enumerate() {
        for t in 0..n {
            out[t * q_row + h * d..t * q_row + (h + 1) * d].copy_from_slice(&o[t * d..(t + 1) * d]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full score matrix with a causal mask, in f64.
    fn naive(q: &[f32], k: &[f32], v: &[f32], pos0: usize, n: usize, s: AttnShape) -> Vec<f32> {
        let d = s.head_dim;
        let total = pos0 + n;
        let mut out = vec![0f32; n * s.n_head * d];
        for h in 0..s.n_head {
            let kvh = h * s.n_head_kv / s.n_head;
            for t in 0..n {
                let mut sc = vec![f64::NEG_INFINITY; total];
                for (j, x) in sc.iter_mut().enumerate() {
                    if j <= pos0 + t {
                        let qv = &q[(t * s.n_head + h) * d..][..d];
                        let kv = &k[(j * s.n_head_kv + kvh) * d..][..d];
                        *x = qv.iter().zip(kv).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (d as f64).sqrt();
                    }
                }
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..d {
                    let acc: f64 = (0..total).map(|j| e[j] / z * v[(j * s.n_head_kv + kvh) * d + i] as f64).sum();
                    out[(t * s.n_head + h) * d + i] = acc as f32;
                }
            }
        }
        out
    }

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn matches_naive_causal_gqa() {
        let s = AttnShape { n_head: 6, n_head_kv: 2, head_dim: 8 };
        for (pos0, n) in [(0, 5), (3, 4), (10, 1), (0, 12), (7, 9)] {
            let total = pos0 + n;
            let q = rand(n * 6 * 8, 1 + pos0 as u64);
            let k = rand(total * 2 * 8, 2);
            let v = rand(total * 2 * 8, 3);
            let got = attention(&q, &k, &v, pos0, n, s);
            let want = naive(&q, &k, &v, pos0, n, s);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "pos0 {pos0}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn gemm_path_matches_naive_at_model_shape() {
        let s = AttnShape { n_head: 9, n_head_kv: 3, head_dim: 64 };
        for (pos0, n) in [(0, 13), (5, 20)] {
            let total = pos0 + n;
            let q = rand(n * 9 * 64, 11);
            let k = rand(total * 3 * 64, 12);
            let v = rand(total * 3 * 64, 13);
            let got = attention(&q, &k, &v, pos0, n, s);
            let want = naive(&q, &k, &v, pos0, n, s);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-3, "pos0 {pos0}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn batch_equals_one_by_one() {
        // Processing 4 tokens at once equals 4 single steps against the growing cache.
        let s = AttnShape { n_head: 4, n_head_kv: 4, head_dim: 4 };
        let q = rand(4 * 16, 7);
        let k = rand(4 * 16, 8);
        let v = rand(4 * 16, 9);
        let all = attention(&q, &k, &v, 0, 4, s);
        for t in 0..4 {
            let one = attention(&q[t * 16..(t + 1) * 16], &k, &v, t, 1, s);
            assert_eq!(&all[t * 16..(t + 1) * 16], &one[..]);
        }
    }
}
