"""Faults survived, counted: kill -9 at random moments and full disks during prepare, train and export.

    python -m benchmarks.faults                      # quick: 2 kill moments per job, each disk-full case once
    python -m benchmarks.faults --rounds 20          # long: 20 kill moments per job (RELIABILITY.md's run)
    python -m benchmarks.faults --jobs train,export --rounds 5 --out /tmp/faults.json --no-report

For every job (`tvr-jax` commands run as separate processes, exactly as a user runs them):
1. one uninterrupted reference run, timed;
2. `--rounds` runs from scratch, each killed with SIGKILL (its whole process group: decoder
   processes and orbax's writer threads die with it) at a seeded random moment. Round i of N
   draws its moment in the i-th N-th of the reference's duration, so the kills are spread over
   every stage (start-up, decoding, writing; compiling, steps, asynchronous checkpoint writes;
   encoding, shard, first-stage index, manifest); what was on disk at each kill is recorded;
3. each killed run is restarted with the same command until it exits 0 (at most
   `MAX_RESTARTS` times), and its output is compared with the reference's:
   - prepare (the synthetic set's layout and MSR-VTT-layout generated clips): every TFDS record
     of every split equal (frames decoded by TFDS pixel-equal, captions, token ids, word
     weights, times), the dataset metadata and the report's counts and failures equal;
   - train (the tiny config; checkpoints are always written asynchronously): every parameter
     and optimizer value of the final checkpoint bit-equal, and metrics.jsonl's logged values
     equal but for `clips_per_s` (a speed);
   - export: the manifest, every array, the video ids, the thumbnails and the faiss file equal.
   "Data lost" counts what the reference has and the survivor lacks: videos, logged steps, rows.
4. disk full while a checkpoint, a dataset shard and an index is written: the job's output
   folder on a real size-limited tmpfs (`mount -t tmpfs -o size=...`, as root) with a filler
   file leaving too little room; the job must stop with an error naming the path, leave the
   last good state (checkpoint, decode cache, no half index) intact, and after the filler is
   removed the same command must finish with output equal to the reference. Where mounting is
   not allowed (no root), the output folder gets a per-file size limit instead (RLIMIT_FSIZE:
   the kernel fails a write past it with EFBIG, in Python and C++ writers alike), and the
   results say so ("mechanism").

Results: benchmarks/results/faults.json (meta: machine, date, versions, command) and
RELIABILITY.md rendered from it (`render_reliability`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "faults.json")
RELIABILITY = os.path.join(ROOT, "RELIABILITY.md")
CONFIG = os.path.join(ROOT, "configs", "synthetic.py")
MAX_RESTARTS = 3
# The tiny training run: the test suite's tiny config (tests/conftest.py), 12 steps, a checkpoint every 2.
TRAIN_OVERRIDES = ("global_batch_size=8", "model.max_frames=4", "model.temporal_layers=1", "log_every=1",
                   "eval.batch_size=8", "total_steps=12", "checkpoint_every=2")
JOBS = ("prepare_synthetic", "prepare_msrvtt", "train", "export")
DISK_FULL = ("checkpoint", "dataset_shard", "index")
OTHER = ("damaged_checkpoint", "two_trainers", "bad_inputs")
SYNTHETIC_VIDEOS = {"train": 96, "test": 16}
MSRVTT_SECONDS = {"train": [3, 5, 2, 7, 4, 6, 3, 8, 5, 2, 6, 4] * 3, "test": [4, 3, 6, 5] * 2}


CACHE_DIR: str | None = None


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's run on this machine
    if CACHE_DIR:  # compiled programs shared by the runs (the same programs, so the same numbers)
        env.update(JAX_COMPILATION_CACHE_DIR=CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tvr_jax.cli", *args]


# ==============================================================================================
# Sources: small sets generated here (the synthetic set's scenes; counting clips in MSR-VTT layout)
# ==============================================================================================
def _write_msrvtt_annotations(folder: str, train: dict[str, list[str]], test: dict[str, str]) -> None:
    import csv

    os.makedirs(folder, exist_ok=True)
    sentences = [{"video_id": v, "caption": c, "sen_id": 0} for v, cs in train.items() for c in cs]
    sentences += [{"video_id": v, "caption": c, "sen_id": 0} for v, c in test.items()]
    for i, s in enumerate(sentences):
        s["sen_id"] = i
    with open(os.path.join(folder, "MSRVTT_data.json"), "w") as f:
        json.dump({"videos": [{"video_id": v} for v in [*train, *test]], "sentences": sentences}, f)
    with open(os.path.join(folder, "MSRVTT_train.9k.csv"), "w", newline="") as f:
        csv.writer(f).writerows([["video_id"]] + [[v] for v in train])
    with open(os.path.join(folder, "MSRVTT_JSFUSION_test.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "key", "vid_key", "video_id", "sentence"])
        for i, (v, c) in enumerate(test.items()):
            w.writerow([i, f"ret{i}", v, v, c])


def make_synthetic_source(root: str, counts: dict[str, int] = SYNTHETIC_VIDEOS, seed: int = 0) -> tuple[str, str]:
    """The first scenes of the synthetic set (data_pipeline/synthetic.py), rendered, with its captions."""
    from data_pipeline import synthetic

    videos, annotations = os.path.join(root, "videos"), os.path.join(root, "annotations")
    os.makedirs(videos, exist_ok=True)
    scenes = synthetic.generate_scenes(seed)
    train, test = {}, {}
    for split, target in (("train", train), ("test", test)):
        for i, scene in enumerate(scenes[split][: counts[split]]):
            vid = f"synth-{split}{i:03d}"
            synthetic.write_clip(os.path.join(videos, f"{vid}.mp4"), synthetic.render_scene(scene), synthetic.SOURCE_FPS)
            target[vid] = synthetic.training_captions(scene) if split == "train" else synthetic.canonical_caption(scene)
    _write_msrvtt_annotations(annotations, train, test)
    return videos, annotations


def counting_frames(seconds: int, fps: int = 10, height: int = 96, width: int = 128) -> np.ndarray:
    """Uniformly gray frames whose level says the second (20 s + 10), as tests/test_data_fixtures.py's clips."""
    levels = 20 * (np.arange(seconds * fps) // fps) + 10
    return np.broadcast_to(levels[:, None, None, None], (seconds * fps, height, width, 3)).astype(np.uint8)


def make_msrvtt_source(root: str) -> tuple[str, str]:
    """Counting clips in MSR-VTT's layout (videoN.mp4, MSRVTT_data.json and the two split CSVs)."""
    from data_pipeline.synthetic import write_clip

    videos, annotations = os.path.join(root, "videos"), os.path.join(root, "annotations")
    os.makedirs(videos, exist_ok=True)
    train, test, n = {}, {}, 0
    for split, lengths in MSRVTT_SECONDS.items():
        for seconds in lengths:
            vid = f"video{n}"
            write_clip(os.path.join(videos, f"{vid}.mp4"), counting_frames(seconds), 10)
            if split == "train":
                train[vid] = [f"a clip of {seconds} seconds number {n}", f"video {n} counts to {seconds}"]
            else:
                test[vid] = f"the test clip {n} of {seconds} seconds"
            n += 1
    _write_msrvtt_annotations(annotations, train, test)
    return videos, annotations


# ==============================================================================================
# Comparing outputs: (equal, data lost, detail)
# ==============================================================================================
def _equal(a, b) -> bool:
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def read_prepared(out: str, dataset: str) -> dict[str, Any]:
    """{split: [record, ...]} with TFDS's own decoding (frames as pixels), plus metadata and report."""
    import tensorflow_datasets as tfds

    from data_pipeline.prepare import REPORT_FILE, dataset_dir

    builder = tfds.builder_from_directory(dataset_dir(out, dataset))
    splits = {}
    for split in sorted(builder.info.splits.keys()):
        source = builder.as_data_source(split)
        splits[split] = [source[i] for i in range(len(source))]
    with open(os.path.join(out, REPORT_FILE)) as f:
        report = json.load(f)[dataset]
    kept = {k: report[k] for k in ("splits", "failures", "annotation_problems", "params", "tagger")}
    return {"records": splits, "metadata": dict(builder.info.metadata), "report": kept}


def compare_prepared(ref: str, run: str, dataset: str) -> tuple[bool, int, str]:
    a = read_prepared(ref, dataset)
    try:
        b = read_prepared(run, dataset)
    except Exception as e:  # noqa: BLE001 - an unreadable output loses everything
        return False, sum(len(r) for r in a["records"].values()), f"output unreadable: {type(e).__name__}: {e}"
    lost, diffs = 0, []
    for split, records in a["records"].items():
        theirs = {bytes(r["video_id"]): r for r in b["records"].get(split, [])}
        for r in records:
            other = theirs.get(bytes(r["video_id"]))
            if other is None:
                lost += 1
                diffs.append(f"{split}/{r['video_id']!r} missing")
            elif not _equal(r, other):
                diffs.append(f"{split}/{r['video_id']!r} differs")
        if [bytes(r["video_id"]) for r in records] != [bytes(r["video_id"]) for r in b["records"].get(split, [])]:
            diffs.append(f"{split}: record order or count differs")
    for part in ("metadata", "report"):
        if not _equal(a[part], b[part]):
            diffs.append(f"{part} differs")
    return not diffs, lost, "; ".join(diffs[:5]) or "every record, the metadata and the report equal"


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "clips_per_s"} for line in f if line.strip()]


