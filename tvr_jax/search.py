"""Export a split's token features to an on-disk index, and rank indexed videos for free text.

Index layout (INDEX_DIR, every file written to a temporary name and renamed; the manifest last):
  manifest.json    {"format": "tvr_jax.index/1", "dataset", "split", "num_videos", "num_captions",
                    "arrays": {name: {"shape", "dtype"}}, "run": {"workdir", "step", "config"},
                    "tagger": the dataset's word-weight tagger, which search weighs queries with}
  video_ids.json   the split's video ids, row order of the video arrays
  frames.npy       float16 (N, T, D) L2-normalised frame tokens F
  frame_mask.npy   bool (N, T)
  frame_logits.npy float16 (N, T), only for the 'wti' interactions
  text_*.npy       the same for the split's captions (t_cls, words, word_mask, word_weights,
                   word_logits), with caption_video.npy (int32, the video of each caption)

Search reads the video arrays memory-mapped and scores them in chunks with the training
similarity, keeping a running top-k: memory holds one chunk's tokens, never all pairs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipeline.prepare import read_metadata
from data_pipeline.tokenizer import default_tokenizer
from data_pipeline.word_weights import TaggerUnavailable, caption_weights, load_tagger, tagger_spec_of
from tvr_jax import evaluate, sharding
from tvr_jax.experiment import dataset_input, loss_config, restore_params
from tvr_jax.objective import similarity_matrix

INDEX_FORMAT = "tvr_jax.index/1"
_FLOAT16 = ("frames", "frame_logits", "t_cls", "words", "word_logits")


def _save_npy(path: str, array: np.ndarray) -> None:
    tmp = path + ".tmp.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def export_index(cfg, workdir: str, out_dir: str, split: str, step: int | None = None) -> dict[str, Any]:
    """Encode every video and caption of `split` with a checkpoint of `workdir` (default: the one
    `tvr-jax eval` reports, see `evaluate.select_checkpoint`); write the index."""
    if os.path.exists(os.path.join(out_dir, "manifest.json")):
        raise FileExistsError(f"{out_dir} already holds an index; choose another --out or delete it")
    selection = f"step {step} as asked"
    if step is None:  # the checkpoint `tvr-jax eval` reports: the best on validation, else the newest
        step, selection = evaluate.select_checkpoint(cfg, workdir)
    mesh = sharding.make_mesh(tuple(cfg.mesh_shape))
    model, params, trained_step = restore_params(cfg, workdir, step, mesh)
    streams = {kind: dataset_input(cfg, split, False, model.config, cfg.eval.batch_size, eval_rows=kind)
               for kind in ("videos", "captions")}
    videos = evaluate.encode(model, params, streams["videos"], mesh, "videos")
    texts = evaluate.encode(model, params, streams["captions"], mesh, "captions")
    arrays = {prefix + name: value.astype(np.float16) if name in _FLOAT16 else value
              for prefix, feats in (("", videos), ("text_", texts)) for name, value in feats.items() if name != "video_index"}
    video_ids = [streams["videos"].video_ids[i] for i in videos["video_index"]]
    manifest = {"format": INDEX_FORMAT, "dataset": cfg.dataset, "split": split, "num_videos": len(video_ids),
                "num_captions": int(len(texts["video_index"])),
                "arrays": {name: {"shape": list(v.shape), "dtype": str(v.dtype)} for name, v in arrays.items()},
                "tagger": tagger_spec_of(streams["videos"].metadata),
                "run": {"workdir": os.path.abspath(workdir), "step": trained_step, "selection": selection, "config": json.loads(cfg.to_json_best_effort())}}
    if sharding.is_writer():  # every process holds the same features; one writes them
        arrays["caption_video"] = texts["video_index"].astype(np.int32)
        _write_index(out_dir, arrays, video_ids, manifest)
    sharding.barrier("index written")
    return manifest


def _write_index(out_dir: str, arrays: dict[str, np.ndarray], video_ids: list[str], manifest: dict) -> None:
    """NAME.npy for each array, then video_ids.json, then the manifest: each renamed into place."""
    os.makedirs(out_dir, exist_ok=True)
    for name, value in arrays.items():
        _save_npy(os.path.join(out_dir, f"{name}.npy"), value)
    for name, content in (("video_ids.json", video_ids), ("manifest.json", manifest)):
        tmp = os.path.join(out_dir, name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(content, f, indent=1)
        os.replace(tmp, os.path.join(out_dir, name))


def load_index(index_dir: str) -> tuple[dict, list[str], dict[str, np.ndarray]]:
    """(manifest, video ids, memory-mapped video arrays)."""
    path = os.path.join(index_dir, "manifest.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{index_dir} is not an index (no manifest.json); make one with `tvr-jax export`")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {INDEX_FORMAT!r}")
    with open(os.path.join(index_dir, "video_ids.json")) as f:
        video_ids = json.load(f)
    videos = {name: np.load(os.path.join(index_dir, f"{name}.npy"), mmap_mode="r")
              for name in ("frames", "frame_mask", "frame_logits") if name in manifest["arrays"]}
    return manifest, video_ids, videos


def search(index_dir: str, query: str, top_k: int = 10, chunk: int = 8192) -> list[tuple[str, float]]:
    """The `top_k` indexed videos for a free-text query, by the model's similarity."""
    manifest, video_ids, videos = load_index(index_dir)
    cfg = ml_collections.ConfigDict(manifest["run"]["config"])
    model, params, _ = restore_params(cfg, manifest["run"]["workdir"], manifest["run"]["step"])
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    caption = default_tokenizer().tokenize_caption(query, model.config.max_words)
    ids = np.zeros((1, model.config.max_words), np.int32)
    ids[0, : len(caption.ids)] = caption.ids
    weights = np.zeros(ids.shape, np.float32)
    weights[0, : len(caption.ids)] = caption_weights([caption], index_tagger(manifest, cfg))[0]
    text = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(ids > 0), jnp.asarray(weights, jnp.float32),
                       method=model.encode_text)
    rows, scores = rank_videos(text, videos, model.config.interaction, loss_config(cfg), top_k, chunk)
    return [(video_ids[r], float(s)) for r, s in zip(rows, scores)]


