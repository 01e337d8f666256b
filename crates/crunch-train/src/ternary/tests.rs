//! Ternary training: the blend, the straight-through gradient against finite differences of the
//! effective weights (f64), the forward at `λ = 1` and `λ = 0` against the dense and the
//! ternarized model, training through the [`Trainer`], and the exported GGUF (it dequantizes to
//! the ternarized latents and crunch-model runs it as the trained forward did).

use std::sync::Arc;

use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use crunch_model::config::RopeMode;
use crunch_model::kld::top_k_logprobs;
use crunch_model::LlamaModel;
use crunch_quant::ternary::ternarize_absmean_rows;

use super::*;
use crate::gradcheck::{central_differences, relative_error};
use crate::model::ModelConfig;
use crate::ops::Dense;
use crate::optim::{AdamWConfig, Schedule};
use crate::train::{Chunk, ChunkTarget, TopKRows, TrainConfig, Trainer};

fn config(n_embd: usize, n_ff: usize, n_head: usize, n_head_kv: usize, n_vocab: usize) -> ModelConfig {
    ModelConfig {
        n_vocab,
        n_embd,
        n_ff,
        n_head,
        n_head_kv,
        n_layer: 2,
        n_rot: n_embd / n_head,
        rope_mode: RopeMode::Normal,
        rope_freq_base: 10000.0,
        rms_eps: 1e-5,
        qkv_bias: false,
        rank: 0,
        lora_scale: 1.0,
    }
}

/// The tiny shapes of the gradient checks.
fn tiny() -> ModelConfig {
    config(16, 24, 2, 1, 11)
}

fn random<T: Float>(c: &ModelConfig, seed: u64) -> Model<T> {
    let mut rng = crunch_testkit::Rng::new(seed);
    Model::random(c, &mut || rng.normal() as f64)
}

fn tokens(seed: u64, n: usize, n_vocab: usize) -> Vec<u32> {
    let mut rng = crunch_testkit::Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % n_vocab as u64) as u32).collect()
}

