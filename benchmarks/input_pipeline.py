"""Clips per second: the prepared-dataset tf.data pipeline vs decoding the same videos with decord on the fly.

    python -m benchmarks.input_pipeline [--clips 32] [--seconds 15] [--batch 16] [--out benchmarks/results/input_pipeline.json]

1. Writes `--clips` MSR-VTT-like videos (320x240, 25 fps, H.264 with the encoder's default GOP,
   a drifting texture plus moving shapes so P-frames carry real motion), and prepares them
   (`data_pipeline.prepare`, 1 fps, short side 224).
2. Prepared path: `VideoTextInput` in training mode (one random frame per segment), T = 12,
   224 x 224, numpy batches of `--batch` clips, twice: uint8 pixels (the default: the model
   normalises them on the device) and `pixels="float32"` (CLIP-normalised on the host, as
   before), side by side; per core as well, the figure that says how many cores an accelerator
   needs.
3. On-the-fly path: the same clips, same T and size, decoded with decord (resizing inside
   decord to short side 224, the cheapest decord path), centre-cropped and normalised in
   numpy, in a pool of as many processes as there are cores, clips returned to the parent.
4. Tiny config: the pipeline on the synthetic set at 32 x 32 (T = 12, batch 64) against a
   training step of the tiny retrieval model (seqTransf, NegNCE + TPM-CL) on the same shapes.
Both paths get the whole machine in turn, in alternating rounds (medians reported); prints the
tables and writes them with the raw numbers (`benchmarks/results_io.write_results`). Use a fresh
`--workdir` for honest write / prepare times: both reuse what an earlier run left there.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time

import numpy as np

from benchmarks.results_io import print_tables, table, write_results
from data_pipeline import prepare as prep
from data_pipeline.input_pipeline import (
    CLIP_MEAN,
    CLIP_STD,
    InputConfig,
    VideoTextInput,
)
from data_pipeline.synthetic import write_clip
from data_pipeline.video import sample_frame_indices, sample_times

T, SIZE = 12, 224


def make_clip(path: str, seconds: int, seed: int, fps: int = 25, height: int = 240, width: int = 320) -> None:
    rng = np.random.default_rng(seed)
    # Smooth random texture (upsampled noise) drifting across the frame, plus two moving discs.
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    texture = np.kron(coarse, np.ones((8, 8, 1), np.uint8))
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((seconds * fps, height, width, 3), np.uint8)
    drift = rng.uniform(-1, 1, 2)
    for i in range(len(frames)):
        dy, dx = (drift * i).astype(int)
        frame = np.roll(texture, (dy, dx), axis=(0, 1))[:height, :width].copy()
        for k in range(2):
            cy = (height / 2 + 80 * np.sin(i / (15 + 10 * k) + k)) % height
            cx = (width / 2 + 120 * np.cos(i / (20 + 5 * k))) % width
            frame[(yy - cy) ** 2 + (xx - cx) ** 2 < 400] = (255, 60 * k, 0)
        frames[i] = frame
    write_clip(path, frames, fps, crf=23)


def write_source(root: str, clips: int, seconds: int) -> tuple[str, str]:
    import csv

    videos, annotations = os.path.join(root, "videos"), os.path.join(root, "annotations")
    os.makedirs(videos, exist_ok=True)
    os.makedirs(annotations, exist_ok=True)
    ids = [f"video{i}" for i in range(clips)]
    for i, vid in enumerate(ids):
        path = os.path.join(videos, f"{vid}.mp4")
        if not os.path.exists(path):
            make_clip(path, seconds + i % 5, seed=i)  # 15-19 s, like MSR-VTT's 10-30 s
    with open(os.path.join(annotations, "MSRVTT_data.json"), "w") as f:
        json.dump({"sentences": [{"video_id": v, "caption": f"clip number {i} with moving discs", "sen_id": i} for i, v in enumerate(ids)]}, f)
    with open(os.path.join(annotations, "MSRVTT_train.9k.csv"), "w", newline="") as f:
        csv.writer(f).writerows([["video_id"]] + [[v] for v in ids])
    with open(os.path.join(annotations, "MSRVTT_JSFUSION_test.csv"), "w", newline="") as f:
        csv.writer(f).writerows([["", "key", "vid_key", "video_id", "sentence"], [0, "ret0", "msr0", ids[0], "clip number 0"]])
    return videos, annotations


def pipeline_rate(dataset_dir: str, batch: int, batches: int, image_size: int = SIZE, num_frames: int = T,
                  pixels: str = "uint8") -> float:
    pipe = VideoTextInput(dataset_dir, InputConfig(split="train", training=True, global_batch_size=batch, num_frames=num_frames,
                                                   image_size=image_size, frame_sampling="random_segment",
                                                   process_index=0, process_count=1, pixels=pixels))
    for _ in range(2):  # warm-up: tf.data threads, autotuning
        next(pipe)
    start = time.perf_counter()
    for _ in range(batches):
        out = next(pipe)
    assert out["video"].shape == (batch, num_frames, image_size, image_size, 3)
    return batches * batch / (time.perf_counter() - start)


_MEAN, _STD = np.array(CLIP_MEAN, np.float32) * 255, np.array(CLIP_STD, np.float32) * 255


def decord_clip(args: tuple[str, int, int, int]) -> np.ndarray:
    """On-the-fly: T frames of one video with decord (same 1 fps grid and segment sampling), crop, normalise."""
    import decord

    path, height, width, seed = args
    scale = SIZE / min(height, width)
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, width=round(width * scale), height=round(height * scale))
    fps, n = reader.get_avg_fps(), len(reader)
    times = sample_times(n / fps, 1.0)
    chosen, _ = sample_frame_indices(len(times), T, "random_segment", np.random.default_rng(seed))
    frames = reader.get_batch(np.minimum((times[chosen] * fps).astype(int), n - 1).tolist()).asnumpy()
    h, w = frames.shape[1:3]
    top, left = (h - SIZE) // 2, (w - SIZE) // 2
    frames = frames[:, top:top + SIZE, left:left + SIZE].astype(np.float32)
    return (frames - _MEAN) / _STD


def decord_rate(paths: list[str], clips: int, workers: int) -> float:
    tasks = [(paths[i % len(paths)], 240, 320, i) for i in range(clips)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        list(pool.imap(decord_clip, tasks[:workers * 2]))  # warm-up: imports in the workers
        start = time.perf_counter()
        for out in pool.imap(decord_clip, tasks, chunksize=1):
            assert out.shape == (T, SIZE, SIZE, 3)
        return clips / (time.perf_counter() - start)


def tiny_step_rate(batch: int) -> dict:
    """Clips/s of one training step of the tiny retrieval model (tvr_jax), on the pipeline's shapes."""
    try:
        import jax
        import jax.numpy as jnp

        from tvr_jax.models.clip import PRESETS
        from tvr_jax.models.retrieval import RetrievalConfig, RetrievalModel
        from tvr_jax.objective import LossConfig, model_loss
    except ImportError as e:  # the training code is another issue's; measure what exists
        return {"skipped": f"{type(e).__name__}: {e}"}
    config = RetrievalConfig(clip=PRESETS["tiny"], max_frames=T, max_words=16, temporal="seqTransf", temporal_layers=2)
    model, loss_cfg = RetrievalModel(config), LossConfig()
    rng = np.random.default_rng(0)
    ids = np.zeros((batch, 16), np.int32)
    ids[:, 0], ids[:, 1:10], ids[:, 10] = 49406, rng.integers(1, 49000, (batch, 9)), 49407
    data = (jnp.asarray(rng.normal(size=(batch, T, 32, 32, 3)), jnp.float32), jnp.ones((batch, T), bool), jnp.asarray(ids),
            jnp.asarray(ids != 0), jnp.asarray((ids != 0) & (ids < 49406), jnp.float32))
    params = model.init(jax.random.PRNGKey(0), *data, rho=loss_cfg.rho, straight_through=loss_cfg.visual_mask_straight_through)["params"]
    step = jax.jit(jax.value_and_grad(lambda p: model_loss(model, p, data, loss_cfg)[0]))
    jax.block_until_ready(step(params))
    start, n = time.perf_counter(), 5
    for _ in range(n):
        jax.block_until_ready(step(params))
    seconds = (time.perf_counter() - start) / n
    return {"step_s": round(seconds, 4), "clips_per_s": round(batch / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds; medians are reported")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "tvr_jax_input_bench"))
    parser.add_argument("--out", "--json", default="benchmarks/results/input_pipeline.json", help="write the results here")
    args = parser.parse_args()
    workers = os.cpu_count() or 1

    t0 = time.perf_counter()
    videos, annotations = write_source(os.path.join(args.workdir, "source"), args.clips, args.seconds)
    t_write = time.perf_counter() - t0
    data_dir = os.path.join(args.workdir, "data")
    t0 = time.perf_counter()
    prep.prepare("msrvtt", data_dir, videos, annotations, fps=1.0, short_side=SIZE, workers=workers, tagger="fallback",
                 progress=False)
    t_prepare = time.perf_counter() - t0
    paths = [os.path.join(videos, f"video{i}.mp4") for i in range(args.clips)]

    # Alternating rounds, medians: the machine may be shared, and load shifts between rounds.
    load_before = os.getloadavg()[0]
    rounds = {"prepared": [], "prepared_float32": [], "decord": []}
    msrvtt = prep.dataset_dir(data_dir, "msrvtt")
    for _ in range(args.rounds):
        rounds["prepared"].append(pipeline_rate(msrvtt, args.batch, args.batches))
        rounds["prepared_float32"].append(pipeline_rate(msrvtt, args.batch, args.batches, pixels="float32"))
        rounds["decord"].append(decord_rate(paths, args.batch * args.batches, workers))
    prepared, prepared_f32, on_the_fly = (float(np.median(rounds[k])) for k in ("prepared", "prepared_float32", "decord"))

    t0 = time.perf_counter()
    prep.prepare("synthetic", data_dir, workers=workers, progress=False)  # generates the synthetic set, then prepares
    t_synthetic = time.perf_counter() - t0
    tiny_input = pipeline_rate(prep.dataset_dir(data_dir, "synthetic"), 64, 10, image_size=32)
    tiny_step = tiny_step_rate(64)
    load_after = os.getloadavg()[0]

    versions = {"python": platform.python_version()}
    for name in ("tensorflow", "decord"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError) as e:  # recorded, not fatal: the numbers above already exist
            versions[name] = f"unavailable ({type(e).__name__})"
    results = {
        "versions": versions, "workers": workers,
        "clips": args.clips, "clip_seconds": f"{args.seconds}-{args.seconds + 4}", "source": "320x240, 25 fps, H.264 crf 23",
        "T": T, "size": SIZE, "batch": args.batch, "batches": args.batches,
        "write_source_s": round(t_write, 1), "prepare_s": round(t_prepare, 1), "prepare_synthetic_s": round(t_synthetic, 1),
        "prepared_clips_per_s": round(prepared, 1), "prepared_clips_per_s_per_core": round(prepared / workers, 1),
        "prepared_float32_clips_per_s": round(prepared_f32, 1), "uint8_over_float32": round(prepared / prepared_f32, 2),
        "decord_on_the_fly_clips_per_s": round(on_the_fly, 1), "speedup": round(prepared / on_the_fly, 2),
        "rounds": {k: [round(x, 1) for x in v] for k, v in rounds.items()},
        "load_average_before": round(load_before, 2), "load_average_after": round(load_after, 2),
        "tiny": {"input_clips_per_s_32px": round(tiny_input, 1), "train_step": tiny_step},
    }
    fmt_rounds = lambda xs: ", ".join(f"{x:.1f}" for x in xs)
    tables = [table(
        f"Clips per second, T = {T}, {SIZE} x {SIZE} (load average {load_before:.2f} before, {load_after:.2f} after, "
        f"on {workers} cores)",
        ["path", f"clips/s, median of {args.rounds} rounds", "per core", "rounds"],
        [["prepared dataset, tf.data, uint8 (normalised on the device)", round(prepared, 1), round(prepared / workers, 1),
          fmt_rounds(rounds["prepared"])],
         ["prepared dataset, tf.data, float32 CLIP-normalised on the host", round(prepared_f32, 1),
          round(prepared_f32 / workers, 1), fmt_rounds(rounds["prepared_float32"])],
         [f"decord on the fly, {workers} processes, float32", round(on_the_fly, 1), round(on_the_fly / workers, 1),
          fmt_rounds(rounds["decord"])],
         ["**uint8 / float32**", f"**{prepared / prepared_f32:.2f}x**", "", "goal: uint8 >= 100 clips/s per core"],
         ["**speed-up (prepared uint8 / decord)**", f"**{prepared / on_the_fly:.1f}x**", "", "goal: >= 5x"]])]
    tiny_rows = [["input pipeline (synthetic set, 32 x 32)", "", round(tiny_input, 1)]]
    if "step_s" in tiny_step:
        tiny_rows += [["one training step (seqTransf, 2 layers, NegNCE + TPM-CL, jitted, mean of 5 after warm-up)",
                       tiny_step["step_s"], tiny_step["clips_per_s"]],
                      ["input / step", "", f"{tiny_input / tiny_step['clips_per_s']:.1f}x"]]
    tables.append(table(f"Tiny config: T = {T}, 32 x 32, batch 64", ["what", "s per batch", "clips/s"], tiny_rows))
    tables.append(table("Decode-once cost (fresh workdir only; a reused one reads its cache)", ["step", "seconds"],
                        [[f"write {args.clips} source videos", round(t_write, 1)],
                         [f"`prepare` those {args.clips} videos (1 fps, short side {SIZE})", round(t_prepare, 1)],
                         ["`prepare --dataset synthetic` (generate the set, prepare it)", round(t_synthetic, 1)]]))
    print_tables(tables)
    print(f"versions {versions}")
    write_results(args.out, tables=tables, **results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
