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
import html
import io
import json
import os
from typing import Any, Callable, Iterable, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from data_pipeline.prepare import dataset_dir
from data_pipeline.tokenizer import default_tokenizer
from tvr_jax import metrics as metrics_lib
from tvr_jax import sharding
from tvr_jax.config_io import apply_override
from tvr_jax.experiment import (VAL_SCORE, build_model, checkpoint_manager, dataset_input, loss_config,
                                restore_params, validate_config)
from tvr_jax.models.retrieval import RetrievalModel, init_from_clip
from tvr_jax.objective import VIDEO_KEYS, LossConfig, similarity_matrix

TEXT_KEYS = ("t_cls", "words", "word_mask", "word_weights", "word_logits")


class Encoder(NamedTuple):
    """A compiled encoder of one kind: `fn(params, batch)` -> features, reading batch[`inputs`]."""

    fn: Callable
    inputs: tuple[str, ...]


# Batch keys `encode` passes through the encoder unchanged (when the batch has them), so that
# they are gathered from every process together with the features, in the same row order.
ROW_KEYS = {"videos": ("valid", "video_index"), "captions": ("valid", "video_index", "text_ids")}


def compile_encoder(model: RetrievalModel, mesh: Mesh, kind: str) -> Encoder:
    """The jitted encoder of `kind` ("videos" or "captions"); put batches with
    `sharding.batch_sharding(mesh)`, the outputs' sharding."""
    if kind == "videos":
        fn = lambda p, b: model.apply({"params": p}, b["video"], b["video_mask"], method=model.encode_video)
        inputs, keys = ("video", "video_mask"), VIDEO_KEYS
    elif kind == "captions":
        fn = lambda p, b: model.apply({"params": p}, b["text_ids"], b["text_mask"], b["word_weights"], method=model.encode_text)
        inputs, keys = ("text_ids", "text_mask", "word_weights"), TEXT_KEYS
    else:
        raise ValueError(f"kind must be 'videos' or 'captions', got {kind!r}")
    in_sharding = sharding.batch_sharding(mesh)
    encode_batch = lambda p, b: {**{k: v for k, v in fn(p, b).items() if k in keys}, **{k: b[k] for k in ROW_KEYS[kind] if k in b}}
    return Encoder(jax.jit(encode_batch, out_shardings=in_sharding), inputs)


def encode(model: RetrievalModel, params: dict, batches: Iterable[dict], mesh: Mesh, kind: str,
           compiled: Encoder | None = None) -> dict[str, np.ndarray]:
    """Features of every valid row of `batches` ("videos" or "captions"), whole on every process
    (each process reads its rows of every global batch, as in training).
    `compiled`: `compile_encoder(model, mesh, kind)` built once by a caller that encodes repeatedly."""
    step, inputs = compiled or compile_encoder(model, mesh, kind)
    in_sharding = sharding.batch_sharding(mesh)
    keys = tuple(dict.fromkeys(inputs + ROW_KEYS[kind]))
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        out = sharding.gather(step(params, {k: jax.make_array_from_process_local_data(in_sharding, np.asarray(batch[k]))
                                            for k in keys}))
        valid = out.pop("valid").astype(bool)
        for k, v in out.items():
            chunks.setdefault(k, []).append(v[valid])
    if not chunks:
        raise ValueError(f"no {kind} to encode: the split is empty")
    return {k: np.concatenate(v) for k, v in chunks.items()}


def score(texts: dict, videos: dict, interaction: str, cfg: LossConfig, mesh: Mesh) -> np.ndarray:
    """S (num_texts, num_videos) with `dmae_similarity`: texts split over the mesh, videos on
    every device; each device runs the blockwise loop over all videos for its rows. Inputs and
    the result are whole on every process."""
    return scorer(interaction, cfg, mesh)(texts, videos)


