//! Tokenizer tests: golden ids from llama.cpp (tests/fixtures/smollm2_tokens.json, made by
//! scripts/make_token_fixture.py), the all-MiniLM tokenizer.json, and small hand-made vocabularies.
//!
//! The SmolLM2 tokenizer is built from the GGUF's own metadata (`Tokenizer::from_gguf`); one test
//! checks that reading against PyPI `gguf`'s (scripts/dump_vocab.py).

use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use crunch_core::gguf::GgufFile;
use crunch_model::tokenizer::{EncodeOptions, GgufVocab, Tokenizer, TokenizerError};
use crunch_testkit as kit;
use serde::Deserialize;

fn python_dumped_vocab() -> GgufVocab {
    {
        let scratch = kit::Scratch::new("vocab");
        let out = scratch.join("vocab.json");
        let script = kit::repo_root().join("scripts/dump_vocab.py");
        let st = Command::new(kit::python())
            .arg(&script)
            .arg(kit::smollm2_gguf())
            .arg(&out)
            .output()
            .expect("run dump_vocab.py");
        assert!(st.status.success(), "dump_vocab.py failed: {}", String::from_utf8_lossy(&st.stderr));
        GgufVocab::from_json(&std::fs::read_to_string(&out).unwrap()).unwrap()
    }
}

#[test]
fn gguf_vocab_matches_python_dump() {
    let ours = GgufVocab::from_gguf(&GgufFile::open(kit::smollm2_gguf()).unwrap()).unwrap();
    let theirs = python_dumped_vocab();
    assert_eq!(ours.tokens.len(), 49152);
    assert_eq!(ours.merges.as_ref().map(Vec::len), Some(48900));
    assert_eq!(ours, theirs);
}

fn smollm2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_gguf(&GgufFile::open(kit::smollm2_gguf()).unwrap()).unwrap())
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    add_special: bool,
    parse_special: bool,
    ids: Vec<u32>,
    decoded: String,
    decoded_skip_special: String,
}

#[test]
fn smollm2_matches_llama_cpp_fixture() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smollm2_tokens.json");
    let fx: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(fx.cases.len() > 50);
    let tok = smollm2();
    let mut failures = Vec::new();
    for c in &fx.cases {
        let opts = EncodeOptions { add_special: c.add_special, parse_special: c.parse_special };
        let ids = tok.encode_with(&c.text, opts).unwrap();
        if ids != c.ids {
            failures.push(format!("{:?} {:?}: llama.cpp {:?}, crunch {:?}", c.text, opts, c.ids, ids));
            continue;
        }
        assert_eq!(tok.decode(&ids).unwrap(), c.decoded, "decode {:?}", c.text);
        assert_eq!(tok.decode_with(&ids, true).unwrap(), c.decoded_skip_special, "decode skipping {:?}", c.text);
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn smollm2_metadata() {
    let tok = smollm2();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    assert!(!tok.add_bos(), "SmolLM2 sets tokenizer.ggml.add_bos_token = false");
    assert!(!tok.add_eos());
    assert!(tok.is_eog(2));
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_piece(1), b"<|im_start|>");
    // "Ġ" is the byte-level stand-in of a space.
    let space = tok.token_id("Ġ").unwrap();
    assert_eq!(tok.token_to_piece(space), b" ");
    assert!(tok.token_to_piece(u32::MAX).is_empty());
    assert!(matches!(tok.decode(&[49152]), Err(TokenizerError::IdOutOfRange { .. })));
}

#[test]
fn smollm2_parse_special_switch() {
    let tok = smollm2();
    let text = "<|im_start|>user";
    let with = tok.encode_special(text, false).unwrap();
    assert_eq!(with[0], 1);
    let without = tok.encode(text, false).unwrap();
    assert!(!without.contains(&1) && without.len() > 2);
    assert_eq!(tok.decode(&without).unwrap(), text);
}

