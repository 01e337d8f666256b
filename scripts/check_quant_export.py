#!/usr/bin/env python3
"""Decode a quantized Hugging Face checkpoint with numpy alone and compare it with the exact values.

  check_quant_export.py DIR REF [--json OUT]        (oracle venv: numpy)

DIR is a Hugging Face folder (config.json with quantization_config, *.safetensors shards, maybe
model.safetensors.index.json and quantize_config.json). REF is one safetensors file holding, for
every quantized weight, the F32 values the writer meant under the dense name (P.weight, [out, in]);
it may also hold plain tensors, which must equal the folder's (widened to f32 exactly) bit for bit.

Written from docs/research/issue18-formats.md and the owners' source, never from crunch's code:
  bitsandbytes 4-bit  bitsandbytes-foundation/bitsandbytes bitsandbytes/backends/default/ops.py
                      (_dequantize_4bit_compute, _dequantize_blockwise_compute), functional.py
                      (QuantState.from_dict/as_dict, get_4bit_type, dequantize_4bit: nested absmax
                      = f32(nested_quant_map[a] * nested_absmax) + f32(nested_offset)), utils.py
                      (pack_dict_to_tensor). w = f32(table[q] * absmax), first code in the high nibble.
  bitsandbytes int8   bitsandbytes/_ops.py int8_vectorwise_dequant: w = f32(f32(CB*SCB) * f32(1/127
                      as 7.874015718698502e-3)); nn/modules.py Linear8bitLt (SCB, weight_format 0).
  GPTQ                ModelCloud/GPTQModel gptqmodel/nn_modules/qlinear/__init__.py
                      (_register_gptq_buffers, dequantize_weight): w = scales[g_idx[i], o] *
                      (q[i, o] - z[g_idx[i], o]); AutoGPTQ qlinear_cuda_old.py: v1 stores zero-1.
  AWQ                 casper-hansen/AutoAWQ awq/utils/packing_utils.py (unpack_awq, reverse_awq_order
                      [0,4,1,5,2,6,3,7], dequantize_gemm), awq/modules/linear/gemm.py (shapes).
  compressed-tensors  vllm-project/compressed-tensors compressors/pack_quantized/{base,helpers}.py
                      (pack_to_int32: dense LSB-first, +2^(b-1), zero point packed along dim 0),
                      compressors/naive_quantized/base.py (int-quantized), quantization/quant_args.py
                      (QuantizationArgs fields, extra="forbid"), lifecycle/forward_helpers.py.
Integer formats: the value is f32(scale) * f32(q - z), one correctly rounded f32 multiply (exact for
F16/BF16 scales: the doc's "exact value"). Quantized weights are compared as numbers (+0 == -0),
plain tensors bit for bit. Exit status 0 only when everything equals REF and every check passed.
"""
import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
F32 = np.float32
# bitsandbytes functional.py get_4bit_type / backends/utils.py: NF4 is sorted; FP4 is in bit-pattern
# order (bit 3 = sign), raw E2M1 values divided by their max 12 in f32.
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=F32)
FP4 = np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3], dtype=F32) / F32(12)
BNB_TABLES = {"nf4": NF4, "fp4": FP4}
BNB_QS_KEYS = {"absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state", "quant_type",
               "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"}
STORAGE = {"uint8": "U8", "int8": "I8", "float16": "F16", "bfloat16": "BF16", "float32": "F32", "int32": "I32"}
AWQ_REVERSE_ORDER = np.array([0, 4, 1, 5, 2, 6, 3, 7])
CT_ARG_KEYS = {"num_bits", "type", "symmetric", "group_size", "strategy", "block_structure", "dynamic",
               "actorder", "scale_dtype", "zp_dtype", "observer", "observer_kwargs"}
