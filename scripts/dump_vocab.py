#!/usr/bin/env python3
"""Dump the tokenizer vocabulary of a GGUF file to JSON shaped like crunch's `GgufVocab`.

  dump_vocab.py MODEL.gguf [OUT.json]

Without OUT.json it writes $CRUNCH_CACHE/vocab/<model file stem>.json (CRUNCH_CACHE defaults to
~/.cache/crunch) and prints the path. Uses PyPI `gguf` (llama.cpp's own reader), so it is a
stand-in until crunch reads the metadata natively; the JSON never goes into the repository.
"""
import json
import os
import sys
from pathlib import Path

import gguf


def field(reader, key):
    f = reader.fields.get(key)
    if f is None or not f.types:
        return None
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        return [f.contents(i) for i in range(len(f.data))]
    return f.contents()


def string_list(reader, key):
    """String arrays, keeping invalid UTF-8 as U+FFFD like a Rust String would."""
    f = reader.fields.get(key)
    if f is None:
        return None
    return [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    src = Path(sys.argv[1])
    if len(sys.argv) > 2:
        dst = Path(sys.argv[2])
    else:
        cache = Path(os.environ.get("CRUNCH_CACHE", Path.home() / ".cache" / "crunch"))
        dst = cache / "vocab" / (src.stem + ".json")
    r = gguf.GGUFReader(str(src))
    p = "tokenizer.ggml."
    vocab = {
        "model": field(r, p + "model"),
        "pre": field(r, p + "pre"),
        "tokens": string_list(r, p + "tokens"),
        "scores": field(r, p + "scores"),
        "token_types": field(r, p + "token_type"),
        "merges": string_list(r, p + "merges"),
        "bos_id": field(r, p + "bos_token_id"),
        "eos_id": field(r, p + "eos_token_id"),
        "unk_id": field(r, p + "unknown_token_id"),
        "pad_id": field(r, p + "padding_token_id"),
        "sep_id": field(r, p + "seperator_token_id"),
        "eot_id": field(r, p + "eot_token_id"),
        "add_bos": field(r, p + "add_bos_token"),
        "add_eos": field(r, p + "add_eos_token"),
        "add_sep": field(r, p + "add_sep_token"),
        "add_space_prefix": field(r, p + "add_space_prefix"),
        "lowercase": field(r, p + "normalizer.lowercase"),
    }
    if vocab["scores"] is not None:
        vocab["scores"] = [float(x) for x in vocab["scores"]]
    vocab = {k: v for k, v in vocab.items() if v is not None}
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", encoding="utf-8") as fh:
        json.dump(vocab, fh, ensure_ascii=False)
    print(dst)


if __name__ == "__main__":
    main()
