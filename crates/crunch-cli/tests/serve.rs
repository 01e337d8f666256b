//! `crunch serve` end to end: the real binary on loopback, over scratch `--models` (a hard link or
//! copy of the F32 SmolLM2 and the wikitext dev text), `--out` and `--registry` folders, driven
//! by a plain HTTP client.
//!
//! - jobs over HTTP equal the CLI's: quantize (plan, sha256, bytes), eval compare (KLD stats), fit
//!   (plan, file, measured KLD), each followed over its event stream to the `result` event;
//! - a running job cancelled leaves no file in the out root; the queue bound (429) holds;
//! - `kill -9` mid-job, then a restart on the same registry: the job is `failed`, no partial
//!   output, the registry intact and earlier runs still listed;
//! - 401 without the token on a non-loopback listener, 403 for paths escaping the roots, 400
//!   naming the field, 404, 413;
//! - `/metrics` passes `promtool check metrics`, `/openapi.json` passes `openapi-spec-validator`;
//! - the dashboard in headless Chromium: its form submits a job, the row follows it to
//!   `succeeded`, and a fresh load shows it (screenshot, DOM).
//!
//! Small settings throughout (fit: two types, one band, 32 calibration and 64 held-out tokens)
//! so the file runs in a couple of minutes on two cores.

mod common;

use common::{crunch_bin, listing, smollm2_f32};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A slow quantization of SmolLM2 (IQ4_XS searches its scales: many seconds on two cores), for
/// jobs that must be caught running.
const SLOW_TYPE: &str = "IQ4_XS";

/// Scratch folders a server runs over.
struct Env {
    s: crunch_testkit::Scratch,
    models: PathBuf,
    out: PathBuf,
    registry: PathBuf,
}

fn link_or_copy(src: &Path, dst: &Path) {
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).unwrap_or_else(|e| panic!("copying {} to {}: {e}", src.display(), dst.display()));
    }
}

/// `models/` holds `smollm2-f32.gguf` and `wiki.txt` (hard links, not symlinks: a symlink out of
/// the root is refused, which one test checks).
fn env(tag: &str) -> Env {
    let s = crunch_testkit::Scratch::new(tag);
    let models = s.join("models");
    std::fs::create_dir_all(&models).unwrap();
    link_or_copy(&smollm2_f32(), &models.join("smollm2-f32.gguf"));
    link_or_copy(&crunch_testkit::wikitext_dev(), &models.join("wiki.txt"));
    let out = s.join("out");
    let registry = s.join("registry.db");
    Env { s, models, out, registry }
}

/// A running `crunch serve`.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
    token: Option<String>,
    agent: ureq::Agent,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

