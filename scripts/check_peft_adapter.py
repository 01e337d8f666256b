#!/usr/bin/env python3
"""Checks a PEFT LoRA adapter folder that `crunch export ADAPTER.gguf DIR --base BASE` wrote, with
PyPI `safetensors` and llama.cpp's PyPI `gguf` package (oracle venv; no torch).

  check_peft_adapter.py DIR --base BASE.gguf [--gguf ADAPTER.gguf]

  - DIR/adapter_model.safetensors loads with `safetensors.numpy.load_file` (BF16, which numpy
    cannot hold, is read from the raw little-endian bits instead and widened to float32);
  - every tensor name is PEFT's `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` for a
    Llama attention or MLP projection (or lm_head), every module has both halves;
  - shapes: lora_A is [r, in_features], lora_B [out_features, r], r being the module's rank as PEFT
    resolves it from `r` and `rank_pattern` (`get_pattern_key`: the first key K with
    re.match(rf"(.*\\.)?({K})$", module)), in/out features those of the base GGUF's weight;
  - DIR/adapter_config.json has the fields PEFT's LoraConfig writes, with the values a plain LoRA
    adapter has, and target_modules is the sorted list of the modules' short names;
  - with --gguf (the adapter the folder was exported from): lora_A equals the GGUF lora_a, and
    lora_B with llama.cpp's Q/K row permutation (convert_hf_to_gguf.py's reshape/swapaxes, heads
    from the base's metadata) applied to q_proj/k_proj equals the GGUF lora_b, value for value;
    the GGUF's adapter.lora.alpha is lora_alpha.

Prints a JSON summary; exit code 1 on any mismatch.
"""
import argparse
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np

NAME = re.compile(
    r"^base_model\.model\.(model\.layers\.(\d+)\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)"
    r"|mlp\.(gate_proj|up_proj|down_proj))|lm_head)\.lora_(A|B)\.weight$"
)
GGUF_OF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# (field, check) for every field PEFT's LoraConfig writes that a plain LoRA adapter must have.
CONFIG = [
    ("peft_type", lambda v: v == "LORA"),
    ("task_type", lambda v: v == "CAUSAL_LM"),
    ("r", lambda v: isinstance(v, int) and v > 0),
    ("rank_pattern", lambda v: isinstance(v, dict)),
    ("lora_alpha", lambda v: isinstance(v, (int, float))),
    ("alpha_pattern", lambda v: isinstance(v, dict)),
    ("target_modules", lambda v: isinstance(v, list) and v == sorted(v)),
    ("bias", lambda v: v == "none"),
    ("fan_in_fan_out", lambda v: v is False),
    ("lora_dropout", lambda v: v == 0.0),
    ("use_rslora", lambda v: v is False),
    ("use_dora", lambda v: v is False),
    ("modules_to_save", lambda v: v is None),
    ("base_model_name_or_path", lambda v: isinstance(v, str) and v != ""),
    ("inference_mode", lambda v: v is True),
    ("init_lora_weights", lambda v: v is True),
    ("layers_to_transform", lambda v: v is None),
    ("layers_pattern", lambda v: v is None),
    ("revision", lambda v: v is None),
]


def load_safetensors(path):
    """name -> float32 array, and name -> dtype string from the header."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {k: v["dtype"] for k, v in header.items()}
    if "BF16" not in dtypes.values():
        from safetensors.numpy import load_file

        tensors = {k: v.astype(np.float32) for k, v in load_file(str(path)).items()}
    else:
        data = raw[8 + n :]
        tensors = {}
        for k, v in header.items():
            b, e = v["data_offsets"]
            if v["dtype"] == "BF16":
                bits = np.frombuffer(data[b:e], dtype="<u2").astype(np.uint32) << 16
                arr = bits.view(np.float32)
            else:
                arr = np.frombuffer(data[b:e], dtype={"F32": "<f4", "F16": "<f2"}[v["dtype"]]).astype(np.float32)
            tensors[k] = arr.reshape(v["shape"])
    return tensors, dtypes, meta


def gguf_values(t):
    """A GGUF tensor's values as float32, numpy shape (rows, row length)."""
    import gguf

    rows = int(np.prod(t.shape[1:]))
    if t.tensor_type == gguf.GGMLQuantizationType.F32:
        v = np.asarray(t.data, dtype=np.float32)
    elif t.tensor_type == gguf.GGMLQuantizationType.F16:
        v = np.asarray(t.data).astype(np.float32)
    elif t.tensor_type == gguf.GGMLQuantizationType.BF16:
        bits = np.frombuffer(np.asarray(t.data).tobytes(), dtype="<u2").astype(np.uint32) << 16
        v = bits.view(np.float32)
    else:
        v = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    return v.reshape(rows, int(t.shape[0]))


