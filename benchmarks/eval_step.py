"""Evaluation, ours against the PyTorch peer, side by side in one run: encoding a test set, scoring it.

Three jobs, ViT-B/32 at MSR-VTT's shapes (12 frames, 32 words), float32, this machine:
  encode_videos    16 clips -> frame features (image tower forward, projection, L2; meanP frames);
  encode_captions  64 captions -> sentence and word tokens (text tower forward);
  score            S of 1000 texts x 1000 videos, `att_ti` with visual + textual attention (the
                   paper's test-time score), on the same random features on both sides.
ours: `tvr_jax.evaluate.compile_encoder`, compiled once (what `tvr-jax eval` runs per batch), and
      `tvr_jax.evaluate.score` on a one-device mesh, as is: it compiles at every call, as it does
      once per evaluation, so its time includes compilation;
peer: `benchmarks/torch_reference.py` under torch.inference_mode: transformers' CLIP towers, and
      the release's blockwise scoring in eager PyTorch (64 texts x 64 videos per block).
Both sides start from the same weights (the peer writes them, ours loads them) and inputs, each
in its own process (`side_by_side.py`); the run stops unless features and scores agree. The last
table estimates one whole MSR-VTT 1k-A evaluation (1000 videos, 1000 captions) from the medians.

    python -m benchmarks.eval_step [--rounds 3] [--score-n 1000]
    python -m benchmarks.eval_step --config configs/msrvtt_vit_b32.py:tiny --score-n 600 --rounds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
import time

import numpy as np

from benchmarks import flops
from benchmarks.results_io import print_tables, table, write_results
from benchmarks.side_by_side import Worker, alternate, keep_freed_host_memory, serve
from benchmarks.train_step import make_batch

CONFIG = "configs/msrvtt_vit_b32.py"
OVERRIDES = ["model.temporal='meanP'", "model.tpm=False"]  # the towers' frame tokens are the frames; att_ti stays
VIDEO_BATCH, CAPTION_BATCH = 16, 64
TEST_SET = 1000  # MSR-VTT 1k-A: 1000 videos, one caption each
JOBS = ("encode_videos", "encode_captions", "score")
FEATURE_KEYS = ("frames", "t_cls", "words", "word_mask")


def _config(config: str, hf_dir: str = ""):
    """(config, model, CLIP parameters or None): ours loads the peer's weights from `hf_dir`."""
    from tvr_jax import experiment
    from tvr_jax.config_io import load_config

    cfg = load_config(config, OVERRIDES)
    cfg.init_checkpoint = hf_dir
    return (cfg, *experiment.build_model(cfg))


def _inputs(m, score_n: int) -> tuple[dict, dict, tuple[dict, dict]]:
    """Clips, captions (random, fixed seeds) and the features the score job ranks (eval.py's, seed 0)."""
    from benchmarks.eval import features

    return (make_batch(m.clip, m.max_frames, m.max_words, VIDEO_BATCH, seed=0),
            make_batch(m.clip, m.max_frames, m.max_words, CAPTION_BATCH, seed=1),
            features(score_n, m.max_words, m.max_frames))


def ours_jobs(config: str, hf_dir: str, score_n: int) -> tuple[dict, dict]:
    import dataclasses

    import jax

    from tvr_jax import evaluate, experiment, sharding
    from tvr_jax.models.retrieval import init_from_clip

    cfg, model, clip_params = _config(config, hf_dir)
    m = model.config
    params = init_from_clip(m, model.init(jax.random.PRNGKey(0), *model.dummy_batch(1))["params"], clip_params)
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    clips, captions, (texts, videos) = _inputs(m, score_n)
    loss_cfg = dataclasses.replace(experiment.loss_config(cfg), block_size=cfg.eval.block_size)
    ready, jobs = {}, {}
    for job, kind, batch in (("encode_videos", "videos", clips), ("encode_captions", "captions", captions)):
        step, keys = evaluate.compile_encoder(model, mesh, kind)
        x = jax.device_put({k: batch[k] for k in keys}, sharding.batch_sharding(mesh))
        t0 = time.perf_counter()
        compiled = step.lower(params, x).compile()
        ready[f"{job}_compile_s"] = time.perf_counter() - t0
        jobs[job] = lambda compiled=compiled, x=x: jax.device_get(compiled(params, x))
    jobs["score"] = lambda: evaluate.score(texts, videos, m.interaction, loss_cfg, mesh)
    return jobs, ready


