#!/usr/bin/env python3
"""Perplexity and prompt-processing speed of crunch vs llama.cpp on the same GGUF models and text.

  compare_perplexity.py TEXT MODEL.gguf [MODEL.gguf ...] [--ctx 512] [--chunks N] [--threads 2]
                        [--lora FILE[:SCALE]] [--crunch PATH] [--json OUT] [--tolerance 0.5]

Run with the llama.cpp venv ($CRUNCH_CACHE/llama-venv/bin/python: llama_cpp + numpy).

For each model, in the same run and one after the other (never concurrently):
- llama.cpp, in a child process, following tools/perplexity/perplexity.cpp: tokenize the whole text with
  special tokens added, cut it into len/ctx chunks, put BOS first in each chunk when the vocabulary adds
  BOS, evaluate each chunk from an empty KV cache in one llama_decode batch (n_batch = n_ubatch = ctx)
  asking for logits from position ctx/2 on (as llama-perplexity does), and score positions ctx/2 .. ctx-2 with llama.cpp's log-softmax (max in
  f32, sum of expf in f64). Tokens/s = evaluated tokens / evaluation time; peak RSS of the child.
- crunch: `crunch eval perplexity MODEL --text TEXT --ctx N --chunks N --threads T --json`.
With --lora FILE[:SCALE] (one LoRA adapter, scale 1 by default) both run every model with the adapter:
llama.cpp through `Llama(..., lora_path=FILE, lora_scale=SCALE)` (its --lora-scaled), crunch with
`--lora FILE:SCALE`.
With --llama-kv-f32 llama.cpp runs with an F32 KV cache and without flash attention, i.e. the attention
precision crunch uses (llama-perplexity's default F16 cache rounds K, V and Q to f16).
Prints both perplexities, their difference in percent, both speeds and peak memory; exits 1 if a
difference exceeds --tolerance percent.
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import llama_build

REPO = Path(__file__).resolve().parent.parent


def parse_lora(spec):
    """`FILE[:SCALE]` as crunch's --lora reads it: the part after the last ':' is a scale if it is a number."""
    if not spec:
        return None
    path, sep, scale = spec.rpartition(":")
    if sep:
        try:
            value = float(scale)
        except ValueError:
            return spec, 1.0
        if not math.isfinite(value):
            sys.exit(f"--lora {spec}: the scale must be a finite number")
        return path, value
    return spec, 1.0


def open_llama(model, n_ctx, threads, lora, kv_f32=False):
    """A llama_cpp.Llama for perplexity-style batches, with the LoRA adapter `lora` = (FILE, SCALE) if given;
    `kv_f32`: an F32 KV cache and no flash attention (llama-perplexity's defaults are an F16 cache and
    flash attention "auto", which rounds K, V and Q to f16; crunch keeps them in f32)."""
    import llama_cpp

    kw = {}
    if lora:
        kw = {"lora_path": str(lora[0]), "lora_scale": float(lora[1])}
    if kv_f32:
        kw.update(type_k=0, type_v=0, flash_attn=False)  # GGML_TYPE_F32
    return llama_cpp.Llama(model_path=str(model), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                           n_threads=threads, n_threads_batch=threads, verbose=False, **kw)


def decode_chunk(ctx, batch, chunk, first, n_vocab):
    """One chunk from an empty KV cache in one llama_decode batch, logits only from position `first`
    on (as llama-perplexity asks); returns the logits (len(chunk) - first rows) and the seconds."""
    import numpy as np
    import llama_cpp

    n = len(chunk)
    batch.n_tokens = n
    for j, t in enumerate(chunk):
        batch.token[j] = int(t)
        batch.pos[j] = j
        batch.n_seq_id[j] = 1
        batch.seq_id[j][0] = 0
        batch.logits[j] = 1 if j >= first else 0
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    t0 = time.time()
    if llama_cpp.llama_decode(ctx, batch) != 0:
        sys.exit("llama_decode failed")
    dt = time.time() - t0
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(n - first, n_vocab)), dt


