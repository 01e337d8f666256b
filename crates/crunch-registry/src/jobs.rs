//! Jobs a server accepted: one row per job from the moment it is accepted (`queued`) to its end
//! (`succeeded`, `failed`, `canceled`), with its JSON, last progress, result or error, and the
//! registry run it recorded.
//!
//! Each row names the process that owns it (host, pid, pid start time). A server that starts
//! [adopts](Registry::adopt_jobs) the rows of owners that are gone: their `running` jobs are
//! marked failed (the process died mid-job), their `queued` jobs become its own, to run again.
//! Rows of a live process (another server on the same registry) are left alone.

use rusqlite::{params, OptionalExtension, Row, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{RegistryError, Result};
use crate::{process, Registry};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobState {
    pub const ALL: [JobState; 5] =
        [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Canceled];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    /// The state named `s` (`None` for an unknown name).
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the job has ended (it never changes state again).
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Canceled)
    }
}

/// One job as stored.
#[derive(Clone, Debug, Serialize)]
pub struct JobRecord {
    pub id: i64,
    pub kind: String,
    /// The job as accepted (paths already resolved by the server).
    pub job: serde_json::Value,
    pub state: JobState,
    /// The last progress persisted (stage, done, total…), if any.
    pub progress: Option<serde_json::Value>,
    /// The job's outcome when it succeeded.
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    /// The registry run the job recorded.
    pub run_id: Option<i64>,
    /// Outputs that did not exist when the job started: the ones to remove if it never finishes.
    pub new_outputs: Vec<String>,
}

/// Which jobs to list.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    /// Only jobs with a smaller id (paging backwards).
    pub before: Option<i64>,
    /// At most this many, newest first (all when `None`).
    pub limit: Option<usize>,
}

/// What [`Registry::adopt_jobs`] found.
#[derive(Clone, Debug, Default)]
pub struct Adopted {
    /// Jobs that were running in a process that is gone, now failed.
    pub failed: Vec<JobRecord>,
    /// Jobs that were waiting in a process that is gone, now owned by this process, oldest first.
    pub queued: Vec<JobRecord>,
}

const COLS: &str = "id, kind, job, state, progress, result, error, created_at, started_at, finished_at, run_id,
                    new_outputs";

fn parse_json(id: i64, field: &'static str, s: Option<String>) -> Result<Option<serde_json::Value>> {
    s.map(|s| serde_json::from_str(&s).map_err(|source| RegistryError::BadJson { id, field, source })).transpose()
}

type RawJob = (
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    f64,
    Option<f64>,
    Option<f64>,
    Option<i64>,
    Option<String>,
);

fn raw(r: &Row<'_>) -> rusqlite::Result<RawJob> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
    ))
}

fn record(raw: RawJob) -> Result<JobRecord> {
    let (id, kind, job, state, progress, result, error, created_at, started_at, finished_at, run_id, new_outputs) = raw;
    let new_outputs = parse_json(id, "new_outputs", new_outputs)?
        .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
        .unwrap_or_default();
    Ok(JobRecord {
        id,
        kind,
        job: parse_json(id, "job", Some(job))?.unwrap_or_default(),
        state: JobState::parse(&state).unwrap_or(JobState::Failed),
        progress: parse_json(id, "progress", progress)?,
        result: parse_json(id, "result", result)?,
        error,
        created_at,
        started_at,
        finished_at,
        run_id,
        new_outputs,
    })
}

