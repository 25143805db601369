"""Annotation files and their splits: the paper's four sets (docs/method.md section 6, CLIP4Clip),
WebVid, and your own videos (`custom`).

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
| webvid | train / test | `results_2M_train.csv` / `results_2M_val.csv` (or the `10M` files); val is prepared as `test` | the `name` column |
| custom | train / val / test | one CSV or JSON Lines file (`--annotations FILE`), the `split` of each row | every caption of the video's rows |

`--annotations` is the folder holding the set's files, except for `custom`, where it is the file
itself (`load_custom` describes its format).

`query_mode` ("sentence" or "paragraph") is an explicit field of the result, stored in the
prepared dataset's metadata: nothing downstream guesses it from a path or a name.

A malformed file or field raises `AnnotationError` naming the file, the entry (the line, for
CSV and JSON Lines files), the field and the fix. Recoverable gaps (a listed video without any
caption, an empty caption of a published set, a repeated row) are left out and returned in
`problems`, which the preparation report lists.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pickle
import posixpath
import re
from typing import Any, Callable, Iterator

SENTENCE, PARAGRAPH = "sentence", "paragraph"
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp", ".wmv")


class AnnotationError(ValueError):
    """A missing or malformed annotation file or field; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class VideoAnnotation:
    video_id: str
    captions: tuple[str, ...]
    sentences: tuple[str, ...]
    # Names (with or without extension) the video's file may have on disk, in preference order;
    # `relative_key` and `sidecar_key` entries name it by path under --videos and by json sidecar.
    file_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class DatasetAnnotations:
    name: str
    query_mode: str
    splits: dict[str, tuple[VideoAnnotation, ...]]
    protocol: dict[str, str]
    problems: tuple[dict[str, Any], ...] = ()
    # The field of a download tool's json sidecar that names the video of the file beside it
    # (`index_video_files`); None: files are found by name and path only.
    sidecar_field: str | None = None


def load_annotations(dataset: str, annotations_path: str) -> DatasetAnnotations:
    """Annotations of `dataset` (msrvtt, msvd, didemo, activitynet, webvid: the folder of its files;
    custom: the CSV or JSON Lines file itself)."""
    loaders: dict[str, Callable[[str], DatasetAnnotations]] = {
        "msrvtt": load_msrvtt, "msvd": load_msvd, "didemo": load_didemo, "activitynet": load_activitynet,
        "webvid": load_webvid, "custom": load_custom,
    }
    if dataset not in loaders:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(loaders)}")
    if dataset == "custom":
        if os.path.isdir(annotations_path):
            raise AnnotationError(f"{annotations_path} is a folder; custom takes the annotation file itself: "
                                  f"--annotations FILE.csv or FILE.jsonl (columns {CUSTOM_COLUMNS})")
        if not os.path.isfile(annotations_path):
            raise FileNotFoundError(f"annotation file {annotations_path!r} does not exist; pass --annotations FILE "
                                    f"(.csv or .jsonl, columns {CUSTOM_COLUMNS})")
        return load_custom(annotations_path)
    if os.path.isfile(annotations_path):
        raise AnnotationError(f"{annotations_path} is a file; {dataset} takes the folder holding its annotation files "
                              f"(--annotations DIR; a single CSV or JSON Lines file is --dataset custom)")
    if not os.path.isdir(annotations_path):
        raise FileNotFoundError(f"annotation folder {annotations_path!r} does not exist; pass --annotations DIR holding the {dataset} files")
    return loaders[dataset](annotations_path)


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


# ----------------------------------------------------------------------------- WebVid

# Each release's (train, val) CSVs, as WebVid distributes them.
WEBVID_FILES = {"2M": ("results_2M_train.csv", "results_2M_val.csv"), "10M": ("results_10M_train.csv", "results_10M_val.csv")}
WEBVID_COLUMNS = ("videoid", "name", "page_dir")  # also duration, contentUrl (and page_idx): not needed here
WEBVID_SIDECAR_FIELD = "videoid"  # video2dataset writes the CSV's videoid into each {key}.json


