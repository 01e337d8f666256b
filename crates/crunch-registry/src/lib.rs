//! crunch-registry: every convert / quantize / fit / eval / search run in one SQLite file.
//!
//! Key decisions:
//! - **SQLite in WAL mode, one short immediate transaction per write**, with a busy timeout, so
//!   several crunch processes can record runs at once and a process killed mid-write leaves the
//!   database consistent (SQLite's journal rolls the half-done transaction back on next open).
//! - **A run is a row from its start** (`status = 'running'`, with host, pid and the pid's start
//!   time, and a heartbeat refreshed in the background). [`RunGuard`] marks it `ok` on
//!   [`RunGuard::finish`] and `failed` on [`RunGuard::fail`] or when dropped unfinished (error,
//!   panic). A process that is killed cannot do either, so opening the registry marks `running`
//!   rows whose process is gone (same host: pid no longer running that process; other hosts:
//!   heartbeat older than [`STALE_AFTER_SECS`]) as failed.
//! - **Versioned migrations** (`PRAGMA user_version`), see [`schema`].
//! - **Jobs a server accepted** ([`jobs`]) live beside the runs, each owned by the process that
//!   runs it, so a restarted server finds the jobs of a server that died.
//!
//! ```no_run
//! use crunch_registry::{Registry, NewRun};
//! let reg = Registry::open(Registry::default_path()).unwrap();
//! let run = reg.start_run(NewRun::new("quantize")).unwrap();
//! run.finish(&[("file_bytes", 1.0e8)]).unwrap();
//! ```

#![forbid(unsafe_code)]

pub mod error;
pub mod jobs;
pub mod process;
mod query;
mod run;
pub mod schema;

pub use error::{RegistryError, Result};
pub use jobs::{Adopted, JobFilter, JobRecord, JobState};
pub use query::{Filter, RunRecord, RunSummary};
pub use run::{InputFile, NewRun, OutputFile, RunGuard, TensorChoice};

use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A `running` row from another host whose heartbeat is older than this is taken as dead.
pub const STALE_AFTER_SECS: f64 = 600.0;
/// How often a live run refreshes its heartbeat.
pub const HEARTBEAT_SECS: u64 = 30;
/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Status of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Ok,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> RunStatus {
        match s {
            "ok" => RunStatus::Ok,
            "running" => RunStatus::Running,
            _ => RunStatus::Failed,
        }
    }
}

/// An open registry.
pub struct Registry {
    path: PathBuf,
    conn: Connection,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("path", &self.path).finish()
    }
}

/// Open a connection with crunch's settings (WAL, busy timeout, foreign keys).
pub(crate) fn connect(path: &Path) -> Result<Connection> {
    let open_err = |source| RegistryError::Open { path: path.to_path_buf(), source };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::debug!("registry {}: journal mode is {mode}, not WAL", path.display());
    }
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", true).map_err(open_err)?;
    Ok(conn)
}

impl Registry {
    /// Where runs are recorded unless told otherwise: `$CRUNCH_REGISTRY`, else
    /// `$XDG_DATA_HOME/crunch/registry.db`, else `~/.local/share/crunch/registry.db`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("CRUNCH_REGISTRY").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let data =
            std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()).map(PathBuf::from).unwrap_or_else(|| {
                std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".local/share")
            });
        data.join("crunch").join("registry.db")
    }

    /// Open (creating if needed) the registry at `path`, migrate its schema and mark runs whose
    /// process died as failed.
    ///
    /// # Errors
    /// The folder cannot be created, the file is not a SQLite database or is newer than this
    /// crunch, or the database is locked for longer than the busy timeout.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| RegistryError::Folder { path: path.clone(), source })?;
        }
        let mut conn = connect(&path)?;
        schema::migrate(&mut conn)?;
        let reg = Registry { path, conn };
        let n = reg.reap_stale()?;
        if n > 0 {
            tracing::info!("registry: marked {n} interrupted run(s) as failed");
        }
        Ok(reg)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying connection (for read-only queries of your own).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Mark `running` rows whose process is gone as failed; returns how many.
    ///
    /// # Errors
    /// SQL errors.
    pub fn reap_stale(&self) -> Result<usize> {
        let host = process::hostname();
        let now = process::now();
        let mut stmt =
            self.conn.prepare("SELECT id, host, pid, pid_start, heartbeat_at FROM runs WHERE status = 'running'")?;
        let rows: Vec<(i64, String, u32, Option<String>, f64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut n = 0;
        for (id, h, pid, start, beat) in rows {
            let dead = if h == host {
                match process::is_alive(pid, start.as_deref()) {
                    Some(alive) => !alive,
                    None => now - beat > STALE_AFTER_SECS,
                }
            } else {
                now - beat > STALE_AFTER_SECS
            };
            if dead {
                let msg = if h == host {
                    format!("interrupted: process {pid} on {h} ended without finishing the run")
                } else {
                    format!("interrupted: no heartbeat from process {pid} on {h} for over {STALE_AFTER_SECS:.0} s")
                };
                n += self.conn.execute(
                    "UPDATE runs SET status = 'failed', error = ?2, finished_at = heartbeat_at
                     WHERE id = ?1 AND status = 'running'",
                    params![id, msg],
                )?;
            }
        }
        Ok(n)
    }

    /// Start recording a run: its row exists (status `running`) from now on.
    ///
    /// # Errors
    /// SQL errors (e.g. the database is locked past the busy timeout).
    pub fn start_run(&self, new: NewRun) -> Result<RunGuard> {
        run::start(&self.path, new)
    }

    /// `PRAGMA integrity_check`: `Ok(())` when the database is sound.
    ///
    /// # Errors
    /// [`RegistryError::Corrupt`] with SQLite's findings.
    pub fn integrity_check(&self) -> Result<()> {
        let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
        let msgs: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        if msgs.len() == 1 && msgs[0] == "ok" {
            Ok(())
        } else {
            Err(RegistryError::Corrupt(msgs.join("; ")))
        }
    }

    /// The content hash recorded for `path` at this size and modification time, if any.
    ///
    /// # Errors
    /// SQL errors.
    pub fn cached_hash(&self, path: &str, bytes: u64, mtime_ns: i64) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT sha256 FROM file_hashes WHERE path = ?1 AND bytes = ?2 AND mtime_ns = ?3",
                params![path, bytes as i64, mtime_ns],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Remember the content hash of `path` at this size and modification time.
    ///
    /// # Errors
    /// SQL errors.
    pub fn store_hash(&self, path: &str, bytes: u64, mtime_ns: i64, sha256: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO file_hashes (path, bytes, mtime_ns, sha256) VALUES (?1, ?2, ?3, ?4)",
            params![path, bytes as i64, mtime_ns, sha256],
        )?;
        Ok(())
    }
}
