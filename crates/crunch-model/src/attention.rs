//! Causal grouped-query attention over the cached keys and values.

use rayon::prelude::*;

use crunch_quant::vmath::softmax;

use crate::matmul::dot_f32;

/// Head layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub n_head: usize,
    /// KV heads; query head `h` reads KV head `h / (n_head / n_head_kv)`.
    pub n_head_kv: usize,
    pub head_dim: usize,
}

/// What a layer's attention does beyond [`AttnShape`]: the score scale and the sliding window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnOpts {
    /// Factor on the scores before soft-max (`1 / sqrt(head_dim)` by default).
    pub scale: f32,
    /// Query `p` sees keys `p - window < j <= p` (llama.cpp's standard SWA mask); `None`: all
    /// of `0..=p`.
    pub window: Option<usize>,
}

impl AttnOpts {
    /// Scores scaled by `1 / sqrt(head_dim)`, no window.
    pub fn causal(s: AttnShape) -> Self {
        AttnOpts { scale: 1.0 / (s.head_dim as f32).sqrt(), window: None }
    }

    /// The first key position query position `p` sees.
    #[inline]
    pub fn first_visible(&self, p: usize) -> usize {
        match self.window {
            Some(w) => (p + 1).saturating_sub(w.max(1)),
            None => 0,
        }
    }
}

/// Attention for `n_tokens` queries at positions `pos0..pos0 + n_tokens`.
///
/// `q` is `n_tokens × (n_head * head_dim)`; `k` and `v` hold at least `pos0 + n_tokens` rows of
/// `n_head_kv * head_dim` (the cache, this batch included). Query `t` sees positions `0..=pos0 + t`.
/// Scores are scaled by `1 / sqrt(head_dim)` and soft-maxed in f32 ([`softmax`], vectorized).
/// Returns `n_tokens × (n_head * head_dim)`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], pos0: usize, n_tokens: usize, s: AttnShape) -> Vec<f32> {
    attention_with(q, k, v, pos0, n_tokens, s, AttnOpts::causal(s))
}

