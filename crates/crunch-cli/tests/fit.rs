//! `crunch fit`, `crunch search`, `crunch runs` and `crunch report` end to end on SmolLM2 (F32
//! base) with small settings so the default test run stays fast: two candidate types, one probe
//! group per tensor kind, a few dozen calibration and held-out tokens. The full-size measurements
//! are in scripts/fit_search.sh and docs/FIT.md.

mod common;

use common::{crunch, smollm2_f32};
use crunch_core::gguf::GgufFile;
use std::path::{Path, PathBuf};

fn text() -> String {
    crunch_testkit::wikitext_dev().display().to_string()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The small settings shared by every run here (same settings = same cached profile).
fn small(cache: &Path, registry: &Path) -> Vec<String> {
    common::small_fit_settings(cache, registry)
}

fn run(args: &[String]) -> std::process::Output {
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    crunch(&a)
}

fn json_of(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "crunch failed:\n{}", stderr(o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn fit_search_runs_report_end_to_end() {
    let s = crunch_testkit::Scratch::new("fit-e2e");
    let base = smollm2_f32();
    let (cache, reg) = (s.join("cache"), s.join("registry.db"));
    let common = small(&cache, &reg);

    // Dry run: the plan within the budget, no file, nothing recorded.
    let budget = 100_000_000u64;
    let mut args: Vec<String> = vec!["fit".into(), base.display().to_string(), "--max-size".into(), budget.to_string()];
    args.extend(common.clone());
    let mut dry = args.clone();
    dry.extend(["--dry-run".into(), "--json".into()]);
    let t0 = std::time::Instant::now();
    let j = json_of(&run(&dry));
    let first = t0.elapsed();
    let fit = &j["fit"];
    assert!(fit["file_bytes"].as_u64().unwrap() <= budget);
    assert!(fit["predicted_kld"].as_f64().unwrap() > 0.0);
    assert_eq!(j["profile"]["cached"], false);
    let types: Vec<&str> = fit["types"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    assert!(types.contains(&"Q4_0") && types.contains(&"Q8_0"), "a budget between the extremes mixes types: {types:?}");

    // Second time: the profile comes from the cache and the answer is the same.
    let t1 = std::time::Instant::now();
    let j2 = json_of(&run(&dry));
    assert_eq!(j2["profile"]["cached"], true);
    assert_eq!(j2["fit"]["types"], fit["types"]);
    assert!(t1.elapsed() < first, "cached profile was not faster: {:?} vs {first:?}", t1.elapsed());

    // llama-quantize arguments for the plan.
    let mut pt = args.clone();
    pt.extend(["--dry-run".into(), "--print-tensor-types".into()]);
    let o = run(&pt);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().any(|l| l.starts_with("--tensor-type ^blk\\.0\\.attn_q\\.weight$=")), "{out}");

    // The real thing: written, no larger than the budget, evaluated, recorded.
    let gguf = s.join("fit.gguf");
    let mut real = args.clone();
    real.insert(2, gguf.display().to_string());
    real.push("--json".into());
    let j = json_of(&run(&real));
    let size = std::fs::metadata(&gguf).unwrap().len();
    assert!(size <= budget);
    assert_eq!(j["result"]["file_bytes"].as_u64(), Some(size));
    let kld = j["measured"]["kld"].as_f64().unwrap();
    assert!(kld > 0.0 && kld < 1.0, "measured KLD {kld}");
    let o = crunch(&["verify", gguf.to_str().unwrap()]);
    assert!(o.status.success());

    // Unsatisfiable budget: a clear error naming the smallest possible size.
    let mut tiny =
        vec!["fit".to_string(), base.display().to_string(), "--max-size".into(), "1MB".into(), "--dry-run".into()];
    tiny.extend(common.clone());
    let o = run(&tiny);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("cannot be met") && e.contains("smallest model"), "{e}");

    // A small search: two presets and a fit at one preset's size.
    let recipes = s.join("r.yaml");
    std::fs::write(
        &recipes,
        "recipes:\n  - preset: Q4_0\n  - preset: Q8_0\n  - fit: { max_size_of: Q4_0 }\n  - fit: { max_size: 1MB }\n",
    )
    .unwrap();
    let mut sa = vec![
        "search".to_string(),
        base.display().to_string(),
        "--recipes".into(),
        recipes.display().to_string(),
        "--json".into(),
    ];
    sa.extend(common.clone());
    let j = json_of(&run(&sa));
    let cands = j["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 4);
    let by = |n: &str| cands.iter().find(|c| c["name"] == n).unwrap();
    let (q4, fit) = (by("Q4_0"), by("fit-size-of-Q4_0"));
    assert!(fit["file_bytes"].as_u64() <= q4["file_bytes"].as_u64());
    assert!(by("fit-size-1MB")["error"].as_str().unwrap().contains("smallest model"));
    assert!(by("Q8_0")["measured"]["kld"].as_f64().unwrap() < q4["measured"]["kld"].as_f64().unwrap());

    // The registry holds every run: fit, search and its three finished candidates (+ the failed one).
    let o = crunch(&["runs", "list", "--registry", reg.to_str().unwrap(), "--json"]);
    let runs = json_of(&o);
    let runs = runs.as_array().unwrap();
    let kinds: Vec<&str> = runs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "search").count(), 1);
    assert!(kinds.iter().filter(|k| **k == "fit").count() >= 2, "{kinds:?}");
    // Every candidate is a run: the unreachable 1 MB fit as a failed one, with its reason.
    let failed: Vec<&serde_json::Value> = runs.iter().filter(|r| r["status"] != "ok").collect();
    assert_eq!(failed.len(), 1, "{runs:?}");
    assert_eq!(failed[0]["label"], "fit-size-1MB");
    assert!(failed[0]["error"].as_str().unwrap().contains("smallest model"), "{:?}", failed[0]);
    let o = crunch(&["runs", "list", "--registry", reg.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("fit-size-of-Q4_0") && table.contains("search of 4 recipes"), "{table}");
    let o = crunch(&["runs", "export", "--registry", reg.to_str().unwrap(), "--format", "csv"]);
    assert!(String::from_utf8_lossy(&o.stdout).lines().next().unwrap().contains("kld"));
    let search_id = runs.iter().find(|r| r["kind"] == "search").unwrap()["id"].as_i64().unwrap();
    let fit_id = runs.iter().find(|r| r["label"] == "fit-size-of-Q4_0").unwrap()["id"].as_i64().unwrap();
    let o = crunch(&["runs", "show", &fit_id.to_string(), "--registry", reg.to_str().unwrap(), "--json"]);
    let show = json_of(&o);
    assert!(show["tensors"].as_array().unwrap().len() > 200);
    assert_eq!(show["parent_id"].as_i64(), Some(search_id));
    let q4_id = runs.iter().find(|r| r["label"] == "Q4_0").unwrap()["id"].as_i64().unwrap();
    let o = crunch(&["runs", "compare", &q4_id.to_string(), &fit_id.to_string(), "--registry", reg.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("typed differently"));

    // The report opens in headless Chromium with the Pareto plot drawn.
    let html = s.join("report.html");
    let o = crunch(&[
        "report",
        "--registry",
        reg.to_str().unwrap(),
        "-o",
        html.to_str().unwrap(),
        "--svg",
        s.join("svg").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("pareto_size_kld") && page.contains("fit-size-of-Q4_0") && !page.contains("<script"));
    assert!(s.join("svg/pareto_size_kld.svg").is_file());
    check_screenshot(&html, &s.join("shot.png"));
}

fn chromium() -> PathBuf {
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        for n in ["chromium", "chromium-browser"] {
            if dir.join(n).is_file() {
                return dir.join(n);
            }
        }
    }
    panic!("chromium is missing: run scripts/setup-test-env.sh (it installs Debian's chromium)");
}

/// Screenshot the page and check the Pareto plot rendered: the plot area has drawn pixels, and the
/// marker colours of both series (presets blue, fits red) are there.
fn check_screenshot(html: &Path, png: &Path) {
    let out = std::process::Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,800"])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(png.is_file(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let ch = info.color_type.samples();
    let (w, h) = (info.width as usize, info.height as usize);
    assert!(w >= 1000 && h >= 700);
    let px = |x: usize, y: usize| {
        let i = (y * w + x) * ch;
        (buf[i], buf[i + 1], buf[i + 2])
    };
    let near = |p: (u8, u8, u8), q: (u8, u8, u8)| {
        (p.0 as i32 - q.0 as i32).abs() < 40
            && (p.1 as i32 - q.1 as i32).abs() < 40
            && (p.2 as i32 - q.2 as i32).abs() < 40
    };
    let (mut drawn, mut blue, mut red) = (0usize, 0usize, 0usize);
    for y in 0..h {
        for x in 0..w {
            let p = px(x, y);
            if p != (255, 255, 255) {
                drawn += 1;
            }
            blue += near(p, (0x1f, 0x77, 0xb4)) as usize;
            red += near(p, (0xd6, 0x27, 0x28)) as usize;
        }
    }
    assert!(drawn > w * h / 20, "the page looks blank ({drawn} drawn pixels)");
    assert!(blue > 30 && red > 30, "Pareto plot markers missing: {blue} blue, {red} red pixels");
}

#[test]
fn malformed_recipes_are_named() {
    let s = crunch_testkit::Scratch::new("fit-recipes");
    let r = s.join("bad.yaml");
    std::fs::write(
        &r,
        "recipes:\n  - name: ok\n    preset: Q4_0\n  - name: broken\n    fit: { max_bpw: 4, max_kld: 0.1 }\n",
    )
    .unwrap();
    let model = crunch_testkit::smollm2_gguf();
    let o = crunch(&[
        "search",
        model.to_str().unwrap(),
        "--recipes",
        r.to_str().unwrap(),
        "--text",
        &text(),
        "--registry",
        s.join("reg.db").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("bad.yaml") && e.contains("recipes[1] (broken).fit") && e.contains("exactly one"), "{e}");
    std::fs::write(&r, "recipes:\n  - preset: Q4_0\n    colour: red\n").unwrap();
    let o = crunch(&["search", model.to_str().unwrap(), "--recipes", r.to_str().unwrap(), "--text", &text()]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("colour"), "{e}");
    let o = crunch(&["fit", model.to_str().unwrap(), "--max-size", "4 parsecs", "--dry-run", "--text", &text()]);
    assert!(!o.status.success() && stderr(&o).contains("--max-size"), "{}", stderr(&o));
    let o = crunch(&["fit", model.to_str().unwrap(), "--dry-run", "--text", &text()]);
    assert!(!o.status.success(), "a target is required");
}

/// A calibration text whose middle byte falls inside a multi-byte character (and with no line
/// break after the middle): `fit` splits it on a character boundary and gives a result.
#[test]
fn fit_text_split_inside_a_multibyte_character() {
    let s = crunch_testkit::Scratch::new("fit-utf8");
    let dev = std::fs::read_to_string(crunch_testkit::wikitext_dev()).unwrap();
    let lines: Vec<&str> = dev.lines().filter(|l| l.len() > 40).take(60).collect();
    let (a, b) = lines.split_at(lines.len() / 2);
    // First half: wikitext lines; second half: the rest on one line, with three-byte characters
    // around the middle.
    let mut text = format!("{}\n{}", a.join("\n"), "€".repeat(64));
    text.push_str(&b.join(" "));
    while text.is_char_boundary(text.len() / 2) {
        text.insert(0, ' ');
    }
    assert!(!text[..text.len() / 2 - 2].ends_with('\n'));
    let path = s.join("utf8.txt");
    std::fs::write(&path, &text).unwrap();
    let mut args: Vec<String> =
        vec!["fit".into(), smollm2_f32().display().to_string(), "--max-size".into(), "100000000".into()];
    args.extend(small(&s.join("cache"), &s.join("registry.db")));
    let i = args.iter().position(|a| a == "--text").unwrap();
    args[i + 1] = path.display().to_string();
    args.extend(["--dry-run".into(), "--json".into()]);
    let o = run(&args);
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    let j = json_of(&o);
    assert!(j["fit"]["file_bytes"].as_u64().unwrap() <= 100_000_000);
}

/// `fit --prune-layers` and a search recipe with `prune:` quantize a pruned copy of the base and
/// judge it against the unpruned base; `max_size_of` still means the preset's size on the base;
/// the pruned copies are removed when the job ends.
#[test]
fn fit_and_search_prune_before_quantizing() {
    let s = crunch_testkit::Scratch::new("fit-prune");
    let base = smollm2_f32();
    let (cache, reg) = (s.join("cache"), s.join("registry.db"));
    let common = small(&cache, &reg);
    let gguf = s.join("pruned-fit.gguf");
    let budget = 90_000_000u64;
    let mut args: Vec<String> = vec![
        "fit".into(),
        base.display().to_string(),
        gguf.display().to_string(),
        "--max-size".into(),
        budget.to_string(),
        "--prune-layers".into(),
        "2".into(),
        "--prune-chunks".into(),
        "2".into(),
        "--json".into(),
    ];
    args.extend(common.clone());
    let j = json_of(&run(&args));
    let f = GgufFile::open(&gguf).unwrap();
    assert_eq!(f.metadata().get_u64("llama.block_count"), Some(28), "the fit quantized the pruned model");
    let size = std::fs::metadata(&gguf).unwrap().len();
    assert!(size <= budget);
    // Judged against the 30-block base: a real, finite loss.
    let kld = j["measured"]["kld"].as_f64().unwrap();
    assert!(kld > 0.01 && kld.is_finite(), "KLD of a 2-block-shorter model against the base: {kld}");

    let out = s.join("search-out");
    let recipes = s.join("r.yaml");
    std::fs::write(
        &recipes,
        "recipes:\n  - fit: { max_size_of: Q4_0 }\n  - prune: { layers: 2, chunks: 2 }\n    fit: { max_size_of: Q4_0 }\n",
    )
    .unwrap();
    let mut sa = vec![
        "search".to_string(),
        base.display().to_string(),
        "--recipes".into(),
        recipes.display().to_string(),
        "--out-dir".into(),
        out.display().to_string(),
        "--json".into(),
    ];
    sa.extend(common.clone());
    let j = json_of(&run(&sa));
    let cands = j["candidates"].as_array().unwrap();
    let by = |n: &str| cands.iter().find(|c| c["name"] == n).unwrap_or_else(|| panic!("no {n} in {cands:?}"));
    let (plain, pruned) = (by("fit-size-of-Q4_0"), by("prune-2L+fit-size-of-Q4_0"));
    assert!(pruned["error"].is_null(), "{pruned}");
    let q4_0 = {
        let none = s.join("none.gguf");
        let o = crunch(&["quantize", base.to_str().unwrap(), none.to_str().unwrap(), "Q4_0", "--dry-run", "--json"]);
        json_of(&o)["plan"]["dst_bytes"].as_u64().unwrap()
    };
    // Same budget for both: the Q4_0 preset's size on the unpruned base.
    for c in [plain, pruned] {
        let b = c["file_bytes"].as_u64().unwrap();
        assert!(b <= q4_0 + 8 * 1024 * 1024, "{} {b} vs Q4_0 tensors {q4_0}", c["name"]);
        assert!(c["measured"]["kld"].as_f64().unwrap() > 0.0);
    }
    let pf = GgufFile::open(pruned["output"].as_str().unwrap()).unwrap();
    assert_eq!(pf.metadata().get_u64("llama.block_count"), Some(28));
    // Only the candidates stay in the out folder: the pruned base copies are gone.
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pruned-") || n.starts_with("prune-calib"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `fit --correction-rank` and a recipe's `correction:` ship a LoRA adapter beside the model: its
/// bytes come off the size target and count in the candidate's size, and the model is judged with
/// the adapter applied.
#[test]
fn fit_and_search_with_a_correction() {
    let s = crunch_testkit::Scratch::new("fit-correction");
    let base = smollm2_f32();
    let (cache, reg) = (s.join("cache"), s.join("registry.db"));
    let common = small(&cache, &reg);
    let gguf = s.join("corrected.gguf");
    let budget = 90_000_000u64;
    let mut args: Vec<String> = [
        "fit",
        base.to_str().unwrap(),
        gguf.to_str().unwrap(),
        "--max-size",
        &budget.to_string(),
        "--correction-rank",
        "8",
        "--correction-ctx",
        "64",
        "--correction-chunks",
        "2",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(common.clone());
    let j = json_of(&run(&args));
    let adapter = s.join("corrected.lora.gguf");
    assert_eq!(j["adapter"].as_str().unwrap(), adapter.to_str().unwrap());
    let (m, a) = (std::fs::metadata(&gguf).unwrap().len(), std::fs::metadata(&adapter).unwrap().len());
    assert_eq!(j["total_bytes"].as_u64().unwrap(), m + a);
    assert!(m + a <= budget, "model {m} + adapter {a} over the budget {budget}");
    assert!(m + a > budget - 2_000_000, "the budget is used: {} of {budget}", m + a);
    let ad = crunch_model::LoraAdapter::open(&adapter).unwrap();
    assert_eq!(ad.pairs().len(), 30 * 7);
    assert!(j["measured"]["kld"].as_f64().unwrap().is_finite());

    let out = s.join("search-out");
    let recipes = s.join("r.yaml");
    std::fs::write(
        &recipes,
        "recipes:\n  - preset: Q4_0\n  - preset: Q4_0\n    correction: { rank: 8, ctx: 64, chunks: 2 }\n  \
         - fit: { max_size_of: Q4_0 }\n    correction: { rank: 8, ctx: 64, chunks: 2 }\n",
    )
    .unwrap();
    let mut sa = vec![
        "search".to_string(),
        base.display().to_string(),
        "--recipes".into(),
        recipes.display().to_string(),
        "--out-dir".into(),
        out.display().to_string(),
        "--json".into(),
    ];
    sa.extend(common);
    let j = json_of(&run(&sa));
    let cands = j["candidates"].as_array().unwrap();
    let by = |n: &str| cands.iter().find(|c| c["name"] == n).unwrap_or_else(|| panic!("no {n} in {cands:?}"));
    let (plain, corrected, fitted) = (by("Q4_0"), by("Q4_0+r8"), by("fit-size-of-Q4_0+r8"));
    for c in [plain, corrected, fitted] {
        assert!(c["error"].is_null(), "{c}");
    }
    let adapter_bytes = corrected["adapter_bytes"].as_u64().unwrap();
    assert!(adapter_bytes > 0);
    assert_eq!(corrected["file_bytes"].as_u64().unwrap(), plain["file_bytes"].as_u64().unwrap() + adapter_bytes);
    // The fit made room for its adapter inside the preset's size.
    assert!(fitted["file_bytes"].as_u64().unwrap() <= plain["file_bytes"].as_u64().unwrap());
    let kept = corrected["output"].as_str().unwrap();
    assert!(std::path::Path::new(&kept.replace(".gguf", ".lora.gguf")).exists());
}
