//! Recording one run: [`NewRun`] describes it, [`RunGuard`] keeps its row up to date and closes it.

use rusqlite::{params, Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::Result;
use crate::{connect, process, HEARTBEAT_SECS};

/// A file a run read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputFile {
    /// What the file is to the run: `model`, `base`, `imatrix`, `calibration`, `recipes`…
    pub role: String,
    pub path: String,
    pub sha256: Option<String>,
    pub bytes: Option<u64>,
}

/// The file a run wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputFile {
    pub path: String,
    pub sha256: Option<String>,
    pub bytes: Option<u64>,
}

/// One tensor of a run's plan: the type it was written as.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorChoice {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub n_elements: u64,
    pub bytes: u64,
    /// The fit's predicted KL-divergence contribution of this choice, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_kld: Option<f64>,
}

/// What is known about a run when it starts.
#[derive(Clone, Debug, Default)]
pub struct NewRun {
    /// `convert`, `quantize`, `fit`, `eval`, `search`…
    pub kind: String,
    /// A short name shown in listings (a recipe name, a preset).
    pub label: Option<String>,
    /// The run that started this one (a search's candidates point to the search).
    pub parent: Option<i64>,
    /// The command line (defaults to this process's arguments).
    pub command: Option<Vec<String>>,
    /// The run's parameters / recipe as JSON.
    pub params: serde_json::Value,
    pub inputs: Vec<InputFile>,
}

impl NewRun {
    pub fn new(kind: &str) -> Self {
        NewRun { kind: kind.to_string(), params: serde_json::Value::Null, ..Default::default() }
    }
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
    pub fn parent(mut self, parent: Option<i64>) -> Self {
        self.parent = parent;
        self
    }
    pub fn params(mut self, params: serde_json::Value) -> Self {
        self.params = params;
        self
    }
    pub fn input(mut self, role: &str, path: impl AsRef<Path>, sha256: Option<String>, bytes: Option<u64>) -> Self {
        self.inputs.push(InputFile { role: role.into(), path: path.as_ref().display().to_string(), sha256, bytes });
        self
    }
}

/// A run being recorded. Dropping it without [`finish`](RunGuard::finish) marks the run failed.
pub struct RunGuard {
    id: i64,
    path: PathBuf,
    conn: Connection,
    done: bool,
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunGuard").field("id", &self.id).field("path", &self.path).finish()
    }
}

pub(crate) fn start(path: &Path, new: NewRun) -> Result<RunGuard> {
    let mut conn = connect(path)?;
    let now = process::now();
    let command = new.command.unwrap_or_else(|| std::env::args().collect());
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO runs (kind, status, label, parent_id, started_at, heartbeat_at, host, pid, pid_start,
                           crunch_version, machine, command, params)
         VALUES (?1, 'running', ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            new.kind,
            new.label,
            new.parent,
            now,
            process::hostname(),
            std::process::id(),
            process::self_start_token(),
            env!("CARGO_PKG_VERSION"),
            process::machine().to_string(),
            serde_json::to_string(&command).unwrap_or_default(),
            new.params.to_string(),
        ],
    )?;
    let id = tx.last_insert_rowid();
    for i in &new.inputs {
        tx.execute(
            "INSERT INTO run_inputs (run_id, role, path, sha256, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, i.role, i.path, i.sha256, i.bytes.map(|b| b as i64)],
        )?;
    }
    tx.commit()?;
    let (stop, rx) = mpsc::channel::<()>();
    let hb_path = path.to_path_buf();
    let heartbeat = std::thread::Builder::new()
        .name(format!("registry-heartbeat-{id}"))
        .spawn(move || {
            let Ok(conn) = connect(&hb_path) else { return };
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(HEARTBEAT_SECS)) {
                let _ = conn.execute(
                    "UPDATE runs SET heartbeat_at = ?2 WHERE id = ?1 AND status = 'running'",
                    params![id, process::now()],
                );
            }
        })
        .ok();
    Ok(RunGuard { id, path: path.to_path_buf(), conn, done: false, stop: Some(stop), heartbeat })
}

