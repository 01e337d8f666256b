//! Real jobs on the real SmolLM2 (Q4_1): a quantize submitted over HTTP and followed over its
//! event stream gives what `crunch::job::run` gives; a cancelled job leaves nothing in the out
//! folder; the queue bound holds while a job runs; a server that died mid-job is cleaned up
//! after on the next start.

mod common;

use axum::http::StatusCode;
use common::{files_under, parse_events, server_with, smollm2_root};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantize_over_http_equals_the_library_call() {
    let s = server_with(vec![smollm2_root()], |_| {});
    let model = crunch_testkit::smollm2_gguf();
    let est = s.post("/v1/estimate", &json!({"model": model, "type": "Q8_0"})).await.json();

    let body = json!({"kind": "quantize", "model": model, "output": "q8/smollm2-q8_0.gguf", "type": "Q8_0", "allow_requantize": true});
    let r = s.post("/v1/jobs", &body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.json()["id"].as_i64().unwrap();

    let events = s.get(&format!("/v1/jobs/{id}/events")).await;
    let ev = parse_events(&events.text());
    let (last_name, last) = ev.last().unwrap();
    assert_eq!(last_name, "result");
    assert_eq!(last["state"], "succeeded", "{last}");
    let progress: Vec<&serde_json::Value> = ev.iter().filter(|(n, _)| n == "progress").map(|(_, d)| d).collect();
    assert!(!progress.is_empty(), "no progress events: {}", events.text());
    assert!(
        progress.iter().any(|p| p["state"] == "running" && p["progress"]["total"].as_u64().unwrap_or(0) > 0),
        "{}",
        events.text()
    );

    let out = s.out.join("q8/smollm2-q8_0.gguf");
    assert!(out.is_file());
    assert_eq!(std::fs::metadata(&out).unwrap().len(), est["file_bytes"].as_u64().unwrap(), "estimate is exact");

    // The same job through the library.
    let scratch = tempfile::tempdir().unwrap();
    let direct_out = scratch.path().join("direct.gguf");
    let job = crunch::job::from_json(
        json!({"kind": "quantize", "model": model, "output": direct_out, "type": "Q8_0", "allow_requantize": true})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let direct = crunch::job::run(&job, &crunch::job::RunCtx::new(0).unwrap()).unwrap();
    let direct = serde_json::to_value(&direct).unwrap();
    assert_eq!(last["result"]["plan"], direct["plan"]);
    assert_eq!(last["result"]["result"]["sha256"], direct["result"]["sha256"]);
    assert_eq!(last["result"]["result"]["file_bytes"], direct["result"]["file_bytes"]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&direct_out).unwrap(), "outputs differ");

    // Listings leave the per-tensor plan out unless asked for.
    let listed = s.get("/v1/jobs").await.json();
    assert!(listed[0]["result"].get("plan").is_none());
    assert_eq!(listed[0]["result"]["result"]["sha256"], direct["result"]["sha256"]);
    let full = s.get("/v1/jobs?full=true").await.json();
    assert_eq!(full[0]["result"]["plan"], direct["plan"]);

    // Recorded: the job points at its registry run, which the runs API serves.
    let run_id = last["run_id"].as_i64().expect("run id");
    let run = s.get(&format!("/v1/runs/{run_id}")).await.json();
    assert_eq!(run["kind"], "quantize");
    let m = s.get("/metrics").await.text();
    assert!(m.contains("crunch_job_duration_seconds_count{kind=\"quantize\"} 1"), "{m}");
    assert!(!m.contains("crunch_written_bytes_total 0\n"), "{m}");
    let report = s.get("/v1/report").await;
    assert_eq!(report.status, StatusCode::OK);
    assert!(report.text().contains("<svg"), "{}", report.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_jobs_leave_no_file_and_the_queue_is_bounded() {
    // One worker thread per job, so the quantize runs long enough to be caught running.
    let s = server_with(vec![smollm2_root()], |c| {
        c.queue = 1;
        c.threads = 1;
    });
    let model = crunch_testkit::smollm2_gguf();
    let job = |out: &str| json!({"kind": "quantize", "model": model, "output": out, "type": "Q4_K_M", "allow_requantize": true});
    let mut canceled_running = false;
    for attempt in 0..3 {
        let a = s.post("/v1/jobs", &job("a/a.gguf")).await.json()["id"].as_i64().unwrap();
        s.wait_for(a, 60, |j| j["state"] != "queued").await;
        let b = s.post("/v1/jobs", &job("b.gguf")).await;
        assert_eq!(b.status, StatusCode::ACCEPTED, "{}", b.text());
        let b = b.json()["id"].as_i64().unwrap();
        let c = s.post("/v1/jobs", &job("c.gguf")).await;
        assert_eq!(c.status, StatusCode::TOO_MANY_REQUESTS, "{}", c.text());
        assert!(c.headers.contains_key("retry-after"));

        // A queued job is cancelled at once.
        let r = s.call("DELETE", &format!("/v1/jobs/{b}"), None, None).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        assert_eq!(s.get(&format!("/v1/jobs/{b}")).await.json()["state"], "canceled");

        // The running one, once it has written some of its output.
        s.wait_for(a, 120, |j| j["state"] != "running" || j["progress"]["done"].as_u64().unwrap_or(0) > 0).await;
        let r = s.call("DELETE", &format!("/v1/jobs/{a}"), None, None).await;
        let end = s.wait_for(a, 120, |j| j["state"] != "running").await;
        if r.status == StatusCode::CONFLICT || end["state"] == "succeeded" {
            // Finished before the cancel arrived (a fast machine): clear up and try again.
            eprintln!("attempt {attempt}: job {a} finished before it was cancelled");
            std::fs::remove_dir_all(s.out.join("a")).unwrap();
            continue;
        }
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        assert_eq!(end["state"], "canceled", "{end}");
        canceled_running = true;
        break;
    }
    assert!(canceled_running, "no attempt caught the job running");
    let left: Vec<_> = files_under(&s.out).into_iter().filter(|p| p.is_file()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let m = s.get("/metrics").await.text();
    assert!(m.contains("crunch_queue_depth 0"), "{m}");
    assert!(m.contains("crunch_jobs{kind=\"quantize\",state=\"canceled\"}"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_fails_interrupted_jobs_removes_their_files_and_runs_queued_ones() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let out = out.canonicalize().unwrap();
    let db = dir.path().join("registry.db");
    let model = crunch_testkit::smollm2_gguf();
    // What a server killed mid-job leaves: a running job with a temporary file and a partial
    // output, and a queued job.
    let dead = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    let partial = out.join("x.gguf");
    let (running, queued) = {
        let reg = crunch_registry::Registry::open(&db).unwrap();
        let job =
            json!({"kind": "quantize", "model": model, "output": partial, "type": "Q8_0", "allow_requantize": true});
        let running = reg.insert_job("quantize", &job).unwrap();
        reg.start_job(running, &[partial.display().to_string()]).unwrap();
        let queued = reg.insert_job("inspect", &json!({"kind": "inspect", "path": model})).unwrap();
        reg.connection().execute("UPDATE jobs SET owner_pid = ?1, owner_start = 'gone'", [dead]).unwrap();
        (running, queued)
    };
    std::fs::write(out.join(".x.gguf.crunch-tmp-1234-0"), b"half").unwrap();
    std::fs::write(&partial, b"partial").unwrap();
    std::fs::write(out.join("keep.gguf"), b"someone else's").unwrap();

    let config = crunch_server::Config::new(vec![models, smollm2_root()], out.clone(), db);
    let state = crunch_server::AppState::new(config).unwrap();
    let s = common::Server {
        app: crunch_server::app(state.clone()),
        state,
        dir,
        models: std::path::PathBuf::new(),
        out: out.clone(),
        registry: std::path::PathBuf::new(),
    };
    let j = s.get(&format!("/v1/jobs/{running}")).await.json();
    assert_eq!(j["state"], "failed");
    assert_eq!(j["error"], "server stopped");
    let left: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec!["keep.gguf".to_string()]);
    let q = s.wait_for(queued, 60, |j| j["state"] == "succeeded" || j["state"] == "failed").await;
    assert_eq!(q["state"], "succeeded", "{q}");
    assert_eq!(s.get("/v1/jobs").await.json().as_array().unwrap().len(), 2);
}

/// A fine-tuning job over HTTP reports its updates as progress; cancelled while it trains it keeps
/// its checkpoint (and writes no adapter), and the same job resubmitted with `resume` finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_training_job_keeps_its_checkpoint_and_resumes() {
    let text = crunch_testkit::wikitext_dev();
    let s = server_with(vec![smollm2_root(), text.parent().unwrap().to_path_buf()], |_| {});
    let model = crunch_testkit::smollm2_gguf();
    let job = |steps: u64, resume: bool| {
        json!({"kind": "finetune", "model": model, "text": text, "output": "ft/ft.gguf", "checkpoint": "ft/run.ckpt",
               "rank": 2, "ctx": 32, "chunks": 4, "skip_chunks": 300, "steps": steps, "checkpoint_every": 1,
               "tensors": "^blk\\.0\\.", "resume": resume})
    };
    let r = s.post("/v1/jobs", &job(400, false)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.json()["id"].as_i64().unwrap();
    let running = s
        .wait_for(id, 300, |j| {
            (j["state"] != "queued" && j["state"] != "running")
                || (j["progress"]["stage"] == "finetune" && j["progress"]["done"].as_u64().unwrap_or(0) >= 2)
        })
        .await;
    assert_eq!(running["state"], "running", "{running}");
    assert!(running["progress"]["item"].as_str().unwrap().contains("tok/s"), "{running}");
    let r = s.call("DELETE", &format!("/v1/jobs/{id}"), None, None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let end = s.wait_for(id, 120, |j| j["state"] != "running").await;
    assert_eq!(end["state"], "canceled", "{end}");
    assert!(s.out.join("ft/run.ckpt").is_file(), "the checkpoint is kept");
    assert!(!s.out.join("ft/ft.gguf").exists(), "no adapter from a cancelled run");

    let r = s.post("/v1/jobs", &job(3, true)).await;
    let id = r.json()["id"].as_i64().unwrap();
    let end = s.wait_for(id, 300, |j| j["state"] != "queued" && j["state"] != "running").await;
    assert_eq!(end["state"], "succeeded", "{end}");
    assert!(end["result"]["result"]["resumed_at"].as_u64().unwrap() >= 2, "{end}");
    assert!(s.out.join("ft/ft.gguf").is_file());
}
