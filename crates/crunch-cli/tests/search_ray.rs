//! `crunch search --ray` on a local Ray cluster (a head that runs nothing and two worker nodes of
//! one CPU each, started by scripts/ray-cluster.sh on loopback): the same trials as the local run,
//! recorded by the driver with the same sizes and KL-divergences; and a worker node killed in the
//! middle of a search, after which every trial is still accounted for.
//!
//! Needs Ray in `$CRUNCH_CACHE/ray-venv` (scripts/setup-test-env.sh installs it).

mod common;

use common::{crunch_bin, smollm2_f32};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cache() -> PathBuf {
    crunch_testkit::cache_dir()
}

/// A local cluster for one test, stopped when dropped.
struct Cluster {
    state: PathBuf,
    address: String,
}

impl Cluster {
    fn start(state: &Path, port: u16) -> Cluster {
        let o = Command::new("bash")
            .arg(repo().join("scripts/ray-cluster.sh"))
            .args(["start", "--workers", "2", "--cpus-per-worker", "1", "--port", &port.to_string()])
            .env("RAY_STATE_DIR", state)
            .env("CRUNCH_CACHE", cache())
            .output()
            .expect("run scripts/ray-cluster.sh");
        assert!(
            o.status.success(),
            "could not start a local Ray cluster (is $CRUNCH_CACHE/ray-venv installed? scripts/setup-test-env.sh does it):\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let address = String::from_utf8_lossy(&o.stdout).trim().lines().last().unwrap_or("").to_string();
        assert!(address.contains(':'), "no address from ray-cluster.sh: {address:?}");
        Cluster { state: state.to_path_buf(), address }
    }

    fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .arg(repo().join("scripts/ray-cluster.sh"))
            .args(args)
            .env("RAY_STATE_DIR", &self.state)
            .env("CRUNCH_CACHE", cache())
            .output()
            .unwrap()
    }

    /// The raylet PID of worker node `i` (1-based).
    fn raylet(&self, i: usize) -> u32 {
        let w: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.state.join("workers.json")).unwrap()).unwrap();
        w.as_array().unwrap().iter().find(|n| n["index"] == i).unwrap()["raylet_pid"].as_u64().unwrap() as u32
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn python() -> PathBuf {
    cache().join("ray-venv/bin/python")
}

const SPACE: &str = "space:\n  base: Q8_0\n  groups:\n    - { name: attn, pattern: 'attn_(q|k|v|output)', types: [Q4_0, Q8_0] }\n    - { name: ffn, pattern: 'ffn_', types: [Q4_0, Q8_0] }\n  methods: [rtn, imatrix]\n";