impl Server {
    /// Start `crunch serve` over `e` on `listen` (port 0: the server prints the port it bound).
    fn start(e: &Env, listen: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(crunch_bin())
            .args(["serve", "--listen", listen, "--models"])
            .arg(&e.models)
            .arg("--out")
            .arg(&e.out)
            .arg("--registry")
            .arg(&e.registry)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start crunch serve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("crunch serve did not say where it listens:\n{}", log.lock().unwrap());
            }
        };
        // A wildcard listener is reached over loopback.
        let port = addr.rsplit(':').next().unwrap().to_string();
        Server { child, base: format!("http://127.0.0.1:{port}"), log, token: None, agent: agent() }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `METHOD path` with an optional JSON body, the server's token if it has one (or `token`):
    /// the status, headers and body.
    fn call_with(&self, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> Reply {
        let mut req = ureq::http::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(t) = token.or(self.token.as_deref()) {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = match body {
            Some(b) => self.agent.run(req.header("content-type", "application/json").body(b.to_string()).unwrap()),
            None => self.agent.run(req.body(()).unwrap()),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}\nserver log:\n{}", self.log()));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.body_mut().with_config().limit(64 << 20).read_to_string().unwrap();
        Reply { status, headers, body }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.call_with(method, path, body, None)
    }

    fn get(&self, path: &str) -> Value {
        let r = self.call("GET", path, None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    /// Submit `job`: its id (`202` expected).
    fn submit(&self, job: &Value) -> i64 {
        let r = self.call("POST", "/v1/jobs", Some(&job.to_string()));
        assert_eq!(r.status, 202, "{job}: {}", r.body);
        assert!(r.headers.contains_key("location"));
        r.json()["id"].as_i64().unwrap()
    }

    /// Follow job `id` over its event stream to the end: (event, data) in order.
    fn follow(&self, id: i64) -> Vec<(String, Value)> {
        follow_events(&self.agent, &self.base, self.token.as_deref(), id)
    }

    /// Poll job `id` until `done` holds (at most `secs` seconds).
    fn wait_for(&self, id: i64, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let j = self.get(&format!("/v1/jobs/{id}"));
            if done(&j) {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} did not get there in {secs} s: {j}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`.
    fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Read a job's server-sent events line by line until the stream ends.
fn follow_events(agent: &ureq::Agent, base: &str, token: Option<&str>, id: i64) -> Vec<(String, Value)> {
    let mut req = agent.get(format!("{base}/v1/jobs/{id}/events"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req.call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let reader = BufReader::new(resp.into_body().into_reader());
    let (mut events, mut name, mut data) = (Vec::new(), String::from("message"), String::new());
    for line in reader.lines() {
        let line = line.unwrap();
        if line.is_empty() {
            if !data.is_empty() {
                let v = serde_json::from_str(&data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data}"));
                events.push((std::mem::replace(&mut name, "message".into()), v));
                data.clear();
            }
        } else if let Some(e) = line.strip_prefix("event:") {
            name = e.trim().to_string();
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.trim_start());
        }
        // `:` lines are keep-alive comments.
    }
    events
}

/// The last event is `result` with `state`; returns the job it carries.
fn ended(events: &[(String, Value)], state: &str) -> Value {
    let (name, last) = events.last().expect("no events");
    assert_eq!(name, "result", "{events:?}");
    assert_eq!(last["state"], state, "{last}");
    assert_eq!(events.iter().filter(|(n, _)| n == "result").count(), 1);
    last.clone()
}

fn progress_seen(events: &[(String, Value)]) -> bool {
    events.iter().any(|(n, d)| n == "progress" && d["state"] == "running" && d["progress"]["total"].as_u64() > Some(0))
}

/// `crunch ARGS…` with its runs recorded in `registry`; its stdout as JSON.
fn cli_json(args: &[&str], registry: &Path) -> Value {
    let o = Command::new(crunch_bin()).args(args).env("CRUNCH_REGISTRY", registry).output().unwrap();
    assert!(o.status.success(), "crunch {args:?}:\n{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Files (not folders) under `dir`, recursively, relative.
fn files_under(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                v.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    v.sort();
    v
}

/// Whether two JSON values are equal, numbers to a relative `tol`: the first difference.
fn close(a: &Value, b: &Value, at: &str, tol: f64) -> Result<(), String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x != y => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if (x - y).abs() > tol * x.abs().max(y.abs()) {
                return Err(format!("{at}: {x} vs {y}"));
            }
            Ok(())
        }
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() || x.keys().any(|k| !y.contains_key(k)) {
                return Err(format!("{at}: keys differ"));
            }
            x.iter().try_for_each(|(k, v)| close(v, &y[k], &format!("{at}.{k}"), tol))
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Err(format!("{at}: {} vs {} items", x.len(), y.len()));
            }
            x.iter().zip(y).enumerate().try_for_each(|(i, (v, w))| close(v, w, &format!("{at}[{i}]"), tol))
        }
        _ if a == b => Ok(()),
        _ => Err(format!("{at}: {a} vs {b}")),
    }
}

const FIT_TYPES: &str = "Q4_0,Q8_0";
const FIT_BUDGET: u64 = 100_000_000;

#[test]
fn quantize_compare_and_fit_over_http_equal_the_cli() {
    let e = env("serve-eq");
    let srv = Server::start(&e, "127.0.0.1:0", &[]);
    let cli_reg = e.s.join("cli-registry.db");
    let model = e.models.join("smollm2-f32.gguf");
    let text = e.models.join("wiki.txt");
    let h = srv.get("/healthz");
    assert_eq!(h["status"], "ok");

    // quantize: relative paths (the model from the models root, the output into the out root).
    let id =
        srv.submit(&json!({"kind": "quantize", "model": "smollm2-f32.gguf", "output": "q8/q8_0.gguf", "type": "Q8_0"}));
    let events = srv.follow(id);
    let job = ended(&events, "succeeded");
    assert!(progress_seen(&events), "no running progress event: {events:?}");
    let http_q = &job["result"];
    let http_out = e.out.canonicalize().unwrap().join("q8/q8_0.gguf");
    assert!(http_out.is_file());
    let cli_out = e.s.join("cli-q8_0.gguf");
    let cli_q = cli_json(&["quantize", p(&model), p(&cli_out), "Q8_0", "--json"], &cli_reg);
    assert_eq!(http_q["plan"], cli_q["plan"], "plans differ");
    assert_eq!(http_q["result"]["sha256"], cli_q["result"]["sha256"]);
    assert_eq!(http_q["result"]["file_bytes"], cli_q["result"]["file_bytes"]);
    assert!(std::fs::read(&http_out).unwrap() == std::fs::read(&cli_out).unwrap(), "output bytes differ");
    let sidecar = std::fs::read_to_string(format!("{}.sha256", http_out.display())).unwrap();
    assert!(sidecar.starts_with(http_q["result"]["sha256"].as_str().unwrap()), "{sidecar}");

    // eval compare: the F32 base against the quantized file the server wrote (outputs are inputs
    // too).
    let id = srv.submit(&json!({
        "kind": "compare", "base": "smollm2-f32.gguf", "models": [http_out], "text": "wiki.txt", "ctx": 64, "chunks": 1
    }));
    let events = srv.follow(id);
    let job = ended(&events, "succeeded");
    let http_c = &job["result"]["reports"][0];
    let cli_c = cli_json(
        &[
            "eval",
            "compare",
            p(&model),
            p(&http_out),
            "--text",
            p(&text),
            "--ctx",
            "64",
            "--chunks",
            "1",
            "--json",
            "-q",
        ],
        &cli_reg,
    );
    for k in ["kld", "same_top_pct", "same_top_err", "ppl_base", "ppl_quant", "ppl_ratio", "n_positions", "n_chunks"] {
        assert!(!http_c[k].is_null(), "{k} missing from {http_c}");
        assert_eq!(http_c[k], cli_c[k], "compare {k}: server {} vs CLI {}", http_c[k], cli_c[k]);
    }
    assert!(http_c["kld"]["mean"].as_f64().unwrap() > 0.0);

    // fit: the settings of tests/fit.rs; the server's cache lives in its out root.
    let id = srv.submit(&json!({
        "kind": "fit", "model": "smollm2-f32.gguf", "output": "fit/fit.gguf", "max_size": FIT_BUDGET,
        "settings": {
            "text": "wiki.txt", "types": FIT_TYPES.split(',').collect::<Vec<_>>(), "band": 30,
            "calib_ctx": 32, "calib_chunks": 1, "eval_ctx": 64, "eval_chunks": 1, "cache_dir": "fit-cache"
        }
    }));
    let events = srv.follow(id);
    let job = ended(&events, "succeeded");
    assert!(progress_seen(&events), "no running progress event: {events:?}");
    let http_f = &job["result"];
    let cli_fit = e.s.join("cli-fit.gguf");
    let budget = FIT_BUDGET.to_string();
    let cli_cache = e.s.join("cli-cache");
    let cli_f = cli_json(
        &[
            "fit",
            p(&model),
            p(&cli_fit),
            "--max-size",
            &budget,
            "--text",
            p(&text),
            "--types",
            FIT_TYPES,
            "--band",
            "30",
            "--calib-ctx",
            "32",
            "--calib-chunks",
            "1",
            "--eval-ctx",
            "64",
            "--eval-chunks",
            "1",
            "--cache-dir",
            p(&cli_cache),
            "--registry",
            p(&cli_reg),
            "--quiet",
            "--json",
        ],
        &cli_reg,
    );
    // The same plan: every tensor's type, the size; the profile's figures agree to rounding (its
    // sums are parallel, so the last bits may differ from one run to the next).
    assert!(http_f["fit"]["types"] == cli_f["fit"]["types"], "fit types differ");
    let types: Vec<&str> = http_f["fit"]["types"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    assert!(types.contains(&"Q4_0") && types.contains(&"Q8_0"), "{types:?}");
    assert_eq!(http_f["fit"]["file_bytes"], cli_f["fit"]["file_bytes"]);
    if let Err(d) = close(&http_f["fit"], &cli_f["fit"], "fit", 1e-9) {
        panic!("fit plans differ: {d}");
    }
    assert_eq!(http_f["result"]["sha256"], cli_f["result"]["sha256"]);
    let untimed = |v: &Value| {
        let mut v = v.clone();
        for k in ["seconds", "tokens_per_s", "tokens_per_second"] {
            v.as_object_mut().unwrap().remove(k);
        }
        v
    };
    assert!(http_f["measured"]["kld"].as_f64().unwrap() > 0.0);
    if let Err(d) = close(&untimed(&http_f["measured"]), &untimed(&cli_f["measured"]), "measured", 1e-9) {
        panic!("measured KLD differs: {d}");
    }
    let http_fit = e.out.canonicalize().unwrap().join("fit/fit.gguf");
    assert!(std::fs::metadata(&http_fit).unwrap().len() <= FIT_BUDGET);
    assert!(std::fs::read(&http_fit).unwrap() == std::fs::read(&cli_fit).unwrap(), "fit files differ");

    // All three are in the server's registry (a compare is an `eval` run), and the jobs point at
    // them.
    let runs = srv.get("/v1/runs");
    let kinds: Vec<&str> = runs.as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    for k in ["quantize", "eval", "fit"] {
        assert!(kinds.contains(&k), "{k} not recorded: {kinds:?}");
    }
    let jobs = srv.get("/v1/jobs");
    assert_eq!(jobs.as_array().unwrap().len(), 3);
    assert!(jobs.as_array().unwrap().iter().all(|j| j["state"] == "succeeded" && j["run_id"].is_i64()), "{jobs}");
}

#[test]
fn cancelling_a_running_job_leaves_no_file_and_the_queue_is_bounded() {
    let e = env("serve-cancel");
    let srv = Server::start(&e, "127.0.0.1:0", &["--jobs", "1", "--queue", "1"]);
    let job = |out: &str| json!({"kind": "quantize", "model": "smollm2-f32.gguf", "output": out, "type": SLOW_TYPE});
    let mut canceled_running = false;
    for attempt in 0..3 {
        let a = srv.submit(&job("a.gguf"));
        srv.wait_for(a, 60, |j| j["state"] != "queued");
        // One running, one waiting, the next refused.
        let b = srv.submit(&job("b.gguf"));
        let c = srv.call("POST", "/v1/jobs", Some(&job("c.gguf").to_string()));
        assert_eq!(c.status, 429, "{}", c.body);
        assert!(c.headers.contains_key("retry-after"));
        let r = srv.call("DELETE", &format!("/v1/jobs/{b}"), None);
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(srv.get(&format!("/v1/jobs/{b}"))["state"], "canceled");

        // Follow the running job from another thread, cancel it once it has written something.
        let (agent, base) = (srv.agent.clone(), srv.base.clone());
        let follower = std::thread::spawn(move || follow_events(&agent, &base, None, a));
        srv.wait_for(a, 120, |j| j["state"] != "running" || j["progress"]["done"].as_u64().unwrap_or(0) > 0);
        let r = srv.call("DELETE", &format!("/v1/jobs/{a}"), None);
        let end = srv.wait_for(a, 120, |j| j["state"] != "running");
        let events = follower.join().unwrap();
        if r.status == 409 || end["state"] == "succeeded" {
            eprintln!("attempt {attempt}: job {a} finished before it was cancelled");
            std::fs::remove_file(e.out.join("a.gguf")).unwrap();
            std::fs::remove_file(e.out.join("a.gguf.sha256")).unwrap();
            continue;
        }
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(end["state"], "canceled", "{end}");
        ended(&events, "canceled");
        canceled_running = true;
        break;
    }
    assert!(canceled_running, "no attempt caught the job running");
    assert_eq!(files_under(&e.out), Vec::<String>::new(), "the cancelled job left files");
    let r = srv.call("DELETE", "/v1/jobs/1", None);
    assert_eq!(r.status, 409, "an ended job cannot be cancelled: {}", r.body);
    assert_eq!(srv.get("/healthz")["queue_depth"], 0);
}

#[test]
fn kill_9_mid_job_then_restart_marks_it_failed_and_keeps_the_registry() {
    let e = env("serve-kill");
    let srv = Server::start(&e, "127.0.0.1:0", &[]);
    // An earlier run that must survive.
    let done =
        srv.submit(&json!({"kind": "quantize", "model": "smollm2-f32.gguf", "output": "q8.gguf", "type": "Q8_0"}));
    ended(&srv.follow(done), "succeeded");
    let earlier_run = srv.get(&format!("/v1/jobs/{done}"))["run_id"].as_i64().unwrap();

    let victim =
        srv.submit(&json!({"kind": "quantize", "model": "smollm2-f32.gguf", "output": "big.gguf", "type": SLOW_TYPE}));
    // Killed once its temporary output is on disk.
    let deadline = Instant::now() + Duration::from_secs(120);
    let temp = loop {
        let names = listing(&e.out);
        if let Some(t) = names.iter().find(|n| n.starts_with(".big.gguf.crunch-tmp-")) {
            break t.clone();
        }
        let j = srv.get(&format!("/v1/jobs/{victim}"));
        assert!(j["state"] == "queued" || j["state"] == "running", "the job ended before the kill: {j}");
        assert!(Instant::now() < deadline, "no temporary output appeared: {names:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    srv.kill_hard();
    assert!(e.out.join(&temp).exists(), "the kill left {temp} (what the restart must remove)");
    {
        let reg = crunch_registry::Registry::open(&e.registry).unwrap();
        reg.integrity_check().expect("registry intact after kill -9");
    }

    let srv = Server::start(&e, "127.0.0.1:0", &[]);
    let j = srv.get(&format!("/v1/jobs/{victim}"));
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(j["error"], "server stopped", "{j}");
    assert_eq!(listing(&e.out), vec!["q8.gguf", "q8.gguf.sha256"], "partial output left");
    assert_eq!(srv.get(&format!("/v1/jobs/{done}"))["state"], "succeeded");
    let runs = srv.get("/v1/runs");
    let ok_run = runs.as_array().unwrap().iter().find(|r| r["id"] == earlier_run).expect("earlier run listed");
    assert_eq!(ok_run["status"], "ok", "{ok_run}");
    assert!(runs.as_array().unwrap().iter().all(|r| r["status"] != "running"), "a dead run still running: {runs}");
    crunch_registry::Registry::open(&e.registry).unwrap().integrity_check().unwrap();
    // The restarted server runs jobs.
    let again = srv.submit(&json!({"kind": "inspect", "path": e.out.join("q8.gguf")}));
    ended(&srv.follow(again), "succeeded");
}

#[test]
fn token_confinement_and_bad_requests() {
    let e = env("serve-guard");
    // A non-loopback listener without a token is refused.
    let o = Command::new(crunch_bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--models", p(&e.models), "--out", p(&e.out), "--registry"])
        .arg(&e.registry)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--token-file"), "{}", String::from_utf8_lossy(&o.stderr));

    let token_file = e.s.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let mut srv = Server::start(&e, "0.0.0.0:0", &["--token-file", p(&token_file)]);
    for path in ["/v1/jobs", "/v1/formats", "/v1/runs", "/metrics"] {
        let r = srv.call("GET", path, None);
        assert_eq!(r.status, 401, "{path} without a token: {}", r.body);
        assert!(r.headers.contains_key("www-authenticate"));
        assert_eq!(srv.call_with("GET", path, None, Some("wrong")).status, 401, "{path}");
        assert_eq!(srv.call_with("GET", path, None, Some("s3cret-token")).status, 200, "{path}");
    }
    let inspect = json!({"kind": "inspect", "path": "smollm2-f32.gguf"}).to_string();
    assert_eq!(srv.call("POST", "/v1/jobs", Some(&inspect)).status, 401);
    assert_eq!(srv.call("GET", "/healthz", None).status, 200, "health is open");
    srv.token = Some("s3cret-token".into());
    let id = srv.submit(&serde_json::from_str(&inspect).unwrap());
    let j = ended(&srv.follow(id), "succeeded");
    assert_eq!(j["result"]["kind"], "inspect");

    // Paths out of the roots: 403 naming the field.
    let secret = e.s.join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("key.gguf"), b"not yours").unwrap();
    std::os::unix::fs::symlink(&secret, e.models.join("link")).unwrap();
    std::os::unix::fs::symlink(&secret, e.out.join("escape")).unwrap();
    let q = |model: &str, output: &str| json!({"kind": "quantize", "model": model, "output": output, "type": "Q8_0"});
    let cases = [
        (json!({"kind": "inspect", "path": "../secret/key.gguf"}), "path"),
        (q("smollm2-f32.gguf", "../escaped.gguf"), "output"),
        (q("smollm2-f32.gguf", "sub/../../escaped.gguf"), "output"),
        (json!({"kind": "inspect", "path": "/etc/passwd"}), "path"),
        (json!({"kind": "inspect", "path": secret.join("key.gguf")}), "path"),
        (q("smollm2-f32.gguf", p(&e.s.join("escaped.gguf"))), "output"),
        (json!({"kind": "inspect", "path": "link/key.gguf"}), "path"),
        (q("link/key.gguf", "x.gguf"), "model"),
        (q("smollm2-f32.gguf", "escape/x.gguf"), "output"),
        (json!({"kind": "perplexity", "model": "smollm2-f32.gguf", "text": p(&secret.join("key.gguf"))}), "text"),
    ];
    for (job, field) in &cases {
        let r = srv.call("POST", "/v1/jobs", Some(&job.to_string()));
        assert_eq!(r.status, 403, "{job}: {}", r.body);
        assert_eq!(r.json()["field"], *field, "{job}: {}", r.body);
    }
    assert!(!e.s.join("escaped.gguf").exists());
    assert_eq!(listing(&secret), vec!["key.gguf"], "something was written outside the roots");

    // Bad JSON: 400 naming the field.
    let bad = [
        (r#"{"kind": "quantize", "#.to_string(), "job"),
        (json!({"kind": "perplexity", "model": "smollm2-f32.gguf", "text": "wiki.txt", "ctx": "many"}).to_string(), "ctx"),
        (json!({"kind": "quantize", "model": "smollm2-f32.gguf", "output": "o.gguf", "type": "Q8_0", "bogus": 1}).to_string(), "bogus"),
        (json!({"kind": "quantize", "output": "o.gguf", "type": "Q8_0"}).to_string(), "model"),
        (json!({"kind": "quantize", "model": 7, "output": "o.gguf", "type": "Q8_0"}).to_string(), "model"),
        (
            json!({"kind": "fit", "model": "smollm2-f32.gguf", "max_bpw": 4, "settings": {"text": "wiki.txt", "band": "wide"}})
                .to_string(),
            "settings.band",
        ),
        (json!({"kind": "teleport"}).to_string(), "kind"),
        (json!({"model": "smollm2-f32.gguf"}).to_string(), "kind"),
        (json!({"kind": "inspect", "path": "missing.gguf"}).to_string(), "path"),
    ];
    for (body, field) in &bad {
        let r = srv.call("POST", "/v1/jobs", Some(body));
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let j = r.json();
        assert_eq!(j["field"], *field, "{body}: {j}");
        assert!(j["error"].as_str().unwrap().contains(field), "{body}: the message names the field: {j}");
    }

    // 404 for an unknown job or route, 413 for a body over 1 MiB.
    assert_eq!(srv.call("GET", "/v1/jobs/999", None).status, 404);
    assert_eq!(srv.call("GET", "/v1/jobs/999/events", None).status, 404);
    assert_eq!(srv.call("GET", "/v1/nothing", None).status, 404);
    let huge = format!(r#"{{"kind": "inspect", "path": "{}"}}"#, "x".repeat(crunch_server::MAX_BODY_BYTES));
    assert_eq!(srv.call("POST", "/v1/jobs", Some(&huge)).status, 413);
    // Only the one inspect job was accepted.
    assert_eq!(srv.get("/v1/jobs").as_array().unwrap().len(), 1);
}

fn promtool() -> PathBuf {
    let cached = crunch_testkit::cache_dir().join("bin/promtool");
    if cached.is_file() {
        return cached;
    }
    find_in_path("promtool").unwrap_or_else(|| {
        panic!("promtool is missing: run scripts/setup-test-env.sh (it installs Debian's prometheus promtool)")
    })
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).map(|d| d.join(name)).find(|p| p.is_file())
}

#[test]
fn metrics_pass_promtool_and_openapi_passes_the_validator() {
    let e = env("serve-lint");
    let srv = Server::start(&e, "127.0.0.1:0", &[]);
    // Jobs first, so every family has samples (a histogram, labelled gauges, eval speed).
    let q = srv.submit(&json!({"kind": "quantize", "model": "smollm2-f32.gguf", "output": "q.gguf", "type": "Q8_0"}));
    ended(&srv.follow(q), "succeeded");
    // Relative inputs are taken from the models root: the out root's file is named in full.
    let q_out = e.out.canonicalize().unwrap().join("q.gguf");
    let ppl = srv.submit(&json!({"kind": "perplexity", "model": q_out, "text": "wiki.txt", "ctx": 64, "chunks": 1}));
    ended(&srv.follow(ppl), "succeeded");
    let bad = srv.submit(&json!({"kind": "inspect", "path": "wiki.txt"}));
    ended(&srv.follow(bad), "failed");

    let r = srv.call("GET", "/metrics", None);
    assert_eq!(r.status, 200);
    let ct = r.headers.get("content-type").unwrap().to_str().unwrap();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = r.body;
    for name in [
        "crunch_jobs{kind=\"quantize\",state=\"succeeded\"} 1",
        "crunch_jobs{kind=\"inspect\",state=\"failed\"} 1",
        "crunch_job_duration_seconds_count{kind=\"perplexity\"} 1",
        "crunch_queue_depth 0",
        "crunch_read_bytes_total ",
        "crunch_written_bytes_total ",
        "crunch_eval_tokens_per_second{kind=\"perplexity\",test=\"perplexity\"} ",
        "crunch_process_resident_memory_bytes ",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let metrics_file = e.s.join("metrics.txt");
    std::fs::write(&metrics_file, &text).unwrap();
    let o = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&metrics_file).unwrap())
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    let doc = srv.call("GET", "/openapi.json", None);
    assert_eq!(doc.status, 200);
    let spec = doc.json();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."), "{}", spec["openapi"]);
    for path in ["/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/events", "/metrics", "/v1/estimate"] {
        assert!(spec["paths"].get(path).is_some(), "{path} not documented");
    }
    let file = e.s.join("openapi.json");
    std::fs::write(&file, &doc.body).unwrap();
    let validator = crunch_testkit::cache_dir().join("venv/bin/openapi-spec-validator");
    assert!(
        validator.is_file(),
        "{} is missing: run scripts/setup-test-env.sh (it installs PyPI openapi-spec-validator into the oracle venv)",
        validator.display()
    );
    let o = Command::new(&validator).arg(&file).output().unwrap();
    assert!(
        o.status.success(),
        "openapi-spec-validator: {}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// The dashboard in headless Chromium.

fn chromium() -> PathBuf {
    ["chromium", "chromium-browser"]
        .iter()
        .find_map(|n| find_in_path(n))
        .unwrap_or_else(|| panic!("chromium is missing: run scripts/setup-test-env.sh (it installs Debian's chromium)"))
}

/// Chromium's headless flags, with a fresh profile folder.
fn chromium_cmd(profile: &Path) -> Command {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1280,1000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// A Chrome DevTools Protocol session with one page, over its websocket.
struct Cdp {
    ws: tungstenite::WebSocket<std::net::TcpStream>,
    next: u64,
}

impl Cdp {
    fn connect(ws_url: &str) -> Cdp {
        let hostport = ws_url.strip_prefix("ws://").and_then(|r| r.split('/').next()).unwrap();
        let stream = std::net::TcpStream::connect(hostport).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let (ws, _) = tungstenite::client(ws_url, stream).unwrap_or_else(|e| panic!("DevTools websocket: {e}"));
        Cdp { ws, next: 1 }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(tungstenite::Message::Text(msg.into())).unwrap();
        loop {
            let m = self.ws.read().unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
            let tungstenite::Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "DevTools {method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluate `expr` in the page; its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true, "awaitPromise": true}));
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Evaluate `expr` until it is truthy (at most `secs`): its value.
    fn wait(&mut self, expr: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.eval(expr);
            if !(v.is_null() || v == false || v == "") {
                return v;
            }
            assert!(Instant::now() < deadline, "the page never got to `{expr}`");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Colour pixels near `rgb` in a PNG screenshot, and its size.
fn count_colour(png_path: &Path, rgb: (u8, u8, u8)) -> (usize, usize, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let ch = info.color_type.samples();
    let (w, h) = (info.width as usize, info.height as usize);
    let mut n = 0;
    for px in buf[..w * h * ch].chunks(ch) {
        let d = |a: u8, b: u8| (a as i32 - b as i32).abs() < 24;
        n += (d(px[0], rgb.0) && d(px[1], rgb.1) && d(px[2], rgb.2)) as usize;
    }
    (n, w, h)
}

#[test]
fn dashboard_drives_a_job_in_headless_chromium() {
    let chrome = chromium();
    let e = env("serve-dash");
    let srv = Server::start(&e, "127.0.0.1:0", &[]);
    let profile = e.s.join("chromium-profile");

    // Chromium with DevTools on a port it picks (printed on stderr).
    let mut browser = chromium_cmd(&profile)
        .args(["--remote-debugging-port=0", "about:blank"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("starting {}: {err}", chrome.display()));
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = browser.stderr.take().unwrap();
    let browser = Kill(browser);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let devtools = rx.recv_timeout(Duration::from_secs(60)).expect("chromium did not open DevTools");
    let http = devtools.strip_prefix("ws://").unwrap().split('/').next().unwrap().to_string();
    let a = agent();
    let targets: Value = {
        let mut r = a.get(format!("http://{http}/json/list")).call().unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    };
    let page = targets.as_array().unwrap().iter().find(|t| t["type"] == "page").expect("a page target");
    let mut cdp = Cdp::connect(page["webSocketDebuggerUrl"].as_str().unwrap());

    cdp.call("Page.navigate", json!({"url": format!("{}/", srv.base)}));
    // The page is up once it listed the models.
    cdp.wait(
        "document.readyState === 'complete' && document.querySelectorAll('#models tbody tr').length > 0 \
         && document.getElementById('job-json').value.includes('quantize')",
        60,
    );
    let health = cdp.wait("document.getElementById('health').textContent.startsWith('v') && document.getElementById('health').textContent", 30);
    assert!(health.as_str().unwrap().contains("queue"), "{health}");

    // Fill the form's job and press Submit.
    let job = json!({"kind": "quantize", "model": "smollm2-f32.gguf", "output": "dash/q4_k_m.gguf", "type": "Q4_K_M"});
    cdp.eval(&format!(
        "document.getElementById('job-json').value = {}; document.getElementById('submit').click(); true",
        serde_json::to_string(&serde_json::to_string_pretty(&job).unwrap()).unwrap()
    ));
    let accepted = cdp.wait("document.getElementById('submit-result').textContent", 30);
    let accepted = accepted.as_str().unwrap().to_string();
    let id: i64 = accepted
        .strip_prefix("job ")
        .and_then(|r| r.strip_suffix(" accepted"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the form did not submit: {accepted:?}"));

    // The row follows the job over its event stream to the end.
    let row = format!("document.getElementById('job-{id}')");
    let state = cdp.wait(
        &format!("{row} && ['succeeded', 'failed', 'canceled'].includes({row}.dataset.state) && {row}.dataset.state"),
        180,
    );
    assert_eq!(state, "succeeded", "{}", cdp.eval(&format!("{row}.textContent")));
    let summary = cdp.eval(&format!("{row}.children[4].textContent")).as_str().unwrap().to_string();
    assert!(summary.contains("MiB") && summary.contains("bpw"), "{summary}");
    // The runs table was refreshed with the job's run.
    let run_id = srv.get(&format!("/v1/jobs/{id}"))["run_id"].as_i64().unwrap();
    cdp.wait(&format!("!!document.getElementById('run-{run_id}')"), 30);
    assert!(e.out.join("dash/q4_k_m.gguf").is_file());
    let _ = cdp.call("Browser.close", json!({}));
    drop(browser);

    // A fresh load shows the finished job: screenshot and DOM.
    let url = format!("{}/", srv.base);
    let shot = e.s.join("dashboard.png");
    let o = chromium_cmd(&e.s.join("profile-shot"))
        .args(["--virtual-time-budget=4000"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(shot.is_file(), "no screenshot: {}", String::from_utf8_lossy(&o.stderr));
    let (green, w, h) = count_colour(&shot, (0x1a, 0x7f, 0x37)); // `.state.succeeded`
    let (header, _, _) = count_colour(&shot, (0x1f, 0x3b, 0x57)); // the header bar
    assert!(w >= 1200 && h >= 900, "{w}x{h}");
    assert!(header > w * 20, "the header is not drawn ({header} pixels)");
    assert!(green > 20, "no 'succeeded' state drawn ({green} pixels)");

    let o = chromium_cmd(&e.s.join("profile-dom"))
        .args(["--virtual-time-budget=4000", "--dump-dom"])
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(
        dom.contains(&format!("<tr id=\"job-{id}\" data-state=\"succeeded\">")),
        "the finished job's row is not in the DOM:\n{dom}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(dom.contains(&format!("<tr id=\"run-{run_id}\">")), "the run is not listed");
}
