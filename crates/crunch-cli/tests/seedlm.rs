//! `crunch seedlm encode / decode` end to end on SmolLM2 (one weight encoded, to keep CI fast; the
//! whole model is measured in docs/SEEDLM.md), and what crunch's engine makes of a container.

mod common;

use common::{crunch, fails, listing, ok_json, s, smollm2_f32, stderr};
use crunch_core::gguf::GgufFile;

const TENSOR: &str = "blk.0.attn_k.weight";

#[test]
fn a_seedlm_container_is_run_by_crunch_exactly_as_its_f32_decoding_and_decodes_to_any_type() {
    let dir = crunch_testkit::Scratch::new("seedlm-cli");
    let model = smollm2_f32();
    let text = dir.join("t.txt");
    let wiki = std::fs::read_to_string(crunch_testkit::wikitext_dev()).unwrap();
    std::fs::write(&text, &wiki[..20_000]).unwrap();
    let sl = dir.join("m.seedlm");
    let r = ok_json(&["seedlm", "encode", s(&model), s(&sl), "--tensors", &format!("^{TENSOR}$"), "--json"]);
    let res = &r["result"];
    assert_eq!(res["tensors_encoded"], 1);
    assert_eq!(res["config"], "4bit");
    assert!(res["skipped_share"].as_f64().unwrap() > 0.99, "{res}");

    // The container: the weight stored as seeds, llama.cpp's name for it gone.
    let f = GgufFile::open(&sl).unwrap();
    assert!(f.tensor(TENSOR).is_none());
    let stored = f.tensor(&format!("{TENSOR}.seedlm")).unwrap();
    assert_eq!(stored.n_bytes(), 576 * 192 / 8 * 4, "32 bits per block of 8");
    assert!(f.metadata().get("general.file_type").is_none());
    let ins = ok_json(&["inspect", s(&sl), "--json"]);
    let row = ins["tensors"].as_array().unwrap().iter().find(|t| t["name"] == TENSOR).unwrap().clone();
    assert_eq!(row["ty"], "seedlm-4bit");
    assert_eq!(row["bpw"], 4.0);

    // Decoded to F32: the exact SeedLM weights; crunch's engine on the container gives the same
    // perplexity, token for token, and it differs from the original's.
    let f32 = dir.join("m-f32.gguf");
    ok_json(&["seedlm", "decode", s(&sl), s(&f32), "--type", "F32", "--json"]);
    let dec = GgufFile::open(&f32).unwrap();
    let t = dec.tensor(TENSOR).unwrap();
    assert_eq!(t.ty, crunch_core::GgmlType::F32);
    let ppl = |m: &std::path::Path| {
        ok_json(&["eval", "perplexity", s(m), "--text", s(&text), "--ctx", "128", "--chunks", "3", "--json"])["ppl"]
            .as_f64()
            .unwrap()
    };
    let (on_container, on_decoded, on_original) = (ppl(&sl), ppl(&f32), ppl(&model));
    assert_eq!(on_container, on_decoded);
    assert_ne!(on_container, on_original);
    assert!((on_container / on_original - 1.0).abs() < 0.1, "{on_container} vs {on_original}");

    // Any GGUF type.
    let q8 = dir.join("m-q8.gguf");
    ok_json(&["seedlm", "decode", s(&sl), s(&q8), "--type", "Q8_0", "--json"]);
    assert_eq!(GgufFile::open(&q8).unwrap().tensor(TENSOR).unwrap().ty, crunch_core::GgmlType::Q8_0);
}

#[test]
fn seedlm_refuses_names_and_options_that_would_mislead() {
    let dir = crunch_testkit::Scratch::new("seedlm-refuse");
    let model = smollm2_f32();
    let out = dir.join("m.gguf");
    let e = fails(&["seedlm", "encode", s(&model), s(&out), "--tensors", TENSOR]);
    assert!(e.contains("OUTPUT") && e.contains("*.seedlm") && e.contains("llama.cpp"), "{e}");
    let e = fails(&["seedlm", "encode", s(&model), s(&dir.join("m.seedlm")), "--config", "2bit"]);
    assert!(e.contains("--config") && e.contains("4bit or 3bit"), "{e}");
    let e = fails(&["seedlm", "encode", s(&model), s(&dir.join("m.seedlm")), "--tensors", "^nothing$"]);
    assert!(e.contains("matching \"^nothing$\""), "{e}");
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
    // A container is never re-encoded, and a damaged one is refused by name.
    let sl = dir.join("a.seedlm");
    let o = crunch(&["seedlm", "encode", s(&model), s(&sl), "--tensors", &format!("^{TENSOR}$"), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = fails(&["seedlm", "encode", s(&sl), s(&dir.join("b.seedlm"))]);
    assert!(e.contains("already a SeedLM container"), "{e}");
    let mut bytes = std::fs::read(&sl).unwrap();
    let at = bytes.windows(13).position(|w| w == b"crunch.seedlm").unwrap();
    bytes[at + 7] = b'X'; // `crunXh.seedlm.version`: keys gone, tensors stay encoded
    let bad = dir.join("bad.seedlm");
    std::fs::write(&bad, bytes).unwrap();
    let e = fails(&["eval", "perplexity", s(&bad), "--text", s(&crunch_testkit::wikitext_dev()), "--chunks", "1"]);
    assert!(e.contains(TENSOR), "{e}");
}
