//! `crunch lowrank` and `crunch merge` on the real SmolLM2: the whitened correction of a Q2_K
//! model lowers its KL-divergence from the base, a byte budget is respected, merging the adapter
//! equals applying it at run time, and bad requests are errors naming the tensor, key or option.
//!
//! SmolLM2's F32 "base" is its shipped Q4_1 dequantized (no original-precision checkpoint is
//! available here); Q2_K is far below that grid, so the correction has real error to remove.

mod common;

use common::{fails, listing, ok_json, s, smollm2_f32, smollm2_q2k};
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;
use crunch_model::lora::{adapter_metadata, write_adapter, LoraAdapter, LoraTensor, KEY_ALPHA};
use std::path::Path;

const TENSORS: &str = r"^blk\.[0-3]\.";

fn lowrank(out: &Path, extra: &[&str]) -> serde_json::Value {
    let text = crunch_testkit::wikitext_dev();
    let base = smollm2_f32();
    let mut args = vec![
        "lowrank",
        s(&base),
        s(smollm2_q2k()),
        "-o",
        s(out),
        "--text",
        s(&text),
        "--ctx",
        "128",
        "--chunks",
        "4",
        "--skip-chunks",
        "40",
        "--tensors",
        TENSORS,
        "--json",
    ];
    args.extend_from_slice(extra);
    ok_json(&args)
}

/// Mean KLD of Q2_K (with `lora`) from the F32 base on 4 chunks of 128 (held out: calibration
/// skipped the first 40 chunks); `exact` multiplies in f32.
fn kld(base: &Path, quant: &Path, lora: Option<&Path>, exact: bool) -> f64 {
    let text = crunch_testkit::wikitext_dev();
    let mut args =
        vec!["eval", "compare", s(base), s(quant), "--text", s(&text), "--ctx", "128", "--chunks", "4", "--json"];
    if let Some(l) = lora {
        args.extend_from_slice(&["--lora", s(l)]);
    }
    if exact {
        args.push("--exact");
    }
    ok_json(&args)["kld"]["mean"].as_f64().unwrap()
}

