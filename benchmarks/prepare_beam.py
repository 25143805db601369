"""Videos per second of `tvr-jax prepare`: the local process pool against the Apache Beam path, at equal workers.

    python -m benchmarks.prepare_beam [--clips 64 256] [--seconds 15] [--workers 1 2] [--rounds 3] \
        [--out benchmarks/results/prepare_beam.json]

1. Writes MSR-VTT-like videos (`benchmarks/input_pipeline.write_source`: 320x240, 25 fps,
   H.264, 15-19 s with real motion), once per work directory, and for each size in `--clips`
   annotation files naming the first that many.
2. For each size and worker count, times whole `tvr-jax prepare --dataset msrvtt` processes
   into fresh output folders: the local path (`--workers N`) and the Beam path on the
   DirectRunner in multi-processing mode (`--beam-runner DirectRunner --beam-option
   direct_running_mode=multi_processing --beam-option direct_num_workers=N`), pair by pair in
   alternating order, `--rounds` times; medians and the per-pair ratio Beam / local.
3. Between the smallest and the largest size, each path's marginal rate: the extra videos over
   the extra seconds (medians), which is what a large set costs per machine; the difference of
   the whole-command times at one size is the path's fixed cost (worker start-up, pipelines).
4. Checks in the first round that both paths wrote the same dataset (video ids, frames
   pixel-equal, captions, token ids, word weights): a faster path that writes something else
   is not a result.
The whole command is timed, interpreter start and imports included, as a user sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.input_pipeline import write_source
from benchmarks.results_io import print_tables, table, write_results


def prepare_command(videos: str, annotations: str, out: str, workers: int, beam: bool) -> list[str]:
    command = [sys.executable, "-m", "tvr_jax.cli", "prepare", "--dataset", "msrvtt", "--videos", videos,
               "--annotations", annotations, "--out", out, "--tagger", "fallback", "--workers", str(workers)]
    if beam:
        command += ["--beam-runner", "DirectRunner", "--beam-option", "direct_running_mode=multi_processing",
                    "--beam-option", f"direct_num_workers={workers}"]
    return command


def timed_run(command: list[str], out: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}")
    return elapsed


def read_dataset(out: str) -> dict:
    """Every stored field of every record, per split, in record order."""
    import tensorflow_datasets as tfds

    from data_pipeline import prepare as prep

    builder = tfds.builder_from_directory(prep.dataset_dir(out, "msrvtt"))
    data = {split: [source[i] for i in range(len(source))]
            for split in builder.info.splits for source in [builder.as_data_source(split=split)]}
    return {"metadata": dict(builder.info.metadata), "splits": data}


def same_dataset(a: dict, b: dict) -> list[str]:
    """Differences between two `read_dataset` results (empty: the same dataset)."""
    problems = []
    for key in ("splits",):
        if a["metadata"][key] != b["metadata"][key]:
            problems.append(f"metadata {key} differ")
    for split, records in a["splits"].items():
        other = b["splits"].get(split, [])
        if len(records) != len(other):
            problems.append(f"{split}: {len(records)} vs {len(other)} records")
            continue
        for i, (x, y) in enumerate(zip(records, other)):
            for field in x:
                same = np.array_equal(np.asarray(x[field]), np.asarray(y[field]))
                if not same:
                    problems.append(f"{split} record {i}: {field} differs")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "tvr_jax_prepare_beam_bench"))
    parser.add_argument("--out", "--json", default="benchmarks/results/prepare_beam.json")
    args = parser.parse_args()

    sizes = sorted(set(args.clips))
    t0 = time.perf_counter()
    sources = {}
    for size in sizes:  # one videos folder; each size's annotations name its first `size` videos
        root = os.path.join(args.workdir, f"source{size}")
        os.makedirs(root, exist_ok=True)
        if not os.path.exists(os.path.join(root, "videos")):
            os.makedirs(os.path.join(args.workdir, "videos"), exist_ok=True)
            os.symlink(os.path.join(args.workdir, "videos"), os.path.join(root, "videos"))
        sources[size] = write_source(root, size, args.seconds)
    t_write = time.perf_counter() - t0
    load_before = os.getloadavg()[0]
    runs = [(size, n) for size in sizes for n in args.workers]
    times: dict[str, list[float]] = {f"{path}_{size}_{n}": [] for size, n in runs for path in ("local", "beam")}
    ratios: dict[str, list[float]] = {f"{size}_{n}": [] for size, n in runs}
    redone: dict[str, list[int]] = {f"{size}_{n}": [] for size, n in runs}
    checked = {}
    for r in range(args.rounds):
        for size, n in runs:
            pair = {}
            order = ("local", "beam") if r % 2 == 0 else ("beam", "local")
            for path in order:
                out = os.path.join(args.workdir, f"{path}_{size}_{n}")
                pair[path] = timed_run(prepare_command(*sources[size], out, n, path == "beam"), out)
                times[f"{path}_{size}_{n}"].append(pair[path])
                if path == "beam":  # writes redone after the runner lost examples (prepare counts them)
                    with open(os.path.join(out, "prepare_report.json")) as f:
                        redone[f"{size}_{n}"].append(json.load(f)["msrvtt"]["runner"].get("write_attempts", 1) - 1)
                print(f"round {r}: {size} videos, {path}, {n} worker(s): {pair[path]:.1f} s", flush=True)
            ratios[f"{size}_{n}"].append(pair["beam"] / pair["local"])
            if r == 0:
                problems = same_dataset(read_dataset(os.path.join(args.workdir, f"local_{size}_{n}")),
                                        read_dataset(os.path.join(args.workdir, f"beam_{size}_{n}")))
                if problems:
                    raise SystemExit(f"the Beam path wrote another dataset than the local path: {problems[:10]}")
                checked[f"{size}_{n}"] = "same video ids, pixel-equal frames, captions, token ids, word weights"
    load_after = os.getloadavg()[0]

    median = lambda key: statistics.median(times[key])
    rows = []
    for size, n in runs:
        local, beam = median(f"local_{size}_{n}"), median(f"beam_{size}_{n}")
        rows.append([size, n, round(local, 1), round(size / local, 2), round(beam, 1), round(size / beam, 2),
                     f"**{statistics.median(ratios[f'{size}_{n}']):.2f}x**", round(beam - local, 1),
                     "; ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(times[f"local_{size}_{n}"], times[f"beam_{size}_{n}"])),
                     sum(redone[f"{size}_{n}"])])
    tables = [table(
        f"`tvr-jax prepare`, videos of 320x240, 25 fps, {args.seconds}-{args.seconds + 4} s: whole command, median of "
        f"{args.rounds} alternating rounds (load average {load_before:.2f} before, {load_after:.2f} after)",
        ["videos", "workers", "local s", "local videos/s", "Beam DirectRunner s", "Beam videos/s",
         "Beam / local (median of pairs)", "Beam's extra s", "rounds (local / Beam s)",
         "Beam writes redone (lost examples)"], rows)]
    marginal = {}
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        marginal_rows = []
        for n in args.workers:
            rate = {path: (large - small) / (median(f"{path}_{large}_{n}") - median(f"{path}_{small}_{n}"))
                    for path in ("local", "beam")}
            marginal[str(n)] = {k: round(v, 2) for k, v in rate.items()}
            marginal_rows.append([n, round(rate["local"], 2), round(rate["beam"], 2), f"**{rate['local'] / rate['beam']:.2f}x**"])
        tables.append(table(
            f"Marginal rate from {small} to {large} videos (extra videos / extra seconds, medians): what each further "
            f"video costs, without the fixed start-up", ["workers", "local videos/s", "Beam videos/s",
                                                         "Beam time / local time per video"], marginal_rows))
    print_tables(tables)
    versions = {"python": platform.python_version()}
    for name in ("apache_beam", "tensorflow_datasets", "decord"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError) as e:
            versions[name] = f"unavailable ({type(e).__name__})"
    write_results(args.out, tables=tables, versions=versions, clips=sizes, clip_seconds=f"{args.seconds}-{args.seconds + 4}",
                  source="320x240, 25 fps, H.264 crf 23", write_source_s=round(t_write, 1), times_s=times,
                  ratios={k: [round(x, 3) for x in v] for k, v in ratios.items()}, marginal_videos_per_s=marginal,
                  equal_output=checked, beam_writes_redone=redone,
                  load_average_before=round(load_before, 2), load_average_after=round(load_after, 2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