/// The base's top-`k` view of every position of `logits` (rows of `n_vocab`).
fn top_k_rows(logits: &[f32], n_vocab: usize, k: usize) -> TopKRows {
    let mut t = TopKRows { k, ids: Vec::new(), logp: Vec::new(), log_rest: Vec::new() };
    for row in logits.chunks(n_vocab) {
        let (ids, logp, rest) = top_k_logprobs(row, k);
        t.ids.extend(ids);
        t.logp.extend(logp);
        t.log_rest.push(rest);
    }
    t
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `T(W)` of a row-major matrix of rows of `n_in`, in f32.
fn ternarized(w: &[f32], n_in: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    ternarize_absmean_rows(w, n_in, &mut t);
    t
}

#[test]
fn blend_falls_from_one_to_zero_over_the_warmup() {
    let b = Blend { warmup: 4 };
    let l: Vec<f64> = (0..6).map(|s| b.lambda(s)).collect();
    assert_eq!(l, vec![1.0, 0.75, 0.5, 0.25, 0.0, 0.0]);
    assert_eq!(Blend { warmup: 0 }.lambda(0), 0.0);
    assert_eq!(Blend::default(), Blend { warmup: 0 });
    assert_eq!(serde_json::from_str::<Blend>(r#"{"warmup": 7}"#).unwrap(), Blend { warmup: 7 });
    assert!(serde_json::from_str::<Blend>(r#"{"warmpu": 7}"#).is_err());
}

#[test]
fn ternary_linear_names() {
    for ok in ["blk.0.attn_q.weight", "blk.29.ffn_down.weight", "blk.3.attn_output.weight"] {
        assert!(is_ternary_linear(ok), "{ok}");
    }
    for no in [
        "token_embd.weight",
        "output.weight",
        "blk.0.attn_norm.weight",
        "blk.0.attn_q.bias",
        "blk.x.attn_q.weight",
        "blk..attn_q.weight",
        "blk.0.attn_qq.weight",
    ] {
        assert!(!is_ternary_linear(no), "{no}");
    }
}

fn effective_mut(m: &mut TernaryModel<Model<f64>>, layer: usize, pi: usize) -> &mut Vec<f64> {
    &mut m.model_mut().blocks[layer].linears[pi].w.ste_mut().unwrap().effective
}

/// The latent's gradient is the gradient of the loss with respect to the effective weights
/// (every entry of every linear of both layers, both heads, at `λ` between 0 and 1 and at 0),
/// in f64.
#[test]
fn ste_gradient_matches_finite_differences_of_the_effective_weights() {
    let c = tiny();
    let toks = tokens(5, 7, c.n_vocab);
    let teacher = random::<f32>(&c, 6);
    let top = top_k_rows(&teacher.forward(&toks).0, c.n_vocab, 4);
    for (warmup, step) in [(4, 1), (0, 0)] {
        let mut m = TernaryModel::new(random::<f64>(&c, 7), Blend { warmup });
        m.set_step(step);
        for (tname, target) in [("next token", Target::NextToken), ("top-k", Target::DistillTopK(top.view()))] {
            let (loss, grads) = m.loss_and_grad(&toks, target).unwrap();
            assert!(loss.is_finite() && loss > 0.0);
            for (layer, g) in grads.iter().enumerate() {
                assert!(g.lora.iter().all(Option::is_none));
                for (pi, p) in Proj::ALL.iter().enumerate() {
                    let got = g.weight[pi].as_ref().expect("an STE weight's gradient");
                    let len = got.len();
                    let want = central_differences(len, 1e-5, |i, d| {
                        effective_mut(&mut m, layer, pi)[i] += d;
                        let v = m.model().loss(&toks, target);
                        effective_mut(&mut m, layer, pi)[i] -= d;
                        v
                    });
                    let e = relative_error(got, &want);
                    assert!(e < 1e-6, "λ {} {tname}: layer {layer} {}: {e:e}", m.lambda(), p.name());
                }
            }
        }
    }
}

/// At `λ = 1` the forward pass is the dense model's, at `λ = 0` that of the model whose linears
/// are `T(W)`, bit for bit; in between the effective weights are the blend.
#[test]
fn forward_at_lambda_one_and_zero() {
    let c = tiny();
    let toks = tokens(11, 9, c.n_vocab);
    let dense = random::<f32>(&c, 12);
    let want_dense = dense.forward(&toks).0;
    let mut m = TernaryModel::new(random::<f32>(&c, 12), Blend { warmup: 4 });
    assert_eq!(m.lambda(), 1.0);
    assert_eq!(bits(&m.model().forward(&toks).0), bits(&want_dense));

    let mut tern = random::<f32>(&c, 12);
    for b in &mut tern.blocks {
        for l in b.linears.iter_mut() {
            let (n_in, n_out) = (l.n_in(), l.n_out());
            let t = ternarized(&l.w.product().to_dense(), n_in);
            l.w = LinearWeight::Frozen(Box::new(Dense::new(n_in, n_out, t)));
        }
    }
    m.set_step(4);
    assert_eq!(m.lambda(), 0.0);
    let got = m.model().forward(&toks).0;
    assert_eq!(bits(&got), bits(&tern.forward(&toks).0));
    let moved = got.iter().zip(&want_dense).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
    assert!(moved > 1e-2, "ternarization should change the logits: {moved}");

    m.set_step(2);
    assert_eq!(m.lambda(), 0.5);
    for (_, _, w) in m.weights() {
        let t = ternarized(&w.latent, w.n_in);
        for ((&e, &l), &t) in w.effective.iter().zip(&w.latent).zip(&t) {
            assert_eq!(e, (0.5 * l as f64 + 0.5 * t as f64) as f32);
        }
    }
}

/// The trainer moves the latents, tells the model each update's index (so `λ` follows the
/// blend) and the effective weights are recomputed after every update; top-k distillation
/// towards the dense model lowers the KL of the ternary (`λ = 0`) model.
#[test]
fn training_lowers_the_ternary_loss() {
    let c = config(32, 48, 4, 2, 17);
    let dense = random::<f32>(&c, 21);
    let chunks: Vec<Chunk<f32>> = (0..4)
        .map(|i| {
            let toks = tokens(30 + i, 12, c.n_vocab);
            let top = top_k_rows(&dense.forward(&toks).0, c.n_vocab, 4);
            Chunk { tokens: toks, target: ChunkTarget::TopK(top) }
        })
        .collect();
    let mean_loss = |m: &TernaryModel<Model<f32>>| {
        chunks.iter().map(|ch| m.model().loss(&ch.tokens, ch.target()) as f64).sum::<f64>() / chunks.len() as f64
    };
    let blend = Blend { warmup: 5 };
    let mut m = TernaryModel::new(random::<f32>(&c, 21), blend);
    assert!(mean_loss(&m) < 1e-6, "at λ = 1 the model is its own teacher");
    m.set_step(blend.warmup);
    let before = mean_loss(&m);
    m.set_step(0);
    let steps = 40;
    let cfg = TrainConfig {
        adamw: AdamWConfig { lr: 3e-3, ..AdamWConfig::default() },
        schedule: Schedule::Cosine { warmup: 2, total: steps, floor: 0.1 },
        steps,
        batch_size: 2,
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        seed: 3,
    };
    let mut trainer = Trainer::new(cfg, &mut m);
    let mut curve = Vec::new();
    while !trainer.finished() {
        let s = trainer.next_step(&mut m, &chunks, &|| false).unwrap();
        assert_eq!(m.step(), s.step + 1);
        assert_eq!(m.lambda(), blend.lambda(s.step + 1));
        curve.push(s.loss);
    }
    // After the warm-up the effective weights are exactly T(latent).
    assert_eq!(m.lambda(), 0.0);
    for (_, _, w) in m.weights() {
        assert_eq!(bits(&w.effective), bits(&ternarized(&w.latent, w.n_in)));
    }
    let after = mean_loss(&m);
    eprintln!("ternary KL {before:.4} -> {after:.4}; curve {:?}", curve.iter().map(|&l| l as f32).collect::<Vec<_>>());
    assert!(before > 0.05, "{before}");
    assert!(after < 0.6 * before, "KL {before} -> {after}");
    // A trainer resumed mid-warm-up puts λ back where its updates are.
    let state = trainer.state();
    let mut again = TernaryModel::new(random::<f32>(&c, 21), blend);
    let mut t2 = Trainer::resume(TrainConfig { steps: steps + 1, ..cfg }, state, &mut again).unwrap();
    assert_eq!(again.step(), 0);
    t2.next_step(&mut again, &chunks, &|| false).unwrap();
    assert_eq!(again.step(), steps + 1);
}

/// The tiny GGUF model: rows of 256 for every linear but `ffn_down` (rows of 96: Q4_0).
fn tiny_gguf(scratch: &crunch_testkit::Scratch, seed: u64) -> std::path::PathBuf {
    let c = config(256, 96, 4, 2, 32);
    let path = scratch.join(&format!("tiny-{seed}.gguf"));
    crate::tests::write_gguf(&random::<f32>(&c, seed), &path, None);
    path
}

/// Every linear of `path`, dequantized, by name.
fn linears_of(path: &std::path::Path) -> HashMap<String, (GgmlType, Vec<f32>)> {
    let f = GgufFile::open(path).unwrap();
    f.tensors()
        .iter()
        .filter(|t| is_ternary_linear(&t.name))
        .map(|t| {
            let mut w = vec![0f32; t.n_elements() as usize];
            crunch_quant::dequantize_rows(t.ty, f.tensor_data(t), t.row_len() as usize, &mut w).unwrap();
            (t.name.clone(), (t.ty, w))
        })
        .collect()
}

/// Exported before any training, the file is the absmean ternarization of the original weights
/// (the same bytes as [`export_absmean`]); every other tensor and the metadata are copied and
/// `general.file_type` is llama.cpp's TQ code.
#[test]
fn export_before_training_is_the_absmean_ternarization() {
    let scratch = crunch_testkit::Scratch::new("train-ternary-export");
    let src = tiny_gguf(&scratch, 40);
    let orig = GgufFile::open(&src).unwrap();
    let m = TernaryModel::open(&src, MatmulMode::Exact, Blend { warmup: 0 }).unwrap();
    for (ty, ftype) in [(GgmlType::TQ1_0, 36u32), (GgmlType::TQ2_0, 37)] {
        let (a, b) = (scratch.join(&format!("model-{ty}.gguf")), scratch.join(&format!("ptq-{ty}.gguf")));
        let got = m.export(&a, ty).unwrap();
        let ptq = export_absmean(&orig, &b, ty).unwrap();
        assert_eq!(got, ptq);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(got.file_type, ftype);
        assert_eq!(got.tensors.len(), 2 * 7);
        let fallbacks: Vec<&(String, GgmlType)> = got.fallbacks(ty).collect();
        assert_eq!(fallbacks.len(), 2, "{fallbacks:?}");
        assert!(fallbacks.iter().all(|(n, t)| n.ends_with("ffn_down.weight") && *t == GgmlType::Q4_0));

        let out = GgufFile::open(&a).unwrap();
        let lin = linears_of(&a);
        for t in orig.tensors() {
            let o = out.tensor(&t.name).unwrap();
            assert_eq!(o.dims, t.dims, "{}", t.name);
            if let Some((oty, w)) = lin.get(&t.name) {
                let src_w = crunch_testkit::bytes_f32(orig.tensor_data(t));
                let want = ternarized(&src_w, t.row_len() as usize);
                assert_eq!(bits(w), bits(&want), "{} ({oty})", t.name);
            } else {
                assert_eq!((o.ty, out.tensor_data(o)), (t.ty, orig.tensor_data(t)), "{}", t.name);
            }
        }
        let md = out.metadata();
        assert_eq!(md.get_u64("general.file_type"), Some(ftype as u64));
        assert_eq!(md.get_u64("general.quantization_version"), Some(2));
        for (k, v) in orig.metadata().iter() {
            assert_eq!(md.get(k), Some(v), "{k}");
        }
    }
    assert!(m.export(scratch.join("q8.gguf"), GgmlType::Q8_0).is_err());
    assert!(!scratch.join("q8.gguf").exists());
}

/// Trained a few steps on the tiny GGUF model (blend over two updates), the exported linears
/// dequantize to `T(latent)` — the effective weights — and crunch-model's forward pass on the
/// file gives the trained model's logits.
#[test]
fn export_after_training_is_what_the_forward_used() {
    let scratch = crunch_testkit::Scratch::new("train-ternary-trained");
    let src = tiny_gguf(&scratch, 50);
    let file = Arc::new(GgufFile::open(&src).unwrap());
    let base = GgufModel::from_gguf(file.clone(), MatmulMode::Exact).unwrap();
    let n_vocab = base.config.n_vocab;
    let chunks: Vec<Chunk<f32>> = (0..3)
        .map(|i| {
            let toks = tokens(60 + i, 16, n_vocab);
            let top = top_k_rows(&base.forward(&toks).unwrap().0, n_vocab, 8);
            Chunk { tokens: toks, target: ChunkTarget::TopK(top) }
        })
        .collect();
    drop(base);
    let mut m = TernaryModel::from_gguf(file, MatmulMode::Exact, Blend { warmup: 2 }).unwrap();
    let before: Vec<Vec<f32>> = m.weights().map(|(_, _, w)| w.latent.clone()).collect();
    let cfg = TrainConfig {
        adamw: AdamWConfig { lr: 1e-3, ..AdamWConfig::default() },
        steps: 4,
        batch_size: 1,
        ..TrainConfig::default()
    };
    let curve = Trainer::new(cfg, &mut m).run(&mut m, &chunks).unwrap();
    assert_eq!(curve.len(), 4);
    assert_eq!((m.step(), m.lambda()), (4, 0.0));
    assert!(m.weights().zip(&before).all(|((_, _, w), b)| w.latent != *b), "every latent moved");
    for ty in [GgmlType::TQ1_0, GgmlType::TQ2_0] {
        let out = scratch.join(&format!("trained-{ty}.gguf"));
        m.export(&out, ty).unwrap();
        let lin = linears_of(&out);
        for (i, p, w) in m.weights() {
            let (_, got) = &lin[&format!("blk.{i}.{}.weight", p.name())];
            assert_eq!(bits(got), bits(&ternarized(&w.latent, w.n_in)), "blk.{i}.{}", p.name());
            assert_eq!(bits(got), bits(&w.effective));
        }
        let mut llama = LlamaModel::open(&out).unwrap();
        llama.mode = MatmulMode::Exact;
        let toks = &chunks[0].tokens;
        let want = llama.forward(toks, &mut llama.new_cache(toks.len())).unwrap();
        let got = m.model().forward(toks).unwrap().0;
        let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
        let e = got.iter().zip(&want).fold(0f32, |a, (x, y)| a.max((x - y).abs())) / scale;
        assert!(e < 1e-4, "{ty}: logits of the exported file vs the trained forward: {e:e}");
    }
}

/// SmolLM2-135M (F32): exporting before training is the post-training ternarization, a few
/// steps of top-k distillation towards the dense model lower the ternary model's KL on the
/// chunk, and crunch-model runs the exported file as the trained forward did.
/// `cargo test -p crunch-train --release -- --ignored smollm2_ternary`
#[test]
#[ignore = "several minutes on 2 cores; needs the F32 SmolLM2 in the test cache"]
fn smollm2_ternary_training_and_export() {
    let path = crunch_testkit::cache_dir().join("models/smollm2-f32.gguf");
    assert!(path.exists(), "{} is missing", path.display());
    let scratch = crunch_testkit::Scratch::new("train-ternary-smollm2");
    let file = Arc::new(GgufFile::open(&path).unwrap());
    let text = "The quick brown fox jumps over the lazy dog. In the beginning the Universe was created. \
                This has made a lot of people very angry and been widely regarded as a bad move.";
    let toks = crunch_model::tokenizer::Tokenizer::from_gguf(&file).unwrap().encode(text, false).unwrap();
    let base = GgufModel::from_gguf(file.clone(), MatmulMode::Exact).unwrap();
    let n_vocab = base.config.n_vocab;
    let top = top_k_rows(&base.forward(&toks).unwrap().0, n_vocab, 32);
    drop(base);
    let chunk = Chunk { tokens: toks.clone(), target: ChunkTarget::TopK(top) };

    let mut m = TernaryModel::from_gguf(file.clone(), MatmulMode::Exact, Blend { warmup: 0 }).unwrap();
    let ptq = scratch.join("ptq.gguf");
    let a = export_absmean(&file, &ptq, GgmlType::TQ2_0).unwrap();
    let b = m.export(scratch.join("untrained.gguf"), GgmlType::TQ2_0).unwrap();
    assert_eq!(a.sha256, b.sha256);
    let down: Vec<&(String, GgmlType)> = a.tensors.iter().filter(|(_, t)| *t == GgmlType::TQ2_0).collect();
    eprintln!("{} linears, {} as TQ2_0 (the rest Q4_0: rows of 576)", a.tensors.len(), down.len());
    assert_eq!(down.len(), 30, "ffn_down rows of 1536 are whole 256-blocks");

    let steps = 6;
    let cfg =
        TrainConfig { adamw: AdamWConfig { lr: 2e-4, ..AdamWConfig::default() }, steps, ..TrainConfig::default() };
    let mut trainer = Trainer::new(cfg, &mut m);
    let mut curve = Vec::new();
    while !trainer.finished() {
        let t = std::time::Instant::now();
        let s = trainer.next_step(&mut m, std::slice::from_ref(&chunk), &|| false).unwrap();
        eprintln!("step {}: KL {:.4}, |g| {:.3}, {:.2} s", s.step, s.loss, s.grad_norm, t.elapsed().as_secs_f64());
        curve.push(s.loss);
    }
    assert!(curve[steps as usize - 1] < 0.8 * curve[0], "KL {curve:?}");

    let out = scratch.join("trained.gguf");
    m.export(&out, GgmlType::TQ2_0).unwrap();
    let mut llama = LlamaModel::open(&out).unwrap();
    llama.mode = MatmulMode::Exact;
    let want = llama.forward(&toks, &mut llama.new_cache(toks.len())).unwrap();
    let got = m.model().forward(&toks).unwrap().0;
    let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
    let e = got.iter().zip(&want).fold(0f32, |a, (x, y)| a.max((x - y).abs())) / scale;
    eprintln!("exported file's logits vs the trained forward: {e:e}");
    assert!(e < 1e-3, "{e:e}");
}
