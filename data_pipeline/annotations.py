"""The four sets' annotation files and their standard splits (docs/method.md section 6, CLIP4Clip).

Each loader returns a `DatasetAnnotations`: per split, the videos in annotation order, each
with `captions` (the queries of the split's protocol) and `sentences` (every description the
files hold for it). Protocols:

| set | split | videos | captions (queries) |
|---|---|---|---|
| msrvtt | train | `MSRVTT_train.9k.csv` | all of the video's sentences in `MSRVTT_data.json` |
| msrvtt | test | `MSRVTT_JSFUSION_test.csv` (1k-A) | the one `sentence` of the csv row |
| msvd | train / val / test | `{split}_list.txt` | every caption in `raw-captions.pkl` (tokens joined by spaces) |
| didemo | train / val / test | `{split}_data.json` (`{split}_list.txt` restricts it when present) | one paragraph: the descriptions joined by spaces |
| activitynet | train / val | `train_ids.json` + `train.json`, `val_ids.json` + `val_1.json` | one paragraph: the sentences joined by spaces |

`query_mode` ("sentence" or "paragraph") is an explicit field of the result, stored in the
prepared dataset's metadata: nothing downstream guesses it from a path or a name.

A malformed file or field raises `AnnotationError` naming the file, the entry, the field and
the fix. Recoverable gaps (a listed video without any caption, an empty caption) are left out
and returned in `problems`, which the preparation report lists.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pickle
from typing import Any, Callable

SENTENCE, PARAGRAPH = "sentence", "paragraph"
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp", ".wmv")


class AnnotationError(ValueError):
    """A missing or malformed annotation file or field; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class VideoAnnotation:
    video_id: str
    captions: tuple[str, ...]
    sentences: tuple[str, ...]
    # Names (with or without extension) the video's file may have on disk, in preference order.
    file_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class DatasetAnnotations:
    name: str
    query_mode: str
    splits: dict[str, tuple[VideoAnnotation, ...]]
    protocol: dict[str, str]
    problems: tuple[dict[str, Any], ...] = ()


def load_annotations(dataset: str, annotations_dir: str) -> DatasetAnnotations:
    """Annotations of `dataset` (msrvtt, msvd, didemo, activitynet) from `annotations_dir`."""
    loaders: dict[str, Callable[[str], DatasetAnnotations]] = {
        "msrvtt": load_msrvtt, "msvd": load_msvd, "didemo": load_didemo, "activitynet": load_activitynet,
    }
    if dataset not in loaders:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(loaders)}")
    if not os.path.isdir(annotations_dir):
        raise FileNotFoundError(f"annotation folder {annotations_dir!r} does not exist; pass --annotations DIR holding the {dataset} files")
    return loaders[dataset](annotations_dir)


# ----------------------------------------------------------------------------- MSR-VTT

def load_msrvtt(annotations_dir: str) -> DatasetAnnotations:
    data_path = _require(annotations_dir, "MSRVTT_data.json", "MSR-VTT's annotation json (videos + sentences)")
    train_path = _require(annotations_dir, "MSRVTT_train.9k.csv", "the 9k training split (one video_id column)")
    test_path = _require(annotations_dir, "MSRVTT_JSFUSION_test.csv", "the 1k-A test pairs (key, vid_key, video_id, sentence)")
    problems: list[dict] = []

    data = _read_json(data_path)
    sentences_list = _field(data, "sentences", list, data_path, "top level")
    by_video: dict[str, list[str]] = {}
    for i, entry in enumerate(sentences_list):
        where = f"sentences[{i}]"
        video_id = _field(entry, "video_id", str, data_path, where)
        caption = _field(entry, "caption", str, data_path, where)
        if not caption.strip():
            problems.append(_problem(data_path, where, "caption", "empty caption left out", video_id))
            continue
        by_video.setdefault(video_id, []).append(caption.strip())

    train_ids = _read_csv_column(train_path, "video_id")
    train = []
    for video_id in train_ids:
        if video_id not in by_video:
            problems.append(_problem(data_path, "sentences", "video_id", f"training video {video_id} has no sentence; left out", video_id))
            continue
        train.append(VideoAnnotation(video_id, tuple(by_video[video_id]), tuple(by_video[video_id]), (video_id,)))

    test = []
    for row_number, row in _read_csv_rows(test_path, ("video_id", "sentence")):
        video_id, sentence = row["video_id"].strip(), row["sentence"].strip()
        if not video_id or not sentence:
            raise AnnotationError(f"{test_path}: row {row_number}: empty video_id or sentence; fix the row or restore the original file")
        test.append(VideoAnnotation(video_id, (sentence,), tuple(by_video.get(video_id, [sentence])), (video_id,)))
    _require_unique(test_path, [v.video_id for v in test])
    return DatasetAnnotations(
        "msrvtt", SENTENCE, {"train": tuple(train), "test": tuple(test)},
        {"train": "MSRVTT_train.9k.csv videos, every sentence of each in MSRVTT_data.json",
         "test": "1k-A: MSRVTT_JSFUSION_test.csv, one sentence per video"},
        tuple(problems),
    )


