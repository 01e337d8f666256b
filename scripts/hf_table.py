#!/usr/bin/env python3
"""The quality table of docs/HF_FORMATS.md: every Hugging Face quantized format crunch writes, beside
llama.cpp's presets, by llama.cpp's own KL-divergence.

  hf_table.py BASE.gguf TEXT --work DIR [--group-size 64] [--ctx 512] [--chunks 16]
              [--calib-chunks 32] [--rows nf4-dq,nf4,...] [--crunch PATH] [--llama-python PATH]
              [--json OUT]

For every row: `crunch export BASE WORK/ROW --format F [--method M ...] --json` (the export report gives
bits per weight of the quantized linear weights and the quantization time), `crunch convert WORK/ROW
WORK/ROW.gguf` (integer groups onto the GGUF type that holds them exactly, else F16 of the exact values),
then scripts/compare_kld.py (llama.cpp and crunch, full vocabulary) against BASE on the first --chunks
chunks of TEXT. Calibrated rows (gptq, awq) calibrate on the second half of TEXT (written to
WORK/calib.txt), so calibration and evaluation never overlap. The presets rows are `crunch quantize BASE
Q TYPE` (byte-identical to llama-quantize). Results are cached in WORK (delete a file to redo a row).

Also checks the GPTQ round trip of the issue: `crunch eval perplexity` of the GPTQ folder itself against
llama.cpp's perplexity of the GGUF crunch converted it to (must be within 1%).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CRUNCH_CACHE", Path.home() / ".cache/crunch"))
sys.path.insert(0, str(REPO / "scripts"))
from lowrank_table import kld_json, run  # noqa: E402

# name -> (label, export arguments; None for a llama.cpp preset)
ROWS = {
    "nf4-dq": ("NF4, double quantization", ["--format", "nf4"]),
    "nf4": ("NF4", ["--format", "nf4", "--no-double-quant"]),
    "fp4-dq": ("FP4, double quantization", ["--format", "fp4"]),
    "int4-rtn": ("INT4 symmetric, RTN", ["--format", "int4"]),
    "int4-asym-rtn": ("INT4 with zero points, RTN", ["--format", "int4", "--asym"]),
    "int4-hqq": ("INT4 with zero points, HQQ", ["--format", "int4", "--method", "hqq"]),
    "gptq": ("GPTQ INT4 symmetric (crunch's GPTQ)", ["--format", "gptq", "--method", "gptq"]),
    "awq": ("AWQ INT4 with zero points (crunch's AWQ)", ["--format", "awq", "--method", "awq"]),
    "int8": ("INT8 symmetric, RTN", ["--format", "int8"]),
    "Q4_0": ("Q4_0 (llama.cpp preset, whole file)", None),
    "Q4_K_M": ("Q4_K_M (llama.cpp preset, whole file)", None),
    "IQ4_NL": ("IQ4_NL (llama.cpp preset, whole file)", None),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("text")
    ap.add_argument("--work", required=True)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--calib-chunks", type=int, default=32)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--crunch", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release/crunch"))
    ap.add_argument("--llama-python", default=str(CACHE / "llama-venv/bin/python"))
    ap.add_argument("--json")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    calib = work / "calib.txt"
    if not calib.exists():
        lines = Path(a.text).read_text(encoding="utf-8").splitlines(keepends=True)
        calib.write_text("".join(lines[len(lines) // 2:]), encoding="utf-8")

    results = []
    for name in [r for r in a.rows.split(",") if r]:
        label, args = ROWS[name]
        row = {"name": name, "label": label}
        if args is None:
            q = work / f"{name}.gguf"
            if not q.exists():
                run([a.crunch, "quantize", a.base, q, name, "-q"])
            info = json.loads(run([a.crunch, "inspect", q, "--json"]))
            row["bpw"] = 8.0 * q.stat().st_size / info["n_elements"]
            row["bpw_note"] = "whole file"
            model = q
        else:
            folder, report_file = work / name, work / f"{name}.export.json"
            if not report_file.exists():
                cmd = [a.crunch, "export", a.base, folder, *args, "--group-size", a.group_size, "--json"]
                if "--method" in args and args[args.index("--method") + 1] in ("gptq", "awq"):
                    cmd += ["--text", calib, "--ctx", a.ctx, "--chunks", a.calib_chunks]
                t0 = time.time()
                out = json.loads(run(cmd))
                out["wall_seconds"] = time.time() - t0
                report_file.write_text(json.dumps(out))
            report = json.loads(report_file.read_text())
            q_rep = report.get("result", report)["quantized"]
            row["bpw"] = q_rep["bits_per_weight"]
            row["bpw_note"] = "linear weights"
            # The whole export (calibration included) when it was timed, else the rounding alone.
            row["seconds"] = report.get("wall_seconds", q_rep.get("seconds_quantizing"))
            row["rel_rmse"] = q_rep.get("rel_rmse")
            model = work / f"{name}.gguf"
            if not model.exists():
                run([a.crunch, "convert", folder, model, "-q"])
        r = kld_json(a, work, name, model)
        row["kld"], row["kld_err"] = r["llama_cpp"]["kld"]["mean"], r["llama_cpp"]["kld"].get("mean_err")
        row["same_top_pct"] = r["llama_cpp"]["same_top_pct"]
        row["ppl"], row["ppl_base"] = r["llama_cpp"]["ppl_quant"], r["llama_cpp"]["ppl_base"]
        row["crunch_kld"] = r["crunch"]["kld"]["mean"]
        results.append(row)
        print(json.dumps(row), flush=True)

    print("\n| format | bits per weight | KLD (llama.cpp) | same top | PPL | KLD (crunch) | quantization time |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        err = f" ± {r['kld_err']:.4f}" if r.get("kld_err") else ""
        secs = f"{r['seconds']:.1f} s" if r.get("seconds") is not None else ""
        print(f"| {r['label']} | {r['bpw']:.3f} ({r['bpw_note']}) | {r['kld']:.4f}{err} | {r['same_top_pct']:.1f}% | "
              f"{r['ppl']:.2f} | {r['crunch_kld']:.4f} | {secs} |")
    if results:
        print(f"\nbase perplexity (llama.cpp): {results[0]['ppl_base']:.3f}")

    if "gptq" in [r["name"] for r in results]:
        out = work / "ppl_gptq_folder.json"
        if not out.exists():
            out.write_text(run([a.crunch, "eval", "perplexity", work / "gptq", "-f", a.text, "--ctx", a.ctx,
                                "--chunks", a.chunks, "--json"]))
        r = json.loads(out.read_text())
        folder_ppl = r.get("result", r)["ppl"]
        llama_ppl = next(x for x in results if x["name"] == "gptq")["ppl"]
        diff = 100.0 * (llama_ppl - folder_ppl) / folder_ppl
        print(f"\nGPTQ round trip: crunch eval of the GPTQ folder PPL {folder_ppl:.4f}, llama.cpp on crunch's "
              f"GGUF of it {llama_ppl:.4f} ({diff:+.3f}%, {'within' if abs(diff) <= 1.0 else 'OUTSIDE'} 1%)")
        for row in results:
            if row["name"] == "gptq":
                row["folder_ppl_crunch"], row["roundtrip_diff_pct"] = folder_ppl, diff
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
