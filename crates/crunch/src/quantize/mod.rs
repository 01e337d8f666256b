//! `crunch quantize`: llama-quantize's presets and options, planned exactly as llama.cpp plans
//! them, executed by streaming tensor by tensor.

pub mod exec;
pub mod ftype;
pub mod plan;
pub mod rules;

pub use exec::{
    convert_tensor, execute, execute_with, output_metadata, ExecOptions, ImportanceLookup, QuantizeReport, Replacement,
    ReplacementLookup,
};
pub use ftype::Ftype;
pub use plan::{build as build_plan, Plan, QuantizeOptions, Reason, TensorPlan};
