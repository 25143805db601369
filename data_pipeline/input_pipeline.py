"""tf.data input over a prepared dataset: sample frame indices, decode only those JPEGs, batch per host.

    pipe = VideoTextInput(DATA_DIR/"msrvtt/1.0.0", InputConfig(split="train", training=True, global_batch_size=128))
    for batch in pipe: ...                 # numpy dicts, this host's share of each global batch
    state = pipe.state(); ...; pipe.restore(state)     # exact resume
    pipe.close()                                       # stop its threads (done at exit too)

Batch schema (numpy; B = global_batch_size / process_count rows on each host):

| key | dtype, shape | content |
|---|---|---|
| video | uint8 (B, T, H, W, 3) | RGB frames, 0-255; the model normalises them on the device (CLIP's mean and std, `tvr_jax.models.clip.normalize_pixels`). `pixels="float32"`: CLIP-normalised on the host instead, (x / 255 - mean) / std |
| video_mask | bool (B, T) | True on real frames; a video with fewer than T frames fills the rest with its last frame, False here |
| text_ids | int32 (B, L) | CLIP ids: 49406 (start), BPE ids, 49407 (end), 0 padding; longer captions keep their first L - 2 tokens and the end token |
| text_mask | bool (B, L) | text_ids != 0 |
| word_weights | float32 (B, L) | 2 on tokens of content words, 1 on other word tokens, 0 on start, end and padding (docs/method.md 2.2) |
| video_index | int32 (B,) | row of the video in the split: `metadata["splits"][split]["video_ids"][video_index]` |
| caption_index | int32 (B,) | caption's index in the split, counting the videos' captions in order; -1 where a row has no text |
| valid | bool (B,) | False on the rows that pad the last evaluation batch (they repeat a real row); True in training |

Evaluation rows (`eval_rows`): "pairs" (every caption with its video; for one-query-per-video
sets that is every video once), "videos" (each video once; no text keys) or "captions" (each
caption once; no video keys) -- MSVD's multi-caption test encodes 670 videos, not 27k pairs.

Sampling: T frame indices are chosen before any JPEG is read (`video.sample_frame_indices`):
uniform, in training as in evaluation (the paper's sampling), unless training asks for
`frame_sampling="random_segment"` (one random frame per segment, an augmentation). Crop: a square of the
frame's short side, centred (evaluation, and training by default) or, with `random_crop`, of
80-100 % of it at a random place; then resized to H x W. `random_flip` flips a whole clip
left-right: wrong for any caption that names left or right.

Pixels leave the host as uint8, a quarter of the bytes of float32 to batch, copy and send to an
accelerator; normalising is one multiply-add on the device. Where no resizing happens (frames
stored at the model's size, centre crop: what `prepare` writes for the configs' sizes) the
normalised values are those of the float32 path; a resized frame is rounded to whole grey
levels first (at most half a level, 0.0076 after normalising, from the float32 path).

Order and randomness are pure functions of (seed, epoch, row position): training visits a
seeded permutation of the split every epoch (dropping the last partial global batch), with a
fresh random caption per video per epoch (`caption_sampling="random"`) or every pair
(`"all"`); evaluation goes in annotation order, once, padding the last global batch. Each
host takes its contiguous share of every global batch, so the global batch is the same
whatever the number of hosts. The iterator's position is (epoch, batch): `state()` /
`restore()` resume exactly.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import json
import os
import threading
import weakref
from typing import Any, Iterator

import numpy as np

from data_pipeline.video import FRAME_SAMPLINGS, sample_frame_indices

# CLIP's pixel statistics, for `pixels="float32"` (host normalisation); the device path uses the
# same numbers from tvr_jax.models.clip (this package does not import the model); the test that
# compares the two paths (tests/test_data_input_pipeline.py) fails if they drift apart.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PIXELS = ("uint8", "float32")
START_TOKEN, END_TOKEN = 49406, 49407
DEFAULT_FRAMES = {"sentence": 12, "paragraph": 64}
DEFAULT_WORDS = {"sentence": 32, "paragraph": 64}
RANDOM_CROP_SCALE = (0.8, 1.0)


@dataclasses.dataclass(frozen=True)
class InputConfig:
    split: str
    training: bool
    global_batch_size: int
    num_frames: int | None = None        # T; None: 12 for sentence queries, 64 for paragraph queries
    max_words: int | None = None         # L; None: 32 / 64
    image_size: int = 224                # H = W
    caption_sampling: str = "random"     # training: "random" (one per video per epoch) or "all" (every pair)
    frame_sampling: str = "uniform"      # training: "uniform" (the paper's) or "random_segment"; evaluation is uniform
    eval_rows: str = "pairs"             # evaluation: "pairs", "videos" or "captions"
    random_crop: bool = False
    random_flip: bool = False
    seed: int = 0
    process_index: int | None = None     # None: jax.process_index()
    process_count: int | None = None     # None: jax.process_count()
    prefetch_batches: int = 2
    num_parallel_calls: int | None = None  # None: tf.data.AUTOTUNE
    pixels: str = "uint8"                # "uint8": raw RGB, normalised on the device; "float32": CLIP-normalised here


class VideoTextInput:
    """Iterator of numpy batches over one split of a prepared dataset (see the module docstring)."""

    def __init__(self, dataset_dir: str, config: InputConfig):
        import tensorflow_datasets as tfds

        if not os.path.isfile(os.path.join(dataset_dir, "dataset_info.json")):
            raise FileNotFoundError(f"{dataset_dir} is not a prepared dataset (no dataset_info.json); run `tvr-jax prepare` and pass DATA_DIR/<set>/<version>")
        self.dataset_dir = dataset_dir
        self.builder = tfds.builder_from_directory(dataset_dir)
        self.metadata = dict(self.builder.info.metadata or {})
        if "splits" not in self.metadata or "query_mode" not in self.metadata:
            raise ValueError(f"{dataset_dir}: metadata.json lacks 'splits'/'query_mode'; it was not written by data_pipeline.prepare, prepare it again")
        if config.split not in self.metadata["splits"]:
            split, have = config.split, sorted(self.metadata["splits"])
            hint = (f"; to evaluate your own videos, give some rows split '{split}' in the annotation file and prepare "
                    "again with --rebuild" if self.metadata.get("dataset") == "custom" else "")
            raise ValueError(f"{dataset_dir} has no split {split!r}; it has {have}: use one of those (eval and export: "
                             f"--config.eval.split / --split) or prepare the set with a {split!r} split{hint}")
        self.query_mode = self.metadata["query_mode"]
        self.config = config = dataclasses.replace(
            config,
            num_frames=config.num_frames or DEFAULT_FRAMES[self.query_mode],
            max_words=config.max_words or DEFAULT_WORDS[self.query_mode],
        )
        self._check_config(config)
        split_meta = self.metadata["splits"][config.split]
        self.video_ids: list[str] = list(split_meta["video_ids"])
        self.num_captions = np.asarray(split_meta["num_captions"], np.int64)
        self.num_frames = np.asarray(split_meta["num_frames"], np.int64)
        self.caption_offsets = np.concatenate([[0], np.cumsum(self.num_captions)])
        self.captions_total = int(self.caption_offsets[-1])
        if len(self.num_frames) != len(self.video_ids):
            raise ValueError(f"{dataset_dir}: metadata lists {len(self.video_ids)} videos but {len(self.num_frames)} frame counts; prepare it again")

        if config.process_index is None or config.process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        else:
            process_index, process_count = config.process_index, config.process_count
        if config.global_batch_size % process_count:
            raise ValueError(f"global_batch_size {config.global_batch_size} is not divisible by the {process_count} hosts")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} outside 0..{process_count - 1}")
        self.process_index, self.process_count = process_index, process_count
        self.host_batch_size = config.global_batch_size // process_count

        self._rows = self._make_rows()
        n = len(self._rows)
        if config.training:
            self.batches_per_epoch = n // config.global_batch_size
            if self.batches_per_epoch == 0:
                raise ValueError(f"split {config.split!r} has {n} training rows, fewer than one global batch of {config.global_batch_size}; lower the batch size")
        else:
            self.batches_per_epoch = -(-n // config.global_batch_size)
        self.with_video = config.training or config.eval_rows in ("pairs", "videos")
        self.with_text = config.training or config.eval_rows in ("pairs", "captions")
        # Opened here, in the constructing thread: opening it lazily inside tf.data's threads
        # (which run `_read_row` holding the GIL) deadlocked. Reads are serialised by a lock:
        # one takes ~0.2 ms, the JPEG decoding that follows runs in parallel outside it.
        self._source = self.builder.as_data_source(config.split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        self._source_lock = threading.Lock()
        self._epoch, self._batch = 0, 0
        self._iterator: Iterator | None = None
        _OPEN_PIPELINES.add(self)

    # ------------------------------------------------------------------ public

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if not self.config.training and self._batch >= self.batches_per_epoch:
            raise StopIteration
        if self._iterator is None:
            self._iterator = self._dataset(self._epoch, self._batch).as_numpy_iterator()
        batch = next(self._iterator)
        self._batch += 1
        if self.config.training and self._batch == self.batches_per_epoch:
            self._epoch, self._batch = self._epoch + 1, 0
        return batch

    def close(self) -> None:
        """Stop the background tf.data threads (also done for every open pipeline at exit)."""
        self._iterator = None
        gc.collect()

    def __len__(self) -> int:
        """Batches per epoch (evaluation: in the single pass)."""
        return self.batches_per_epoch

    def state(self) -> dict[str, Any]:
        """The position of the next batch, plus what must match for a restore to be exact."""
        return {"epoch": self._epoch, "batch": self._batch, "fingerprint": self._fingerprint()}

    def restore(self, state: dict[str, Any]) -> None:
        if not _same_order(state.get("fingerprint"), self._fingerprint()):
            raise ValueError(f"iterator state was saved by a different input configuration:\n saved   {state.get('fingerprint')}\n current {self._fingerprint()}")
        if not 0 <= state["batch"] < max(self.batches_per_epoch, 1) + (0 if self.config.training else 1):
            raise ValueError(f"iterator state batch {state['batch']} outside 0..{self.batches_per_epoch - 1}")
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])
        self._iterator = None

    # ------------------------------------------------------------------ rows

    def _check_config(self, c: InputConfig) -> None:
        if c.caption_sampling not in ("random", "all"):
            raise ValueError(f"caption_sampling must be 'random' or 'all', got {c.caption_sampling!r}")
        if c.frame_sampling not in FRAME_SAMPLINGS:
            raise ValueError(f"frame_sampling must be one of {FRAME_SAMPLINGS}, got {c.frame_sampling!r}")
        if c.pixels not in PIXELS:
            raise ValueError(f"pixels must be one of {PIXELS}, got {c.pixels!r}")
        if c.eval_rows not in ("pairs", "videos", "captions"):
            raise ValueError(f"eval_rows must be 'pairs', 'videos' or 'captions', got {c.eval_rows!r}")
        if c.global_batch_size < 1 or c.num_frames < 1 or c.max_words < 2 or c.image_size < 1:
            raise ValueError(f"need global_batch_size >= 1, num_frames >= 1, max_words >= 2, image_size >= 1: {c}")
        if c.max_words > 77:
            raise ValueError(f"max_words {c.max_words} exceeds CLIP's context of 77 tokens the dataset stores")

    def _make_rows(self) -> np.ndarray:
        """(video_index, caption_index) per row of an epoch, before shuffling; -1: chosen per epoch / none."""
        videos = np.arange(len(self.video_ids))
        c = self.config
        if (c.training and c.caption_sampling == "random") or (not c.training and c.eval_rows == "videos"):
            return np.stack([videos, np.full_like(videos, -1)], 1)
        video_of_caption = np.repeat(videos, self.num_captions)
        return np.stack([video_of_caption, np.arange(self.captions_total)], 1)

    def _fingerprint(self) -> str:
        """What fixes the order of global batches. Not the hosts: a position counts global
        batches, so a state restores on any number of hosts (each then reads its own rows)."""
        c = self.config
        return json.dumps({
            "dataset": self.metadata.get("dataset"), "split": c.split, "training": c.training, "seed": c.seed,
            "global_batch_size": c.global_batch_size,
            "rows": len(self._rows), "caption_sampling": c.caption_sampling if c.training else c.eval_rows,
            "frame_sampling": c.frame_sampling if c.training else "uniform",
        }, sort_keys=True)

    def _epoch_rows(self, epoch: int, start_batch: int = 0) -> tuple[np.ndarray, ...]:
        """This host's rows of `epoch` from `start_batch` on; randomness keyed by (seed, epoch, row).

        Keyed by the row's position in the global batch, not by host, so a global batch is the
        same whatever the number of hosts it is split over.
        """
        c, G, B = self.config, self.config.global_batch_size, self.host_batch_size
        n = len(self._rows)
        order = np.random.default_rng([c.seed, epoch, 0x5EED]).permutation(n) if c.training else np.arange(n)
        positions = [
            p for batch in range(start_batch, self.batches_per_epoch)
            for p in range(batch * G + self.process_index * B, batch * G + (self.process_index + 1) * B)
        ]
        rows = len(positions)
        video = np.zeros(rows, np.int32)
        caption = np.zeros(rows, np.int32)
        valid = np.zeros(rows, bool)
        frames = np.zeros((rows, c.num_frames), np.int32)
        frame_mask = np.zeros((rows, c.num_frames), bool)
        sampling = c.frame_sampling if c.training else "uniform"
        crop = np.tile(np.array([0.5, 0.5, 1.0], np.float32), (rows, 1))
        flip = np.zeros(rows, bool)
        for r, position in enumerate(positions):
            valid[r] = position < n
            v, k = self._rows[order[position] if valid[r] else n - 1]  # padding repeats a real row
            rng = np.random.default_rng([c.seed, epoch, position])
            if k < 0 and self.with_text:  # a random caption of this video, new every epoch
                k = self.caption_offsets[v] + rng.integers(self.num_captions[v])
            video[r], caption[r] = v, k
            frames[r], frame_mask[r] = sample_frame_indices(int(self.num_frames[v]), c.num_frames, sampling, rng)
            if c.training and c.random_crop:
                crop[r] = rng.uniform(), rng.uniform(), rng.uniform(*RANDOM_CROP_SCALE)
            flip[r] = c.training and c.random_flip and rng.uniform() < 0.5
        return video, caption, valid, frames, frame_mask, crop, flip

    def _read_row(self, video: np.ndarray, caption: np.ndarray, frames: np.ndarray):
        """Read one record; return the chosen frames' JPEG bytes, and the caption truncated to L."""
        import tensorflow as tf

        with self._source_lock:
            record = self._source[int(video)]
        example = tf.train.Example.FromString(record).features.feature
        jpegs = example["frames"].bytes_list.value
        if len(jpegs) != self.num_frames[video]:
            raise ValueError(f"{self.dataset_dir}: video {self.video_ids[video]} holds {len(jpegs)} frames, metadata says {self.num_frames[video]}; prepare it again")
        selected = np.array([jpegs[i] for i in frames], dtype=object) if self.with_video else np.array([b""], dtype=object)
        L = self.config.max_words
        ids = np.zeros(L, np.int32)
        weights = np.zeros(L, np.float32)
        if self.with_text:
            j = int(caption - self.caption_offsets[video])
            all_ids = np.asarray(example["caption_ids"].int64_list.value, np.int32).reshape(-1, 77)[j]
            all_weights = np.asarray(example["caption_weights"].int64_list.value, np.float32).reshape(-1, 77)[j]
            length = int(np.count_nonzero(all_ids))
            if length > L:  # keep the start token, the first L - 2 tokens, and the end token
                ids[:] = np.append(all_ids[: L - 1], END_TOKEN)
                weights[: L - 1] = all_weights[: L - 1]
            else:
                ids[:length], weights[:length] = all_ids[:length], all_weights[:length]
        return selected, ids, weights

    # ------------------------------------------------------------------ tf.data

    def _dataset(self, start_epoch: int, start_batch: int):
        import tensorflow as tf

        c = self.config
        T, L, H = c.num_frames, c.max_words, c.image_size
        parallel = c.num_parallel_calls or tf.data.AUTOTUNE
        specs = [tf.int32, tf.int32, tf.bool, tf.int32, tf.bool, tf.float32, tf.bool]

        def epoch_rows(epoch):
            start = tf.where(epoch == start_epoch, start_batch, 0)
            arrays = tf.numpy_function(lambda e, b: self._epoch_rows(int(e), int(b)), [epoch, start], specs, stateful=False)
            for array, shape in zip(arrays, [(None,), (None,), (None,), (None, T), (None, T), (None, 3), (None,)]):
                array.set_shape(shape)
            return tf.data.Dataset.from_tensor_slices(tuple(arrays))

        # Training runs epoch after epoch; evaluation is one pass.
        epochs = tf.data.Dataset.range(start_epoch, 2**62 if c.training else start_epoch + 1)
        rows = epochs.flat_map(epoch_rows)
        mean = tf.constant(CLIP_MEAN, tf.float32) * 255.0
        std = tf.constant(CLIP_STD, tf.float32) * 255.0

        def load(video, caption, valid, frames, frame_mask, crop, flip):
            jpegs, ids, weights = tf.numpy_function(self._read_row, [video, caption, frames], [tf.string, tf.int32, tf.float32], stateful=False)
            out = {"video_index": video, "caption_index": caption, "valid": valid}
            if self.with_video:
                jpegs.set_shape((T,))
                out["video"] = _decode_clip(jpegs, crop, flip, H, mean, std, c.pixels)
                out["video_mask"] = frame_mask
            if self.with_text:
                ids.set_shape((L,))
                weights.set_shape((L,))
                out.update(text_ids=ids, text_mask=ids != 0, word_weights=weights)
            return out

        ds = rows.map(load, num_parallel_calls=parallel, deterministic=True)
        ds = ds.batch(self.host_batch_size, drop_remainder=True)
        return ds.prefetch(c.prefetch_batches)


