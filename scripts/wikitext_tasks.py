#!/usr/bin/env python3
"""Multiple-choice cloze tasks from wikitext sentences, for `crunch eval choice` / `crunch stage1 --eval`.

  wikitext_tasks.py TEXT OUT.jsonl [--n 200] [--last-lines 2000] [--seed 0]

Sentences of 12 to 40 words are taken from the last --last-lines lines of TEXT (keep them out of
training text: `stage1` trains on the first chunks). Each task's context is the first 60% of a
sentence's words; its four endings are the true rest and the rests of three other sentences, in a
seeded random order. Chance is 25%. The file is written to OUT (keep it outside the repository;
wikitext is CC BY-SA 3.0).
"""
import argparse
import json
import random
import re


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text")
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--last-lines", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    lines = open(a.text, encoding="utf-8").read().splitlines()[-a.last_lines:]
    sentences = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for s in re.split(r"(?<=[.!?]) (?=[A-Z])", line):
            words = s.split()
            if 12 <= len(words) <= 40:
                sentences.append(words)
    rng = random.Random(a.seed)
    rng.shuffle(sentences)
    if len(sentences) < 4:
        raise SystemExit(f"{a.text}: only {len(sentences)} usable sentences")
    tasks = []
    for i, words in enumerate(sentences[: a.n]):
        cut = int(len(words) * 0.6)
        context, truth = " ".join(words[:cut]), " " + " ".join(words[cut:])
        others = [s for j, s in enumerate(sentences) if j != i]
        endings = [truth]
        for o in rng.sample(others, 3):
            oc = int(len(o) * 0.6)
            endings.append(" " + " ".join(o[oc:]))
        order = list(range(4))
        rng.shuffle(order)
        tasks.append({"context": context, "endings": [endings[k] for k in order], "label": order.index(0)})
    with open(a.out, "w", encoding="utf-8") as f:
        for t in tasks:
            f.write(json.dumps(t) + "\n")
    print(f"{len(tasks)} tasks -> {a.out}")


if __name__ == "__main__":
    main()