/// [`attention`] with the score scale and window of `o`: keys outside a query's window get no
/// weight (as llama.cpp's `-inf` mask entries).
pub fn attention_with(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos0: usize,
    n_tokens: usize,
    s: AttnShape,
    opts: AttnOpts,
) -> Vec<f32> {
    if n_tokens >= GEMM_MIN_TOKENS && s.head_dim > 0 && s.n_head_kv > 0 {
        return attention_gemm(q, k, v, pos0, n_tokens, s, opts);
    }
    let d = s.head_dim;
    let q_row = s.n_head * d;
    let kv_row = s.n_head_kv * d;
    let group = (s.n_head / s.n_head_kv.max(1)).max(1);
    let scale = opts.scale;
    let mut out = vec![0f32; n_tokens * q_row];
    if d == 0 {
        return out;
    }
    out.par_chunks_mut(q_row).zip(q.par_chunks(q_row)).enumerate().for_each(|(t, (o, qt))| {
        let n_kv = pos0 + t + 1;
        let j0 = opts.first_visible(pos0 + t);
        let mut scores = vec![0f32; n_kv - j0];
        for h in 0..s.n_head {
            let kvh = h / group;
            let qh = &qt[h * d..(h + 1) * d];
            for (jj, sc) in scores.iter_mut().enumerate() {
                let j = j0 + jj;
                let kj = &k[j * kv_row + kvh * d..j * kv_row + (kvh + 1) * d];
                *sc = dot_f32(qh, kj);
            }
            softmax(&mut scores, scale);
            let oh = &mut o[h * d..(h + 1) * d];
            for (jj, &p) in scores.iter().enumerate() {
                let j = j0 + jj;
                let vj = &v[j * kv_row + kvh * d..j * kv_row + (kvh + 1) * d];
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
/// Queries per parallel task in [`attention_gemm`].
const QUERY_BLOCK: usize = 32;

/// [`attention`] as matrix products (prompt processing), by blocks of queries in parallel: for
/// each head, `S = Q Kᵀ` over the positions the block's last query sees (the causal part only),
/// mask and softmax per row, `O = P V`, read from and written to the row-major buffers in place.
fn attention_gemm(q: &[f32], k: &[f32], v: &[f32], pos0: usize, n: usize, s: AttnShape, o: AttnOpts) -> Vec<f32> {
    use crunch_quant::tiled::{gemm_f32_strided, Strides};
    let d = s.head_dim;
    let q_row = s.n_head * d;
    let kv_row = s.n_head_kv * d;
    let group = (s.n_head / s.n_head_kv).max(1);
    let scale = o.scale;
    let mut out = vec![0f32; n * q_row];
    // Later blocks see more keys: hand them out first so the tail of the work is the cheap part.
    let mut blocks: Vec<(usize, &mut [f32])> = out.chunks_mut(QUERY_BLOCK * q_row).enumerate().collect();
    blocks.reverse();
    blocks.into_par_iter().for_each(|(b, ob)| {
        let t0 = b * QUERY_BLOCK;
        let nq = ob.len() / q_row;
        let n_vis = pos0 + t0 + nq;
        let mut p = vec![0f32; nq * n_vis];
        for h in 0..s.n_head {
            let kvh = h / group;
            let qh = &q[t0 * q_row + h * d..];
            let kh = &k[kvh * d..];
            let vh = &v[kvh * d..];
            // scores: row t = query t0 + t against keys 0..n_vis
            let ps = Strides { rs: n_vis, cs: 1 };
            gemm_f32_strided(
                nq,
                n_vis,
                d,
                &mut p,
                ps,
                qh,
                Strides { rs: q_row, cs: 1 },
                kh,
                Strides { rs: 1, cs: kv_row },
            );
            for (t, row) in p.chunks_exact_mut(n_vis).enumerate() {
                let visible = pos0 + t0 + t + 1;
                let first = o.first_visible(visible - 1);
                softmax(&mut row[first..visible], scale);
                row[..first].fill(0.0);
                row[visible..].fill(0.0);
            }
            let os = Strides { rs: q_row, cs: 1 };
            gemm_f32_strided(nq, d, n_vis, &mut ob[h * d..], os, &p, ps, vh, Strides { rs: kv_row, cs: 1 });
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full score matrix with a causal mask, in f64.
    fn naive(q: &[f32], k: &[f32], v: &[f32], pos0: usize, n: usize, s: AttnShape) -> Vec<f32> {
        naive_with(q, k, v, pos0, n, s, 1.0 / (s.head_dim as f64).sqrt(), usize::MAX)
    }

    /// The textbook masked attention in f64: query position `p` sees keys `j <= p` with
    /// `p - j < window` (llama.cpp's `is_masked_swa`, standard type), scores times `scale`.
    #[allow(clippy::too_many_arguments)]
    fn naive_with(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        pos0: usize,
        n: usize,
        s: AttnShape,
        scale: f64,
        window: usize,
    ) -> Vec<f32> {
        let d = s.head_dim;
        let total = pos0 + n;
        let mut out = vec![0f32; n * s.n_head * d];
        for h in 0..s.n_head {
            let kvh = h * s.n_head_kv / s.n_head;
            for t in 0..n {
                let mut sc = vec![f64::NEG_INFINITY; total];
                for (j, x) in sc.iter_mut().enumerate() {
                    let p = pos0 + t;
                    if j <= p && p - j < window {
                        let qv = &q[(t * s.n_head + h) * d..][..d];
                        let kv = &k[(j * s.n_head_kv + kvh) * d..][..d];
                        *x = qv.iter().zip(kv).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale;
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
        for (pos0, n) in [(0, 13), (5, 20), (0, 70), (9, 41)] {
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
    fn sliding_window_and_scale_match_naive_on_both_paths() {
        let s = AttnShape { n_head: 4, n_head_kv: 1, head_dim: 16 };
        // one-query steps (dot path) and batches (matrix path), windows smaller and larger than
        // the context, starting inside and outside the window
        for (pos0, n, w) in [(0, 1, 3), (9, 1, 3), (9, 3, 4), (0, 40, 7), (5, 40, 16), (0, 20, 64), (30, 9, 1)] {
            let total = pos0 + n;
            let q = rand(n * 4 * 16, 21 + pos0 as u64);
            let k = rand(total * 16, 22);
            let v = rand(total * 16, 23);
            let opts = AttnOpts { scale: 0.0625, window: Some(w) };
            let got = attention_with(&q, &k, &v, pos0, n, s, opts);
            let want = naive_with(&q, &k, &v, pos0, n, s, 0.0625, w);
            for (g, x) in got.iter().zip(&want) {
                assert!((g - x).abs() < 1e-4, "pos0 {pos0} n {n} window {w}: {g} vs {x}");
            }
        }
        // a window as long as the context changes nothing
        let q = rand(12 * 64, 1);
        let (k, v) = (rand(12 * 16, 2), rand(12 * 16, 3));
        let wide = AttnOpts { window: Some(12), ..AttnOpts::causal(s) };
        assert_eq!(attention_with(&q, &k, &v, 0, 12, s, wide), attention(&q, &k, &v, 0, 12, s));
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
