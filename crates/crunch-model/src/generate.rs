//! Text generation with the KV cache: the prompt in one batch, then one token per step, chosen
//! greedily or sampled (temperature, top-k, top-p, seeded).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::kld::argmax;
use crate::llama::LlamaModel;

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerOptions {
    /// 0 (or less) is greedy: always the most likely token.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        SamplerOptions { temperature: 0.0, top_k: 40, top_p: 0.95, seed: 0 }
    }
}

/// A seeded sampler.
#[derive(Clone, Debug)]
pub struct Sampler {
    opts: SamplerOptions,
    state: u64,
}

impl Sampler {
    pub fn new(opts: SamplerOptions) -> Self {
        Sampler { opts, state: opts.seed ^ 0x9E37_79B9_7F4A_7C15 }
    }

    pub fn is_greedy(&self) -> bool {
        self.opts.temperature <= 0.0
    }

    /// splitmix64, uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Choose a token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() || logits.len() < 2 {
            return argmax(logits) as u32;
        }
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        let k = if self.opts.top_k == 0 { idx.len() } else { self.opts.top_k.min(idx.len()) };
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, by_logit);
            idx.truncate(k);
        }
        idx.sort_by(by_logit);
        let t = self.opts.temperature as f64;
        let max = logits[idx[0] as usize] as f64;
        let mut p: Vec<f64> = idx.iter().map(|&i| ((logits[i as usize] as f64 - max) / t).exp()).collect();
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|v| *v /= z);
        if self.opts.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = p.len();
            for (i, v) in p.iter().enumerate() {
                acc += v;
                if acc >= self.opts.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            p.truncate(keep);
            idx.truncate(keep);
            let z: f64 = p.iter().sum();
            p.iter_mut().for_each(|v| *v /= z);
        }
        let mut u = self.uniform();
        for (&i, &v) in idx.iter().zip(&p) {
            if u < v {
                return i;
            }
            u -= v;
        }
        idx[idx.len() - 1]
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `max_new` tokens were generated.
    Length,
    /// An end-of-generation token was produced (not counted as output).
    EndOfGeneration,
    /// The caller's callback asked to stop.
    Stopped,
}

/// What a generation produced and how fast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub prompt_tokens: usize,
    /// Generated token ids (without the end-of-generation token).
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    /// Time to process the prompt (one batch) and choose the first token.
    pub prompt_seconds: f64,
    /// Time for the rest (one forward pass per further token).
    pub gen_seconds: f64,
}

impl Generation {
    /// Prompt tokens per second.
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_seconds.max(1e-9)
    }

    /// Generated tokens per second after the first (each needed one forward pass).
    pub fn gen_tps(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.gen_seconds.max(1e-9)
    }
}

