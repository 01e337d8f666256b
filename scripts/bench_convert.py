#!/usr/bin/env python3
"""Benchmark `crunch convert` on a 7B-shaped, sharded BF16 Hugging Face checkpoint.

  bench_convert.py gen DIR
      Write a synthetic Llama-2-7B-shaped checkpoint into DIR: 32 layers, hidden 4096, FFN 11008,
      32 heads, vocab 32000, BF16 tensors (Gaussian, std 0.02, drawn from a 256 MiB pool so
      generation is disk-bound) in three safetensors shards with model.safetensors.index.json
      (12.55 GiB of tensor data), plus config.json, a 32000-piece SentencePiece tokenizer.model,
      tokenizer_config.json and generation_config.json.

  bench_convert.py run DIR --crunch BIN --out OUTDIR [--types f16,q4_k_m] [--threads 2] [--json FILE]
      For each type: drop the page cache (when permitted), time `cat` of the shards (disk read
      throughput), then `/usr/bin/time -v BIN convert DIR OUTDIR/out.gguf --type T --json`: wall
      time, MB/s of checkpoint read, peak RSS (VmHWM, which counts the resident pages of the
      memory-mapped shards) and crunch's own peak anonymous memory (RssAnon sampled after every
      tensor). A `dd` write of 4 GiB with fdatasync gives the disk's write throughput. Every output
      is deleted after it is measured. Prints a table and writes JSON.

Needs only numpy (the oracle venv) and /usr/bin/time.
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

H, FF, L, HEADS, VOCAB = 4096, 11008, 32, 32, 32000
SHARD_BYTES = 5_000_000_000


def tensors(n_layers=L):
    out = [("model.embed_tokens.weight", (VOCAB, H))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (H,)),
            (p + "mlp.down_proj.weight", (H, FF)),
            (p + "mlp.gate_proj.weight", (FF, H)),
            (p + "mlp.up_proj.weight", (FF, H)),
            (p + "post_attention_layernorm.weight", (H,)),
            (p + "self_attn.k_proj.weight", (H, H)),
            (p + "self_attn.o_proj.weight", (H, H)),
            (p + "self_attn.q_proj.weight", (H, H)),
            (p + "self_attn.v_proj.weight", (H, H)),
        ]
    out += [("model.norm.weight", (H,)), ("lm_head.weight", (VOCAB, H))]
    return out


def varint(v):
    b = bytearray()
    while True:
        x = v & 0x7F
        v >>= 7
        if v:
            b.append(x | 0x80)
        else:
            b.append(x)
            return bytes(b)


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def spm_model():
    """A SentencePiece ModelProto with Llama 2's layout: <unk> <s> </s>, 256 byte pieces, words."""
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    n_words = VOCAB - len(pieces)
    pieces += [(f"\u2581w{i}", -float(i), 1) for i in range(n_words)]
    out = bytearray()
    for text, score, kind in pieces:
        p = field(1, 2, text.encode()) + field(2, 5, struct.pack("<f", score))
        if kind != 1:
            p += field(3, 0, varint(kind))
        out += field(1, 2, p)
    out += field(2, 2, field(3, 0, varint(2)) + field(4, 0, varint(VOCAB)) + field(35, 0, varint(1)))
    out += field(3, 2, field(1, 2, b"identity") + field(3, 0, varint(1)) + field(5, 0, varint(1)))
    return bytes(out)