impl RunGuard {
    /// The run's id in the registry.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The registry file.
    pub fn registry_path(&self) -> &Path {
        &self.path
    }

    /// Replace the run's parameters / recipe.
    ///
    /// # Errors
    /// SQL errors.
    pub fn set_params(&self, params: &serde_json::Value) -> Result<()> {
        self.conn.execute("UPDATE runs SET params = ?2 WHERE id = ?1", params![self.id, params.to_string()])?;
        Ok(())
    }

    /// Set the run's label.
    ///
    /// # Errors
    /// SQL errors.
    pub fn set_label(&self, label: &str) -> Result<()> {
        self.conn.execute("UPDATE runs SET label = ?2 WHERE id = ?1", params![self.id, label])?;
        Ok(())
    }

    /// Record another input file.
    ///
    /// # Errors
    /// SQL errors.
    pub fn add_input(&self, input: &InputFile) -> Result<()> {
        self.conn.execute(
            "INSERT INTO run_inputs (run_id, role, path, sha256, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![self.id, input.role, input.path, input.sha256, input.bytes.map(|b| b as i64)],
        )?;
        Ok(())
    }

    /// Record the file the run wrote.
    ///
    /// # Errors
    /// SQL errors.
    pub fn set_output(&self, out: &OutputFile) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET output_path = ?2, output_sha256 = ?3, output_bytes = ?4 WHERE id = ?1",
            params![self.id, out.path, out.sha256, out.bytes.map(|b| b as i64)],
        )?;
        Ok(())
    }

    /// Record the per-tensor plan (replacing any recorded before), in one transaction.
    ///
    /// # Errors
    /// SQL errors.
    pub fn set_tensors(&mut self, tensors: &[TensorChoice]) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM run_tensors WHERE run_id = ?1", params![self.id])?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO run_tensors (run_id, seq, name, type, n_elements, bytes, predicted_kld)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (i, t) in tensors.iter().enumerate() {
                stmt.execute(params![
                    self.id,
                    i as i64,
                    t.name,
                    t.ty,
                    t.n_elements as i64,
                    t.bytes as i64,
                    t.predicted_kld
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Record metrics (insert or replace by name), in one transaction.
    ///
    /// # Errors
    /// SQL errors.
    pub fn metrics(&mut self, metrics: &[(&str, f64)]) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt =
                tx.prepare("INSERT OR REPLACE INTO run_metrics (run_id, name, value) VALUES (?1, ?2, ?3)")?;
            for (name, value) in metrics {
                if value.is_finite() {
                    stmt.execute(params![self.id, name, value])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Attach a JSON document under `key` (plan, sensitivity summary, result…).
    ///
    /// # Errors
    /// SQL errors.
    pub fn data(&self, key: &str, value: &serde_json::Value) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO run_data (run_id, key, value) VALUES (?1, ?2, ?3)",
            params![self.id, key, value.to_string()],
        )?;
        Ok(())
    }

    fn close(&mut self, status: &str, error: Option<&str>) -> Result<()> {
        self.done = true;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        let now = process::now();
        self.conn.execute(
            "UPDATE runs SET status = ?2, error = ?3, finished_at = ?4, heartbeat_at = ?4, peak_rss_bytes = ?5
             WHERE id = ?1",
            params![self.id, status, error, now, process::peak_rss_bytes().map(|b| b as i64)],
        )?;
        Ok(())
    }

    /// Record final metrics and mark the run `ok`; returns its id.
    ///
    /// # Errors
    /// SQL errors (the run is then left to be marked failed).
    pub fn finish(mut self, metrics: &[(&str, f64)]) -> Result<i64> {
        self.metrics(metrics)?;
        self.close("ok", None)?;
        Ok(self.id)
    }

    /// Mark the run failed with `error`.
    ///
    /// # Errors
    /// SQL errors.
    pub fn fail(mut self, error: &str) -> Result<()> {
        self.close("failed", Some(error))
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if !self.done {
            let msg = if std::thread::panicking() { "panicked" } else { "ended without finishing (error)" };
            if let Err(e) = self.close("failed", Some(msg)) {
                tracing::warn!("registry: could not mark run {} failed: {e}", self.id);
            }
        }
    }
}
