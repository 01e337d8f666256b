#!/usr/bin/env python3
"""Decode a compressed-tensors sparse checkpoint with numpy alone and compare it with a dense one.

  check_sparse_bitmask.py SPARSE_DIR DENSE_DIR [--pattern 2:4]      (oracle venv: numpy)

Written from the format's description (compressed-tensors' docs and docstrings), not from crunch:

  config.json: quantization_config = {quant_method: "compressed-tensors", sparsity_config: {format:
  "sparse-bitmask" | "sparse-24-bitmask", targets, ignore, global_sparsity, sparsity_structure}}.
  A compressed weight P.weight of shape [rows, cols] is stored as
    sparse-bitmask:    P.compressed  1-D, the nonzero values in row-major order
                       P.bitmask     uint8 [rows, ceil(cols/8)], numpy.packbits(mask, axis=-1,
                                     bitorder="little") of the nonzero mask
                       P.row_offsets int64 [rows], index in P.compressed where each row begins
                       P.shape       int64 [2]
    sparse-24-bitmask: P.compressed  [rows, cols/2], the values the mask keeps (2 of every 4)
                       P.bitmask     as above, of the kept positions
                       P.shape       int64 [2, 1]
  Decoding: mask = unpackbits(bitmask, axis=-1, count=cols, bitorder="little"); dense = zeros;
  dense[mask] = compressed.flatten().

Every compressed weight decoded must equal DENSE_DIR's P.weight exactly (as numbers; zeros of either
sign are zeros), every other tensor must be byte-identical, and nothing may be missing or extra.
With --pattern 2:4 (or a sparse-24-bitmask config) every decoded weight must also be 2:4 (at most 2
nonzeros in each group of 4 along a row) and the bitmask must mark exactly 2 of every 4.

The safetensors files are read with a few lines of numpy (8-byte little-endian header length, JSON
header, raw little-endian data), so F16 and BF16 are compared bit for bit without a framework.
Prints a JSON summary; exit code 1 on any mismatch.
"""
import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # raw bits; widened to float32 below
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path):
    """{name: (dtype name, numpy array)} of one file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = memoryview(raw)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype=np.dtype(dt).newbyteorder("<"))
        out[name] = (info["dtype"], arr.reshape(info["shape"]))
    return out


def read_folder(d):
    d = Path(d)
    index = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    tensors = {}
    for f in files:
        for k, v in read_safetensors(d / f).items():
            if k in tensors:
                raise SystemExit(f"{k} appears twice in {d}")
            tensors[k] = v
    return tensors


def as_f32(dtype, a):
    """Exact float32 values of F16/BF16/F32 data."""
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def unpack(bitmask, cols):
    return np.unpackbits(bitmask, axis=-1, count=cols, bitorder="little").astype(bool)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sparse_dir")
    ap.add_argument("dense_dir")
    ap.add_argument("--pattern", choices=["2:4"])
    a = ap.parse_args()

    cfg = json.loads((Path(a.sparse_dir) / "config.json").read_text())
    qc = cfg.get("quantization_config") or cfg.get("compression_config") or {}
    sc = qc.get("sparsity_config") or {}
    fmt = sc.get("format")
    problems = []
    if qc.get("quant_method") != "compressed-tensors":
        problems.append(f"quant_method is {qc.get('quant_method')!r}")
    if fmt not in ("sparse-bitmask", "sparse-24-bitmask"):
        raise SystemExit(f"sparsity_config.format is {fmt!r}")
    two_four = fmt == "sparse-24-bitmask" or a.pattern == "2:4"

    sparse = read_folder(a.sparse_dir)
    dense = read_folder(a.dense_dir)
    prefixes = sorted(k[: -len(".bitmask")] for k in sparse if k.endswith(".bitmask"))
    used = set()
    summary = {
        "format": fmt,
        "compressed": len(prefixes),
        "plain": 0,
        "compressed_bytes": 0,
        "dense_bytes_of_compressed": 0,
        "zeros": 0,
        "params": 0,
    }
    for p in prefixes:
        parts = {s: sparse.get(f"{p}.{s}") for s in ("bitmask", "compressed", "shape", "row_offsets")}
        used.update(f"{p}.{s}" for s, v in parts.items() if v is not None)
        weight = dense.get(f"{p}.weight")
        if weight is None:
            problems.append(f"{p}: no {p}.weight in the dense folder")
            continue
        if parts["compressed"] is None or parts["shape"] is None:
            problems.append(f"{p}: compressed or shape missing")
            continue
        (wdt, w) = weight
        (cdt, comp) = parts["compressed"]
        (_, mask_packed) = parts["bitmask"]
        shape = [int(x) for x in parts["shape"][1].flatten()]
        if shape != list(w.shape):
            problems.append(f"{p}: shape {shape}, dense weight {list(w.shape)}")
            continue
        if cdt != wdt:
            problems.append(f"{p}: values are {cdt}, the dense weight {wdt}")
        rows, cols = shape
        if mask_packed.dtype != np.uint8 or list(mask_packed.shape) != [rows, (cols + 7) // 8]:
            problems.append(f"{p}: bitmask {mask_packed.dtype} {list(mask_packed.shape)}")
            continue
        mask = unpack(mask_packed, cols)
        if int(mask.sum()) != comp.size:
            problems.append(f"{p}: bitmask marks {int(mask.sum())} values, {comp.size} stored")
            continue
        if fmt == "sparse-bitmask":
            if parts["row_offsets"] is None:
                problems.append(f"{p}: row_offsets missing")
                continue
            counts = mask.sum(axis=1)
            want = np.cumsum(counts) - counts
            if not np.array_equal(parts["row_offsets"][1].astype(np.int64), want):
                problems.append(f"{p}: row_offsets disagree with the bitmask")
            if comp.ndim != 1 or parts["shape"][1].shape != (2,):
                problems.append(f"{p}: compressed {list(comp.shape)} / shape {list(parts['shape'][1].shape)}")
        else:
            if list(comp.shape) != [rows, cols // 2] or parts["shape"][1].shape != (2, 1):
                problems.append(f"{p}: compressed {list(comp.shape)} / shape {list(parts['shape'][1].shape)}")
            if cols % 4 or not np.all(mask.reshape(rows, -1, 4).sum(axis=2) == 2):
                problems.append(f"{p}: bitmask does not keep exactly 2 of every 4")
        decoded = np.zeros((rows, cols), dtype=comp.dtype)
        decoded[mask] = comp.flatten()
        dv, wv = as_f32(cdt, decoded), as_f32(wdt, w)
        if not np.array_equal(dv, wv):
            bad = np.argwhere(dv != wv)
            problems.append(f"{p}: {len(bad)} values differ, first at {bad[0].tolist()}")
        # The nonzeros are the dense values bit for bit, not only equal as numbers.
        nz = wv != 0
        if cdt == wdt and decoded[nz].tobytes() != w[nz].tobytes():
            problems.append(f"{p}: nonzero values differ in their bits")
        if two_four:
            if cols % 4 or not np.all(nz.reshape(rows, -1, 4).sum(axis=2) <= 2):
                problems.append(f"{p}: not 2:4")
        summary["compressed_bytes"] += sum(v[1].nbytes for v in parts.values() if v is not None)
        summary["dense_bytes_of_compressed"] += w.nbytes
        summary["zeros"] += int((~nz).sum())
        summary["params"] += w.size

    for k, (dt, v) in sparse.items():
        if k in used:
            continue
        if k not in dense:
            problems.append(f"{k}: not in the dense folder")
            continue
        ddt, dvv = dense[k]
        if dt != ddt or v.shape != dvv.shape or v.tobytes() != dvv.tobytes():
            problems.append(f"{k}: differs from the dense folder")
        summary["plain"] += 1
        summary["zeros"] += int((as_f32(dt, v) == 0).sum()) if dt in ("F16", "BF16", "F32") else 0
        summary["params"] += v.size
    compressed_names = {f"{p}.weight" for p in prefixes}
    for k in dense:
        if k not in sparse and k not in compressed_names:
            problems.append(f"{k}: missing from the sparse folder")
    if summary["params"]:
        gs = summary["zeros"] / summary["params"]
        summary["global_sparsity"] = gs
        if abs(gs - float(sc.get("global_sparsity", -1))) > 1e-6:
            problems.append(f"global_sparsity {sc.get('global_sparsity')} in config.json, {gs} counted")
    summary["sparsity_config"] = sc
    summary["problems"] = problems
    print(json.dumps(summary, indent=1))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