def cmd_gen(a):
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    pool = (rng.standard_normal(128 << 20, dtype=np.float32) * 0.02).view(np.uint32)
    pool = ((pool + 0x7FFF + ((pool >> 16) & 1)) >> 16).astype(np.uint16)  # f32 -> bf16, round to nearest even
    ts = tensors(a.layers)
    shards, cur, size = [], [], 0
    for name, shape in ts:
        n = int(np.prod(shape)) * 2
        if cur and size + n > SHARD_BYTES:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += n
    shards.append(cur)
    weight_map, total = {}, 0
    t0 = time.time()
    for si, shard in enumerate(shards):
        fname = f"model-{si + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in shard:
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        with open(d / fname, "wb") as f:
            f.write(struct.pack("<Q", len(hb)) + hb)
            for ti, (name, shape) in enumerate(shard):
                n = int(np.prod(shape))
                start = zlib.crc32(name.encode()) % (pool.size // 2)
                done = 0
                while done < n:
                    k = min(n - done, pool.size - start)
                    f.write(pool[start:start + k].tobytes())
                    done += k
                    start = 0
        total += off
        print(f"{fname}: {off / 2**30:.2f} GiB", file=sys.stderr)
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
        "intermediate_size": FF, "num_hidden_layers": a.layers, "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "vocab_size": VOCAB, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"}, indent=1))
    (d / "tokenizer.model").write_bytes(spm_model())
    (d / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizer"}))
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    print(f"wrote {total / 2**30:.2f} GiB in {len(shards)} shards in {time.time() - t0:.0f} s", file=sys.stderr)


def drop_caches():
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(cmd, **kw):
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    return time.time() - t0, r


def cmd_run(a):
    d, out_dir = Path(a.dir), Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = sorted(str(p) for p in d.glob("*.safetensors"))
    size = sum(os.path.getsize(s) for s in shards)
    results = {"checkpoint_bytes": size, "shards": len(shards), "threads": a.threads, "runs": []}
    dropped = drop_caches()
    secs, _ = timed(["sh", "-c", "cat " + " ".join(shards) + " > /dev/null"])
    results["cat_read_mb_s"] = size / 1e6 / secs
    results["page_cache_dropped"] = dropped
    tmp = out_dir / "dd.tmp"
    secs, _ = timed(["dd", "if=/dev/zero", f"of={tmp}", "bs=1M", "count=4096", "conv=fdatasync"])
    results["dd_write_mb_s"] = 4096 * 2**20 / 1e6 / secs
    tmp.unlink()
    for t in a.types.split(","):
        out = out_dir / f"out-{t}.gguf"
        drop_caches()
        cmd = ["/usr/bin/time", "-v", a.crunch, "convert", str(d), str(out), "--type", t, "--json", "-q",
               "--threads", str(a.threads)]
        secs, r = timed(cmd)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            sys.exit(1)
        rep = json.loads(r.stdout)["result"]
        max_rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
        run = {"type": t, "wall_s": secs, "crunch_s": rep["seconds"], "read_mb_s": size / 1e6 / secs,
               "written_bytes": rep["file_bytes"], "write_mb_s": rep["file_bytes"] / 1e6 / secs,
               "max_rss_bytes": max_rss_kb * 1024, "peak_anon_bytes": rep["peak_anon_bytes"],
               "user_s": float(re.search(r"User time \(seconds\): ([\d.]+)", r.stderr).group(1)),
               "sys_s": float(re.search(r"System time \(seconds\): ([\d.]+)", r.stderr).group(1))}
        results["runs"].append(run)
        out.unlink()
        Path(str(out) + ".sha256").unlink(missing_ok=True)
    print(f"checkpoint {size / 2**30:.2f} GiB in {len(shards)} shards; cat {results['cat_read_mb_s']:.0f} MB/s "
          f"(page cache dropped: {dropped}); dd write {results['dd_write_mb_s']:.0f} MB/s")
    print(f"{'type':<8} {'wall s':>7} {'read MB/s':>9} {'write MB/s':>10} {'user+sys s':>10} {'max RSS':>9} {'peak anon':>9}")
    for r in results["runs"]:
        print(f"{r['type']:<8} {r['wall_s']:>7.1f} {r['read_mb_s']:>9.0f} {r['write_mb_s']:>10.0f} "
              f"{r['user_s'] + r['sys_s']:>10.1f} {r['max_rss_bytes'] / 2**20:>7.0f}Mi {r['peak_anon_bytes'] / 2**20:>7.0f}Mi")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("dir")
    g.add_argument("--layers", type=int, default=L, help="fewer layers for a quick try (default 32: 7B)")
    r = sub.add_parser("run")
    r.add_argument("dir")
    r.add_argument("--crunch", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--types", default="f16,q4_k_m")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--json")
    a = ap.parse_args()
    {"gen": cmd_gen, "run": cmd_run}[a.cmd](a)


if __name__ == "__main__":
    main()