fn search_args(space: &Path, fit_cache: &Path, reg: &Path, tg: usize, extra: &[&str]) -> Vec<String> {
    let text = crunch_testkit::wikitext_dev().display().to_string();
    let mut v: Vec<String> = vec![
        "search".into(),
        smollm2_f32().display().to_string(),
        "--space".into(),
        space.display().to_string(),
        "--text".into(),
        text,
        "--types".into(),
        "Q4_0,Q8_0".into(),
        "--band".into(),
        "30".into(),
        "--calib-ctx".into(),
        "32".into(),
        "--calib-chunks".into(),
        "1".into(),
        "--eval-ctx".into(),
        "64".into(),
        "--eval-chunks".into(),
        "2".into(),
        "--tg-tokens".into(),
        tg.to_string(),
        "--objectives".into(),
        "size,kld,tg,energy".into(),
        "--cache-dir".into(),
        fit_cache.display().to_string(),
        "--registry".into(),
        reg.display().to_string(),
        "--json".into(),
        "--quiet".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn children(reg: &Path) -> Vec<serde_json::Value> {
    let o = Command::new(crunch_bin())
        .args(["runs", "list", "--registry", reg.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut v: Vec<serde_json::Value> =
        runs.as_array().unwrap().iter().filter(|r| r["parent_id"].is_i64()).cloned().collect();
    v.sort_by_key(|r| r["label"].as_str().unwrap_or("").to_string());
    v
}

fn run_search(args: &[String]) -> (serde_json::Value, Duration) {
    let t0 = Instant::now();
    let o = Command::new(crunch_bin()).args(args).env("CRUNCH_RAY_PYTHON", python()).output().unwrap();
    let wall = t0.elapsed();
    assert!(o.status.success(), "search failed:\n{}", String::from_utf8_lossy(&o.stderr));
    (serde_json::from_slice(&o.stdout).unwrap(), wall)
}

#[test]
fn ray_trials_match_local_and_survive_a_lost_worker() {
    let s = crunch_testkit::Scratch::new("search-ray");
    let space = s.join("space.yaml");
    std::fs::write(&space, SPACE).unwrap();
    let fit_cache = s.join("fit-cache");
    let (reg_local, reg_ray) = (s.join("local.db"), s.join("ray.db"));

    // Local, one thread per trial (as each cluster trial gets one CPU): also fills the cache.
    let (local, local_wall) = run_search(&search_args(&space, &fit_cache, &reg_local, 32, &["--threads", "1"]));
    // Ray's socket paths must stay under 107 bytes: a short state folder.
    let state = PathBuf::from(format!("/tmp/cr-{}", std::process::id()));
    let cluster = Cluster::start(&state, 6391);
    let (ray, ray_wall) = run_search(&search_args(&space, &fit_cache, &reg_ray, 32, &["--ray", &cluster.address]));
    eprintln!("8 trials: local (1 thread) {local_wall:.1?}, Ray (2 workers x 1 CPU) {ray_wall:.1?}");
    assert_eq!(local["candidates"].as_array().unwrap().len(), 8);
    assert_eq!(ray["candidates"].as_array().unwrap().len(), 8);

    // Same registry rows: sizes and KLD exactly, speeds within noise.
    let (a, b) = (children(&reg_local), children(&reg_ray));
    assert_eq!(a.len(), 8);
    assert_eq!(b.len(), 8);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["label"], y["label"]);
        assert_eq!(x["status"], "ok", "{x}");
        assert_eq!(y["status"], "ok", "{y}");
        for k in ["file_bytes", "bpw", "kld", "kld_p99", "ppl", "top1", "predicted_kld", "ram_bytes"] {
            assert_eq!(x["metrics"][k], y["metrics"][k], "{k} of {}", x["label"]);
        }
        let (p, q) =
            (x["metrics"]["tg_tokens_per_s"].as_f64().unwrap(), y["metrics"]["tg_tokens_per_s"].as_f64().unwrap());
        assert!(q > 0.4 * p && q < 2.5 * p, "generation speed of {}: local {p}, Ray {q}", x["label"]);
    }
    let nodes: std::collections::BTreeSet<String> =
        ray["candidates"].as_array().unwrap().iter().map(|c| c["node"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(nodes.len(), 2, "trials ran on both workers: {nodes:?}");

    // A worker node killed while it runs a trial: the trial is retried on the other node, and
    // every trial ends recorded.
    let reg_kill = s.join("kill.db");
    let args = search_args(&space, &fit_cache, &reg_kill, 256, &["--ray", &cluster.address]);
    let mut child = Command::new(crunch_bin())
        .args(&args)
        .env("CRUNCH_RAY_PYTHON", python())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let raylet = cluster.raylet(1);
    let t0 = Instant::now();
    let mut killed = false;
    while t0.elapsed() < Duration::from_secs(120) {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the search ended ({st}) before a trial ran on worker 1");
        }
        if trial_under(raylet) {
            let o = cluster.script(&["kill-worker", "1"]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(killed, "no trial ran on worker 1 within two minutes");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the search failed after losing a worker");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cands = j["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 8, "every trial accounted for");
    let rows = children(&reg_kill);
    assert_eq!(rows.len(), 8, "every trial recorded");
    let retried = cands.iter().filter(|c| c["attempts"].as_u64().unwrap_or(1) >= 2).count();
    assert!(retried >= 1, "the killed trial was retried: {cands:?}");
    for (c, r) in cands.iter().zip(&rows) {
        // Retried trials succeed on the surviving node; a failure would have to say why.
        if r["status"] != "ok" {
            assert!(c["error"].as_str().unwrap_or("").contains("cluster"), "{c}");
        }
    }
}

/// Whether a `crunch job` process runs under the process `root` (a raylet).
fn trial_under(root: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if !(cmd.contains("crunch") && cmd.contains("\0job\0")) {
            continue;
        }
        let mut p = pid;
        for _ in 0..16 {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { break };
            let Some(ppid) = rest.split_whitespace().nth(1).and_then(|v| v.parse::<u32>().ok()) else { break };
            if ppid == root {
                return true;
            }
            if ppid <= 1 {
                break;
            }
            p = ppid;
        }
    }
    false
}
