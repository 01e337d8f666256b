#!/usr/bin/env python3
"""Compare crunch's sentence embeddings of a BERT GGUF with llama.cpp's (llama-cpp-python).

  compare_embeddings_llama.py MODEL.gguf CRUNCH.jsonl

CRUNCH.jsonl is what `crunch embed MODEL.gguf --text FILE -o CRUNCH.jsonl` wrote (one
{"text", "n_tokens", "embedding"} per line). Each text is embedded again by llama.cpp (mean pooling
from the file, L2-normalised, context 512) and the cosine similarity of the two vectors is printed:
mean, 1st percentile and minimum, and how many texts llama.cpp tokenized to a different length.

Run with $CRUNCH_CACHE/llama-venv/bin/python (not part of the default test run). crunch uses the
erf GELU of the original model; llama.cpp uses the tanh approximation, so the two differ slightly.
Give crunch `--max-tokens 512` so both cut long texts at the same length.
"""
import json
import sys

import numpy as np
from llama_cpp import Llama


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model, jsonl = sys.argv[1], sys.argv[2]
    recs = [json.loads(line) for line in open(jsonl, encoding="utf-8")]
    llm = Llama(model_path=model, embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, verbose=False)
    cos, differ = [], 0
    for r in recs:
        ours = np.asarray(r["embedding"], dtype=np.float64)
        theirs, n_tok = llm.embed(r["text"], normalize=True, truncate=True, return_count=True)
        theirs = np.asarray(theirs, dtype=np.float64)
        differ += int(n_tok != r["n_tokens"])
        cos.append(float(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs))))
    c = np.sort(np.asarray(cos))
    print(
        json.dumps(
            {
                "model": model,
                "n_texts": len(c),
                "mean": float(c.mean()),
                "p1": float(c[int(round(0.01 * (len(c) - 1)))]),
                "min": float(c[0]),
                "token_count_differs": differ,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
