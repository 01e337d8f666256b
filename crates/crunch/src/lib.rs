//! crunch: make large language models small on the CPU, and prove what the shrinking cost.
//!
//! The library holds every job (quantize, inspect, verify…) as a plain function taking a
//! progress sink and a cancel flag; the `crunch` binary is a thin clap front end over it.

#![forbid(unsafe_code)]

pub mod calibrate;
pub mod convert;
pub mod error;
pub mod eval;
pub mod export;
pub mod fit;
pub mod inspect;
pub mod memory;
pub mod progress;
pub mod quantize;
pub mod report;
pub mod search;
pub mod sensitivity;

pub use error::{Error, Result};