def final_state(workdir: str, overrides=TRAIN_OVERRIDES):
    """The newest checkpoint's whole state (parameters, optimizer state, step) as numpy leaves."""
    import jax

    from tvr_jax import sharding
    from tvr_jax.config_io import load_config
    from tvr_jax.experiment import build_model, checkpoint_manager, create_train_state, restore_checkpoint
    from tvr_jax.optim import make_optimizer

    cfg = load_config(CONFIG, list(overrides))
    mesh = sharding.make_mesh(tuple(cfg.mesh_shape))
    model, _ = build_model(cfg)
    state, shardings = create_train_state(cfg, model, make_optimizer(cfg.optim, cfg.total_steps), mesh)
    manager = checkpoint_manager(workdir, cfg.keep_checkpoints)
    try:
        state, data_state = restore_checkpoint(manager, state, shardings)
    finally:
        manager.close()
    return jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0], data_state


# XLA's CPU kernels do not always sum in the same order from one process to the next: two
# uninterrupted runs of the tiny config on this machine can differ in the last bits of float32
# (measured: logged losses 1e-6 apart after 12 steps, parameters 1.4e-6 apart at most, on
# near-zero key-projection biases whose gradient is round-off only). A survivor is
# therefore "equal" when every logged value is within TRAIN_RTOL of the reference's and every
# state leaf within PARAM_ATOL, and "bit-equal" is counted apart. A resume that lost or repeated
# a step, or the optimizer state, moves the logged losses by far more than TRAIN_RTOL.
TRAIN_RTOL, TRAIN_ATOL, PARAM_ATOL = 1e-4, 1e-6, 1e-5


def _close(a, b, atol: float = TRAIN_ATOL) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not np.issubdtype(a.dtype, np.floating):
        return np.array_equal(a, b)
    return bool(np.allclose(a, b, rtol=TRAIN_RTOL, atol=atol))


def compare_train(ref: str, run: str) -> tuple[bool, int, str]:
    """Equal: the same logged steps, every logged value and state leaf within TRAIN_RTOL; detail
    starts with "bit-equal" when they are identical."""
    import jax

    a_metrics = read_metrics(ref)
    b_metrics = read_metrics(run) if os.path.isfile(os.path.join(run, "metrics.jsonl")) else []
    lost = len({m["step"] for m in a_metrics} - {m["step"] for m in b_metrics})
    diffs = []
    same_steps = [m["step"] for m in a_metrics] == [m["step"] for m in b_metrics]
    if not same_steps or any(x.keys() != y.keys() or not all(_close(x[k], y[k]) for k in x) for x, y in zip(a_metrics, b_metrics)):
        diffs.append(f"metrics.jsonl differs (steps {[m['step'] for m in b_metrics]})")
    try:
        (a_leaves, a_data), (b_leaves, b_data) = final_state(ref), final_state(run)
    except Exception as e:  # noqa: BLE001
        return False, lost, f"final checkpoint unreadable: {type(e).__name__}: {e}"
    if a_data != b_data:
        diffs.append(f"input position differs ({a_data} vs {b_data})")
    if len(a_leaves) != len(b_leaves):
        diffs.append("state structure differs")
    else:
        bad = [jax.tree_util.keystr(p) for (p, x), (_, y) in zip(a_leaves, b_leaves) if not _close(x, y, PARAM_ATOL)]
        if bad:
            diffs.append(f"{len(bad)} state leaves differ beyond atol {PARAM_ATOL}, e.g. {bad[0]}")
    if diffs:
        return False, lost, "; ".join(diffs)
    bits = a_metrics == b_metrics and all(_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(a_leaves, b_leaves))
    worst = max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)) / (np.abs(np.asarray(x, np.float64)) + 1e-12)))
                 for (_, x), (_, y) in zip(a_leaves, b_leaves) if np.issubdtype(np.asarray(x).dtype, np.floating) and np.asarray(x).size), default=0.0)
    worst_abs = max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                     for (_, x), (_, y) in zip(a_leaves, b_leaves) if np.asarray(x).size), default=0.0)
    return True, lost, (f"{'bit-equal' if bits else 'equal within rtol'}: final state ({len(a_leaves)} leaves, largest relative "
                        f"difference {worst:.1e}, absolute {worst_abs:.1e}) and {len(a_metrics)} metric lines")


def read_index(out: str) -> dict[str, Any]:
    files = {}
    for folder, _, names in os.walk(out):
        for name in names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, out)
            files[rel] = np.load(path) if name.endswith(".npy") else open(path, "rb").read()
    return files


def compare_export(ref: str, run: str) -> tuple[bool, int, str]:
    a = read_index(ref)
    b = read_index(run) if os.path.isdir(run) else {}
    ids = lambda files: set(json.loads(files.get("shard-00000/video_ids.json", b"[]")))
    lost = len(ids(a) - ids(b))
    diffs = sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not _equal(a[k], b[k]))
    return not diffs, lost, (f"files differ or missing: {diffs[:5]}" if diffs else f"all {len(a)} files equal")


# ==============================================================================================
# Jobs
# ==============================================================================================
@dataclasses.dataclass
class Job:
    name: str
    command: Callable[[str], list[str]]  # output folder -> argv
    compare: Callable[[str, str], tuple[bool, int, str]]
    state: Callable[[str], str]  # what is on disk (after a kill)
    shown: str  # the command as RELIABILITY.md shows it


def _listing(path: str, limit: int = 6) -> list[str]:
    try:
        return sorted(os.listdir(path))[:limit]
    except OSError:
        return []


def _prepare_state(dataset: str) -> Callable[[str], str]:
    def state(out: str) -> str:
        cache = os.path.join(out, "_work", dataset, "frames")
        cached = len([n for n in _listing(cache, 10**6) if n.endswith(".npz")])
        parent = os.path.join(out, dataset)
        incomplete = [n for n in _listing(parent) if n.startswith("incomplete.")]
        done = os.path.isfile(os.path.join(out, dataset, "1.0.0", "dataset_info.json"))
        report = os.path.isfile(os.path.join(out, "prepare_report.json"))
        if not os.path.isdir(out):
            return "start-up (nothing written)"
        if done:
            return "dataset written" + (", report written" if report else ", report not yet written")
        if incomplete:
            return f"writing TFDS shards ({cached} videos in the decode cache)"
        return f"decoding ({cached} videos in the decode cache)"
    return state


def _train_state(workdir: str) -> str:
    ckpt = os.path.join(workdir, "checkpoints")
    names = _listing(ckpt, 100)
    committed = sorted(int(n) for n in names if n.isdigit())
    tmp = [n for n in names if "tmp" in n]
    metrics = os.path.join(workdir, "metrics.jsonl")
    logged = sum(1 for _ in open(metrics)) if os.path.isfile(metrics) else 0
    if not os.path.isdir(workdir) or (not names and not logged):
        return "start-up or compiling (no step logged)"
    return f"{logged} steps logged, checkpoints {committed}" + (f", writing {tmp}" if tmp else "")