#[test]
fn smollm2_streaming_pieces_rebuild_text() {
    let tok = smollm2();
    let text = "Streaming: naïve 😀 日本語 — ok\n";
    let ids = tok.encode(text, false).unwrap();
    let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_to_piece(id)).collect();
    assert_eq!(String::from_utf8(bytes).unwrap(), text);
}

/// The whole dev text: llama.cpp gives 155533 tokens (see scripts/compare_tokens.py), decoding
/// gives the text back, and it is fast.
#[test]
fn smollm2_wikitext_dev() {
    let text = std::fs::read_to_string(kit::wikitext_dev()).unwrap();
    let tok = smollm2();
    let t0 = Instant::now();
    let ids = tok.encode(&text, false).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(ids.len(), 155_533);
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert!(secs < 5.0, "tokenizing {} bytes took {secs:.2}s", text.len());
}

#[test]
fn minilm_tokenizer_json() {
    let tok = Tokenizer::from_hf_file(kit::minilm_dir().join("tokenizer.json")).unwrap();
    assert_eq!(tok.vocab_size(), 30522);
    assert_eq!(tok.bos(), Some(101));
    assert_eq!(tok.eos(), Some(102));
    assert!(tok.add_bos() && tok.add_eos());
    let ids = tok.encode("Hello, World!", true).unwrap();
    assert_eq!(ids, [101, 7592, 1010, 2088, 999, 102]);
    assert_eq!(tok.decode_with(&ids, true).unwrap(), "hello, world!");
    // No truncation: the file asks for 128 tokens at most.
    let long = "word ".repeat(500);
    assert_eq!(tok.encode(&long, false).unwrap().len(), 500);
}

// ---- small hand-made vocabularies ----