impl Registry {
    /// Record a job just accepted (`queued`, owned by this process); returns its id.
    ///
    /// # Errors
    /// SQL errors.
    pub fn insert_job(&self, kind: &str, job: &serde_json::Value) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO jobs (kind, job, state, created_at, owner_host, owner_pid, owner_start)
             VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6)",
            params![
                kind,
                job.to_string(),
                process::now(),
                process::hostname(),
                std::process::id(),
                process::self_start_token()
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// A queued job starts running; `new_outputs` are its outputs that do not exist yet.
    /// Returns false when the job was no longer queued (cancelled meanwhile).
    ///
    /// # Errors
    /// SQL errors.
    pub fn start_job(&self, id: i64, new_outputs: &[String]) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE jobs SET state = 'running', started_at = ?2, new_outputs = ?3
             WHERE id = ?1 AND state = 'queued'",
            params![id, process::now(), serde_json::to_string(new_outputs).unwrap_or_default()],
        )?;
        Ok(n == 1)
    }

    /// Store the job's latest progress.
    ///
    /// # Errors
    /// SQL errors.
    pub fn set_job_progress(&self, id: i64, progress: &serde_json::Value) -> Result<()> {
        self.conn.execute("UPDATE jobs SET progress = ?2 WHERE id = ?1", params![id, progress.to_string()])?;
        Ok(())
    }

    /// End a job that has not ended yet. Returns false when it had already ended.
    ///
    /// # Errors
    /// SQL errors; `state` must be final (else [`RegistryError::Corrupt`] is not raised, the
    /// row is simply not changed and false returned).
    pub fn finish_job(
        &self,
        id: i64,
        state: JobState,
        result: Option<&serde_json::Value>,
        error: Option<&str>,
        run_id: Option<i64>,
    ) -> Result<bool> {
        if !state.is_final() {
            return Ok(false);
        }
        let n = self.conn.execute(
            "UPDATE jobs SET state = ?2, result = ?3, error = ?4, run_id = ?5, finished_at = ?6
             WHERE id = ?1 AND state IN ('queued', 'running')",
            params![id, state.as_str(), result.map(|r| r.to_string()), error, run_id, process::now()],
        )?;
        Ok(n == 1)
    }

    /// Job `id`.
    ///
    /// # Errors
    /// [`RegistryError::NoSuchJob`], SQL errors, JSON columns that do not parse.
    pub fn job(&self, id: i64) -> Result<JobRecord> {
        let row = self
            .conn
            .query_row(&format!("SELECT {COLS} FROM jobs WHERE id = ?1"), params![id], raw)
            .optional()?
            .ok_or(RegistryError::NoSuchJob(id))?;
        record(row)
    }

    /// Jobs matching `filter`, newest first.
    ///
    /// # Errors
    /// SQL errors, JSON columns that do not parse.
    pub fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let mut sql = format!("SELECT {COLS} FROM jobs WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(s) = filter.state {
            args.push(s.as_str().to_string().into());
            sql += &format!(" AND state = ?{}", args.len());
        }
        if let Some(k) = &filter.kind {
            args.push(k.clone().into());
            sql += &format!(" AND kind = ?{}", args.len());
        }
        if let Some(b) = filter.before {
            args.push(b.into());
            sql += &format!(" AND id < ?{}", args.len());
        }
        sql += " ORDER BY id DESC";
        if let Some(l) = filter.limit {
            sql += &format!(" LIMIT {l}");
        }
        let mut stmt = self.conn.prepare(&sql)?;
        let rows: Vec<RawJob> =
            stmt.query_map(rusqlite::params_from_iter(args), raw)?.collect::<rusqlite::Result<_>>()?;
        rows.into_iter().map(record).collect()
    }

    /// Number of jobs per (kind, state).
    ///
    /// # Errors
    /// SQL errors.
    pub fn count_jobs(&self) -> Result<Vec<(String, JobState, u64)>> {
        let mut stmt = self.conn.prepare_cached("SELECT kind, state, count(*) FROM jobs GROUP BY kind, state")?;
        let rows: Vec<(String, String, i64)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<_>>()?;
        Ok(rows.into_iter().filter_map(|(k, s, n)| Some((k, JobState::parse(&s)?, n.max(0) as u64))).collect())
    }

    /// Take over the jobs of owners that are gone (on this host: the process no longer runs;
    /// other hosts are never taken over). Their `running` jobs are marked failed with `message`,
    /// their `queued` jobs become this process's. One immediate transaction, so two servers
    /// starting at once do not both take a job.
    ///
    /// # Errors
    /// SQL errors, JSON columns that do not parse.
    pub fn adopt_jobs(&mut self, message: &str) -> Result<Adopted> {
        let host = process::hostname();
        let me = std::process::id();
        let my_start = process::self_start_token();
        let now = process::now();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let owners: Vec<(i64, String, u32, Option<String>)> = {
            let mut stmt = tx.prepare(
                "SELECT id, owner_host, owner_pid, owner_start FROM jobs WHERE state IN ('queued', 'running')",
            )?;
            let v = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            v
        };
        let mut ids = Vec::new();
        for (id, h, pid, start) in owners {
            let mine = h == host && pid == me && start == my_start;
            let dead = h == host && !mine && process::is_alive(pid, start.as_deref()) != Some(true);
            if dead {
                ids.push(id);
            }
        }
        for id in &ids {
            tx.execute(
                "UPDATE jobs SET state = 'failed', error = ?2, finished_at = ?3 WHERE id = ?1 AND state = 'running'",
                params![id, message, now],
            )?;
            tx.execute(
                "UPDATE jobs SET owner_host = ?2, owner_pid = ?3, owner_start = ?4 WHERE id = ?1 AND state = 'queued'",
                params![id, host, me, my_start],
            )?;
        }
        tx.commit()?;
        let mut adopted = Adopted::default();
        ids.sort_unstable();
        for id in ids {
            let r = self.job(id)?;
            match r.state {
                JobState::Queued => adopted.queued.push(r),
                _ => adopted.failed.push(r),
            }
        }
        Ok(adopted)
    }
}
