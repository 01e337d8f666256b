//! Gemma 3 270M (`gemma3`) and Qwen2.5-Coder-0.5B-Instruct (`qwen2`), both as shipped (Q4_K_M
//! mixes): configuration, tokenizer and perplexity against values recorded from llama.cpp
//! (llama-cpp-python 0.3.36, llama.cpp of 2026-10-01; see docs/MODELS.md for the commands), and
//! the sliding window wired through the whole model.

use std::sync::OnceLock;

use crunch_model::tokenizer::Tokenizer;
use crunch_model::{perplexity, Arch, FfnAct, LlamaModel, PerplexityOptions, RopeMode};
use crunch_testkit as kit;

fn gemma() -> &'static LlamaModel {
    static M: OnceLock<LlamaModel> = OnceLock::new();
    M.get_or_init(|| LlamaModel::open(kit::gemma3_gguf()).expect("load Gemma 3 270M"))
}

fn qwen() -> &'static LlamaModel {
    static M: OnceLock<LlamaModel> = OnceLock::new();
    M.get_or_init(|| LlamaModel::open(kit::qwen2_gguf()).expect("load Qwen2.5-Coder-0.5B"))
}

/// The start of wikitext2-test-dev.txt's first article.
const TEXT: &str = " = Robert Boulter = \n\n Robert Boulter is an English film , television and theatre actor . He had a guest @-@ starring role in 2000 .";

/// `llama_cpp.Llama(vocab_only=True).tokenize(TEXT.encode(), add_bos=True, special=False)`.
const GEMMA_IDS: &[u32] = &[
    2, 578, 9877, 151936, 589, 578, 236743, 108, 9877, 151936, 589, 563, 614, 5422, 4103, 1031, 13617, 532, 26470,
    13387, 783, 1293, 1053, 496, 15083, 1392, 236772, 236940, 44116, 3853, 528, 236743, 236778, 236771, 236771, 236771,
    783,
];
const QWEN_IDS: &[u32] = &[
    284, 8397, 425, 10965, 465, 284, 4710, 8397, 425, 10965, 465, 374, 458, 6364, 4531, 1154, 12425, 323, 33496, 12089,
    659, 1260, 1030, 264, 8640, 569, 12, 31, 39400, 3476, 304, 220, 17, 15, 15, 15, 659,
];

#[test]
fn configs_read_as_llama_cpp_prints_them() {
    let g = &gemma().config;
    assert_eq!(g.arch, Arch::Gemma3);
    assert_eq!((g.n_layer, g.n_embd, g.n_ff, g.n_head, g.n_head_kv, g.head_dim), (18, 640, 2048, 4, 1, 256));
    assert_eq!((g.n_vocab, g.n_swa, g.rope_freq_base, g.rope_freq_base_swa), (262144, 512, 1e6, 10000.0));
    assert_eq!((g.rope_mode, g.ffn_act, g.q_scale), (RopeMode::Neox, FfnAct::GeluTanh, Some(0.0625)));
    // llama.cpp's load log: "is_swa = 0" for layers 5, 11 and 17 only
    let global: Vec<usize> = (0..18).filter(|&il| !g.is_swa(il)).collect();
    assert_eq!(global, [5, 11, 17]);
    // tied output: the output layer is the token embedding
    assert_eq!(gemma().linear_names().last().map(String::as_str), Some("token_embd.weight"));

    let q = &qwen().config;
    assert_eq!(q.arch, Arch::Qwen2);
    assert_eq!((q.n_layer, q.n_embd, q.n_ff, q.n_head, q.n_head_kv, q.head_dim), (24, 896, 4864, 14, 2, 64));
    assert!(q.is_plain_llama());
    assert_eq!(qwen().linear_names().last().map(String::as_str), Some("output.weight"));
}

#[test]
fn token_ids_equal_llama_cpp() {
    for (m, want) in [(gemma(), GEMMA_IDS), (qwen(), QWEN_IDS)] {
        let tok = Tokenizer::from_gguf(m.file()).unwrap();
        let ids = tok.encode(TEXT, true).unwrap();
        assert_eq!(ids, want, "{}", m.config.arch.name());
        assert_eq!(tok.decode(&ids[usize::from(m.config.arch == Arch::Gemma3)..]).unwrap(), TEXT);
    }
}