def _export_state(out: str) -> str:
    names = _listing(out, 100)
    if not names:
        return "start-up or encoding (nothing written)"
    if "manifest.json" in names:
        return "manifest committed"
    return "writing " + ", ".join(names)


def jobs(root: str, names: list[str], log: Callable[[str], None]) -> dict[str, Job]:
    """The jobs and what they need (sources, a prepared set, a trained run), built once under `root`."""
    out: dict[str, Job] = {}
    synth = os.path.join(root, "sources", "synthetic")
    if not os.path.isdir(synth):
        log("generating the synthetic source videos")
        make_synthetic_source(synth)
    synth_args = ["--videos", os.path.join(synth, "videos"), "--annotations", os.path.join(synth, "annotations")]
    common = ["--workers", "2", "--decode-timeout", "120"]
    out["prepare_synthetic"] = Job(
        "prepare_synthetic", lambda o: cli("prepare", "--dataset", "synthetic", *synth_args, "--out", o, *common),
        lambda a, b: compare_prepared(a, b, "synthetic"), _prepare_state("synthetic"),
        "tvr-jax prepare --dataset synthetic --videos V --annotations A --out OUT --workers 2 "
        f"({SYNTHETIC_VIDEOS['train']} + {SYNTHETIC_VIDEOS['test']} videos of the synthetic set)")
    if "prepare_msrvtt" in names:
        msr = os.path.join(root, "sources", "msrvtt")
        if not os.path.isdir(msr):
            log("generating the MSR-VTT-layout source videos")
            make_msrvtt_source(msr)
        msr_args = ["--videos", os.path.join(msr, "videos"), "--annotations", os.path.join(msr, "annotations")]
        out["prepare_msrvtt"] = Job(
            "prepare_msrvtt", lambda o: cli("prepare", "--dataset", "msrvtt", *msr_args, "--out", o, "--tagger", "fallback", *common),
            lambda a, b: compare_prepared(a, b, "msrvtt"), _prepare_state("msrvtt"),
            "tvr-jax prepare --dataset msrvtt --videos V --annotations A --out OUT --tagger fallback --workers 2 "
            f"({sum(map(len, MSRVTT_SECONDS.values()))} generated clips in MSR-VTT's layout)")
    data_dir = os.path.join(root, "data")
    train_overrides = [f"--config.{o}" for o in TRAIN_OVERRIDES] + [f"--config.data_dir={data_dir}"]
    out["train"] = Job(
        "train", lambda w: cli("train", "--config", CONFIG, "--workdir", w, *train_overrides), compare_train, _train_state,
        "tvr-jax train --config configs/synthetic.py --workdir W --config.data_dir=DATA "
        + " ".join(f"--config.{o}" for o in TRAIN_OVERRIDES))
    trained = os.path.join(root, "trained")
    out["export"] = Job(
        "export", lambda o: cli("export", "--config", CONFIG, "--workdir", trained, *train_overrides, "--split", "test", "--out", o),
        compare_export, _export_state,
        "tvr-jax export --config configs/synthetic.py --workdir W --config.data_dir=DATA (tiny overrides) --split test --out OUT")
    if any(k in names for k in ("train", "export", "checkpoint", "index", "damaged_checkpoint", "two_trainers")):
        if not os.path.isfile(os.path.join(data_dir, "prepare_report.json")):
            log("preparing the training data")
            run_to_end(out["prepare_synthetic"].command(data_dir))
    if any(n in names for n in ("export", "index", "checkpoint", "damaged_checkpoint", "two_trainers")):
        if not os.path.isfile(os.path.join(trained, "metrics.jsonl")):
            log("training the run to export")
            run_to_end(out["train"].command(trained))
    return {n: out[n] for n in names if n in out}


# ==============================================================================================
# Running, killing, restarting
# ==============================================================================================
def run_to_end(argv: list[str], timeout: float = 900, preexec: Callable | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)
    if done.returncode != 0 and preexec is None:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def run_reference(job: Job, out: str) -> tuple[float, float]:
    """Run `job` uninterrupted into `out`: (seconds, when its on-disk state first moved past start-up)."""
    err = tempfile.TemporaryFile("w+")
    t0 = time.monotonic()
    proc = subprocess.Popen(job.command(out), cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=err, text=True, start_new_session=True)
    initial, first = job.state(out), None
    while proc.poll() is None:
        if first is None and job.state(out) != initial:
            first = time.monotonic() - t0
        time.sleep(0.02)
    duration = time.monotonic() - t0
    err.seek(0)
    stderr = err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{job.name}'s reference run exited {proc.returncode}:\n{stderr[-3000:]}")
    return duration, min(first if first is not None else duration / 2, duration)


def run_killed(argv: list[str], at_s: float) -> tuple[bool, float]:
    """Start `argv`, SIGKILL its process group `at_s` seconds later; (killed, seconds it ran)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=at_s)
        return False, time.monotonic() - t0
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True, time.monotonic() - t0


def restart_until_done(argv: list[str]) -> tuple[int, list[int], str]:
    """(restarts, exit codes, last stderr tail): the same command again until it exits 0."""
    codes, tail = [], ""
    for _ in range(MAX_RESTARTS):
        done = subprocess.run(argv, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=900)
        codes.append(done.returncode)
        tail = done.stderr[-1500:]
        if done.returncode == 0:
            break
    return len(codes), codes, tail


def kill_rounds(job: Job, root: str, rounds: int, rng: random.Random, log: Callable[[str], None]) -> dict:
    base = os.path.join(root, job.name)
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    ref = os.path.join(base, "reference")
    duration, first_output = run_reference(job, ref)
    log(f"{job.name}: reference run {duration:.1f} s, first output at {first_output:.1f} s")
    # A second uninterrupted run: how equal two runs are without any fault (the baseline).
    again = os.path.join(base, "uninterrupted-again")
    run_to_end(job.command(again))
    baseline = job.compare(ref, again)
    log(f"{job.name}: a second uninterrupted run: equal {baseline[0]}: {baseline[2]}")
    shutil.rmtree(again, ignore_errors=True)
    entries = []
    early = rounds // 4  # a quarter of the kills before anything is written, the rest while it is
    for i in range(rounds):
        if i < early:
            at = first_output * (i + rng.random()) / early
        else:
            at = first_output + (duration - first_output) * (i - early + rng.random()) / (rounds - early)
        out = os.path.join(base, f"round{i:03d}")
        killed, ran = run_killed(job.command(out), at)
        for _ in range(3):  # it finished before its moment (runs vary): again from scratch, a little earlier
            if killed:
                break
            shutil.rmtree(out, ignore_errors=True)
            at = min(at, ran) * (0.8 + 0.15 * rng.random())
            killed, ran = run_killed(job.command(out), at)
        state = job.state(out)
        restarts, codes, tail = restart_until_done(job.command(out))
        finished = codes[-1] == 0
        equal, lost, detail = job.compare(ref, out) if finished else (False, -1, "did not finish: " + tail.strip()[-500:])
        entry = {"round": i, "kill_at_s": round(at, 2), "killed": killed, "ran_s": round(ran, 2), "state_at_kill": state,
                 "restart_exit_codes": codes, "finished": finished, "equal": equal, "data_lost": lost, "detail": detail}
        entries.append(entry)
        log(f"{job.name} round {i}: kill at {at:.1f} s ({state}) -> restarts {codes}, equal {equal}, lost {lost}: {detail}")
        if equal:
            shutil.rmtree(out, ignore_errors=True)
    killed = [e for e in entries if e["killed"]]
    return {"job": job.name, "command": job.shown, "reference_s": round(duration, 1), "first_output_s": round(first_output, 1),
            "baseline": {"equal": baseline[0], "detail": baseline[2]}, "rounds": entries,
            "injected": len(killed), "survived_equal": sum(e["equal"] for e in killed),
            "data_lost": sum(max(e["data_lost"], 0) for e in killed),
            "bit_equal": sum(e["equal"] and not e["detail"].startswith("equal within") for e in killed),
            "failed": sum(not e["equal"] for e in killed)}


# ==============================================================================================
# Disk full
# ==============================================================================================
_MOUNTABLE: list[bool] = []


def can_mount() -> bool:
    """Whether a tmpfs can be mounted here (root with the right to mount: tried once, on a 1 MiB one)."""
    if not _MOUNTABLE:
        ok = False
        if os.geteuid() == 0 and shutil.which("mount") and shutil.which("umount"):
            probe = tempfile.mkdtemp(prefix="tvr-faults-mount-")
            ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe], capture_output=True).returncode == 0
            if ok:
                subprocess.run(["umount", probe], capture_output=True)
            os.rmdir(probe)
        _MOUNTABLE.append(ok)
    return _MOUNTABLE[0]


@contextlib.contextmanager
def small_filesystem(path: str, size_bytes: int):
    """A tmpfs of `size_bytes` at `path` (root), unmounted and removed afterwards."""
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)
        shutil.rmtree(path, ignore_errors=True)


def fill(folder: str, leave_bytes: int) -> str:
    """A filler file taking all but `leave_bytes` of `folder`'s filesystem."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    path = os.path.join(folder, "filler.bin")
    with open(path, "wb") as f:
        f.truncate(0)
        block = b"\0" * (1 << 20)
        remaining = max(0, free - leave_bytes)
        while remaining > 0:
            f.write(block[: min(len(block), remaining)])
            remaining -= min(len(block), remaining)
    return path


