#!/usr/bin/env python3
"""A GGUF -> `crunch export --dtype f32` -> `crunch convert --type f32` round trip, checked with
llama.cpp's own Python package (PyPI `gguf`, the oracle venv):

  check_roundtrip.py ORIGINAL.gguf ROUNDTRIP.gguf

- the same tensor names and shapes; every round-tripped tensor (F32) equals gguf-py's
  dequantization of the original tensor exactly (bit for bit);
- the same tokenizer (tokens, scores, token types, merges, special ids, add-BOS/EOS/space flags)
  and the same `{arch}.*` hyper-parameters, each with the same GGUF value type; keys the original
  has that the round trip lacks, and `tokenizer.*`/`{arch}.*` keys only the round trip has, are
  listed and count as mismatches.
Works for every architecture crunch exports (llama, qwen2, gemma3, bert): Gemma 3's norm weights
are stored plus one in both files, so they compare like any other tensor.
Prints a summary; exit status 1 on any mismatch.
"""
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def fields(r):
    """{key: (value, GGUF value types)}."""
    out = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        try:
            v = f.contents()
        except Exception:  # noqa: BLE001 - a field gguf-py cannot decode is compared by bytes
            v = [bytes(p) for p in f.parts]
        out[k] = (v, [int(t) for t in f.types])
    return out


def main():
    a, b = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
    bad = 0
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    if set(ta) != set(tb):
        print("tensor names differ:", sorted(set(ta) ^ set(tb)))
        bad += 1
    exact = 0
    for name in sorted(set(ta) & set(tb)):
        x = dequantize(ta[name].data, ta[name].tensor_type).reshape(-1).astype(np.float32)
        y = np.asarray(tb[name].data).reshape(-1).astype(np.float32)
        if list(ta[name].shape) != list(tb[name].shape) or x.shape != y.shape or not np.array_equal(x.view(np.uint32), y.view(np.uint32)):
            diff = float(np.max(np.abs(x - y))) if x.shape == y.shape else float("nan")
            print(f"{name}: differs (shape {list(ta[name].shape)} vs {list(tb[name].shape)}, max abs {diff})")
            bad += 1
        else:
            exact += 1
    fa, fb = fields(a), fields(b)
    arch = fa.get("general.architecture", (None,))[0]
    ours = lambda k: k.startswith("tokenizer.ggml.") or k.startswith(f"{arch}.")
    keys = [k for k in fa if ours(k)]
    missing = [k for k in keys if k not in fb]
    extra = [k for k in fb if ours(k) and k not in fa]
    differ = [k for k in keys if k in fb and fa[k] != fb[k]]
    for k in differ:
        (va, ta_), (vb, tb_) = fa[k], fb[k]
        short = lambda v: (str(v[:5]) + f"... ({len(v)})") if isinstance(v, list) and len(v) > 5 else str(v)
        print(f"{k}: {short(va)} {ta_} vs {short(vb)} {tb_}")
    bad += len(differ) + len(missing) + len(extra)
    print(f"{exact}/{len(ta)} tensors bit-identical to the dequantized original; "
          f"{len(keys) - len(missing) - len(differ)} tokenizer/{arch} keys equal (value and type), {len(differ)} differ, "
          f"missing in the round trip: {missing}, only in the round trip: {extra}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
