"""TFDS builders, one per set, all with the same features (ArrayRecord shards, random access).

A builder only writes what `data_pipeline.prepare` hands it (per-video frames decoded once,
captions, token ids, word weights); it downloads nothing. Read a prepared set back without
this module with `tfds.builder_from_directory(DATA_DIR/<name>/<version>)`.

Features of one example (one video):

| key | type | meaning |
|---|---|---|
| video_id | text | the id the annotation files use |
| duration | float32 | seconds (decord frame count / average fps) |
| num_frames | int32 | stored frames (fps-sampled, capped at max_frames) |
| frame_times | float32 (num_frames,) | timestamp of each stored frame, seconds |
| frames | Sequence(Image, jpeg) | the stored frames, short side <= short_side |
| source_fps, source_num_frames, source_height, source_width | | what the source file was (compressed-vs-raw checks) |
| captions | Sequence(text) | the split protocol's queries (one paragraph for paragraph sets) |
| sentences | Sequence(text) | every description the annotation files hold for the video |
| caption_ids | int32 (num_captions, 77) | CLIP ids: start, BPE, end, zero padding |
| caption_weights | uint8 (num_captions, 77) | 2 content word, 1 other word, 0 start/end/padding |

Examples keep annotation order (shuffling disabled), so record i of a split is video
`metadata["splits"][split]["video_ids"][i]`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline.annotations import PARAGRAPH, SENTENCE

CONTEXT_LENGTH = 77
VERSION = "1.0.0"


def features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "video_id": tfds.features.Text(),
        "duration": tfds.features.Scalar(np.float32),
        "num_frames": tfds.features.Scalar(np.int32),
        "frame_times": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        "frames": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")),
        "source_fps": tfds.features.Scalar(np.float32),
        "source_num_frames": tfds.features.Scalar(np.int32),
        "source_height": tfds.features.Scalar(np.int32),
        "source_width": tfds.features.Scalar(np.int32),
        "captions": tfds.features.Sequence(tfds.features.Text()),
        "sentences": tfds.features.Sequence(tfds.features.Text()),
        "caption_ids": tfds.features.Tensor(shape=(None, CONTEXT_LENGTH), dtype=np.int32),
        "caption_weights": tfds.features.Tensor(shape=(None, CONTEXT_LENGTH), dtype=np.uint8),
    })


ExampleSource = Callable[[], Iterable[tuple[str, dict]]]


class VideoTextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Common builder: features, metadata and the examples `prepare` produced."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "Frames decoded once with decord, JPEG; captions with CLIP ids and word weights."}
    QUERY_MODE = SENTENCE
    DESCRIPTION = ""

    def __init__(self, *, examples: Mapping[str, ExampleSource] | None = None, metadata: dict | None = None, **kwargs):
        self._examples = examples
        self._prepare_metadata = metadata or {}
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=features(),
            metadata=tfds.core.MetadataDict(self._prepare_metadata),
            disable_shuffling=True,  # record order = annotation order (see the module docstring)
        )

    def _split_generators(self, dl_manager):
        if self._examples is None:
            raise ValueError(f"the {self.name} builder writes what `tvr-jax prepare --dataset {self.name}` decodes; run that")
        # A Beam transform (`beam_prepare.SplitExamples`) goes to TFDS's Beam writer as it is.
        return {split: source if hasattr(source, "expand") else self._generate_examples(source)
                for split, source in self._examples.items()}

    # `prepare` shows its own progress; TFDS's banners before and after would repeat it.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _generate_examples(self, source: ExampleSource):
        yield from source()


class Msrvtt(VideoTextBuilder, skip_registration=True):
    name = "msrvtt"
    DESCRIPTION = "MSR-VTT, 9k training videos with all captions; 1k-A test pairs."


class Msvd(VideoTextBuilder, skip_registration=True):
    name = "msvd"
    DESCRIPTION = "MSVD, 1,200 / 100 / 670 videos, every caption (multi-caption test)."


class Didemo(VideoTextBuilder, skip_registration=True):
    name = "didemo"
    QUERY_MODE = PARAGRAPH
    DESCRIPTION = "DiDeMo, paragraph queries (all descriptions of a video joined)."


class Activitynet(VideoTextBuilder, skip_registration=True):
    name = "activitynet"
    QUERY_MODE = PARAGRAPH
    DESCRIPTION = "ActivityNet Captions, paragraph queries; val = val_1."


class Webvid(VideoTextBuilder, skip_registration=True):
    name = "webvid"
    DESCRIPTION = "WebVid-2M or -10M: train CSV as 'train', val CSV as 'test'; the name column as captions."


class Custom(VideoTextBuilder, skip_registration=True):
    name = "custom"
    DESCRIPTION = "Your own videos: one CSV / JSON Lines file of (video, caption, split, video_id) rows, every caption a query."


class Synthetic(VideoTextBuilder, skip_registration=True):
    name = "synthetic"
    DESCRIPTION = "tvr-jax's generated set of three-shot videos with one-word siblings (MSR-VTT format; see docs/synthetic.md)."


BUILDERS: dict[str, type[VideoTextBuilder]] = {b.name: b for b in (Msrvtt, Msvd, Didemo, Activitynet, Webvid, Custom, Synthetic)}
# Which annotation format each set is read with.
ANNOTATION_FORMAT = {"msrvtt": "msrvtt", "msvd": "msvd", "didemo": "didemo", "activitynet": "activitynet",
                     "webvid": "webvid", "custom": "custom", "synthetic": "msrvtt"}
