//! A Llama-family model from a GGUF file with its frozen base kept in the stored types
//! (QLoRA-style): every linear — the seven of each block and the output projection (tied to
//! `token_embd.weight` when `output.weight` is absent) — is a [`GgufWeight`] multiplied by
//! crunch-model's kernels from the memory map, tokens are embedded by dequantizing their rows,
//! and only the norms (and Qwen2's Q/K/V biases) are read as f32. The blocks are the same
//! [`Block`]s the tiny dense [`crate::Model`] runs, so forward, backward and the LoRA gradients
//! are the same code; the loss heads are [`crate::loss`]'s.

use std::path::Path;
use std::sync::Arc;

use crunch_core::gguf::GgufFile;
use crunch_model::config::LlamaConfig;
use crunch_model::lora::LoraTensor;
use crunch_model::matmul::MatmulMode;
use crunch_model::rope::Rope;
use crunch_model::weights::{load_optional_vector, load_vector, Weight};
use crunch_model::{ModelError, Result};

use crate::block::{Block, BlockGrads, BlockShape, Proj};
use crate::init::{kaiming_uniform, SplitMix64};
use crate::model::{loss_of, trunk_backward, trunk_forward, ModelTape, Target};
use crate::ops::{AttnShape, Frozen, GgufWeight, Linear, Lora};

/// A GGUF Llama-family model whose base weights stay frozen in their GGUF types; LoRA pairs on
/// the block linears are the only trainable parameters.
pub struct GgufModel {
    file: Arc<GgufFile>,
    pub config: LlamaConfig,
    tok_embd: Weight,
    pub blocks: Vec<Block<f32>>,
    pub output_norm: Vec<f32>,
    pub output: GgufWeight,
    pub rope: Rope,
}

/// What [`GgufModel::backward`] needs from [`GgufModel::forward`].
pub type GgufModelTape = ModelTape<f32>;

impl GgufModel {
    /// Open a GGUF file (see [`GgufModel::from_gguf`]).
    ///
    /// # Errors
    /// As [`GgufModel::from_gguf`], and I/O or parse errors.
    pub fn open(path: impl AsRef<Path>, mode: MatmulMode) -> Result<Self> {
        Self::from_gguf(Arc::new(GgufFile::open(path)?), mode)
    }

