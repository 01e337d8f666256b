//! crunch-model: run the models crunch writes, on the CPU, to measure what compression cost.

#![forbid(unsafe_code)]

pub mod attention;
pub mod bert;
pub mod block;
pub mod choice;
pub mod config;
pub mod error;
pub mod generate;
pub mod kld;
pub mod kv_cache;
pub mod llama;
pub mod lora;
pub mod matmul;
pub mod ops;
pub mod perplexity;
pub mod rope;
pub mod seedlm;
pub mod store;
pub mod tokenizer;
pub mod weights;

pub use bert::{BertConfig, BertModel, Pooling};
pub use config::{Arch, FfnAct, LlamaConfig, RopeMode};
pub use error::{ModelError, Result};
pub use kv_cache::KvCache;
pub use llama::{LlamaModel, Observer};
pub use lora::{LoraAdapter, LoraSpec};
pub use matmul::MatmulMode;
pub use perplexity::{perplexity, perplexity_tokens, ChunkLayout, PerplexityOptions, PerplexityResult};
pub use store::{StoreFormat, TensorStore};