CT_DTYPES = {"torch.float16": "F16", "torch.bfloat16": "BF16", "torch.float32": "F32", "torch.int8": "I8"}
SET_SUFFIXES = {  # tensors that belong to a quantized weight's set; P is the module prefix
    "bnb4": [".weight", ".weight.absmax", ".weight.quant_map", ".weight.nested_absmax",
             ".weight.nested_quant_map", ".weight.quant_state.bitsandbytes__nf4",
             ".weight.quant_state.bitsandbytes__fp4"],
    "bnb8": [".weight", ".SCB", ".weight_format"],
    "gptq": [".qweight", ".qzeros", ".scales", ".g_idx"],
    "awq": [".qweight", ".qzeros", ".scales"],
    "ct": [".weight_scale", ".weight_zero_point", ".weight_g_idx", ".input_scale", ".input_zero_point",
           ".input_global_scale", ".output_scale", ".output_zero_point"],
}
SET_SUFFIXES["ct-packed"] = SET_SUFFIXES["ct"] + [".weight_packed", ".weight_shape"]
SET_SUFFIXES["ct-int"] = SET_SUFFIXES["ct"] + [".weight"]
ORPHAN = re.compile(r"\.(qweight|qzeros|scales|g_idx|SCB|weight_format|absmax|quant_map|nested_\w+|"
                    r"quant_state\.\w+|weight_packed|weight_scale|weight_shape|weight_zero_point|weight_g_idx)$")


# ---------------------------------------------------------------- safetensors, read by hand
def read_safetensors(path, errors):
    """{name: (dtype name, numpy array)}; arrays are views of a read-only memory map."""
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    n = int(mm[:8].view("<u8")[0])
    header = json.loads(bytes(mm[8:8 + n]))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt, shape = info["dtype"], info["shape"]
        if dt not in DTYPES:
            errors.append(f"{path.name}: {name}: dtype {dt} not understood")
            continue
        b, e = info["data_offsets"]
        npdt = np.dtype(DTYPES[dt]).newbyteorder("<")
        if e - b != math.prod(shape) * npdt.itemsize:
            errors.append(f"{path.name}: {name}: {e - b} bytes for {dt} {shape}")
            continue
        out[name] = (dt, mm[8 + n + b:8 + n + e].view(npdt).reshape(shape))
    return out


def read_folder(d, ref_path, errors):
    index = d / "model.safetensors.index.json"
    if index.is_file():
        wmap = json.loads(index.read_text())["weight_map"]
        files = sorted(set(wmap.values()))
    else:
        wmap = None
        files = sorted(p.name for p in d.glob("*.safetensors") if p.resolve() != ref_path.resolve())
    if not files:
        raise SystemExit(f"no *.safetensors in {d}")
    tensors = {}
    for f in files:
        for k, v in read_safetensors(d / f, errors).items():
            if k in tensors:
                errors.append(f"{k}: appears in two shards")
            if wmap is not None and wmap.get(k) != f:
                errors.append(f"{k}: in {f} but the index says {wmap.get(k)}")
            tensors[k] = v
    for k in (wmap or {}):
        if k not in tensors:
            errors.append(f"{k}: listed in the index, absent from {wmap[k]}")
    return tensors


def as_f32(dtype, a):
    """Exact float32 values of F16/BF16/F32 (and small integer) data."""
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(F32)
    return np.asarray(a).astype(F32)


def unpack(words, bits, count, axis):
    """Unsigned `bits`-bit fields packed densely LSB-first along `axis` of an int32 array (element e at
    global bit e*bits of that axis' word stream). Returns (values, padding bits are all zero)."""
    w = np.moveaxis(np.asarray(words).view(np.uint32), axis, -1)
    if 32 % bits == 0:
        shifts = np.arange(0, 32, bits, dtype=np.uint32)
        vals = ((w[..., None] >> shifts) & np.uint32((1 << bits) - 1)).reshape(*w.shape[:-1], -1)
    else:
        stream = np.unpackbits(np.ascontiguousarray(w).astype("<u4").view(np.uint8), axis=-1, bitorder="little")
        m = stream.shape[-1] // bits
        vals = (stream[..., :m * bits].reshape(*w.shape[:-1], m, bits).astype(np.uint32)
                << np.arange(bits, dtype=np.uint32)).sum(-1)
    pad_ok = not np.any(vals[..., count:])  # (the unpackbits path ignores a ragged bit tail)
    return np.moveaxis(vals[..., :count].astype(np.int32), -1, axis), pad_ok


