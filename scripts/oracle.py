#!/usr/bin/env python3
"""Reference answers from PyPI `gguf` (llama.cpp's own Python package) for crunch's tests.

  oracle.py quantize TYPE ROW_LEN IN.f32 OUT.bin     reference quantizer (Q8_0, Q4_0, ..., TQ2_0)
  oracle.py dequantize TYPE ROW_LEN IN.bin OUT.f32   reference dequantizer (every type gguf knows)
  oracle.py read FILE.gguf                           metadata and tensor infos as JSON
  oracle.py tensor FILE.gguf NAME OUT.bin            raw bytes of one tensor
"""
import json
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T


def qtype(name):
    return T[name.upper()]


def cmd_quantize(ty, row_len, src, dst):
    x = np.fromfile(src, dtype=np.float32).reshape(-1, int(row_len))
    q = gguf.quants.quantize(x, qtype(ty))
    np.ascontiguousarray(q).tofile(dst)


def cmd_dequantize(ty, row_len, src, dst):
    t = qtype(ty)
    block, size = gguf.GGML_QUANT_SIZES[t]
    row_bytes = int(row_len) // block * size
    raw = np.fromfile(src, dtype=np.uint8).reshape(-1, row_bytes)
    x = gguf.quants.dequantize(raw, t)
    np.ascontiguousarray(x, dtype=np.float32).tofile(dst)


def value(field):
    types = field.types
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.ARRAY:
        return [field.contents(i) for i in range(len(field.data))] if len(field.data) < 64 else {"len": len(field.data)}
    return field.contents()


def cmd_read(path):
    r = gguf.GGUFReader(path)
    out = {"fields": {}, "tensors": [], "keys": [k for k in r.fields.keys() if not k.startswith("GGUF.")]}
    for k, f in r.fields.items():
        v = value(f)
        if isinstance(v, (bytes, bytearray)):
            v = v.decode("utf-8", "replace")
        out["fields"][k] = {"types": [int(t) for t in f.types], "value": v}
    for t in r.tensors:
        out["tensors"].append({
            "name": t.name,
            "shape": [int(s) for s in t.shape],
            "type": t.tensor_type.name,
            "offset": int(t.data_offset),
            "n_bytes": int(t.n_bytes),
        })
    json.dump(out, sys.stdout, default=str)


def cmd_tensor(path, name, dst):
    r = gguf.GGUFReader(path)
    for t in r.tensors:
        if t.name == name:
            np.asarray(t.data).tofile(dst)
            return
    sys.exit(f"no tensor {name!r} in {path}")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"quantize": cmd_quantize, "dequantize": cmd_dequantize, "read": cmd_read, "tensor": cmd_tensor}[cmd](*args)
