//! Hugging Face model folders: `config.json`, the tensor names of a checkpoint and their GGUF
//! names, the Q/K permutation of Llama attention, and the model card's provenance fields.
//!
//! Key decision: everything here follows what llama.cpp's `convert_hf_to_gguf.py` does (its
//! hyper-parameter keys and order, its tensor-name map, its row permutation), so a file crunch
//! converts is the file llama.cpp would have written; and every mapping is written so it can be
//! read backwards for `crunch export`.

pub mod config;
pub mod error;
pub mod model_card;
pub mod names;
pub mod params;
pub mod permute;

pub use config::{HfArch, HfConfig, SUPPORTED_ARCHITECTURES};
pub use error::HfError;
pub use model_card::{CardValue, ModelCard};
pub use names::{Mapped, Part, Role, TensorId};
