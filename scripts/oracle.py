#!/usr/bin/env python3
"""Reference answers from PyPI `gguf` (llama.cpp's own Python package) for crunch's tests.

  oracle.py quantize TYPE ROW_LEN IN.f32 OUT.bin     reference quantizer (Q8_0, Q4_0, ..., TQ2_0)
  oracle.py dequantize TYPE ROW_LEN IN.bin OUT.f32   reference dequantizer (every type gguf knows)
  oracle.py read FILE.gguf                           metadata and tensor infos as JSON
  oracle.py tensor FILE.gguf NAME OUT.bin            raw bytes of one tensor

And from PyPI `safetensors` (Hugging Face's reference implementation):

  oracle.py st-read FILE.safetensors                 metadata, and per tensor dtype, shape, size, sha256
  oracle.py st-f32 FILE.safetensors NAME OUT.f32     one tensor's values as f32 (BF16 widened by hand)
  oracle.py st-save OUT.safetensors                  write a fixture with the reference writer
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


def cmd_st_read(path):
    import hashlib
    import safetensors
    with open(path, "rb") as f:
        raw = f.read()
    out = {"tensors": {}}
    for name, t in safetensors.deserialize(raw):
        data = bytes(t["data"])
        out["tensors"][name] = {
            "dtype": t["dtype"],
            "shape": [int(d) for d in t["shape"]],
            "n_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    with safetensors.safe_open(path, framework="np") as f:
        out["metadata"] = f.metadata() or {}
    json.dump(out, sys.stdout)


def cmd_st_f32(path, name, dst):
    import safetensors
    with open(path, "rb") as f:
        raw = f.read()
    found = {n: t for n, t in safetensors.deserialize(raw)}
    if name not in found:
        sys.exit(f"no tensor {name!r} in {path}")
    if found[name]["dtype"] == "BF16":
        # numpy has no bfloat16: a bf16 is the high half of an f32.
        bits = np.frombuffer(bytes(found[name]["data"]), dtype="<u2").astype("<u4") << 16
        x = bits.view("<f4")
    else:
        with safetensors.safe_open(path, framework="np") as f:
            x = f.get_tensor(name)
    np.ascontiguousarray(x, dtype="<f4").tofile(dst)


def cmd_st_save(dst):
    import safetensors
    keep = {
        "w.f32": np.linspace(-2.0, 2.0, 24, dtype=np.float32).reshape(2, 3, 4),
        "w.f16": np.linspace(-1.0, 1.0, 10, dtype=np.float16).reshape(5, 2),
        # bf16 bit patterns of 1, 2, -3, 0.5, -0.0, inf
        "w.bf16": np.array([0x3F80, 0x4000, 0xC040, 0x3F00, 0x8000, 0x7F80], dtype="<u2").reshape(3, 2),
        "ids.i64": np.arange(7, dtype="<i8").reshape(1, 7),
        "mask.u8": np.array([1, 0, 1], dtype=np.uint8),
        "scalar.f32": np.array(3.5, dtype=np.float32),
        "empty.f32": np.zeros((0, 4), dtype=np.float32),
    }
    dtypes = {"w.bf16": "bfloat16"}
    specs = {
        k: safetensors.TensorSpec(
            dtype=dtypes.get(k, v.dtype.name), shape=list(v.shape), data_ptr=v.ctypes.data, data_len=v.nbytes
        )
        for k, v in keep.items()
    }
    safetensors.serialize_file(specs, dst, metadata={"format": "pt", "note": "written by oracle.py st-save"})


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"quantize": cmd_quantize, "dequantize": cmd_dequantize, "read": cmd_read, "tensor": cmd_tensor,
     "st-read": cmd_st_read, "st-f32": cmd_st_f32, "st-save": cmd_st_save}[cmd](*args)
