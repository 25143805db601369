"""Export features to an on-disk index; rank indexed videos for free text in two stages or exhaustively.

Index layout (INDEX_DIR):
  manifest.json      the commit point, written last (temporary name, then renamed):
                     {"format": "tvr_jax.index/2", "fingerprint": the model's (parameters + scoring),
                      "scoring": {interaction, visual_attention, textual_attention, gamma, block_size},
                      "run": {"workdir", "step", "selection", "config"} of the first export, "tagger",
                      "dataset", "num_videos", "num_captions",
                      "shards": [{"dir", "dataset", "split", "run_step", "num_videos", "num_captions",
                                  "arrays": {name: {"shape", "dtype"}}, "thumbnails"}],
                      "ann": {"file", "kind", "factory", "nlist", "nprobe", "count", "generation", ...}}
  shard-NNNNN/       one per export (`tvr-jax export`) or append (`--append`), renamed into place whole:
    video_ids.json   the shard's video ids, row order of its video arrays
    frames.npy       float16 (n, T, D) L2-normalised frame tokens F
    frame_mask.npy   bool (n, T)
    frame_logits.npy float16 (n, T), only for the 'wti' interactions
    pooled.npy       float32 (n, D): what stands for each video in the first stage (`tvr_jax.ann`)
    text_*.npy       the shard's captions (t_cls, words, word_mask, word_weights, word_logits, text_ids),
                     with caption_video.npy (int32, the shard's row of each caption's video)
    thumbs/ROW.jpg   the middle frame of each video, at most 160 pixels a side
  ann-GGGGG.faiss    the first-stage index over every shard's pooled vectors (generation GGGGG)

Appending writes a new shard folder, then a new generation of the first-stage index (the old one
plus the new vectors), then the manifest; only then is the old generation removed. Until the
manifest is renamed, the index on disk is the old one, whole.

Search: the first stage returns K candidate videos (`tvr_jax.ann`), DMAE re-scores them from the
memory-mapped tokens and keeps the top-k; `exact` scores every video in chunks with a running
top-k instead (memory holds one chunk's tokens, never all pairs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipeline.prepare import read_metadata
from data_pipeline.tokenizer import default_tokenizer
from data_pipeline.word_weights import TaggerUnavailable, caption_weights, load_tagger, tagger_spec_of
from tvr_jax import ann, evaluate, sharding
from tvr_jax.experiment import dataset_input, loss_config, restore_params
from tvr_jax.objective import LossConfig, similarity_matrix

INDEX_FORMAT = "tvr_jax.index/2"
OLDER_FORMATS = ("tvr_jax.index/1",)
DEFAULT_CANDIDATES = 2000  # recall@10 0.95 at 20k videos with an exact first stage (BENCHMARKS.md)
MAX_TOP_K = 1000
_FLOAT16 = ("frames", "frame_logits", "t_cls", "words", "word_logits")
VIDEO_ARRAYS = ("frames", "frame_mask", "frame_logits")
SCORING_FIELDS = ("visual_attention", "textual_attention", "gamma", "block_size")
THUMB_SIDE = 160


# ---- writing -------------------------------------------------------------------------------------------------------


def _save_npy(path: str, array: np.ndarray) -> None:
    tmp = path + ".tmp.npy"
    try:
        np.save(tmp, array)
    except OSError as e:  # numpy's errors of a short write name neither the file nor an errno: add the file
        raise OSError(e.errno, e.strerror or str(e), e.filename or tmp) from e
    os.replace(tmp, path)


def _write_json(path: str, content: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(content, f, indent=1)
    os.replace(tmp, path)


def scoring_of(interaction: str, loss_cfg: LossConfig) -> dict:
    """What the re-ranking score depends on besides the parameters."""
    return {"interaction": interaction, **{k: getattr(loss_cfg, k) for k in SCORING_FIELDS}}


def model_fingerprint(params, scoring: dict) -> str:
    """sha256 of every parameter (name, shape, dtype, bytes) and the scoring switches: two indexes
    hold comparable features exactly when these agree."""
    h = hashlib.sha256(json.dumps(scoring, sort_keys=True).encode())
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        value = np.asarray(leaf if getattr(leaf, "is_fully_addressable", True) else sharding.gather(leaf))
        h.update(f"{jax.tree_util.keystr(path)}:{value.shape}:{value.dtype}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def read_manifest(index_dir: str) -> dict:
    """The manifest of an index of this version; a clear refusal for anything else."""
    path = os.path.join(index_dir, "manifest.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{index_dir} is not an index (no manifest.json); make one with `tvr-jax export`")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}); export the index again") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt in OLDER_FORMATS:
        raise ValueError(f"{path}: the index was written by an older tvr-jax (format {fmt!r}, this version reads "
                         f"{INDEX_FORMAT!r}); export it again into a new folder with `tvr-jax export`")
    if fmt != INDEX_FORMAT:
        raise ValueError(f"{path}: format {fmt!r}, expected {INDEX_FORMAT!r}; export the index again with `tvr-jax export`")
    return manifest


def _fresh_shard_dir(out_dir: str, manifest: dict | None) -> tuple[str, str]:
    """(name, temporary path) of the next shard; leftovers of an interrupted append (never in the manifest) are removed."""
    name = f"shard-{len(manifest['shards']) if manifest else 0:05d}"
    for leftover in (os.path.join(out_dir, name), os.path.join(out_dir, name + ".tmp")):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = os.path.join(out_dir, name + ".tmp")
    os.makedirs(tmp)
    return name, tmp


def _commit(out_dir: str, old: dict | None, name: str, tmp: str, pooled: np.ndarray, shard: dict, fields: dict) -> dict:
    """Rename the shard into place, write the first stage's next generation, then the manifest (the
    commit), then drop the previous generation."""
    os.replace(tmp, os.path.join(out_dir, name))
    if old is None:
        index, desc = ann.build(pooled)
        generation = 0
    else:
        index, desc = ann.read(os.path.join(out_dir, old["ann"]["file"])), dict(old["ann"])
        generation = old["ann"]["generation"] + 1
        if desc["kind"] == "flat" and index.ntotal + len(pooled) > ann.FLAT_MAX:
            # Past the size where scanning every vector is cheap: train the inverted file once, from the stored vectors.
            vectors = np.concatenate([*(np.load(os.path.join(out_dir, s["dir"], "pooled.npy")) for s in old["shards"]), pooled])
            index, desc = ann.build(vectors)
        else:
            index.add(np.ascontiguousarray(pooled, np.float32))
    desc.update(file=f"ann-{generation:05d}.faiss", generation=generation, count=int(index.ntotal),
                vectors="mean of valid frame tokens", query=ann.QUERY_DESCRIPTION)
    ann.write(index, os.path.join(out_dir, desc["file"]))
    shards = (old["shards"] if old else []) + [shard]
    manifest = {**(old or {}), **fields, "format": INDEX_FORMAT, "shards": shards, "ann": desc,
                "num_videos": sum(s["num_videos"] for s in shards), "num_captions": sum(s["num_captions"] for s in shards)}
    _write_json(os.path.join(out_dir, "manifest.json"), manifest)
    if old and old["ann"]["file"] != desc["file"]:
        os.remove(os.path.join(out_dir, old["ann"]["file"]))
    return manifest


def _existing_or_none(out_dir: str, append: bool) -> dict | None:
    if append:
        if not os.path.exists(os.path.join(out_dir, "manifest.json")):
            raise FileNotFoundError(f"--append: {out_dir} holds no index to append to; export without --append first")
        return read_manifest(out_dir)
    if os.path.exists(os.path.join(out_dir, "manifest.json")):
        raise FileExistsError(f"{out_dir} already holds an index; add to it with --append, or choose another --out")
    return None


def export_index(cfg, workdir: str, out_dir: str, split: str, step: int | None = None, append: bool = False,
                 thumbnails: bool = True) -> dict[str, Any]:
    """Encode every video and caption of `split` with a checkpoint of `workdir` (default: the one
    `tvr-jax eval` reports, see `evaluate.select_checkpoint`); write an index, or with `append`
    add them to the index in `out_dir` (same model only). Rerunning an export that has finished (the
    same command, e.g. after the process was killed between its commit and its exit) returns the
    index as it is: an export is done once its manifest is renamed into place."""
    finished = read_manifest(out_dir) if not append and os.path.exists(os.path.join(out_dir, "manifest.json")) else None
    old = None if finished else _existing_or_none(out_dir, append)
    selection = f"step {step} as asked"
    if step is None:  # the checkpoint `tvr-jax eval` reports: the best on validation, else the newest
        step, selection = evaluate.select_checkpoint(cfg, workdir)
    mesh = sharding.make_mesh(tuple(cfg.mesh_shape))
    model, params, trained_step = restore_params(cfg, workdir, step, mesh)
    scoring = scoring_of(model.config.interaction, loss_config(cfg))
    fingerprint = model_fingerprint(params, scoring)
    streams = {kind: dataset_input(cfg, split, False, model.config, cfg.eval.batch_size, eval_rows=kind)
               for kind in ("videos", "captions")}
    if finished is not None:
        if _already_written(out_dir, finished, fingerprint, cfg.dataset, split, trained_step, streams["videos"].video_ids):
            logging.getLogger("tvr_jax.search").info("%s already holds this export (same checkpoint and videos): "
                                                     "left as it is", out_dir)
            return finished
        _existing_or_none(out_dir, False)  # another export's index: refused, naming what to do
    if old is not None:
        _check_append(out_dir, old, fingerprint, scoring, streams["videos"].video_ids, workdir, trained_step)
    videos = evaluate.encode(model, params, streams["videos"], mesh, "videos")
    texts = evaluate.encode(model, params, streams["captions"], mesh, "captions")
    arrays = {prefix + name: value.astype(np.float16) if name in _FLOAT16 else value
              for prefix, feats in (("", videos), ("text_", texts)) for name, value in feats.items() if name != "video_index"}
    video_ids = [streams["videos"].video_ids[i] for i in videos["video_index"]]
    run = {"workdir": os.path.abspath(workdir), "step": trained_step, "selection": selection,
           "config": json.loads(cfg.to_json_best_effort())}
    manifest = None
    if sharding.is_writer():  # every process holds the same features; one writes them
        arrays["caption_video"] = _rows_of(texts["video_index"], videos["video_index"])
        arrays["pooled"] = ann.pooled_vectors(arrays["frames"], arrays["frame_mask"])
        name, tmp = _fresh_shard_dir(out_dir, old)
        for key, value in arrays.items():
            _save_npy(os.path.join(tmp, f"{key}.npy"), value)
        _write_json(os.path.join(tmp, "video_ids.json"), video_ids)
        if thumbnails:  # the whole split, not only this process's rows
            fresh = dataset_input(cfg, split, False, model.config, cfg.eval.batch_size, eval_rows="videos",
                                  process_index=0, process_count=1)
            write_thumbnails(fresh, videos["video_index"], os.path.join(tmp, "thumbs"))
        shard = {"dir": name, "dataset": cfg.dataset, "split": split, "run_step": trained_step,
                 "num_videos": len(video_ids), "num_captions": int(len(texts["video_index"])), "thumbnails": thumbnails,
                 "tagger": tagger_spec_of(streams["videos"].metadata),
                 "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}}
        fields = {} if old else {"fingerprint": fingerprint, "scoring": scoring, "dataset": cfg.dataset, "split": split,
                                 "tagger": shard["tagger"], "run": run}
        manifest = _commit(out_dir, old, name, tmp, arrays.pop("pooled"), shard, fields)
    sharding.barrier("index written")
    return manifest or read_manifest(out_dir)


def _already_written(out_dir: str, manifest: dict, fingerprint: str, dataset: str, split: str, step: int,
                     video_ids: list[str]) -> bool:
    """Whether `manifest` holds this very export alone (same model, set, split, step and videos)."""
    if manifest.get("fingerprint") != fingerprint or len(manifest["shards"]) != 1:
        return False
    last = manifest["shards"][0]
    if (last["dataset"], last["split"], last["run_step"]) != (dataset, split, step):
        return False
    with open(os.path.join(out_dir, last["dir"], "video_ids.json")) as f:
        return sorted(json.load(f)) == sorted(video_ids)


def _rows_of(video_index: np.ndarray, order: np.ndarray) -> np.ndarray:
    """For each caption, the row of its video in the exported order."""
    where = {int(v): r for r, v in enumerate(order)}
    return np.array([where[int(v)] for v in video_index], np.int32)


def _check_append(out_dir: str, old: dict, fingerprint: str, scoring: dict, new_ids: list[str], workdir: str, step: int):
    if old.get("fingerprint") != fingerprint:
        run = old.get("run", {})
        raise ValueError(
            f"{out_dir} holds features of another model (fingerprint {str(old.get('fingerprint'))[:12]}, run "
            f"{run.get('workdir')} step {run.get('step')}, scoring {old.get('scoring')}); this export's checkpoint "
            f"({workdir} step {step}, scoring {scoring}) has fingerprint {fingerprint[:12]}. Scores of two models "
            "cannot be ranked together: export into a new folder, or append with the index's checkpoint")
    known = set()
    for s in old["shards"]:
        with open(os.path.join(out_dir, s["dir"], "video_ids.json")) as f:
            known.update(json.load(f))
    dup = sorted(known.intersection(new_ids))
    if dup:
        raise ValueError(f"{out_dir} already holds {len(dup)} of these videos (e.g. {', '.join(dup[:3])}): an append "
                         "adds new videos only; export the others from a split without them")


def write_thumbnails(video_stream, order: np.ndarray, folder: str) -> None:
    """folder/ROW.jpg: each video's middle valid frame, at most THUMB_SIDE pixels a side; ROW is the
    video's row in `order` (the encoded order, matched through the stream's video_index)."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    row_of = {int(v): r for r, v in enumerate(order)}
    for batch in video_stream:
        for i in np.flatnonzero(np.asarray(batch["valid"], bool)):
            frames = np.asarray(batch["video"][i])[np.asarray(batch["video_mask"][i], bool)]
            img = Image.fromarray(np.asarray(frames[len(frames) // 2], np.uint8))
            img.thumbnail((THUMB_SIDE, THUMB_SIDE))
            path = os.path.join(folder, f"{row_of[int(batch['video_index'][i])]}.jpg")
            img.save(path + ".tmp", format="JPEG", quality=85)
            os.replace(path + ".tmp", path)


def write_features_index(out_dir: str, chunks: Iterable[dict], num_videos: int, frames_per_video: int, dim: int,
                         interaction: str, loss: LossConfig, ids: Callable[[int], str] = lambda r: f"v{r:07d}",
                         append: bool = False, fingerprint: str = "features-only",
                         thumbnails: Callable[[str, int], None] | None = None) -> dict:
    """An index from video features alone (no model, no captions), written chunk by chunk, never
    whole in memory: what the search benchmark builds at a million videos. `thumbnails(folder,
    first_row)`, if given, writes the shard's thumbs/ROW.jpg files."""
    old = _existing_or_none(out_dir, append)
    scoring = scoring_of(interaction, loss)
    if old is not None and (old.get("fingerprint") != fingerprint or old.get("scoring") != scoring):
        raise ValueError(f"{out_dir} holds features of another model (fingerprint {old.get('fingerprint')})")
    name, tmp = _fresh_shard_dir(out_dir, old)
    frames = np.lib.format.open_memmap(os.path.join(tmp, "frames.npy"), mode="w+", dtype=np.float16,
                                       shape=(num_videos, frames_per_video, dim))
    mask = np.zeros((num_videos, frames_per_video), bool)
    pooled = np.zeros((num_videos, dim), np.float32)
    start = 0
    for chunk in chunks:
        n = len(chunk["frames"])
        frames[start : start + n] = chunk["frames"]
        mask[start : start + n] = chunk["frame_mask"]
        pooled[start : start + n] = ann.pooled_vectors(chunk["frames"], chunk["frame_mask"])
        start += n
    if start != num_videos:
        raise ValueError(f"the chunks held {start} videos, expected {num_videos}")
    frames.flush()
    del frames
    np.save(os.path.join(tmp, "frame_mask.npy"), mask)
    np.save(os.path.join(tmp, "pooled.npy"), pooled)
    offset = old["num_videos"] if old else 0
    _write_json(os.path.join(tmp, "video_ids.json"), [ids(offset + r) for r in range(num_videos)])
    if thumbnails is not None:
        thumbnails(os.path.join(tmp, "thumbs"), offset)
    shard = {"dir": name, "dataset": "features", "split": None, "num_videos": num_videos, "num_captions": 0,
             "thumbnails": thumbnails is not None, "arrays": {"frames": {"shape": [num_videos, frames_per_video, dim], "dtype": "float16"},
                                             "frame_mask": {"shape": [num_videos, frames_per_video], "dtype": "bool"}}}
    fields = {} if old else {"fingerprint": fingerprint, "scoring": scoring, "dataset": "features", "tagger": None,
                             "run": None}
    return _commit(out_dir, old, name, tmp, pooled, shard, fields)


# ---- reading -------------------------------------------------------------------------------------------------------


class Rows:
    """Row-wise concatenation of per-shard (memory-mapped) arrays: `len`, `shape`, slices and sorted
    integer rows, reading only the rows asked for."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("Rows supports contiguous slices only")
            key = np.arange(start, stop)
        rows = np.asarray(key, np.int64)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for s in np.unique(shard):
            where = shard == s
            local = rows[where] - self.offsets[s]
            if len(local) and local[-1] - local[0] + 1 == len(local):  # contiguous: one slice
                out[where] = self.parts[s][local[0] : local[-1] + 1]
            else:
                out[where] = self.parts[s][local]
        return out


def load_index(index_dir: str) -> tuple[dict, list[str], dict[str, Rows]]:
    """(manifest, video ids, video arrays of all shards, memory-mapped)."""
    manifest = read_manifest(index_dir)
    video_ids: list[str] = []
    parts: dict[str, list[np.ndarray]] = {}
    for s in manifest["shards"]:
        folder = os.path.join(index_dir, s["dir"])
        with open(os.path.join(folder, "video_ids.json")) as f:
            video_ids += json.load(f)
        for name in VIDEO_ARRAYS:
            if name in s["arrays"]:
                parts.setdefault(name, []).append(np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r"))
    if len(video_ids) != manifest["num_videos"]:
        raise ValueError(f"{index_dir}: the manifest counts {manifest['num_videos']} videos, the shards list {len(video_ids)}; "
                         "export the index again")
    return manifest, video_ids, {name: Rows(p) for name, p in parts.items()}


def load_captions(index_dir: str) -> dict[str, np.ndarray]:
    """Every shard's encoded captions (text_* arrays without the prefix), caption_video as global rows."""
    manifest = read_manifest(index_dir)
    out: dict[str, list[np.ndarray]] = {}
    offset = 0
    for s in manifest["shards"]:
        folder = os.path.join(index_dir, s["dir"])
        for name in s["arrays"]:
            if name.startswith("text_"):
                out.setdefault(name[5:], []).append(np.load(os.path.join(folder, f"{name}.npy")))
        if "caption_video" in s["arrays"]:
            out.setdefault("caption_video", []).append(np.load(os.path.join(folder, "caption_video.npy")) + offset)
        offset += s["num_videos"]
    return {k: np.concatenate(v) for k, v in out.items()}


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


# ---- searching -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hit:
    row: int
    video_id: str
    score: float
    thumbnail: str | None  # path inside the index folder, or None when the index has none


@dataclasses.dataclass(frozen=True)
class SearchResult:
    path: str  # "two-stage" or "exact"
    hits: list[Hit]
    candidates: int | None  # re-scored by DMAE: K (two-stage) or every video (exact)
    first_stage: str | None  # e.g. "IVF4096,SQ8 nprobe 64"
    seconds: float

    def describe(self, num_videos: int) -> str:
        if self.path == "exact":
            return f"exact: DMAE over all {num_videos:,} videos, {1e3 * self.seconds:.1f} ms"
        return (f"two-stage: {self.first_stage} -> {self.candidates:,} of {num_videos:,} videos re-ranked by DMAE, "
                f"{1e3 * self.seconds:.1f} ms")


def _bucket(n: int) -> int:
    """Candidate batches padded to a power of two (at least 64): a handful of compiled shapes."""
    return max(64, 1 << (max(n, 1) - 1).bit_length())


class Searcher:
    """An index opened once: memory-mapped tokens, the first stage in memory, compiled scorers, and
    (with `model`) the text encoder, tokenizer and tagger. Safe to call from several threads: a
    search reads shared state only (faiss searches are read-only, nprobe is passed per call)."""

    def __init__(self, index_dir: str, model: bool = True, encoder: Callable[[str], dict] | None = None):
        """`model`: load the checkpoint the manifest names to encode text queries; `encoder`: encode
        them with this function instead (str -> encoded text dict of batch 1)."""
        self.index_dir = index_dir
        self.manifest, self.video_ids, self.videos = load_index(index_dir)
        self.num_videos = len(self.video_ids)
        scoring = self.manifest["scoring"]
        self.interaction = scoring["interaction"]
        self.loss_cfg = LossConfig(**{k: scoring[k] for k in SCORING_FIELDS})
        desc = self.manifest["ann"]
        self.ann = ann.read(os.path.join(index_dir, desc["file"]))
        self.ann_desc = desc["factory"] + (f" nprobe {desc['nprobe']}" if desc.get("nprobe") else "")
        self._shard_of_row = np.cumsum([0] + [s["num_videos"] for s in self.manifest["shards"]])
        self._score = jax.jit(lambda t, v: similarity_matrix(t, v, self.interaction, self.loss_cfg)[0])
        self._encode = None
        self._encoder = encoder
        if model and encoder is None:
            self._load_model()

    def _load_model(self) -> None:
        run = self.manifest.get("run")
        if not run:
            raise ValueError(f"{self.index_dir} holds features without a model: search it with encoded queries only")
        cfg = ml_collections.ConfigDict(run["config"])
        model, params, _ = restore_params(cfg, run["workdir"], run["step"])
        if model_fingerprint(params, self.manifest["scoring"]) != self.manifest["fingerprint"]:
            raise ValueError(f"the checkpoint {run['workdir']} step {run['step']} is no longer the model that exported "
                             f"{self.index_dir} (parameters differ): export the index again")
        self.max_words = model.config.max_words
        self.tokenizer = default_tokenizer()
        self.tagger = index_tagger(self.manifest, cfg)
        self._encode = jax.jit(lambda ids, w: model.apply({"params": params}, ids, ids > 0, w, method=model.encode_text))
        self._tok_lock = threading.Lock()  # the tokenizer's and tagger's caches are not meant for concurrent writers

    def encode_query(self, query: str) -> dict[str, np.ndarray]:
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the query is empty: give a sentence describing the video")
        if self._encoder is not None:
            return self._encoder(query)
        if self._encode is None:
            raise ValueError("this index was opened without its model: pass encoded queries")
        with self._tok_lock:
            caption = self.tokenizer.tokenize_caption(query, self.max_words)
            weights = caption_weights([caption], self.tagger)[0]
        ids = np.zeros((1, self.max_words), np.int32)
        ids[0, : len(caption.ids)] = caption.ids
        w = np.zeros(ids.shape, np.float32)
        w[0, : len(caption.ids)] = weights
        return {k: np.asarray(v) for k, v in self._encode(jnp.asarray(ids), jnp.asarray(w)).items()}

    def search(self, query: str, top_k: int = 10, candidates: int | None = None, exact: bool = False,
               nprobe: int | None = None, chunk: int = 8192) -> SearchResult:
        """The `top_k` indexed videos for a free-text query, by DMAE: over K first-stage candidates,
        or over every video with `exact`."""
        check_top_k(top_k)
        t0 = time.perf_counter()
        text = self.encode_query(query)
        return self.search_encoded(text, top_k, candidates, exact, nprobe, chunk, started=t0)

    def search_encoded(self, text: dict, top_k: int = 10, candidates: int | None = None, exact: bool = False,
                       nprobe: int | None = None, chunk: int = 8192, started: float | None = None) -> SearchResult:
        check_top_k(top_k)
        t0 = started if started is not None else time.perf_counter()
        jtext = {k: jnp.asarray(np.asarray(v, np.float32) if np.asarray(v).dtype == np.float16 else v)
                 for k, v in text.items() if k in ("t_cls", "words", "word_mask", "word_weights", "word_logits")}
        if exact:
            rows, scores = rank_videos(jtext, self.videos, self.interaction, self.loss_cfg, top_k, chunk, score=self._score)
            path, k, first = "exact", self.num_videos, None
        else:
            k = DEFAULT_CANDIDATES if candidates is None else int(candidates)
            if k < 1:
                raise ValueError(f"candidates must be >= 1, got {k}")
            k = max(min(k, self.num_videos), min(top_k, self.num_videos))
            query = ann.query_vectors(text, self.interaction)
            _, found = ann.search(self.ann, query, k, nprobe)
            if (found >= 0).sum() < min(top_k, self.num_videos):  # the probed lists held too few: probe them all
                _, found = ann.search(self.ann, query, k, getattr(self.ann, "nlist", None))
            rows, scores = self.rerank(jtext, np.unique(found[found >= 0]), top_k)
            path, first = "two-stage", self.ann_desc if nprobe is None else f"{self.manifest['ann']['factory']} nprobe {nprobe}"
        hits = [Hit(int(r), self.video_ids[r], float(s), self.thumbnail(int(r))) for r, s in zip(rows, scores)]
        return SearchResult(path, hits, k, first, time.perf_counter() - t0)

    def rerank(self, text: dict, rows: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """DMAE of `text` against the videos at sorted `rows`: top-k (rows, scores), ties to the lower row."""
        part = {name: arr[rows] for name, arr in self.videos.items()}
        pad = _bucket(len(rows)) - len(rows)
        part = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) if pad else v for k, v in part.items()}
        part = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in part.items()}
        if pad:  # padded videos get one valid (zero) frame: finite scores, cut off below
            part["frame_mask"][len(rows):, 0] = True
        s = np.asarray(self._score(text, part))[: len(rows)]
        keep = np.argsort(-s, kind="stable")[:top_k]
        return rows[keep], s[keep]

    def thumbnail(self, row: int) -> str | None:
        """The thumbnail's path inside the index folder, or None."""
        if not 0 <= row < self.num_videos:
            return None
        s = int(np.searchsorted(self._shard_of_row, row, side="right") - 1)
        shard = self.manifest["shards"][s]
        if not shard.get("thumbnails"):
            return None
        return f"{shard['dir']}/thumbs/{row - self._shard_of_row[s]}.jpg"


def check_top_k(top_k: int) -> None:
    if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}")


def search(index_dir: str, query: str, top_k: int = 10, chunk: int = 8192, candidates: int | None = None,
           exact: bool = False, nprobe: int | None = None) -> SearchResult:
    """The `top_k` indexed videos for a free-text query (opens the index and loads the model each call)."""
    check_top_k(top_k)
    return Searcher(index_dir).search(query, top_k, candidates, exact, nprobe, chunk)


def rank_videos(text: dict, videos: dict, interaction: str, loss_cfg, top_k: int = 10,
                chunk: int = 8192, score: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (rows, scores) of one encoded text against (possibly memory-mapped) video arrays,
    scored chunk by chunk with a running top-k; ties go to the lower row."""
    score = score or jax.jit(lambda t, v: similarity_matrix(t, v, interaction, loss_cfg)[0])
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
