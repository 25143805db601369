"""Evaluation in the paper's protocol: encode a split once, score every text against every
video with the training similarity, sharded by rows over the mesh, then metrics and a report.

Every split is encoded as two streams, its videos (each once) and its captions (each once, with
the index of its video), so one code path covers single-caption sets (MSR-VTT 1k-A, paragraph
queries of DiDeMo / ActivityNet) and MSVD's multi-caption protocol (`metrics.multi_caption_metrics`
reduces to the square protocol when every video has one caption).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from tvr_jax import metrics as metrics_lib
from tvr_jax import sharding
from tvr_jax.models.retrieval import RetrievalModel
from tvr_jax.objective import LossConfig, similarity_matrix

TEXT_KEYS = ("t_cls", "words", "word_mask", "word_weights", "word_logits")
VIDEO_KEYS = ("frames", "frame_mask", "frame_logits")


def encode(model: RetrievalModel, params: dict, batches: Iterable[dict], mesh: Mesh, kind: str) -> dict[str, np.ndarray]:
    """Features of every valid row of `batches` ("videos" or "captions"), gathered on the host."""
    if kind == "videos":
        fn = lambda p, b: model.apply({"params": p}, b["video"], b["video_mask"], method=model.encode_video)
        inputs, keys = ("video", "video_mask"), VIDEO_KEYS
    elif kind == "captions":
        fn = lambda p, b: model.apply({"params": p}, b["text_ids"], b["text_mask"], b["word_weights"], method=model.encode_text)
        inputs, keys = ("text_ids", "text_mask", "word_weights"), TEXT_KEYS
    else:
        raise ValueError(f"kind must be 'videos' or 'captions', got {kind!r}")
    in_sharding = sharding.batch_sharding(mesh)
    step = jax.jit(lambda p, b: {k: v for k, v in fn(p, b).items() if k in keys}, out_shardings=in_sharding)
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        out = jax.device_get(step(params, jax.device_put({k: batch[k] for k in inputs}, in_sharding)))
        valid = np.asarray(batch["valid"], bool)
        for k, v in {**out, "video_index": batch["video_index"]}.items():
            chunks.setdefault(k, []).append(np.asarray(v)[valid])
    if not chunks:
        raise ValueError(f"no {kind} to encode: the split is empty")
    return {k: np.concatenate(v) for k, v in chunks.items()}


def score(texts: dict, videos: dict, interaction: str, cfg: LossConfig, mesh: Mesh) -> np.ndarray:
    """S (num_texts, num_videos) with `dmae_similarity`: texts split over the mesh, videos on
    every device; each device runs the blockwise loop over all videos for its rows."""
    axes = sharding.batch_axes(mesh)
    shards = sharding.num_batch_shards(mesh)
    n = len(texts["t_cls"])
    pad = -n % shards  # repeat the first rows; their scores are cut off below
    texts = {k: jnp.asarray(np.concatenate([v, v[:pad]]) if pad else v) for k, v in texts.items() if k in TEXT_KEYS}
    videos = {k: jnp.asarray(v) for k, v in videos.items() if k in VIDEO_KEYS}
    local = lambda t, v: similarity_matrix(t, v, interaction, cfg)
    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P()), out_specs=P(axes)))
    return np.asarray(jax.device_get(fn(texts, videos)))[:n]


def retrieval_report(sim: np.ndarray, caption_video_index: np.ndarray) -> dict[str, Any]:
    """Headline metrics (raw similarity) and, under their own name, the DSL test-time variant."""
    raw = metrics_lib.multi_caption_metrics(sim, caption_video_index)
    dsl_t2v = metrics_lib.multi_caption_metrics(metrics_lib.dual_softmax(sim), caption_video_index)["t2v"]
    dsl_v2t = metrics_lib.multi_caption_metrics(metrics_lib.dual_softmax(sim.T).T, caption_video_index)["v2t"]
    return {"t2v": raw["t2v"], "v2t": raw["v2t"], "counts": raw["counts"],
            "dsl": {"t2v": dsl_t2v, "v2t": dsl_v2t,
                    "note": "dual softmax over the whole test set: a test-time trick, not comparable to raw numbers"}}


def markdown_table(report: dict[str, Any], title: str) -> str:
    cols = ["R@1", "R@5", "R@10", "MdR", "MnR"]
    head = "| | " + " | ".join(f"t2v {c}" for c in cols) + " | " + " | ".join(f"v2t {c}" for c in cols) + " |"
    rows = [head, "|---" * (1 + 2 * len(cols)) + "|"]
    for name, r in (("raw", report), ("DSL (test-time trick)", report["dsl"])):
        cells = [f"{r['t2v'][c]:.1f}" for c in cols] + [f"{r['v2t'][c]:.1f}" for c in cols]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return f"### {title}\n\n" + "\n".join(rows) + "\n"


def write_report(report: dict[str, Any], out_dir: str, title: str) -> None:
    """metrics.json, metrics.md (paper-table layout) and metrics.csv, each written atomically."""
    os.makedirs(out_dir, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["variant", "direction", "R@1", "R@5", "R@10", "MdR", "MnR"])
    for variant, r in (("raw", report), ("dsl", report["dsl"])):
        for direction in ("t2v", "v2t"):
            writer.writerow([variant, direction] + [r[direction][c] for c in ("R@1", "R@5", "R@10", "MdR", "MnR")])
    for name, text in (("metrics.json", json.dumps(report, indent=2)), ("metrics.md", markdown_table(report, title)),
                       ("metrics.csv", buf.getvalue())):
        tmp = os.path.join(out_dir, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out_dir, name))


def evaluate_checkpoint(cfg, workdir: str, step: int | None = None, *, mesh: Mesh | None = None) -> dict[str, Any]:
    """Evaluate the checkpoint `step` (default: the newest) of `workdir` on `cfg.eval.split`.

    Model selection never looks at the test split: without a validation run the last checkpoint
    is the one reported, and the report says so. Writes WORKDIR/eval/metrics.{json,md,csv}.
    """
    from tvr_jax import train as train_lib

    mesh = mesh or sharding.make_mesh(tuple(cfg.mesh_shape))
    model, params, trained_step = train_lib.restore_params(cfg, workdir, step, mesh)
    checkpoint = {"step": trained_step, "selection": "last checkpoint" if step is None else f"step {step} as asked",
                  "note": "no model selection on the test split"}
    return _evaluate_params(cfg, model, params, mesh, workdir, checkpoint, f"step {trained_step}")


def evaluate_zero_shot(cfg, workdir: str, *, mesh: Mesh | None = None) -> dict[str, Any]:
    """CLIP weights (`cfg.init_checkpoint`) with no training: meanP frames, cosine of pooled features."""
    from tvr_jax import train as train_lib
    from tvr_jax.config_io import apply_override
    from tvr_jax.models.retrieval import init_from_clip

    cfg = cfg.copy_and_resolve_references()
    for item in ("model.temporal='meanP'", "model.interaction='cosine'", "model.tpm=False", "loss.lambda_tpm=0.0"):
        apply_override(cfg, item)
    train_lib.validate_config(cfg)
    if not cfg.init_checkpoint:
        raise ValueError("--zero-shot evaluates CLIP weights: pass --config.init_checkpoint=PATH")
    mesh = mesh or sharding.make_mesh(tuple(cfg.mesh_shape))
    model, clip_params = train_lib.build_model(cfg)
    params = model.init(jax.random.PRNGKey(0), *model.dummy_batch(1))["params"]
    params = init_from_clip(model.config, params, clip_params)
    checkpoint = {"zero_shot": cfg.init_checkpoint, "note": "no training: meanP, cosine of pooled features"}
    return _evaluate_params(cfg, model, params, mesh, workdir, checkpoint, "zero-shot CLIP")


def _evaluate_params(cfg, model: RetrievalModel, params, mesh: Mesh, workdir: str, checkpoint: dict, what: str) -> dict:
    from tvr_jax import train as train_lib

    if cfg.eval.batch_size % sharding.num_batch_shards(mesh):
        raise ValueError(f"eval.batch_size={cfg.eval.batch_size} must be divisible by the {sharding.num_batch_shards(mesh)} batch shards")
    lcfg = dataclasses.replace(train_lib.loss_config(cfg), block_size=cfg.eval.block_size)
    split = cfg.eval.split
    streams = {kind: train_lib.dataset_input(cfg, split, False, model.config, cfg.eval.batch_size, eval_rows=kind)
               for kind in ("videos", "captions")}
    videos = encode(model, params, streams["videos"], mesh, "videos")
    texts = encode(model, params, streams["captions"], mesh, "captions")
    sim = score(texts, videos, model.config.interaction, lcfg, mesh)
    report = retrieval_report(sim, texts["video_index"])
    report.update(checkpoint=checkpoint, split=split, dataset=cfg.dataset)
    write_report(report, os.path.join(workdir, "eval"), f"{cfg.dataset} {split}, {what}")
    return report
