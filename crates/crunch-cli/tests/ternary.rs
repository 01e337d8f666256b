//! `crunch ternary` and `crunch stage1` through the binary on SmolLM2.

mod common;

use common::{fails, listing, ok_json, s, smollm2_f32};
use crunch_core::gguf::GgufFile;
use crunch_core::GgmlType;

fn dequantized(f: &GgufFile, name: &str) -> Vec<f32> {
    let t = f.tensor(name).unwrap();
    let mut out = vec![0f32; t.n_elements() as usize];
    (crunch_quant::kernels(t.ty).unwrap().dequantize)(f.tensor_data(t), &mut out);
    out
}

#[test]
fn post_training_ternary_models_hold_the_absmean_ternarization_in_both_types() {
    let dir = crunch_testkit::Scratch::new("ternary-pt");
    let model = smollm2_f32();
    let (tq2, tq1) = (dir.join("m-tq2.gguf"), dir.join("m-tq1.gguf"));
    let r = ok_json(&["ternary", s(&model), s(&tq2), "--twin", s(&tq1), "--json"]);
    assert_eq!(r["result"]["steps"], 0);
    assert_eq!(r["result"]["ternary_tensors"], 30, "SmolLM2's ffn_down rows (1536) are whole 256-blocks");
    let src = GgufFile::open(&model).unwrap();
    for (path, ty) in [(&tq2, GgmlType::TQ2_0), (&tq1, GgmlType::TQ1_0)] {
        let f = GgufFile::open(path).unwrap();
        for (name, want) in [("blk.2.ffn_down.weight", ty), ("blk.2.attn_q.weight", GgmlType::Q4_0)] {
            assert_eq!(f.tensor(name).unwrap().ty, want, "{name}");
            let w = dequantized(&src, name);
            let row = src.tensor(name).unwrap().row_len() as usize;
            let mut t = vec![0f32; w.len()];
            crunch_quant::ternary::ternarize_absmean_rows(&w, row, &mut t);
            assert_eq!(dequantized(&f, name), t, "{name} in {ty}");
        }
        // Everything else is copied.
        assert_eq!(
            f.tensor_data(f.tensor("token_embd.weight").unwrap()),
            src.tensor_data(src.tensor("token_embd.weight").unwrap())
        );
    }
}

#[test]
fn ternary_fine_tuning_takes_steps_and_writes_both_types() {
    let dir = crunch_testkit::Scratch::new("ternary-ft");
    let model = smollm2_f32();
    let text = crunch_testkit::wikitext_dev();
    let (tq2, tq1, svg) = (dir.join("f-tq2.gguf"), dir.join("f-tq1.gguf"), dir.join("c.svg"));
    let r = ok_json(&[
        "ternary",
        s(&model),
        s(&tq2),
        "--twin",
        s(&tq1),
        "--text",
        s(&text),
        "--steps",
        "2",
        "--ctx",
        "32",
        "--chunks",
        "2",
        "--holdout",
        "1",
        "--eval-every",
        "1",
        "--blend-warmup",
        "1",
        "--plot",
        s(&svg),
        "--json",
    ]);
    let res = &r["result"];
    assert_eq!(res["steps"], 2);
    assert_eq!(res["curve"].as_array().unwrap().len(), 2);
    assert_eq!(res["heldout"].as_array().unwrap().len(), 3, "before, after each update");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    // Both files decode to the same ternary weights, which training moved off the original's.
    let (f2, f1) = (GgufFile::open(&tq2).unwrap(), GgufFile::open(&tq1).unwrap());
    let name = "blk.0.ffn_down.weight";
    assert_eq!(dequantized(&f2, name), dequantized(&f1, name));
    let src = GgufFile::open(&model).unwrap();
    let w = dequantized(&src, name);
    let mut t = vec![0f32; w.len()];
    crunch_quant::ternary::ternarize_absmean_rows(&w, 1536, &mut t);
    assert_ne!(dequantized(&f2, name), t);
}

#[test]
fn ternary_and_stage1_refuse_bad_requests_before_any_work() {
    let dir = crunch_testkit::Scratch::new("stage1-bad");
    let model = smollm2_f32();
    let text = crunch_testkit::wikitext_dev();
    let e = fails(&["ternary", s(&model), s(&dir.join("t.gguf")), "--type", "Q4_0"]);
    assert!(e.contains("--type") && e.contains("TQ1_0 or TQ2_0"), "{e}");
    let e = fails(&["stage1", s(&model), s(&dir.join("o.seedlm")), "--text", s(&text), "--target-ratio", "100"]);
    assert!(e.contains("--target-ratio") && e.contains("out of reach") && e.contains("3bit"), "{e}");
    let e = fails(&["stage1", s(&model), s(&dir.join("o.gguf")), "--text", s(&text)]);
    assert!(e.contains("*.seedlm"), "{e}");
    let e = fails(&["stage1", s(&model), s(&dir.join("o.seedlm")), "--text", s(&text), "--max-accuracy-drop", "2"]);
    assert!(e.contains("--max-accuracy-drop"), "{e}");
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}