def load_webvid(annotations_dir: str) -> DatasetAnnotations:
    """WebVid-2M or WebVid-10M from the folder of its CSVs (videoid, name, page_dir, duration, contentUrl).

    Splits: the train CSV is 'train'; the val CSV is prepared as 'test', the split `tvr-jax eval`
    scores (WebVid has no test split of its own; nothing chooses a checkpoint on it). A val
    video that the train CSV lists too is left out of 'train' and reported, so the evaluation
    stays on unseen videos. Captions: the `name` column (a videoid listed with several names gets
    each; a repeated row is kept once and reported; a row without videoid or name is left out and
    reported). The folder must hold one release's pair, not both.

    Video files under --videos are found in these layouts (a video found nowhere is a "missing"
    failure of the preparation report):
    - m-bain/webvid's download.py: `{page_dir}/{videoid}.mp4` (pass its `data_dir/videos` folder);
    - `{videoid}.<ext>` at any depth: a flat folder, or TFDS's `{part}/{page_dir}/{videoid}.mp4`;
    - video2dataset's `--output_format files` with `videoid` among `--save_additional_columns`:
      `{shard}/{key}.mp4` beside `{key}.json`, whose `videoid` names the video.
    video2dataset's webdataset, parquet and tfrecord outputs are not read: download with
    `--output_format files`, or extract the tar shards (each json stays beside its mp4).
    """
    present = {release: names for release, names in WEBVID_FILES.items()
               if any(os.path.isfile(os.path.join(annotations_dir, name)) for name in names)}
    if not present:
        expected = ", ".join(name for names in WEBVID_FILES.values() for name in names)
        raise AnnotationError(f"{annotations_dir} holds none of WebVid's CSVs ({expected}); put one release's train and "
                              "val CSVs there, as WebVid distributes them")
    if len(present) > 1:
        raise AnnotationError(f"{annotations_dir} holds both WebVid-2M and WebVid-10M CSVs; keep one release's pair in "
                              "the folder (the other elsewhere), so that which set is prepared is not a guess")
    ((release, (train_name, val_name)),) = present.items()
    train_path = _require(annotations_dir, train_name, f"WebVid-{release}'s training pairs", "WebVid's release")
    val_path = _require(annotations_dir, val_name, f"WebVid-{release}'s validation pairs (prepared as 'test')", "WebVid's release")
    problems: list[dict] = []
    test = _read_webvid_csv(val_path, problems)
    train = _read_webvid_csv(train_path, problems)
    for video_id in [v for v in train if v in test]:
        entry = train.pop(video_id)
        problems.append(_problem(train_path, f"line {entry['line']}", "videoid",
                                 f"also in {val_name} (the evaluated split); left out of train", video_id))
    splits = {split: tuple(_webvid_video(video_id, entry) for video_id, entry in videos.items())
              for split, videos in (("train", train), ("test", test))}
    protocol = {"train": f"{train_name}, every name of each video (videos also in {val_name} left out)",
                "test": f"{val_name} (WebVid's val split, evaluated as 'test'), every name of each video"}
    return DatasetAnnotations("webvid", SENTENCE, splits, protocol, tuple(problems), sidecar_field=WEBVID_SIDECAR_FIELD)


def _read_webvid_csv(path: str, problems: list[dict]) -> dict[str, dict]:
    """videoid -> {captions, page_dir, line (the first)}, in file order."""
    videos: dict[str, dict] = {}
    for line, row in _csv_records(path, WEBVID_COLUMNS, "restore the original file of WebVid's release"):
        video_id, caption, page_dir = row["videoid"].strip(), row["name"].strip(), row["page_dir"].strip()
        where = f"line {line}"
        if not video_id:
            problems.append(_problem(path, where, "videoid", "row without videoid; left out", ""))
            continue
        if not caption:
            problems.append(_problem(path, where, "name", "empty caption left out", video_id))
            continue
        entry = videos.setdefault(video_id, {"captions": [], "page_dir": page_dir, "line": line})
        if caption in entry["captions"]:
            problems.append(_problem(path, where, "name", f"repeats line {entry['line']} (same videoid and name); kept once", video_id))
            continue
        entry["captions"].append(caption)
    return videos


def _webvid_video(video_id: str, entry: dict) -> VideoAnnotation:
    page_dir = posixpath.normpath(entry["page_dir"].replace("\\", "/")) if entry["page_dir"] else ""
    names = (relative_key(f"{page_dir}/{video_id}"),) if page_dir else ()
    names += (sidecar_key(video_id), video_id)
    captions = tuple(entry["captions"])
    return VideoAnnotation(video_id, captions, captions, names)


