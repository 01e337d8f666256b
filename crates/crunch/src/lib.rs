//! crunch: make large language models small on the CPU, and prove what the shrinking cost.
//!
//! The library holds every job: [`job::Job`] is the serde description of one (quantize,
//! convert, fit, …) and [`job::run`] runs any of them in a [`job::RunCtx`] (progress sink, cancel
//! token, the job's own thread pool, the registry). The `crunch` command line and the HTTP server
//! are thin front ends over that one call.

#![forbid(unsafe_code)]

pub mod calibrate;
pub mod convert;
pub mod error;
pub mod eval;
pub mod export;
pub mod fit;
pub mod history;
pub mod inspect;
pub mod job;
pub mod lowrank;
pub mod memory;
pub mod merge;
pub mod method;
pub mod peft;
pub mod progress;
pub mod quantize;
pub mod report;
pub mod search;
pub mod seedlm;
pub mod sensitivity;
pub mod stage1;
pub mod ternary;
pub mod train;

pub use error::{Error, Result};