def disk_usage(path: str) -> int:
    """Bytes `path` takes on its filesystem (allocated blocks, not file sizes)."""
    return sum(os.lstat(os.path.join(r, n)).st_blocks * 512 for r, _, ns in os.walk(path) for n in ns)


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(path) for n in ns)


def _fsize_limit(limit: int | None) -> Callable[[], None]:
    def preexec():
        os.setsid()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def run_limited(argv: list[str], kind: str, out: str) -> subprocess.CompletedProcess:
    """The fallback's first run: files capped at FSIZE_LIMIT[kind] bytes. For a checkpoint the cap is
    set on the running trainer (prlimit) once its first checkpoint is committed: the disk fills up
    during the run, with a good checkpoint behind it."""
    limit = FSIZE_LIMIT[kind]
    err = tempfile.TemporaryFile("w+")
    later = kind == "checkpoint"
    proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=err, text=True,
                            preexec_fn=_fsize_limit(None if later else limit))
    while later and proc.poll() is None:
        if any(n.isdigit() for n in _listing(os.path.join(out, "checkpoints"), 100)):
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
            break
        time.sleep(0.01)
    proc.wait(timeout=900)
    err.seek(0)
    return subprocess.CompletedProcess(argv, proc.returncode, "", err.read())


def run_killed_when(argv: list[str], out: str, ready: Callable[[str], bool], timeout: float = 600) -> bool:
    """Start `argv` and SIGKILL its process group as soon as `ready(out)`; whether it was killed."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        if ready(out):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return False


def error_line(stderr: str, command: str) -> str:
    """The command's own error line (library threads may print around it, even on the same line)."""
    found = re.findall(rf"tvr-jax {command}: error: .*", stderr)
    return found[-1] if found else (stderr.strip().splitlines() or [""])[-1]


def traceback_text(stderr: str) -> str:
    """Every traceback in `stderr`, with the two lines before it (who reported it: "Exception ignored
    in ...", "Task exception was never retrieved"), to the error it ends with ("" when none)."""
    found = re.findall(r"(?:.*\n){0,2}Traceback \(most recent call last\):\n(?:[ \t].*\n)*.*", stderr)
    return "\n".join(found)


def tracebacks(stderr: str) -> tuple[int, int]:
    """(tracebacks printed, of which TensorStore's late callbacks on orbax's closed asyncio loop)."""
    return stderr.count("Traceback (most recent call last)"), stderr.count("RuntimeError: Event loop is closed")


def disk_full_case(kind: str, job: Job, root: str, log: Callable[[str], None], mechanism: str,
                   ref: str | None = None) -> dict:
    """One disk-full case: a first run that meets the full disk, checks, then a rerun with room.
    `ref`: an uninterrupted run of the same command to compare with (default: one run here)."""
    base = os.path.join(root, f"diskfull-{kind}")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    if ref is None:
        ref = os.path.join(base, "reference")
        run_to_end(job.command(ref))
    ref_bytes = folder_bytes(ref)
    checks: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if mechanism == "tmpfs":
            mnt = stack.enter_context(small_filesystem(os.path.join(base, "mnt"), 64 << 20))
        else:
            mnt = os.path.join(base, "mnt")
            os.makedirs(mnt)
        out = os.path.join(mnt, "out")
        # How much room the first run gets: enough to do part of the work, too little to finish.
        leave = {"checkpoint": int(ref_bytes * 0.75), "dataset_shard": int(ref_bytes * 1.75),
                 "index": int(ref_bytes * 0.5)}[kind]
        if mechanism == "tmpfs" and kind == "dataset_shard":
            # Room for the decode cache and half the shards: measured on this filesystem (its blocks).
            calibration = os.path.join(mnt, "calibration")
            run_to_end(job.command(calibration) + ["--keep-work"])
            leave = disk_usage(os.path.join(calibration, "_work")) + disk_usage(os.path.join(calibration, "synthetic")) // 2
            shutil.rmtree(calibration)
        if mechanism == "tmpfs":
            filler = fill(mnt, leave)
            first = run_to_end(job.command(out), preexec=os.setsid)
        else:
            filler = None
            first = run_limited(job.command(out), kind, out)
        message = error_line(first.stderr, job.command("x")[3])
        checks["first_exit_code"] = first.returncode
        checks["message"] = message[-3000:]
        # The clear error: the command's last line says the disk is full and names a path on it.
        checks["clear_error"] = message.startswith("tvr-jax ") and "error: the disk is full" in message and mnt in message
        # Tracebacks printed before it by library threads (orbax's writers log theirs), recorded as seen.
        checks["other_tracebacks"], checks["event_loop_closed_tracebacks"] = tracebacks(first.stderr)
        checks["stderr_tracebacks"] = traceback_text(first.stderr)
        checks.update(DISK_FULL_INTACT[kind](out))
        if filler:
            os.remove(filler)
        second = run_to_end(job.command(out), preexec=os.setsid)
        checks["rerun_exit_code"] = second.returncode
        if second.returncode == 0:
            equal, lost, detail = job.compare(ref, out)
        else:
            equal, lost, detail = False, -1, second.stderr[-500:]
        checks.update(equal=equal, data_lost=lost, detail=detail)
    survived = bool(checks["first_exit_code"] != 0 and checks["clear_error"] and checks["intact"]
                    and checks["rerun_exit_code"] == 0 and equal)
    log(f"disk full while writing {kind} ({mechanism}): {json.dumps(checks)[:800]}")
    return {"kind": kind, "mechanism": mechanism, "job": job.name, "command": job.shown, "checks": checks,
            "injected": 1, "survived_equal": int(survived), "data_lost": max(lost, 0)}


# Per-file size limits for the fallback: a checkpoint's largest file, a TFDS shard, an index's frames.
FSIZE_LIMIT = {"checkpoint": 1 << 20, "dataset_shard": 256 << 10, "index": 8 << 10}


def _checkpoint_intact(workdir: str) -> dict:
    """Every committed checkpoint restores; something was committed before the disk filled."""
    committed = sorted(int(n) for n in _listing(os.path.join(workdir, "checkpoints"), 100) if n.isdigit())
    ok = True
    if committed:
        try:
            final_state(workdir)
        except Exception:  # noqa: BLE001
            ok = False
    return {"committed_before": committed, "intact": bool(committed) and ok}


def _shard_intact(out: str) -> dict:
    """Nothing half-written is visible (no dataset folder without its info), the decode cache kept."""
    from data_pipeline.prepare import dataset_dir

    final = dataset_dir(out, "synthetic")
    cached = len([n for n in _listing(os.path.join(out, "_work", "synthetic", "frames"), 10**6) if n.endswith(".npz")])
    half = os.path.isdir(final) and not os.path.isfile(os.path.join(final, "dataset_info.json"))
    return {"cached_videos": cached, "half_dataset_visible": half, "intact": not half and cached > 0}


def _index_intact(out: str) -> dict:
    visible = os.path.isfile(os.path.join(out, "manifest.json"))
    return {"manifest_visible": visible, "intact": not visible}


