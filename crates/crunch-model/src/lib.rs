//! crunch-model: run the models crunch writes, on the CPU, to measure what compression cost.

#![forbid(unsafe_code)]

pub mod tokenizer;
