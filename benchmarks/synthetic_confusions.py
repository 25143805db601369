"""What a trained model gets wrong on the synthetic set's test split.

For every test caption whose top-1 video is wrong, compares the true scene with the retrieved
one shot by shot (captions name the shots' objects in order) and counts which attributes
differ (size, colour, shape) and in how many values; it also says whether the retrieved video
is a one-word sibling from the caption's own family, and whether the object the caption names
but the retrieved video's shots lack is shown in one of its cut-aways (an isolated frame the
caption of that video does not mention: what the visual attention is meant to discount).
Reads a run folder (`tvr-jax demo --workdir DIR`, or one run of `tvr-jax ablate`).

    python -m benchmarks.synthetic_confusions DIR [--data-dir DATA]
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import jax
import ml_collections
import numpy as np

from benchmarks.results_io import print_tables, table, write_results
from data_pipeline.synthetic import ATTRIBUTES
from tvr_jax import evaluate, experiment, sharding


def differing(a: dict, b: dict) -> tuple[int, tuple[str, ...]]:
    """(number of differing attribute values, which attributes), shots compared in order."""
    pairs = list(zip(a["objects"], b["objects"]))
    n = sum(x[k] != y[k] for x, y in pairs for k in ATTRIBUTES)
    return n, tuple(k for k in ATTRIBUTES if any(x[k] != y[k] for x, y in pairs))


def missing_object_in_cutaway(truth: dict, retrieved: dict) -> bool:
    """A shot object of the true scene that the retrieved video shows only as a cut-away."""
    key = lambda o: tuple(o[k] for k in ATTRIBUTES)
    shots = {key(o) for o in retrieved["objects"]}
    cutaways = {key(o) for o in retrieved["cutaways"]}
    return any(key(o) not in shots and key(o) in cutaways for o in truth["objects"])


def load_run_config(workdir: str, data_dir: str | None) -> ml_collections.ConfigDict:
    with open(os.path.join(workdir, "config.json")) as f:
        cfg = ml_collections.ConfigDict(json.load(f))
    cfg.mesh_shape = tuple(cfg.mesh_shape)
    cfg.data_dir = data_dir or cfg.data_dir or os.path.join(workdir, "data")
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="a run folder with config.json and checkpoints/ (e.g. `tvr-jax demo --workdir`)")
    parser.add_argument("--data-dir", default=None, help="prepared data (default: the run's config, else WORKDIR/data)")
    parser.add_argument("--out", default="benchmarks/results/synthetic_confusions.json")
    args = parser.parse_args()
    cfg = load_run_config(args.workdir, args.data_dir)
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    model, params, step = experiment.restore_params(cfg, args.workdir, None, mesh)
    report, sim, texts, videos, stream = evaluate._score_split(cfg, model, params, mesh, cfg.eval.split)
    with open(os.path.join(cfg.data_dir, "synthetic_source", "synthetic_meta.json")) as f:
        scenes = json.load(f)["scenes"]
    ids = [stream.video_ids[i] for i in videos["video_index"]]
    counts, swaps, sibling, cutaway = collections.Counter(), collections.Counter(), 0, 0
    for i, truth in enumerate(texts["video_index"]):
        top = int(np.argmax(sim[i]))
        if top != truth:
            a, b = scenes[ids[truth]], scenes[ids[top]]
            counts[differing(a, b)] += 1
            for x, y in zip(a["objects"], b["objects"]):
                swaps.update((k, x[k], y[k]) for k in ATTRIBUTES if x[k] != y[k])
            sibling += a["family"] == b["family"]
            cutaway += missing_object_in_cutaway(a, b)
    wrong = sum(counts.values())
    print(f"step {step}: {len(sim)} test captions, {wrong} wrong at top-1, {sibling} of them a sibling of the same family")
    t2v = report["t2v"]
    one_value = {k: sum(c for (n, names), c in counts.items() if n == 1 and names == (k,)) for k in ATTRIBUTES}
    tables = [
        table(f"Test split at step {step} (`{args.workdir}`)",
              ["test captions", "t2v R@1", "R@5", "R@10", "MdR", "wrong top-1", "a one-word sibling (same family)",
               "one size word", "one colour word", "one shape word", "missing object shown as a cut-away"],
              [[len(sim), *(round(t2v[k], 1) for k in ("R@1", "R@5", "R@10", "MdR")), wrong, sibling,
                one_value["size"], one_value["colour"], one_value["shape"], cutaway]]),
        table("Wrong top-1 videos by the attributes that differ from the true scene (shots in order)",
              ["attribute values that differ", "attributes", "count", "share of wrong top-1"],
              [[n, ", ".join(names), c, f"{100 * c / wrong:.0f} %"] for (n, names), c in counts.most_common()]),
        table("Attribute values the wrong top-1 videos show instead of the caption's",
              ["attribute", "caption says", "retrieved video shows", "count"],
              [[k, x, y, c] for (k, x, y), c in swaps.most_common()]),
    ]
    print_tables(tables)
    raw = {"workdir": args.workdir, "step": step, "captions": len(sim), "wrong_top1": wrong, "same_family": sibling,
           "missing_object_in_cutaway": cutaway, "t2v": t2v, "v2t": report["v2t"],
           "confusions": [{"values": n, "attributes": list(names), "count": c} for (n, names), c in counts.most_common()],
           "swaps": [{"attribute": k, "caption": x, "retrieved": y, "count": c} for (k, x, y), c in swaps.most_common()]}
    write_results(args.out, tables=tables, **raw)


if __name__ == "__main__":
    main()
