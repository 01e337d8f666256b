//! Whole-block and whole-model checks: gradients against finite differences in f64, the f32
//! instance against f64, and the f32 forward against crunch-model's own forward pass.

use std::path::Path;

use crunch_core::gguf::{GgufWriter, Metadata, TensorSpec, Value};
use crunch_core::GgmlType;
use crunch_model::config::RopeMode;
use crunch_model::lora::{adapter_metadata, write_adapter, LoraAdapter, LoraTensor};
use crunch_model::LlamaModel;

use crate::block::Proj;
use crate::gradcheck::{central_differences, dot, numeric_gradient, relative_error};
use crate::loss::log_softmax;
use crate::model::{random_block, Model, ModelConfig, Target};
use crate::ops::Dense;
use crate::testutil::randn;

fn config(n_layer: usize, n_head: usize, n_head_kv: usize, mode: RopeMode, qkv_bias: bool) -> ModelConfig {
    ModelConfig {
        n_vocab: 11,
        n_embd: 16,
        n_ff: 24,
        n_head,
        n_head_kv,
        n_layer,
        n_rot: 16 / n_head,
        rope_mode: mode,
        rope_freq_base: 10000.0,
        rms_eps: 1e-5,
        qkv_bias,
        rank: 2,
        lora_scale: 0.75,
    }
}

fn sampler(seed: u64) -> impl FnMut() -> f64 {
    let mut rng = crunch_testkit::Rng::new(seed);
    move || rng.normal() as f64
}

fn tokens(seed: u64, n: usize, n_vocab: usize) -> Vec<u32> {
    let mut rng = crunch_testkit::Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % n_vocab as u64) as u32).collect()
}

/// The shapes the checks run over: MHA and GQA, both RoPE modes, partial rotation, biases.
fn configs() -> Vec<ModelConfig> {
    let mut partial = config(1, 2, 1, RopeMode::Normal, false);
    partial.n_rot = 4;
    vec![
        config(1, 2, 2, RopeMode::Normal, false),
        config(1, 4, 2, RopeMode::Neox, true),
        config(1, 4, 1, RopeMode::Normal, false),
        partial,
    ]
}

#[test]
fn block_backward_matches_finite_differences() {
    for (ci, c) in configs().into_iter().enumerate() {
        let mut normal = sampler(100 + ci as u64);
        let mut block = random_block::<f64>(c.block_shape(), c.rank, c.lora_scale, c.qkv_bias, &mut normal);
        let rope = c.rope();
        let n = 5;
        let angles = rope.angles_rows(0, n);
        let mut rng = crunch_testkit::Rng::new(200 + ci as u64);
        let x = randn(&mut rng, n * c.n_embd, 1.0);
        let dy = randn(&mut rng, n * c.n_embd, 1.0);
        let (_, tape) = block.forward(&x, n, &rope, &angles);
        let (dx, grads) = block.backward(&tape, &dy, &rope, &angles);
        let want = numeric_gradient(&x, 1e-5, |x| dot(&dy, &block.forward(x, n, &rope, &angles).0));
        let e = relative_error(&dx, &want);
        assert!(e < 1e-6, "config {ci}: dx relative error {e:e}");
        // Every A and B, one linear at a time so a failure names it.
        let got = grads.flatten();
        let mut at = 0;
        for (pi, p) in Proj::ALL.iter().enumerate() {
            for (half, name) in [(0, "A"), (1, "B")] {
                let len = block.lora_params_mut()[2 * pi + half].len();
                let want = central_differences(len, 1e-5, |i, d| {
                    block.lora_params_mut()[2 * pi + half][i] += d;
                    let v = dot(&dy, &block.forward(&x, n, &rope, &angles).0);
                    block.lora_params_mut()[2 * pi + half][i] -= d;
                    v
                });
                let e = relative_error(&got[at..at + len], &want);
                assert!(e < 1e-6, "config {ci}: d{name} of {} relative error {e:e}", p.name());
                at += len;
            }
        }
        assert_eq!(at, got.len());
    }
}

