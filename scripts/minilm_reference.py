#!/usr/bin/env python3
"""Independent reference for crunch's BERT encoder (all-MiniLM-L6-v2 style), in numpy.

  minilm_reference.py embed MODEL_DIR TEXT_FILE OUT.json [--max-lines N]
      Sentence embeddings of the first N non-empty lines (each line stripped), computed from the
      safetensors weights with numpy in float64: word + position + token-type embeddings, LayerNorm,
      self-attention, GELU (erf form, as Hugging Face's "gelu"), mean pooling, and L2 normalisation
      when modules.json lists sentence-transformers' Normalize. Tokens come from the PyPI
      `tokenizers` package on MODEL_DIR/tokenizer.json, truncated to sentence_bert_config.json's
      max_seq_length as sentence-transformers does. Writes {"lines", "ids", "embeddings", "normalize"}.

  minilm_reference.py gguf MODEL_DIR OUT.gguf [--drop TENSOR] [--arch NAME] [--bad-shape TENSOR]
      Write the model as an F32 GGUF the way llama.cpp's convert_hf_to_gguf.py does for BERT, with
      PyPI `gguf` (llama.cpp's own package: its tensor-name map, special-vocab reader and writer), so
      crunch's GGUF loading is tested against a file crunch did not write. --drop, --arch and
      --bad-shape make broken files for the error tests.

Needs numpy, safetensors, tokenizers and gguf (the oracle virtualenv of scripts/setup-test-env.sh).
"""
import argparse
import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def read_lines(path, max_lines):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if s:
                out.append(s)
                if max_lines is not None and len(out) >= max_lines:
                    break
    return out


def layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def erf(x):
    """Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), vectorised."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return s * (1.0 - poly * np.exp(-a * a))


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def encode(W, cfg, ids):
    """Last hidden state (n_tokens x hidden) of one sequence; W holds the float64 weights."""
    pre = "bert." if "bert.embeddings.word_embeddings.weight" in W else ""
    eps = cfg["layer_norm_eps"]
    n_head = cfg["num_attention_heads"]
    n = len(ids)
    e = pre + "embeddings."
    x = W[e + "word_embeddings.weight"][ids] + W[e + "position_embeddings.weight"][:n]
    x = x + W[e + "token_type_embeddings.weight"][0]
    x = layer_norm(x, W[e + "LayerNorm.weight"], W[e + "LayerNorm.bias"], eps)
    d = x.shape[1] // n_head
    for i in range(cfg["num_hidden_layers"]):
        p = f"{pre}encoder.layer.{i}."

        def lin(name, h):
            return h @ W[p + name + ".weight"].T + W[p + name + ".bias"]

        q = lin("attention.self.query", x).reshape(n, n_head, d).transpose(1, 0, 2)
        k = lin("attention.self.key", x).reshape(n, n_head, d).transpose(1, 0, 2)
        v = lin("attention.self.value", x).reshape(n, n_head, d).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s = s / s.sum(axis=-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, n_head * d)
        a = lin("attention.output.dense", a)
        x = layer_norm(
            a + x, W[p + "attention.output.LayerNorm.weight"], W[p + "attention.output.LayerNorm.bias"], eps
        )
        h = gelu(lin("intermediate.dense", x))
        h = lin("output.dense", h)
        x = layer_norm(h + x, W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"], eps)
    return x


def st_settings(model_dir):
    """(max_seq_length, pooling, normalize) from the sentence-transformers files, with BERT defaults."""
    cfg = json.loads((model_dir / "config.json").read_text())
    max_len = cfg.get("max_position_embeddings", 512)
    sb = model_dir / "sentence_bert_config.json"
    if sb.is_file():
        max_len = json.loads(sb.read_text()).get("max_seq_length", max_len)
    pooling, normalize = "mean", False
    mj = model_dir / "modules.json"
    if mj.is_file():
        for m in json.loads(mj.read_text()):
            if m["type"].endswith(".Normalize"):
                normalize = True
            if m["type"].endswith(".Pooling"):
                pc = json.loads((model_dir / m["path"] / "config.json").read_text())
                if pc.get("pooling_mode_cls_token"):
                    pooling = "cls"
    return max_len, pooling, normalize


def cmd_embed(a):
    from tokenizers import Tokenizer

    model_dir = Path(a.model)
    cfg = json.loads((model_dir / "config.json").read_text())
    weights = {k: v.astype(np.float64) for k, v in load_file(str(model_dir / "model.safetensors")).items()
               if v.dtype.kind == "f"}
    max_len, pooling, normalize = st_settings(model_dir)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    lines = read_lines(a.text, a.max_lines)
    ids_all, embs = [], []
    for line in lines:
        ids = tok.encode(line).ids
        h = encode(weights, cfg, ids)
        e = h[0] if pooling == "cls" else h.mean(axis=0)
        if normalize:
            e = e / max(np.linalg.norm(e), 1e-12)
        ids_all.append(ids)
        embs.append([float(v) for v in e])
    out = {"lines": lines, "ids": ids_all, "embeddings": embs, "normalize": normalize, "pooling": pooling}
    Path(a.out).write_text(json.dumps(out))


def cmd_gguf(a):
    import gguf

    model_dir = Path(a.model)
    cfg = json.loads((model_dir / "config.json").read_text())
    arch = gguf.MODEL_ARCH.BERT
    arch_name = a.arch or gguf.MODEL_ARCH_NAMES[arch]
    w = gguf.GGUFWriter(a.out, arch_name)
    w.add_name(model_dir.name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg["layer_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_causal_attention(False)
    _, pooling, _ = st_settings(model_dir)
    w.add_pooling_type(gguf.PoolingType.CLS if pooling == "cls" else gguf.PoolingType.MEAN)

    # Vocabulary: llama.cpp's "phantom space" WordPiece form.
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    special = {t["id"] for t in tj.get("added_tokens", []) if t.get("special")}
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    toktypes = []
    for i, t in enumerate(tokens):
        if i in special:
            toktypes.append(gguf.TokenType.CONTROL)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
            tokens[i] = t[2:] if t.startswith("##") else "\u2581" + t
    w.add_token_type_count(cfg.get("type_vocab_size", 1))
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(w)

    weights = load_file(str(model_dir / "model.safetensors"))
    tmap = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    skip = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    for name, t in weights.items():
        name = name[5:] if name.startswith("bert.") else name
        if name in skip:
            continue
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise SystemExit(f"no GGUF name for {name}")
        if new == a.drop:
            continue
        data = t.astype(np.float32)
        if new == a.bad_shape:
            data = data[..., :-1].copy()
        w.add_tensor(new, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed")
    e.add_argument("model")
    e.add_argument("text")
    e.add_argument("out")
    e.add_argument("--max-lines", type=int)
    g = sub.add_parser("gguf")
    g.add_argument("model")
    g.add_argument("out")
    g.add_argument("--drop")
    g.add_argument("--arch")
    g.add_argument("--bad-shape")
    a = ap.parse_args()
    {"embed": cmd_embed, "gguf": cmd_gguf}[a.cmd](a)


if __name__ == "__main__":
    main()