def peer_jobs(config: str, hf_dir: str, score_n: int) -> tuple[dict, dict]:
    import torch

    from benchmarks import torch_reference as ref

    cfg, model, _ = _config(config)
    m = model.config
    hf = ref.random_clip(m.clip).eval()
    ref.save_hf(hf, hf_dir)  # ours loads these weights: the same model on both sides
    clips, captions, (texts, videos) = _inputs(m, score_n)
    clips, captions, texts, videos = (as_tensors(x) for x in (clips, captions, texts, videos))
    keys = ("t_cls", "words", "word_weights", "word_mask")

    def encode_videos():
        with torch.inference_mode():
            return {"frames": ref.frame_features(hf, clips["video"])}

    def encode_captions():
        with torch.inference_mode():
            return ref.caption_features(hf, captions["text_ids"].long())

    score = lambda: ref.dmae_similarity(*(texts[k] for k in keys), videos["frames"], videos["frame_mask"],
                                        gamma=cfg.loss.gamma)
    return {"encode_videos": encode_videos, "encode_captions": encode_captions, "score": score}, {}


def as_tensors(arrays: dict) -> dict:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def serve_side(side: str, config: str, hf_dir: str, score_n: int) -> None:
    """Worker: build one side's jobs; `outputs` saves what they compute to HF_DIR/<side>.npz for the parity check."""
    keep_freed_host_memory()  # both sides, as in train_step.py
    jobs, ready = (ours_jobs if side == "ours" else peer_jobs)(config, hf_dir, score_n)

    def outputs() -> str:
        out = {**jobs["encode_videos"](), **jobs["encode_captions"]()}
        out = {k: np.asarray(out[k]) for k in FEATURE_KEYS}
        out["S"] = np.asarray(jobs["score"]())
        path = os.path.join(hf_dir, f"{side}.npz")
        np.savez(path, **out)
        return path

    serve({**jobs, "outputs": outputs}, ready)


FEATURE_TOLERANCE = 1e-5  # the towers agree to about 2e-7 in float32
# S: float32 differences of the token grid (~1e-7) flip argmaxes at near-ties, and a flipped
# frame moves that one pair's score. A wrong program moves whole rows or blocks.
SCORE_TOLERANCE, SCORE_FLIPS = 1e-3, 1e-3  # largest difference; fraction of entries off by more than 1e-5


def parity(paths: dict[str, str]) -> dict[str, float]:
    """Largest absolute difference of each output, ours against the peer; stops the run when one is off."""
    ours, peer = (np.load(paths[side]) for side in ("ours", "PyTorch"))
    if not np.array_equal(ours["word_mask"], peer["word_mask"]):
        raise SystemExit("the two sides mask different word positions")
    diffs = {k: float(np.max(np.abs(ours[k] - peer[k]))) for k in ("frames", "t_cls", "words", "S")}
    diffs["S_fraction_over_1e-5"] = float(np.mean(np.abs(ours["S"] - peer["S"]) > 1e-5))
    print(f"differences, ours vs PyTorch: {diffs}", flush=True)
    features_off = max(diffs[k] for k in ("frames", "t_cls", "words")) > FEATURE_TOLERANCE
    if features_off or diffs["S"] > SCORE_TOLERANCE or diffs["S_fraction_over_1e-5"] > SCORE_FLIPS:
        raise SystemExit(f"the two sides compute different features or scores on the same weights and inputs: {diffs}")
    return diffs


