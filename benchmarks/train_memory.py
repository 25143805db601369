"""Activation memory per clip of the full train step (ViT-B, 12 frames), from compiled memory_analysis.

Compiles (does not run) the train step of a config at two per-device batch sizes and reports
the fixed part (parameters, optimizer state) and the bytes per clip, with and without per-block
rematerialisation, then the largest batch per device that fits a memory budget.

    python benchmarks/train_memory.py [--config configs/msrvtt_vit_b32.py] [--budget-gib 80]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.results_io import write_results  # noqa: E402
from tvr_jax import sharding, train  # noqa: E402
from tvr_jax.config_io import load_config  # noqa: E402
from tvr_jax.optim import make_optimizer  # noqa: E402

GiB = 2**30


def compiled_bytes(cfg, batch: int) -> dict:
    cfg = cfg.copy_and_resolve_references()
    cfg.global_batch_size = batch
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    model, _ = train.build_model(cfg)
    optimizer = make_optimizer(cfg.optim, cfg.total_steps)
    state_shape = jax.eval_shape(lambda: _init(cfg, model, optimizer))
    shardings = train.state_shardings(state_shape, mesh)
    step = train.make_train_step(model, train.loss_config(cfg), optimizer, mesh, shardings)
    t, l, s = cfg.model.max_frames, cfg.model.max_words, model.config.clip.image_size
    spec = sharding.batch_sharding(mesh)
    sds = jax.ShapeDtypeStruct
    batch_shapes = dict(video=sds((batch, t, s, s, 3), "float32", sharding=spec), video_mask=sds((batch, t), bool, sharding=spec),
                        text_ids=sds((batch, l), "int32", sharding=spec), text_mask=sds((batch, l), bool, sharding=spec),
                        word_weights=sds((batch, l), "float32", sharding=spec))
    state_sds = jax.tree.map(lambda x, sh: sds(x.shape, x.dtype, sharding=sh), state_shape, shardings)
    t0 = time.perf_counter()
    m = step.lower(state_sds, batch_shapes).compile().memory_analysis()
    return dict(batch=batch, temp=m.temp_size_in_bytes, args=m.argument_size_in_bytes, compile_s=round(time.perf_counter() - t0, 1))


def _init(cfg, model, optimizer):
    import jax.numpy as jnp

    params = model.init(jax.random.PRNGKey(0), *model.dummy_batch(1))["params"]
    return train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                            bad_step=jnp.zeros((), jnp.int32), bad_parts=jnp.zeros((), jnp.int32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/msrvtt_vit_b32.py")
    parser.add_argument("--budget-gib", type=float, default=80.0)
    parser.add_argument("--batches", type=int, nargs=2, default=[2, 4])
    parser.add_argument("--out", default="benchmarks/results/train_memory.json")
    args = parser.parse_args()
    rows = []
    for remat in (False, True):
        cfg = load_config(args.config, [f"model.remat={remat}"])
        small, large = (compiled_bytes(cfg, b) for b in args.batches)
        per_clip = (large["temp"] - small["temp"]) / (large["batch"] - small["batch"])
        fixed = small["args"] + small["temp"] - per_clip * small["batch"]
        fits = int((args.budget_gib * GiB - fixed) // per_clip)
        rows.append(dict(remat=remat, per_clip_MiB=round(per_clip / 2**20, 1), fixed_GiB=round(fixed / GiB, 2),
                         max_batch_per_device=fits, budget_GiB=args.budget_gib, measured=[small, large]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.config}: train step, float32, one device")
    print("| remat | activation MiB per clip | fixed GiB (params, Adam, inputs) | largest batch in "
          f"{args.budget_gib:g} GiB |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['remat']} | {r['per_clip_MiB']} | {r['fixed_GiB']} | {r['max_batch_per_device']} |")
    write_results(args.out, config=args.config, rows=rows)


if __name__ == "__main__":
    main()