fn spm_vocab() -> GgufVocab {
    // <unk> <s> </s>, byte tokens for a few bytes, then pieces with scores.
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in [0x0Au8, 0x21, 0xC3, 0xA9] {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (p, s) in [
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("w", -2.0),
        ("r", -2.0),
        ("d", -2.0),
        ("he", -3.0),
        ("ll", -3.0),
        ("llo", -4.0),
        ("hello", -5.0),
        ("▁hello", -6.0),
        ("▁w", -7.0),
        ("or", -7.5),
        ("▁wor", -8.0),
        ("ld", -8.0),
        ("▁world", -9.0),
    ] {
        tokens.push(p.into());
        types.push(1);
        scores.push(s);
    }
    GgufVocab { model: "llama".into(), tokens, scores: Some(scores), token_types: Some(types), ..Default::default() }
}

#[test]
fn spm_merges_by_score_with_byte_fallback() {
    let v = spm_vocab();
    let tok = Tokenizer::from_gguf_vocab(&v).unwrap();
    let id = |s: &str| tok.token_id(s).unwrap();
    assert!(tok.add_bos(), "SentencePiece vocabularies add BOS by default");
    assert_eq!(tok.bos(), Some(1));
    let ids = tok.encode("hello world", true).unwrap();
    assert_eq!(ids, [1, id("▁hello"), id("▁world")]);
    // "é" is not a piece: its two UTF-8 bytes fall back to byte tokens; "!" too.
    let ids = tok.encode("hello é!", false).unwrap();
    assert_eq!(ids, [id("▁hello"), id("▁"), id("<0xC3>"), id("<0xA9>"), id("<0x21>")]);
    assert_eq!(tok.decode(&ids).unwrap(), "hello é!");
    // The leading space added by add_space_prefix is removed again on decode.
    assert_eq!(tok.decode(&tok.encode("hello", false).unwrap()).unwrap(), "hello");
    assert_eq!(tok.decode(&tok.encode("hello", true).unwrap()).unwrap(), "<s> hello");
    // As in llama.cpp, a skipped BOS still uses up the one-space strip.
    assert_eq!(tok.decode_with(&tok.encode("hello", true).unwrap(), true).unwrap(), " hello");
    // A byte with no token and no fallback goes to <unk>.
    let ids = tok.encode("z", false).unwrap();
    assert_eq!(ids, [id("▁"), 0]);
}

#[test]
fn spm_add_bos_override() {
    let mut v = spm_vocab();
    v.add_bos = Some(false);
    v.add_space_prefix = Some(false);
    let tok = Tokenizer::from_gguf_vocab(&v).unwrap();
    assert!(!tok.add_bos());
    let ids = tok.encode("hello", true).unwrap();
    assert_eq!(ids, [tok.token_id("hello").unwrap()]);
}

fn bert_vocab() -> GgufVocab {
    let mut tokens: Vec<String> = (0..110).map(|i| format!("[unused{i}]")).collect();
    tokens[0] = "[PAD]".into();
    tokens[100] = "[UNK]".into();
    tokens[101] = "[CLS]".into();
    tokens[102] = "[SEP]".into();
    tokens[103] = "[MASK]".into();
    for w in ["▁hello", "▁world", "▁un", "aff", "able", "▁!", "▁,", "▁cafe", "▁日", "▁本"] {
        tokens.push(w.into());
    }
    let mut types = vec![1; tokens.len()];
    for i in [0, 100, 101, 102, 103] {
        types[i] = 3;
    }
    GgufVocab { model: "bert".into(), tokens, token_types: Some(types), ..Default::default() }
}

#[test]
fn wordpiece_greedy_longest_match() {
    let tok = Tokenizer::from_gguf_vocab(&bert_vocab()).unwrap();
    let id = |s: &str| tok.token_id(s).unwrap();
    let ids = tok.encode("Hello, WORLD! unaffable Café 日本 xyz", true).unwrap();
    assert_eq!(
        ids,
        [
            101,
            id("▁hello"),
            id("▁,"),
            id("▁world"),
            id("▁!"),
            id("▁un"),
            id("aff"),
            id("able"),
            id("▁cafe"),
            id("▁日"),
            id("▁本"),
            100,
            102
        ]
    );
}

#[test]
fn bad_vocabularies_are_errors() {
    let mut v = spm_vocab();
    v.model = "nonsense".into();
    assert!(matches!(Tokenizer::from_gguf_vocab(&v), Err(TokenizerError::UnknownModel(_))));
    let v = GgufVocab {
        model: "gpt2".into(),
        pre: Some("no-such-pre".into()),
        tokens: vec!["a".into()],
        merges: Some(vec![]),
        ..Default::default()
    };
    assert!(matches!(Tokenizer::from_gguf_vocab(&v), Err(TokenizerError::UnknownPreTokenizer(_))));
    let v = GgufVocab { model: "gpt2".into(), tokens: vec!["a".into()], ..Default::default() };
    assert!(matches!(Tokenizer::from_gguf_vocab(&v), Err(TokenizerError::Vocab(_))));
    let v = GgufVocab { model: "llama".into(), ..Default::default() };
    assert!(Tokenizer::from_gguf_vocab(&v).is_err());
    let v = GgufVocab { model: "llama".into(), tokens: vec!["a".into()], scores: Some(vec![]), ..Default::default() };
    assert!(Tokenizer::from_gguf_vocab(&v).is_err());
    assert!(GgufVocab::from_json("{not json").is_err());
}

#[test]
fn tiny_bpe_without_byte_tokens_does_not_panic() {
    // Merges mention strings that are not tokens; bytes without tokens are dropped like llama.cpp.
    let v = GgufVocab {
        model: "gpt2".into(),
        pre: Some("gpt-2".into()),
        tokens: vec!["a".into(), "b".into(), "ab".into(), "Ġ".into()],
        merges: Some(vec!["a b".into(), "x y".into(), "nospace".into(), " lead".into()]),
        ..Default::default()
    };
    let tok = Tokenizer::from_gguf_vocab(&v).unwrap();
    assert_eq!(tok.encode("ab a", false).unwrap(), [2, 3, 0]);
    assert_eq!(tok.encode("abc é", false).unwrap(), [2, 3]);
    assert_eq!(tok.encode(&"ab".repeat(100), false).unwrap(), vec![2; 100]);
}
