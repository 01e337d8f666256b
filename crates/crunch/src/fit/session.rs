//! One model opened for fitting and evaluating: its tokens of calibration and held-out text, its
//! (cached) sensitivity profile and, once needed, the base model's held-out distributions. `fit`
//! uses one session per call; `search` one for all its candidates.

use super::heldout::{HeldOut, Measured};
use super::{FitPlan, Target};
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crate::quantize::{self, Ftype, Plan, QuantizeOptions, QuantizeReport};
use crate::sensitivity::reference::Chunks;
use crate::sensitivity::{self, Calibration, Method, Profile, SensitivityOptions};
use crunch_core::gguf::GgufFile;
use crunch_model::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Held-out evaluation settings.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalSettings {
    /// Chunk length in tokens.
    pub ctx: usize,
    /// Chunks (taken from the second half of the text, never seen by calibration).
    pub chunks: usize,
}

/// Split a text in two halves at a line break: calibration reads the first, evaluation the second.
///
/// The cut is the first line break at or after the middle byte; a text without one after the
/// middle is cut at the first character boundary at or after the middle (never inside a
/// multi-byte character).
pub fn split_text(text: &str) -> (&str, &str) {
    let mid = (text.len() / 2..=text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    let cut = text[mid..].find('\n').map_or(mid, |i| mid + i + 1);
    text.split_at(cut)
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings { ctx: 256, chunks: 8 }
    }
}

/// Everything a session needs to start.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub model: PathBuf,
    /// The model file's sha256 (the profile cache key).
    pub model_sha256: String,
    /// Calibration and held-out text: calibration chunks come from its first half, held-out
    /// chunks from its second half.
    pub text: PathBuf,
    pub sensitivity: SensitivityOptions,
    pub eval: EvalSettings,
    /// Where profiles are cached.
    pub cache_dir: PathBuf,
    /// Where probe files are written while profiling.
    pub work_dir: PathBuf,
}

/// An opened model with its profile.
pub struct Session {
    pub opts: SessionOptions,
    pub file: Arc<GgufFile>,
    pub profile: Profile,
    /// Whether the profile came from the cache.
    pub profile_cached: bool,
    pub profile_path: PathBuf,
    heldout_text: String,
    heldout: Option<HeldOut>,
}

fn sha256_tokens(tokens: &[u32]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    crunch_core::output::hex(&h.finalize())
}

impl Session {
    /// Open the model, tokenize the text, load or measure the sensitivity profile.
    ///
    /// # Errors
    /// Model, text and profiling errors.
    pub fn open(opts: SessionOptions, progress: &dyn Progress, cancel: &Cancel) -> Result<Self> {
        let file = Arc::new(GgufFile::open(&opts.model)?);
        let text = std::fs::read_to_string(&opts.text).map_err(|e| Error::io(&opts.text, e))?;
        let (calib_text, heldout_text) = split_text(&text);
        let s = &opts.sensitivity;
        let what = format!("calibration text (first half of {})", opts.text.display());
        let calib_chunks = if crate::eval::embed::is_encoder(file.metadata()) {
            // An encoder is calibrated on whole lines (sentences), `ctx × chunks` tokens of them.
            let model = crate::eval::embed::open_encoder(&opts.model, false)?;
            let lines = crate::eval::embed::token_lines(&model, calib_text, s.ctx * s.chunks, &what)?;
            Chunks { chunks: lines, first: 0 }
        } else {
            let tok =
                Tokenizer::from_gguf(&file).map_err(|e| Error::Invalid(format!("{}: {e}", opts.model.display())))?;
            let tokens =
                tok.encode(calib_text, true).map_err(|e| Error::Invalid(format!("{}: {e}", opts.text.display())))?;
            let bos = if tok.add_bos() { tok.bos() } else { None };
            Chunks::cut(&tokens, 0, s.ctx, s.chunks, bos, &what)?
        };
        let calib = Calibration { sha256: sha256_tokens(&calib_chunks.chunks.concat()), chunks: calib_chunks };
        let key = Profile::cache_key(&opts.model_sha256, &calib.sha256, s);
        let (profile, cached) = match Profile::load_cached(&opts.cache_dir, &key) {
            Some(p) => (p, true),
            None => {
                let p =
                    sensitivity::measure(&opts.model, &opts.model_sha256, &calib, s, &opts.work_dir, progress, cancel)?;
                p.save_cached(&opts.cache_dir, &key)?;
                (p, false)
            }
        };
        let profile_path = opts.cache_dir.join(format!("{key}.json"));
        let heldout_text = heldout_text.to_string();
        Ok(Session { opts, file, profile, profile_cached: cached, profile_path, heldout_text, heldout: None })
    }

    /// The method tensors are quantized with.
    pub fn method(&self) -> Method {
        self.opts.sensitivity.method
    }

    /// Solve a target.
    ///
    /// # Errors
    /// See [`super::solve`].
    pub fn fit(&self, target: Target) -> Result<FitPlan> {
        super::solve(&self.file, &self.profile, target)
    }