DISK_FULL_INTACT = {"checkpoint": _checkpoint_intact, "dataset_shard": _shard_intact, "index": _index_intact}
DISK_FULL_JOB = {"checkpoint": "train", "dataset_shard": "prepare_synthetic", "index": "export"}


# ==============================================================================================
# A damaged newest checkpoint; two trainers on one work directory
# ==============================================================================================
def _largest_file(folder: str) -> str:
    files = [os.path.join(r, n) for r, _, ns in os.walk(folder) for n in ns]
    return max(files, key=os.path.getsize)


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def damaged_checkpoint_case(job: Job, root: str, ref: str, log: Callable[[str], None],
                            variants: tuple[str, ...] = ("truncated", "removed", "all damaged")) -> dict:
    """The newest checkpoint of a finished run truncated, or a file of it removed: the same command
    warns naming the step it skipped, resumes from the one before and ends where the uninterrupted run
    did. Every checkpoint damaged: a clear error naming each step, nothing moved, no traceback."""
    base = os.path.join(root, "damaged")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    steps = sorted(int(n) for n in os.listdir(os.path.join(ref, "checkpoints")) if n.isdigit())
    newest = steps[-1]
    cases = []
    for variant in variants:
        run = os.path.join(base, variant.replace(" ", "_"))
        shutil.copytree(ref, run)
        damage = [newest] if variant != "all damaged" else steps
        for step in damage:
            target = _largest_file(os.path.join(run, "checkpoints", str(step)))
            os.remove(target) if variant == "removed" else _truncate(target)
        before = sorted(os.listdir(os.path.join(run, "checkpoints")))
        done = run_to_end(job.command(run), preexec=os.setsid)
        last = error_line(done.stderr, "train")
        total, closed_loop = tracebacks(done.stderr)
        check = {"variant": variant, "exit_code": done.returncode, "tracebacks": total - closed_loop,
                 "event_loop_closed_tracebacks": closed_loop, "stderr_tracebacks": traceback_text(done.stderr),
                 "message": last[-3000:] if done.returncode else ""}
        if variant == "all damaged":
            check["survived"] = (done.returncode == 2 and last.startswith("tvr-jax train: error: no checkpoint in")
                                 and all(f"step {s}:" in last for s in steps) and check["tracebacks"] == 0
                                 and sorted(os.listdir(os.path.join(run, "checkpoints"))) == before)
            check["equal"], check["data_lost"] = check["survived"], 0
        else:
            warned = f"checkpoint step {newest} does not restore" in done.stderr and f"{newest}.damaged" in done.stderr
            equal, lost, detail = job.compare(ref, run) if done.returncode == 0 else (False, -1, done.stderr[-500:])
            check.update(warned=warned, equal=equal, data_lost=lost, detail=detail,
                         survived=done.returncode == 0 and warned and equal and check["tracebacks"] == 0)
        cases.append(check)
        log(f"damaged checkpoint ({variant}): {json.dumps(check)[:600]}")
    return {"kind": "damaged_checkpoint", "command": job.shown, "cases": cases, "injected": len(cases),
            "survived_equal": sum(c["survived"] for c in cases), "data_lost": sum(max(c["data_lost"], 0) for c in cases)}


def two_trainers_case(job: Job, root: str, ref: str, log: Callable[[str], None]) -> dict:
    """Two trainers started together on one work directory: one trains, the other stops at once with
    one line naming the first's host and pid; the run ends equal to an uninterrupted one."""
    import socket

    base = os.path.join(root, "two-trainers")
    shutil.rmtree(base, ignore_errors=True)
    out = os.path.join(base, "run")
    procs = []
    for _ in range(2):
        err = tempfile.TemporaryFile("w+")
        procs.append((subprocess.Popen(job.command(out), cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                                       stderr=err, text=True, start_new_session=True), err))
        time.sleep(0.5)
    codes, errs = [], []
    for proc, err in procs:
        codes.append(proc.wait(timeout=900))
        err.seek(0)
        errs.append(err.read())
    check = {"exit_codes": codes}
    if sorted(codes) == [0, 2]:
        winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
        last = error_line(errs[loser], "train")
        check["message"] = last[-3000:]
        check["names_first"] = f"pid {procs[winner][0].pid} on host {socket.gethostname()}" in last
        check["tracebacks"] = errs[loser].count("Traceback (most recent") - errs[loser].count("RuntimeError: Event loop is closed")
        equal, lost, detail = job.compare(ref, out)
        check.update(equal=equal, data_lost=lost, detail=detail)
        survived = check["names_first"] and check["tracebacks"] == 0 and equal
    else:
        survived, lost = False, -1
        check["stderr"] = [e[-500:] for e in errs]
    log(f"two trainers: {json.dumps(check)[:600]}")
    return {"kind": "two_trainers", "command": job.shown, "checks": check, "injected": 1, "survived_equal": int(survived),
            "data_lost": max(lost, 0)}


# ==============================================================================================
# Bad inputs: videos, captions, annotation files
# ==============================================================================================
def write_mp4(path: str, frames: np.ndarray, fps: int = 10, pts: list[int] | None = None, time_base=None) -> None:
    """H.264 mp4 with PyAV; `pts` in `time_base` units for a variable frame rate."""
    import av

    with av.open(path, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if time_base is not None:
            stream.codec_context.time_base = time_base
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def set_rotation_flag(path: str, out: str) -> None:
    """Copy an mp4 with its track's display matrix saying "turn 90 degrees clockwise" (a phone's portrait video)."""
    import struct

    data = bytearray(open(path, "rb").read())
    at = data.find(b"tkhd")
    if data[at + 4] != 0:
        raise ValueError("expected a version-0 tkhd box")
    data[at + 44:at + 80] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)  # the matrix
    with open(out, "wb") as f:
        f.write(data)