# ----------------------------------------------------------------------------- your own videos

CUSTOM_COLUMNS = "video, caption[, split][, video_id]"
CUSTOM_SPLITS = ("train", "val", "test")
_CUSTOM_FIX_HEADER = "the first line must name the columns, e.g. video,caption,split"


def load_custom(path: str) -> DatasetAnnotations:
    """Your own videos from one CSV file (.csv) or JSON Lines file (.jsonl or .json).

    One row per caption (a CSV line after the header line; a JSON object per line), with:
    - `video` (required): the file's path relative to --videos, e.g. `clips/cat.mp4` (without an
      extension: any video file of that name there, .mp4 preferred);
    - `caption` (required): one description; a video's rows give it several captions, each a query
      of its own (query mode "sentence", like MSR-VTT's training videos and MSVD);
    - `split` (optional): train, val or test. A row without one (no such column, or an empty cell)
      is a training row. `tvr-jax eval` scores 'test': a set without test rows prepares and
      trains, and `eval` then stops, saying the split is missing. 'val', when present, is scored
      during training to choose the checkpoint `eval` reports;
    - `video_id` (optional): the video's name in the prepared set, in evaluation reports and in
      search results; default: the `video` path as written (normalised: `./a//b.mp4` is `a/b.mp4`).
    Column names match without case or surrounding spaces; other columns are ignored. Blank lines,
    and CSV rows whose fields are all empty, are skipped. Videos keep the order of their first row,
    captions the order of their rows.

    A malformed file raises `AnnotationError` naming the file, the line, the column and the fix:
    another extension, a missing required column, an empty video or caption, an absolute video
    path or one leading out of --videos, an unknown split, a video in two splits, a video_id given
    to two files or two video_ids to one file, a CSV row with more or fewer fields than the
    header, a malformed JSON line, bytes that are not UTF-8. A row repeating one of its video's
    captions is kept once and listed in `problems`.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        rows = _csv_records(path, ("video", "caption"), _CUSTOM_FIX_HEADER)
    elif ext in (".jsonl", ".json"):
        rows = _jsonl_records(path, ("video", "caption"))
    else:
        raise AnnotationError(f"{path}: custom annotations are a CSV file (.csv) or a JSON Lines file (.jsonl or .json), "
                              f"not {ext or 'a file without extension'}; write one row per caption with columns {CUSTOM_COLUMNS}")
    problems: list[dict] = []
    videos: dict[str, dict] = {}  # video_id -> {file, split, captions, line}
    id_of_file: dict[str, tuple[str, int]] = {}
    defaulted_train = False
    for line, row in rows:
        def at(column: str, line: int = line) -> str:
            return f"{path}: line {line}, column '{column}'"

        file = _custom_video_path(_custom_string(row["video"], at("video")), at("video"))
        caption = _custom_string(row["caption"], at("caption")).strip()
        if not caption:
            raise AnnotationError(f"{at('caption')}: empty caption; write the video's description, or delete the row")
        raw_split = row.get("split")
        split = "" if raw_split is None else _custom_string(raw_split, at("split")).strip().lower()
        if split and split not in CUSTOM_SPLITS:
            raise AnnotationError(f"{at('split')}: unknown split {raw_split!r}; write train, val or test (empty: train)")
        given = bool(split)
        defaulted_train |= not given
        split = split or "train"
        video_id = _custom_video_id(row.get("video_id"), at("video_id")) or file
        known = id_of_file.setdefault(file, (video_id, line))
        if known[0] != video_id:
            raise AnnotationError(f"{at('video_id')}: file {file!r} has video_id {video_id!r} here but {known[0]!r} on line "
                                  f"{known[1]}; give all rows of a file the same video_id (an empty one means the path)")
        entry = videos.setdefault(video_id, {"file": file, "split": split, "given": given, "captions": {}, "line": line})
        if entry["file"] != file:
            raise AnnotationError(f"{at('video_id')}: video_id {video_id!r} names file {file!r} here but {entry['file']!r} "
                                  f"on line {entry['line']}; give each file its own video_id")
        if entry["split"] != split:
            raise AnnotationError(f"{at('split')}: video {file!r} is in split {_said(split, given)} here but in "
                                  f"{_said(entry['split'], entry['given'])} on line {entry['line']}; a video belongs to one "
                                  "split: give all its rows the same split (an empty one means train)")
        if caption in entry["captions"]:
            problems.append(_problem(path, f"line {line}", "caption",
                                     f"repeats the video's caption of line {entry['captions'][caption]}; kept once", video_id))
            continue
        entry["captions"][caption] = line
    if not videos:
        raise AnnotationError(f"{path} holds no rows; write one row per caption with columns {CUSTOM_COLUMNS}")
    splits, protocol = {}, {}
    name = os.path.basename(path)
    for split in CUSTOM_SPLITS:
        chosen = tuple(VideoAnnotation(video_id, tuple(e["captions"]), tuple(e["captions"]), (relative_key(e["file"]),))
                       for video_id, e in videos.items() if e["split"] == split)
        if chosen:
            splits[split] = chosen
            rows_of = f"rows with split '{split}'" + (" or none" if split == "train" and defaulted_train else "")
            protocol[split] = f"{name}: {rows_of}, every caption of each video"
    return DatasetAnnotations("custom", SENTENCE, splits, protocol, tuple(problems))


def _said(split: str, given: bool) -> str:
    return repr(split) if given else f"{split!r} (no split given)"


def _custom_string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise AnnotationError(f"{where}: must be a string, found {json.dumps(value)}; quote it")
    return value


def _custom_video_id(value: Any, where: str) -> str:
    """The row's video_id, '' when absent or empty; JSON numbers are accepted (numeric ids)."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _custom_string(value, where).strip()


