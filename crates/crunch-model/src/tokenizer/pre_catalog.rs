//! The byte-level BPE pre-tokenizers crunch knows (`tokenizer.ggml.pre` names) and their split
//! patterns, for tools that convert between tokenizer formats (`crunch convert` recognises a
//! `tokenizer.json` by its patterns; `crunch export` writes patterns back into a `tokenizer.json`).

use super::pretokenizer::PreConfig;
use super::Result;

/// Every name [`patterns`] accepts. Names whose splitting is identical are listed after a
/// representative (the first one with given patterns is the one a converter picks when only the
/// patterns are known), so the common families come first.
pub const KNOWN_PRE_TOKENIZERS: &[&str] = &[
    "gpt-2",
    "llama-bpe",
    "qwen2",
    "starcoder",
    "smollm",
    "default",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "falcon",
    "qwen35",
    "gpt-4o",
    "tekken",
    "bloom",
    "poro-chat",
    "viking",
    "jais-2",
    "llama3",
    "llama-v3",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "dbrx",
    "smaug-bpe",
    "mpt",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "jina-v2-es",
    "jina-v2-de",
    "a.x-4.0",
    "mellum",
    "modern-bert",
    "jina-v1-en",
    "jina-v2-code",
    "roberta-bpe",
    "olmo",
    "jais",
    "exaone4",
    "trillion",
    "granite-docling",
    "refact",
    "codeshell",
    "exaone",
    "minerva-7b",
    "mellum2",
    "command-r",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "hunyuan",
    "solar-open",
    "megrez",
    "stablelm2",
    "grok-2",
    "minicpm5",
    "hunyuan-dense",
    "hy_v4",
    "joyai-llm",
    "spark2_5",
    "youtu",
    "gemma4",
    "granite-embed-multi-311m",
    "sarvam-moe",
    "gpt3-finnish",
    "chatglm-bpe",
    "glm4",
    "glm5",
    "exaone-moe",
    "chameleon",
    "llama4",
    "kanana2",
    "talkie",
    "minimax-m2",
    "granite-embed-multi-97m",
    "tiny_aya",
    "cohere2moe",
    "superbpe",
    "bailingmoe",
    "bailingmoe2",
    "llada-moe",
    "seed-coder",
    "ufakzeka",
    "afmoe",
    "laguna",
];

/// The split patterns of a pre-tokenizer, applied in order (each refines the pieces of the one
/// before), as llama.cpp applies them.
///
/// # Errors
/// An unknown or unsupported name.
pub fn patterns(name: &str) -> Result<Vec<&'static str>> {
    Ok(PreConfig::for_name(Some(name))?.patterns)
}

/// Whether the vocabulary is GPT-2 byte-level (tokens are byte-to-character mapped), as opposed to
/// raw UTF-8 with `▁` for spaces (Gemma 4 style).
///
/// # Errors
/// An unknown or unsupported name.
pub fn is_byte_level(name: &str) -> Result<bool> {
    let c = PreConfig::for_name(Some(name))?;
    Ok(c.byte_encode && !c.escape_whitespaces)
}

/// Whether a word that is itself a token is emitted without applying merges (Llama 3 style;
/// `ignore_merges` in a `tokenizer.json` BPE model).
///
/// # Errors
/// An unknown or unsupported name.
pub fn ignores_merges(name: &str) -> Result<bool> {
    Ok(PreConfig::for_name(Some(name))?.ignore_merges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_name_has_patterns() {
        for n in KNOWN_PRE_TOKENIZERS {
            assert!(!patterns(n).unwrap().is_empty(), "{n}");
        }
        assert!(patterns("no-such-pre").is_err());
        assert!(is_byte_level("smollm").unwrap());
        assert!(!is_byte_level("gemma4").unwrap());
    }
}
