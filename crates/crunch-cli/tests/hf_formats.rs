//! `crunch export --format …` to the checkpoint formats GPU and CPU servers load, and back, on
//! SmolLM2: every folder decodes, by scripts/check_quant_export.py (numpy, written from the
//! formats' documentation and the owners' source, not from crunch's code), to exactly the values
//! crunch meant (`--reference`); a GPTQ folder converts back to a GGUF whose Q4_0 blocks hold the
//! same values (perplexity equal to the folder's, evaluated directly); bad settings and damaged
//! folders are refused naming the tensor and the key.

mod common;

use common::{fails, ok_json, s};
use crunch_testkit::Scratch;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// scripts/check_quant_export.py DIR REF: its JSON summary (it exits 1 on any mismatch).
fn check(dir: &Path, reference: &Path, sc: &Scratch) -> Value {
    let json = sc.join("check.json");
    let out = Command::new(crunch_testkit::python())
        .arg(crunch_testkit::repo_root().join("scripts/check_quant_export.py"))
        .args([s(dir), s(reference), "--json", s(&json)])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "check_quant_export.py {}:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
}

fn config(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

#[test]
fn every_format_decodes_to_the_values_meant() {
    let model = common::smollm2_f32();
    let sc = Scratch::new("hf-formats");
    // SmolLM2's rows of 576 are not whole groups of 128: groups of 64.
    let cases: &[(&str, &[&str], &str)] = &[
        ("nf4", &["--format", "nf4"], "bitsandbytes"),
        ("fp4", &["--format", "fp4", "--no-double-quant", "--group-size", "128"], "bitsandbytes"),
        ("bnb8", &["--format", "bnb-int8"], "bitsandbytes"),
        ("gptq-hqq", &["--format", "gptq", "--group-size", "64", "--method", "hqq"], "gptq"),
        ("gptq8", &["--format", "gptq", "--bits", "8", "--group-size", "64"], "gptq"),
        ("awq", &["--format", "awq", "--group-size", "64"], "awq"),
        ("int4", &["--format", "int4", "--group-size", "64"], "compressed-tensors"),
        ("int8-asym", &["--format", "int8", "--group-size", "32", "--asym"], "compressed-tensors"),
    ];
    for (name, args, method) in cases {
        let (dir, reference) = (sc.join(name), sc.join(&format!("{name}.ref.safetensors")));
        let mut a = vec!["export", s(&model), s(&dir), "--reference", s(&reference), "--json", "-q"];
        a.extend_from_slice(args);
        let r = ok_json(&a);
        let q = &r["quantized"];
        assert_eq!(q["tensors"].as_array().unwrap().len(), 30 * 7, "{name}: every linear weight of the blocks");
        let py = check(&dir, &reference, &sc);
        assert_eq!(py["exact"], true, "{name}: {py}");
        assert_eq!(py["tensors"], 30 * 7, "{name}");
        assert_eq!(config(&dir)["quantization_config"]["quant_method"], *method, "{name}");
        // The stored bits per weight are what the format costs: codes plus scales (and zeros).
        let bpw = q["bits_per_weight"].as_f64().unwrap();
        let want = match *name {
            "nf4" => 4.0 + 8.0 / 64.0 + 32.0 / 64.0 / 256.0,
            "fp4" => 4.0 + 32.0 / 128.0,
            "bnb8" => 8.0,
            "gptq-hqq" => 4.0 + (16.0 + 4.0) / 64.0,
            "gptq8" => 8.0 + (16.0 + 8.0) / 64.0,
            "awq" => 4.0 + (16.0 + 4.0) / 64.0,
            "int4" => 4.0 + 16.0 / 64.0,
            _ => 8.0 + (16.0 + 8.0) / 32.0,
        };
        assert!((bpw - want).abs() < 0.06, "{name}: {bpw} bits per weight, about {want} expected");
        // The quantization error is that of a 4- or 8-bit grid, nowhere near the weights' size.
        let worst =
            q["tensors"].as_array().unwrap().iter().map(|t| t["rel_rmse"].as_f64().unwrap()).fold(0.0, f64::max);
        assert!(worst > 0.0 && worst < if want > 7.0 { 0.02 } else { 0.2 }, "{name}: worst relative rmse {worst}");
    }
    // GPTQ's own codes (calibrated on text) are packed the same way and decode exactly too.
    let text = crunch_testkit::wikitext_dev();
    let (dir, reference) = (sc.join("gptq-cal"), sc.join("gptq-cal.ref.safetensors"));
    let r = ok_json(&[
        "export",
        s(&model),
        s(&dir),
        "--format",
        "gptq",
        "--group-size",
        "64",
        "--method",
        "gptq",
        "--text",
        s(&text),
        "--chunks",
        "2",
        "--ctx",
        "128",
        "--reference",
        s(&reference),
        "--json",
        "-q",
    ]);
    let tensors = r["quantized"]["tensors"].as_array().unwrap();
    assert!(tensors.iter().all(|t| t["calibrated"] == true), "every weight from GPTQ");
    assert_eq!(check(&dir, &reference, &sc)["exact"], true);
    let e = fails(&[
        "export",
        s(&model),
        s(&sc.join("n")),
        "--format",
        "nf4",
        "--method",
        "gptq",
        "--text",
        s(&text),
        "-q",
    ]);
    assert!(e.contains("--method") && e.contains("only rtn"), "{e}");

    let gq = sc.join("gptq8");
    let qc: Value = serde_json::from_slice(&std::fs::read(gq.join("quantize_config.json")).unwrap()).unwrap();
    assert_eq!(qc, config(&gq)["quantization_config"], "quantize_config.json repeats the config");
    assert_eq!(
        (qc["bits"].as_u64(), qc["group_size"].as_u64(), qc["desc_act"].as_bool()),
        (Some(8), Some(64), Some(false))
    );
}

#[test]
fn gptq_folder_round_trips_through_gguf() {
    let model = common::smollm2_f32();
    let sc = Scratch::new("hf-gptq-roundtrip");
    let dir = sc.join("gptq");
    ok_json(&["export", s(&model), s(&dir), "--format", "gptq", "--group-size", "64", "--json", "-q"]);
    // `--type auto` keeps the symmetric 4-bit groups as Q4_0 blocks: no value changes.
    let gguf = sc.join("gptq.gguf");
    let r = ok_json(&["convert", s(&dir), s(&gguf), "--json", "-q"]);
    let routes = r["result"]["quantized"].as_array().unwrap();
    assert_eq!(routes.len(), 30 * 7);
    assert!(routes.iter().all(|t| t["to"] == "Q4_0" && t["max_abs_error"] == 0.0), "{routes:?}");
    // The folder is evaluated directly, decoded as it is loaded, with the same result.
    let text = crunch_testkit::wikitext_dev();
    let ppl = |m: &Path| {
        let r = ok_json(&["eval", "perplexity", s(m), "-f", s(&text), "--ctx", "128", "--chunks", "3", "--json"]);
        r["result"]["ppl"].as_f64().or_else(|| r["ppl"].as_f64()).unwrap()
    };
    let (folder, file) = (ppl(&dir), ppl(&gguf));
    assert_eq!(folder, file, "perplexity of the folder and of its GGUF");
    assert!(folder > 5.0 && folder < 100.0, "{folder}");

    // Asymmetric groups (AWQ) go to Q4_1; the minimum rounded to f16 is the only change, reported.
    let awq = sc.join("awq");
    ok_json(&["export", s(&model), s(&awq), "--format", "awq", "--group-size", "64", "--json", "-q"]);
    let r = ok_json(&["convert", s(&awq), s(&sc.join("awq.gguf")), "--json", "-q"]);
    let routes = r["result"]["quantized"].as_array().unwrap();
    assert!(routes.iter().all(|t| t["to"] == "Q4_1"));
    let worst = routes.iter().map(|t| t["max_abs_error"].as_f64().unwrap()).fold(0.0, f64::max);
    assert!(worst > 0.0 && worst < 1e-2, "{worst}");
}

#[test]
fn bad_settings_and_damaged_folders_are_named() {
    let model = common::smollm2_f32();
    let sc = Scratch::new("hf-formats-bad");
    let out = sc.join("x");
    let e = fails(&["export", s(&model), s(&out), "--format", "gptq", "-q"]);
    assert!(e.contains("group size 128 does not divide") && e.contains("blk.0.attn_k.weight"), "{e}");
    assert!(!out.exists(), "nothing written");
    let e = fails(&["export", s(&model), s(&out), "--format", "awq", "--sym", "-q"]);
    assert!(e.contains("--sym") && e.contains("zero points"), "{e}");
    let e = fails(&["export", s(&model), s(&out), "--format", "nf4", "--method", "hqq", "-q"]);
    assert!(e.contains("--method"), "{e}");
    let e = fails(&["export", s(&model), s(&out), "--format", "int4", "--bits", "8", "-q"]);
    assert!(e.contains("--bits"), "{e}");
    let e = fails(&["export", s(&model), s(&out), "--format", "q4", "-q"]);
    assert!(e.contains("--format"), "{e}");

    // A config that contradicts the tensors, and a packed tensor of the wrong shape.
    let dir = sc.join("gptq");
    ok_json(&["export", s(&model), s(&dir), "--format", "gptq", "--group-size", "64", "--json", "-q"]);
    let cfg_path = dir.join("config.json");
    let good = std::fs::read_to_string(&cfg_path).unwrap();
    let mut cfg: Value = serde_json::from_str(&good).unwrap();
    cfg["quantization_config"]["group_size"] = 32.into();
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let e = fails(&["convert", s(&dir), s(&sc.join("a.gguf")), "-q"]);
    assert!(e.contains("quantization_config.group_size") && e.contains("model.layers."), "{e}");
    cfg["quantization_config"]["group_size"] = 64.into();
    cfg["quantization_config"]["bits"] = 8.into();
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let e = fails(&["convert", s(&dir), s(&sc.join("a.gguf")), "-q"]);
    assert!(e.contains("quantization_config.bits") && e.contains(".qweight"), "{e}");
    assert!(!sc.join("a.gguf").exists());
}
