"""Whole-test-set scoring and search with the DMAE similarity, at real shapes, on this machine.

Part 1: time and compiled peak memory to score N texts x N videos with `dmae_similarity`
(`att_ti`, visual + textual attention, block 64) on random L2-normalised features, D = 512, at
MSR-VTT shapes (T = 12 frames, L = 32 tokens) and paragraph-set shapes (T = 64, L = 64).
Part 2: latency of `search.rank_videos` (one query, top-10) over a 100,000-video index stored
as float16 .npy and memory-mapped, as `tvr-jax search` reads it.

    python -m benchmarks.eval [--sizes 1000 5000] [--paragraph-sizes 1000] [--index-videos 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.report import eval_tables
from benchmarks.results_io import print_tables, write_results
from tvr_jax.objective import LossConfig, similarity_matrix
from tvr_jax.search import rank_videos

D = 512
MiB = 2**20


def features(n: int, words: int, frames: int, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    norm = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    word_mask = np.arange(words)[None] < rng.integers(words // 2, words + 1, n)[:, None]
    texts = {"t_cls": norm(rng.normal(size=(n, D))), "words": norm(rng.normal(size=(n, words, D))), "word_mask": word_mask,
             "word_weights": (rng.integers(1, 3, (n, words)) * word_mask).astype(np.float32)}
    videos = {"frames": norm(rng.normal(size=(n, frames, D))),
              "frame_mask": np.arange(frames)[None] < rng.integers(frames // 2, frames + 1, n)[:, None]}
    return texts, videos


def score_benchmark(n: int, words: int, frames: int, cfg: LossConfig) -> dict:
    texts, videos = features(n, words, frames)
    fn = jax.jit(lambda t, v: similarity_matrix(t, v, "att_ti", cfg))
    t0 = time.perf_counter()
    compiled = fn.lower(texts, videos).compile()
    compile_s = time.perf_counter() - t0
    m = compiled.memory_analysis()
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(texts, videos))
    run_s = time.perf_counter() - t0
    flops = 2.0 * n * n * words * frames * D  # the token grid's dot products dominate
    return {"N": n, "L": words, "T": frames, "seconds": round(run_s, 2), "compile_s": round(compile_s, 2),
            "temp_MiB": round(m.temp_size_in_bytes / MiB, 1),
            "peak_MiB": round((m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes) / MiB, 1),
            "grid_GFLOP": round(flops / 1e9, 1), "GFLOP_per_s": round(flops / 1e9 / run_s, 1)}


def search_benchmark(num_videos: int, cfg: LossConfig, repeats: int = 3) -> dict:
    frames, words = 12, 32
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(1)
        chunk_rows = 10_000
        arr = np.lib.format.open_memmap(os.path.join(tmp, "frames.npy"), mode="w+", dtype=np.float16,
                                        shape=(num_videos, frames, D))
        for start in range(0, num_videos, chunk_rows):  # written in chunks: never all of it in RAM
            x = rng.normal(size=(min(chunk_rows, num_videos - start), frames, D)).astype(np.float32)
            arr[start : start + len(x)] = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float16)
        arr.flush()
        del arr
        np.save(os.path.join(tmp, "frame_mask.npy"), np.ones((num_videos, frames), bool))
        videos = {k: np.load(os.path.join(tmp, f"{k}.npy"), mmap_mode="r") for k in ("frames", "frame_mask")}
        text = {k: jnp.asarray(v) for k, v in features(1, words, frames, seed=2)[0].items()}
        rank_videos(text, videos, "att_ti", cfg, chunk=8192)  # compile + page in
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            rows, _ = rank_videos(text, videos, "att_ti", cfg, chunk=8192)
            times.append(time.perf_counter() - t0)
        return {"index_videos": num_videos, "T": frames, "L": words, "index_GB": round(num_videos * frames * D * 2 / 1e9, 2),
                "latency_s": round(float(np.median(times)), 2), "repeats": repeats, "top10_first": int(rows[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000], help="N at T = 12, L = 32")
    parser.add_argument("--paragraph-sizes", type=int, nargs="+", default=[1000],
                        help="N at T = 64, L = 64 (5000 takes about 25x the 1000 time: hours on 2 CPU cores)")
    parser.add_argument("--index-videos", type=int, default=100_000)
    parser.add_argument("--out", default="benchmarks/results/eval.json")
    args = parser.parse_args()
    cfg = LossConfig(block_size=64)
    scoring = []
    for words, frames, sizes in ((32, 12, args.sizes), (64, 64, args.paragraph_sizes)):
        for n in sizes:
            scoring.append(score_benchmark(n, words, frames, cfg))
            print(json.dumps(scoring[-1]), flush=True)
    search = search_benchmark(args.index_videos, cfg)
    print(json.dumps(search), flush=True)
    tables = eval_tables({"scoring": scoring, "search": search})  # report.py renders older results with it too
    print_tables(tables)
    write_results(args.out, tables=tables, scoring=scoring, search=search)


if __name__ == "__main__":
    main()