def scorer(interaction: str, cfg: LossConfig, mesh: Mesh) -> Callable[[dict, dict], np.ndarray]:
    """`score` with its program built once: calls on same-sized inputs compile nothing new."""
    axes = sharding.batch_axes(mesh)
    shards = sharding.num_batch_shards(mesh)
    local = lambda t, v: similarity_matrix(t, v, interaction, cfg)
    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P()), out_specs=P(axes)))

    rows, everywhere = NamedSharding(mesh, P(axes)), sharding.replicated(mesh)

    def run(texts: dict, videos: dict) -> np.ndarray:
        n = len(texts["t_cls"])
        pad = -n % shards  # repeat the first rows; their scores are cut off below
        texts = {k: sharding.global_array(np.concatenate([v, v[:pad]]) if pad else v, rows)
                 for k, v in texts.items() if k in TEXT_KEYS}
        videos = {k: sharding.global_array(v, everywhere) for k, v in videos.items() if k in VIDEO_KEYS}
        return sharding.gather(fn(texts, videos))[:n]
    return run


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
    """Evaluate a checkpoint of `workdir` on `cfg.eval.split`; writes WORKDIR/eval/.

    Model selection never looks at the test split. With `step` given, that checkpoint is
    reported; otherwise the one `select_checkpoint` names. The report says which rule chose it.
    """
    mesh = mesh or sharding.make_mesh(tuple(cfg.mesh_shape))
    selection = f"step {step} as asked"
    if step is None:
        step, selection = select_checkpoint(cfg, workdir)
    model, params, trained_step = restore_params(cfg, workdir, step, mesh)
    checkpoint = {"step": trained_step, "selection": selection, "note": "no model selection on the test split"}
    return _evaluate_params(cfg, model, params, mesh, workdir, checkpoint, f"step {trained_step}")


# Validation during training and model selection (docs/method.md section 5.2): every
# `eval_every` steps the params in memory are scored on the 'val' split (raw similarity),
# VAL_SCORE = t2v R@1 + v2t R@1 is saved with that step's checkpoint, and the checkpoint
# manager keeps the best one besides the newest. Never on the evaluated split, so never on test.
VALIDATION_SPLIT = "val"


def validation_off(cfg) -> str | None:
    """Why `cfg` runs no validation during training, or None when it does."""
    every = cfg.get("eval_every", 0)  # configs from before the field: off
    if not isinstance(every, int) or every < 0:
        raise ValueError(f"invalid config: eval_every={every!r} must be an integer >= 0 (0 = no validation)")
    if every == 0:
        return "eval_every=0"
    if cfg.eval.split == VALIDATION_SPLIT:
        return f"the '{VALIDATION_SPLIT}' split is the evaluated one (eval.split)"
    if not cfg.data_dir:
        return "no prepared dataset (data_dir is empty)"
    if not _has_split(cfg, VALIDATION_SPLIT):
        return f"the prepared {cfg.dataset} set has no '{VALIDATION_SPLIT}' split"
    return None


def validator(cfg, model: RetrievalModel, mesh: Mesh) -> Callable[[Any], dict[str, float]]:
    """fn(params) -> {val_t2v_R@1, val_v2t_R@1, val_score} on the validation split, raw similarity.
    Built once: later calls compile nothing new; params are used where (and as sharded as) they are."""
    run = split_scorer(cfg, model, mesh, VALIDATION_SPLIT)

    def validate(params) -> dict[str, float]:
        sim, texts, _, _ = run(params)
        raw = metrics_lib.multi_caption_metrics(sim, texts["video_index"])
        t2v, v2t = float(raw["t2v"]["R@1"]), float(raw["v2t"]["R@1"])
        return {"val_t2v_R@1": t2v, "val_v2t_R@1": v2t, VAL_SCORE: t2v + v2t}
    return validate


def select_checkpoint(cfg, workdir: str) -> tuple[int, str]:
    """(step, why): the checkpoint with the best validation score recorded during training (ties
    to the later step), or the last checkpoint when none was recorded. Nothing is re-scored here:
    runs trained before validation during training get their last checkpoint (or --checkpoint)."""
    manager = checkpoint_manager(workdir, cfg.keep_checkpoints)
    try:
        steps = sorted(manager.all_steps())
        recorded = {s: m[VAL_SCORE] for s in steps if isinstance(m := manager.metrics(s), dict) and VAL_SCORE in m}
    finally:
        manager.close()
    if not steps:
        raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint: train first (tvr-jax train)")
    if cfg.eval.split == VALIDATION_SPLIT:
        return steps[-1], f"last checkpoint (the '{VALIDATION_SPLIT}' split is the evaluated one: no model selection on it)"
    if not recorded:
        return steps[-1], "last checkpoint (no validation recorded during training)"
    best = max(recorded, key=lambda s: (recorded[s], s))
    scores = ", ".join(f"step {s}: {v:.2f}" for s, v in sorted(recorded.items()))
    return best, (f"best validation score during training (t2v R@1 + v2t R@1 on '{VALIDATION_SPLIT}', raw "
                  f"similarity; docs/method.md section 5.2) among kept validated checkpoints ({scores}); "
                  f"newest checkpoint: step {steps[-1]}")


def _has_split(cfg, split: str) -> bool:
    """Whether the prepared dataset holds `split` (TFDS's dataset_info.json lists them)."""
    info = os.path.join(dataset_dir(cfg.data_dir, cfg.dataset), "dataset_info.json")
    if not os.path.isfile(info):
        raise FileNotFoundError(f"{info} not found: prepare the dataset first (tvr-jax prepare) and pass --config.data_dir")
    with open(info) as f:
        return any(s.get("name") == split for s in json.load(f).get("splits", []))


