"""Compiled peak memory of `dmae_similarity` as the number of videos grows (docs/method.md section 2).

The blockwise loop must keep memory bounded: only the (B_t, B_v) output may grow with B_v, never
the (B_t, B_v, L, T) token grid. Memory comes from XLA's compiled `memory_analysis` (no run),
so it is exact for the compiled program and cheap to measure at real shapes.

    python -m benchmarks.similarity_memory [--out benchmarks/results/similarity_memory.json]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from benchmarks.report import similarity_memory_tables
from benchmarks.results_io import print_tables, write_results
from tvr_jax.similarity import dmae_similarity

MiB = 2**20


def compiled_bytes(b_t: int, b_v: int, words: int, frames: int, dim: int, block: int, grad: bool) -> dict:
    s = jax.ShapeDtypeStruct
    shapes = (s((b_t, dim), jnp.float32), s((b_t, words, dim), jnp.float32), s((b_t, words), jnp.float32),
              s((b_t, words), bool), s((b_v, frames, dim), jnp.float32), s((b_v, frames), bool))
    f = lambda *a: dmae_similarity(*a, block_size=block)
    if grad:
        g = lambda *a: jax.grad(lambda w, fr: jnp.sum(f(a[0], w, *a[2:4], fr, a[5])), argnums=(0, 1))(a[1], a[4])
        compiled = jax.jit(g).lower(*shapes).compile()
    else:
        compiled = jax.jit(f).lower(*shapes).compile()
    m = compiled.memory_analysis()
    return {"temp": m.temp_size_in_bytes, "args": m.argument_size_in_bytes, "out": m.output_size_in_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/similarity_memory.json")
    args = parser.parse_args()
    rows = []
    # (name, B_t, L, T): MSR-VTT-like and ActivityNet-like shapes, D = 512, block 64 videos.
    for name, b_t, words, frames in (("msrvtt", 256, 32, 12), ("activitynet", 256, 64, 64)):
        for b_v in (1024, 5120):
            for grad in (False, True):
                t0 = time.perf_counter()
                m = compiled_bytes(b_t, b_v, words, frames, 512, 64, grad)
                grid = b_t * b_v * words * frames * 4
                rows.append({"shape": name, "B_t": b_t, "B_v": b_v, "L": words, "T": frames, "D": 512, "block": 64,
                             "grad": grad, "temp_MiB": round(m["temp"] / MiB, 2), "out_MiB": round(m["out"] / MiB, 2),
                             "full_grid_MiB": round(grid / MiB, 1), "compile_s": round(time.perf_counter() - t0, 1)})
                print(json.dumps(rows[-1]), flush=True)
    tables = similarity_memory_tables({"rows": rows})  # the same builder renders the older results in report.py
    print_tables(tables)
    write_results(args.out, tables=tables, rows=rows)


if __name__ == "__main__":
    main()