def make_bad_videos(folder: str) -> dict[str, str]:
    """Videos with a rotation flag, a variable frame rate, one frame, nothing recorded, 4K, audio
    only, the wrong extension, text named .mp4, and good ones around them: {video_id: file name}."""
    import fractions

    import av

    os.makedirs(folder, exist_ok=True)
    small = lambda seconds: counting_frames(seconds, height=48, width=64)
    for name in ("good0", "good1", "good2"):
        write_mp4(os.path.join(folder, f"{name}.mp4"), small(3))
    halves = small(3).copy()
    halves[:, :, 32:] = 250  # left half dark, right half bright: the orientation shows
    upright = os.path.join(folder, "upright.partial")  # not a video extension: never listed itself
    write_mp4(upright, halves)
    set_rotation_flag(upright, os.path.join(folder, "rotated.mp4"))
    os.remove(upright)
    # 10 fps in second 0, then 2 fps: the average rate (4.7 fps) puts the seconds in the wrong place.
    pts = [i * 100 for i in range(10)] + [s * 1000 + j * 500 for s in range(1, 5) for j in range(2)]
    levels = (20 * (np.array(pts) // 1000) + 10).astype(np.uint8)
    write_mp4(os.path.join(folder, "vfr.mp4"), np.broadcast_to(levels[:, None, None, None], (len(pts), 48, 64, 3)),
              pts=pts, time_base=fractions.Fraction(1, 1000))
    write_mp4(os.path.join(folder, "one_frame.mp4"), small(1)[:1])
    with av.open(os.path.join(folder, "zero_duration.mp4"), "w", format="mp4") as container:  # a header, no frame
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()  # writes the header: a file of 0 seconds, not no file
    write_mp4(os.path.join(folder, "huge.mp4"), np.full((2, 2160, 3840, 3), 90, np.uint8))
    with av.open(os.path.join(folder, "audio_only.mp4"), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for k in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, k * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    write_mp4(os.path.join(folder, "mp4_named_avi.avi"), small(2))  # an mp4 behind the wrong extension
    with open(os.path.join(folder, "text_named_mp4.mp4"), "w") as f:
        f.write("not a video, whatever its name says\n")
    names = ["good0", "rotated", "vfr", "good1", "one_frame", "zero_duration", "huge", "audio_only", "mp4_named_avi",
             "text_named_mp4", "good2"]
    return {f"{n}{'.avi' if n == 'mp4_named_avi' else '.mp4'}": n for n in names}


def _seconds(record) -> list[int]:
    return [int(round((float(f.mean()) - 10) / 20)) for f in record["frames"]]


# video id -> (what is right, check of the prepared record or of the report's failure)
BAD_VIDEO_EXPECTED: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "good0.mp4": ("prepared, seconds 0-2", lambda r: _seconds(r) == [0, 1, 2]),
    "good1.mp4": ("prepared, seconds 0-2", lambda r: _seconds(r) == [0, 1, 2]),
    "good2.mp4": ("prepared (test split), seconds 0-2", lambda r: _seconds(r) == [0, 1, 2]),
    "rotated.mp4": ("prepared turned as a player shows it (90 degrees clockwise: 64x48, left edge on top)",
                    lambda r: r["frames"][0].shape == (64, 48, 3) and r["frames"][0][:20].mean() < 60 and r["frames"][0][-20:].mean() > 200),
    "vfr.mp4": ("prepared at its timestamps: seconds 0-3 of a 4.6 s clip",
                lambda r: _seconds(r) == [0, 1, 2, 3] and abs(float(r["duration"]) - 4.6) < 0.05),
    "one_frame.mp4": ("prepared: its one frame, stamped in the clip's middle (0.05 s)",
                      lambda r: int(r["num_frames"]) == 1 and abs(float(r["frame_times"][0]) - 0.05) < 1e-6),
    "huge.mp4": ("prepared, shrunk to 224 x 398, 2160 x 3840 recorded",
                 lambda r: r["frames"][0].shape == (224, 398, 3) and (int(r["source_height"]), int(r["source_width"])) == (2160, 3840)),
    "mp4_named_avi.avi": ("prepared for what it is (an mp4), seconds 0-1", lambda r: _seconds(r) == [0, 1]),
    "zero_duration.mp4": ("reported: no_frames, no stream at all",
                          lambda f: f["reason"] == "no_frames" and f["detail"] == "the file holds no stream at all (nothing was recorded in it)"),
    "audio_only.mp4": ("reported: no_frames, no video stream (audio only)",
                       lambda f: f["reason"] == "no_frames" and f["detail"] == "the file holds no video stream (audio only)"),
    "text_named_mp4.mp4": ("reported: unreadable", lambda f: f["reason"] == "unreadable"),
}

ODD_CAPTIONS = ["a cat \U0001f431\u200d\U0001f464 on a \U0001f3ac set", "\u0645\u0631\u062d\u0628\u0627 a greeting in arabic",
                "cafe\u0301 and e\u0301te\u0301 with combining marks", "zero\u200bwidth\u200d joiner \ufeff and bom",
                "a nul\x00 in the middle", "tabs\tand\nnewlines"]
LONG_CAPTION = "a very long caption " + " ".join(f"word{i}" for i in range(3000))

# Malformed annotation files (MSR-VTT layout; custom CSV / JSON Lines): (name, files, the message's pattern).
MSRVTT_GOOD = {"data": json.dumps({"videos": [], "sentences": [{"video_id": "video0", "caption": "a cat", "sen_id": 0},
                                                                {"video_id": "video1", "caption": "a dog", "sen_id": 1}]}),
               "train_csv": "video_id\nvideo0\nvideo1\n", "test_csv": ",key,vid_key,video_id,sentence\n0,ret0,msr2,video2,a test\n"}
MALFORMED = [
    ("lone surrogate escape", "msrvtt", {"data": '{"videos": [], "sentences": [\n{"video_id": "video0", "caption": "a lone \\ud800 half", "sen_id": 0}]}'},
     r"MSRVTT_data.json: line 2: a lone UTF-16 surrogate escape"),
    ("duplicate id", "msrvtt", {"train_csv": "video_id\nvideo0\nvideo1\nvideo0\n"}, r"MSRVTT_train.9k.csv: video 'video0' appears twice"),
    ("missing column", "msrvtt", {"test_csv": ",key,vid_key,video_id\n0,ret0,msr2,video2\n"}, r"MSRVTT_JSFUSION_test.csv.*'sentence'"),
    ("empty test sentence", "msrvtt", {"test_csv": ",key,vid_key,video_id,sentence\n0,ret0,msr2,video2,\n"},
     r"MSRVTT_JSFUSION_test.csv: row 2: empty video_id or sentence"),
    ("entry without caption", "msrvtt", {"data": '{"videos": [], "sentences": [{"video_id": "video0", "sen_id": 0}]}'},
     r"MSRVTT_data.json: sentences\[0\] has no field 'caption'"),
    ("row with an extra field", "custom", {"captions.csv": "video,caption\na.mp4,a cat,extra field\n"}, r"captions.csv: line 2"),
    ("wrong columns", "custom", {"captions.csv": "file,text\na.mp4,a cat\n"}, r"captions.csv.*'video'"),
    ("lone surrogate in JSON Lines", "custom", {"captions.jsonl": '{"video": "a.mp4", "caption": "half \\udc00 a pair"}\n'},
     r"captions.jsonl: line 1: a lone UTF-16 surrogate escape"),
]


def write_malformed(folder: str, dataset: str, files: dict[str, str]) -> str:
    """The annotation path (folder, or the custom file) of one MALFORMED case."""
    os.makedirs(folder, exist_ok=True)
    if dataset == "custom":
        (name, text), = files.items()
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text)
        return os.path.join(folder, name)
    names = {"data": "MSRVTT_data.json", "train_csv": "MSRVTT_train.9k.csv", "test_csv": "MSRVTT_JSFUSION_test.csv"}
    for key, text in {**MSRVTT_GOOD, **files}.items():
        with open(os.path.join(folder, names[key]), "w", encoding="utf-8") as f:
            f.write(text)
    return folder


def bad_inputs_case(root: str, log: Callable[[str], None]) -> dict:
    """Each bad input through `tvr-jax prepare`: reported with its file and reason, or prepared right;
    the good videos and captions around them prepared."""
    import re

    import tensorflow_datasets as tfds

    from data_pipeline.prepare import REPORT_FILE, dataset_dir

    base = os.path.join(root, "bad-inputs")
    shutil.rmtree(base, ignore_errors=True)
    items: list[dict] = []
    # Videos, in a custom set.
    videos = os.path.join(base, "videos")
    ids = make_bad_videos(videos)
    csv_path = os.path.join(base, "captions.csv")
    with open(csv_path, "w") as f:
        f.write("video,caption,split\n" + "".join(f"{v},a caption of {n.replace('_', ' ')},{'test' if n == 'good2' else 'train'}\n"
                                                   for v, n in ids.items()))
    out = os.path.join(base, "data-videos")
    done = run_to_end(cli("prepare", "--dataset", "custom", "--videos", videos, "--annotations", csv_path, "--out", out,
                          "--tagger", "fallback", "--workers", "2"), preexec=os.setsid)
    report = json.load(open(os.path.join(out, REPORT_FILE)))["custom"] if done.returncode == 0 else {"failures": []}
    failures = {f["video_id"]: f for f in report["failures"]}
    records = {}
    if done.returncode == 0:
        builder = tfds.builder_from_directory(dataset_dir(out, "custom"))
        for split in builder.info.splits.keys():
            records.update({r["video_id"].decode(): r for r in builder.as_data_source(split)})
    for vid, (right, check) in BAD_VIDEO_EXPECTED.items():
        if vid in failures:
            got = failures[vid]
            ok = check(got) if right.startswith("reported") else False
            ok = ok and got["path"] == os.path.join(videos, vid) and bool(got["fix"])
            seen = f"reported: {got['reason']} ({got['detail']})"
        elif vid in records:
            ok = not right.startswith("reported") and bool(check(records[vid]))
            seen = f"prepared, {int(records[vid]['num_frames'])} frames of {records[vid]['frames'][0].shape}"
        else:
            ok, seen = False, "neither prepared nor reported"
        items.append({"input": f"video {vid}", "right": right, "seen": seen, "ok": ok,
                      "lost": int(vid.startswith("good") and vid not in records)})
    # Captions: odd Unicode, very long, empty and blank, in MSR-VTT's layout.
    source = os.path.join(base, "caption-videos")
    os.makedirs(source, exist_ok=True)
    from data_pipeline.synthetic import write_clip

    for i in range(5):
        write_clip(os.path.join(source, f"video{i}.mp4"), counting_frames(2, height=48, width=64), 10)
    ann = os.path.join(base, "caption-annotations")
    _write_msrvtt_annotations(ann, {"video0": ODD_CAPTIONS, "video1": [LONG_CAPTION], "video2": ["   ", "the only real one"],
                                    "video3": [""]}, {"video4": "a test caption"})
    out = os.path.join(base, "data-captions")
    done = run_to_end(cli("prepare", "--dataset", "msrvtt", "--videos", source, "--annotations", ann, "--out", out,
                          "--tagger", "fallback", "--workers", "1"), preexec=os.setsid)
    data_json = os.path.join(ann, "MSRVTT_data.json")
    problems, records = set(), {}
    if done.returncode == 0:
        report = json.load(open(os.path.join(out, REPORT_FILE)))["msrvtt"]
        problems = {(p["file"], p["entry"], p["problem"]) for p in report["annotation_problems"]}
        records = {r["video_id"].decode(): r for r in tfds.builder_from_directory(dataset_dir(out, "msrvtt")).as_data_source("train")}
    odd = records.get("video0")
    long = records.get("video1")
    items += [
        {"input": "captions with odd Unicode (emoji and ZWJ, Arabic, combining marks, zero-width, BOM, NUL, tab, newline)",
         "right": "kept exactly, tokenised", "ok": odd is not None and [c.decode() for c in odd["captions"]] == [c.strip() for c in ODD_CAPTIONS]
         and all(int(row[0]) == 49406 and int((row > 0).sum()) >= 3 for row in odd["caption_ids"]),
         "seen": "prepared" if odd is not None else "missing", "lost": int(odd is None)},
        {"input": "a caption of 3,000 words", "right": "kept whole as text; its token ids cut at 77, as CLIP's",
         "ok": long is not None and long["captions"][0].decode() == LONG_CAPTION and int(long["caption_ids"][0][-1]) == 49407
         and bool((long["caption_ids"][0] > 0).all()), "seen": "prepared" if long is not None else "missing", "lost": int(long is None)},
        {"input": "an empty and a blank caption", "right": "left out, listed with file and entry; the video's other caption kept",
         "ok": {(data_json, "sentences[7]", "empty caption left out"), (data_json, "sentences[9]", "empty caption left out")} <= problems
         and records.get("video2") is not None and [c.decode() for c in records["video2"]["captions"]] == ["the only real one"],
         "seen": f"{len(problems)} problems", "lost": int(records.get("video2") is None)},
        {"input": "a video whose only caption is empty", "right": "left out, listed with file and reason",
         "ok": (data_json, "sentences", "training video video3 has no sentence; left out") in problems, "seen": "", "lost": 0},
    ]
    # Malformed annotation files: stop before decoding, naming the file and the entry.
    for name, dataset, files, pattern in MALFORMED:
        folder = os.path.join(base, "malformed", re.sub(r"\W+", "_", name))
        path = write_malformed(folder, dataset, files)
        out = os.path.join(folder, "data")
        done = run_to_end(cli("prepare", "--dataset", dataset, "--videos", source, "--annotations", path, "--out", out,
                              "--tagger", "fallback", "--workers", "1"), preexec=os.setsid)
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        decoded = os.path.isdir(os.path.join(out, "_work", dataset, "frames")) and os.listdir(os.path.join(out, "_work", dataset, "frames"))
        items.append({"input": f"annotations: {name}", "right": "stops before decoding, naming the file and the entry",
                      "seen": last[-300:], "lost": 0,
                      "ok": done.returncode == 2 and bool(re.search(pattern, last)) and "Traceback" not in done.stderr and not decoded})
    for item in items:
        log(f"bad input {item['input']}: ok {item['ok']} ({item['seen'][:120]})")
    return {"kind": "bad_inputs", "items": items, "injected": len(items), "survived_equal": sum(bool(i["ok"]) for i in items),
            "data_lost": sum(i["lost"] for i in items)}


# ==============================================================================================
# Results and RELIABILITY.md
# ==============================================================================================
KIND_LABELS = {"prepare_synthetic": "kill -9 during `prepare` (synthetic set)",
               "prepare_msrvtt": "kill -9 during `prepare` (MSR-VTT layout)",
               "train": "kill -9 during `train` (asynchronous checkpoints)",
               "export": "kill -9 during `export`",
               "checkpoint": "disk full while a checkpoint is written",
               "dataset_shard": "disk full while a dataset shard is written",
               "index": "disk full while an index is written",
               "damaged_checkpoint": "a damaged newest checkpoint (truncated; a file removed; every checkpoint damaged)",
               "two_trainers": "two trainers on one work directory",
               "bad_inputs": "bad inputs: 8 kinds of video and 3 good videos around them, 4 kinds of caption, 8 malformed annotation files"}


def reliability_table(results: dict) -> dict:
    from benchmarks.results_io import table

    rows = []
    for entry in results["kill"]:
        rows.append([KIND_LABELS[entry["job"]], entry["injected"], entry["survived_equal"], entry["data_lost"],
                     f"`{results['reproduce'].format(jobs=entry['job'])}`"])
    for entry in results["disk_full"]:
        rows.append([KIND_LABELS[entry["kind"]] + f" ({entry['mechanism']})", entry["injected"], entry["survived_equal"],
                     entry["data_lost"], f"`{results['reproduce'].format(jobs=entry['kind'])}`"])
    for entry in results.get("other", []):
        rows.append([KIND_LABELS[entry["kind"]], entry["injected"], entry["survived_equal"], entry["data_lost"],
                     f"`{results['reproduce'].format(jobs=entry['kind'])}`"])
    return table("Faults injected and survived", ["fault", "injected", "survived, output equal to the uninterrupted run",
                                                  "data lost", "reproduce"], rows)


def render_reliability(results: dict) -> str:
    """RELIABILITY.md from a results file: every number comes from `results`."""
    from benchmarks.results_io import render_table

    meta = results["meta"]
    lines = ["# Reliability", "",
             "Generated by `python -m benchmarks.faults` from `benchmarks/results/faults.json`; every number below "
             "is from that file.", "",
             f"Run: `{meta['command']}` on {meta['cpu']} ({meta['cpus']} cores), {meta['date']}, jax {meta['jax']}, "
             f"Python {results['python']}; {results['wall_s'] / 60:.1f} minutes.", "",
             render_table(reliability_table(results)), ""]
    for rerun in results.get("reruns", []):
        lines += [f"Rows {', '.join(rerun['jobs'])} re-run after fixes, by `{rerun['meta']['command']}` on "
                  f"{rerun['meta']['date']} ({rerun['wall_s'] / 60:.1f} minutes); the others are from the run above.", ""]
    lines += [
        "What each row checks (benchmarks/faults.py's docstring has the details):", "",
        "- **kill -9**: the job's whole process group is killed with SIGKILL at a seeded random moment; round *i* of "
        "*N* draws its moment in the *i*-th *N*-th of the uninterrupted run's duration, so kills land in every stage. "
        "The same command is then rerun until it exits 0, and the output is compared with the uninterrupted run's: "
        "prepare's TFDS records (frames pixel-equal, captions, token ids, word weights), metadata and report; "
        "train's final state (parameters, optimizer state, step, input position) bit-equal and metrics.jsonl equal "
        "but for its speed column; export's manifest, arrays, video ids, thumbnails and faiss file equal. "
        "*Injected* counts runs actually killed (a run that finished before its moment is not counted).",
        "- **disk full**: the job's output folder is on a size-limited filesystem with a filler file leaving too "
        "little room (`tmpfs`: a real `mount -t tmpfs`; `fsize`: where mounting is not allowed, a per-file size "
        "limit, RLIMIT_FSIZE). Survived means: the run stopped with one error line naming the path (no traceback), "
        "the last good state was intact (committed checkpoints restore; the decode cache kept and no half dataset "
        "visible; no manifest of a half index), and after the filler was removed the same command finished with "
        "output equal to the uninterrupted run's.",
        "- **damaged checkpoint**: a finished run's newest checkpoint truncated (its largest file cut in half) or a "
        "file of it removed, then the same `train` command: survived = a warning naming the skipped step and where it "
        "was moved, the run resumed from the one before and ended equal to the uninterrupted run, no traceback; every "
        "checkpoint damaged: survived = exit 2 with one line naming every step and why, nothing moved, no traceback.",
        "- **two trainers**: the same `train` command started twice, half a second apart, on one work directory: "
        "survived = one exits 2 with one line naming the other's pid and host (no traceback), the other ends equal to "
        "the uninterrupted run.",
        "- **bad inputs**: each through `tvr-jax prepare`; survived = reported with its file and reason (videos: in "
        "prepare_report.json with path, reason and fix; annotation files: exit 2 naming file and entry, before any "
        "decoding), or, where the input is fine, prepared correctly; the good videos and captions around them prepared.",
        "- *Data lost*: videos, captions, logged steps or index rows the uninterrupted run has and the survivor lacks.", ""]
    stages: dict[str, dict[str, int]] = {}
    for entry in results["kill"]:
        counts = stages.setdefault(entry["job"], {})
        for r in entry["rounds"]:
            if r["killed"]:
                stage = r["state_at_kill"].split(" (")[0].split(",")[0]
                counts[stage] = counts.get(stage, 0) + 1
    if stages:
        lines += ["Where the kills landed (what was on disk at the kill):", ""]
        for job, counts in stages.items():
            lines.append(f"- {job}: " + "; ".join(f"{n} x {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1])))
        lines.append("")
    for entry in results["kill"]:
        if entry.get("baseline"):
            lines.append(f"- {entry['job']}: two uninterrupted runs: {entry['baseline']['detail']}"
                         + (f"; survivors bit-equal to the reference: {entry['bit_equal']} of {entry['survived_equal']}"
                            if "bit_equal" in entry else "") + ".")
        if entry["job"] == "train" and entry.get("bit_equal", 0) < entry["survived_equal"]:
            fresh = [r for r in entry["rounds"] if r["killed"] and r["state_at_kill"].startswith("start-up")]
            fresh_off = sum(r.get("detail", "").startswith("equal within") for r in fresh)
            lines.append(f"  The other {entry['survived_equal'] - entry['bit_equal']} are equal within rtol {TRAIN_RTOL} (logged "
                         f"values) and atol {PARAM_ATOL} (parameters), not bit for bit. {fresh_off} of the {len(fresh)} runs killed "
                         "before any step was logged (so retrained from scratch, no resume) differ from the reference in the "
                         "same way: XLA's CPU kernels vary in the last bits between processes on this machine; it is not the resume.")
    if any(e.get("baseline") for e in results["kill"]):
        lines.append("")
    for entry in results["disk_full"]:
        if entry["checks"].get("message"):
            lines += [f"- disk full, {entry['kind']} ({entry['mechanism']}): committed before: "
                      f"{entry['checks'].get('committed_before', '-')}; tracebacks printed by library threads before the "
                      f"message: {entry['checks'].get('other_tracebacks', 0)}; the message:", "",
                      "  ```", "  " + entry["checks"]["message"], "  ```"]
    if any(e["checks"].get("message") for e in results["disk_full"]):
        lines.append("")
    for entry in results.get("other", []):
        if entry["kind"] == "bad_inputs":
            lines += ["Bad inputs, what is right for each, and whether it happened:", "",
                      "| input | right behaviour | happened |", "|---|---|---|"]
            lines += [f"| {i['input']} | {i['right']} | {'yes' if i['ok'] else 'NO: ' + i['seen'][:100]} |" for i in entry["items"]]
            lines.append("")
    failures = [(e["job"], r) for e in results["kill"] for r in e["rounds"] if r["killed"] and not r["equal"]]
    failures += [(e["kind"], e["checks"]) for e in results["disk_full"] if not e["survived_equal"]]
    for entry in results.get("other", []):
        failures += [(entry["kind"], c) for c in entry.get("cases", entry.get("items", [entry.get("checks", {})]))
                     if not c.get("survived", c.get("ok", entry["survived_equal"]))]
    if failures:
        lines += ["Failures:", ""] + [f"- {name}: {json.dumps(r)[:400]}" for name, r in failures] + [""]
    lines += ["The quick versions (one kill per job, each disk-full case, the bad inputs) run in the default test "
              "suite: `python -m pytest tests/test_faults.py`. The long mode: `python -m benchmarks.faults --rounds 20` "
              "(at least 20 kill moments per job)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="kill moments per job (long mode: 20)")
    parser.add_argument("--jobs", default=",".join(JOBS + DISK_FULL + OTHER),
                        help=f"comma-separated: kill jobs {JOBS}, disk-full cases {DISK_FULL} and {OTHER}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--no-report", action="store_true", help="do not write RELIABILITY.md")
    parser.add_argument("--fallback", action="store_true", help="disk full by RLIMIT_FSIZE even where tmpfs can be mounted")
    parser.add_argument("--merge", action="store_true", help="replace only these jobs' entries in an existing --out "
                        "(recorded under 'reruns' with their own command and date)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.jobs.split(",") if n.strip()]
    unknown = [n for n in names if n not in JOBS + DISK_FULL + OTHER]
    if unknown:
        parser.error(f"unknown jobs {unknown}; choose from {JOBS + DISK_FULL + OTHER}")
    started = time.monotonic()
    root = args.workdir or tempfile.mkdtemp(prefix="tvr-faults-")
    log = lambda msg: print(f"[{time.monotonic() - started:7.1f} s] {msg}", flush=True)
    rng = random.Random(args.seed)
    global CACHE_DIR
    CACHE_DIR = os.path.join(root, "xla-cache")
    needed = sorted({*(n for n in names if n in JOBS), *(DISK_FULL_JOB[n] for n in names if n in DISK_FULL),
                     *(["train"] if {"damaged_checkpoint", "two_trainers"} & set(names) else [])}, key=JOBS.index)
    try:
        available = jobs(root, [*needed, *names], log)  # the cases' names tell it which references to build
        kill = [kill_rounds(available[n], root, args.rounds, rng, log) for n in names if n in JOBS]
        mechanism = "tmpfs" if can_mount() and not args.fallback else "fsize"
        disk = [disk_full_case(k, available[DISK_FULL_JOB[k]], root, log, mechanism) for k in names if k in DISK_FULL]
        trained = os.path.join(root, "trained")
        other = []
        if "damaged_checkpoint" in names:
            other.append(damaged_checkpoint_case(available["train"], root, trained, log))
        if "two_trainers" in names:
            other.append(two_trainers_case(available["train"], root, trained, log))
        if "bad_inputs" in names:
            other.append(bad_inputs_case(root, log))
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    from benchmarks.results_io import machine_meta, write_results

    if args.merge and os.path.isfile(args.out):
        with open(args.out) as f:
            results = json.load(f)
        for field, key, new_entries in (("kill", "job", kill), ("disk_full", "kind", disk), ("other", "kind", other)):
            fresh = {e[key]: e for e in new_entries}
            results[field] = [fresh.pop(e[key], e) for e in results.get(field, [])] + list(fresh.values())
        results.setdefault("reruns", []).append({"meta": machine_meta(), "jobs": names, "rounds": args.rounds,
                                                 "wall_s": round(time.monotonic() - started, 1)})
        results["tables"] = [reliability_table(results)]
        with open(args.out + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(args.out + ".tmp", args.out)
        tables = results["tables"]
        kill, disk, other = results["kill"], results["disk_full"], results.get("other", [])
    else:
        payload = {"python": sys.version.split()[0], "rounds": args.rounds, "seed": args.seed,
                   "wall_s": round(time.monotonic() - started, 1),
                   "reproduce": f"python -m benchmarks.faults --rounds {args.rounds} --jobs {{jobs}}",
                   "kill": kill, "disk_full": disk, "other": other}
        tables = [reliability_table(payload)]
        write_results(args.out, tables=tables, **payload)
        with open(args.out) as f:
            results = json.load(f)
    from benchmarks.results_io import print_tables

    print_tables(tables)
    if not args.no_report:
        with open(RELIABILITY, "w") as f:
            f.write(render_reliability(results))
    failed = sum(e["injected"] - e["survived_equal"] for e in kill + disk + other)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
