#!/usr/bin/env python3
"""Quantize throughput: crunch next to llama.cpp's quantizer on a 7B-shaped Llama F16 model.

  ~/.cache/crunch/llama-venv/bin/python scripts/bench_quantize.py --crunch target/release/crunch \
      [--layers 32] [--presets Q8_0,Q4_0,Q4_K_M,Q6_K] [--threads 2] [--no-drop-caches] [--keep-input]
  ~/.cache/crunch/llama-venv/bin/python scripts/bench_quantize.py --kernels
      (llama.cpp's row quantizers alone, 1 thread; crunch's: cargo bench -p crunch-quant --bench quantize)

The first run writes a synthetic 7B-shaped Llama F16 GGUF to ~/.cache/crunch/bench (hidden 4096,
ffn 11008, 32 heads, 32 kv heads, vocab 32000, untied output; `--layers` transformer blocks, 32 for
the full 7B, about 13.5 GB). Weights are random f16 with realistic statistics: per-row scales
0.02 * U(0.5, 1.5) times a standard normal, with one value in 500 multiplied by 8 (heavy tails), as
crunch_testkit::realistic_weights. The file is written tensor by tensor in slabs of rows, so memory
stays small, and is reused by later runs.

Then, for each preset, llama.cpp (llama-cpp-python's `llama_model_quantize`, nthread = threads, in
a subprocess) and `crunch quantize --threads N -q` each quantize the file once. Both run under
/usr/bin/time -v for wall time and peak RSS. Before every run the page cache is dropped
(`sync; echo 3 > /proc/sys/vm/drop_caches`, needs root), so each tool reads its input cold from
disk; `--no-drop-caches` runs each tool once first as a warm-up instead.

Prints input MB/s (F16 file bytes / wall seconds), the crunch / llama.cpp ratio, the CPU time
(user + system) of each (a steadier comparison when other work shares the machine), peak RSS of
each, and the largest tensor's f32 size for reference. `--keep-input` keeps the generated model for
later runs; by default it is deleted at the end, as the 32-layer file takes 13.5 GB.
"""
import argparse
import os
import re
import struct
import subprocess
import sys
import time

import numpy as np

import llama_build

