//! `crunch run`: generate text from a prompt, greedy or sampled, streaming pieces as they come.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crunch_model::generate::{generate, Sampler, SamplerOptions, StopReason};
use crunch_model::LoraSpec;

use super::{model_err, open_model_with};
use crate::error::{Error, Result};
use crate::progress::Cancel;

/// Options of `crunch run`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    /// Tokens to generate at most.
    pub n_predict: usize,
    pub sampler: SamplerOptions,
    pub exact: bool,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// LoRA adapters applied to the model, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora: Vec<LoraSpec>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            n_predict: 128,
            sampler: SamplerOptions::default(),
            exact: false,
            ignore_eos: false,
            lora: Vec::new(),
        }
    }
}

/// The result of `crunch run`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub model: String,
    pub prompt: String,
    /// The prompt's token ids (BOS included when the vocabulary adds it).
    pub prompt_tokens: Vec<u32>,
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// The generated text.
    pub text: String,
    pub stop: StopReason,
    pub prompt_seconds: f64,
    pub gen_seconds: f64,
    /// Prompt tokens per second.
    pub prompt_tps: f64,
    /// Generated tokens per second (after the first).
    pub gen_tps: f64,
}

/// Turns token pieces into text as soon as their bytes form whole UTF-8 characters.
#[derive(Default)]
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_some() => self.pending.len(), // invalid, not incomplete: flush lossily
            Err(e) => e.valid_up_to(),
        };
        let out: Vec<u8> = self.pending.drain(..valid).collect();
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// `crunch run MODEL -p PROMPT`: `on_text` receives the text as it is generated; returning
/// `false` from it, or tripping `cancel`, stops generation.
pub fn run(
    model_path: &Path,
    prompt: &str,
    opts: &RunOptions,
    cancel: &Cancel,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<RunReport> {
    if prompt.is_empty() {
        return Err(Error::Invalid("the prompt is empty".into()));
    }
    let loaded = open_model_with(model_path, opts.exact, &opts.lora, "generate.lora")?;
    let tok = &loaded.tokenizer;
    let ids = tok.encode(prompt, true).map_err(|e| model_err(model_path.display())(e.into()))?;
    let mut sampler = Sampler::new(opts.sampler);
    let mut stream = Utf8Stream::default();
    let mut text = String::new();
    let ignore_eos = opts.ignore_eos;
    let g = generate(
        &loaded.model,
        &ids,
        opts.n_predict,
        &mut sampler,
        |t| !ignore_eos && tok.is_eog(t),
        |t| {
            let piece = stream.push(&tok.token_to_piece(t));
            text.push_str(&piece);
            !cancel.is_cancelled() && on_text(&piece)
        },
    )
    .map_err(model_err(model_path.display()))?;
    let tail = String::from_utf8_lossy(&stream.pending).into_owned();
    if !tail.is_empty() {
        text.push_str(&tail);
        on_text(&tail);
    }
    Ok(RunReport {
        model: model_path.display().to_string(),
        prompt: prompt.to_string(),
        prompt_tokens: ids,
        text,
        stop: g.stop,
        prompt_seconds: g.prompt_seconds,
        gen_seconds: g.gen_seconds,
        prompt_tps: g.prompt_tps(),
        gen_tps: g.gen_tps(),
        tokens: g.tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::Utf8Stream;

    #[test]
    fn utf8_stream_waits_for_whole_characters() {
        let mut s = Utf8Stream::default();
        let e = "é".as_bytes();
        assert_eq!(s.push(b"a"), "a");
        assert_eq!(s.push(&e[..1]), "");
        assert_eq!(s.push(&e[1..]), "é");
        assert_eq!(s.push(&[0xff, b'b']), "\u{fffd}b");
    }
}
