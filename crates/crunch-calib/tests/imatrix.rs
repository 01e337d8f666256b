//! Importance matrices: both llama.cpp file formats round-trip, merging adds, bad files and
//! mismatched models are named errors, and collecting on SmolLM2 sees every linear layer with the
//! structure the Llama graph implies (q/k/v and gate/up share their inputs).

use crunch_calib::imatrix::{self, CollectOptions, Collector, Format};
use crunch_calib::text::{self, ChunkOptions, TextSource};
use crunch_calib::{CalibError, Imatrix, ImatrixEntry};
use crunch_core::gguf::{GgufFile, GgufWriter, Metadata, TensorSpec, Value};
use crunch_core::GgmlType;
use crunch_testkit::{realistic_importance, Scratch};

fn sample() -> Imatrix {
    let mut m = Imatrix { datasets: vec!["a.txt".into()], chunk_size: 512, ..Default::default() };
    for (i, name) in ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.attn_q.weight"].iter().enumerate() {
        let n = 64 * (i + 1);
        let sums: Vec<f32> = realistic_importance(n, i as u64).iter().map(|v| v * 1024.0).collect();
        m.entries.insert(name.to_string(), ImatrixEntry { sums, counts: vec![1024] });
    }
    m.update_chunk_count();
    m
}

#[test]
fn gguf_format_round_trips() {
    let s = Scratch::new("imatrix-gguf");
    let m = sample();
    assert_eq!(m.chunk_count, 2);
    let p = s.join("m.imatrix.gguf");
    m.save(&p, Format::Gguf).unwrap();
    assert!(s.join("m.imatrix.gguf.sha256").exists());
    let back = Imatrix::load(&p, 512).unwrap();
    assert_eq!(back, m);
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.metadata().get_str("general.type"), Some("imatrix"));
    let t = f.tensor("blk.0.ffn_down.weight.in_sum2").unwrap();
    assert_eq!((t.ty, t.dims.as_slice()), (GgmlType::F32, &[128u64][..]));
}

#[test]
fn legacy_format_keeps_the_means() {
    let s = Scratch::new("imatrix-dat");
    let m = sample();
    let p = s.join("m.dat");
    m.save(&p, Format::from_path(&p)).unwrap();
    let back = Imatrix::load(&p, 512).unwrap();
    assert_eq!(back.datasets, m.datasets);
    assert_eq!(back.chunk_count, 2);
    for (name, e) in &m.entries {
        let b = &back.entries[name];
        // ncall = ceil(1024 / 512) = 2 chunks, i.e. 1024 tokens again.
        assert_eq!(b.counts, vec![1024]);
        for (x, y) in e.importance().iter().zip(b.importance()) {
            assert!((x - y).abs() <= 1e-6 * x.abs().max(1e-6), "{name}: {x} vs {y}");
        }
    }
}

#[test]
fn merge_adds_and_rejects_other_shapes() {
    let mut a = sample();
    let b = sample();
    a.merge(&b).unwrap();
    let e = &a.entries["blk.0.attn_q.weight"];
    assert_eq!(e.counts, vec![2048]);
    assert_eq!(a.chunk_count, 4);
    assert_eq!(e.importance(), b.entries["blk.0.attn_q.weight"].importance());
    let mut c = Imatrix::default();
    c.entries.insert("blk.0.attn_q.weight".into(), ImatrixEntry { sums: vec![1.0; 10], counts: vec![3] });
    let err = a.merge(&c).unwrap_err().to_string();
    assert!(err.contains("blk.0.attn_q.weight"), "{err}");
}

