"""Per-device memory of the sharded similarity + loss, and the train-step cost of the method.

Part 1 (memory): compiled per-device peak (`memory_analysis`: temporaries + arguments + outputs)
of value_and_grad of `sharded_total_loss` with respect to the features, for global batches 256
to 4096 on 1 and 8 fake CPU devices, at MSR-VTT shapes (T = 12 frames, L = 32 words, D = 512).
Part 2 (time): median train-step time of the tiny config with DMAE + NegNCE + TPM-CL against
meanP + InfoNCE (cosine of pooled features), measured side by side in one process.

    python -m benchmarks.sharded_loss [--out benchmarks/results/sharded_loss.json] [--skip-time]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.report import sharded_loss_tables
from benchmarks.results_io import print_tables, write_results
from tvr_jax import sharding
from tvr_jax.objective import LossConfig, sharded_total_loss

MiB = 2**20
T, L, D = 12, 32, 512


def feature_shapes(batch: int) -> tuple[dict, dict]:
    s = jax.ShapeDtypeStruct
    floats = {"t_cls": s((batch, D), jnp.float32), "words": s((batch, L, D), jnp.float32),
              "frames": s((batch, T, D), jnp.float32), "visual": s((batch, T, D), jnp.float32),
              "visual_masked": s((batch, T, D), jnp.float32), "word_tpm_weights": s((batch, L), jnp.float32),
              "word_weights": s((batch, L), jnp.float32)}
    rest = {"word_mask": s((batch, L), bool), "frame_mask": s((batch, T), bool), "visual_mask": s((batch, T), bool),
            "visual_marked": s((batch, T), bool)}
    return floats, rest


def loss_memory(batch: int, devices: int) -> dict:
    mesh = sharding.make_mesh((devices, 1), jax.devices()[:devices])
    spec = sharding.batch_sharding(mesh)
    floats, rest = feature_shapes(batch)
    floats = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=spec) for k, v in floats.items()}
    rest = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=spec) for k, v in rest.items()}
    cfg = LossConfig(block_size=64)
    fn = jax.value_and_grad(lambda fl, r: sharded_total_loss({**fl, **r}, "att_ti", cfg, mesh)[0])
    t0 = time.perf_counter()
    m = jax.jit(fn).lower(floats, rest).compile().memory_analysis()
    peak = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return {"global_batch": batch, "devices": devices, "temp_MiB": round(m.temp_size_in_bytes / MiB, 1),
            "args_MiB": round(m.argument_size_in_bytes / MiB, 1), "peak_MiB": round(peak / MiB, 1),
            "compile_s": round(time.perf_counter() - t0, 1)}


def step_times(variant: str, steps: int = 12) -> dict:
    from configs.synthetic import get_config
    from tvr_jax import experiment, train
    from tvr_jax.optim import make_optimizer

    cfg = get_config()
    cfg.global_batch_size = 64
    if variant == "baseline":  # CLIP4Clip meanP + symmetric InfoNCE on pooled features
        cfg.model.temporal, cfg.model.interaction, cfg.model.tpm = "meanP", "cosine", False
        cfg.loss.lambda_neg, cfg.loss.lambda_tpm = 0.0, 0.0
    elif variant == "method_meanP":  # DMAE + NegNCE + TPM-CL with the same temporal module
        cfg.model.temporal = "meanP"
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    model, _ = experiment.build_model(cfg)
    optimizer = make_optimizer(cfg.optim, cfg.total_steps)
    state, shardings = experiment.create_train_state(cfg, model, optimizer, mesh)
    step = train.make_train_step(model, experiment.loss_config(cfg), optimizer, mesh, shardings)
    rng = np.random.default_rng(0)
    b, size = cfg.global_batch_size, model.config.clip.image_size
    ids = np.zeros((b, cfg.model.max_words), np.int32)
    ids[:, 0], ids[:, 1:12], ids[:, 12] = 49406, rng.integers(300, 40000, (b, 11)), 49407
    batch = jax.device_put({"video": rng.normal(size=(b, cfg.model.max_frames, size, size, 3)).astype(np.float32),
                            "video_mask": np.ones((b, cfg.model.max_frames), bool), "text_ids": ids, "text_mask": ids > 0,
                            "word_weights": (ids > 0).astype(np.float32), "video_index": np.arange(b, dtype=np.int32)},
                           sharding.batch_sharding(mesh))
    state, m = step(state, batch)  # compile + warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "median_step_s": round(statistics.median(times), 4), "steps": steps,
            "clips_per_s": round(b / statistics.median(times), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/sharded_loss.json")
    parser.add_argument("--skip-time", action="store_true")
    args = parser.parse_args()
    memory = []
    for batch in (256, 1024, 4096):
        for devices in (1, 8):
            memory.append(loss_memory(batch, devices))
            print(json.dumps(memory[-1]), flush=True)
    timing = []
    if not args.skip_time:
        for variant in ("baseline", "method_meanP", "method"):
            timing.append(step_times(variant))
            print(json.dumps(timing[-1]), flush=True)
    tables = sharded_loss_tables({"memory": memory, "timing": timing})  # report.py renders older results with it too
    print_tables(tables)
    write_results(args.out, tables=tables, memory=memory, timing=timing)


if __name__ == "__main__":
    main()
