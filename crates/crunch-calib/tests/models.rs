//! The calibration runner runs the same block as inference on Gemma 3 270M (`gemma3`: Q/K norms,
//! post-norms, GeGLU, scaled embeddings, windowed layers) and Qwen2.5-Coder-0.5B (`qwen2`: Q/K/V
//! biases): every linear layer's input seen by the runner's hooks equals what the inference
//! model's observer sees (exact mode: both multiply dequantized f32 weights), and imatrix
//! collection covers every block linear.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crunch_calib::runner::{Group, Layer, Runner};
use crunch_core::gguf::GgufFile;
use crunch_model::tokenizer::Tokenizer;
use crunch_model::{LlamaModel, MatmulMode};
use crunch_testkit as kit;

fn tokens(file: &GgufFile, n: usize) -> Vec<u32> {
    let tok = Tokenizer::from_gguf(file).unwrap();
    let text = std::fs::read_to_string(kit::wikitext_dev()).unwrap();
    let mut ids = tok.encode(&text[..4000], true).unwrap();
    ids.truncate(n);
    assert_eq!(ids.len(), n);
    ids
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (num, den) =
        a.iter().zip(b).fold((0f64, 0f64), |(n, d), (x, y)| (n + ((x - y) as f64).powi(2), d + (*y as f64).powi(2)));
    (num / den.max(1e-30)).sqrt()
}

fn runner_matches_inference(path: &Path) {
    let file = Arc::new(GgufFile::open(path).unwrap());
    let ids = tokens(&file, 48);
    let mut model = LlamaModel::from_gguf(file.clone()).unwrap();
    model.mode = MatmulMode::Exact;
    let mut seen: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut obs = |name: &str, input: &[f32], _n: usize| {
        seen.insert(name.to_string(), input.to_vec());
    };
    model.forward_observed(&ids, &mut obs).unwrap();

    let runner = Runner::new(file.clone()).unwrap();
    let mut x = runner.embed(std::slice::from_ref(&ids)).unwrap();
    let mut checked = 0;
    let mut worst = (0f64, String::new());
    for i in 0..runner.config.n_layer {
        let mut layer = runner.load_layer(i).unwrap();
        let mut hook = |_g: Group, l: &mut Layer, input: &mut [f32]| -> crunch_calib::Result<()> {
            for lin in l.group_mut(_g) {
                let want = &seen[&lin.name];
                assert_eq!(want.len(), input.len(), "{}", lin.name);
                let d = rel_l2(input, want);
                if d > worst.0 {
                    worst = (d, lin.name.clone());
                }
                checked += 1;
            }
            Ok(())
        };
        runner.forward_layer(&mut layer, &mut x, ids.len(), &mut hook).unwrap();
    }
    eprintln!("{}: {checked} inputs, worst relative L2 difference {:.2e} ({})", path.display(), worst.0, worst.1);
    assert_eq!(checked, 7 * runner.config.n_layer);
    // f32 sums in another order, through every layer: far below any graph difference (a missing
    // norm or a wrong scale changes inputs by tens of percent)
    assert!(worst.0 < 2e-3, "{worst:?}");
}

#[test]
fn gemma3_runner_block_equals_inference_block() {
    runner_matches_inference(&kit::gemma3_gguf());
}

#[test]
fn qwen2_runner_block_equals_inference_block() {
    runner_matches_inference(&kit::qwen2_gguf());
}

/// imatrix collection (the inference model's observer, as llama-imatrix) on both models: every
/// block linear with its input width and token count, q/k/v and gate/up sharing their inputs;
/// Gemma's tied output (`token_embd.weight`) is not a `blk.*` weight and is left out, as
/// llama-imatrix leaves it out.
#[test]
fn imatrix_has_every_block_linear_of_both_models() {
    use crunch_calib::imatrix::{self, CollectOptions, Collector};
    use crunch_calib::text::{self, ChunkOptions, TextSource};
    for path in [kit::gemma3_gguf(), kit::qwen2_gguf()] {
        let model = LlamaModel::open(&path).unwrap();
        let tok = Tokenizer::from_gguf(model.file()).unwrap();
        let src = TextSource::File(kit::wikitext_dev());
        let o = ChunkOptions { n_ctx: 32, n_chunks: Some(1), skip: 0, shuffle_seed: None };
        let chunks = text::load_chunks(&src, &tok, o).unwrap();
        let mut c = Collector::new(CollectOptions::default());
        imatrix::collect(&model, &chunks, &mut c, |_, _| Ok(true)).unwrap();
        let m = c.to_imatrix(vec![chunks.dataset.clone()], 32);
        let cfg = &model.config;
        assert_eq!(m.entries.len(), 7 * cfg.n_layer, "{}", path.display());
        for l in 0..cfg.n_layer {
            for (s, width) in [
                ("attn_q", cfg.n_embd),
                ("attn_k", cfg.n_embd),
                ("attn_v", cfg.n_embd),
                ("attn_output", cfg.n_head * cfg.head_dim),
                ("ffn_gate", cfg.n_embd),
                ("ffn_up", cfg.n_embd),
                ("ffn_down", cfg.n_ff),
            ] {
                let e = &m.entries[&format!("blk.{l}.{s}.weight")];
                assert_eq!((e.sums.len(), e.counts.clone()), (width, vec![32]), "blk.{l}.{s}");
                assert!(e.sums.iter().all(|v| v.is_finite() && *v >= 0.0), "blk.{l}.{s}");
            }
            let g = |s: &str| &m.entries[&format!("blk.{l}.{s}.weight")].sums;
            assert_eq!(g("attn_q"), g("attn_v"));
            assert_eq!(g("ffn_gate"), g("ffn_up"));
        }
    }
}