# ---------------------------------------------------------------- the checker
class Checker:
    def __init__(self, tensors, qc):
        self.t, self.qc = tensors, qc
        self.used, self.errors, self.warnings = set(), [], []

    def err(self, msg):
        self.errors.append(msg)

    def get(self, name, dtypes=None, shape=None, required=True):
        """A tensor of the folder, checked against the expected dtype(s) and shape (None = any)."""
        if name not in self.t:
            if required:
                self.err(f"{name}: missing")
            return None
        self.used.add(name)
        dt, a = self.t[name]
        if dtypes is not None and dt not in ([dtypes] if isinstance(dtypes, str) else dtypes):
            self.err(f"{name}: dtype {dt}, expected {dtypes}")
            return None
        if shape is not None and list(a.shape) != list(shape):
            self.err(f"{name}: shape {list(a.shape)}, expected {list(shape)}")
            return None
        return a

    def need(self, cfg, key, where="quantization_config"):
        if key not in cfg:
            self.err(f"{where}: key {key!r} missing")
        return cfg.get(key)


def int_value(scale, q, z, gi):
    """f32(scale[o, gi[i]] * (q[o, i] - z[o, gi[i]])) for [out, ...] arrays. q - z is a small integer,
    exact in f32, so one f32 multiply is the correctly rounded product (exact for F16/BF16 scales)."""
    return np.asarray(scale, dtype=F32)[:, gi] * (q - z[:, gi]).astype(F32)


# ---------------------------------------------------------------- bitsandbytes
def check_bnb_config(c):
    four, eight = c.need(c.qc, "load_in_4bit"), c.need(c.qc, "load_in_8bit")
    if bool(four) == bool(eight):
        c.err(f"quantization_config: load_in_4bit={four}, load_in_8bit={eight}: exactly one must be true")
    for k in (["bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype",
               "bnb_4bit_quant_storage"] if four else ["llm_int8_threshold"]):
        c.need(c.qc, k)
    for k in ("_load_in_4bit", "_load_in_8bit"):
        if k in c.qc and c.qc[k] != c.qc.get(k[1:]):
            c.err(f"quantization_config: {k}={c.qc[k]} disagrees with {k[1:]}")
    return "bnb4" if four else "bnb8"


