#!/usr/bin/env python3
"""How fast each strategy reaches a recorded grid's Pareto front (docs/SEARCH.md).

Replays `crunch search --replay GRID_RUN --strategy S --seed K --budget B` (trials read back from
the grid, nothing run or recorded) for random, nsga2 and tpe over seeds and budgets, and prints the
median share of the grid's hypervolume reached and of its front points found. `--real` takes the
JSON outputs of real (not replayed) strategy runs and scores the points they visited on the grid's
recorded values the same way (hypervolume in objectives scaled by the grid's ideal and nadir,
reference 1.1 in each).
"""
import argparse, json, statistics, subprocess, sys

MAXIMISED = {"top1", "acc", "pp", "tg"}


def objective(c, o):
    m, x = c.get("measured") or {}, c.get("extra") or {}
    v = {"size": c["file_bytes"] / 2**20, "kld": m.get("kld"), "ppl": m.get("ppl"), "top1": m.get("top1"),
         "pp": m.get("tokens_per_s"), "tg": x.get("tg_tokens_per_s"), "energy": x.get("energy_j_per_token"),
         "co2": x.get("co2_g"), "acc": x.get("acc"),
         "ram": (x.get("peak_rss_bytes") or 0) / 2**20 or None}[o]
    return None if v is None else (-v if o in MAXIMISED else v)


def hypervolume(points, ref):
    """Exact hypervolume (minimisation) by slicing the last objective."""
    pts = [p for p in points if all(a < r for a, r in zip(p, ref))]
    if not pts:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    pts.sort(key=lambda p: p[-1])
    vol = 0.0
    for i, p in enumerate(pts):
        top = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if top > p[-1]:
            vol += hypervolume([q[:-1] for q in pts[: i + 1]], ref[:-1]) * (top - p[-1])
    return vol


def dominated(p, q):
    return all(a <= b for a, b in zip(q, p)) and any(a < b for a, b in zip(q, p))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for a in ["crunch", "model", "text", "space", "registry"]:
        ap.add_argument(a)
    ap.add_argument("grid_run", type=int)
    ap.add_argument("--objectives", default="size,kld,tg,energy")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--budgets", default="8,12,16,24,32")
    ap.add_argument("--real", nargs="*", default=[])
    a = ap.parse_args()
    base = [a.crunch, "search", a.model, "--space", a.space, "--text", a.text, "--registry", a.registry,
            "--objectives", a.objectives, "--replay", str(a.grid_run), "--json", "--quiet"]
    objs = a.objectives.split(",")
    print(f"| strategy | budget | hypervolume share (median, min) | front points found (median) | all found by (median trials) |")
    print("|---|---|---|---|---|")
    size = None
    for budget in [int(b) for b in a.budgets.split(",")]:
        for s in ["random", "nsga2", "tpe"]:
            hv, found, full = [], [], []
            for seed in range(a.seeds):
                o = subprocess.run(base + ["--strategy", s, "--seed", str(seed), "--budget", str(budget)],
                                   capture_output=True, text=True)
                if o.returncode != 0:
                    sys.exit(o.stderr)
                r = json.loads(o.stdout)["summary"]["replay"]
                size = (r["front_size"], r["recorded"])
                hv.append(r["hypervolume_ratio"])
                found.append(r["front_found"])
                full.append(r["trials_to_front"] if r["trials_to_front"] is not None else float("inf"))
            med_full = statistics.median(full)
            print(f"| {s} | {budget} | {statistics.median(hv):.4f} ({min(hv):.4f}) | {statistics.median(found):g} of {size[0]} "
                  f"| {'-' if med_full == float('inf') else f'{med_full:g}'} |")
    print(f"\n{size[1]} grid points, {size[0]} on the grid's front over {a.objectives}; {a.seeds} seeds per row.")
    if a.real:
        grid = subprocess.run(base + ["--strategy", "grid"], capture_output=True, text=True)
        g = json.loads(grid.stdout)["candidates"]
        vals = {c["name"]: [objective(c, o) for o in objs] for c in g if c.get("error") is None}
        allp = list(vals.values())
        ideal = [min(p[i] for p in allp) for i in range(len(objs))]
        nadir = [max(p[i] for p in allp) for i in range(len(objs))]
        norm = lambda p: [(x - lo) / (hi - lo) if hi > lo else 0.0 for x, lo, hi in zip(p, ideal, nadir)]
        ref = [1.1] * len(objs)
        total = hypervolume([norm(p) for p in allp], ref)
        front = {n for n, p in vals.items() if not any(dominated(p, q) for q in allp)}
        for path in a.real:
            r = json.load(open(path))
            names = [c["name"] for c in r["candidates"] if c.get("error") is None]
            share = hypervolume([norm(vals[n]) for n in names if n in vals], ref) / total
            print(f"real {r['summary']['strategy']} run (seed 1, budget {len(names)}): hypervolume share {share:.4f} "
                  f"on the grid's values, front points found {len(front & set(names))} of {len(front)}")


if __name__ == "__main__":
    main()
