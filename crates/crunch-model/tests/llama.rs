//! The Llama forward pass and perplexity on the real SmolLM2-135M Q4_1 GGUF.

use std::sync::{Arc, OnceLock};

use crunch_core::gguf::GgufFile;
use crunch_model::tokenizer::Tokenizer;
use crunch_model::{perplexity, Arch, LlamaModel, MatmulMode, PerplexityOptions};
use crunch_testkit as kit;

fn model() -> &'static LlamaModel {
    static M: OnceLock<LlamaModel> = OnceLock::new();
    M.get_or_init(|| LlamaModel::open(kit::smollm2_gguf()).expect("load SmolLM2"))
}

#[test]
fn smollm2_config() {
    let c = &model().config;
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!((c.n_layer, c.n_embd, c.n_ff, c.n_head, c.n_head_kv, c.head_dim), (30, 576, 1536, 9, 3, 64));
    assert_eq!(c.n_vocab, 49152);
    assert_eq!(c.rope_freq_base, 100000.0);
    assert_eq!(model().linear_names().len(), 30 * 7 + 1);
}

#[test]
fn smollm2_perplexity_ctx128() {
    let m = model();
    let tok = Tokenizer::from_gguf(m.file()).unwrap();
    let text = std::fs::read_to_string(kit::wikitext_dev()).unwrap();
    let mut seen = 0;
    let res = perplexity(m, &tok, &text, PerplexityOptions { n_ctx: 128, n_chunks: Some(4) }, |_| seen += 1).unwrap();
    assert_eq!(seen, 4);
    assert_eq!(res.chunks.len(), 4);
    assert_eq!(res.count, 4 * 63);
    assert!(res.ppl.is_finite() && res.ppl_err.is_finite());
    // SmolLM2-135M on WikiText-2 at a short context: tens, not units or thousands.
    assert!((8.0..150.0).contains(&res.ppl), "perplexity {}", res.ppl);
    assert!(res.ppl_err > 0.0 && res.ppl_err < res.ppl);
    eprintln!("{} ({:.1} tokens/s)", res.final_estimate(), 4.0 * 128.0 / res.seconds);
}

/// A batch gives the same logits as feeding the tokens one at a time through the KV cache.
#[test]
fn batch_equals_incremental() {
    let m = model();
    let tok = Tokenizer::from_gguf(m.file()).unwrap();
    let ids = tok.encode("The capital of France is Paris, and the capital of Italy is", false).unwrap();
    let n_vocab = m.config.n_vocab;
    let mut cache = m.new_cache(64);
    let all = m.forward(&ids, &mut cache).unwrap();
    assert_eq!(all.len(), ids.len() * n_vocab);
    assert_eq!(cache.len(), ids.len());
    // One token at a time takes the vec_dot kernels, a batch the tiled ones: the integer products
    // are equal, the float scaling order differs. In exact mode (f32 only) the logits agree closely.
    let mut exact = LlamaModel::from_gguf(m.file().clone()).unwrap();
    exact.mode = MatmulMode::Exact;
    let all_exact = exact.forward(&ids, &mut exact.new_cache(64)).unwrap();
    let mut cache = exact.new_cache(64);
    for (t, &id) in ids.iter().enumerate() {
        let one = exact.forward(&[id], &mut cache).unwrap();
        let want = &all_exact[t * n_vocab..(t + 1) * n_vocab];
        let diff = one.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("exact token {t}: max logit difference {diff}");
        assert!(diff < 0.05, "exact mode, token {t}: max logit difference {diff}");
    }
    // Natively, rounding-order differences move some activations across a Q8 rounding boundary,
    // so the two paths differ by activation-quantization noise: bound it as a KL-divergence.
    let mut cache = m.new_cache(64);
    let mut klds = Vec::new();
    for (t, &id) in ids.iter().enumerate() {
        let one = m.forward(&[id], &mut cache).unwrap();
        klds.push(crunch_model::kld::kld_full(&all[t * n_vocab..(t + 1) * n_vocab], &one));
    }
    let mean = klds.iter().sum::<f64>() / klds.len() as f64;
    eprintln!("native batch vs one by one: KLD per token {klds:.4?}");
    assert!(mean < 0.01 && klds.iter().all(|&k| k < 0.05), "KLD {klds:?}");
    // The model knows its geography: greedy next token after "...Italy is" is " Rome".
    let last = &all[(ids.len() - 1) * n_vocab..];
    let best = (0..n_vocab).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
    assert_eq!(tok.decode(&[best as u32]).unwrap(), " Rome");
}