def tables(res: dict, peak: dict, c) -> list[dict]:
    """The report's tables; `c` is the CLIP config (FLOPs)."""
    m, n = res["model"], res["score_n"]
    job_flops = {"encode_videos": VIDEO_BATCH * m["frames"] * flops.image_tower_flops(c)["total"],
                 "encode_captions": CAPTION_BATCH * flops.text_tower_flops(c, m["words"])["total"],
                 "score": 2.0 * n * n * m["words"] * m["frames"] * c.embed_dim}  # the token grid, as eval.py
    what = {"encode_videos": f"{VIDEO_BATCH} clips x {m['frames']} frames", "encode_captions": f"{CAPTION_BATCH} captions",
            "score": f"{n} texts x {n} videos (ours: compile included)"}
    med = {job: {side: float(np.median(t)) for side, t in sides.items()} for job, sides in res["times"].items()}
    peak_flops = peak["peak_flops"]
    mfu = lambda f, s: f"{100 * f / s / peak_flops:.1f}%"
    rows = [[job.replace("_", " "), what[job], f"{job_flops[job] / 1e9:.1f}", f"{t['ours']:.3f}", f"{t['PyTorch']:.3f}",
             f"{t['ours'] / t['PyTorch']:.2f}x", mfu(job_flops[job], t["ours"]), mfu(job_flops[job], t["PyTorch"])]
            for job, t in med.items()]
    out = [table(f"Evaluation jobs, float32 (median of rounds, warm-up excluded); peak {peak_flops / 1e9:.0f} GFLOP/s "
                 f"({peak['best']}, measured in this run)",
                 ["job", "size", "model GFLOP", "ours s", "PyTorch s", "ours / PyTorch", "MFU ours", "MFU PyTorch"], rows)]
    if n == TEST_SET:  # ours' score time includes its compilation: it does not scale with N^2
        out.append(whole_evaluation(med, res["ours_ready"], m["frames"]))
    p = res["parity"]
    out.append(table("Largest absolute difference, ours vs PyTorch, same weights and inputs",
                     ["frame features", "sentence tokens", "word tokens", f"S ({n} x {n})",
                      "S entries off by more than 1e-5"],
                     [[f"{p[k]:.1e}" for k in ("frames", "t_cls", "words", "S")]
                      + [f"{round(p['S_fraction_over_1e-5'] * n * n)} of {n * n}"]]))
    return out


def whole_evaluation(med: dict, ours_ready: dict, frames: int) -> dict:
    """One MSR-VTT 1k-A evaluation from the per-batch medians: the batches it takes x time per batch."""
    batches = {"encode_videos": math.ceil(TEST_SET / VIDEO_BATCH), "encode_captions": math.ceil(TEST_SET / CAPTION_BATCH),
               "score": 1}
    est = {job: {side: batches[job] * s for side, s in t.items()} for job, t in med.items()}
    rows = [[job.replace("_", " "), batches[job], f"{e['ours']:.1f}", f"{e['PyTorch']:.1f}", f"{e['ours'] / e['PyTorch']:.2f}x"]
            for job, e in est.items()]
    compile_s = ours_ready["encode_videos_compile_s"] + ours_ready["encode_captions_compile_s"]
    rows.append(["compile the two encoders (ours)", "", f"{compile_s:.1f}", "", ""])
    total = {side: sum(e[side] for e in est.values()) for side in ("ours", "PyTorch")}
    total["ours"] += compile_s
    rows.append(["**whole evaluation**", "", f"**{total['ours']:.1f}**", f"**{total['PyTorch']:.1f}**",
                 f"**{total['ours'] / total['PyTorch']:.2f}x**"])
    return table(f"One MSR-VTT 1k-A evaluation ({TEST_SET} videos x {frames} frames, {TEST_SET} captions), "
                 "estimated from the medians above: batches x time per batch",
                 ["part", "batches", "ours s", "PyTorch s", "ours / PyTorch"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--score-n", type=int, default=TEST_SET, help="texts = videos scored by the score job")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--hf-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/eval_step.json")
    args = parser.parse_args()
    if args.serve:  # a worker process of this script
        serve_side(args.serve, args.config, args.hf_dir, args.score_n)
        return
    peak = flops.measured_matmul_peak("float32")
    print(f"matmul peak: {peak}", flush=True)
    m = _config(args.config)[1].config
    with tempfile.TemporaryDirectory() as hf_dir, contextlib.ExitStack() as workers:
        spawn = lambda side: workers.enter_context(
            Worker("benchmarks.eval_step", side, ["--config", args.config, "--hf-dir", hf_dir, "--score-n", str(args.score_n)]))
        peer = spawn("PyTorch")  # writes the weights that ours then reads
        ours = spawn("ours")
        diffs = parity({w.side: w.ask("run outputs") for w in (ours, peer)})
        times = alternate([ours, peer], list(JOBS), args.rounds, args.warmup)
    res = {"config": args.config, "overrides": OVERRIDES, "model": {"frames": m.max_frames, "words": m.max_words},
           "score_n": args.score_n, "times": times, "parity": diffs, "ours_ready": ours.ready}
    out_tables = tables(res, peak, m.clip)
    print_tables(out_tables)
    write_results(args.out, tables=out_tables, peak=peak, **res)


if __name__ == "__main__":
    main()
