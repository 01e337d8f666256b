//! `crunch search --space` on SmolLM2 (F32 base) with small settings: a product space searched by
//! grid, its trials measured for size, KL-divergence, generation speed, energy and CO2, recorded
//! and reported; strategies replayed on the recorded grid; constraints and the carbon budget.
//! The full-size search is in docs/SEARCH.md.

mod common;

use common::{crunch, smollm2_f32};
use std::path::Path;

/// The fit tests' small settings, with a short generation test and JSON output.
fn small(cache: &Path, registry: &Path) -> Vec<String> {
    let mut v = common::small_fit_settings(cache, registry);
    v.extend(["--tg-tokens", "16", "--json"].map(String::from));
    v
}

fn run_json(args: &[String]) -> serde_json::Value {
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = crunch(&a);
    assert!(o.status.success(), "crunch {args:?} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

const SPACE: &str = "space:\n  base: Q8_0\n  groups:\n    - { name: attn, pattern: 'attn_(q|k|v|output)', types: [Q4_0, Q8_0] }\n    - { name: ffn, pattern: 'ffn_', types: [Q4_0, Q8_0] }\n";

#[test]
fn space_search_measures_records_replays_and_reports() {
    let s = crunch_testkit::Scratch::new("search-space");
    let base = smollm2_f32();
    let (cache, reg) = (s.join("cache"), s.join("registry.db"));
    let space = s.join("space.yaml");
    std::fs::write(&space, SPACE).unwrap();
    let search = |extra: &[&str]| -> serde_json::Value {
        let mut a: Vec<String> =
            vec!["search".into(), base.display().to_string(), "--space".into(), space.display().to_string()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(small(&cache, &reg));
        run_json(&a)
    };

    // The whole space (4 points), four objectives.
    let g = search(&["--objectives", "size,kld,tg,energy"]);
    let cands = g["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 4);
    let names: Vec<&str> = cands.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["attn=Q4_0,ffn=Q4_0", "attn=Q4_0,ffn=Q8_0", "attn=Q8_0,ffn=Q4_0", "attn=Q8_0,ffn=Q8_0"]);
    for c in cands {
        assert!(c["error"].is_null(), "{c}");
        let x = &c["extra"];
        assert!(x["tg_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(x["energy_j_per_token"].as_f64().unwrap() > 0.0);
        assert!(x["co2_g"].as_f64().unwrap() > 0.0);
        let src = x["trial_energy"]["source"].as_str().unwrap();
        assert!(src == "modelled" || src == "rapl", "{src}");
        assert!(x["peak_rss_bytes"].as_u64().unwrap() > 10 << 20);
    }
    // Smaller files of the same model lose more: the all-Q8_0 point has the smallest KLD.
    let kld = |i: usize| cands[i]["measured"]["kld"].as_f64().unwrap();
    assert!(kld(3) < kld(0), "Q8_0 everywhere {} vs Q4_0 everywhere {}", kld(3), kld(0));
    let sum = &g["summary"];
    assert_eq!(sum["strategy"], "grid");
    assert_eq!(sum["objectives"], serde_json::json!(["size", "kld", "tg", "energy"]));
    assert!(sum["co2_g"].as_f64().unwrap() > 0.0);
    assert!(!sum["pareto"].as_array().unwrap().is_empty());
    let grid_id = g["run_id"].as_i64().expect("recorded");

    // Every trial is a child run with the new metrics.
    let o = crunch(&["runs", "list", "--registry", reg.to_str().unwrap(), "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let children: Vec<&serde_json::Value> =
        runs.as_array().unwrap().iter().filter(|r| r["parent_id"].as_i64() == Some(grid_id)).collect();
    assert_eq!(children.len(), 4);
    for r in &children {
        for k in ["file_bytes", "kld", "tg_tokens_per_s", "energy_j_per_token", "co2_g", "violation"] {
            assert!(r["metrics"][k].is_number(), "{k} missing in {r}");
        }
    }

    // Replays on the recorded grid: no new runs; NSGA-II with the whole budget finds the front.
    let before = runs.as_array().unwrap().len();
    for strategy in ["random", "nsga2", "tpe"] {
        let id = grid_id.to_string();
        let r =
            search(&["--objectives", "size,kld,tg,energy", "--replay", &id, "--strategy", strategy, "--budget", "4"]);
        let rp = &r["summary"]["replay"];
        assert_eq!(rp["recorded"], 4);
        assert_eq!(rp["trials"], 4);
        assert!((rp["hypervolume_ratio"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{strategy}: {rp}");
        assert_eq!(rp["front_found"], rp["front_size"]);
    }
    let o = crunch(&["runs", "list", "--registry", reg.to_str().unwrap(), "--json"]);
    let after: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(after.as_array().unwrap().len(), before, "a replay records nothing");

    // The report: a plot for every pair of objectives, energy columns saying where energy came from.
    let html = s.join("report.html");
    let o =
        crunch(&["report", &grid_id.to_string(), "-o", html.to_str().unwrap(), "--registry", reg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    for pair in
        ["pair_size_kld", "pair_size_tg", "pair_size_energy", "pair_kld_tg", "pair_kld_energy", "pair_tg_energy"]
    {
        assert!(page.contains(&format!("id=\"{pair}\"")), "{pair} missing");
    }
    assert!(page.contains("J/token (modelled)") || page.contains("J/token (rapl)"));

    // A size limit: the all-Q8_0 point is infeasible and off the front.
    let q4 = cands[0]["file_bytes"].as_u64().unwrap();
    let limit = (q4 + cands[3]["file_bytes"].as_u64().unwrap()) / 2;
    let c = search(&["--max-size", &limit.to_string(), "--strategy", "nsga2", "--budget", "4"]);
    let all = c["candidates"].as_array().unwrap();
    assert_eq!(all.len(), 4, "NSGA-II with the whole budget visits every point once");
    let big = all.iter().find(|c| c["name"] == "attn=Q8_0,ffn=Q8_0").unwrap();
    assert!(big["violation"].as_f64().unwrap() > 0.0 && big["pareto"] == false);

    // A carbon budget smaller than one trial: the search stops after the first.
    let c = search(&["--max-co2", "0.0000001", "--strategy", "random", "--seed", "3"]);
    assert_eq!(c["candidates"].as_array().unwrap().len(), 1);
    assert!(c["summary"]["stopped"].as_str().unwrap().contains("carbon budget"));
}

#[test]
fn bad_search_options_are_named() {
    let s = crunch_testkit::Scratch::new("search-space-errors");
    let base = smollm2_f32();
    let space = s.join("space.yaml");
    std::fs::write(&space, "space:\n  groups:\n    - { name: a, pattern: 'attn', types: [Q4_0, Q9] }\n").unwrap();
    let text = crunch_testkit::wikitext_dev().display().to_string();
    let fail = |extra: &[&str]| -> String {
        let reg = s.join("registry.db");
        let mut a = vec!["search", base.to_str().unwrap(), "--text", &text, "--registry", reg.to_str().unwrap()];
        a.extend_from_slice(extra);
        let o = crunch(&a);
        assert!(!o.status.success(), "{extra:?} succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let sp = space.to_str().unwrap();
    let e = fail(&["--space", sp]);
    assert!(e.contains("space.yaml") && e.contains("groups[0].types[1]"), "{e}");
    std::fs::write(&space, SPACE).unwrap();
    let e = fail(&["--space", sp, "--strategy", "annealing"]);
    assert!(e.contains("--strategy") && e.contains("annealing"), "{e}");
    let e = fail(&["--space", sp, "--objectives", "size,speed"]);
    assert!(e.contains("--objectives") && e.contains("speed"), "{e}");
    let e = fail(&["--space", sp, "--objectives", "size,acc"]);
    assert!(e.contains("--choice-tasks"), "{e}");
    let e = fail(&["--space", sp, "--grid-intensity", "Mars"]);
    assert!(e.contains("--grid-intensity") && e.contains("Mars"), "{e}");
    let e = fail(&["--space", sp, "--ray", "127.0.0.1:1", "--ray-python", "/nonexistent/python"]);
    assert!(e.contains("--ray-python") && e.contains("/nonexistent/python"), "{e}");
}
