#!/usr/bin/env python3
"""llama.cpp's importance matrix through PyPI llama-cpp-python, and comparisons with crunch's.

llama-cpp-python does not ship the llama-imatrix tool, so `collect` reproduces it with the
library: a graph callback (`cb_eval` in the context parameters) sees every matrix multiplication
while the model runs, and for each one by a `blk.*` weight with at least 16 F32 input rows adds
each column's squared input to that weight's sums and the rows to its count, exactly as
tools/imatrix/imatrix.cpp does. The text is tokenized once with BOS and cut into chunks of
`--ctx` tokens whose first token is replaced by BOS. The file is written in llama.cpp's GGUF
imatrix layout (general.type=imatrix, imatrix.* keys, NAME.in_sum2 / NAME.counts).

  P=~/.cache/crunch/llama-venv/bin/python
  $P scripts/compare_imatrix.py collect MODEL.gguf TEXT -o llama.imatrix.gguf --ctx 512 --chunks 16
  $P scripts/compare_imatrix.py compare crunch.imatrix.gguf llama.imatrix.gguf [--tol 0.01]
  $P scripts/compare_imatrix.py quantize MODEL.gguf OUT.gguf Q4_K_M --imatrix FILE
  $P scripts/compare_imatrix.py same-tensors crunch.gguf llama.gguf

`compare` prints, per tensor, the relative L2 difference of the per-column mean squared
activations and the largest per-column relative difference, and exits non-zero when a tensor's
relative L2 difference exceeds --tol.
"""
import argparse
import ctypes
import sys
import time

import numpy as np

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64


class GgmlTensor(ctypes.Structure):
    """struct ggml_tensor of ggml 0.25 (ggml/include/ggml.h)."""


GgmlTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GgmlTensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(GgmlTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]

PRESETS = {
    "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12,
    "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25,
    "IQ4_XS": 30, "IQ2_XXS": 19, "IQ2_XS": 20, "Q2_K_S": 21, "IQ3_XS": 22, "IQ3_XXS": 23, "IQ1_S": 24,
    "IQ3_S": 26, "IQ3_M": 27, "IQ2_S": 28, "IQ2_M": 29, "IQ1_M": 31,
}


def filter_name(name):
    # "CUDA0#blk.0.attn_k.weight#0" -> "blk.0.attn_k.weight"
    if "#" in name:
        name = name.split("#")[1]
    return name


def ggml_lib():
    import llama_cpp
    import os
    lib_dir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    lib = ctypes.CDLL(os.path.join(lib_dir, "libggml-base.so"))
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    return lib


