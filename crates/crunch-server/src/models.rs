//! `GET /v1/models`: the models under the roots (GGUF files, safetensors files, Hugging Face
//! folders) with a short summary from `crunch::inspect::inspect_any`, cached by path, size and
//! modification time so a listing does not re-read headers that did not change.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Folder levels searched below each root.
pub const MAX_DEPTH: usize = 4;
/// Models listed at most.
pub const MAX_MODELS: usize = 500;

/// One model file or folder.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// The path to give in a job (absolute, inside a root).
    pub path: String,
    /// The path below its root.
    pub relative: String,
    /// `models` (a `--models` root) or `out` (written by a job).
    pub root: String,
    /// `gguf`, `safetensors` or `hf` (a Hugging Face folder).
    pub format: String,
    pub file_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub n_tensors: usize,
    pub n_elements: u64,
    /// Bits per weight of the tensors.
    pub bpw: f64,
    /// Tensor count per type.
    pub types: BTreeMap<String, usize>,
    /// Why the file could not be read (the other fields are then empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

type Key = (u64, Option<SystemTime>);

/// Summaries by path, valid while the size and modification time stay the same.
#[derive(Default)]
pub struct ModelCache(Mutex<HashMap<PathBuf, (Key, ModelInfo)>>);

fn key_of(p: &Path) -> Key {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => {
            // A folder changes when a file in it does: sum sizes, newest modification.
            let mut bytes = 0;
            let mut newest = m.modified().ok();
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    if let Ok(m) = e.metadata() {
                        bytes += m.len();
                        newest = newest.max(m.modified().ok());
                    }
                }
            }
            (bytes, newest)
        }
        Ok(m) => (m.len(), m.modified().ok()),
        Err(_) => (0, None),
    }
}

fn summarize(path: &Path, relative: String, root: &str, format: &str) -> ModelInfo {
    let mut info = ModelInfo {
        path: path.display().to_string(),
        relative,
        root: root.to_string(),
        format: format.to_string(),
        file_bytes: 0,
        architecture: None,
        name: None,
        n_tensors: 0,
        n_elements: 0,
        bpw: 0.0,
        types: BTreeMap::new(),
        error: None,
    };
    match crunch::inspect::inspect_any(path) {
        Ok(ins) => {
            let s = |k: &str| ins.metadata.get(k).and_then(|v| v.as_str()).map(str::to_string);
            info.file_bytes = ins.file_bytes;
            info.architecture = s("general.architecture").or_else(|| s("architecture")).or_else(|| s("model_type"));
            info.name = s("general.name");
            info.n_tensors = ins.tensors.len();
            info.n_elements = ins.n_elements;
            info.bpw = ins.bpw;
            info.types = ins.types.into_iter().collect();
        }
        Err(e) => info.error = Some(e.to_string()),
    }
    if info.architecture.is_none() && path.is_dir() {
        // A Hugging Face folder names its architecture in config.json.
        let cfg = std::fs::read(path.join("config.json")).ok();
        let cfg: Option<serde_json::Value> = cfg.and_then(|b| serde_json::from_slice(&b).ok());
        info.architecture = cfg.and_then(|c| c.get("model_type")?.as_str().map(str::to_string));
    }
    info
}

/// Model files and folders below `dir`: (path, format).
fn find(dir: &Path, depth: usize, found: &mut Vec<(PathBuf, &'static str)>) {
    if found.len() >= MAX_MODELS {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            if p.join("config.json").is_file() && has_safetensors(&p) {
                found.push((p, "hf"));
            } else if depth > 0 {
                find(&p, depth - 1, found);
            }
        } else if name.ends_with(".gguf") {
            found.push((p, "gguf"));
        } else if name.ends_with(".safetensors") {
            found.push((p, "safetensors"));
        }
        if found.len() >= MAX_MODELS {
            return;
        }
    }
}

fn has_safetensors(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".safetensors")))
        .unwrap_or(false)
}

impl ModelCache {
    /// Every model under `models` roots and the `out` root (blocking: reads headers).
    pub fn list(&self, models: &[PathBuf], out: &Path) -> Vec<ModelInfo> {
        let mut all = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let roots = models.iter().map(|m| (m.as_path(), "models")).chain(std::iter::once((out, "out")));
        for (root, label) in roots {
            let mut found = Vec::new();
            find(root, MAX_DEPTH, &mut found);
            for (p, format) in found {
                if !seen.insert(p.clone()) {
                    continue;
                }
                let key = key_of(&p);
                let cached = {
                    let c = self.0.lock().unwrap_or_else(|e| e.into_inner());
                    c.get(&p).filter(|(k, _)| *k == key).map(|(_, i)| i.clone())
                };
                let info = cached.unwrap_or_else(|| {
                    let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
                    let info = summarize(&p, rel, label, format);
                    self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(p.clone(), (key, info.clone()));
                    info
                });
                all.push(info);
            }
        }
        // Forget files that are gone, so the cache stays as large as the listing.
        let listed: std::collections::HashSet<PathBuf> = all.iter().map(|i| PathBuf::from(&i.path)).collect();
        self.0.lock().unwrap_or_else(|e| e.into_inner()).retain(|p, _| listed.contains(p));
        all
    }
}