def _custom_video_path(value: str, where: str) -> str:
    """`value` as a normalised '/'-separated path under --videos."""
    value = value.strip()
    if not value:
        raise AnnotationError(f"{where}: empty video path; write the file's path relative to --videos, or delete the row")
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", value):
        raise AnnotationError(f"{where}: {value!r} is an absolute path; write it relative to --videos (e.g. clips/cat.mp4)")
    path = posixpath.normpath(value.replace("\\", "/"))
    if path == ".." or path.startswith("../"):
        raise AnnotationError(f"{where}: {value!r} leads out of --videos; write a path under it (or pass a --videos folder holding it)")
    ext = posixpath.splitext(path)[1]
    if ext and ext.lower() not in VIDEO_EXTENSIONS:
        raise AnnotationError(f"{where}: {value!r} does not end with a video extension ({', '.join(VIDEO_EXTENSIONS)}); "
                              "convert it (ffmpeg -i IN OUT.mp4) or fix the path")
    return path


# ----------------------------------------------------------------------------- line-numbered CSV and JSON Lines

class _NotUtf8(Exception):
    def __init__(self, line: int, prefix: str, byte: int):
        super().__init__(line, prefix, byte)
        self.line, self.prefix, self.byte = line, prefix, byte

    def message(self, path: str, column: str = "") -> str:
        return (f"{path}: line {self.line}, character {len(self.prefix) + 1}{column}: byte 0x{self.byte:02x} is not UTF-8; "
                "save the file as UTF-8 (a spreadsheet's 'CSV UTF-8'; or `iconv -f LATIN1 -t UTF-8 IN > OUT` for Latin-1 text)")


