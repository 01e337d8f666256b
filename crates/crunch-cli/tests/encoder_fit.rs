//! The size-budget machinery on a sentence encoder (all-MiniLM-L6-v2, converted by crunch from its
//! f32 safetensors): `fit` with the embedding-damage objective beats llama.cpp's Q4_0 preset at
//! its own size and meets a `--min-cosine` target; an importance matrix and GPTQ improve Q4_0 at
//! equal size; targets and methods that do not fit the kind of model are refused. Judged by
//! crunch's `eval embed` on held-out lines (docs/ENCODERS.md has llama.cpp's judgement).

mod common;

use common::{crunch, fails, ok_json, s, stderr};
use std::path::{Path, PathBuf};

/// MiniLM as an F16 GGUF, and the held-out half of the WikiText text (fit calibrates on the first).
fn setup(dir: &crunch_testkit::Scratch) -> (PathBuf, PathBuf, PathBuf) {
    let f32_path = dir.join("minilm-f32.gguf");
    let f16_path = dir.join("minilm-f16.gguf");
    let folder = crunch_testkit::minilm_dir();
    for (p, t) in [(&f32_path, "f32"), (&f16_path, "f16")] {
        let o = crunch(&["convert", s(&folder), s(p), "--type", t, "-q"]);
        assert!(o.status.success(), "convert: {}", stderr(&o));
    }
    let text = std::fs::read_to_string(crunch_testkit::wikitext_dev()).unwrap();
    let (_, held) = crunch::fit::session::split_text(&text);
    let held_path = dir.join("heldout.txt");
    std::fs::write(&held_path, held).unwrap();
    (f32_path, f16_path, held_path)
}