/// The whole model's LoRA gradient (every A and B of every layer) against finite differences of
/// the loss, for both losses.
#[test]
fn model_lora_gradient_matches_finite_differences() {
    for (ci, mut c) in configs().into_iter().enumerate().filter(|(i, _)| *i < 3) {
        c.n_layer = 2;
        let mut model = Model::<f64>::random(&c, &mut sampler(300 + ci as u64));
        let toks = tokens(400 + ci as u64, 6, c.n_vocab);
        let mut rng = crunch_testkit::Rng::new(500 + ci as u64);
        let base: Vec<f64> =
            randn(&mut rng, toks.len() * c.n_vocab, 2.0).chunks(c.n_vocab).flat_map(log_softmax).collect();
        for (tname, target) in [("next token", Target::NextToken), ("distill", Target::Distill(&base))] {
            let (loss, grads) = model.loss_and_grad(&toks, target);
            assert!(loss.is_finite() && loss > 0.0);
            let got: Vec<f64> = grads.iter().flat_map(|g| g.flatten()).collect();
            let sizes: Vec<usize> = model.lora_params_mut().iter().map(|p| p.len()).collect();
            assert_eq!(sizes.len(), c.n_layer * 7 * 2);
            assert_eq!(got.len(), sizes.iter().sum::<usize>());
            let mut want = Vec::with_capacity(got.len());
            for (pi, &len) in sizes.iter().enumerate() {
                want.extend(central_differences(len, 1e-5, |i, d| {
                    model.lora_params_mut()[pi][i] += d;
                    let v = model.loss(&toks, target);
                    model.lora_params_mut()[pi][i] -= d;
                    v
                }));
            }
            let e = relative_error(&got, &want);
            assert!(e < 1e-5, "config {ci} {tname}: relative error {e:e}");
            // And per parameter tensor, so that a small tensor's error is not hidden by a large one.
            let mut at = 0;
            for (pi, &len) in sizes.iter().enumerate() {
                let e = relative_error(&got[at..at + len], &want[at..at + len]);
                assert!(e < 1e-5, "config {ci} {tname}: tensor {pi} relative error {e:e}");
                at += len;
            }
        }
    }
}

#[test]
fn f32_forward_agrees_with_f64() {
    for (ci, mut c) in configs().into_iter().enumerate() {
        c.n_layer = 2;
        let m64 = Model::<f64>::random(&c, &mut sampler(600 + ci as u64));
        let m32 = Model::<f32>::random(&c, &mut sampler(600 + ci as u64));
        let toks = tokens(700, 9, c.n_vocab);
        let (l64, _) = m64.forward(&toks);
        let (l32, _) = m32.forward(&toks);
        let scale = l64.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (a, b) in l32.iter().zip(&l64) {
            assert!((*a as f64 - b).abs() < 1e-4 * scale, "config {ci}: {a} vs {b}");
        }
        let (g64, g32) = (m64.loss_and_grad(&toks, Target::NextToken), m32.loss_and_grad(&toks, Target::NextToken));
        assert!((g32.0 as f64 - g64.0).abs() < 1e-4 * g64.0.abs().max(1.0));
        let (a, b): (Vec<f64>, Vec<f64>) = (
            g32.1.iter().flat_map(|g| g.flatten()).map(|v| v as f64).collect(),
            g64.1.iter().flat_map(|g| g.flatten()).collect(),
        );
        let e = relative_error(&a, &b);
        assert!(e < 1e-4, "config {ci}: f32 gradient relative error {e:e}");
    }
}

