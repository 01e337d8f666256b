//! Pre-tokenizers of byte-level BPE vocabularies, selected by `tokenizer.ggml.pre` as in llama.cpp:
//! a chain of split patterns, each refining the words of the previous one.

use super::split_custom::{self, Text};
use super::split_regex::{Haystack, RegexSplit};
use super::unicode::{self, CpFlags};
use super::{Result, TokenizerError};

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_ORIG: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const NEWLINES: &str = r"[^\n]+|[\n]+";
const DIGITS3_RIGHT: &str = r"\d{1,3}(?=(?:\d{3})*\b)";
const AFMOE_DIGITS: &str = r"\p{AFMoE_digits}";

const JAIS2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}";
const DEEPSEEK_LETTERS: &str = "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+";
const DEEPSEEK_PUNCT: &str = "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+";
const CJK_HANGUL: &str = "[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+";
const CJK_KANA: &str = "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+";
const DEEPSEEK3_MAIN: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
const SPARK_MAIN: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+"##;
const YOUTU_CJK: &str = "[\u{AC00}-\u{D7A3}\u{3131}-\u{318E}]+|[\u{FF01}\u{2026}\u{201C}\u{201D}\u{2018}\u{2019}\u{2014}\u{FF1A}\u{FF1B}\u{FF0C}\u{3001}-\u{303F}\u{FE30}-\u{FE4F}]+|[\u{3105}-\u{312F}]+|[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+";
const YOUTU_MAIN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const FALCON_PUNCT: &str = r"[\p{P}\$\+<=>\^~\|`]+";
const BLOOM: &str = " ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GRANITE_EMB_MULTI: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TINY_AYA_MAIN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const BAILING: &str = r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const SEED_CODER: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const UFAKZEKA: &str = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const AFMOE_CJK: &str = "[\u{4E00}-\u{9FFF}\u{3400}-\u{4DBF}\u{8C48}-\u{FAFF}\u{3040}-\u{309F}\u{30A0}-\u{30FF}\u{FF65}-\u{FF9F}\u{2F00}-\u{2FDF}\u{E40}-\u{E7F}\u{E80}-\u{EFF}\u{1780}-\u{17FF}\u{1000}-\u{109F}\u{AA60}-\u{AA7F}\u{A9E0}-\u{A9FF}\u{AC00}-\u{D7AF}\u{1100}-\u{11FF}]+";
const EXAONE_MOE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+";
const MINICPM5: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a BPE vocabulary with a given `tokenizer.ggml.pre` is tokenized (llama.cpp's settings).
#[derive(Clone, Debug)]
pub(crate) struct PreConfig {
    pub patterns: Vec<&'static str>,
    /// BOS added by default (before `tokenizer.ggml.add_bos_token` overrides it).
    pub add_bos: bool,
    /// Clean up spaces before punctuation when detokenizing.
    pub clean_spaces: bool,
    /// A word that is itself a token is emitted as is, without merging.
    pub ignore_merges: bool,
    /// GPT-2 byte-to-character mapping (false: raw UTF-8 with `<0xXX>` byte tokens).
    pub byte_encode: bool,
    /// Spaces become `▁` before tokenizing (SentencePiece-style BPE).
    pub escape_whitespaces: bool,
    /// The model has no BOS token whatever the defaults say (ChatGLM, GLM-4).
    pub no_bos: bool,
}

impl PreConfig {
    /// The settings for a `tokenizer.ggml.pre` value (`None`: missing, which llama.cpp treats as
    /// "default").
    pub fn for_name(pre: Option<&str>) -> Result<Self> {
        let mut c = PreConfig {
            patterns: Vec::new(),
            add_bos: false,
            clean_spaces: true,
            ignore_merges: false,
            byte_encode: true,
            escape_whitespaces: false,
            no_bos: false,
        };
        let name = pre.unwrap_or("default");
        let pats: &[&'static str] = match name {
            "default" => &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
            "minicpm5" => {
                c.ignore_merges = true;
                &[r"\p{N}{1,3}", MINICPM5]
            }
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
            | "jina-v5-nano" => {
                c.ignore_merges = true;
                c.add_bos = true;
                &[LLAMA3]
            }
            "deepseek-llm" => {
                c.clean_spaces = false;
                &["[\r\n]", DEEPSEEK_LETTERS, DEEPSEEK_PUNCT, r"\s+$", CJK_HANGUL, r"\p{N}+"]
            }
            "deepseek-coder" => {
                c.clean_spaces = false;
                &["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_HANGUL, r"\p{N}"]
            }
            "deepseek-v3" | "hunyuan-dense" | "hy_v4" | "joyai-llm" => {
                c.clean_spaces = false;
                &[r"\p{N}{1,3}", CJK_KANA, DEEPSEEK3_MAIN]
            }
            "spark2_5" => {
                c.clean_spaces = false;
                &[r"\p{N}{1,3}", CJK_KANA, SPARK_MAIN, r"\p{N}"]
            }
            "youtu" => {
                c.clean_spaces = false;
                c.ignore_merges = true;
                &[YOUTU_CJK, YOUTU_MAIN]
            }
            "falcon" => &[FALCON_PUNCT, GPT2, "[0-9][0-9][0-9]"],
            "mpt" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
            | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "olmo"
            | "jais" | "exaone4" => &[GPT2],
            "trillion" | "granite-docling" => {
                c.clean_spaces = false;
                &[GPT2]
            }
            "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => &[r"\p{N}", GPT2],
            "command-r" | "smollm" => {
                c.clean_spaces = false;
                &[r"\p{N}", GPT2]
            }
            "jais-2" => &[JAIS2],
            "gemma4" | "granite-embed-multi-311m" => {
                c.escape_whitespaces = true;
                c.byte_encode = false;
                // llama.cpp forces BOS for Gemma 4 whatever the file says; see `force_bos`.
                c.add_bos = true;
                &[NEWLINES]
            }
            "sarvam-moe" => {
                c.escape_whitespaces = true;
                c.byte_encode = false;
                c.clean_spaces = false;
                &[NEWLINES]
            }
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" => {
                c.clean_spaces = false;
                &[QWEN2]
            }
            "megrez" | "stablelm2" => &[QWEN2],
            "qwen35" => {
                c.clean_spaces = false;
                &[QWEN35]
            }
            "dbrx" | "smaug-bpe" => &[LLAMA3],
            "poro-chat" => {
                c.clean_spaces = false;
                &[BLOOM]
            }
            "bloom" | "gpt3-finnish" => &[BLOOM],
            "chatglm-bpe" => {
                c.no_bos = true;
                &[LLAMA3]
            }
            "glm4" | "glm5" => {
                c.no_bos = true;
                c.ignore_merges = true;
                &[LLAMA3]
            }
            "viking" => {
                c.clean_spaces = false;
                &[BLOOM, r"\p{N}"]
            }
            "tekken" => {
                c.clean_spaces = false;
                c.ignore_merges = true;
                c.add_bos = true;
                &[TEKKEN]
            }
            "exaone-moe" => &[EXAONE_MOE],
            "chameleon" => {
                c.add_bos = true;
                c.clean_spaces = false;
                &[
                    "<sentinel:[0-9]+>",
                    "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
                    "([\\t\\n]|    |  )",
                    r"\p{N}",
                    r"[\p{P}!-/:-@\[-`{-~]",
                    GPT2,
                ]
            }
            "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => {
                c.clean_spaces = false;
                &[GPT4O]
            }
            "granite-embed-multi-97m" => {
                c.clean_spaces = false;
                c.ignore_merges = true;
                &[GRANITE_EMB_MULTI]
            }
            "tiny_aya" | "cohere2moe" => {
                c.clean_spaces = false;
                &[DIGITS3_RIGHT, TINY_AYA_MAIN]
            }
            "superbpe" => {
                c.clean_spaces = false;
                &[r"\p{N}+", r"(?=(\d{3})+(?!\d))"]
            }
            "bailingmoe" | "bailingmoe2" | "llada-moe" => {
                c.clean_spaces = false;
                &[BAILING]
            }
            "seed-coder" => {
                c.clean_spaces = false;
                &[SEED_CODER]
            }
            "ufakzeka" => {
                c.clean_spaces = false;
                &[UFAKZEKA]
            }
            "grok-2" => {
                c.clean_spaces = false;
                &[QWEN2]
            }
            "afmoe" => {
                c.clean_spaces = false;
                &[AFMOE_DIGITS, AFMOE_CJK, DEEPSEEK3_MAIN]
            }
            "laguna" => {
                c.clean_spaces = false;
                &[NEWLINES, QWEN2]
            }
            "kimi-k2" => {
                return Err(TokenizerError::Unsupported(
                    "pre-tokenizer \"kimi-k2\" (needs merges-free Han-aware splitting)".into(),
                ))
            }
            other => return Err(TokenizerError::UnknownPreTokenizer(other.to_string())),
        };
        c.patterns = pats.to_vec();
        Ok(c)
    }
}

