//! The HTTP API in-process (no socket): validation (400 naming the field), confinement (403),
//! authentication (401), the queue bound (429), and the read-only endpoints.

mod common;

use axum::http::StatusCode;
use common::{server, server_with, smollm2_root};
use serde_json::json;

#[tokio::test]
async fn healthz_is_open() {
    let s = server_with(Vec::new(), |c| {
        c.token = Some("s3cret".into());
        c.require_token = true;
    });
    let r = s.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "ok");
}

#[tokio::test]
async fn malformed_json_and_wrong_fields_are_400_naming_the_field() {
    let s = server();
    let r = s.call("POST", "/v1/jobs", Some("{\"kind\": \"quantize\", "), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("EOF"), "{}", r.text());

    let r = s
        .post(
            "/v1/jobs",
            &json!({"kind": "quantize", "model": "m.gguf", "output": "o.gguf", "type": "Q8_0", "bogus": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("bogus"), "{}", r.text());

    let r = s.post("/v1/jobs", &json!({"kind": "perplexity", "model": "m.gguf", "text": "t.txt", "ctx": "many"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let body = r.json();
    assert_eq!(body["field"], "ctx", "{body}");
    assert!(body["error"].as_str().unwrap().contains("ctx"), "{body}");

    let r = s.post("/v1/jobs", &json!({"kind": "quantize", "output": "o.gguf", "type": "Q8_0"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("model"), "{}", r.text());

    let r = s.post("/v1/jobs", &json!({"kind": "teleport"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("teleport"), "{}", r.text());

    let r = s.post("/v1/estimate", &json!({"model": "m.gguf", "type": "Q8_0", "ctxx": 5})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("ctxx"), "{}", r.text());
}

#[tokio::test]
async fn paths_outside_the_roots_are_403() {
    let s = server();
    std::fs::write(s.models.join("m.gguf"), b"not really").unwrap();
    let secret = s.dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("key.gguf"), b"x").unwrap();
    std::os::unix::fs::symlink(&secret, s.models.join("link")).unwrap();

    let cases = [
        (json!({"kind": "inspect", "path": "../secret/key.gguf"}), "path"),
        (json!({"kind": "inspect", "path": "../../../../../../etc/passwd"}), "path"),
        (json!({"kind": "inspect", "path": "/etc/passwd"}), "path"),
        (json!({"kind": "inspect", "path": secret.join("key.gguf")}), "path"),
        (json!({"kind": "inspect", "path": "link/key.gguf"}), "path"),
        (json!({"kind": "quantize", "model": "m.gguf", "output": "../escaped.gguf", "type": "Q8_0"}), "output"),
        (json!({"kind": "quantize", "model": "m.gguf", "output": "/tmp/escaped.gguf", "type": "Q8_0"}), "output"),
        (json!({"kind": "quantize", "model": "link/key.gguf", "output": "x.gguf", "type": "Q8_0"}), "model"),
        (json!({"kind": "quantize", "model": "m.gguf", "output": s.models.join("m2.gguf"), "type": "Q8_0"}), "output"),
        (
            json!({"kind": "perplexity", "model": "m.gguf", "text": "m.gguf", "lora": [{"path": "../secret/key.gguf"}]}),
            "lora",
        ),
        (
            json!({"kind": "bench", "model": "m.gguf", "lora": [{"path": "m.gguf"}, {"path": secret.join("key.gguf")}]}),
            "lora",
        ),
    ];
    for (job, field) in cases {
        let r = s.post("/v1/jobs", &job).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{job}: {}", r.text());
        assert_eq!(r.json()["field"], field, "{job}: {}", r.text());
    }
    // A symlink in the out folder pointing out of it.
    std::os::unix::fs::symlink(&secret, s.out.join("escape")).unwrap();
    let r = s
        .post("/v1/jobs", &json!({"kind": "quantize", "model": "m.gguf", "output": "escape/x.gguf", "type": "Q8_0"}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    // Nothing was created outside the roots.
    assert!(!s.dir.path().join("escaped.gguf").exists());
    assert_eq!(std::fs::read_dir(&secret).unwrap().count(), 1);
    // A path inside the roots that does not exist is a 400, not a 403.
    let r = s.post("/v1/jobs", &json!({"kind": "inspect", "path": "missing.gguf"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["field"], "path");
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let s = server_with(Vec::new(), |c| {
        c.token = Some("s3cret".into());
        c.require_token = true;
    });
    for uri in ["/v1/jobs", "/v1/formats", "/v1/models", "/metrics", "/v1/runs"] {
        let r = s.get(uri).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(r.headers.contains_key("www-authenticate"));
        let r = s.call("GET", uri, None, Some("wrong")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        let r = s.call("GET", uri, None, Some("s3cret")).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text());
    }
    let r = s.post("/v1/jobs", &json!({"kind": "inspect", "path": "x"})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[test]
fn a_non_loopback_listener_needs_a_token_file() {
    let mut o = crunch_server::ServeOptions::new(
        "0.0.0.0:8080".parse().unwrap(),
        vec![std::env::temp_dir()],
        std::env::temp_dir(),
        std::env::temp_dir().join("r.db"),
    );
    assert!(crunch_server::Config::from_options(&o).is_err());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "abc\n").unwrap();
    o.token_file = Some(dir.path().join("token"));
    let c = crunch_server::Config::from_options(&o).unwrap();
    assert!(c.require_token);
    assert_eq!(c.token.as_deref(), Some("abc"));
    o.listen = "127.0.0.1:8080".parse().unwrap();
    o.token_file = None;
    assert!(!crunch_server::Config::from_options(&o).unwrap().require_token);
}

#[tokio::test]
async fn a_full_queue_is_429_with_retry_after() {
    let s = server_with(Vec::new(), |c| c.queue = 0);
    std::fs::write(s.models.join("m.gguf"), b"x").unwrap();
    let r = s.post("/v1/jobs", &json!({"kind": "inspect", "path": "m.gguf"})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert!(r.headers.get("retry-after").unwrap().to_str().unwrap().parse::<u64>().unwrap() > 0);
}

#[tokio::test]
async fn bodies_are_capped() {
    let s = server();
    let big = format!("{{\"kind\":\"verify\",\"files\":[\"{}\"]}}", "a".repeat(crunch_server::MAX_BODY_BYTES + 10));
    let r = s.call("POST", "/v1/jobs", Some(&big), None).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_light_job_runs_and_its_events_end_with_the_result() {
    let s = server_with(vec![smollm2_root()], |_| {});
    let model = crunch_testkit::smollm2_gguf();
    let r = s.post("/v1/jobs", &json!({"kind": "inspect", "path": model})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.json()["id"].as_i64().unwrap();
    assert_eq!(r.headers["location"], format!("/v1/jobs/{id}"));
    let events = s.get(&format!("/v1/jobs/{id}/events")).await;
    assert_eq!(events.status, StatusCode::OK);
    let ev = common::parse_events(&events.text());
    let (name, last) = ev.last().unwrap();
    assert_eq!(name, "result", "{}", events.text());
    assert_eq!(last["state"], "succeeded", "{last}");
    assert_eq!(last["result"]["format"], "gguf");
    // Listed, and gone from memory but not from the registry.
    let list = s.get("/v1/jobs").await.json();
    assert_eq!(list[0]["id"], id);
    let again = s.get(&format!("/v1/jobs/{id}")).await.json();
    assert_eq!(again["state"], "succeeded");
    assert_eq!(s.get("/v1/jobs/999999").await.status, StatusCode::NOT_FOUND);
    assert_eq!(s.call("DELETE", &format!("/v1/jobs/{id}"), None, None).await.status, StatusCode::CONFLICT);
    let m = s.get("/metrics").await.text();
    assert!(m.contains("crunch_jobs{kind=\"inspect\",state=\"succeeded\"} 1"), "{m}");
    assert!(m.contains("crunch_read_bytes_total "), "{m}");
}

#[tokio::test]
async fn formats_list_every_type_and_preset() {
    let s = server();
    let f = s.get("/v1/formats").await.json();
    let types = f["types"].as_array().unwrap();
    let q4k = types.iter().find(|t| t["name"] == "Q4_K").unwrap();
    assert_eq!(q4k["block_size"], 256);
    assert_eq!(q4k["bytes_per_block"], 144);
    assert_eq!(q4k["bits_per_weight"], 4.5);
    assert_eq!(q4k["quantize"], true);
    assert_eq!(types.len(), crunch_core::GgmlType::ALL.len());
    let presets = f["presets"].as_array().unwrap();
    let m = presets.iter().find(|p| p["name"] == "Q4_K_M").unwrap();
    assert_eq!(m["default_type"], "Q4_K");
    assert_eq!(m["code"], 15);
}

#[tokio::test]
async fn estimate_plans_without_writing() {
    let s = server_with(vec![smollm2_root()], |_| {});
    let model = crunch_testkit::smollm2_gguf();
    let r = s.post("/v1/estimate", &json!({"model": model, "type": "Q8_0", "ctx": 2048})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let e = r.json();
    assert!(e["file_bytes"].as_u64().unwrap() > 100_000_000, "{e}");
    assert!((8.0..9.0).contains(&e["bpw"].as_f64().unwrap()), "{e}");
    assert_eq!(e["ram"]["n_ctx"], 2048);
    assert!(e["ram"]["total"].as_u64().unwrap() > e["file_bytes"].as_u64().unwrap());
    assert!(e.get("plan").is_none());
    let q4 = s.post("/v1/estimate", &json!({"model": model, "type": "q4_k_m", "tensors": true})).await.json();
    assert!(q4["file_bytes"].as_u64() < e["file_bytes"].as_u64(), "{q4}");
    assert!(q4["plan"]["tensors"].as_array().unwrap().len() > 100);
    let r = s.post("/v1/estimate", &json!({"model": model, "type": "Q9_Z"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["field"], "type");
    let r = s.post("/v1/estimate", &json!({"model": model, "type": "Q8_0", "tensor_types": ["attn_v=Q77"]})).await;
    assert_eq!(r.json()["field"], "tensor_types[0]", "{}", r.text());
    let r = s.post("/v1/estimate", &json!({"model": "/etc/passwd", "type": "Q8_0"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(common::files_under(&s.out).len(), 0);
}

#[tokio::test]
async fn models_are_listed_with_a_summary() {
    let minilm = crunch_testkit::minilm_dir();
    let s = server_with(vec![smollm2_root(), minilm.parent().unwrap().to_path_buf()], |_| {});
    std::fs::write(s.models.join("broken.gguf"), b"GGUF but not really").unwrap();
    let list = s.get("/v1/models").await.json();
    let list = list.as_array().unwrap();
    let smol = list.iter().find(|m| m["path"].as_str().unwrap().ends_with("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    assert_eq!(smol["format"], "gguf");
    assert_eq!(smol["architecture"], "llama");
    assert!(smol["n_tensors"].as_u64().unwrap() > 100);
    assert!(smol["types"]["Q4_1"].as_u64().unwrap() > 0);
    let hf = list.iter().find(|m| m["format"] == "hf").expect("the MiniLM folder");
    assert_eq!(hf["architecture"], "bert", "{hf}");
    assert!(hf["n_tensors"].as_u64().unwrap() > 50, "{hf}");
    let broken = list.iter().find(|m| m["relative"] == "broken.gguf").unwrap();
    assert!(broken["error"].is_string());
}

#[tokio::test]
async fn openapi_document_describes_the_handlers() {
    let s = server();
    let doc = s.get("/openapi.json").await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/events",
        "/v1/formats",
        "/v1/estimate",
        "/v1/models",
        "/v1/runs",
        "/v1/runs/{id}",
        "/v1/report",
        "/healthz",
        "/metrics",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing");
    }
    assert!(doc["paths"]["/v1/jobs"]["post"]["responses"].get("429").is_some());
    assert_eq!(
        doc["components"]["schemas"]["Job"]["properties"]["kind"]["enum"].as_array().unwrap().len(),
        crunch::job::KINDS.len()
    );
    let listed: Vec<&str> = doc["components"]["schemas"]["Job"]["properties"]["kind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for k in crunch::job::KINDS {
        assert!(listed.contains(&k), "the OpenAPI document does not list the job kind {k}");
    }
}

#[tokio::test]
async fn registry_report_dashboard_and_metrics_answer() {
    let s = server();
    assert_eq!(s.get("/v1/runs").await.json(), json!([]));
    assert_eq!(s.get("/v1/runs/5").await.status, StatusCode::NOT_FOUND);
    let r = s.get("/v1/report").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("<html"));
    assert_eq!(s.get("/v1/report?format=json").await.json()["title"], "crunch report");
    let d = s.get("/").await;
    assert_eq!(d.status, StatusCode::OK);
    assert!(d.text().contains("EventSource"));
    let m = s.get("/metrics").await;
    assert!(m.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let m = m.text();
    for name in [
        "crunch_queue_depth 0",
        "# TYPE crunch_job_duration_seconds histogram",
        "# TYPE crunch_written_bytes_total counter",
        "# TYPE crunch_eval_tokens_per_second gauge",
        "crunch_process_resident_memory_bytes ",
    ] {
        assert!(m.contains(name), "{name} missing:\n{m}");
    }
}

#[tokio::test]
async fn event_streams_are_capped() {
    use tower::ServiceExt;
    let s = server_with(vec![smollm2_root()], |c| c.max_event_streams = 1);
    let r = s.post("/v1/jobs", &json!({"kind": "inspect", "path": crunch_testkit::smollm2_gguf()})).await;
    let id = r.json()["id"].as_i64().unwrap();
    s.wait_for(id, 60, |j| j["state"] == "succeeded").await;
    let req = || axum::http::Request::get(format!("/v1/jobs/{id}/events")).body(axum::body::Body::empty()).unwrap();
    // The first stream is open (its body not read yet): the second is refused.
    let held = s.app.clone().oneshot(req()).await.unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    let refused = s.app.clone().oneshot(req()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    drop(held);
    assert_eq!(s.app.clone().oneshot(req()).await.unwrap().status(), StatusCode::OK);
}
