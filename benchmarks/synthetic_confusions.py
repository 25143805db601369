"""Which attribute a trained model confuses on the synthetic set's test split.

For every test caption whose top-1 video is wrong, compares the true scene with the retrieved
one (objects matched to minimise differences) and counts which attributes differ: colour,
shape, direction of motion. Reads a demo run (`tvr-jax demo --workdir DIR`).

    python benchmarks/synthetic_confusions.py DIR
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.report import synthetic_confusions_tables
from benchmarks.results_io import print_tables, write_results
from configs.synthetic import get_config
from tvr_jax import evaluate, sharding, train

ATTRIBUTES = ("colour", "shape", "direction")


def differing_attributes(a: list[tuple], b: list[tuple]) -> tuple[int, tuple[str, ...]]:
    """(number of differing attribute values, which attributes) under the best object matching."""
    best = None
    for order in ((0, 1), (1, 0)):
        pairs = [(a[i], b[j]) for i, j in zip((0, 1), order)]
        n = sum(x[k] != y[k] for x, y in pairs for k in range(3))
        names = tuple(sorted({ATTRIBUTES[k] for x, y in pairs for k in range(3) if x[k] != y[k]}))
        if best is None or n < best[0]:
            best = (n, names)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="a `tvr-jax demo --workdir` folder (data/ and checkpoints/ inside)")
    parser.add_argument("--out", default="benchmarks/results/synthetic_confusions.json")
    args = parser.parse_args()
    cfg = get_config()
    cfg.data_dir = os.path.join(args.workdir, "data")
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    model, params, step = train.restore_params(cfg, args.workdir, None, mesh)
    report, sim, texts, videos, stream = evaluate._score_split(cfg, model, params, mesh, cfg.eval.split)
    with open(os.path.join(cfg.data_dir, "synthetic_source", "synthetic_meta.json")) as f:
        scenes = json.load(f)["scenes"]
    ids = [stream.video_ids[i] for i in videos["video_index"]]
    objects = lambda vid: [tuple(o[a] for a in ATTRIBUTES) for o in scenes[vid]["objects"]]
    counts = collections.Counter()
    for i, truth in enumerate(texts["video_index"]):
        top = int(np.argmax(sim[i]))
        if top != truth:
            counts[differing_attributes(objects(ids[truth]), objects(ids[top]))] += 1
    wrong = sum(counts.values())
    with_direction = sum(n for (_, names), n in counts.items() if "direction" in names)
    print(f"step {step}: {len(sim)} test captions, {wrong} wrong at top-1, {with_direction} of them involve direction")
    for (n, names), c in counts.most_common():
        print(f"{c:4d}  {n} value(s) differ: {', '.join(names)}")
    raw = {"workdir": args.workdir, "step": step, "captions": len(sim), "wrong_top1": wrong,
           "involving_direction": with_direction, "t2v": report["t2v"],
           "confusions": [{"values": n, "attributes": list(names), "count": c} for (n, names), c in counts.most_common()]}
    tables = synthetic_confusions_tables(raw)  # report.py renders older results with it too
    print_tables(tables)
    write_results(args.out, tables=tables, **raw)


if __name__ == "__main__":
    main()
