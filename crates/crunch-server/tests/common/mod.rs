//! Shared by the server tests: a server over scratch folders, driven in-process.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use crunch_server::{app, AppState, Config};
use http_body_util::BodyExt;
use std::path::PathBuf;
use tower::ServiceExt;

pub struct Server {
    pub app: Router,
    pub state: AppState,
    pub dir: tempfile::TempDir,
    pub models: PathBuf,
    pub out: PathBuf,
    pub registry: PathBuf,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The folder holding the real SmolLM2 GGUF (a models root, so the model is inside it).
pub fn smollm2_root() -> PathBuf {
    crunch_testkit::smollm2_gguf().parent().unwrap().to_path_buf()
}

/// A server over a scratch models folder (plus `extra_models` roots) and out folder.
pub fn server_with(extra_models: Vec<PathBuf>, tweak: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&models).unwrap();
    let registry = dir.path().join("registry.db");
    let mut roots = vec![models.clone()];
    roots.extend(extra_models);
    let mut config = Config::new(roots, out.clone(), registry.clone());
    tweak(&mut config);
    let state = AppState::new(config).unwrap();
    let out = out.canonicalize().unwrap();
    let models = models.canonicalize().unwrap();
    Server { app: app(state.clone()), state, dir, models, out, registry }
}

pub fn server() -> Server {
    server_with(Vec::new(), |_| {})
}

impl Server {
    pub async fn call(&self, method: &str, uri: &str, body: Option<&str>, token: Option<&str>) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
        Reply { status, headers, body }
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call("GET", uri, None, None).await
    }

    pub async fn post(&self, uri: &str, body: &serde_json::Value) -> Reply {
        self.call("POST", uri, Some(&body.to_string()), None).await
    }

    /// Poll job `id` until `done` says so (at most `secs` seconds).
    pub async fn wait_for(&self, id: i64, secs: u64, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let j = self.get(&format!("/v1/jobs/{id}")).await.json();
            if done(&j) {
                return j;
            }
            assert!(std::time::Instant::now() < deadline, "job {id} did not get there in {secs} s: {j}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// The server-sent events of a finished stream: (event, data as JSON).
pub fn parse_events(text: &str) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = String::from("message");
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim_start());
            }
        }
        if !data.is_empty() {
            out.push((event, serde_json::from_str(&data).unwrap()));
        }
    }
    out
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(files_under(&p));
                v.push(p);
            } else {
                v.push(p);
            }
        }
    }
    v
}