#[derive(Debug)]
enum Step {
    Gpt2,
    Llama3Like { max_digits: usize, marks: bool },
    Newlines,
    DigitGroups,
    Regex(RegexSplit),
}

/// A compiled chain of split patterns.
#[derive(Debug)]
pub(crate) struct PreTokenizer {
    steps: Vec<Step>,
}

impl PreTokenizer {
    pub fn new(patterns: &[&str]) -> Result<Self> {
        unicode::init();
        let mut steps = Vec::with_capacity(patterns.len());
        for &p in patterns {
            let step = if p == GPT2 {
                Step::Gpt2
            } else if p == LLAMA3 || p == LLAMA3_ORIG {
                Step::Llama3Like { max_digits: 3, marks: false }
            } else if p == QWEN2 {
                Step::Llama3Like { max_digits: 1, marks: false }
            } else if p == QWEN35 {
                Step::Llama3Like { max_digits: 1, marks: true }
            } else if p == NEWLINES {
                Step::Newlines
            } else if p == DIGITS3_RIGHT || p == AFMOE_DIGITS {
                Step::DigitGroups
            } else {
                Step::Regex(RegexSplit::new(p)?)
            };
            steps.push(step);
        }
        Ok(PreTokenizer { steps })
    }

    /// Split `text` into words, appended to `words` as byte ranges of `text`.
    pub fn split(&self, text: &str, words: &mut Vec<(usize, usize)>) -> Result<()> {
        let cps: Vec<char> = text.chars().collect();
        if cps.is_empty() {
            return Ok(());
        }
        let fl: Vec<CpFlags> = cps.iter().map(|&c| unicode::flags(c)).collect();
        let t = Text { cps: &cps, flags: &fl };
        let mut segs = vec![(0usize, cps.len())];
        let mut next = Vec::with_capacity(cps.len() / 3 + 1);
        let mut hay_collapsed: Option<Haystack> = None;
        let mut hay_plain: Option<Haystack> = None;
        for step in &self.steps {
            match step {
                Step::Gpt2 => split_custom::gpt2(&t, &segs, &mut next),
                Step::Llama3Like { max_digits, marks } => {
                    split_custom::llama3_like(&t, &segs, &mut next, *max_digits, *marks)
                }
                Step::Newlines => split_custom::newlines(&t, &segs, &mut next),
                Step::DigitGroups => split_custom::digit_groups(&t, &segs, &mut next),
                Step::Regex(r) => {
                    let slot = if r.collapsed() { &mut hay_collapsed } else { &mut hay_plain };
                    let hay = slot.get_or_insert_with(|| Haystack::new(&cps, &fl, r.collapsed()));
                    r.split(hay, &segs, &mut next)?;
                }
            }
            std::mem::swap(&mut segs, &mut next);
        }
        // Code point ranges to byte ranges.
        let mut byte_of = Vec::with_capacity(cps.len() + 1);
        let mut b = 0;
        for c in &cps {
            byte_of.push(b);
            b += c.len_utf8();
        }
        byte_of.push(b);
        words.extend(segs.iter().filter(|(a, b)| b > a).map(|&(a, b)| (byte_of[a], byte_of[b])));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[&str] = &[
        "default",
        "minicpm5",
        "llama-bpe",
        "deepseek-llm",
        "deepseek-coder",
        "deepseek-v3",
        "spark2_5",
        "youtu",
        "falcon",
        "mpt",
        "gpt-2",
        "trillion",
        "starcoder",
        "refact",
        "smollm",
        "command-r",
        "jais-2",
        "gemma4",
        "sarvam-moe",
        "qwen2",
        "stablelm2",
        "qwen35",
        "dbrx",
        "poro-chat",
        "bloom",
        "chatglm-bpe",
        "glm4",
        "viking",
        "tekken",
        "exaone-moe",
        "chameleon",
        "gpt-4o",
        "granite-embed-multi-97m",
        "tiny_aya",
        "superbpe",
        "bailingmoe",
        "seed-coder",
        "ufakzeka",
        "grok-2",
        "afmoe",
        "laguna",
    ];

    fn words(pre: &str, text: &str) -> Vec<String> {
        let c = PreConfig::for_name(Some(pre)).unwrap();
        let p = PreTokenizer::new(&c.patterns).unwrap();
        let mut w = Vec::new();
        p.split(text, &mut w).unwrap();
        w.iter().map(|&(a, b)| text[a..b].to_string()).collect()
    }

    #[test]
    fn every_pattern_compiles_and_covers_the_text() {
        let text = "Hello, World! It's 2024-06-01: 12345 naïve café 日本語 🤖  \n\n\tx  ";
        for pre in ALL {
            let w = words(pre, text);
            assert_eq!(w.concat(), text, "{pre}");
        }
    }

    #[test]
    fn unknown_is_an_error() {
        assert!(matches!(PreConfig::for_name(Some("nope")), Err(TokenizerError::UnknownPreTokenizer(_))));
    }

    #[test]
    fn smollm_isolates_digits() {
        assert_eq!(words("smollm", "in 2024, a"), ["in", " ", "2", "0", "2", "4", ",", " a"]);
    }

    #[test]
    fn regex_agrees_with_custom_gpt2() {
        // The hand-written GPT-2 splitter and the general regex path must agree.
        let text = "Hello  world's 3.14!! \u{00A0}x\n\n y  é😀 z'LL";
        let custom = PreTokenizer::new(&[GPT2]).unwrap();
        let general = PreTokenizer { steps: vec![Step::Regex(RegexSplit::new(GPT2).unwrap())] };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        custom.split(text, &mut a).unwrap();
        general.split(text, &mut b).unwrap();
        assert_eq!(a, b);
    }
}
