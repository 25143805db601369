"""Train-step memory per device (ViT-B, 12 frames) from the compiled step's memory_analysis.

Compiles (does not run) the train step of a config at two per-device batch sizes, for three
variants: no rematerialisation, `model.remat=True` (the blocks as a rematerialised `nn.scan`
over stacked parameters, keeping only each block's input), and the same with the
`dots_with_no_batch_dims_saveable` remat policy (each block also keeps its Dense outputs). It
reports the fixed bytes (parameters, Adam state, the step's batch-independent temporaries) and
the bytes per clip (activations kept for the backward pass plus the clip's inputs), then the
largest batch per device that fits each memory budget.

The figures are the buffer assignment of the XLA compiler of the backend it runs on (CPU unless
a GPU is visible). A GPU compiler schedules differently and, below its memory limit, need not
minimise memory: treat CPU figures as an estimate of a GPU's. See benchmarks/notes/train_memory.md.

    python -m benchmarks.train_memory [--config configs/msrvtt_vit_b32.py] [--budgets-gib 80 16]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.results_io import print_tables, table, write_results
from tvr_jax import experiment, sharding, train
from tvr_jax.config_io import load_config
from tvr_jax.optim import make_optimizer

GiB, MiB = 2**30, 2**20
VARIANTS = {  # name -> config overrides. `remat` implies the scanned layout (`CLIPConfig.stacked_layers`).
    "no remat": ["model.remat=False", "model.scan_layers=False"],
    "remat": ["model.remat=True", "model.scan_layers=False"],
    "remat, dots_with_no_batch_dims_saveable": ["model.remat=True", "model.scan_layers=False",
                                                "model.remat_policy=dots_with_no_batch_dims_saveable"],
}


def _nbytes(tree) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def compiled_bytes(cfg, batch: int) -> dict:
    """memory_analysis of the train step at `batch` clips per device, plus the state's sizes."""
    cfg = cfg.copy_and_resolve_references()
    cfg.global_batch_size = batch
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    model, _ = train.build_model(cfg)
    optimizer = make_optimizer(cfg.optim, cfg.total_steps)
    # The training run's own state, traced only: shapes and shardings, no parameters allocated.
    state_shape = jax.eval_shape(lambda: experiment.create_train_state(cfg, model, optimizer, mesh)[0])
    shardings = sharding.fsdp_shardings(state_shape, mesh)
    step = train.make_train_step(model, train.loss_config(cfg), optimizer, mesh, shardings)
    t, l, s = cfg.model.max_frames, cfg.model.max_words, model.config.clip.image_size
    spec = sharding.batch_sharding(mesh)
    sds = jax.ShapeDtypeStruct
    batch_shapes = {"video": sds((batch, t, s, s, 3), "float32", sharding=spec), "video_mask": sds((batch, t), bool, sharding=spec),
                        "text_ids": sds((batch, l), "int32", sharding=spec), "text_mask": sds((batch, l), bool, sharding=spec),
                        "word_weights": sds((batch, l), "float32", sharding=spec),
                        "video_index": sds((batch,), "int32", sharding=spec)}
    state_sds = jax.tree.map(lambda x, sh: sds(x.shape, x.dtype, sharding=sh), state_shape, shardings)
    t0 = time.perf_counter()
    m = step.lower(state_sds, batch_shapes).compile().memory_analysis()
    return {"batch": batch, "temp": m.temp_size_in_bytes, "args": m.argument_size_in_bytes, "out": m.output_size_in_bytes,
                "alias": m.alias_size_in_bytes, "params": _nbytes(state_shape.params), "opt_state": _nbytes(state_shape.opt_state),
                "state": _nbytes(state_shape), "inputs": _nbytes(batch_shapes), "compile_s": round(time.perf_counter() - t0, 1)}


def summarise(small: dict, large: dict, budgets_gib: list[float]) -> dict:
    """Peak = args + temp + (out - alias), linear in the batch: fixed part, per-clip part, largest batch."""
    peak = {b["batch"]: b["args"] + b["temp"] + b["out"] - b["alias"] for b in (small, large)}
    per_clip = (peak[large["batch"]] - peak[small["batch"]]) / (large["batch"] - small["batch"])
    activations = (large["temp"] - small["temp"]) / (large["batch"] - small["batch"])
    fixed = peak[small["batch"]] - per_clip * small["batch"]
    return {"activation_MiB_per_clip": round(activations / MiB, 1), "inputs_MiB_per_clip": round(large["inputs"] / large["batch"] / MiB, 1),
                "total_MiB_per_clip": round(per_clip / MiB, 1), "params_GiB": round(small["params"] / GiB, 3),
                "adam_GiB": round(small["opt_state"] / GiB, 3), "fixed_GiB": round(fixed / GiB, 2),
                "max_batch_per_device": {f"{g:g}": int((g * GiB - fixed) // per_clip) for g in budgets_gib}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/msrvtt_vit_b32.py")
    parser.add_argument("--budgets-gib", type=float, nargs="+", default=[80.0, 16.0])
    # Large enough that the activations, not the batch-independent buffers, set the peak.
    parser.add_argument("--batches", type=int, nargs=2, default=[16, 48])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="benchmarks/results/train_memory.json")
    args = parser.parse_args()
    rows = []
    for name in args.variants:
        cfg = load_config(args.config, VARIANTS[name])
        small, large = (compiled_bytes(cfg, b) for b in args.batches)
        rows.append(dict(variant=name, overrides=VARIANTS[name], **summarise(small, large, args.budgets_gib),
                         measured=[small, large]))
        print(json.dumps(rows[-1]), flush=True)
    columns = ["variant", "activations MiB / clip", "inputs MiB / clip", "params GiB", "Adam state GiB",
               "fixed GiB (params, Adam, step temporaries)"] + [f"largest batch in {g:g} GiB" for g in args.budgets_gib]
    cells = [[r["variant"], r["activation_MiB_per_clip"], r["inputs_MiB_per_clip"], r["params_GiB"], r["adam_GiB"],
              r["fixed_GiB"]] + [r["max_batch_per_device"][f"{g:g}"] for g in args.budgets_gib] for r in rows]
    title = (f"Train-step memory per device, {args.config} (float32, one device, {jax.default_backend()} "
             f"({jax.devices()[0].device_kind}) compiler's memory_analysis)")
    tables = [table(title, columns, cells)]
    print_tables(tables)
    write_results(args.out, tables=tables, config=args.config,
                  xla_flags=os.environ.get("XLA_FLAGS", ""), rows=rows)


if __name__ == "__main__":
    main()
