#!/usr/bin/env python3
"""The low-rank correction table of docs/LOWRANK.md: plain types beside types + a correction.

  lowrank_table.py BASE.gguf TEXT --work DIR [--types Q2_K,Q3_K_M] [--ranks 16,32,64]
                   [--plain Q2_K,Q3_K_S,Q3_K_M,Q3_K_L,Q4_K_S,Q4_K_M] [--ctx 512] [--chunks 16]
                   [--calib-skip 100] [--calib-chunks 32] [--crunch PATH] [--llama-python PATH]
                   [--json OUT] [--no-llama]

For every type in --types: `crunch quantize BASE Q TYPE`, then for every rank `crunch lowrank BASE Q
--rank R --text TEXT --skip-chunks S --chunks N` (calibration on chunks S.. of the text; evaluation on the
first --chunks chunks, so the two never overlap). Every model (plain or with its adapter) is measured
against BASE on the held-out chunks by scripts/compare_kld.py: llama.cpp (`--lora`, full-vocabulary
KLD) and crunch (`eval compare --lora --top-k 0`), one after the other. Prints a markdown table: size
(model + adapter), bits per weight, KLD and same-top-token % by both tools, perplexity by both and
their difference.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CRUNCH_CACHE", Path.home() / ".cache/crunch"))


def run(cmd):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return out.stdout


def n_weights(crunch, model):
    return json.loads(run([crunch, "inspect", model, "--json"]))["n_elements"]


def kld_json(a, work, name, q, adapter=None):
    """KLD of Q (with ADAPTER) from a.base on a.text by scripts/compare_kld.py (llama.cpp and crunch),
    cached as WORK/kld_NAME.json."""
    out = Path(work) / f"kld_{name}.json"
    if not out.exists():
        cmd = [a.llama_python, REPO / "scripts/compare_kld.py", a.text, a.base, q, "--ctx", a.ctx,
               "--chunks", a.chunks, "--crunch", a.crunch, "--json", out]
        if adapter:
            cmd += ["--lora", adapter]
        print(run(cmd), flush=True)
    return json.loads(out.read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("text")
    ap.add_argument("--work", required=True)
    ap.add_argument("--types", default="Q2_K,Q3_K_M")
    ap.add_argument("--ranks", default="16,32,64")
    ap.add_argument("--plain", default="Q2_K,Q3_K_S,Q3_K_M,Q3_K_L,Q4_K_S,Q4_K_M")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--calib-skip", type=int, default=100)
    ap.add_argument("--calib-chunks", type=int, default=32)
    ap.add_argument("--crunch", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release/crunch"))
    ap.add_argument("--llama-python", default=str(CACHE / "llama-venv/bin/python"))
    ap.add_argument("--json")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    types = [t for t in a.types.split(",") if t]
    ranks = [int(r) for r in a.ranks.split(",") if r]
    plain = [t for t in a.plain.split(",") if t]
    n_w = n_weights(a.crunch, a.base)

    def quant(t):
        q = work / f"q_{t}.gguf"
        if not q.exists():
            run([a.crunch, "quantize", a.base, q, t, "-q"])
        return q

    rows = []

    def measure(name, q, adapter=None, correction=None):
        r = kld_json(a, work, name, q, adapter)
        size = os.path.getsize(q) + (os.path.getsize(adapter) if adapter else 0)
        row = {"name": name, "bytes": size, "adapter_bytes": os.path.getsize(adapter) if adapter else 0,
               "bpw": size * 8 / n_w, "result": r, "correction": correction}
        rows.append(row)
        return row

    for t in plain:
        measure(t, quant(t))
    for t in types:
        q = quant(t)
        for r in ranks:
            ad = work / f"q_{t}.r{r}.lora.gguf"
            rep = work / f"q_{t}.r{r}.json"
            if not ad.exists():
                rep.write_text(run([a.crunch, "lowrank", a.base, q, "-o", ad, "--rank", r, "--text", a.text,
                                    "--skip-chunks", a.calib_skip, "--chunks", a.calib_chunks, "--json"]))
            corr = json.loads(rep.read_text())["result"]
            measure(f"{t} + rank {r}", q, ad, {"error_before": corr["error_before"], "error_after": corr["error_after"],
                                              "seconds": corr["seconds"]})
    rows.sort(key=lambda r: r["bytes"])
    print()
    print("| model | size MiB | bpw | KLD llama.cpp | KLD crunch | same top % (llama.cpp / crunch) | PPL llama.cpp | PPL crunch | PPL diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        x = r["result"]
        ll, cr = x["llama_cpp"], x["crunch"]
        print(f"| {r['name']} | {r['bytes'] / 2**20:.2f} | {r['bpw']:.3f} | "
              f"{ll['kld']['mean']:.4f} ± {ll['kld']['mean_err']:.4f} | {cr['kld']['mean']:.4f} ± {cr['kld']['mean_err']:.4f} | "
              f"{ll['same_top_pct']:.2f} / {cr['same_top_pct']:.2f} | "
              f"{ll['ppl_quant']:.3f} | {cr['ppl_quant']:.3f} | {x['ppl_diff_pct']:+.3f}% |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
