//! `GET /v1/report`: the library chooses the runs and gathers them (`crunch::history`).
//!

use crate::error::ApiError;
use crunch::report::ReportData;
use crunch_registry::Registry;

/// The report's data for `ids` (the default runs are [`crunch::history::report_runs`]'s, as the
/// CLI's `crunch report` chooses them).
///
/// # Errors
/// A run that does not exist (`404`), registry errors.
pub fn collect(reg: &Registry, ids: &[i64]) -> Result<ReportData, ApiError> {
    crunch::history::report_data(reg, ids).map_err(ApiError::from)
}
