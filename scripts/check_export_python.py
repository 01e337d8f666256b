#!/usr/bin/env python3
"""Checks of `crunch convert` / `crunch export` against the Python ecosystem and llama.cpp.

  check_export_python.py export HF_DIR --text FILE --ids IDS.json [--gguf F32.gguf]   (oracle venv)
      The folder crunch exported loads with PyPI `safetensors` (every shard, the index, shapes as in
      config.json) and PyPI `tokenizers` (tokenizer.json); the tokenizer's ids for the whole text
      (no special tokens added) equal IDS.json (crunch's GGUF tokenizer, which matches llama.cpp).
      With --gguf (the F32 file the folder came from), llama.cpp's Q/K row permutation (its
      reshape/swapaxes) applied with numpy to the exported q_proj/k_proj must give the GGUF's rows.
      Prints a JSON summary; exit code 1 on any mismatch.

  check_export_python.py llama-metadata HF_DIR --n-vocab N --total-params P   (oracle venv)
      The general.* and special-token keys llama.cpp's own Python package (`gguf.Metadata.load`,
      `gguf.SpecialVocab`) derives from the folder, as JSON {key: value}, for crunch's tests to
      compare with what `crunch convert` wrote.

  check_export_python.py llama-tokens GGUF --text FILE --out IDS.json    (llama-venv: llama_cpp)
      llama.cpp's token ids for the whole text (vocab only, no BOS, special tokens not parsed).

  check_export_python.py minilm-llama GGUF --text FILE [--crunch-jsonl FILE] [--model-dir DIR --lines N]
      (llama-venv) Sentence embeddings from llama.cpp (llama_cpp.Llama(embedding=True), the GGUF's
      own pooling) against crunch's (`crunch embed GGUF -f TEXT -o FILE`, JSONL) and/or the numpy
      reference of scripts/minilm_reference.py over the Hugging Face folder (run with the oracle
      venv's python; lines sentence-transformers truncates are skipped); min/mean cosine as JSON,
      exit 1 below 0.999.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cmd_export(a):
    import numpy as np
    from safetensors import safe_open
    from tokenizers import Tokenizer

    d = Path(a.hf_dir)
    cfg = json.loads((d / "config.json").read_text())
    index = d / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        weight_map = None
        files = ["model.safetensors"]
    shapes, n_bytes, problems = {}, 0, []
    for f in files:
        with safe_open(str(d / f), framework="numpy") as st:
            for name in st.keys():
                t = st.get_tensor(name)
                if not np.all(np.isfinite(t.astype(np.float32))):
                    problems.append(f"{name}: non-finite values")
                shapes[name] = list(t.shape)
                n_bytes += t.nbytes
                if weight_map is not None and weight_map.get(name) != f:
                    problems.append(f"{name}: index says {weight_map.get(name)}, found in {f}")
    h, ff, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    if cfg["model_type"] in ("llama", "qwen2"):
        heads = cfg["num_attention_heads"]
        kv = cfg.get("num_key_value_heads", heads)
        hd = cfg.get("head_dim", h // heads)
        want = {"model.embed_tokens.weight": [cfg["vocab_size"], h], "model.norm.weight": [h]}
        for i in range(L):
            p = f"model.layers.{i}."
            want.update({
                p + "self_attn.q_proj.weight": [heads * hd, h],
                p + "self_attn.k_proj.weight": [kv * hd, h],
                p + "self_attn.v_proj.weight": [kv * hd, h],
                p + "self_attn.o_proj.weight": [h, heads * hd],
                p + "mlp.gate_proj.weight": [ff, h],
                p + "mlp.up_proj.weight": [ff, h],
                p + "mlp.down_proj.weight": [h, ff],
            })
        if not cfg.get("tie_word_embeddings", True):
            want["lm_head.weight"] = [cfg["vocab_size"], h]
        for k, s in want.items():
            if shapes.get(k) != s:
                problems.append(f"{k}: shape {shapes.get(k)}, config.json implies {s}")
    if a.gguf and cfg["model_type"] == "llama":
        # Q/K rows: llama.cpp's converter permutes Hugging Face rows with exactly this reshape;
        # applied to the exported tensors it must give the GGUF's rows back.
        from gguf import GGUFReader

        g = {t.name: t for t in GGUFReader(a.gguf).tensors}

        def permute(w, n_head):
            return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

        heads = cfg["num_attention_heads"]
        kv = cfg.get("num_key_value_heads", heads)
        checked, handles = 0, {}
        for i in range(L):
            for proj, gname, nh in (("q_proj", "attn_q", heads), ("k_proj", "attn_k", kv)):
                name = f"model.layers.{i}.self_attn.{proj}.weight"
                f = weight_map[name] if weight_map else "model.safetensors"
                if f not in handles:
                    handles[f] = safe_open(str(d / f), framework="numpy")
                w = handles[f].get_tensor(name).astype(np.float32)
                t = g[f"blk.{i}.{gname}.weight"]
                ref = np.asarray(t.data, dtype=np.float32).reshape(w.shape)
                if not np.array_equal(permute(w, nh), ref):
                    problems.append(f"{name}: permuted rows differ from the GGUF's {t.name}")
                checked += 1
        print(f"checked the Q/K permutation of {checked} tensors against {a.gguf}", file=sys.stderr)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    text = Path(a.text).read_text(encoding="utf-8")
    ids = tok.encode(text, add_special_tokens=False).ids
    want_ids = json.loads(Path(a.ids).read_text())
    first_diff = next((i for i, (x, y) in enumerate(zip(ids, want_ids)) if x != y), None)
    if first_diff is None and len(ids) != len(want_ids):
        first_diff = min(len(ids), len(want_ids))
    if first_diff is not None:
        i = first_diff
        problems.append(f"token ids differ at {i}: tokenizers {ids[i:i + 8]} vs GGUF {want_ids[i:i + 8]}"
                        f" ({len(ids)} vs {len(want_ids)} tokens)")
    for f in ("tokenizer_config.json", "generation_config.json", "special_tokens_map.json"):
        json.loads((d / f).read_text())
    out = {"files": files, "tensors": len(shapes), "bytes": n_bytes, "tokens": len(ids),
           "ids_equal": first_diff is None, "problems": problems}
    print(json.dumps(out, indent=1))
    sys.exit(1 if problems else 0)


def cmd_llama_metadata(a):
    import gguf

    d = Path(a.hf_dir)
    md = gguf.Metadata.load(None, d, None, a.total_params)
    if md.name is None:
        md.name = d.name
    if md.size_label is None and a.total_params > 0:
        md.size_label = gguf.size_label(a.total_params, a.total_params, 0, 0)
    w = gguf.GGUFWriter(path=None, arch="llama")
    md.set_gguf_meta_model(w)
    load_merges = a.merges
    gguf.SpecialVocab(d, load_merges=load_merges, n_vocab=a.n_vocab).add_to_gguf(w, quiet=True)
    out = {}
    for k, v in w.kv_data[0].items():
        if k == "general.architecture":
            continue
        val = v.value
        if isinstance(val, (bytes, bytearray)):
            val = val.decode("utf-8")
        if isinstance(val, list):
            val = [x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else x for x in val]
        out[k] = val
    print(json.dumps(out, ensure_ascii=False))


def cmd_llama_tokens(a):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=a.gguf, vocab_only=True, verbose=False)
    text = Path(a.text).read_text(encoding="utf-8")
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    Path(a.out).write_text(json.dumps(ids))
    print(json.dumps({"tokens": len(ids)}))


def cmd_minilm_llama(a):
    import numpy as np
    import llama_cpp

    llm = llama_cpp.Llama(model_path=a.gguf, embedding=True, n_ctx=512, n_batch=512, verbose=False)

    def cosine(x, y):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))

    out = {}
    if a.crunch_jsonl:
        # crunch's own BERT forward pass on the same GGUF (`crunch embed GGUF -f TEXT -o FILE`).
        recs = [json.loads(l) for l in Path(a.crunch_jsonl).read_text().splitlines() if l.strip()]
        cos = [cosine(llm.embed(r["text"]), r["embedding"]) for r in recs]
        out["crunch"] = {"lines": len(cos), "min_cosine": min(cos), "mean_cosine": sum(cos) / len(cos)}
    if a.model_dir:
        ref_py = a.ref_python or str(Path.home() / ".cache/crunch/venv/bin/python")
        with tempfile.TemporaryDirectory() as tmp:
            ref_json = Path(tmp) / "ref.json"
            subprocess.run([ref_py, str(HERE / "minilm_reference.py"), "embed", a.model_dir, a.text, str(ref_json),
                            "--max-lines", str(a.lines)], check=True)
            ref = json.loads(ref_json.read_text())
        # sentence-transformers truncates to max_seq_length; llama.cpp embeds the whole line. Lines
        # that long are skipped (counted), all others must tokenize identically.
        st_cfg = Path(a.model_dir) / "sentence_bert_config.json"
        max_len = json.loads(st_cfg.read_text()).get("max_seq_length", 512) if st_cfg.is_file() else 512
        cos, ids_differ, truncated = [], [], 0
        for line, ref_ids, ref_emb in zip(ref["lines"], ref["ids"], ref["embeddings"]):
            if len(ref_ids) >= max_len:
                truncated += 1
                continue
            if llm.tokenize(line.encode("utf-8"), add_bos=True, special=False) != ref_ids:
                ids_differ.append(line[:80])
            cos.append(cosine(llm.embed(line), ref_emb))
        out["numpy_reference"] = {"lines": len(cos), "skipped_truncated_by_sentence_transformers": truncated,
                                  "min_cosine": min(cos), "mean_cosine": sum(cos) / len(cos),
                                  "token_ids_differ": ids_differ}
    print(json.dumps(out, indent=1))
    ok = all(v["min_cosine"] >= 0.999 for v in out.values()) and not out.get("numpy_reference", {}).get("token_ids_differ")
    sys.exit(0 if ok and out else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("hf_dir")
    e.add_argument("--text", required=True)
    e.add_argument("--ids", required=True)
    e.add_argument("--gguf", help="F32 GGUF the folder was exported from: check the Q/K permutation with numpy")
    m = sub.add_parser("llama-metadata")
    m.add_argument("hf_dir")
    m.add_argument("--n-vocab", type=int)
    m.add_argument("--total-params", type=int, default=0)
    m.add_argument("--merges", action="store_true")
    t = sub.add_parser("llama-tokens")
    t.add_argument("gguf")
    t.add_argument("--text", required=True)
    t.add_argument("--out", required=True)
    b = sub.add_parser("minilm-llama")
    b.add_argument("gguf")
    b.add_argument("--model-dir", help="Hugging Face folder: compare with scripts/minilm_reference.py (numpy)")
    b.add_argument("--crunch-jsonl", help="output of `crunch embed GGUF -f TEXT -o FILE`: compare with crunch")
    b.add_argument("--text", required=True)
    b.add_argument("--lines", type=int, default=64)
    b.add_argument("--ref-python")
    a = ap.parse_args()
    {"export": cmd_export, "llama-metadata": cmd_llama_metadata, "llama-tokens": cmd_llama_tokens,
     "minilm-llama": cmd_minilm_llama}[a.cmd](a)


if __name__ == "__main__":
    main()
