//! `GET /v1/report`: which runs the report shows, then `crunch::report::collect` gathers them.
//!
//! The runs asked for (`?runs=3,7`; a search run brings its candidates), else the newest search
//! run, else the newest finished runs that wrote a model (the library wants run ids or a search
//! run; a server that has only quantized still has something to show).

use crate::error::ApiError;
use crunch::report::ReportData;
use crunch_registry::{Filter, Registry, RunStatus};

/// Runs shown at most when none are named and there is no search run.
pub const RECENT_RUNS: usize = 100;

/// The report's data for `ids` (see the module doc for the default).
///
/// # Errors
/// A run that does not exist (`404`), registry errors.
pub fn collect(reg: &Registry, ids: &[i64]) -> Result<ReportData, ApiError> {
    let mut ids = ids.to_vec();
    if ids.is_empty() {
        match reg.latest(Some("search"))? {
            Some(search) => ids.push(search),
            None => {
                let recent =
                    reg.list(&Filter { status: Some(RunStatus::Ok), limit: Some(RECENT_RUNS), ..Default::default() })?;
                ids = recent
                    .iter()
                    .filter(|r| {
                        r.output_bytes.unwrap_or(0) > 0
                            || r.metrics.contains_key(crunch::job::record::metric::FILE_BYTES)
                    })
                    .map(|r| r.id)
                    .rev()
                    .collect();
            }
        }
    }
    if ids.is_empty() {
        return Ok(ReportData {
            title: "crunch report".into(),
            subtitle: "no finished runs in the registry yet".into(),
            ..Default::default()
        });
    }
    crunch::report::collect(reg, &ids).map_err(|e| match e {
        crunch::Error::Registry(r) => ApiError::from(r),
        crunch::Error::Invalid(m) => ApiError::not_found(m),
        e => ApiError::internal(e.to_string()),
    })
}