/// Mean and 1st-percentile cosine of `model`'s embeddings against `base`'s on 200 held-out lines.
fn cosine(base: &Path, model: &Path, held: &Path) -> (f64, f64) {
    let r = ok_json(&["eval", "embed", s(base), s(model), "--text", s(held), "--max-lines", "200", "--json"]);
    (r["cosine"]["mean"].as_f64().unwrap(), r["cosine"]["p1"].as_f64().unwrap())
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn fit_on_an_encoder_beats_the_preset_at_its_size_and_meets_a_cosine_target() {
    let dir = crunch_testkit::Scratch::new("encfit");
    let (f32_path, f16_path, held) = setup(&dir);
    let text = crunch_testkit::wikitext_dev();
    let cache = dir.join("fitcache");
    let q40 = dir.join("q4_0.gguf");
    let o = crunch(&["quantize", s(&f16_path), s(&q40), "Q4_0", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let budget = size(&q40).to_string();

    let fit = dir.join("fit.gguf");
    let r = ok_json(&[
        "fit",
        s(&f16_path),
        s(&fit),
        "--max-size",
        &budget,
        "--text",
        s(&text),
        "--cache-dir",
        s(&cache),
        "--json",
    ]);
    assert_eq!(r["fit"]["objective"], "embed_damage", "{r}");
    assert!(size(&fit) <= size(&q40), "fit {} bytes, budget {budget}", size(&fit));
    let measured = r["measured"]["cosine"]["mean"].as_f64().expect("an encoder is measured by cosine");
    let predicted = 1.0 - r["fit"]["predicted_kld"].as_f64().unwrap();
    assert!((measured - predicted).abs() < 0.01, "predicted cosine {predicted}, measured {measured}");
    assert!(r["measured"].get("kld").is_some_and(|k| k == 0.0), "no KLD for an encoder: {r}");

    let (p_mean, p_p1) = cosine(&f32_path, &q40, &held);
    let (f_mean, f_p1) = cosine(&f32_path, &fit, &held);
    eprintln!("MiniLM at {budget} bytes: Q4_0 preset mean {p_mean:.6} p1 {p_p1:.6}; fit mean {f_mean:.6} p1 {f_p1:.6}");
    assert!(f_mean > p_mean && f_p1 > p_p1, "fit must beat the preset at its size");

    // The smallest model meeting a cosine target (cached profile: no second measurement).
    let small = dir.join("cos.gguf");
    let r = ok_json(&[
        "fit",
        s(&f16_path),
        s(&small),
        "--min-cosine",
        "0.995",
        "--text",
        s(&text),
        "--cache-dir",
        s(&cache),
        "--json",
    ]);
    assert_eq!(r["profile"]["cached"], true);
    let m = r["measured"]["cosine"]["mean"].as_f64().unwrap();
    assert!(m >= 0.995, "measured mean cosine {m} below the target: {r}");
    assert!(size(&small) < size(&f16_path) / 2, "{} bytes", size(&small));

    // At Q8_0's size, where rounding alone has almost nothing left to gain, fit writes its plan
    // with GPTQ and still beats the preset.
    let q80 = dir.join("q8_0.gguf");
    let o = crunch(&["quantize", s(&f16_path), s(&q80), "Q8_0", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fit8 = dir.join("fit8.gguf");
    let budget8 = size(&q80).to_string();
    let r = ok_json(&[
        "fit",
        s(&f16_path),
        s(&fit8),
        "--max-size",
        &budget8,
        "--method",
        "gptq",
        "--calib-ctx",
        "512",
        "--calib-chunks",
        "8",
        "--text",
        s(&text),
        "--cache-dir",
        s(&cache),
        "--json",
    ]);
    assert!(size(&fit8) <= size(&q80), "{r}");
    let (p8, p8_p1) = cosine(&f32_path, &q80, &held);
    let (f8, f8_p1) = cosine(&f32_path, &fit8, &held);
    eprintln!(
        "MiniLM at {budget8} bytes: Q8_0 preset mean {p8:.6} p1 {p8_p1:.6}; fit (GPTQ) mean {f8:.6} p1 {f8_p1:.6}"
    );
    assert!(f8 > p8 && f8_p1 > p8_p1, "fit with GPTQ must beat Q8_0 at its size");

    // A search over an encoder: recipes judged by cosine.
    let out = dir.join("search");
    let r = ok_json(&[
        "search",
        s(&f16_path),
        "--text",
        s(&text),
        "--grid",
        "preset=Q4_0,Q8_0",
        "--grid",
        "min-cosine=0.999",
        "--cache-dir",
        s(&cache),
        "--out-dir",
        s(&out),
        "--json",
    ]);
    let cands = r["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 3, "{r}");
    for c in cands {
        let cos = c["measured"]["cosine"]["mean"].as_f64().unwrap_or_else(|| panic!("{c}"));
        assert!(cos > 0.9 && cos < 1.0, "{c}");
    }
}

#[test]
fn importance_matrix_and_gptq_improve_an_encoder_at_equal_size() {
    let dir = crunch_testkit::Scratch::new("encgptq");
    let (f32_path, f16_path, held) = setup(&dir);
    let text = std::fs::read_to_string(crunch_testkit::wikitext_dev()).unwrap();
    let (calib, _) = crunch::fit::session::split_text(&text);
    let calib_path = dir.join("calib.txt");
    std::fs::write(&calib_path, calib).unwrap();

    let imat = dir.join("minilm.imatrix");
    let r = ok_json(&["imatrix", s(&f16_path), "--text", s(&calib_path), "-o", s(&imat), "--chunks", "300", "--json"]);
    assert_eq!(r["chunks_done"], 300, "{r}");
    assert_eq!(r["entries"], 36, "6 blocks x (Q, K, V, output, up, down): {r}");

    let plain = dir.join("plain.gguf");
    let with_imatrix = dir.join("imatrix.gguf");
    let gptq = dir.join("gptq.gguf");
    let awq = dir.join("awq.gguf");
    for (out, extra) in [
        (&plain, vec![]),
        (&with_imatrix, vec!["--imatrix", s(&imat)]),
        (&gptq, vec!["--method", "gptq", "--text", s(&calib_path), "--chunks", "300"]),
        (&awq, vec!["--method", "awq", "--text", s(&calib_path), "--chunks", "300"]),
    ] {
        let mut args = vec!["quantize", s(&f16_path), s(out), "Q4_0", "-q"];
        args.extend(extra);
        let o = crunch(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
    // The same tensor types: sizes differ only by the header's imatrix keys.
    assert!(size(&with_imatrix).abs_diff(size(&plain)) < 4096 && size(&gptq) == size(&plain));
    let (c_plain, _) = cosine(&f32_path, &plain, &held);
    let (c_imat, _) = cosine(&f32_path, &with_imatrix, &held);
    let (c_gptq, _) = cosine(&f32_path, &gptq, &held);
    let (c_awq, _) = cosine(&f32_path, &awq, &held);
    eprintln!("MiniLM Q4_0 mean cosine: plain {c_plain:.6}, imatrix {c_imat:.6}, GPTQ {c_gptq:.6}, AWQ {c_awq:.6}");
    // AWQ scales only the attention outputs of a post-LayerNorm block: it must not make things worse.
    assert!(c_awq >= c_plain - 1e-4, "AWQ {c_awq} vs plain {c_plain}");
    assert!(c_imat > c_plain, "imatrix {c_imat} vs plain {c_plain}");
    assert!(c_gptq > c_plain, "GPTQ {c_gptq} vs plain {c_plain}");
}

#[test]
fn targets_and_methods_that_do_not_fit_the_model_are_refused() {
    let dir = crunch_testkit::Scratch::new("encerr");
    let f16_path = dir.join("minilm-f16.gguf");
    let o = crunch(&["convert", s(&crunch_testkit::minilm_dir()), s(&f16_path), "--type", "f16", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = crunch_testkit::wikitext_dev();
    let out = dir.join("out.gguf");

    let e = fails(&["fit", s(&f16_path), s(&out), "--max-kld", "0.01", "--text", s(&text)]);
    assert!(e.contains("--max-kld") && e.contains("sentence encoder"), "{e}");
    let e = fails(&["fit", s(&f16_path), s(&out), "--max-ram", "1GiB", "--text", s(&text)]);
    assert!(e.contains("--max-ram") && e.contains("sentence encoder"), "{e}");
    let e = fails(&["fit", s(&f16_path), s(&out), "--max-size", "10MB", "--prune-ffn", "0.5", "--text", s(&text)]);
    assert!(e.contains("--prune") && e.contains("sentence encoder"), "{e}");
    let e = fails(&["fit", s(&f16_path), s(&out), "--min-cosine", "1.5", "--text", s(&text)]);
    assert!(e.contains("--min-cosine"), "{e}");
    let smol = common::smollm2_f32();
    let e = fails(&["fit", s(&smol), s(&out), "--min-cosine", "0.99", "--text", s(&text)]);
    assert!(e.contains("--min-cosine") && e.contains("causal language model"), "{e}");
    let e = fails(&["search", s(&f16_path), "--text", s(&text), "--grid", "max-kld=0.01"]);
    assert!(e.contains("max_kld") && e.contains("sentence encoder"), "{e}");
    let e = fails(&["prune", s(&f16_path), s(&out), "--method", "wanda", "--sparsity", "0.5", "--text", s(&text)]);
    assert!(e.contains("causal LMs") && e.contains("sentence encoder"), "{e}");
    let e = fails(&["imatrix", s(&f16_path), "--text", "random:1000", "-o", s(&dir.join("x.imatrix"))]);
    assert!(e.contains("sentence encoder") && e.contains("lines"), "{e}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn hqq_scale_and_minimum_beat_plain_q4_1_at_equal_size() {
    let dir = crunch_testkit::Scratch::new("enchqq");
    let (f32_path, _, held) = setup(&dir);
    let (rtn, hqq) = (dir.join("rtn.gguf"), dir.join("hqq.gguf"));
    for (out, m) in [(&rtn, "rtn"), (&hqq, "hqq")] {
        let o = crunch(&["quantize", s(&f32_path), s(out), "Q4_1", "--method", m, "-q"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(size(&rtn), size(&hqq));
    let (c_rtn, p_rtn) = cosine(&f32_path, &rtn, &held);
    let (c_hqq, p_hqq) = cosine(&f32_path, &hqq, &held);
    eprintln!("MiniLM Q4_1 mean cosine: plain {c_rtn:.6} (p1 {p_rtn:.6}), HQQ {c_hqq:.6} (p1 {p_hqq:.6})");
    assert!(c_hqq > c_rtn && p_hqq > p_rtn);
    // HQQ serves the types with a scale and a minimum only.
    let e = fails(&["quantize", s(&f32_path), s(&dir.join("x.gguf")), "Q4_0", "--method", "hqq"]);
    assert!(e.contains("--method") && e.contains("Q4_1"), "{e}");
}
