#!/usr/bin/env python3
"""Compare crunch's perplexity with llama.cpp's on the same GGUF model and text.

  compare_perplexity.py MODEL.gguf TEXT [--ctx 512] [--chunks N] [--threads 2] [--crunch-bin PATH]

Run with the llama.cpp venv (/root/.cache/crunch/llama-venv/bin/python: llama_cpp + numpy).

The llama.cpp side follows tools/perplexity/perplexity.cpp: tokenize the whole text with special
tokens added and none parsed, cut it into len/ctx chunks, put BOS first in each chunk when the
vocabulary adds BOS, evaluate each chunk from an empty KV cache with logits for every position,
and score positions ctx/2 .. ctx-2 (each predicting the next token) with llama.cpp's log-softmax
(max in f32, sum of expf in f64). The crunch side runs
`cargo run --release -p crunch-model --example perplexity -- MODEL TEXT --ctx N --chunks N --json`
(or the binary given with --crunch-bin) and reads its last line.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import llama_cpp

REPO = Path(__file__).resolve().parent.parent


def llama_cpp_perplexity(model, text, n_ctx, n_chunks, threads):
    llm = llama_cpp.Llama(
        model_path=str(model), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=threads, verbose=False
    )
    add_bos = bool(llm._model.add_bos_token())
    bos = llm.token_bos()
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    if len(tokens) < 2 * n_ctx:
        sys.exit(f"need at least {2 * n_ctx} tokens, the text has {len(tokens)}")
    n_chunk = min(len(tokens) // n_ctx, n_chunks) if n_chunks else len(tokens) // n_ctx
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    per_chunk = []
    t0 = time.time()
    for i in range(n_chunk):
        start = i * n_ctx
        chunk = list(tokens[start:start + n_ctx])
        if add_bos:
            chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[:n_ctx], dtype=np.float32)
        rows = logits[first:n_ctx - 1]
        targets = np.asarray(tokens[start + first + 1:start + n_ctx])
        mx = rows.max(axis=1)
        sum_exp = np.exp(rows - mx[:, None]).astype(np.float64).sum(axis=1)
        lt = (rows[np.arange(len(targets)), targets] - mx).astype(np.float64)
        v = -(lt - np.log(sum_exp))
        nll += float(v.sum())
        nll2 += float((v * v).sum())
        count += len(v)
        per_chunk.append(float(v.mean()))
        print(f"[{i + 1}]{math.exp(nll / count):.4f},", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    secs = time.time() - t0
    mean = nll / count
    ppl = math.exp(mean)
    var = nll2 / count - mean * mean
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 else 0.0
    return {
        "ppl": ppl,
        "ppl_err": err,
        "nll": mean,
        "count": count,
        "n_tokens": len(tokens),
        "chunk_nll": per_chunk,
        "tokens_per_second": n_chunk * n_ctx / secs,
    }


def crunch_perplexity(model, text_path, n_ctx, n_chunks, crunch_bin):
    args = [str(model), str(text_path), "--ctx", str(n_ctx), "--json"]
    if n_chunks:
        args += ["--chunks", str(n_chunks)]
    if crunch_bin:
        cmd = [crunch_bin] + args
    else:
        cmd = ["cargo", "run", "--quiet", "--release", "-p", "crunch-model", "--example", "perplexity", "--"] + args
    env = dict(os.environ)
    env.setdefault("CARGO_TARGET_DIR", "/root/.cache/crunch/target-model")
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"crunch failed:\n{out.stderr}")
    sys.stderr.write(out.stderr)
    lines = out.stdout.strip().splitlines()
    for line in lines[:-1]:
        print("crunch:", line)
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crunch-bin")
    ap.add_argument("--tolerance", type=float, default=0.5, help="allowed PPL difference in percent")
    a = ap.parse_args()
    text = Path(a.text).read_text(encoding="utf-8")
    ref = llama_cpp_perplexity(a.model, text, a.ctx, a.chunks, a.threads)
    print(f"llama.cpp: Final estimate: PPL = {ref['ppl']:.4f} +/- {ref['ppl_err']:.5f} "
          f"({ref['count']} scored, {ref['tokens_per_second']:.1f} tokens/s)")
    ours = crunch_perplexity(a.model, a.text, a.ctx, a.chunks, a.crunch_bin)
    print(f"crunch:    Final estimate: PPL = {ours['ppl']:.4f} +/- {ours['ppl_err']:.5f} "
          f"({ours['count']} scored, {ours['tokens_per_second']:.1f} tokens/s)")
    if ours["n_tokens"] != ref["n_tokens"] or ours["count"] != ref["count"]:
        sys.exit(f"token counts differ: llama.cpp {ref['n_tokens']}/{ref['count']}, "
                 f"crunch {ours['n_tokens']}/{ours['count']}")
    for i, (r, o) in enumerate(zip(ref["chunk_nll"], ours["chunk_nll"])):
        print(f"  chunk {i + 1}: mean NLL llama.cpp {r:.5f}  crunch {o:.5f}  diff {o - r:+.5f}")
    rel = 100.0 * (ours["ppl"] - ref["ppl"]) / ref["ppl"]
    print(f"difference: {rel:+.3f}% (tolerance {a.tolerance}%)")
    sys.exit(0 if abs(rel) <= a.tolerance else 1)


if __name__ == "__main__":
    main()
