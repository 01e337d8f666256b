#!/usr/bin/env python3
"""KL-divergence of MODEL (optionally with a LoRA adapter) from BASE, measured by llama.cpp and by crunch.

  compare_kld.py TEXT BASE.gguf MODEL.gguf [--lora FILE[:SCALE]] [--ctx 512] [--chunks N] [--threads 2]
                 [--top-k K] [--crunch PATH] [--json OUT] [--tolerance 0.5]

Run with the llama.cpp venv ($CRUNCH_CACHE/llama-venv/bin/python: llama_cpp + numpy).

- llama.cpp, in child processes one after the other (never concurrently), chunked as llama-perplexity
  (see compare_perplexity.py): the text tokenized with special tokens added, chunks of --ctx tokens, BOS
  first in each chunk when the vocabulary adds it, one llama_decode batch per chunk from an empty KV
  cache, positions ctx/2 .. ctx-2 scored. The first child runs BASE and writes, per chunk, the
  log-softmax of its logits over the whole vocabulary (float64) to a temporary .npy (so memory stays one
  chunk; disk holds positions x vocabulary x 8 bytes until the end), and the tokens; the second runs
  MODEL (with `Llama(..., lora_path=FILE, lora_scale=SCALE)` for --lora) on BASE's tokens and computes,
  per position, KL(BASE || MODEL) = sum p_base (log p_base - log p_model) over the full vocabulary, whether
  both put the same token on top, and both negative log-likelihoods.
- crunch: `crunch eval compare BASE MODEL --text TEXT --ctx N --chunks N --threads T --top-k K --json
  [--lora FILE:SCALE]` (the adapter on MODEL only). --top-k 0 (the default) keeps the whole vocabulary,
  so crunch's KLD is the full one too (its top-k bound is looser, see docs/EVAL.md); it holds
  positions x K x 8 bytes in memory.

Prints mean KLD (+/- its standard error), median / 99% / max, same-top-token %, both perplexities for each
tool, and the differences in percent; exits 1 if MODEL's perplexity differs between the tools by more
than --tolerance percent.
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import llama_build
from compare_perplexity import decode_chunk, open_llama, parse_lora

REPO = Path(__file__).resolve().parent.parent


def chunk_log_probs(llm, tokens, n_ctx, n_chunk, add_bos, bos):
    """Yield (chunk index, float64 log-softmax of the scored rows, their target tokens, decode seconds)."""
    import numpy as np
    import llama_cpp

    ctx = llm.ctx
    n_vocab = llm.n_vocab()
    first = n_ctx // 2
    batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
    try:
        for i in range(n_chunk):
            start = i * n_ctx
            chunk = list(tokens[start:start + n_ctx])
            if add_bos:
                chunk[0] = bos
            out, dt = decode_chunk(ctx, batch, chunk, first, n_vocab)
            x = out[:n_ctx - 1 - first].astype(np.float64)
            x -= x.max(axis=1, keepdims=True)
            x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
            targets = np.asarray(tokens[start + first + 1:start + n_ctx], dtype=np.int64)
            yield i, x, targets, dt
    finally:
        llama_cpp.llama_batch_free(batch)


def worker_base(model, text_path, n_ctx, n_chunks, threads, tmp):
    import numpy as np

    text = Path(text_path).read_text(encoding="utf-8")
    llm = open_llama(model, n_ctx, threads, None)
    add_bos = bool(llm._model.add_bos_token())
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    if len(tokens) < 2 * n_ctx:
        sys.exit(f"need at least {2 * n_ctx} tokens, the text has {len(tokens)}")
    n_chunk = min(len(tokens) // n_ctx, n_chunks) if n_chunks else len(tokens) // n_ctx
    np.save(Path(tmp) / "tokens.npy", np.asarray(tokens[:n_chunk * n_ctx], dtype=np.int64))
    nll = 0.0
    count = 0
    t_eval = 0.0
    for i, logp, targets, dt in chunk_log_probs(llm, tokens, n_ctx, n_chunk, add_bos, llm.token_bos()):
        t_eval += dt
        np.save(Path(tmp) / f"base_{i}.npy", logp)
        nll -= float(logp[np.arange(len(targets)), targets].sum())
        count += len(targets)
        print(f"[{i + 1}]{math.exp(nll / count):.4f},", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(json.dumps({
        "n_tokens": len(tokens), "n_chunks": n_chunk, "count": count, "n_vocab": llm.n_vocab(),
        "add_bos": add_bos, "bos": llm.token_bos(), "ppl": math.exp(nll / count), "seconds": t_eval,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


def kld_stats(values):
    import numpy as np

    v = np.sort(np.asarray(values, dtype=np.float64))
    n = len(v)
    q = lambda f: float(v[min(n - 1, int(f * (n - 1) + 0.5))])
    return {"mean": float(v.mean()), "mean_err": float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
            "median": q(0.5), "p99": q(0.99), "max": float(v[-1])}


def worker_model(model, n_ctx, threads, lora, tmp, base_json):
    import numpy as np

    base = json.loads(base_json)
    llm = open_llama(model, n_ctx, threads, parse_lora(lora))
    if llm.n_vocab() != base["n_vocab"]:
        sys.exit(f"vocabularies differ: BASE has {base['n_vocab']} tokens, MODEL {llm.n_vocab()}")
    tokens = np.load(Path(tmp) / "tokens.npy").tolist()
    klds = []
    same = 0
    nll_b = nll_q = nll_q2 = 0.0
    count = 0
    t_eval = 0.0
    for i, lq, targets, dt in chunk_log_probs(llm, tokens, n_ctx, base["n_chunks"], base["add_bos"], base["bos"]):
        t_eval += dt
        lb = np.load(Path(tmp) / f"base_{i}.npy")
        klds.extend((np.exp(lb) * (lb - lq)).sum(axis=1).tolist())
        same += int((lb.argmax(axis=1) == lq.argmax(axis=1)).sum())
        rows = np.arange(len(targets))
        v = -lq[rows, targets]
        nll_q += float(v.sum())
        nll_q2 += float((v * v).sum())
        nll_b -= float(lb[rows, targets].sum())
        count += len(targets)
        print(f"[{i + 1}]KLD {np.mean(klds):.6f},", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    mean = nll_q / count
    ppl = math.exp(mean)
    var = nll_q2 / count - mean * mean
    p = same / count
    print(json.dumps({
        "n_positions": count, "kld": kld_stats(klds), "same_top_pct": 100.0 * p,
        "same_top_err": 100.0 * math.sqrt(p * (1 - p) / count), "ppl_base": math.exp(nll_b / count),
        "ppl_quant": ppl, "ppl_quant_err": math.sqrt(var / (count - 1)) * ppl if var > 0 else 0.0,
        "seconds": t_eval, "tokens_per_second": base["n_chunks"] * n_ctx / t_eval,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


def run_worker(args):
    cmd = [sys.executable, __file__, "--worker", *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"llama.cpp worker failed ({' '.join(args[:2])}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def llama_cpp_kld(a):
    with tempfile.TemporaryDirectory(prefix="compare-kld-") as tmp:
        common = ["--ctx", str(a.ctx), "--chunks", str(a.chunks or 0), "--threads", str(a.threads), "--tmp", tmp]
        base = run_worker(["base", a.base, a.text, *common])
        model_args = ["model", a.model, a.text, *common, "--base-json", json.dumps(base)]
        if a.lora:
            model_args += ["--lora", a.lora]
        r = run_worker(model_args)
    r["base"] = base
    return r


def crunch_kld(a, n_vocab):
    top_k = a.top_k or n_vocab
    cmd = [a.crunch, "eval", "compare", a.base, a.model, "--text", a.text, "--ctx", str(a.ctx),
           "--threads", str(a.threads), "--top-k", str(top_k), "--json"]
    if a.chunks:
        cmd += ["--chunks", str(a.chunks)]
    if a.lora:
        cmd += ["--lora", a.lora]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"crunch failed:\n{out.stderr}")
    r = json.loads(out.stdout)
    r["wall_seconds"] = time.time() - t0
    return r


def pct(x, ref):
    return 100.0 * (x - ref) / ref if ref else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text")
    ap.add_argument("base")
    ap.add_argument("model")
    ap.add_argument("--lora", metavar="FILE[:SCALE]",
                    help="LoRA adapter applied to MODEL (never to BASE) in both tools; SCALE multiplies "
                         "alpha/rank as llama.cpp's --lora-scaled")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=0, help="0 = all chunks of the text")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=0,
                    help="base log-probabilities crunch keeps per position (0 = the whole vocabulary)")
    ap.add_argument("--crunch", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release/crunch"))
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--tolerance", type=float, default=0.5, help="allowed PPL difference of MODEL in percent")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--base-json", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        # argv: --worker base|model MODEL TEXT (parsed as text=base|model, base=MODEL, model=TEXT)
        if a.text == "base":
            return worker_base(a.base, a.model, a.ctx, a.chunks, a.threads, a.tmp)
        return worker_model(a.base, a.ctx, a.threads, a.lora, a.tmp, a.base_json)
    if a.lora:
        parse_lora(a.lora)  # refuse a bad scale before running anything
    llama_build.print_build()
    ref = llama_cpp_kld(a)
    ours = crunch_kld(a, ref["base"]["n_vocab"])
    ok = True
    if ours["n_positions"] != ref["n_positions"]:
        print(f"scored positions differ: llama.cpp {ref['n_positions']}, crunch {ours['n_positions']}")
        ok = False
    with_lora = f" + LoRA {a.lora}" if a.lora else ""
    print(f"{Path(a.model).name}{with_lora} against {Path(a.base).name}: {ref['base']['n_chunks']} chunks of "
          f"{a.ctx}, {ref['n_positions']} positions, {a.threads} threads; crunch top-k {ours['top_k']}")
    for name, r in (("llama.cpp", ref), ("crunch", ours)):
        k = r["kld"]
        print(f"  {name:<10} KLD {k['mean']:.6f} +/- {k['mean_err']:.6f} (median {k['median']:.6f}, 99% "
              f"{k['p99']:.6f}, max {k['max']:.6f})  same top {r['same_top_pct']:.3f}% +/- "
              f"{r['same_top_err']:.3f}%  PPL base {r['ppl_base']:.4f}  PPL model {r['ppl_quant']:.4f}")
    d_model = pct(ours["ppl_quant"], ref["ppl_quant"])
    d_base = pct(ours["ppl_base"], ref["ppl_base"])
    d_kld = pct(ours["kld"]["mean"], ref["kld"]["mean"])
    ok &= abs(d_model) <= a.tolerance
    print(f"  difference crunch vs llama.cpp: PPL model {d_model:+.3f}% (tolerance {a.tolerance}%), PPL base "
          f"{d_base:+.3f}%, mean KLD {d_kld:+.2f}%, same top {ours['same_top_pct'] - ref['same_top_pct']:+.3f} points",
          flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({
            "base": a.base, "model": a.model, "lora": a.lora, "ctx": a.ctx, "threads": a.threads,
            "llama_cpp": ref, "crunch": ours, "ppl_diff_pct": d_model, "ppl_base_diff_pct": d_base,
            "kld_diff_pct": d_kld,
        }, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