#[test]
fn correction_lowers_kld_and_merge_equals_run_time() {
    let dir = crunch_testkit::Scratch::new("lowrank-fixed");
    let adapter = dir.join("r16.gguf");
    let r = lowrank(&adapter, &["--rank", "16"]);
    let res = &r["result"];
    let tensors = res["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 4 * 7, "every linear weight of blocks 0-3");
    assert!(res["whitened"].as_bool().unwrap());
    for t in tensors {
        assert_eq!(t["rank"], 16);
        let (b, a) = (t["error_before"].as_f64().unwrap(), t["error_after"].as_f64().unwrap());
        assert!(a < b, "{t}");
    }
    // The file is an adapter llama.cpp's loader accepts: type, alpha, pairs and shapes.
    let f = GgufFile::open(&adapter).unwrap();
    assert_eq!(f.metadata().get_str("general.type"), Some("adapter"));
    assert_eq!(f.metadata().get_str("adapter.type"), Some("lora"));
    assert_eq!(f.metadata().get_str("general.architecture"), Some("llama"));
    let ad = LoraAdapter::open(&adapter).unwrap();
    assert_eq!(ad.alpha, 16.0);
    let k = ad.pair("blk.2.attn_k.weight").unwrap();
    assert_eq!((k.a.dims.clone(), k.b.dims.clone(), k.a.ty), (vec![576, 16], vec![16, 192], GgmlType::F16));
    assert_eq!(std::fs::metadata(&adapter).unwrap().len(), res["file_bytes"].as_u64().unwrap());

    let base = smollm2_f32();
    let q = smollm2_q2k();
    let plain = kld(&base, q, None, false);
    let corrected = kld(&base, q, Some(&adapter), false);
    assert!(corrected < plain, "KLD with the correction {corrected} vs without {plain}");

    // Merged into the Q2_K model (adapted tensors become F32), the adapter gives the model it
    // gives at run time: KLD of one from the other, both multiplied in f32.
    let merged = dir.join("merged.gguf");
    let m = ok_json(&["merge", s(q), s(&adapter), "-o", s(&merged), "--json"]);
    assert_eq!(m["result"]["merged"].as_array().unwrap().len(), 28);
    let mf = GgufFile::open(&merged).unwrap();
    assert_eq!(mf.tensor("blk.1.ffn_up.weight").unwrap().ty, GgmlType::F32);
    let qf = GgufFile::open(q).unwrap();
    assert_eq!(mf.tensor("blk.5.ffn_up.weight").unwrap().ty, qf.tensor("blk.5.ffn_up.weight").unwrap().ty);
    let d = kld(&merged, q, Some(&adapter), true);
    assert!(d < 1e-4, "merged vs run-time adapter: KLD {d}");
    // Merging and quantizing in one pass writes the preset's types.
    let mq = dir.join("merged-q8.gguf");
    ok_json(&["merge", s(q), &format!("{}:0.5", s(&adapter)), "-o", s(&mq), "--type", "Q8_0", "--json"]);
    assert_eq!(GgufFile::open(&mq).unwrap().tensor("blk.1.ffn_up.weight").unwrap().ty, GgmlType::Q8_0);
}

#[test]
fn a_budget_spreads_ranks_within_it() {
    let dir = crunch_testkit::Scratch::new("lowrank-budget");
    let adapter = dir.join("budget.gguf");
    let budget = 200_000u64;
    let r = lowrank(&adapter, &["--budget", "200000", "--max-rank", "64"]);
    let res = &r["result"];
    let data = res["data_bytes"].as_u64().unwrap();
    assert!(data <= budget && data > budget * 9 / 10, "{data} bytes of data for a budget of {budget}");
    let ranks: Vec<u64> = res["tensors"].as_array().unwrap().iter().map(|t| t["rank"].as_u64().unwrap()).collect();
    assert!(ranks.iter().max() != ranks.iter().min(), "a budget gives tensors different ranks: {ranks:?}");
    // Every tensor of another rank is scaled to apply at 1 with the file's one alpha.
    let ad = LoraAdapter::open(&adapter).unwrap();
    assert_eq!(ad.alpha as u64, {
        let mut counts = std::collections::BTreeMap::new();
        for r in ranks.iter().filter(|&&r| r > 0) {
            *counts.entry(*r).or_insert(0) += 1;
        }
        *counts.iter().max_by_key(|(r, n)| (**n, **r)).unwrap().0
    });
    let base = smollm2_f32();
    let q = smollm2_q2k();
    assert!(kld(&base, q, Some(&adapter), false) < kld(&base, q, None, false));
}

#[test]
fn bad_requests_name_the_tensor_key_or_option() {
    let dir = crunch_testkit::Scratch::new("lowrank-bad");
    let base = smollm2_f32();
    let q = smollm2_q2k();
    let out = dir.join("a.gguf");
    // rank larger than a targeted matrix: attn_k is [576, 192]
    let e = fails(&["lowrank", s(&base), s(q), "-o", s(&out), "--rank", "200", "--tensors", "attn_k"]);
    assert!(e.contains("--rank") && e.contains("blk.0.attn_k.weight") && e.contains("192"), "{e}");
    let e = fails(&["lowrank", s(&base), s(q), "-o", s(&out), "--budget", "100", "--tensors", "attn_k"]);
    assert!(e.contains("--budget") && e.contains("too small"), "{e}");
    let e = fails(&["lowrank", s(&base), s(q), "-o", s(&out), "--rank", "8", "--tensors", "nothing_matches"]);
    assert!(e.contains("--tensors"), "{e}");
    // a quantized file made from another model: the adapter itself is no model
    let other = dir.join("other.gguf");
    let t = LoraTensor {
        base: "blk.0.attn_q.weight".into(),
        rank: 2,
        n_in: 64,
        n_out: 64,
        a: vec![0.0; 128],
        b: vec![0.0; 128],
    };
    write_adapter(&other, adapter_metadata("llama", 2.0), GgmlType::F32, std::slice::from_ref(&t)).unwrap();
    let e = fails(&["lowrank", s(&base), s(&other), "-o", s(&out), "--rank", "8"]);
    assert!(e.contains("blk.0.attn_k.weight") || e.contains("blk.0.attn_q.weight"), "{e}");
    assert!(!out.exists());

    // merge: an adapter of another shape, of another architecture, without alpha
    let merged = dir.join("m.gguf");
    let e = fails(&["merge", s(q), s(&other), "-o", s(&merged)]);
    assert!(e.contains("blk.0.attn_q.weight") && e.contains("[576, 576]"), "{e}");
    let shaped = LoraTensor { n_in: 576, n_out: 576, a: vec![0.0; 2 * 576], b: vec![0.0; 2 * 576], ..t };
    let qwen = dir.join("qwen.gguf");
    write_adapter(&qwen, adapter_metadata("qwen2", 2.0), GgmlType::F32, std::slice::from_ref(&shaped)).unwrap();
    let e = fails(&["merge", s(q), s(&qwen), "-o", s(&merged)]);
    assert!(e.contains("general.architecture") && e.contains("qwen2"), "{e}");
    let mut meta = adapter_metadata("llama", 2.0);
    meta.remove(KEY_ALPHA);
    let no_alpha = dir.join("noalpha.gguf");
    write_adapter(&no_alpha, meta, GgmlType::F32, &[shaped]).unwrap();
    let e = fails(&["merge", s(q), s(&no_alpha), "-o", s(&merged)]);
    assert!(e.contains(KEY_ALPHA), "{e}");
    assert!(!merged.exists());
    assert!(!listing(dir.path()).iter().any(|n| n.contains("crunch-tmp")), "{:?}", listing(dir.path()));
}