/// Generate up to `max_new` tokens after `prompt`. `is_eog` marks end-of-generation tokens;
/// `on_token` sees each token as it is chosen and returns `false` to stop.
///
/// # Errors
/// An empty prompt, token ids outside the vocabulary, or a prompt plus `max_new` longer than the
/// model's training context.
pub fn generate(
    model: &LlamaModel,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    is_eog: impl Fn(u32) -> bool,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(crate::ModelError::Input("the prompt has no tokens".into()));
    }
    let n_ctx = prompt.len() + max_new;
    model.check_context(n_ctx)?;
    let n_vocab = model.config.n_vocab;
    let mut cache = model.new_cache(n_ctx);
    let t0 = Instant::now();
    let mut logits = model.forward_with(prompt, &mut cache, prompt.len() - 1, None)?;
    let mut out = Vec::new();
    let mut stop = StopReason::Length;
    let mut prompt_seconds = 0.0;
    let mut t1 = Instant::now();
    for step in 0..max_new {
        let tok = sampler.sample(&logits[..n_vocab]);
        if step == 0 {
            prompt_seconds = t0.elapsed().as_secs_f64();
            t1 = Instant::now();
        }
        if is_eog(tok) {
            stop = StopReason::EndOfGeneration;
            break;
        }
        out.push(tok);
        if !on_token(tok) {
            stop = StopReason::Stopped;
            break;
        }
        if step + 1 == max_new {
            break;
        }
        logits = model.forward(&[tok], &mut cache)?;
    }
    Ok(Generation {
        prompt_tokens: prompt.len(),
        tokens: out,
        stop,
        prompt_seconds: if max_new == 0 { t0.elapsed().as_secs_f64() } else { prompt_seconds },
        gen_seconds: t1.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the SmolLM2 files of `$CRUNCH_CACHE/models` (skipped when absent; run with `--release
    /// --ignored`): single-token logits through the packed gemv kernels against one `vec_dot` per
    /// row, teacher-forced on the same tokens: the differences are float-order noise (plus the
    /// activation roundings it flips), small against the logits' spread.
    #[test]
    #[ignore]
    fn packed_generation_matches_vec_dot_on_smollm2() {
        let dir = std::path::PathBuf::from(std::env::var_os("CRUNCH_CACHE").unwrap_or_default()).join("models");
        for name in ["smollm2-q4_0.gguf", "smollm2-q8_0.gguf", "smollm2-q4_k_m.gguf", "smollm2-iq4_nl.gguf"] {
            let path = dir.join(name);
            if !path.exists() {
                eprintln!("skipping {name}: not in {}", dir.display());
                continue;
            }
            let model = LlamaModel::open(&path).unwrap();
            let prompt = [504u32, 3575, 282, 4649, 314, 253, 1978, 338];
            let steps = 48;
            let (mut a, mut b) = (model.new_cache(64), model.new_cache(64));
            let mut la = model.forward(&prompt, &mut a).unwrap();
            let mut lb = crate::matmul::without_gemv(|| model.forward(&prompt, &mut b)).unwrap();
            let n_vocab = model.config.n_vocab;
            let (mut worst, mut flips) = (0f32, 0usize);
            let mut seq = prompt.to_vec();
            let mut rows_a = vec![la[la.len() - n_vocab..].to_vec()];
            let mut rows_b = vec![lb[lb.len() - n_vocab..].to_vec()];
            for _ in 0..steps {
                let (ra, rb) = (&la[la.len() - n_vocab..], &lb[lb.len() - n_vocab..]);
                let (ta, tb) = (argmax(ra), argmax(rb));
                if ta != tb {
                    // only a near tie may flip
                    flips += 1;
                }
                let tok = ta as u32;
                seq.push(tok);
                la = model.forward(&[tok], &mut a).unwrap();
                lb = crate::matmul::without_gemv(|| model.forward(&[tok], &mut b)).unwrap();
                rows_a.push(la.clone());
                rows_b.push(lb.clone());
            }
            // the same sequence in one batch (the prompt path's tiled kernels): the float-order
            // noise the engine already has between its batch and single-token paths
            let mut c = model.new_cache(64);
            let batch = model.forward(&seq, &mut c).unwrap();
            let mut noise = 0f32;
            for (i, (ra, rb)) in rows_a.iter().zip(&rows_b).enumerate() {
                let rc = &batch[(prompt.len() - 1 + i) * n_vocab..(prompt.len() + i) * n_vocab];
                let spread = rb.iter().fold(f32::MIN, |m, &v| m.max(v)) - rb.iter().fold(f32::MAX, |m, &v| m.min(v));
                let d =
                    |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max) / spread;
                worst = worst.max(d(ra, rb));
                noise = noise.max(d(rc, rb));
            }
            eprintln!(
                "{name}: largest logit difference gemv vs vec_dot {worst:.2e}, batch vs vec_dot {noise:.2e} of the logits' spread, {flips} top-token flips"
            );
            assert!(worst < 2.0 * noise, "{name}: {worst} vs {noise}");
        }
    }

    #[test]
    fn greedy_and_sampling() {
        let logits = [0.0f32, 3.0, 1.0, 3.0, -2.0];
        let mut g = Sampler::new(SamplerOptions::default());
        assert_eq!(g.sample(&logits), 1);
        // top-k 1 is greedy whatever the temperature
        let mut s = Sampler::new(SamplerOptions { temperature: 5.0, top_k: 1, top_p: 1.0, seed: 3 });
        assert_eq!(s.sample(&logits), 1);
        // sampling follows the probabilities and is reproducible with a seed
        let opts = SamplerOptions { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 7 };
        let mut s = Sampler::new(opts);
        let mut counts = [0usize; 5];
        for _ in 0..4000 {
            counts[s.sample(&logits) as usize] += 1;
        }
        assert!(counts[1] > 1500 && counts[3] > 1500 && counts[4] < 40, "{counts:?}");
        let a: Vec<u32> = (0..20).map(|_| Sampler::new(opts).sample(&logits)).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        // top-p 0.5 keeps only the two tied best tokens' first
        let mut s = Sampler::new(SamplerOptions { temperature: 1.0, top_k: 0, top_p: 0.3, seed: 1 });
        for _ in 0..50 {
            assert_eq!(s.sample(&logits), 1);
        }
    }
}