#[test]
fn bad_files_are_named_errors() {
    let s = Scratch::new("imatrix-bad");
    let junk = s.join("junk.dat");
    std::fs::write(&junk, b"\x05\x00\x00\x00nonsense").unwrap();
    let err = Imatrix::load(&junk, 512).unwrap_err();
    assert!(matches!(err, CalibError::BadImatrix { .. }) && err.to_string().contains("junk.dat"), "{err}");
    // A model file is GGUF but not an imatrix.
    let err = Imatrix::load(&crunch_testkit::smollm2_gguf(), 512).unwrap_err().to_string();
    assert!(err.contains("missing imatrix metadata"), "{err}");
    // Truncated legacy file.
    let p = s.join("t.dat");
    sample().save(&p, Format::Dat).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = Imatrix::load(&p, 512).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn another_models_imatrix_is_rejected() {
    let m = sample();
    let model = vec![("blk.0.attn_q.weight".to_string(), 64), ("blk.0.ffn_down.weight".to_string(), 999)];
    let err = m.check_against(&model).unwrap_err().to_string();
    assert!(err.contains("blk.0.ffn_down.weight has 128 columns in the imatrix, 999 in the model"), "{err}");
    assert!(err.contains("blk.1.attn_q.weight is not a tensor of the model"), "{err}");
}

#[test]
fn text_shorter_than_one_context_is_an_error() {
    let err = text::chunk(
        &[1, 2, 3, 4, 5],
        Some(1),
        "tiny.txt",
        ChunkOptions { n_ctx: 512, n_chunks: None, skip: 0, shuffle_seed: None },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tiny.txt has 5 tokens, fewer than one context of 512 tokens"), "{err}");
}

#[test]
fn model_without_linear_layers_is_an_error() {
    let s = Scratch::new("no-linear");
    let p = s.join("embd-only.gguf");
    let mut md = Metadata::default();
    md.set("general.architecture", Value::string("llama"));
    let specs = [TensorSpec { name: "token_embd.weight".into(), ty: GgmlType::F32, dims: vec![8, 4] }];
    let mut w = GgufWriter::create(&p, md, &specs).unwrap();
    w.write_tensor("token_embd.weight", &[0u8; 128]).unwrap();
    w.finish().unwrap();
    let f = GgufFile::open(&p).unwrap();
    let err = crunch_calib::calibration_targets(&f, true).unwrap_err().to_string();
    assert!(err.contains("embd-only.gguf has no linear layers to calibrate"), "{err}");
}

#[test]
fn collects_every_linear_layer_of_smollm2() {
    let model = crunch_model::LlamaModel::open(crunch_testkit::smollm2_gguf()).unwrap();
    let tok = crunch_model::tokenizer::Tokenizer::from_gguf(model.file()).unwrap();
    let src = TextSource::File(crunch_testkit::wikitext_dev());
    let o = ChunkOptions { n_ctx: 32, n_chunks: Some(2), skip: 0, shuffle_seed: None };
    let chunks = text::load_chunks(&src, &tok, o).unwrap();
    assert_eq!(chunks.chunks.len(), 2);
    let all = text::tokenize(&src, &tok).unwrap();
    // llama-imatrix puts BOS first in every chunk when the vocabulary adds one (SmolLM2's does not).
    let first = if tok.add_bos() { tok.bos().unwrap() } else { all[32] };
    assert_eq!(chunks.chunks[1][0], first);
    assert_eq!(chunks.chunks[1][1..], all[33..64]);
    let mut c = Collector::new(CollectOptions::default());
    let mut seen = 0;
    imatrix::collect(&model, &chunks, &mut c, |i, _| {
        seen = i + 1;
        Ok(true)
    })
    .unwrap();
    assert_eq!(seen, 2);
    let m = c.to_imatrix(vec![chunks.dataset.clone()], 32);
    assert_eq!(m.entries.len(), 7 * model.config.n_layer);
    assert_eq!(m.chunk_count, 2);
    for (name, e) in &m.entries {
        assert_eq!(e.counts, vec![64], "{name}");
        assert!(e.sums.iter().all(|v| v.is_finite() && *v >= 0.0), "{name}");
    }
    for l in 0..model.config.n_layer {
        let g = |s: &str| &m.entries[&format!("blk.{l}.{s}.weight")].sums;
        assert_eq!(g("attn_q"), g("attn_k"));
        assert_eq!(g("attn_q"), g("attn_v"));
        assert_eq!(g("ffn_gate"), g("ffn_up"));
    }
    let stats = imatrix::statistics(&m);
    assert_eq!(stats.len(), m.entries.len());
    assert!(stats.iter().filter(|s| s.layer.unwrap() > 0).all(|s| s.cossim.is_some()));
}