def _utf8_lines(f) -> Iterator[tuple[int, str]]:
    """(line number, text) of a binary file, decoded one line at a time so that a byte that is not
    UTF-8 is reported with its line; a leading byte order mark is dropped."""
    for number, raw in enumerate(f, 1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _NotUtf8(number, raw[: e.start].decode("utf-8"), raw[e.start]) from None
        yield number, text


def _csv_records(path: str, required: tuple[str, ...], header_fix: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(first line of the row, {column: value}) of each data row of a UTF-8 CSV file with a header
    line. Column names are matched lower-case and stripped; rows must have the header's length."""
    with open(path, "rb") as f:
        reader = csv.reader(text for _, text in _utf8_lines(f))
        header: list[str] | None = None
        header_line = end = 0
        try:
            for row in reader:
                start, end = end + 1, reader.line_num
                if not any(field.strip() for field in row):
                    continue
                if header is None:
                    header, header_line = [field.strip().lower() for field in row], start
                    repeated = sorted({c for c in header if header.count(c) > 1})
                    if repeated:
                        raise AnnotationError(f"{path}: line {start}: column(s) {repeated} named twice in the header; name each column once")
                    missing = [c for c in required if c not in header]
                    if missing:
                        raise AnnotationError(f"{path}: line {start}: no column {', '.join(map(repr, missing))} in the header "
                                              f"{[field.strip() for field in row]} (comma-separated); {header_fix}")
                    continue
                if len(row) > len(header):
                    raise AnnotationError(f"{path}: line {start}, column {len(header) + 1} (after '{header[-1]}'): {len(row)} fields, "
                                          f"the header (line {header_line}) has {len(header)}; a comma inside a caption? "
                                          'quote the field ("a cat, asleep")')
                if len(row) < len(header):
                    raise AnnotationError(f"{path}: line {start}, column '{header[len(row)]}': {len(row)} fields, the header "
                                          f"(line {header_line}) has {len(header)}; give every row all the columns (a cell may be empty)")
                yield start, dict(zip(header, row))
        except _NotUtf8 as e:
            column = ""
            if header is not None and e.line == end + 1:  # the row starts on that line: count its fields
                fields = next(csv.reader([e.prefix]), [])
                column = f" (column '{header[min(max(len(fields) - 1, 0), len(header) - 1)]}')"
            raise AnnotationError(e.message(path, column)) from None
        except csv.Error as e:
            raise AnnotationError(f"{path}: line {reader.line_num}: not valid CSV ({e}); {header_fix}") from None
    if header is None:
        raise AnnotationError(f"{path} is empty; {header_fix}")


def _jsonl_records(path: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object with lower-cased, stripped keys) of each non-blank line of a JSON Lines file."""
    example = '{"video": "clips/cat.mp4", "caption": "a cat sleeps on a sofa", "split": "train"}'
    with open(path, "rb") as f:
        lines = _utf8_lines(f)
        first = True
        try:
            for number, text in lines:
                if not text.strip():
                    continue
                if first and text.lstrip().startswith("["):
                    raise AnnotationError(f"{path}: line {number}: a JSON array; write JSON Lines instead, one object per "
                                          f"line, e.g. {example}")
                first = False
                try:
                    entry = json.loads(text)
                    _require_unicode(entry, path, text, number)
                except json.JSONDecodeError as e:
                    raise AnnotationError(f"{path}: line {number}, character {e.colno}: not valid JSON ({e.msg}); write one "
                                          f"JSON object per line, e.g. {example}") from None
                if not isinstance(entry, dict):
                    raise AnnotationError(f"{path}: line {number}: a JSON {type(entry).__name__}, not an object; write one "
                                          f"object per line, e.g. {example}")
                entry = {str(k).strip().lower(): v for k, v in entry.items()}
                missing = [c for c in required if c not in entry]
                if missing:
                    raise AnnotationError(f"{path}: line {number}, column {', '.join(map(repr, missing))}: no such key (keys: "
                                          f"{sorted(entry)}); every line needs 'video' and 'caption', e.g. {example}")
                yield number, entry
        except _NotUtf8 as e:
            raise AnnotationError(e.message(path)) from None


# ----------------------------------------------------------------------------- video files

# Index keys besides file names and stems: a path relative to --videos (without extension), and
# the id a download tool's json sidecar gives a file.
RELATIVE = "./"
SIDECAR = "sidecar:"


def relative_key(relative_path: str) -> str:
    """The `file_names` entry of the file at `relative_path` under --videos ('/'-separated). With a
    video extension it names that file only; without one, any video file of that stem there."""
    return RELATIVE + relative_path


def sidecar_key(video_id: str) -> str:
    """The `file_names` entry of the file whose json sidecar's `sidecar_field` is `video_id`."""
    return SIDECAR + video_id


def index_video_files(videos_dir: str, sidecar_field: str | None = None) -> dict[str, list[str]]:
    """Every video file under `videos_dir` (recursively), by file name, by stem and by its path
    relative to `videos_dir` without extension (`relative_key`).

    With `sidecar_field`, a video file with a json file of the same stem beside it holding that
    field (video2dataset's `{key}.mp4` + `{key}.json`) is indexed by `sidecar_key(value)` and its
    relative path only: its name is a download counter, which must not pass for another video's id.
    """
    index: dict[str, list[str]] = {}
    for part in listing_parts(videos_dir):
        for key, path in index_entries(videos_dir, part, sidecar_field):
            index.setdefault(key, []).append(path)
    return index


def listing_parts(videos_dir: str) -> list[str | None]:
    """The pieces a listing of `videos_dir` splits into: None (the files directly in it) and each
    sub-folder, so that a cluster can list a large collection in parallel (`beam_prepare.py`)."""
    if not os.path.isdir(videos_dir):
        raise FileNotFoundError(f"video folder {videos_dir!r} does not exist; pass --videos DIR holding the set's video files")
    return [None] + sorted(e.name for e in os.scandir(videos_dir) if e.is_dir(follow_symlinks=False))  # as os.walk


def index_entries(videos_dir: str, part: str | None, sidecar_field: str | None = None) -> Iterator[tuple[str, str]]:
    """(key, path) of every video file of one `listing_parts` piece (see `index_video_files`)."""
    if part is None:
        walk = [(videos_dir, [], [e.name for e in os.scandir(videos_dir) if e.is_file()])]
    else:
        walk = os.walk(os.path.join(videos_dir, part))
    for root, _, files in walk:
        folder = os.path.relpath(root, videos_dir).replace(os.sep, "/")
        present = set(files)
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in VIDEO_EXTENSIONS:
                continue
            path = os.path.join(root, name)
            keys = [relative_key(stem if folder == "." else f"{folder}/{stem}")]
            named = _sidecar_value(os.path.join(root, f"{stem}.json"), sidecar_field) if sidecar_field and f"{stem}.json" in present else None
            keys += [sidecar_key(named)] if named is not None else [name, stem]
            for key in keys:
                yield key, path


def _sidecar_value(path: str, field: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):  # not a sidecar after all: the file keeps its name and stem
        return None
    value = meta.get(field) if isinstance(meta, dict) else None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        return None
    return str(value).strip()


def lookup_keys(video: VideoAnnotation) -> list[str]:
    """Every index key `find_video_file` may read for `video`: an index holding just these finds the same file."""
    keys = []
    for name in video.file_names:
        keys.append(name)
        if name.startswith(RELATIVE):
            stem, ext = posixpath.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                keys.append(stem)
    return keys


def find_video_file(index: dict[str, list[str]], video: VideoAnnotation) -> str | None:
    """The file of `video`: the first of its names found; .mp4 preferred among same-stem files."""
    for name in video.file_names:
        paths = index.get(name)
        if not paths and name.startswith(RELATIVE):  # a relative path with its extension: that file only
            stem, ext = posixpath.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                paths = [p for p in index.get(stem, ()) if os.path.splitext(p)[1] == ext]
        if paths:
            return sorted(paths, key=lambda p: (os.path.splitext(p)[1].lower() != ".mp4", p))[0]
    return None


def missing_file_detail(video: VideoAnnotation, videos_dir: str) -> str:
    """What was looked for, for the report of a video whose file is missing."""
    looked, plain = [], []
    for name in video.file_names:
        if name.startswith(RELATIVE):
            rel = name[len(RELATIVE):]
            looked.append(os.path.join(videos_dir, rel) + ("" if posixpath.splitext(rel)[1].lower() in VIDEO_EXTENSIONS else ".*"))
        elif name.startswith(SIDECAR):
            looked.append(f"a video whose json sidecar says {name[len(SIDECAR):]}")
        else:
            plain.append(f"{name}.*")
    if plain:
        looked.append(f"named {' or '.join(plain)} under {videos_dir}")
    return "no file " + " or ".join(looked)


# ----------------------------------------------------------------------------- helpers

def _require(directory: str, name: str, what: str, source: str = "CLIP4Clip") -> str:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise AnnotationError(f"{path} not found: {what}; put the standard file (as distributed with {source}) in {directory}")
    return path


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        content = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid json ({e}); restore the original file") from None
    _require_unicode(content, path, text)
    return content


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _require_unicode(content: Any, path: str, text: str, line: int | None = None) -> None:
    """JSON may escape half of a UTF-16 pair (\\ud800) on its own: valid JSON, but no character,
    which no UTF-8 file (the TFDS dataset) can hold. Refused here, naming the file and the line."""
    try:
        json.dumps(content, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        if line is None:
            match = _SURROGATE_ESCAPE.search(text)
            line = text.count("\n", 0, match.start()) + 1 if match else None
        where = f"line {line}" if line else "somewhere"
        raise AnnotationError(f"{path}: {where}: a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair) is "
                              "no character; fix the text (write the character itself, or its full surrogate pair)") from None


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