    /// The model of an opened file, without LoRA; `mode` is how every frozen linear's forward
    /// product treats its quantized weight ([`MatmulMode::Native`]: as llama.cpp does).
    ///
    /// # Errors
    /// Metadata that is not a Llama-family configuration, a missing tensor, another shape, a type
    /// crunch cannot dequantize.
    pub fn from_gguf(file: Arc<GgufFile>, mode: MatmulMode) -> Result<Self> {
        let c = LlamaConfig::from_metadata(file.metadata())?;
        if !c.is_plain_llama() {
            // The hand-written backward is the plain Llama block's (no Q/K or post norms, GeGLU,
            // embedding scale or attention window): refuse rather than train another graph.
            return Err(crunch_model::ModelError::Config(format!(
                "training is not implemented for {}: crunch-train's backward is the plain Llama \
                 block's (llama, mistral, smollm, qwen2)",
                c.arch.name()
            )));
        }
        let f = file.as_ref();
        let e = c.n_embd;
        let shape = BlockShape {
            n_embd: e,
            n_ff: c.n_ff,
            attn: AttnShape { n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: c.head_dim },
            rms_eps: c.rms_eps,
        };
        let tok_embd = Weight::load(f, "token_embd.weight", e, c.n_vocab)?;
        let mut blocks = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let name = |s: &str| format!("blk.{i}.{s}");
            let attn_norm = load_vector(f, &name("attn_norm.weight"), e)?;
            let ffn_norm = load_vector(f, &name("ffn_norm.weight"), e)?;
            let mut linears = Vec::with_capacity(7);
            for p in Proj::ALL {
                let (n_in, n_out) = shape.linear_shape(p);
                let mut w = GgufWeight::load(file.clone(), &name(&format!("{}.weight", p.name())), n_in, n_out)?;
                w.mode = mode;
                let bias = match p {
                    Proj::Q | Proj::K | Proj::V => {
                        load_optional_vector(f, &name(&format!("{}.bias", p.name())), n_out)?
                    }
                    _ => None,
                };
                linears.push(Linear::new(Box::new(w) as Box<dyn Frozen<f32>>, bias, None));
            }
            let linears: [Linear<f32>; 7] =
                linears.try_into().unwrap_or_else(|_| unreachable!("seven linears per block"));
            blocks.push(Block::new(shape, attn_norm, ffn_norm, linears));
        }
        let output_norm = load_vector(f, "output_norm.weight", e)?;
        let out_name = if f.tensor("output.weight").is_some() { "output.weight" } else { "token_embd.weight" };
        let mut output = GgufWeight::load(file.clone(), out_name, e, c.n_vocab)?;
        output.mode = mode;
        let rope = Rope {
            mode: c.rope_mode,
            n_rot: c.n_rot,
            head_dim: c.head_dim,
            freq_base: c.rope_freq_base,
            freq_factors: load_optional_vector(f, "rope_freqs.weight", c.n_rot / 2)?,
        };
        Ok(GgufModel { file, config: c, tok_embd, blocks, output_norm, output, rope })
    }

    /// The GGUF file the frozen weights live in.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// Give every block linear a fresh LoRA pair of `rank` and factor `scale` as PEFT does
    /// (`A` Kaiming-uniform from `seed`, `B = 0`), layer by layer in [`Proj::ALL`] order.
    pub fn init_lora(&mut self, rank: usize, scale: f32, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        for b in &mut self.blocks {
            for l in b.linears.iter_mut() {
                let (n_in, n_out) = (l.n_in(), l.n_out());
                let a = kaiming_uniform(&mut rng, rank, n_in).into_iter().map(|v| v as f32).collect();
                l.lora = Some(Lora { rank, a, b: vec![0.0; n_out * rank], scale });
            }
        }
    }

    /// The LoRA pairs as adapter tensors named by their base weights (`blk.N.attn_q.weight`),
    /// for [`crunch_model::lora::write_adapter`]. The factor `s` is not in them: an adapter
    /// written with `alpha = s · rank` applies the same `s`.
    pub fn lora_tensors(&self) -> Vec<LoraTensor> {
        let mut v = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            for (p, l) in Proj::ALL.iter().zip(&b.linears) {
                if let Some(lo) = &l.lora {
                    v.push(LoraTensor {
                        base: format!("blk.{i}.{}.weight", p.name()),
                        rank: lo.rank,
                        n_in: l.n_in(),
                        n_out: l.n_out(),
                        a: lo.a.clone(),
                        b: lo.b.clone(),
                    });
                }
            }
        }
        v
    }

    /// The logits of every position (`tokens.len() × n_vocab`, positions `0..n`) and the tape
    /// for [`GgufModel::backward`].
    ///
    /// # Errors
    /// A token outside the vocabulary, more tokens than the training context.
    pub fn forward(&self, tokens: &[u32]) -> Result<(Vec<f32>, GgufModelTape)> {
        let (n, e) = (tokens.len(), self.config.n_embd);
        if n > self.config.n_ctx_train {
            return Err(ModelError::ContextFull { have: 0, add: n, n_ctx: self.config.n_ctx_train });
        }
        let mut x = vec![0f32; n * e];
        for (row, &id) in x.chunks_exact_mut(e.max(1)).zip(tokens) {
            if id as usize >= self.config.n_vocab {
                return Err(ModelError::TokenOutOfRange { id, n: self.config.n_vocab });
            }
            self.tok_embd.dequantize_row(&self.file, id as usize, row)?;
        }
        Ok(trunk_forward(&self.blocks, &self.rope, &self.output_norm, self.config.rms_eps, &self.output, x, n))
    }

    /// The loss of `logits` against `target`, and its gradient with respect to the logits.
    pub fn loss_of(&self, logits: &[f32], tokens: &[u32], target: Target<'_, f32>) -> (f32, Vec<f32>) {
        loss_of(self.config.n_vocab, logits, tokens, target)
    }

    /// The loss only (what finite differences evaluate).
    ///
    /// # Errors
    /// As [`GgufModel::forward`].
    pub fn loss(&self, tokens: &[u32], target: Target<'_, f32>) -> Result<f32> {
        let (logits, _) = self.forward(tokens)?;
        Ok(self.loss_of(&logits, tokens, target).0)
    }

    /// Backward from the gradient of the logits: the LoRA gradients of every block (layer order).
    pub fn backward(&self, tape: &GgufModelTape, dlogits: &[f32]) -> Vec<BlockGrads<f32>> {
        trunk_backward(&self.blocks, &self.rope, &self.output_norm, &self.output, tape, dlogits)
    }

    /// The loss and the LoRA gradients of every block (layer order).
    ///
    /// # Errors
    /// As [`GgufModel::forward`].
    pub fn loss_and_grad(&self, tokens: &[u32], target: Target<'_, f32>) -> Result<(f32, Vec<BlockGrads<f32>>)> {
        let (logits, tape) = self.forward(tokens)?;
        let (loss, dlogits) = self.loss_of(&logits, tokens, target);
        Ok((loss, self.backward(&tape, &dlogits)))
    }

    /// Every trainable LoRA factor, layer by layer in [`Block::lora_params_mut`] order (the
    /// order of [`BlockGrads::flatten`]).
    pub fn lora_params_mut(&mut self) -> Vec<&mut Vec<f32>> {
        self.blocks.iter_mut().flat_map(|b| b.lora_params_mut()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crunch_model::lora::{adapter_metadata, write_adapter, LoraAdapter};
    use crunch_model::tokenizer::Tokenizer;
    use crunch_model::LlamaModel;

    use crate::train::{Chunk, TrainConfig, Trainer};

    const TEXT: &str = "The quick brown fox jumps over the lazy dog. In the beginning the Universe was created. \
                        This has made a lot of people very angry and been widely regarded as a bad move.";

    /// The first `n` tokens of a fixed English text in SmolLM2's vocabulary.
    fn tokens(file: &GgufFile, n: usize) -> Vec<u32> {
        let t = Tokenizer::from_gguf(file).unwrap().encode(TEXT, false).unwrap();
        assert!(t.len() >= n, "{} tokens", t.len());
        t[..n].to_vec()
    }

    /// `max |a − b| / max |b|`.
    fn rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    fn llama_logits(file: &Arc<GgufFile>, mode: MatmulMode, adapter: Option<&Path>, toks: &[u32]) -> Vec<f32> {
        let mut m = LlamaModel::from_gguf(file.clone()).unwrap();
        m.mode = mode;
        if let Some(p) = adapter {
            m.add_adapter(Arc::new(LoraAdapter::open(p).unwrap()), 1.0).unwrap();
        }
        m.forward(toks, &mut m.new_cache(toks.len())).unwrap()
    }

    /// A random LoRA of `rank` on every block linear: `A ~ N(0, 1/n_in)`, `B ~ N(0, σ²)`, factor `s`.
    fn random_lora(m: &mut GgufModel, rank: usize, sigma: f32, s: f32, seed: u64) {
        let mut rng = crunch_testkit::Rng::new(seed);
        for b in &mut m.blocks {
            for l in b.linears.iter_mut() {
                let (n_in, n_out) = (l.n_in(), l.n_out());
                let sa = (n_in as f32).powf(-0.5);
                let a = (0..rank * n_in).map(|_| rng.normal() * sa).collect();
                let bb = (0..n_out * rank).map(|_| rng.normal() * sigma).collect();
                l.lora = Some(Lora { rank, a, b: bb, scale: s });
            }
        }
    }

    /// With no LoRA, the logits are crunch-model's forward pass on the same tokens (the same
    /// `MatmulMode` on both sides).
    #[test]
    fn smollm2_logits_match_llama_model() {
        let file = Arc::new(GgufFile::open(crunch_testkit::smollm2_gguf()).unwrap());
        let toks = tokens(&file, 16);
        let exact = GgufModel::from_gguf(file.clone(), MatmulMode::Exact).unwrap();
        assert_eq!(exact.blocks.len(), 30);
        let (got, _) = exact.forward(&toks).unwrap();
        let want = llama_logits(&file, MatmulMode::Exact, None, &toks);
        let e = rel(&got, &want);
        let native = GgufModel::from_gguf(file.clone(), MatmulMode::Native).unwrap();
        let (got_n, _) = native.forward(&toks).unwrap();
        let want_n = llama_logits(&file, MatmulMode::Native, None, &toks);
        let (en, en_x) = (rel(&got_n, &want_n), rel(&got_n, &want));
        eprintln!("exact vs LlamaModel exact {e:e}; native vs LlamaModel native {en:e}; native vs exact {en_x:e}");
        assert!(e < 1e-3, "exact: {e:e}");
        // Native mode rounds every activation to the weight's 8-bit dot type, so the last-bit
        // differences of the f32 ops (RoPE, attention, SwiGLU are not bit-identical to
        // crunch-model's) flip some roundings; over 30 layers that is noise of the size of Native's
        // own distance from Exact (~5e-2 here), not a 1e-3 agreement.
        assert!(en < 1e-1 && en <= 2.0 * en_x, "native: {en:e} (native vs exact {en_x:e})");
        assert!(exact.forward(&[u32::MAX]).is_err());
    }

    /// A random LoRA written as an adapter and applied by crunch-model gives the same logits.
    #[test]
    fn smollm2_lora_logits_match_adapter() {
        let file = Arc::new(GgufFile::open(crunch_testkit::smollm2_gguf()).unwrap());
        let toks = tokens(&file, 16);
        let (rank, s) = (4, 0.5f32);
        let mut m = GgufModel::from_gguf(file.clone(), MatmulMode::Exact).unwrap();
        random_lora(&mut m, rank, 0.05, s, 21);
        let scratch = crunch_testkit::Scratch::new("train-gguf-model-adapter");
        let path = scratch.join("lora.gguf");
        let meta = adapter_metadata("llama", s * rank as f32);
        write_adapter(&path, meta, crunch_core::GgmlType::F32, &m.lora_tensors()).unwrap();
        let (got, _) = m.forward(&toks).unwrap();
        let want = llama_logits(&file, MatmulMode::Exact, Some(&path), &toks);
        let base = llama_logits(&file, MatmulMode::Exact, None, &toks);
        let (e, moved) = (rel(&got, &want), rel(&base, &want));
        eprintln!("LoRA logits vs LlamaModel + adapter {e:e} (the adapter moves the logits by {moved:e})");
        assert!(e < 1e-3, "{e:e}");
        assert!(moved > 2e-2, "the LoRA should change the logits: {moved:e}");
    }

    /// The LoRA gradient of single entries (different layers and linears, `A` and `B`) matches a
    /// central difference of the f32 loss.
    ///
    /// Tolerance: the forward is f32 (MatmulMode::Exact, so the loss is smooth in the LoRA
    /// factors — Native mode rounds activations to 8 bits, a step function), the loss (~10) has
    /// f32 rounding of about 1e-6 relative, so a step of 1e-1 gives a difference quotient with an
    /// absolute error of ~1e-5 from rounding plus the O(h²) truncation term (a step of 1e-2 would
    /// give ~1e-4, 3% of the smallest gradient here: any change in the forward's rounding could
    /// fail the check); entries are chosen where `|g|` is largest in their tensor (3e-3 to 4e-2
    /// here), which keeps both under 2e-2 relative (measured: 1e-4 to 2e-3).
    #[test]
    fn smollm2_lora_gradient_matches_finite_differences() {
        let file = Arc::new(GgufFile::open(crunch_testkit::smollm2_gguf()).unwrap());
        let toks = tokens(&file, 16);
        let mut m = GgufModel::from_gguf(file, MatmulMode::Exact).unwrap();
        random_lora(&mut m, 4, 0.05, 0.5, 22);
        let (_, grads) = m.loss_and_grad(&toks, Target::NextToken).unwrap();
        assert_eq!(grads.len(), 30);
        assert!(grads.iter().all(|g| g.lora.iter().all(Option::is_some)));
        // (layer, linear, B?)
        for (layer, p, is_b) in
            [(0, Proj::Q, false), (9, Proj::Down, true), (17, Proj::V, false), (29, Proj::Gate, true)]
        {
            let g = grads[layer].lora[p as usize].as_ref().unwrap();
            let gv = if is_b { &g.b } else { &g.a };
            let (i, &want) = gv.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap();
            let h = 1e-1f32;
            let mut at = |d: f32| {
                let lo = m.blocks[layer].linears[p as usize].lora.as_mut().unwrap();
                let v = if is_b { &mut lo.b } else { &mut lo.a };
                let old = v[i];
                v[i] = old + d;
                let l = m.loss(&toks, Target::NextToken).unwrap();
                let lo = m.blocks[layer].linears[p as usize].lora.as_mut().unwrap();
                (if is_b { &mut lo.b } else { &mut lo.a })[i] = old;
                l as f64
            };
            let fd = (at(h) - at(-h)) / (2.0 * h as f64);
            let e = (want as f64 - fd).abs() / fd.abs().max(1e-12);
            eprintln!(
                "layer {layer} {} {}[{i}]: grad {want:e}, difference {fd:e}, relative {e:e}",
                p.name(),
                if is_b { "B" } else { "A" }
            );
            assert!(e < 2e-2, "layer {layer} {}: {want} vs {fd}", p.name());
        }
    }

    /// Distillation: KL against the base's own log-probabilities is 0 with zero LoRA, positive
    /// with a random one, and its LoRA gradient matches a central difference (as above).
    #[test]
    fn smollm2_kl_gradient_matches_finite_differences() {
        let file = Arc::new(GgufFile::open(crunch_testkit::smollm2_gguf()).unwrap());
        let toks = tokens(&file, 16);
        let mut m = GgufModel::from_gguf(file, MatmulMode::Exact).unwrap();
        let (logits, _) = m.forward(&toks).unwrap();
        let base: Vec<f32> = logits.chunks(m.config.n_vocab).flat_map(crate::loss::log_softmax).collect();
        assert!(m.loss(&toks, Target::Distill(&base)).unwrap().abs() < 1e-5);
        random_lora(&mut m, 4, 0.05, 0.5, 23);
        let (kl, grads) = m.loss_and_grad(&toks, Target::Distill(&base)).unwrap();
        assert!(kl > 1e-3, "{kl}");
        let (layer, p) = (12, Proj::Up);
        let g = &grads[layer].lora[p as usize].as_ref().unwrap().b;
        let (i, &want) = g.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap();
        let h = 1e-1f32;
        let mut at = |d: f32| {
            m.blocks[layer].linears[p as usize].lora.as_mut().unwrap().b[i] += d;
            let l = m.loss(&toks, Target::Distill(&base)).unwrap();
            m.blocks[layer].linears[p as usize].lora.as_mut().unwrap().b[i] -= d;
            l as f64
        };
        let fd = (at(h) - at(-h)) / (2.0 * h as f64);
        let e = (want as f64 - fd).abs() / fd.abs().max(1e-12);
        eprintln!("KL {kl}: layer {layer} ffn_up B[{i}]: grad {want:e}, difference {fd:e}, relative {e:e}");
        assert!(e < 2e-2, "{want} vs {fd}");
    }

    /// One AdamW step on a 32-token chunk from PEFT's initialisation lowers that chunk's loss.
    #[test]
    fn smollm2_one_step_lowers_the_loss() {
        let file = Arc::new(GgufFile::open(crunch_testkit::smollm2_gguf()).unwrap());
        let toks = tokens(&file, 32);
        let mut m = GgufModel::from_gguf(file, MatmulMode::Native).unwrap();
        m.init_lora(8, 2.0, 5);
        let chunk = Chunk::next_token(toks.clone());
        let before = m.loss(&toks, Target::NextToken).unwrap();
        let cfg = TrainConfig { steps: 1, max_grad_norm: None, ..TrainConfig::default() };
        let mut t = Trainer::new(cfg, &mut m);
        let stats = t.run(&mut m, std::slice::from_ref(&chunk)).unwrap();
        let after = m.loss(&toks, Target::NextToken).unwrap();
        eprintln!("loss {before} -> {after} (step {stats:?})");
        assert!((stats[0].loss - before as f64).abs() < 1e-4, "{stats:?} vs {before}");
        assert!(after < before - 1e-3, "{before} -> {after}");
    }

    /// Peak resident set size of this process (`VmHWM`), in MiB, where /proc is readable.
    fn peak_rss_mib() -> Option<f64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    /// Rough speed: training (forward with tape, CE loss, backward, AdamW) against forward only,
    /// on SmolLM2 Q4_1 in Native mode, chunks of 64 and 256 tokens (the fixed text repeated).
    /// Run alone: `cargo test -p crunch-train smollm2_training_speed -- --ignored --nocapture`
    /// (the test profile, opt-level 2; a timing of a few repetitions, best of 3, so rough).
    #[test]
    #[ignore]
    fn smollm2_training_speed() {
        let file = Arc::new(GgufFile::open(crunch_testkit::smollm2_gguf()).unwrap());
        let text = Tokenizer::from_gguf(&file).unwrap().encode(TEXT, false).unwrap();
        let mut llama = LlamaModel::from_gguf(file.clone()).unwrap();
        llama.mode = MatmulMode::Native;
        let mut m = GgufModel::from_gguf(file, MatmulMode::Native).unwrap();
        m.init_lora(16, 2.0, 1);
        let best = |reps: usize, f: &mut dyn FnMut()| {
            (0..reps)
                .map(|_| {
                    let t = std::time::Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        for n in [64usize, 256] {
            let toks: Vec<u32> = text.iter().copied().cycle().take(n).collect();
            let chunk = Chunk::next_token(toks.clone());
            let t_llama = best(3, &mut || {
                llama.forward(&toks, &mut llama.new_cache(n)).unwrap();
            });
            let t_fwd = best(3, &mut || {
                m.forward(&toks).unwrap();
            });
            let (logits, tape) = m.forward(&toks).unwrap();
            let (_, dlogits) = m.loss_of(&logits, &toks, Target::NextToken);
            let t_back = best(3, &mut || {
                m.backward(&tape, &dlogits);
            });
            drop(tape);
            let cfg = TrainConfig { steps: u64::MAX, ..TrainConfig::default() };
            let mut tr = Trainer::new(cfg, &mut m);
            let t_train = best(3, &mut || {
                tr.step(&mut m, &[vec![&chunk]], &|| false).unwrap();
            });
            let tps = |t: f64| n as f64 / t;
            eprintln!(
                "{n} tokens: LlamaModel forward {:.0} tok/s, GgufModel forward (with tape) {:.0} tok/s, \
                 backward alone {:.0} tok/s, training step {:.0} tok/s; ratio train / LlamaModel forward {:.2}",
                tps(t_llama),
                tps(t_fwd),
                tps(t_back),
                tps(t_train),
                t_llama / t_train
            );
        }
        eprintln!("peak RSS {:?} MiB, {} threads", peak_rss_mib(), rayon::current_num_threads());
    }
}