def llama_permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, on rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--base", required=True, help="the base model (GGUF)")
    ap.add_argument("--gguf", help="the GGUF adapter the folder was exported from")
    a = ap.parse_args()
    import gguf

    d = Path(a.dir)
    problems = []
    cfg = json.loads((d / "adapter_config.json").read_text())
    for k, ok in CONFIG:
        if k not in cfg:
            problems.append(f"adapter_config.json: missing {k}")
        elif not ok(cfg[k]):
            problems.append(f"adapter_config.json: {k} = {cfg[k]!r}")
    tensors, dtypes, meta = load_safetensors(d / "adapter_model.safetensors")
    if meta.get("format") != "pt":
        problems.append(f"__metadata__ {meta}, PEFT writes {{'format': 'pt'}}")

    base = gguf.GGUFReader(a.base)
    arch = field(base, "general.architecture")
    n_head = int(field(base, f"{arch}.attention.head_count"))
    n_head_kv = int(field(base, f"{arch}.attention.head_count_kv") or n_head)
    base_dims = {t.name: (int(t.shape[0]), int(t.shape[1])) for t in base.tensors if len(t.shape) == 2}

    def rank_of(module):
        for key, r in (cfg.get("rank_pattern") or {}).items():
            if re.match(rf"(.*\.)?({key})$", module):
                return r
        return cfg.get("r")

    modules = {}
    for name in tensors:
        m = NAME.match(name)
        if not m:
            problems.append(f"{name}: not a PEFT LoRA name of a Llama linear layer")
            continue
        module = m.group(1)
        modules.setdefault(module, {})[m.group(6)] = tensors[name]
    ranks, shorts = {}, set()
    for module, halves in sorted(modules.items()):
        if set(halves) != {"A", "B"}:
            problems.append(f"{module}: halves {sorted(halves)}")
            continue
        if module == "lm_head":
            g = "output.weight"
        else:
            layer, rest = re.match(r"model\.layers\.(\d+)\.(.*)$", module).groups()
            g = f"blk.{layer}.{GGUF_OF[rest]}.weight"
        shorts.add(module.rsplit(".", 1)[-1])
        if g not in base_dims:
            problems.append(f"{module}: the base has no {g}")
            continue
        n_in, n_out = base_dims[g]
        r = rank_of(module)
        ranks[module] = r
        A, B = halves["A"], halves["B"]
        if list(A.shape) != [r, n_in]:
            problems.append(f"{module}.lora_A: shape {list(A.shape)}, want [r={r}, in={n_in}]")
        if list(B.shape) != [n_out, r]:
            problems.append(f"{module}.lora_B: shape {list(B.shape)}, want [out={n_out}, r={r}]")
        if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B))):
            problems.append(f"{module}: non-finite values")
    if sorted(shorts) != cfg.get("target_modules"):
        problems.append(f"target_modules {cfg.get('target_modules')}, modules {sorted(shorts)}")

    compared = 0
    if a.gguf:
        ad = gguf.GGUFReader(a.gguf)
        if field(ad, "general.type") != "adapter" or field(ad, "adapter.type") != "lora":
            problems.append("--gguf is not a LoRA adapter")
        alpha = field(ad, "adapter.lora.alpha")
        if alpha != np.float32(cfg["lora_alpha"]) and alpha != 0:
            problems.append(f"adapter.lora.alpha {alpha}, lora_alpha {cfg['lora_alpha']}")
        by_name = {t.name: t for t in ad.tensors}
        n_pairs = sum(1 for n in by_name if n.endswith(".lora_a"))
        if n_pairs != len(modules):
            problems.append(f"the GGUF adapter has {n_pairs} pairs, the folder {len(modules)} modules")
        for module, halves in sorted(modules.items()):
            if module == "lm_head":
                g = "output.weight"
            else:
                layer, rest = re.match(r"model\.layers\.(\d+)\.(.*)$", module).groups()
                g = f"blk.{layer}.{GGUF_OF[rest]}.weight"
            ga, gb = by_name.get(g + ".lora_a"), by_name.get(g + ".lora_b")
            if ga is None or gb is None:
                problems.append(f"{module}: the GGUF adapter has no {g}.lora_a/.lora_b")
                continue
            B = halves["B"]
            if module.endswith("q_proj"):
                B = llama_permute(B, n_head)
            elif module.endswith("k_proj"):
                B = llama_permute(B, n_head_kv)
            for what, ours, theirs in (("lora_A", halves["A"], gguf_values(ga)), ("lora_B", B, gguf_values(gb))):
                if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
                    problems.append(f"{module}.{what}: differs from the GGUF adapter's {g}")
                compared += 1

    print(
        json.dumps(
            {
                "tensors": len(tensors),
                "modules": len(modules),
                "ranks": ranks,
                "dtypes": sorted(set(dtypes.values())),
                "compared_with_gguf": compared,
                "problems": problems,
            },
            indent=1,
        )
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