/// Perplexity over the text's first two chunks of 128 tokens, scored as llama-perplexity does.
fn ppl(m: &LlamaModel) -> f64 {
    let tok = Tokenizer::from_gguf(m.file()).unwrap();
    let text = std::fs::read_to_string(kit::wikitext_dev()).unwrap();
    let r = perplexity(m, &tok, &text, PerplexityOptions { n_ctx: 128, n_chunks: Some(2) }, |_| {}).unwrap();
    assert_eq!(r.count, 2 * 63);
    r.ppl
}

// `compare_perplexity.py --worker MODEL wikitext2-test-dev.txt --ctx 128 --chunks 2` (llama.cpp's
// own perplexity of the quantized file as shipped).
const GEMMA_PPL_LLAMA_CPP: f64 = 15.633097897285008;
const QWEN_PPL_LLAMA_CPP: f64 = 37.523146000691014;
/// Two chunks are few tokens (126 scored): activation-quantization rounding that differs in the
/// last bit moves the figure by up to about a percent here (measured: gemma3 +0.95%, qwen2
/// -0.007%; over 32 chunks of 512 gemma3 differs by -0.05%, docs/MODELS.md); 3% still catches
/// a graph error (a wrong norm, scale, window or RoPE base costs far more).
const PPL_TOL: f64 = 0.03;

#[test]
fn gemma3_perplexity_equals_llama_cpp() {
    let p = ppl(gemma());
    let rel = (p - GEMMA_PPL_LLAMA_CPP) / GEMMA_PPL_LLAMA_CPP;
    eprintln!("gemma3 ppl {p:.4} vs llama.cpp {GEMMA_PPL_LLAMA_CPP:.4} ({:+.3}%)", 100.0 * rel);
    assert!(rel.abs() < PPL_TOL, "gemma3 ppl {p} vs llama.cpp {GEMMA_PPL_LLAMA_CPP}");
}

#[test]
fn qwen2_perplexity_equals_llama_cpp() {
    let p = ppl(qwen());
    let rel = (p - QWEN_PPL_LLAMA_CPP) / QWEN_PPL_LLAMA_CPP;
    eprintln!("qwen2 ppl {p:.4} vs llama.cpp {QWEN_PPL_LLAMA_CPP:.4} ({:+.3}%)", 100.0 * rel);
    assert!(rel.abs() < PPL_TOL, "qwen2 ppl {p} vs llama.cpp {QWEN_PPL_LLAMA_CPP}");
}

/// The sliding window through the whole model: with the window shrunk to 8, tokens 0..8 see
/// what they saw before and later ones do not; a batch equals one token at a time through the
/// KV cache (the window applied on both attention paths).
#[test]
fn gemma3_sliding_window_in_the_model() {
    let full = gemma();
    let mut small = LlamaModel::from_gguf(full.file().clone()).unwrap();
    small.config.n_swa = 8;
    let ids = &GEMMA_IDS[..20];
    let n_vocab = full.config.n_vocab;
    let a = full.forward(ids, &mut full.new_cache(32)).unwrap();
    let b = small.forward(ids, &mut small.new_cache(32)).unwrap();
    let row_diff = |t: usize, x: &[f32], y: &[f32]| {
        x[t * n_vocab..(t + 1) * n_vocab].iter().zip(&y[t * n_vocab..]).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max)
    };
    for t in 0..8 {
        assert_eq!(row_diff(t, &a, &b), 0.0, "token {t} is inside the window");
    }
    for t in 10..20 {
        assert!(row_diff(t, &a, &b) > 0.1, "token {t} lost keys outside the window");
    }
    let mut cache = small.new_cache(32);
    let mut klds = Vec::new();
    for (t, &id) in ids.iter().enumerate() {
        let one = small.forward(&[id], &mut cache).unwrap();
        klds.push(crunch_model::kld::kld_full(&b[t * n_vocab..(t + 1) * n_vocab], &one));
    }
    // the two paths differ only by activation-quantization rounding
    assert!(klds.iter().all(|&k| k < 0.05), "KLD batch vs one by one {klds:?}");
}
