//! Reading runs back: listings, one run in full.

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;
use std::collections::BTreeMap;

use crate::error::{RegistryError, Result};
use crate::run::{InputFile, OutputFile, TensorChoice};
use crate::{Registry, RunStatus};

/// Which runs to list.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub kind: Option<String>,
    pub status: Option<RunStatus>,
    /// Runs started by this run (a search's candidates).
    pub parent: Option<i64>,
    /// At most this many, newest first (all when `None`).
    pub limit: Option<usize>,
}

/// One line of `crunch runs list`.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub id: i64,
    pub kind: String,
    pub status: RunStatus,
    pub label: Option<String>,
    pub parent_id: Option<i64>,
    pub started_at: f64,
    pub duration_s: Option<f64>,
    pub output_path: Option<String>,
    pub output_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    pub metrics: BTreeMap<String, f64>,
    pub error: Option<String>,
}

/// Everything recorded about a run.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub finished_at: Option<f64>,
    pub host: String,
    pub pid: u32,
    pub crunch_version: String,
    pub machine: serde_json::Value,
    pub command: Vec<String>,
    pub params: serde_json::Value,
    pub inputs: Vec<InputFile>,
    pub output: Option<OutputFile>,
    pub tensors: Vec<TensorChoice>,
    pub data: BTreeMap<String, serde_json::Value>,
}

const SUMMARY_COLS: &str = "id, kind, status, label, parent_id, started_at, finished_at, output_path, output_bytes,
                            peak_rss_bytes, error";

fn summary(r: &Row<'_>) -> rusqlite::Result<RunSummary> {
    let started: f64 = r.get(5)?;
    let finished: Option<f64> = r.get(6)?;
    Ok(RunSummary {
        id: r.get(0)?,
        kind: r.get(1)?,
        status: RunStatus::parse(&r.get::<_, String>(2)?),
        label: r.get(3)?,
        parent_id: r.get(4)?,
        started_at: started,
        duration_s: finished.map(|f| (f - started).max(0.0)),
        output_path: r.get(7)?,
        output_bytes: r.get::<_, Option<i64>>(8)?.map(|b| b as u64),
        peak_rss_bytes: r.get::<_, Option<i64>>(9)?.map(|b| b as u64),
        metrics: BTreeMap::new(),
        error: r.get(10)?,
    })
}

fn parse_json(id: i64, field: &'static str, s: &str) -> Result<serde_json::Value> {
    serde_json::from_str(s).map_err(|source| RegistryError::BadJson { id, field, source })
}

impl Registry {
    fn metrics_of(&self, id: i64) -> Result<BTreeMap<String, f64>> {
        let mut stmt = self.conn.prepare_cached("SELECT name, value FROM run_metrics WHERE run_id = ?1")?;
        let m = stmt.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        Ok(m)
    }

    /// Runs matching `filter`, newest first, with their metrics.
    ///
    /// # Errors
    /// SQL errors.
    pub fn list(&self, filter: &Filter) -> Result<Vec<RunSummary>> {
        let mut sql = format!("SELECT {SUMMARY_COLS} FROM runs WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(k) = &filter.kind {
            args.push(k.clone().into());
            sql += &format!(" AND kind = ?{}", args.len());
        }
        if let Some(s) = filter.status {
            args.push(s.as_str().to_string().into());
            sql += &format!(" AND status = ?{}", args.len());
        }
        if let Some(p) = filter.parent {
            args.push(p.into());
            sql += &format!(" AND parent_id = ?{}", args.len());
        }
        sql += " ORDER BY id DESC";
        if let Some(l) = filter.limit {
            sql += &format!(" LIMIT {l}");
        }
        let mut stmt = self.conn.prepare(&sql)?;
        let mut runs: Vec<RunSummary> =
            stmt.query_map(rusqlite::params_from_iter(args), summary)?.collect::<rusqlite::Result<_>>()?;
        for r in &mut runs {
            r.metrics = self.metrics_of(r.id)?;
        }
        Ok(runs)
    }

    /// Everything about run `id`.
    ///
    /// # Errors
    /// [`RegistryError::NoSuchRun`], SQL errors, or JSON columns that do not parse.
    pub fn get(&self, id: i64) -> Result<RunRecord> {
        type Extra = (Option<f64>, String, u32, String, String, String, String, Option<String>, Option<String>);
        let row: Option<(RunSummary, Extra)> = self
            .conn
            .query_row(
                &format!(
                    "SELECT {SUMMARY_COLS}, finished_at, host, pid, crunch_version, machine, command, params,
                            output_sha256, output_path FROM runs WHERE id = ?1"
                ),
                params![id],
                |r| {
                    Ok((
                        summary(r)?,
                        (
                            r.get(11)?,
                            r.get(12)?,
                            r.get(13)?,
                            r.get(14)?,
                            r.get(15)?,
                            r.get(16)?,
                            r.get(17)?,
                            r.get(18)?,
                            r.get(19)?,
                        ),
                    ))
                },
            )
            .optional()?;
        let Some((mut summary, (finished_at, host, pid, crunch_version, machine, command, params, sha, out_path))) =
            row
        else {
            return Err(RegistryError::NoSuchRun(id));
        };
        summary.metrics = self.metrics_of(id)?;
        let mut stmt = self.conn.prepare("SELECT role, path, sha256, bytes FROM run_inputs WHERE run_id = ?1")?;
        let inputs = stmt
            .query_map(params![id], |r| {
                Ok(InputFile {
                    role: r.get(0)?,
                    path: r.get(1)?,
                    sha256: r.get(2)?,
                    bytes: r.get::<_, Option<i64>>(3)?.map(|b| b as u64),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = self.conn.prepare(
            "SELECT name, type, n_elements, bytes, predicted_kld FROM run_tensors WHERE run_id = ?1 ORDER BY seq",
        )?;
        let tensors = stmt
            .query_map(params![id], |r| {
                Ok(TensorChoice {
                    name: r.get(0)?,
                    ty: r.get(1)?,
                    n_elements: r.get::<_, i64>(2)? as u64,
                    bytes: r.get::<_, i64>(3)? as u64,
                    predicted_kld: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = self.conn.prepare("SELECT key, value FROM run_data WHERE run_id = ?1 ORDER BY key")?;
        let raw: Vec<(String, String)> =
            stmt.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        let mut data = BTreeMap::new();
        for (k, v) in raw {
            data.insert(k, parse_json(id, "run_data", &v)?);
        }
        let command: Vec<String> = serde_json::from_str(&command).unwrap_or_else(|_| vec![command]);
        let output = out_path.map(|path| OutputFile { path, sha256: sha, bytes: summary.output_bytes });
        Ok(RunRecord {
            summary,
            finished_at,
            host,
            pid,
            crunch_version,
            machine: parse_json(id, "machine", &machine)?,
            command,
            params: parse_json(id, "params", &params)?,
            inputs,
            output,
            tensors,
            data,
        })
    }

    /// The id of the newest run, if any.
    ///
    /// # Errors
    /// SQL errors.
    pub fn latest(&self, kind: Option<&str>) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT max(id) FROM runs WHERE ?1 IS NULL OR kind = ?1", params![kind], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .optional()?
            .flatten())
    }

    /// Delete a run and everything attached to it.
    ///
    /// # Errors
    /// [`RegistryError::NoSuchRun`] or SQL errors.
    pub fn delete(&self, id: i64) -> Result<()> {
        let n = self.conn.execute("DELETE FROM runs WHERE id = ?1", params![id])?;
        if n == 0 {
            return Err(RegistryError::NoSuchRun(id));
        }
        Ok(())
    }
}