def llama_cpp_worker(model, text_path, n_ctx, n_chunks, threads, lora=None, kv_f32=False):
    import numpy as np
    import llama_cpp

    text = Path(text_path).read_text(encoding="utf-8")
    llm = open_llama(model, n_ctx, threads, parse_lora(lora), kv_f32)
    ctx = llm.ctx
    n_vocab = llm.n_vocab()
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
    t_eval = 0.0
    batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
    for i in range(n_chunk):
        start = i * n_ctx
        chunk = list(tokens[start:start + n_ctx])
        if add_bos:
            chunk[0] = bos
        out, dt = decode_chunk(ctx, batch, chunk, first, n_vocab)
        t_eval += dt
        rows = out[:n_ctx - 1 - first]
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
    mean = nll / count
    ppl = math.exp(mean)
    var = nll2 / count - mean * mean
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 else 0.0
    print(json.dumps({
        "ppl": ppl, "ppl_err": err, "nll": mean, "count": count, "n_tokens": len(tokens), "n_chunks": n_chunk,
        "chunk_nll": per_chunk, "seconds": t_eval, "tokens_per_second": n_chunk * n_ctx / t_eval,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


def llama_cpp_perplexity(model, text, n_ctx, n_chunks, threads, lora=None, kv_f32=False):
    cmd = [sys.executable, __file__, "--worker", str(model), str(text), "--ctx", str(n_ctx),
           "--chunks", str(n_chunks or 0), "--threads", str(threads)]
    if lora:
        cmd += ["--lora", lora]
    if kv_f32:
        cmd += ["--llama-kv-f32"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"llama.cpp worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def crunch_perplexity(crunch, model, text, n_ctx, n_chunks, threads, lora=None):
    cmd = [crunch, "eval", "perplexity", str(model), "--text", str(text), "--ctx", str(n_ctx),
           "--threads", str(threads), "--json"]
    if lora:
        cmd += ["--lora", lora]
    if n_chunks:
        cmd += ["--chunks", str(n_chunks)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"crunch failed:\n{out.stderr}")
    r = json.loads(out.stdout)
    r["chunk_nll"] = [c["nll"] / c["count"] for c in r["chunks"]]
    return r


def mib(b):
    return f"{b / 2**20:.0f} MiB" if b else "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=0, help="0 = all chunks of the text")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crunch", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release/crunch"))
    ap.add_argument("--json", help="write all results to this file")
    ap.add_argument("--tolerance", type=float, default=0.5, help="allowed PPL difference in percent")
    ap.add_argument("--lora", metavar="FILE[:SCALE]",
                    help="LoRA adapter applied to every model in both tools (scale multiplies alpha/rank, "
                         "as llama.cpp's --lora-scaled)")
    ap.add_argument("--llama-kv-f32", action="store_true",
                    help="run llama.cpp with an F32 KV cache and without flash attention (its defaults, an F16 "
                         "cache and flash attention, round K, V and Q to f16; crunch keeps them in f32)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        # argv: --worker MODEL TEXT (parsed as text=MODEL, models=[TEXT])
        return llama_cpp_worker(a.text, a.models[0], a.ctx, a.chunks, a.threads, a.lora, a.llama_kv_f32)
    if a.lora:
        parse_lora(a.lora)  # refuse a bad scale before running anything
    llama_build.print_build()
    results = []
    ok = True
    for model in a.models:
        name = Path(model).name
        ref = llama_cpp_perplexity(model, a.text, a.ctx, a.chunks, a.threads, a.lora, a.llama_kv_f32)
        ours = crunch_perplexity(a.crunch, model, a.text, a.ctx, a.chunks, a.threads, a.lora)
        if ours["n_tokens"] != ref["n_tokens"] or ours["count"] != ref["count"]:
            print(f"{name}: token counts differ: llama.cpp {ref['n_tokens']}/{ref['count']}, "
                  f"crunch {ours['n_tokens']}/{ours['count']}")
            ok = False
        rel = 100.0 * (ours["ppl"] - ref["ppl"]) / ref["ppl"]
        ok &= abs(rel) <= a.tolerance
        with_lora = f", LoRA {a.lora}" if a.lora else ""
        print(f"{name}{with_lora}: {ref['n_chunks']} chunks of {a.ctx}, {ref['count']} scored, {a.threads} threads")
        print(f"  llama.cpp  PPL = {ref['ppl']:.4f} +/- {ref['ppl_err']:.5f}  {ref['tokens_per_second']:8.1f} tokens/s"
              f"  peak RSS {mib(ref['peak_rss_bytes'])}")
        print(f"  crunch     PPL = {ours['ppl']:.4f} +/- {ours['ppl_err']:.5f}  {ours['tokens_per_second']:8.1f} tokens/s"
              f"  peak RSS {mib(ours.get('peak_rss_bytes'))}")
        print(f"  difference {rel:+.3f}% (tolerance {a.tolerance}%), speed ratio crunch/llama.cpp "
              f"{ours['tokens_per_second'] / ref['tokens_per_second']:.2f}", flush=True)
        results.append({"model": name, "lora": a.lora, "ctx": a.ctx, "threads": a.threads, "llama_cpp": ref,
                        "crunch": {k: v for k, v in ours.items() if k != "chunks"}, "ppl_diff_pct": rel})
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