def index_tagger(manifest: dict, cfg):
    """The tagger the index's dataset was prepared with: query words must be weighed as its captions were."""
    spec = manifest.get("tagger")
    if not spec:  # an index exported before the manifest recorded it: ask the dataset
        metadata = read_metadata(cfg.data_dir, cfg.dataset) if cfg.get("data_dir") else None
        spec = tagger_spec_of(metadata) if metadata else None
    if not spec:
        raise ValueError(f"the index records no word-weight tagger and its dataset ({cfg.get('data_dir')!r}, {cfg.dataset}) "
                         "is not readable; export the index again with `tvr-jax export`")
    try:
        return load_tagger(spec)
    except TaggerUnavailable as e:
        raise TaggerUnavailable(f"the index's dataset {manifest.get('dataset')} was tagged with {spec!r} and queries "
                                f"must be weighed the same way, but {e.reason}", e.hint) from None


def rank_videos(text: dict, videos: dict[str, np.ndarray], interaction: str, loss_cfg, top_k: int = 10,
                chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (rows, scores) of one encoded text against (possibly memory-mapped) video arrays,
    scored chunk by chunk with a running top-k."""
    score = jax.jit(lambda t, v: similarity_matrix(t, v, interaction, loss_cfg)[0])
    best_scores, best_rows = np.empty(0, np.float32), np.empty(0, np.int64)
    n = len(videos["frames"])
    for start in range(0, n, chunk):
        part = {k: np.asarray(v[start : start + chunk]) for k, v in videos.items()}
        part = {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in part.items()}
        if len(part["frames"]) < chunk and n > chunk:  # pad the last chunk: one compiled shape
            pad = chunk - len(part["frames"])
            part = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in part.items()}
        s = np.asarray(score(text, part))[: min(chunk, n - start)]
        best_scores = np.concatenate([best_scores, s])
        best_rows = np.concatenate([best_rows, np.arange(start, start + len(s))])
        keep = np.argsort(-best_scores, kind="stable")[:top_k]
        best_scores, best_rows = best_scores[keep], best_rows[keep]
    return best_rows, best_scores