BENCH_DIR = os.path.expanduser("~/.cache/crunch/bench")
PRESETS = {"Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15, "Q6_K": 18}  # llama_ftype codes

HIDDEN, FFN, HEADS, KV_HEADS, VOCAB, CTX = 4096, 11008, 32, 32, 32000, 4096
ALIGN = 32
F32, F16 = 0, 1


def tensor_list(layers):
    """(name, ggml dims (ne0 first), type) in llama.cpp's order."""
    t = [("token_embd.weight", (HIDDEN, VOCAB), F16)]
    for i in range(layers):
        p = f"blk.{i}."
        t += [
            (p + "attn_norm.weight", (HIDDEN,), F32),
            (p + "attn_q.weight", (HIDDEN, HIDDEN), F16),
            (p + "attn_k.weight", (HIDDEN, HIDDEN * KV_HEADS // HEADS), F16),
            (p + "attn_v.weight", (HIDDEN, HIDDEN * KV_HEADS // HEADS), F16),
            (p + "attn_output.weight", (HIDDEN, HIDDEN), F16),
            (p + "ffn_norm.weight", (HIDDEN,), F32),
            (p + "ffn_gate.weight", (HIDDEN, FFN), F16),
            (p + "ffn_down.weight", (FFN, HIDDEN), F16),
            (p + "ffn_up.weight", (HIDDEN, FFN), F16),
        ]
    t += [("output_norm.weight", (HIDDEN,), F32), ("output.weight", (HIDDEN, VOCAB), F16)]
    return t


def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, value):
    out = gguf_str(key) + struct.pack("<I", vtype)
    if vtype == 4:
        out += struct.pack("<I", value)
    elif vtype == 6:
        out += struct.pack("<f", value)
    elif vtype == 8:
        out += gguf_str(value)
    elif vtype == 9:  # (elem type, list)
        et, items = value
        out += struct.pack("<IQ", et, len(items))
        if et == 8:
            out += b"".join(gguf_str(s) for s in items)
        elif et == 6:
            out += np.asarray(items, dtype="<f4").tobytes()
        elif et == 5:
            out += np.asarray(items, dtype="<i4").tobytes()
    return out


def write_model(path, layers, seed=7):
    tensors = tensor_list(layers)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"tok{i}" for i in range(VOCAB - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (VOCAB - 259)
    meta = [
        kv("general.architecture", 8, "llama"),
        kv("general.name", 8, f"synthetic-7b-shaped-{layers}l"),
        kv("general.file_type", 4, 1),
        kv("llama.vocab_size", 4, VOCAB),
        kv("llama.context_length", 4, CTX),
        kv("llama.embedding_length", 4, HIDDEN),
        kv("llama.block_count", 4, layers),
        kv("llama.feed_forward_length", 4, FFN),
        kv("llama.rope.dimension_count", 4, HIDDEN // HEADS),
        kv("llama.attention.head_count", 4, HEADS),
        kv("llama.attention.head_count_kv", 4, KV_HEADS),
        kv("llama.attention.layer_norm_rms_epsilon", 6, 1e-5),
        kv("tokenizer.ggml.model", 8, "llama"),
        kv("tokenizer.ggml.tokens", 9, (8, tokens)),
        kv("tokenizer.ggml.scores", 9, (6, [-float(i) for i in range(VOCAB)])),
        kv("tokenizer.ggml.token_type", 9, (5, types)),
        kv("tokenizer.ggml.bos_token_id", 4, 1),
        kv("tokenizer.ggml.eos_token_id", 4, 2),
        kv("tokenizer.ggml.unknown_token_id", 4, 0),
    ]
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)) + b"".join(meta)
    offset = 0
    infos = b""
    for name, dims, ty in tensors:
        infos += gguf_str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ty, offset)
        n = int(np.prod(dims)) * (4 if ty == F32 else 2)
        offset += (n + ALIGN - 1) // ALIGN * ALIGN
    head = header + infos
    head += b"\0" * ((-len(head)) % ALIGN)
    rng = np.random.default_rng(seed)
    tmp = path + ".part"
    t0 = time.time()
    with open(tmp, "wb") as f:
        f.write(head)
        for name, dims, ty in tensors:
            if ty == F32:
                data = (1.0 + 0.05 * rng.standard_normal(dims[0], dtype=np.float32)).astype("<f4").tobytes()
                f.write(data)
            else:
                cols, rows = dims
                slab = max(1, (16 << 20) // cols)
                for r in range(0, rows, slab):
                    n = min(slab, rows - r)
                    scale = (0.02 * (0.5 + rng.random((n, 1), dtype=np.float32))).astype(np.float32)
                    v = rng.standard_normal((n, cols), dtype=np.float32)
                    v *= scale
                    tail = rng.integers(0, 500, size=(n, cols), dtype=np.int16) == 0
                    v[tail] *= 8.0
                    f.write(v.astype("<f2").tobytes())
                data = b""
            n = int(np.prod(dims)) * (4 if ty == F32 else 2)
            f.write(b"\0" * ((-n) % ALIGN))
            print(f"\r  generated {name:28}", end="", file=sys.stderr, flush=True)
    os.replace(tmp, path)
    print(f"\n  wrote {path} ({os.path.getsize(path) / 1e9:.2f} GB) in {time.time() - t0:.0f} s", file=sys.stderr)


LLAMA_CHILD = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.nthread = int(sys.argv[3]); p.ftype = int(sys.argv[4])
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p))
sys.exit(rc)
"""


def timed(cmd):
    """Run `cmd` under /usr/bin/time -v: (wall seconds, peak RSS bytes, CPU seconds user + system)."""
    t = time.time()
    r = subprocess.run(["/usr/bin/time", "-v"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.time() - t
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) * 1024
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([0-9.]+)", r.stderr).group(1)) for k in ("User", "System"))
    return wall, rss, cpu


def load_average():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


KERNEL_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K", "IQ4_NL", "IQ4_XS"]


def bench_kernels():
    """llama.cpp's row quantizers alone, one thread, on 512 rows of 4096 (the counterpart of
    `cargo bench -p crunch-quant --bench quantize`, which also includes crunch's f16 -> f32 step).
    Timed in thread CPU seconds, so the figures hold on a busy machine."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from compare_quant_bytes import TYPES, libggml, ptr
    lib = libggml()
    rng = np.random.default_rng(7)
    rows, cols = 512, 4096
    x = rng.standard_normal((rows, cols), dtype=np.float32) * (0.02 * (0.5 + rng.random((rows, 1), dtype=np.float32)))
    x = np.ascontiguousarray(x.astype(np.float16).astype(np.float32))
    for ty in KERNEL_TYPES:
        t = TYPES[ty]
        out = np.zeros(lib.ggml_row_size(t, cols) * rows, dtype=np.uint8)
        passes, t0 = 0, time.thread_time()
        while passes == 0 or time.thread_time() - t0 < 0.5:
            lib.ggml_quantize_chunk(t, ptr(x), ptr(out), 0, rows, cols, None)
            passes += 1
        best = (time.thread_time() - t0) / passes
        print(f"{ty:>7}: {rows * cols * 2 / 1e6 / best:8.1f} MB/s of f16 input (llama.cpp, 1 thread, per CPU second,"
              " quantize only)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels", action="store_true", help="only time llama.cpp's row quantizers (1 thread)")
    ap.add_argument("--crunch")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-drop-caches", action="store_true")
    ap.add_argument("--keep-input", action="store_true")
    a = ap.parse_args()
    llama_build.print_build()
    if a.kernels:
        return bench_kernels()
    if not a.crunch:
        ap.error("--crunch PATH is required")
    os.makedirs(BENCH_DIR, exist_ok=True)
    src = os.path.join(BENCH_DIR, f"llama7b-shape-{a.layers}l-f16.gguf")
    if not os.path.exists(src):
        write_model(src, a.layers)
    size = os.path.getsize(src)
    largest = max(int(np.prod(d)) for _, d, _ in tensor_list(a.layers)) * 4
    drop = not a.no_drop_caches
    print(f"input: {src}, {size / 1e6:.0f} MB F16, {a.layers} layers of 7B shape, threads {a.threads}")
    print(f"largest tensor as f32: {largest / 1e6:.0f} MB")
    print("page cache dropped before every run (cold input)" if drop else "each tool run once first (warm input)")
    out = os.path.join(BENCH_DIR, "out.gguf")
    rows = []
    for name in a.presets.split(","):
        llama = [sys.executable, "-c", LLAMA_CHILD, src, out, str(a.threads), str(PRESETS[name])]
        crunch = [a.crunch, "quantize", src, out, name, "--threads", str(a.threads), "-q"]
        res = {}
        for tool, cmd in (("llama.cpp", llama), ("crunch", crunch)):
            if drop:
                drop_caches()
            else:
                timed(cmd)
            load = load_average()
            res[tool] = timed(cmd)
            out_mb = os.path.getsize(out) / 1e6
            os.remove(out)
            for extra in (out + ".sha256",):
                if os.path.exists(extra):
                    os.remove(extra)
            wall, rss, cpu = res[tool]
            print(f"  {name:7} {tool:9} {wall:7.1f} s {size / 1e6 / wall:8.1f} MB/s  CPU {cpu:7.1f} s"
                  f"  peak RSS {rss / 1e6:7.0f} MB  output {out_mb:.0f} MB  (load average before: {load:.1f})",
                  flush=True)
        rows.append((name, res))
    print()
    print("| preset | llama.cpp MB/s | crunch MB/s | crunch / llama.cpp (wall) | llama.cpp CPU s | crunch CPU s "
          "| CPU ratio | llama.cpp peak RSS | crunch peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, res in rows:
        (lw, lr, lc), (cw, cr, cc) = res["llama.cpp"], res["crunch"]
        print(f"| {name} | {size / 1e6 / lw:.1f} | {size / 1e6 / cw:.1f} | {lw / cw:.2f}x | {lc:.1f} | {cc:.1f} "
              f"| {lc / cc:.2f}x | {lr / 1e6:.0f} MB | {cr / 1e6:.0f} MB |")
    if not a.keep_input:
        os.remove(src)


if __name__ == "__main__":
    main()