/// Exact mode (dequantized weights, f32 activations) agrees closely with native mode.
#[test]
fn exact_mode_close_to_native() {
    let file = Arc::new(GgufFile::open(kit::smollm2_gguf()).unwrap());
    let mut exact = LlamaModel::from_gguf(file).unwrap();
    exact.mode = MatmulMode::Exact;
    let ids = [504u32, 3458, 282, 4649, 314];
    let a = model().forward(&ids, &mut model().new_cache(8)).unwrap();
    let b = exact.forward(&ids, &mut exact.new_cache(8)).unwrap();
    let (num, den) =
        a.iter().zip(&b).fold((0f64, 0f64), |(n, d), (x, y)| (n + ((x - y) as f64).powi(2), d + (*y as f64).powi(2)));
    assert!((num / den).sqrt() < 0.05, "relative difference {}", (num / den).sqrt());
}

#[test]
fn errors_not_panics() {
    let m = model();
    let mut cache = m.new_cache(4);
    assert!(m.forward(&[49152], &mut cache).is_err());
    assert!(m.forward(&[1, 2, 3, 4, 5], &mut cache).is_err());
    assert!(m.forward(&[], &mut cache).unwrap().is_empty());
    let tok = Tokenizer::from_gguf(m.file()).unwrap();
    let short = PerplexityOptions { n_ctx: 128, n_chunks: None };
    assert!(perplexity(m, &tok, "too short", short, |_| {}).is_err());
}

/// The observer sees every linear layer's input, in `linear_names` order, with the layer's width.
#[test]
fn observer_sees_every_linear_input() {
    let m = model();
    let ids = [504u32, 3458, 282, 4649, 314, 7];
    let mut seen: Vec<(String, usize, usize)> = Vec::new();
    let mut obs = |name: &str, input: &[f32], n: usize| {
        assert!(input.iter().all(|v| v.is_finite()));
        seen.push((name.to_string(), input.len() / n, n));
    };
    let logits = m.forward_observed(&ids, &mut obs).unwrap();
    assert_eq!(logits.len(), ids.len() * m.config.n_vocab);
    let names: Vec<String> = seen.iter().map(|s| s.0.clone()).collect();
    assert_eq!(names, m.linear_names());
    for (name, n_in, n) in &seen {
        assert_eq!(*n, ids.len(), "{name}");
        let want = if name.ends_with("ffn_down.weight") { m.config.n_ff } else { m.config.n_embd };
        assert_eq!(*n_in, want, "{name}");
    }
    // The observed pass computes the same logits as a plain one.
    let plain = m.forward(&ids, &mut m.new_cache(ids.len())).unwrap();
    assert_eq!(plain, logits);
}

/// Several tokens at once (tiled kernels) give each token's single-token (vec_dot) product.
#[test]
fn tiled_matmul_equals_per_token_on_real_weights() {
    use crunch_model::matmul::{matmul, WeightView};
    let m = model();
    let f = m.file();
    let mut rng = crunch_testkit::Rng::new(9);
    for name in ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "token_embd.weight"] {
        let info = f.tensor(name).unwrap();
        let (n_in, n_out) = (info.dims[0] as usize, info.dims[1] as usize);
        let w = WeightView { name, ty: info.ty, n_in, n_out, data: f.tensor_data(info) };
        let n = 6;
        let x: Vec<f32> = (0..n * n_in).map(|_| rng.normal()).collect();
        let all = matmul(&x, n, &w, MatmulMode::Native).unwrap();
        for t in 0..n {
            let one = matmul(&x[t * n_in..(t + 1) * n_in], 1, &w, MatmulMode::Native).unwrap();
            let got = &all[t * n_out..(t + 1) * n_out];
            let diff = one.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-3, "{name} token {t}: max difference {diff}");
        }
    }
}