# ----------------------------------------------------------------------------- MSVD

class _CaptionUnpickler(pickle.Unpickler):
    """raw-captions.pkl holds only dicts, lists and strings: refuse anything else (no code runs)."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: raw-captions.pkl must hold only dict/list/str")


def load_msvd(annotations_dir: str) -> DatasetAnnotations:
    captions_path = _require(annotations_dir, "raw-captions.pkl", "MSVD's captions (video id -> list of token lists)")
    try:
        with open(captions_path, "rb") as f:
            raw = _CaptionUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise AnnotationError(f"{captions_path}: not a readable raw-captions pickle ({e}); restore the original file") from None
    if not isinstance(raw, dict):
        raise AnnotationError(f"{captions_path}: expected a dict video id -> captions, found {type(raw).__name__}")
    problems: list[dict] = []
    splits, protocol = {}, {}
    for split in ("train", "val", "test"):
        list_path = _require(annotations_dir, f"{split}_list.txt", f"MSVD's {split} video ids, one per line")
        videos = []
        for video_id in _read_lines(list_path):
            if video_id not in raw:
                problems.append(_problem(captions_path, video_id, "captions", f"{split} video has no captions; left out", video_id))
                continue
            captions = []
            for j, caption in enumerate(raw[video_id]):
                if isinstance(caption, (list, tuple)) and all(isinstance(t, str) for t in caption):
                    caption = " ".join(caption)
                if not isinstance(caption, str):
                    raise AnnotationError(f"{captions_path}: [{video_id!r}][{j}] must be a list of token strings, found {type(caption).__name__}")
                if caption.strip():
                    captions.append(caption.strip())
                else:
                    problems.append(_problem(captions_path, f"[{video_id!r}][{j}]", "caption", "empty caption left out", video_id))
            if not captions:
                problems.append(_problem(captions_path, video_id, "captions", f"{split} video has only empty captions; left out", video_id))
                continue
            videos.append(VideoAnnotation(video_id, tuple(captions), tuple(captions), (video_id,)))
        _require_unique(list_path, [v.video_id for v in videos])
        splits[split] = tuple(videos)
        protocol[split] = f"{split}_list.txt videos, every caption of each (multi-caption retrieval)"
    return DatasetAnnotations("msvd", SENTENCE, splits, protocol, tuple(problems))


# ----------------------------------------------------------------------------- DiDeMo

def load_didemo(annotations_dir: str) -> DatasetAnnotations:
    problems: list[dict] = []
    splits, protocol = {}, {}
    for split in ("train", "val", "test"):
        path = _require(annotations_dir, f"{split}_data.json", f"DiDeMo's {split} moments (video, description, times)")
        entries = _read_json(path)
        if not isinstance(entries, list):
            raise AnnotationError(f"{path}: expected a list of moments, found {type(entries).__name__}")
        by_video: dict[str, list[str]] = {}
        for i, entry in enumerate(entries):
            where = f"[{i}]"
            video = _field(entry, "video", str, path, where)
            description = _field(entry, "description", str, path, where)
            if not description.strip():
                problems.append(_problem(path, where, "description", "empty description left out", video))
                continue
            by_video.setdefault(video, []).append(description.strip())
        list_path = os.path.join(annotations_dir, f"{split}_list.txt")
        order = list(by_video)
        if os.path.isfile(list_path):  # CLIP4Clip restricts each split to its list when one exists
            listed = set(_read_lines(list_path))
            order = [v for v in order if v in listed]
        videos = []
        for video in order:
            stem = os.path.splitext(video)[0] if video.lower().endswith(VIDEO_EXTENSIONS) else video
            sentences = tuple(by_video[video])
            videos.append(VideoAnnotation(stem, (" ".join(sentences),), sentences, (video, stem)))
        splits[split] = tuple(videos)
        protocol[split] = f"{split}_data.json videos, one paragraph query: all descriptions joined"
    return DatasetAnnotations("didemo", PARAGRAPH, splits, protocol, tuple(problems))


# ----------------------------------------------------------------------------- ActivityNet

def load_activitynet(annotations_dir: str) -> DatasetAnnotations:
    problems: list[dict] = []
    splits, protocol = {}, {}
    for split, ids_name, data_name in (("train", "train_ids.json", "train.json"), ("val", "val_ids.json", "val_1.json")):
        ids_path = _require(annotations_dir, ids_name, f"ActivityNet's {split} video ids (a json list)")
        data_path = _require(annotations_dir, data_name, f"ActivityNet Captions' {split} annotations (id -> duration, timestamps, sentences)")
        ids = _read_json(ids_path)
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise AnnotationError(f"{ids_path}: expected a json list of video id strings; restore the original file")
        data = _read_json(data_path)
        if not isinstance(data, dict):
            raise AnnotationError(f"{data_path}: expected a json object id -> annotation, found {type(data).__name__}")
        videos, seen = [], set()
        for video_id in ids:
            if video_id in seen:
                problems.append(_problem(ids_path, video_id, "id", "listed twice; kept once", video_id))
                continue
            seen.add(video_id)
            if video_id not in data:
                problems.append(_problem(data_path, video_id, "sentences", f"{split} video has no annotation; left out", video_id))
                continue
            sentences = _field(data[video_id], "sentences", list, data_path, repr(video_id))
            if not all(isinstance(s, str) for s in sentences):
                raise AnnotationError(f"{data_path}: [{video_id!r}].sentences must be a list of strings; restore the original file")
            sentences = tuple(s.strip() for s in sentences if s.strip())
            if not sentences:
                problems.append(_problem(data_path, video_id, "sentences", f"{split} video has no sentence; left out", video_id))
                continue
            # Files are named with or without the "v_" prefix of the ids, depending on the download.
            names = (video_id, video_id[2:]) if video_id.startswith("v_") else (video_id,)
            videos.append(VideoAnnotation(video_id, (" ".join(sentences),), sentences, names))
        splits[split] = tuple(videos)
        protocol[split] = f"{ids_name} videos with {data_name}, one paragraph query: all sentences joined"
    return DatasetAnnotations("activitynet", PARAGRAPH, splits, protocol, tuple(problems))


# ----------------------------------------------------------------------------- video files

def index_video_files(videos_dir: str) -> dict[str, list[str]]:
    """Every video file under `videos_dir` (recursively), by file name and by stem."""
    if not os.path.isdir(videos_dir):
        raise FileNotFoundError(f"video folder {videos_dir!r} does not exist; pass --videos DIR holding the set's video files")
    index: dict[str, list[str]] = {}
    for root, _, files in os.walk(videos_dir):
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                path = os.path.join(root, name)
                index.setdefault(name, []).append(path)
                index.setdefault(stem, []).append(path)
    return index


def find_video_file(index: dict[str, list[str]], video: VideoAnnotation) -> str | None:
    """The file of `video`: the first of its names found; .mp4 preferred among same-stem files."""
    for name in video.file_names:
        paths = index.get(name)
        if paths:
            return sorted(paths, key=lambda p: (os.path.splitext(p)[1].lower() != ".mp4", p))[0]
    return None


# ----------------------------------------------------------------------------- helpers

def _require(directory: str, name: str, what: str) -> str:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise AnnotationError(f"{path} not found: {what}; put the standard file (as distributed with CLIP4Clip) in {directory}")
    return path


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid json ({e}); restore the original file") from None


def _field(entry: Any, name: str, kind: type, path: str, where: str) -> Any:
    if not isinstance(entry, dict):
        raise AnnotationError(f"{path}: {where} must be a json object, found {type(entry).__name__}; restore the original file")
    if name not in entry:
        raise AnnotationError(f"{path}: {where} has no field {name!r}; restore the original file")
    if not isinstance(entry[name], kind):
        raise AnnotationError(f"{path}: {where}.{name} must be {kind.__name__}, found {type(entry[name]).__name__}; restore the original file")
    return entry[name]


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _read_csv_rows(path: str, columns: tuple[str, ...]):
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise AnnotationError(f"{path}: no column {missing} in header {reader.fieldnames}; restore the original file")
        for row_number, row in enumerate(reader, start=2):
            if any(row.get(c) is None for c in columns):
                raise AnnotationError(f"{path}: row {row_number} has fewer fields than the header; fix the row")
            yield row_number, row


def _read_csv_column(path: str, column: str) -> list[str]:
    values = [row[column].strip() for _, row in _read_csv_rows(path, (column,))]
    _require_unique(path, values)
    return values


def _require_unique(path: str, video_ids: list[str]) -> None:
    seen = set()
    for video_id in video_ids:
        if video_id in seen:
            raise AnnotationError(f"{path}: video {video_id!r} appears twice; a split must list each video once")
        seen.add(video_id)


def _problem(path: str, where: str, field: str, what: str, video_id: str) -> dict[str, Any]:
    return {"file": path, "entry": where, "field": field, "video_id": video_id, "problem": what}