def collect(a):
    import llama_cpp
    ggml = ggml_lib()
    op_mul_mat = next(i for i in range(200) if ggml.ggml_op_name(i) == b"MUL_MAT")
    sums, counts = {}, {}

    def cb(t_ptr, ask, _user):
        t = ctypes.cast(t_ptr, ctypes.POINTER(GgmlTensor)).contents
        if t.op != op_mul_mat:
            return False
        src0, src1 = t.src[0].contents, t.src[1].contents
        name = filter_name(src0.name.decode())
        if ask:
            if src1.ne[1] < 16 or src1.type != 0:  # GGML_TYPE_F32
                return False
            return name.startswith("blk.") or (a.process_output and name == "output.weight")
        ne0, ne1, ne2, ne3 = (src1.ne[i] for i in range(4))
        nb = [src1.nb[i] for i in range(4)]
        n_mat = src0.ne[2] * src0.ne[3]
        if n_mat != 1:
            raise SystemExit(f"{name}: 3-D weights (experts) are not handled by this script")
        buf = (ctypes.c_char * (nb[3] * ne3)).from_address(src1.data)
        x = np.lib.stride_tricks.as_strided(
            np.frombuffer(buf, dtype=np.float32), shape=(ne3, ne2, ne1, ne0), strides=(nb[3], nb[2], nb[1], nb[0])
        ).reshape(-1, ne0).astype(np.float64)
        acc = sums.setdefault(name, np.zeros(ne0, dtype=np.float64))
        acc += (x * x).sum(axis=0)
        counts[name] = counts.get(name, 0) + x.shape[0]
        return True

    callback = llama_cpp.ggml_backend_sched_eval_callback(cb)
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(a.model.encode(), mp)
    if not model:
        raise SystemExit(f"cannot load {a.model}")
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = a.ctx
    cp.n_batch = a.ctx
    cp.n_ubatch = a.ctx
    cp.n_threads = a.threads
    cp.n_threads_batch = a.threads
    cp.cb_eval = callback
    cp.cb_eval_user_data = None
    ctx = llama_cpp.llama_init_from_model(model, cp)
    vocab = llama_cpp.llama_model_get_vocab(model)
    text = open(a.text, "rb").read()
    n_max = len(text) + 16
    toks = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), toks, n_max, True, False)
    if n < 0:
        raise SystemExit("tokenization failed")
    tokens = list(toks[:n])
    add_bos = llama_cpp.llama_vocab_get_add_bos(vocab)
    bos = llama_cpp.llama_vocab_bos(vocab)
    tokens = tokens[a.skip_chunks * a.ctx:]
    n_chunk = len(tokens) // a.ctx
    if a.chunks:
        n_chunk = min(n_chunk, a.chunks)
    if n_chunk < 1:
        raise SystemExit(f"{a.text}: {len(tokens)} tokens, fewer than one context of {a.ctx}")
    batch = llama_cpp.llama_batch_init(a.ctx, 0, 1)
    t0 = time.time()
    for i in range(n_chunk):
        chunk = tokens[i * a.ctx:(i + 1) * a.ctx]
        if add_bos:
            chunk[0] = bos
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        batch.n_tokens = a.ctx
        for k, tok in enumerate(chunk):
            batch.token[k] = tok
            batch.pos[k] = k
            batch.n_seq_id[k] = 1
            batch.seq_id[k][0] = 0
            batch.logits[k] = True  # llama-imatrix asks for every token's logits
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise SystemExit(f"llama_decode failed on chunk {i}")
        print(f"chunk {i + 1}/{n_chunk} ({time.time() - t0:.1f} s)", file=sys.stderr)
    llama_cpp.llama_batch_free(batch)
    write_imatrix(a.output, sums, counts, [a.text], n_chunk, a.ctx)
    print(f"{a.output}: {len(sums)} entries, {n_chunk} chunks of {a.ctx}")


def write_imatrix(path, sums, counts, datasets, chunk_count, chunk_size):
    from gguf import GGUFWriter, GGUFValueType
    w = GGUFWriter(path, arch="imatrix")
    # GGUFWriter always writes general.architecture; llama.cpp's loader ignores it.
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", datasets)
    w.add_uint32("imatrix.chunk_count", chunk_count)
    w.add_uint32("imatrix.chunk_size", chunk_size)
    for name in sorted(sums):
        w.add_tensor(f"{name}.in_sum2", sums[name].astype(np.float32).reshape(1, -1))
        w.add_tensor(f"{name}.counts", np.array([[counts[name]]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_means(path):
    from gguf import GGUFReader
    r = GGUFReader(path)
    s, c = {}, {}
    for t in r.tensors:
        if t.name.endswith(".in_sum2"):
            s[t.name[:-8]] = np.asarray(t.data, dtype=np.float64).ravel()
        elif t.name.endswith(".counts"):
            c[t.name[:-7]] = float(np.asarray(t.data).ravel()[0])
    return {k: s[k] / c[k] for k in s if c.get(k)}, c


def compare(a):
    ma, ca = read_means(a.a)
    mb, cb = read_means(a.b)
    worst = 0.0
    missing = sorted(set(ma) ^ set(mb))
    if missing:
        print(f"entries in only one file: {missing[:8]}{' …' if len(missing) > 8 else ''}")
    rows = []
    for k in sorted(set(ma) & set(mb)):
        x, y = ma[k], mb[k]
        if x.shape != y.shape:
            print(f"{k}: sizes differ {x.shape} vs {y.shape}")
            worst = float("inf")
            continue
        rel_l2 = float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30))
        rel_max = float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-12 + 1e-3 * np.abs(y).max())))
        rows.append((k, rel_l2, rel_max, ca[k], cb[k]))
        worst = max(worst, rel_l2)
    for k, l2, mx, na, nb in rows:
        print(f"{k:36s} rel L2 {l2:.2e}  max col rel {mx:.2e}  tokens {na:.0f} / {nb:.0f}")
    if rows:
        l2s = [r[1] for r in rows]
        print(f"{len(rows)} tensors: median rel L2 {np.median(l2s):.2e}, worst {max(l2s):.2e} ({rows[int(np.argmax(l2s))][0]})")
    ok = worst <= a.tol and not missing
    print("OK" if ok else f"FAIL (tolerance {a.tol})")
    return 0 if ok else 1