def evaluate_zero_shot(cfg, workdir: str, *, mesh: Mesh | None = None) -> dict[str, Any]:
    """CLIP weights (`cfg.init_checkpoint`) with no training: meanP frames, cosine of pooled features."""

    cfg = cfg.copy_and_resolve_references()
    for item in ("model.temporal='meanP'", "model.interaction='cosine'", "model.tpm=False", "loss.lambda_tpm=0.0"):
        apply_override(cfg, item)
    validate_config(cfg)
    if not cfg.init_checkpoint:
        raise ValueError("--zero-shot evaluates CLIP weights: pass --config.init_checkpoint=PATH")
    mesh = mesh or sharding.make_mesh(tuple(cfg.mesh_shape))
    model, clip_params = build_model(cfg)
    params = model.init(jax.random.PRNGKey(0), *model.dummy_batch(1))["params"]
    params = init_from_clip(model.config, params, clip_params)
    params = jax.tree.map(lambda x: sharding.global_array(x, sharding.replicated(mesh)), params)
    checkpoint = {"zero_shot": cfg.init_checkpoint, "note": "no training: meanP, cosine of pooled features"}
    return _evaluate_params(cfg, model, params, mesh, workdir, checkpoint, "zero-shot CLIP")


def _score_split(cfg, model: RetrievalModel, params, mesh: Mesh, split: str):
    """(report, sim, texts, videos, video stream) of one split: every text against every video."""
    sim, texts, videos, video_stream = split_scorer(cfg, model, mesh, split)(params)
    return retrieval_report(sim, texts["video_index"]), sim, texts, videos, video_stream


def split_scorer(cfg, model: RetrievalModel, mesh: Mesh, split: str) -> Callable:
    """fn(params) -> (sim, texts, videos, video stream) of `split`; the encoders and the scorer
    are compiled once, so scoring again (validation during training) compiles nothing new."""
    if cfg.eval.batch_size % sharding.num_batch_shards(mesh):
        raise ValueError(f"eval.batch_size={cfg.eval.batch_size} must be divisible by the {sharding.num_batch_shards(mesh)} batch shards")
    loss_cfg = dataclasses.replace(loss_config(cfg), block_size=cfg.eval.block_size)
    encoders = {kind: compile_encoder(model, mesh, kind) for kind in ("videos", "captions")}
    sim_fn = scorer(model.config.interaction, loss_cfg, mesh)

    def run(params):
        streams = {kind: dataset_input(cfg, split, False, model.config, cfg.eval.batch_size, eval_rows=kind)
                   for kind in ("videos", "captions")}  # one pass each: fresh every call
        videos = encode(model, params, streams["videos"], mesh, "videos", encoders["videos"])
        texts = encode(model, params, streams["captions"], mesh, "captions", encoders["captions"])
        return sim_fn(texts, videos), texts, videos, streams["videos"]
    return run


def _evaluate_params(cfg, model: RetrievalModel, params, mesh: Mesh, workdir: str, checkpoint: dict, what: str) -> dict:
    """Score `cfg.eval.split` and write WORKDIR/eval/ (one process writes; all return once it exists)."""
    split = cfg.eval.split
    report, sim, texts, videos, video_stream = _score_split(cfg, model, params, mesh, split)
    report.update(checkpoint=checkpoint, split=split, dataset=cfg.dataset)
    if sharding.is_writer():
        out_dir = os.path.join(workdir, "eval")
        write_report(report, out_dir, f"{cfg.dataset} {split}, {what}")
        write_recall_curve(sim, texts["video_index"], os.path.join(out_dir, "recall_at_k.png"))
        video_ids = [video_stream.video_ids[i] for i in videos["video_index"]]
        # Thumbnails of the whole split, not only this process's rows.
        fresh_videos = dataset_input(cfg, split, False, model.config, cfg.eval.batch_size, eval_rows="videos",
                                     process_index=0, process_count=1)
        write_gallery(sim, texts, video_ids, fresh_videos, out_dir, f"{cfg.dataset} {split}, {what}")
    sharding.barrier("evaluation written")
    return report