/// Write `m`'s frozen weights as an F32 GGUF crunch-model opens (`llama` for normal RoPE,
/// `qwen2` for NeoX) and, when `adapter` is given, its LoRA factors as an adapter there.
pub(crate) fn write_gguf(m: &Model<f32>, path: &Path, adapter: Option<&Path>) {
    let c = &m.config;
    let arch = if c.rope_mode == RopeMode::Neox { "qwen2" } else { "llama" };
    let mut md = Metadata::default();
    md.set("general.architecture", Value::string(arch));
    for (k, v) in [
        ("block_count", c.n_layer),
        ("embedding_length", c.n_embd),
        ("feed_forward_length", c.n_ff),
        ("attention.head_count", c.n_head),
        ("attention.head_count_kv", c.n_head_kv),
        ("rope.dimension_count", c.n_rot),
        ("context_length", 64),
        ("vocab_size", c.n_vocab),
    ] {
        md.set(&format!("{arch}.{k}"), Value::U32(v as u32));
    }
    md.set(&format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(c.rms_eps));
    md.set(&format!("{arch}.rope.freq_base"), Value::F32(c.rope_freq_base));
    let mut tensors: Vec<(String, Vec<u64>, Vec<f32>)> = Vec::new();
    let e = c.n_embd as u64;
    tensors.push(("token_embd.weight".into(), vec![e, c.n_vocab as u64], m.tok_embd.clone()));
    let mut lora = Vec::new();
    for (i, b) in m.blocks.iter().enumerate() {
        tensors.push((format!("blk.{i}.attn_norm.weight"), vec![e], b.attn_norm.clone()));
        tensors.push((format!("blk.{i}.ffn_norm.weight"), vec![e], b.ffn_norm.clone()));
        for (p, l) in Proj::ALL.iter().zip(&b.linears) {
            let name = format!("blk.{i}.{}", p.name());
            let (n_in, n_out) = (l.n_in(), l.n_out());
            let w = l.w.product().to_dense();
            tensors.push((format!("{name}.weight"), vec![n_in as u64, n_out as u64], w));
            if let Some(bias) = &l.bias {
                tensors.push((format!("{name}.bias"), vec![n_out as u64], bias.clone()));
            }
            if let Some(lo) = &l.lora {
                lora.push(LoraTensor {
                    base: format!("{name}.weight"),
                    rank: lo.rank,
                    n_in,
                    n_out,
                    a: lo.a.clone(),
                    b: lo.b.clone(),
                });
            }
        }
    }
    tensors.push(("output_norm.weight".into(), vec![e], m.output_norm.clone()));
    tensors.push(("output.weight".into(), vec![e, c.n_vocab as u64], m.output.w.clone()));
    let specs: Vec<TensorSpec> =
        tensors.iter().map(|(n, d, _)| TensorSpec { name: n.clone(), ty: GgmlType::F32, dims: d.clone() }).collect();
    let mut w = GgufWriter::create(path, md, &specs).unwrap();
    for (n, _, v) in &tensors {
        w.write_tensor(n, &crunch_testkit::f32_bytes(v)).unwrap();
    }
    w.finish().unwrap();
    // alpha = s · rank gives llama.cpp's factor alpha / rank = s at user scale 1.
    let alpha = (c.lora_scale * c.rank as f64) as f32;
    if let Some(adapter) = adapter {
        write_adapter(adapter, adapter_metadata(arch, alpha), GgmlType::F32, &lora).unwrap();
    }
}

/// The f32 model is crunch-model's forward pass: the same random weights written as an F32 GGUF
/// (and the LoRA factors as an adapter) give the same logits through `LlamaModel`.
#[test]
fn f32_forward_matches_crunch_model() {
    let scratch = crunch_testkit::Scratch::new("train-forward");
    for (ci, mut c) in configs().into_iter().enumerate() {
        c.n_layer = 2;
        let ours = Model::<f32>::random(&c, &mut sampler(800 + ci as u64));
        let (path, adapter) = (scratch.join(&format!("m{ci}.gguf")), scratch.join(&format!("a{ci}.gguf")));
        write_gguf(&ours, &path, Some(&adapter));
        let mut theirs = LlamaModel::open(&path).unwrap();
        // Short (per-token paths) and long (GEMM attention and tiled products) batches.
        for n in [3, 13] {
            let toks = tokens(900 + n as u64, n, c.n_vocab);
            let check = |got: &[f32], want: &[f32], what: &str| {
                let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
                for (a, b) in got.iter().zip(want) {
                    assert!((a - b).abs() < 1e-4 * scale, "config {ci} n {n} {what}: {a} vs {b}");
                }
            };
            // Without the adapter: the frozen model alone.
            let mut frozen = Model::<f32>::random(&c, &mut sampler(800 + ci as u64));
            for b in &mut frozen.blocks {
                for l in b.linears.iter_mut() {
                    l.lora = None;
                }
            }
            let mut cache = theirs.new_cache(n);
            let want = theirs.forward(&toks, &mut cache).unwrap();
            let frozen_logits = frozen.forward(&toks).0;
            check(&frozen_logits, &want, "frozen");
            if theirs.adapters().is_empty() {
                theirs.add_adapter(std::sync::Arc::new(LoraAdapter::open(&adapter).unwrap()), 1.0).unwrap();
            }
            let mut cache = theirs.new_cache(n);
            let want = theirs.forward(&toks, &mut cache).unwrap();
            let lora_logits = ours.forward(&toks).0;
            check(&lora_logits, &want, "with LoRA");
            // The adapter matters: the LoRA term moves the logits well beyond the tolerance.
            let moved = lora_logits.iter().zip(&frozen_logits).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(moved > 0.05, "config {ci} n {n}: LoRA moved the logits by only {moved}");
            theirs = LlamaModel::open(&path).unwrap();
        }
    }
}

#[test]
fn dense_frozen_weight_is_its_matrix() {
    use crate::ops::Frozen;
    let w = Dense::new(3, 2, vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(w.forward(&[1.0, 0.0, -1.0], 1), vec![-2.0, -2.0]);
    assert_eq!(w.backward(&[1.0, 1.0], 1), vec![5.0, 7.0, 9.0]);
}