    /// llama.cpp's plan for a preset, with the imatrix-dependent rules when the method uses one.
    ///
    /// # Errors
    /// Planning errors.
    pub fn preset_plan(&self, ftype: Ftype) -> Result<Plan> {
        let mut o = QuantizeOptions::new(ftype);
        o.has_imatrix = self.method() == Method::Imatrix;
        o.allow_requantize = true;
        quantize::build_plan(self.file.metadata(), self.file.tensors(), &o)
    }

    /// Write `plan` to `output` with the session's method.
    ///
    /// # Errors
    /// I/O and quantization errors.
    pub fn write(
        &self,
        plan: &Plan,
        output: &Path,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<QuantizeReport> {
        let imp = |name: &str| self.profile.importance.get(name).cloned();
        let lookup: Option<quantize::exec::ImportanceLookup> =
            if self.method() == Method::Imatrix { Some(&imp) } else { None };
        if self.method() != Method::Gptq {
            return quantize::execute(&self.file, plan, output, lookup, progress, cancel);
        }
        // GPTQ onto the plan's types, calibrated on the first half of the text (whole lines for
        // an encoder, `chunks × 32` of them; chunks of `ctx` tokens for a causal LM).
        let s = &self.opts.sensitivity;
        let stamp = format!(
            "{}-{}",
            std::process::id(),
            output.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned())
        );
        let calib_path = self.opts.work_dir.join(format!("crunch-fit-gptq-{stamp}.txt"));
        let scratch = self.opts.work_dir.join(format!("crunch-fit-gptq-{stamp}.calib-tmp"));
        let res = (|| {
            let text = std::fs::read_to_string(&self.opts.text).map_err(|e| Error::io(&self.opts.text, e))?;
            std::fs::write(&calib_path, split_text(&text).0).map_err(|e| Error::io(&calib_path, e))?;
            let encoder = crate::eval::embed::is_encoder(self.file.metadata());
            let m = crate::calibrate::MethodOptions {
                method: Method::Gptq,
                text: crunch_calib::text::TextSource::File(calib_path.clone()),
                chunks: crunch_calib::text::ChunkOptions {
                    n_ctx: s.ctx,
                    n_chunks: Some(if encoder { s.chunks * 32 } else { s.chunks }),
                    skip: 0,
                    shuffle_seed: None,
                },
                gptq: Default::default(),
                awq: Default::default(),
                prune: None,
            };
            let c = crate::calibrate::calibrate_model(&self.opts.model, plan, None, &m, &scratch, progress, cancel)?;
            let importance = |name: &str| c.adjust_importance(name, self.profile.importance.get(name).cloned());
            let replace = |name: &str| c.replacement(name);
            let exec = quantize::ExecOptions {
                importance: Some(&importance),
                replacements: Some(&replace),
                ..Default::default()
            };
            quantize::execute_with(&self.file, plan, output, exec, progress, cancel)
        })();
        let _ = std::fs::remove_file(&calib_path);
        let _ = std::fs::remove_dir_all(&scratch);
        res
    }

    /// The base's distributions on the held-out half of the text (evaluated on first use, cached
    /// on disk beside the profiles).
    ///
    /// # Errors
    /// Forward-pass errors or a text too short.
    pub fn heldout(&mut self, progress: &dyn Progress, cancel: &Cancel) -> Result<&HeldOut> {
        if self.heldout.is_none() {
            let e = self.opts.eval;
            let key = {
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                h.update(self.opts.model_sha256.as_bytes());
                h.update(self.heldout_text.as_bytes());
                h.update(format!("{}/{}/{}", e.ctx, e.chunks, env!("CARGO_PKG_VERSION")).as_bytes());
                crunch_core::output::hex(&h.finalize())[..24].to_string()
            };
            let cache = self.opts.cache_dir.join(format!("base-{key}.logits"));
            let h =
                HeldOut::new(&self.opts.model, &self.heldout_text, e.ctx, e.chunks, Some(&cache), progress, cancel)?;
            self.heldout = Some(h);
        }
        Ok(self.heldout.as_ref().expect("set above"))
    }

    /// Evaluate a written model against the base on held-out text.
    ///
    /// # Errors
    /// See [`HeldOut::evaluate`].
    pub fn evaluate(&mut self, path: &Path, progress: &dyn Progress, cancel: &Cancel) -> Result<Measured> {
        self.heldout(progress, cancel)?.evaluate(path, cancel)
    }

    /// [`Session::evaluate`] with LoRA adapters applied to the model at `path`.
    ///
    /// # Errors
    /// As [`Session::evaluate`]; an adapter that does not fit.
    pub fn evaluate_with(
        &mut self,
        path: &Path,
        lora: &[crunch_model::LoraSpec],
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<Measured> {
        self.heldout(progress, cancel)?.evaluate_with(path, lora, cancel)
    }
}
