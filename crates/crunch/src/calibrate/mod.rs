//! Calibration jobs: `crunch imatrix` (importance matrices as llama-imatrix makes them) and the
//! calibrated quantization methods behind `crunch quantize --imatrix / --method gptq|awq`, and
//! the pruning behind `crunch prune` (magnitude, Wanda, SparseGPT).
//! The algorithms live in `crunch-calib`; this module opens files, reports progress and
//! handles cancellation.

mod encoder;
pub mod imatrix;
pub mod method;
pub mod prune;
pub mod structured;

pub use crate::method::Method;
pub use imatrix::{run_imatrix, ImatrixJob, ImatrixReport};
pub use method::{calibrate_int, calibrate_model, CalibratedTensors, IntCalibrated, MethodOptions};

use crate::error::Error;

/// Wrap a calibration error.
pub(crate) fn calib_err(e: crunch_calib::CalibError) -> Error {
    Error::Invalid(e.to_string())
}