def imatrix_param(path):
    """(array for llama_model_quantize_params.imatrix, buffers it points into, entry count): the
    per-column mean squared activations of an imatrix file, as llama-quantize passes them."""
    import llama_cpp
    means, _ = read_means(path)
    keep = []
    arr = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
    for i, (k, v) in enumerate(sorted(means.items())):
        buf = np.ascontiguousarray(v, dtype=np.float32)
        keep.append((k.encode(), buf))
        arr[i].name = keep[-1][0]
        arr[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = buf.size
    arr[len(means)].name = None
    return arr, keep, len(means)


def quantize(a):
    import llama_cpp
    arr, _keep, n = imatrix_param(a.imatrix)
    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = a.threads
    p.ftype = PRESETS[a.type.upper()]
    p.imatrix = arr
    t = time.time()
    rc = llama_cpp.llama_model_quantize(a.model.encode(), a.output.encode(), ctypes.byref(p))
    if rc != 0:
        raise SystemExit("llama_model_quantize failed")
    print(f"{a.output}: {a.type} with {n} imatrix entries in {time.time() - t:.1f} s")


def same_tensors(a):
    from gguf import GGUFReader
    ra, rb = GGUFReader(a.a), GGUFReader(a.b)
    ta = {t.name: (t.tensor_type.name, bytes(np.asarray(t.data).view(np.uint8).ravel())) for t in ra.tensors}
    tb = {t.name: (t.tensor_type.name, bytes(np.asarray(t.data).view(np.uint8).ravel())) for t in rb.tensors}
    diff = [k for k in ta if k not in tb or ta[k] != tb[k]] + [k for k in tb if k not in ta]
    print(f"{len(ta) - len(diff)}/{len(ta)} tensors identical (type and bytes)")
    for k in diff[:10]:
        print(f"  differs: {k} {ta.get(k, ('-',))[0]} vs {tb.get(k, ('-',))[0]}")
    return 0 if not diff else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("model")
    c.add_argument("text")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--ctx", type=int, default=512)
    c.add_argument("--chunks", type=int, default=0)
    c.add_argument("--skip-chunks", type=int, default=0)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--process-output", action="store_true")
    k = sub.add_parser("compare")
    k.add_argument("a")
    k.add_argument("b")
    k.add_argument("--tol", type=float, default=0.01)
    q = sub.add_parser("quantize")
    q.add_argument("model")
    q.add_argument("output")
    q.add_argument("type")
    q.add_argument("--imatrix", required=True)
    q.add_argument("--threads", type=int, default=2)
    d = sub.add_parser("same-tensors", help="are two GGUF files' tensors identical (types and bytes)?")
    d.add_argument("a")
    d.add_argument("b")
    a = ap.parse_args()
    if a.cmd == "same-tensors":
        sys.exit(same_tensors(a))
    if a.cmd == "collect":
        collect(a)
    elif a.cmd == "compare":
        sys.exit(compare(a))
    else:
        quantize(a)


if __name__ == "__main__":
    main()