def decode_bnb4(c, p):
    w = p + ".weight"
    qs_names = [k for k in c.t if k.startswith(w + ".quant_state.")]
    if len(qs_names) != 1 or qs_names[0].rsplit(".", 1)[-1] not in ("bitsandbytes__nf4", "bitsandbytes__fp4"):
        return c.err(f"{w}: expected exactly one quant_state.bitsandbytes__nf4|fp4, found {qs_names}")
    for k in c.t:
        if k.startswith(w + ".") and k.rsplit(".", 1)[-1] not in BNB_QS_KEYS | {"bitsandbytes__nf4", "bitsandbytes__fp4"}:
            c.err(f"{k}: key not in QuantState.valid_qs_keys")
    qs = qs_names[0]
    raw = c.get(qs, "U8")
    try:
        st = json.loads(bytes(raw).decode("utf-8"))
    except (TypeError, ValueError) as e:
        return c.err(f"{qs}: not a U8 tensor of UTF-8 JSON ({e})")
    nested = (w + ".nested_absmax") in c.t
    if nested != bool(c.qc.get("bnb_4bit_use_double_quant")):
        c.warnings.append(f"{w}: double quant {nested}, config bnb_4bit_use_double_quant "
                          f"{c.qc.get('bnb_4bit_use_double_quant')} (bnb decides per tensor)")
    want = ["quant_type", "blocksize", "dtype", "shape"] + (["nested_blocksize", "nested_dtype", "nested_offset"] if nested else [])
    for k in set(st) - set(want):
        c.err(f"{qs}: unexpected key {k!r}")
    if [c.need(st, k, qs) for k in want if k not in st]:
        return None
    qt, bs, shape = st["quant_type"], st["blocksize"], st["shape"]
    if "bitsandbytes__" + str(qt) != qs.rsplit(".", 1)[-1] or qt not in BNB_TABLES:
        return c.err(f"{qs}: quant_type {qt!r} does not match the key")
    if qt != c.qc.get("bnb_4bit_quant_type"):
        c.warnings.append(f"{w}: quant_type {qt}, config says {c.qc.get('bnb_4bit_quant_type')}")
    if st["dtype"] not in ("bfloat16", "float16", "float32"):
        c.err(f"{qs}: dtype {st['dtype']!r} not bfloat16/float16/float32")
    if bs not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
        return c.err(f"{qs}: blocksize {bs!r} invalid")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(x, int) and x > 0 for x in shape)):
        return c.err(f"{qs}: shape {shape!r} is not [out, in]")
    n = shape[0] * shape[1]
    nb = -(-n // bs)
    storage = STORAGE.get(c.qc.get("bnb_4bit_quant_storage", "uint8"), "U8")
    packed = c.get(w, storage)
    if packed is None:
        return None
    byts = np.ascontiguousarray(packed).view(np.uint8).reshape(-1)
    if packed.ndim != 2 or packed.shape[1] != 1 or byts.size != -(-n // 2):
        return c.err(f"{w}: shape {list(packed.shape)} ({byts.size} bytes), expected [{-(-n // 2)}, 1] bytes")
    qmap = c.get(w + ".quant_map", "F32", [16])
    if qmap is not None and qmap.view(np.uint32).tolist() != BNB_TABLES[qt].view(np.uint32).tolist():
        c.err(f"{w}.quant_map: differs from bitsandbytes' hard-coded {qt} table (decoders ignore it)")
    if nested:
        if st["nested_dtype"] != "float32":
            c.err(f"{qs}: nested_dtype {st['nested_dtype']!r}, expected 'float32'")
        nbs = st["nested_blocksize"]
        if not (isinstance(nbs, int) and nbs > 0):
            return c.err(f"{qs}: nested_blocksize {nbs!r} invalid")
        a8 = c.get(w + ".absmax", "U8", [nb])
        nabs = c.get(w + ".nested_absmax", "F32", [-(-nb // nbs)])
        nqm = c.get(w + ".nested_quant_map", "F32", [256])
        if a8 is None or nabs is None or nqm is None:
            return None
        if np.any(np.diff(nqm) < 0):
            c.warnings.append(f"{w}.nested_quant_map: not sorted (bnb's quantizer assumes a sorted table)")
        off = F32(st["nested_offset"])
        if float(off) != float(st["nested_offset"]):
            c.warnings.append(f"{qs}: nested_offset {st['nested_offset']!r} is not an f32 value")
        absmax = nqm[a8] * np.repeat(nabs, nbs)[:nb] + off  # f32 all along, as bnb
    else:
        absmax = c.get(w + ".absmax", "F32", [nb])
        if (w + ".nested_quant_map") in c.t:
            c.err(f"{w}.nested_quant_map: present without nested_absmax")
        if absmax is None:
            return None
    codes = np.empty(2 * byts.size, dtype=np.uint8)
    codes[0::2], codes[1::2] = byts >> 4, byts & 0xF  # first element in the high nibble
    return (BNB_TABLES[qt][codes[:n]] * np.repeat(absmax, bs)[:n]).reshape(shape)


def decode_bnb8(c, p):
    cb = c.get(p + ".weight", "I8")
    if cb is None or cb.ndim != 2:
        return c.err(f"{p}.weight: must be I8 [out, in]") if cb is not None else None
    scb = c.get(p + ".SCB", "F32", [cb.shape[0]])
    fmt = c.get(p + ".weight_format", "U8", [])
    if fmt is not None and int(fmt) != 0:
        c.err(f"{p}.weight_format: {int(fmt)}, only 0 ('row') loads")
    if scb is None:
        return None
    return (cb.astype(F32) * scb[:, None]) * F32(7.874015718698502e-3)


# ---------------------------------------------------------------- GPTQ / AWQ
def check_gptq_config(c, folder):
    for k in ("bits", "group_size", "desc_act"):
        c.need(c.qc, k)
    if "sym" not in c.qc:
        c.warnings.append("quantization_config: 'sym' missing (AutoGPTQ assumes true)")
    fmt = c.qc.get("checkpoint_format", c.qc.get("format", "gptq"))
    if fmt not in ("gptq", "gptq_v2"):
        c.err(f"quantization_config: checkpoint_format {fmt!r} is not gptq/gptq_v2")
    if c.qc.get("bits") not in (2, 4, 8):
        c.err(f"quantization_config: bits {c.qc.get('bits')!r} not in 2/4/8")
    qcf = folder / "quantize_config.json"
    if qcf.is_file():
        other = json.loads(qcf.read_text())
        for k in ("bits", "group_size", "desc_act", "sym", "checkpoint_format"):
            if k in other and k in c.qc and other[k] != c.qc[k]:
                c.err(f"quantize_config.json: {k}={other[k]!r}, config.json says {c.qc[k]!r}")
    return fmt


def decode_gptq(c, p, v2):
    bits, gs, desc = c.qc.get("bits"), c.qc.get("group_size"), c.qc.get("desc_act")
    if bits not in (2, 4, 8) or not isinstance(gs, int):
        return None
    qw = c.get(p + ".qweight", "I32")
    if qw is None or qw.ndim != 2:
        return None
    out, n_in = qw.shape[1], qw.shape[0] * 32 // bits
    G = n_in if gs == -1 else gs
    ng = -(-n_in // G)
    qz = c.get(p + ".qzeros", "I32", [ng, -(-out * bits // 32)])
    sc = c.get(p + ".scales", "F16", [ng, out])
    gi = c.get(p + ".g_idx", "I32", [n_in])
    trivial = np.arange(n_in) // G
    if gi is None:
        gi = trivial
    elif np.any((gi < 0) | (gi >= ng)):
        return c.err(f"{p}.g_idx: values outside [0, {ng})")
    elif not desc and not np.array_equal(gi, trivial):
        c.err(f"{p}.g_idx: not i // group_size but desc_act is false (loaders would ignore it)")
    if qz is None or sc is None:
        return None
    q, _ = unpack(qw, bits, n_in, 0)
    zn, pad_ok = unpack(qz, bits, out, 1)
    if not pad_ok:
        c.err(f"{p}.qzeros: nonzero padding bits")
    maxq = (1 << bits) - 1
    if not v2 and np.any(zn == maxq):
        c.err(f"{p}.qzeros: v1 nibble {maxq} (zero {maxq + 1}) decodes differently across loaders")
    z = zn if v2 else zn + 1
    if c.qc.get("sym", True) and np.any(z != 1 << (bits - 1)):
        hint = " (stored nibbles look like gptq_v2)" if not v2 and np.all(zn == 1 << (bits - 1)) else ""
        c.err(f"{p}.qzeros: sym=true but zeros are not {1 << (bits - 1)}{hint}")
    return int_value(sc.T, q.T, z.T, gi.astype(np.int64))


def check_awq_config(c):
    bits = c.qc.get("bits", c.qc.get("w_bit"))
    gs = c.qc.get("group_size", c.qc.get("q_group_size"))
    if bits != 4:
        c.err(f"quantization_config: bits/w_bit {bits!r}, AWQ GEMM is 4-bit only")
    if not isinstance(gs, int):
        c.err("quantization_config: key 'group_size' (or 'q_group_size') missing")
    if c.need(c.qc, "zero_point") is not True:
        c.err(f"quantization_config: zero_point {c.qc.get('zero_point')!r}, GEMM loaders need true")
    if str(c.need(c.qc, "version")).lower() != "gemm":
        c.err(f"quantization_config: version {c.qc.get('version')!r}, only gemm is decoded here")
    return gs


def decode_awq(c, p, gs):
    qw = c.get(p + ".qweight", "I32")
    if qw is None or qw.ndim != 2 or not isinstance(gs, int):
        return None
    n_in, out = qw.shape[0], qw.shape[1] * 8
    G = n_in if gs == -1 else gs
    if n_in % G:
        return c.err(f"{p}.qweight: in={n_in} not a multiple of group_size {G}")
    qz = c.get(p + ".qzeros", "I32", [n_in // G, out // 8])
    sc = c.get(p + ".scales", "F16", [n_in // G, out])
    if qz is None or sc is None:
        return None
    order = (np.arange(out) // 8) * 8 + AWQ_REVERSE_ORDER[np.arange(out) % 8]
    q = unpack(qw, 4, out, 1)[0][:, order]
    z = unpack(qz, 4, out, 1)[0][:, order]
    return int_value(sc.T, q.T, z.T, np.arange(n_in) // G)


# ---------------------------------------------------------------- compressed-tensors
def check_ct_config(c):
    top = c.need(c.qc, "format")
    if c.qc.get("quantization_status") != "compressed":
        c.err(f"quantization_config: quantization_status {c.qc.get('quantization_status')!r}, expected 'compressed'")
    groups = c.need(c.qc, "config_groups") or {}
    for name, g in groups.items():
        where = f"config_groups.{name}"
        if not isinstance(g, dict):
            continue  # a bare list of targets refers to a preset scheme; not decoded here
        fmt = g.get("format") or top
        if fmt not in ("pack-quantized", "int-quantized"):
            c.err(f"{where}: format {fmt!r} not pack-quantized/int-quantized")
        if not g.get("targets"):
            c.err(f"{where}: key 'targets' missing")
        for part in ("weights", "input_activations", "output_activations"):
            args = g.get(part)
            if isinstance(args, dict):
                for k in set(args) - CT_ARG_KEYS:
                    c.err(f"{where}.{part}: key {k!r} not allowed (QuantizationArgs extra='forbid')")
        w = g.get("weights") or {}
        if w.get("type", "int") != "int" or w.get("num_bits", 8) not in range(1, 9):
            c.err(f"{where}.weights: type {w.get('type')!r} num_bits {w.get('num_bits')!r} not int 1..8")
        if fmt == "int-quantized" and w.get("num_bits", 8) != 8:
            c.err(f"{where}.weights: int-quantized stores int8, num_bits {w.get('num_bits')!r}")
        strat = w.get("strategy") or {None: "tensor", -1: "channel"}.get(w.get("group_size"), "group")
        if strat not in ("group", "channel"):
            c.err(f"{where}.weights: strategy {strat!r} not decoded here")
        if strat == "group" and not (isinstance(w.get("group_size"), int) and w["group_size"] > 0):
            c.err(f"{where}.weights: strategy group needs group_size > 0")
        if w.get("dynamic"):
            c.err(f"{where}.weights: dynamic weights are not stored")
    return top


def ct_scheme(c, p):
    """The config group whose targets match module P (regexes 're:...', names, else a class target)."""
    groups = {k: g for k, g in (c.qc.get("config_groups") or {}).items() if isinstance(g, dict)}
    if len(groups) == 1:
        return next(iter(groups.values()))
    by_class = []
    for g in groups.values():
        for t in g.get("targets", []):
            if (t.startswith("re:") and re.match(t[3:], p)) or t == p:
                return g
            if not t.startswith("re:") and "." not in t:
                by_class.append(g)
    if len(by_class) == 1:
        return by_class[0]
    return c.err(f"{p}: no single config group matches (targets are ambiguous without module types)")


def decode_ct(c, p, packed):
    g = ct_scheme(c, p)
    if g is None:
        return None
    w = g.get("weights") or {}
    bits, sym, gs = w.get("num_bits", 8), w.get("symmetric", True), w.get("group_size")
    strat = w.get("strategy") or {None: "tensor", -1: "channel"}.get(gs, "group")
    sdt = CT_DTYPES.get(w.get("scale_dtype"), ["F16", "BF16", "F32"])
    if packed:
        shp = c.get(p + ".weight_shape", "I64", [2])
        if shp is None:
            return None
        out, n_in = (int(x) for x in shp)
        wp = c.get(p + ".weight_packed", "I32", [out, -(-n_in * bits // 32)])
        if wp is None:
            return None
        u, pad_ok = unpack(wp, bits, n_in, 1)
        if not pad_ok:
            c.err(f"{p}.weight_packed: nonzero padding bits")
        q = u - (1 << (bits - 1))
    else:
        q = c.get(p + ".weight", "I8")
        if q is None or q.ndim != 2:
            return None
        (out, n_in), q = q.shape, q.astype(np.int32)
    if strat not in ("group", "channel"):
        return None  # reported by check_ct_config
    G = n_in if strat == "channel" else gs
    ng = -(-n_in // G)
    group_order = w.get("actorder") in ("group", True)
    gidx = c.get(p + ".weight_g_idx", "I32", [n_in], required=group_order)
    if gidx is not None and not group_order:
        c.err(f"{p}.weight_g_idx: present but actorder is {w.get('actorder')!r}")
    gi = np.arange(n_in) // G if gidx is None else gidx.astype(np.int64)
    if np.any((gi < 0) | (gi >= ng)):
        return c.err(f"{p}.weight_g_idx: values outside [0, {ng})")
    sc = c.get(p + ".weight_scale", sdt, [out, ng])
    if sc is None:
        return None
    sc, z = as_f32(c.t[p + ".weight_scale"][0], sc), np.zeros((out, ng), dtype=np.int32)
    if not sym and packed:  # zero points packed along dim 0 (out), same +2^(b-1) offset
        zp = c.get(p + ".weight_zero_point", "I32", [-(-out * bits // 32), ng])
        if zp is None:
            return None
        z, pad_ok = unpack(zp, bits, out, 0)
        if not pad_ok:
            c.err(f"{p}.weight_zero_point: nonzero padding bits")
        z = z - (1 << (bits - 1))
    elif not sym:  # int-quantized: plain signed zero points shaped like the scale
        z = c.get(p + ".weight_zero_point", CT_DTYPES.get(w.get("zp_dtype"), "I8"), [out, ng])
        if z is None:
            return None
        z = z.astype(np.int32)
    elif (p + ".weight_zero_point") in c.t:
        c.err(f"{p}.weight_zero_point: present but the scheme is symmetric")
    return int_value(sc, q, z, gi)


# ---------------------------------------------------------------- main
def compare(name, got, ref, exact_bits):
    """{tensor, count, max_abs_diff[, first]}: as numbers (+0 == -0) or, for plain tensors, bit for bit."""
    if list(got.shape) != list(ref.shape):
        return {"tensor": name, "error": f"shape {list(got.shape)}, REF {list(ref.shape)}"}
    bad = (got.view(np.uint32) != ref.view(np.uint32)) if exact_bits else ~(got == ref)
    if not bad.any():
        return {"tensor": name, "count": 0, "max_abs_diff": 0.0}
    diff = np.abs(got[bad].astype(np.float64) - ref[bad].astype(np.float64))
    return {"tensor": name, "count": int(bad.sum()), "max_abs_diff": float(np.nanmax(diff, initial=0)),
            "first": np.argwhere(bad)[0].tolist()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("ref")
    ap.add_argument("--json")
    a = ap.parse_args()
    folder, ref_path = Path(a.dir), Path(a.ref)
    qc = json.loads((folder / "config.json").read_text()).get("quantization_config")
    if qc is None and (folder / "quantize_config.json").is_file():  # old GPTQ folders, as vLLM allows
        qc = dict(json.loads((folder / "quantize_config.json").read_text()), quant_method="gptq")
    if not qc:
        raise SystemExit(f"{folder}/config.json has no quantization_config")
    errors = []
    c = Checker(read_folder(folder, ref_path, errors), qc)
    ref = {k: as_f32(dt, v) if dt == "F32" else None for k, (dt, v) in read_safetensors(ref_path, errors).items()}
    errors += [f"REF {k}: not F32" for k, v in ref.items() if v is None]
    c.errors += errors
    t, method = c.t, qc.get("quant_method")
    ends = lambda suffix: sorted({k[:-len(suffix)] for k in t if k.endswith(suffix)})  # noqa: E731
    if method == "bitsandbytes":
        kind = check_bnb_config(c)
        if kind == "bnb4":
            anchors = sorted({k.split(".weight.quant_state.")[0] for k in t if ".weight.quant_state." in k})
            decode, fmt = (lambda p: decode_bnb4(c, p)), f"bitsandbytes-4bit-{qc.get('bnb_4bit_quant_type')}"
        else:
            anchors, decode, fmt = ends(".SCB"), (lambda p: decode_bnb8(c, p)), "bitsandbytes-int8"
    elif method == "gptq":
        kind, fmt = "gptq", "gptq:" + check_gptq_config(c, folder)
        anchors, decode = ends(".qweight"), (lambda p: decode_gptq(c, p, fmt.endswith("v2")))
    elif method == "awq":
        kind, fmt, gs = "awq", "awq-gemm", check_awq_config(c)
        anchors, decode = ends(".qweight"), (lambda p: decode_awq(c, p, gs))
    elif method == "compressed-tensors":
        kind, fmt = "ct", "compressed-tensors:" + str(check_ct_config(c))
        packed = ends(".weight_packed")
        anchors = packed + [p for p in ends(".weight_scale") if t.get(p + ".weight", ("",))[0] == "I8"]
        decode = lambda p: decode_ct(c, p, p in packed)  # noqa: E731
    else:
        raise SystemExit(f"quant_method {method!r} not handled")

    results, done = [], set()
    for p in anchors:
        got = decode(p)
        done.add(p + ".weight")
        sk = kind if kind != "ct" else "ct-packed" if p in packed else "ct-int"
        c.used.update(p + s for s in SET_SUFFIXES[sk] if (p + s) in t)
        if ".weight" not in SET_SUFFIXES[sk] and (p + ".weight") in t:
            c.err(f"{p}.weight: stored dense next to its quantized set")
            c.used.add(p + ".weight")
        if (p + ".weight") not in ref:
            c.err(f"{p}.weight: quantized in the folder, missing from REF")
        elif got is not None and ref[p + ".weight"] is not None:
            results.append(compare(p + ".weight", got, ref[p + ".weight"], exact_bits=False))
    plain_checked = plain_unchecked = 0
    for k, (dt, v) in t.items():
        if k in c.used:
            continue
        if ORPHAN.search(k):
            c.err(f"{k}: looks like part of a quantized weight but no complete set uses it")
        elif k in ref:
            plain_checked += 1
            done.add(k)
            if dt not in ("F32", "F16", "BF16"):
                c.err(f"{k}: plain tensor of dtype {dt}, cannot widen to f32 exactly")
            elif ref[k] is not None:
                results.append(compare(k, as_f32(dt, v), ref[k], exact_bits=True))
        else:
            plain_unchecked += 1
    c.errors += [f"REF {k}: not in the folder (neither a quantized weight nor a plain tensor)" for k in ref if k not in done]

    mism = [r for r in results if r.get("count") or "error" in r]
    ok = not mism and not c.errors
    print(f"{fmt}: {len(anchors)} quantized weights, {plain_checked} plain tensors compared, "
          f"{plain_unchecked} plain tensors not in REF -> {'EXACT' if ok else 'FAIL'}")
    for m in mism:
        print(f"  MISMATCH {m['tensor']}: " + (m.get("error") or
              f"{m['count']} values differ, max |diff| {m['max_abs_diff']:.6g}, first at {m['first']}"))
    for e in c.errors[:60]:
        print(f"  ERROR {e}")
    if len(c.errors) > 60:
        print(f"  ... and {len(c.errors) - 60} more errors")
    for w in c.warnings:
        print(f"  warning: {w}")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "format": fmt, "tensors": len(results), "quantized": len(anchors), "plain_checked": plain_checked,
            "plain_unchecked": plain_unchecked, "exact": ok, "mismatches": mism, "errors": c.errors,
            "warnings": c.warnings, "per_tensor": results}, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