# ----------------------------------------------------------------------------------------------
# Pictures: a recall-at-K curve and a gallery of sample queries with their top-5 videos.
# ----------------------------------------------------------------------------------------------
def recall_curve(sim: np.ndarray, caption_video: np.ndarray, max_k: int = 50) -> dict[str, np.ndarray]:
    """R@K for K = 1..max_k in both directions (the protocol of `metrics.multi_caption_metrics`)."""
    t2v = metrics_lib.ranks_of_truth(sim, caption_video)
    num_videos = sim.shape[1]
    group = np.full((num_videos, num_videos), -np.inf)
    np.maximum.at(group.T, caption_video, sim)
    v2t = metrics_lib.ranks_of_truth(group, np.arange(num_videos))
    ks = np.arange(1, min(max_k, num_videos) + 1)
    return {"K": ks, "t2v": np.array([100 * np.mean(t2v < k) for k in ks]), "v2t": np.array([100 * np.mean(v2t < k) for k in ks])}


def write_recall_curve(sim: np.ndarray, caption_video: np.ndarray, path: str) -> None:
    """recall_at_k.png: R@K against K, text->video (blue) and video->text (orange), drawn with PIL."""
    from PIL import Image, ImageDraw

    curve = recall_curve(sim, caption_video)
    w, h, left, bottom, top, right = 640, 400, 60, 40, 20, 20
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    x = lambda k: left + (k - 1) / max(curve["K"][-1] - 1, 1) * (w - left - right)
    y = lambda r: h - bottom - r / 100 * (h - top - bottom)
    draw.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    for r in range(0, 101, 20):
        draw.line([(left - 4, y(r)), (left, y(r))], fill="black")
        draw.text((left - 34, y(r) - 6), f"{r:3d}", fill="black")
    for k in (1, 5, 10, 20, 50):
        if k <= curve["K"][-1]:
            draw.line([(x(k), h - bottom), (x(k), h - bottom + 4)], fill="black")
            draw.text((x(k) - 6, h - bottom + 8), str(k), fill="black")
    for name, colour in (("t2v", (31, 119, 180)), ("v2t", (255, 127, 14))):
        draw.line([(x(k), y(r)) for k, r in zip(curve["K"], curve[name])], fill=colour, width=2)
        draw.text((w - right - 110, top + (0 if name == "t2v" else 16)), f"{name} R@K", fill=colour)
    draw.text((w // 2 - 10, h - 18), "K", fill="black")
    tmp = path + ".tmp.png"
    img.save(tmp)
    os.replace(tmp, path)


def write_gallery(sim: np.ndarray, texts: dict, video_ids: list[str], videos_stream, out_dir: str, title: str,
                  num_queries: int = 12, top: int = 5) -> None:
    """gallery.html + thumbs/: sample queries (evenly spaced over the split) with their top-5 videos'
    middle frames; the true video is framed in green, others in grey."""
    from PIL import Image

    queries = np.unique(np.linspace(0, len(sim) - 1, min(num_queries, len(sim))).astype(int))
    tops = {int(q): np.argsort(-sim[q], kind="stable")[:top] for q in queries}
    wanted = {int(v) for q in queries for v in (*tops[int(q)], texts["video_index"][q])}
    thumbs = os.path.join(out_dir, "thumbs")
    os.makedirs(thumbs, exist_ok=True)
    row = 0  # rows of the (valid) video stream, in the order `encode` saw them
    for batch in videos_stream:
        for i in np.flatnonzero(np.asarray(batch["valid"], bool)):
            if row in wanted:
                frames = np.asarray(batch["video"][i])[np.asarray(batch["video_mask"][i], bool)]
                Image.fromarray(frames[len(frames) // 2]).resize((112, 112)).save(
                    os.path.join(thumbs, f"{row}.jpg"), quality=85)
            row += 1
    tok = default_tokenizer()
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h2>{html.escape(title)}: top-{top} videos of sample queries (true video in green)</h2><table>"]
    for q in queries:
        ids = [int(t) for t in texts["text_ids"][q] if t not in (0, tok.sot_token, tok.eot_token)]
        cells = []
        for v in tops[int(q)]:
            colour = "#2a2" if v == texts["video_index"][q] else "#bbb"
            cells.append(f"<td style='text-align:center'><img src='thumbs/{v}.jpg' style='border:4px solid {colour}'>"
                         f"<br><small>{html.escape(video_ids[v])}<br>{sim[q, v]:.3f}</small></td>")
        truth = int(texts["video_index"][q])
        rank = int(metrics_lib.ranks_of_truth(sim[q : q + 1], np.array([truth]))[0]) + 1
        parts.append(f"<tr><td style='max-width:260px'>{html.escape(tok.decode(ids))}<br><small>true: "
                     f"{html.escape(video_ids[truth])}, rank {rank}</small></td>{''.join(cells)}</tr>")
    parts.append("</table></body></html>")
    path = os.path.join(out_dir, "gallery.html")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(parts))
    os.replace(path + ".tmp", path)