def _same_order(saved: str | None, current: str) -> bool:
    """Fingerprints equal, ignoring the host fields that states saved by earlier versions carry."""
    if saved is None:
        return False
    strip = lambda fp: {k: v for k, v in json.loads(fp).items() if k not in ("process_index", "process_count")}
    return strip(saved) == strip(current)


# tf.data threads still running Python (`_read_row`) while the interpreter shuts down abort
# the process ("terminate called without an active exception"): stop them first.
_OPEN_PIPELINES: "weakref.WeakSet[VideoTextInput]" = weakref.WeakSet()


@atexit.register
def _close_open_pipelines() -> None:
    for pipeline in list(_OPEN_PIPELINES):
        pipeline.close()


def _decode_clip(jpegs, crop, flip, size, mean, std, pixels):
    """Decode only the crop window of each JPEG (same window for every frame), resize, flip; uint8,
    or normalised float32 (`pixels`)."""
    import tensorflow as tf

    shape = tf.io.extract_jpeg_shape(jpegs[0])
    height, width = shape[0], shape[1]
    side = tf.cast(tf.round(tf.cast(tf.minimum(height, width), tf.float32) * crop[2]), tf.int32)
    top = tf.cast(tf.round(crop[0] * tf.cast(height - side, tf.float32)), tf.int32)
    left = tf.cast(tf.round(crop[1] * tf.cast(width - side, tf.float32)), tf.int32)
    window = tf.stack([top, left, side, side])
    frames = tf.map_fn(
        lambda b: tf.io.decode_and_crop_jpeg(b, window, channels=3),
        jpegs, fn_output_signature=tf.TensorSpec((None, None, 3), tf.uint8),
    )
    # Frames stored at the model's size (short side == H, no random crop) need no resampling.
    def resize():
        resized = tf.image.resize(frames, (size, size), method="bilinear", antialias=True)
        return resized if pixels == "float32" else tf.saturate_cast(tf.round(resized), tf.uint8)

    as_is = lambda: tf.cast(frames, tf.float32) if pixels == "float32" else frames
    frames = tf.cond(tf.equal(side, size), as_is, resize)
    frames = tf.cond(flip, lambda: tf.reverse(frames, axis=[2]), lambda: frames)
    if pixels == "uint8":
        return frames
    return frames * (1.0 / std) - mean / std  # (x - mean) / std in one multiply-add pass
