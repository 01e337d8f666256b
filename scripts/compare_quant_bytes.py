#!/usr/bin/env python3
"""Quantize with llama.cpp's own C code (libggml-base from the llama-cpp-python wheel) for byte checks.

  compare_quant_bytes.py quantize TYPE ROW_LEN IN.f32 OUT.bin [IMATRIX.f32]
      ggml_quantize_chunk(TYPE, ...) on rows of ROW_LEN; IMATRIX (ROW_LEN floats) is passed as the
      importance weights when given.
  compare_quant_bytes.py from_float_ref TYPE ROW_LEN IN.f32 OUT.bin
      the type's reference row quantizer (`from_float_ref`, e.g. quantize_row_q8_K_ref for Q8_K).
  compare_quant_bytes.py compare A.bin B.bin BLOCK_BYTES
      report how many blocks differ between two quantized buffers (exit 1 if any).

Run with the llama-cpp-python virtualenv's interpreter (default: ~/.cache/crunch/llama-venv/bin/python);
`LIBGGML_BASE` overrides the library path. Not needed by the default test run.
"""
import ctypes
import glob
import os
import sys

import numpy as np

TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q8_1": 9, "Q2_K": 10, "Q3_K": 11,
         "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "Q8_K": 15, "IQ2_XXS": 16, "IQ2_XS": 17, "IQ3_XXS": 18,
         "IQ1_S": 19, "IQ4_NL": 20, "IQ3_S": 21, "IQ2_S": 22, "IQ4_XS": 23, "IQ1_M": 29, "TQ1_0": 34,
         "TQ2_0": 35}


def libggml():
    path = os.environ.get("LIBGGML_BASE")
    if not path:
        venv = os.path.join(os.path.expanduser("~"), ".cache", "crunch", "llama-venv")
        hits = sorted(glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "llama_cpp", "lib",
                                             "libggml-base.so")))
        if not hits:
            sys.exit("libggml-base.so not found: set LIBGGML_BASE")
        path = hits[0]
    lib = ctypes.CDLL(path)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


class TypeTraits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def cmd_quantize(ty, row_len, src, dst, imatrix=None):
    lib = libggml()
    t, n = TYPES[ty.upper()], int(row_len)
    x = np.ascontiguousarray(np.fromfile(src, dtype=np.float32))
    nrows = x.size // n
    out = np.zeros(lib.ggml_row_size(t, n) * nrows, dtype=np.uint8)
    qw = None
    if imatrix:
        w = np.ascontiguousarray(np.fromfile(imatrix, dtype=np.float32))
        assert w.size == n, f"imatrix has {w.size} values, expected {n}"
        qw = ptr(w)
    written = lib.ggml_quantize_chunk(t, ptr(x), ptr(out), 0, nrows, n, qw)
    assert written == out.size, (written, out.size)
    out.tofile(dst)


def cmd_from_float_ref(ty, row_len, src, dst):
    lib = libggml()
    t, n = TYPES[ty.upper()], int(row_len)
    lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    traits = lib.ggml_get_type_traits(t).contents
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    if traits.from_float_ref:
        fn = proto(traits.from_float_ref)
    else:
        # some builds leave Q8_K's traits empty but still export the function itself
        name = traits.type_name.decode()
        fn = proto(ctypes.cast(getattr(lib, f"quantize_row_{name[:-1]}{name[-1].upper()}_ref"), ctypes.c_void_p).value
                   if name.endswith("k") else ctypes.cast(getattr(lib, f"quantize_row_{name}_ref"), ctypes.c_void_p).value)
    x = np.ascontiguousarray(np.fromfile(src, dtype=np.float32))
    out = np.zeros(lib.ggml_row_size(t, n) * (x.size // n), dtype=np.uint8)
    fn(ptr(x), ptr(out), x.size)
    out.tofile(dst)


def cmd_compare(a, b, block_bytes):
    x, y = np.fromfile(a, dtype=np.uint8), np.fromfile(b, dtype=np.uint8)
    if x.size != y.size:
        sys.exit(f"sizes differ: {x.size} vs {y.size}")
    bb = int(block_bytes)
    diff = np.any(x.reshape(-1, bb) != y.reshape(-1, bb), axis=1)
    print(f"{int(diff.sum())} of {diff.size} blocks differ")
    sys.exit(1 if diff.any() else 0)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"quantize": cmd_quantize, "from_float_ref": cmd_from_float_ref, "compare": cmd_compare}[cmd](*args)
