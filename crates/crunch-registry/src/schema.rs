//! Versioned schema migrations. The database's `PRAGMA user_version` is the number of migrations
//! applied; opening a database applies the missing ones in one immediate transaction, so two
//! processes opening a fresh file at once cannot both migrate it.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{RegistryError, Result};

/// Migration `i` brings the schema from version `i` to `i + 1`. Never edit a released entry:
/// append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: runs and what hangs off them.
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed')),
        label TEXT,
        parent_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        heartbeat_at REAL NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        pid_start TEXT,
        crunch_version TEXT NOT NULL,
        machine TEXT NOT NULL,
        command TEXT NOT NULL,
        params TEXT NOT NULL,
        output_path TEXT,
        output_sha256 TEXT,
        output_bytes INTEGER,
        peak_rss_bytes INTEGER,
        error TEXT
    );
    CREATE INDEX runs_by_kind ON runs(kind, started_at);
    CREATE INDEX runs_by_status ON runs(status);
    CREATE TABLE run_inputs (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT,
        bytes INTEGER
    );
    CREATE INDEX run_inputs_by_run ON run_inputs(run_id);
    CREATE TABLE run_metrics (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE run_tensors (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        n_elements INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        predicted_kld REAL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE run_data (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (run_id, key)
    );",
    // 2: content hashes of files, keyed by path + size + modification time, so an input is hashed
    // once per version rather than on every run.
    "CREATE TABLE file_hashes (
        path TEXT PRIMARY KEY,
        bytes INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL
    );",
    // 3: jobs a server accepted (see jobs.rs), owned by the process that runs them.
    "CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        job TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
        progress TEXT,
        result TEXT,
        error TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
        new_outputs TEXT,
        owner_host TEXT NOT NULL,
        owner_pid INTEGER NOT NULL,
        owner_start TEXT
    );
    CREATE INDEX jobs_by_state ON jobs(state);
    CREATE INDEX jobs_by_kind ON jobs(kind, id);",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Bring `conn` up to [`SCHEMA_VERSION`].
///
/// # Errors
/// A database written by a newer crunch (higher version), or SQL errors.
pub fn migrate(conn: &mut Connection) -> Result<u32> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let have: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if have > SCHEMA_VERSION {
        return Err(RegistryError::TooNew { found: have, supported: SCHEMA_VERSION });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        tx.execute_batch(sql).map_err(|e| RegistryError::Migration { version: i as u32 + 1, source: e })?;
    }
    if have < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(have)
}
