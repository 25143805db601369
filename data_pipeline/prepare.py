"""The offline job: annotations + videos -> one TFDS dataset per set, each video decoded once.

    prepare("msrvtt", out_dir, videos_dir=..., annotations_dir=...)      # tvr-jax prepare ...

Steps, each resumable:
1. (synthetic only, when no videos are given) generate the set into `OUT/synthetic_source/`.
2. Read the annotation files (`annotations.py`); locate each video's file.
3. Decode every video once with decord, in `workers` processes, into
   `OUT/_work/<set>/frames/<video>.npz` (written atomically; a rerun keeps finished ones and
   retries failed ones). A missing, empty, truncated or undecodable video is left out and
   reported; a decoder that crashes or hangs past the time limit costs its own video only
   (`decoder.py`).
4. Tokenise captions and compute word weights (`word_weights.py`) with the tagger: spaCy's
   `en_core_web_md` for every set but the synthetic one, like the release (docs/method.md
   section 6.1); the run stops before decoding anything when spaCy or the model is missing, unless the fallback
   tagger is asked for explicitly.
5. Write the TFDS dataset `OUT/<set>/1.0.0/` (TFDS writes into a temporary folder and
   renames it when complete, so a dataset folder is either whole or absent), then drop the
   decode cache (unless `keep_work`).
6. Write `OUT/prepare_report.json` (one entry per set: counts per split, failures with reason
   and fix, annotation problems, parameters, tagger with versions) atomically.
A split left with no video is an error (raised after the report is written).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from typing import Any, Callable, Sequence

import numpy as np

from data_pipeline import annotations as annotations_lib
from data_pipeline import decoder as decoder_lib
from data_pipeline import video as video_lib
from data_pipeline import word_weights
from data_pipeline.tokenizer import default_tokenizer

_LOG = logging.getLogger(__name__)

REPORT_FILE = "prepare_report.json"
DATASETS = ("msrvtt", "msvd", "didemo", "activitynet", "webvid", "custom", "synthetic")


class PrepareError(ValueError):
    """The preparation cannot produce a usable dataset (e.g. a split with no video left)."""


def dataset_dir(out_dir: str, dataset: str) -> str:
    from data_pipeline.builders import VERSION

    return os.path.join(out_dir, dataset, VERSION)


def prepare(dataset: str, out_dir: str, videos_dir: str | None = None, annotations_dir: str | None = None, *,
            fps: float = 1.0, max_frames: int | None = None, short_side: int | None = 224, workers: int | None = None,
            jpeg_quality: int = 90, tagger: str | None = None, spacy_model: str = word_weights.SPACY_MODEL,
            synthetic_scale: int = 1, synthetic_seed: int = 0, rebuild: bool = False, keep_work: bool = False,
            decode_timeout: float | None = decoder_lib.DEFAULT_TIMEOUT_S, beam_runner: str | None = None,
            beam_options: Sequence[str] = (), progress: bool = True) -> dict[str, Any]:
    """Prepare `dataset` into `out_dir`; returns its report entry (also in prepare_report.json).

    annotations_dir: the folder of the set's annotation files; for "custom", the CSV or JSON Lines
    file itself (`annotations.load_custom`).
    tagger: "spacy" (with `spacy_model`) or "fallback"; None: `default_tagger(dataset)`.
    decode_timeout: seconds one video may take to decode (0 or None: no limit); a video over it
    is reported as failed ("timeout") and its decoding process replaced (`decoder.py`).
    beam_runner: run decoding, tagging and writing as Apache Beam pipelines on this runner
    (`beam_prepare.py`), with `beam_options` ("KEY=VALUE"); None: the local process pool.
    """
    started = time.time()
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if fps <= 0 or (max_frames is not None and max_frames < 1) or (short_side is not None and short_side < 1):
        raise ValueError(f"need fps > 0, max_frames >= 1, short_side >= 1; got {fps}, {max_frames}, {short_side}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    tagger_spec = tagger_spec_for(dataset, tagger, spacy_model)
    pipeline_options = _beam_options(beam_runner, beam_options) if beam_runner else None
    workers = workers or os.cpu_count() or 1
    os.makedirs(out_dir, exist_ok=True)
    params = {"fps": float(fps), "max_frames": max_frames, "short_side": short_side, "jpeg_quality": jpeg_quality}

    synthetic_meta = None
    if dataset == "synthetic":
        from data_pipeline import synthetic

        if videos_dir is None and annotations_dir is None:
            source = synthetic.generate(os.path.join(out_dir, "synthetic_source"), seed=synthetic_seed, scale=synthetic_scale, progress=progress)
            videos_dir, annotations_dir = source["videos"], source["annotations"]
        meta_path = os.path.join(os.path.dirname(os.path.abspath(annotations_dir)), synthetic.META_FILE)
        if os.path.isfile(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                full = json.load(f)
            synthetic_meta = {k: v for k, v in full.items() if k not in ("scenes", "test_hard_negatives")}
    if videos_dir is None or annotations_dir is None:
        raise ValueError(f"--videos and --annotations are both needed for {dataset}")

    final_dir = dataset_dir(out_dir, dataset)
    if os.path.isfile(os.path.join(final_dir, "dataset_info.json")):
        with open(os.path.join(final_dir, "metadata.json"), encoding="utf-8") as f:
            stored_meta = json.load(f)
        stored, stored_tagger = stored_meta.get("frames"), word_weights.tagger_spec_of(stored_meta)
        if not rebuild:
            if stored != params:
                raise ValueError(f"{final_dir} was prepared with {stored}, not {params}; use another --out or pass --rebuild")
            if stored_tagger != tagger_spec:
                raise ValueError(f"{final_dir} was prepared with tagger {stored_tagger!r}, not {tagger_spec!r}; "
                                 "use another --out or pass --rebuild")
            previous = _read_report(out_dir).get(dataset) or {"dataset": dataset, "tfds_dir": final_dir}
            return {**previous, "status": "already prepared (pass --rebuild to prepare it again)"}
        shutil.rmtree(final_dir)

    tagger_obj = load_prepare_tagger(dataset, tagger_spec)  # before hours of decoding, not after
    from data_pipeline.builders import ANNOTATION_FORMAT

    ann = annotations_lib.load_annotations(ANNOTATION_FORMAT[dataset], annotations_dir)
    work_dir = os.path.join(out_dir, "_work", dataset)
    cache_dir = _prepare_cache_dir(work_dir, params)

    # Find each video's file and decode it once (a video listed in two splits is decoded once);
    # a video already in the decode cache is kept.
    beam_counters: dict[str, int] = {}
    decode_started = time.time()
    if pipeline_options is None:
        file_index = annotations_lib.index_video_files(videos_dir, ann.sidecar_field)
        located = {v.video_id: annotations_lib.find_video_file(file_index, v) for vs in ann.splits.values() for v in vs}
        todo = {vid: (path, cache_path(cache_dir, vid)) for vid, path in located.items()
                if path is not None and not os.path.isfile(cache_path(cache_dir, vid))}
        decode_results = decoder_lib.decode_all(todo, params, workers, timeout=decode_timeout, progress=progress)
        reused = sum(1 for path in located.values() if path is not None) - len(todo)
    else:
        from data_pipeline import beam_prepare

        located, statuses, beam_counters = beam_prepare.locate_and_decode(
            [v for vs in ann.splits.values() for v in vs], videos_dir, ann.sidecar_field, cache_dir, params,
            decode_timeout, pipeline_options, work_dir)
        reused = sum(1 for r in statuses if r.get("cached"))
        decode_results = [r for r in statuses if not r.get("cached")]
    tasks = {vid: (path, cache_path(cache_dir, vid)) for vid, path in located.items() if path is not None}
    failures: list[dict] = []
    for split, videos in ann.splits.items():
        for v in videos:
            if located[v.video_id] is None:
                failures.append(_failure(split, v.video_id, None, "missing", annotations_lib.missing_file_detail(v, videos_dir)))
    failed = {r["video_id"]: r for r in decode_results if not r["ok"]}
    for split, videos in ann.splits.items():
        for v in videos:
            if v.video_id in failed:
                r = failed[v.video_id]
                failures.append(_failure(split, v.video_id, r["path"], r["reason"], r["detail"]))

    prepared = {split: [v for v in videos if v.video_id in tasks and v.video_id not in failed] for split, videos in ann.splits.items()}
    report = {
        "dataset": dataset, "tfds_dir": final_dir, "query_mode": ann.query_mode, "params": params,
        "tagger": tagger_obj.name, "tagger_info": tagger_obj.info, "protocol": ann.protocol,
        "splits": {
            split: {"videos_in_annotations": len(ann.splits[split]), "prepared": len(prepared[split]),
                    "failed": sum(1 for f in failures if f["split"] == split),
                    "captions": sum(len(v.captions) for v in prepared[split])}
            for split in ann.splits
        },
        "decoded_this_run": sum(1 for r in decode_results if r["ok"]),
        "reused_from_cache": reused,
        "failures": failures,
        "annotation_problems": list(ann.problems),
        "synthetic": synthetic_meta,
        "stage_seconds": {"decode": round(time.time() - decode_started, 2)},
        "runner": "local" if pipeline_options is None else {"beam": _describe_beam(pipeline_options), "counters": beam_counters},
    }
    empty = [s for s, vids in prepared.items() if not vids]
    if empty:
        report["status"] = f"error: no video left in split(s) {empty}"
        report["elapsed_s"] = round(time.time() - started, 2)
        _write_report(out_dir, dataset, report)
        raise PrepareError(
            f"{dataset}: split(s) {empty} have no usable video ({len(failures)} failures); see {os.path.join(out_dir, REPORT_FILE)} "
            f"and fix --videos ({videos_dir}) / --annotations ({annotations_dir})"
        )

    metadata = {
        "dataset": dataset, "query_mode": ann.query_mode, "protocol": ann.protocol, "tagger": tagger_obj.name,
        "tagger_info": tagger_obj.info, "frames": params, "context_length": 77, "data_pipeline_format": 1,
        "synthetic": synthetic_meta,
        "splits": {},
    }
    sources = {}
    for split, videos in prepared.items():
        metadata["splits"][split] = {
            "video_ids": [v.video_id for v in videos], "num_captions": [len(v.captions) for v in videos],
            "num_frames": [],
        }
        if pipeline_options is None:
            texts = _text_features(videos, tagger_obj, progress, split)
            sources[split] = _example_source(videos, texts, tasks, metadata["splits"][split]["num_frames"], progress, split)
        else:
            from data_pipeline import beam_prepare

            metadata["splits"][split]["num_frames"] = [video_lib.cached_num_frames(tasks[v.video_id][1]) for v in videos]
            sources[split] = [(example_key(i), v, tasks[v.video_id][1]) for i, v in enumerate(videos)]
    if pipeline_options is None:
        make_sources = lambda: sources
    else:  # a Beam transform belongs to the one pipeline it was applied in: each write gets new ones
        make_sources = lambda: {split: beam_prepare.SplitExamples(items, tagger_spec) for split, items in sources.items()}
    write_started = time.time()
    attempts = _build_tfds(dataset, out_dir, make_sources, metadata, pipeline_options)
    if pipeline_options is not None:
        report["runner"]["write_attempts"] = attempts
    report["stage_seconds"]["tag_tokenise_write"] = round(time.time() - write_started, 2)
    if not keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)
    report["status"] = "prepared"
    report["elapsed_s"] = round(time.time() - started, 2)
    _write_report(out_dir, dataset, report)
    return report


# ----------------------------------------------------------------------------- tagger

def default_tagger(dataset: str) -> str:
    """spaCy for every set of real captions (the paper's sets, like the release; WebVid and your
    own videos, whose captions are as free as theirs); the fallback for the synthetic set, whose
    captions are generated from a small template vocabulary (no paper tagging to match there),
    so that the demo runs with nothing beyond the base install."""
    return word_weights.FALLBACK if dataset == "synthetic" else "spacy"


def tagger_spec_for(dataset: str, tagger: str | None, spacy_model: str = word_weights.SPACY_MODEL) -> str:
    """The tagger spec ("spacy:<model>" or "fallback") `prepare` uses for these arguments."""
    tagger = tagger or default_tagger(dataset)
    if tagger not in ("spacy", word_weights.FALLBACK):
        raise ValueError(f"tagger must be 'spacy' or 'fallback', got {tagger!r}")
    if spacy_model not in word_weights.SPACY_MODELS:
        raise ValueError(f"spacy_model must be one of {', '.join(word_weights.SPACY_MODELS)}, got {spacy_model!r}")
    return word_weights.FALLBACK if tagger == word_weights.FALLBACK else f"spacy:{spacy_model}"


def load_prepare_tagger(dataset: str, spec: str) -> word_weights.Tagger:
    try:
        return word_weights.load_tagger(spec)
    except word_weights.TaggerUnavailable as e:
        model = spec.partition(":")[2]
        release = "the release's" if model == word_weights.SPACY_MODEL else f"the release uses {word_weights.SPACY_MODEL}"
        raise word_weights.TaggerUnavailable(
            f"{dataset}: word weights are tagged with spaCy's {model} ({release}, docs/method.md section 6.1), "
            f"but {e.reason}.\n  Install: {word_weights.install_hint(model)}\n"
            "  Or pass --tagger fallback (tagger='fallback') for the built-in approximation, whose word weights "
            "differ from the paper's (data_pipeline/word_weights.py)"
        ) from None


def read_metadata(data_dir: str, dataset: str) -> dict | None:
    """metadata.json of a prepared set (see `prepare`); None when the set is not there."""
    path = os.path.join(dataset_dir(data_dir, dataset), "metadata.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tagger_warning(data_dir: str, dataset: str, expected: str) -> str | None:
    """`word_weights.check_tagger` on a prepared set; None when it matches or the set is not prepared."""
    metadata = read_metadata(data_dir, dataset) if data_dir else None
    return None if metadata is None else word_weights.check_tagger(expected, metadata)


# ----------------------------------------------------------------------------- decoding

def _prepare_cache_dir(work_dir: str, params: dict) -> str:
    """The decode cache; emptied when it was made with other frame parameters."""
    cache_dir = os.path.join(work_dir, "frames")
    params_path = os.path.join(work_dir, "params.json")
    if os.path.isfile(params_path):
        with open(params_path, encoding="utf-8") as f:
            if json.load(f) != params:
                shutil.rmtree(cache_dir, ignore_errors=True)
    os.makedirs(cache_dir, exist_ok=True)
    _atomic_write(params_path, json.dumps(params))
    for name in os.listdir(cache_dir):  # leftovers of an interrupted write
        if name.endswith(".partial"):
            os.remove(os.path.join(cache_dir, name))
    return cache_dir


def cache_path(cache_dir: str, video_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", video_id)
    if safe != video_id or len(safe) > 150:  # keep distinct ids distinct after sanitising
        safe = f"{safe[:120]}-{hashlib.sha1(video_id.encode()).hexdigest()[:12]}"
    return os.path.join(cache_dir, f"{safe}.npz")


# ----------------------------------------------------------------------------- text

def _text_features(videos, tagger, progress: bool = False, split: str = "") -> list[tuple[np.ndarray, np.ndarray]]:
    """Per video: (ids int32 (n, 77), weights uint8 (n, 77)) of its captions, tagged in batches."""
    from tqdm import tqdm

    tokenizer = default_tokenizer()
    captions = [c for v in videos for c in v.captions]
    flat, weights = [], []
    with tqdm(total=len(captions), desc=f"tokenising and tagging {split} captions", unit="caption",
              disable=not progress) as bar:
        for start in range(0, len(captions), _TAG_BATCH):
            chunk = [tokenizer.tokenize_caption(c, 77) for c in captions[start:start + _TAG_BATCH]]
            flat += chunk
            weights += word_weights.caption_weights(chunk, tagger)
            bar.update(len(chunk))
    out, k = [], 0
    for v in videos:
        n = len(v.captions)
        out.append(_pack(flat[k:k + n], weights[k:k + n]))
        k += n
    return out


_TAG_BATCH = 2048  # captions per tagger call: large enough for spaCy's batching, small enough for a live bar


def caption_features(captions, tokenizer, tagger) -> tuple[np.ndarray, np.ndarray]:
    """One video's captions as (ids int32 (n, 77), weights uint8 (n, 77)); the Beam path's form of `_text_features`."""
    flat = [tokenizer.tokenize_caption(c, 77) for c in captions]
    return _pack(flat, word_weights.caption_weights(flat, tagger))


def _pack(flat, weights) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(flat), 77), np.int32)
    w = np.zeros((len(flat), 77), np.uint8)
    for j, (caption, weight) in enumerate(zip(flat, weights)):
        ids[j, : len(caption.ids)] = caption.ids
        w[j, : len(weight)] = weight
    return ids, w


# ----------------------------------------------------------------------------- TFDS

def example_key(index: int) -> int:
    """The key of a split's index-th video. With shuffling disabled TFDS's Beam writer orders and
    shards examples by their key, which must then be an integer: the annotation order."""
    return index


def example(video, ids: np.ndarray, weights: np.ndarray, cache_path: str) -> dict:
    """One TFDS example (builders.features()) from a video's annotation, caption features and decode cache."""
    jpegs, times, meta = video_lib.read_cache(cache_path)
    return {
        "video_id": video.video_id, "duration": meta["duration"], "num_frames": len(jpegs), "frame_times": times,
        "frames": jpegs, "source_fps": meta["source_fps"], "source_num_frames": meta["source_num_frames"],
        "source_height": meta["source_height"], "source_width": meta["source_width"],
        "captions": list(video.captions), "sentences": list(video.sentences), "caption_ids": ids, "caption_weights": weights,
    }


def _example_source(videos, texts, tasks, num_frames_out: list[int], progress: bool = False, split: str = ""):
    def generate():
        from tqdm import tqdm

        num_frames_out.clear()
        for i, (v, (ids, weights)) in enumerate(tqdm(list(zip(videos, texts)), desc=f"writing {split} examples",
                                                     unit="video", disable=not progress)):
            record = example(v, ids, weights, tasks[v.video_id][1])
            num_frames_out.append(record["num_frames"])
            yield example_key(i), record
    return generate


# A runner that returns fewer examples than it was given is caught by the count after each write;
# the write (not the decoding, which is cached) is then redone this many times before `prepare` stops.
BEAM_WRITE_ATTEMPTS = 3


class LostExamples(RuntimeError):
    """The written dataset holds fewer examples than `prepare` gave the writer."""


def _build_tfds(dataset: str, out_dir: str, make_sources: Callable[[], dict], metadata: dict,
                pipeline_options=None) -> int:
    """Write the TFDS dataset from `make_sources()` ({split: examples source}), then count its
    examples per split against the videos given; returns the number of writes it took.

    Apache Beam's DirectRunner in multi-processing mode has been seen to drop whole bundles
    (1024 videos given, 948 written, two contiguous runs of ids missing, report and counters
    saying 1024, and a rerun of the same command writing all 1024). A dataset short of examples
    is never left in place: it is removed, the write is redone (Beam path, up to
    `BEAM_WRITE_ATTEMPTS` times, the decoded frames kept), and `prepare` stops with
    `LostExamples` if it stays short."""
    import tensorflow_datasets as tfds

    from data_pipeline.builders import BUILDERS

    expected = {split: len(ids["video_ids"]) for split, ids in metadata["splits"].items()}
    attempts = BEAM_WRITE_ATTEMPTS if pipeline_options is not None else 1
    for attempt in range(1, attempts + 1):
        parent = os.path.join(out_dir, dataset)
        if os.path.isdir(parent):  # temporary folders of an interrupted TFDS write
            for name in os.listdir(parent):
                if name.startswith("incomplete."):
                    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        builder = BUILDERS[dataset](data_dir=out_dir, examples=make_sources(), metadata=metadata)
        config = tfds.download.DownloadConfig(download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
                                              beam_options=pipeline_options)
        # Our own bars say what is written; TFDS's per-split bars and banners would repeat it.
        shown = tfds.core.utils.tqdm_utils._active
        tfds.display_progress_bar(False)
        try:
            builder.download_and_prepare(download_config=config)
        finally:
            tfds.display_progress_bar(shown)
        written = {split: builder.info.splits[split].num_examples for split in expected}
        short = {split: (written[split], n) for split, n in expected.items() if written[split] != n}
        if not short:
            return attempt
        shutil.rmtree(str(builder.data_dir), ignore_errors=True)
        lost = "; ".join(f"split {split!r}: {got} examples written of {n}" for split, (got, n) in short.items())
        runner = (f"the Beam runner ({pipeline_options.get_all_options().get('runner')})"
                  if pipeline_options is not None else "the TFDS writer")
        if attempt < attempts:
            _LOG.warning("%s returned fewer examples than it was given (%s); the dataset was removed and is "
                         "written again (attempt %d of %d; the decoded frames are kept)", runner, lost, attempt + 1, attempts)
            continue
        raise LostExamples(
            f"{dataset}: {runner} wrote fewer examples than it was given, {attempts} times ({lost}); "
            f"nothing was kept in {parent} but the decoded frames. Rerun the same command (decoding is not "
            "redone), or prepare without --beam-runner (the local path) or with another runner.")


def _beam_options(runner: str, options: Sequence[str]):
    try:
        from data_pipeline import beam_prepare
    except ImportError as e:
        raise ImportError(f"--beam-runner needs Apache Beam ({e}); install it with `pip install -e '.[beam]'` "
                          "or `pip install 'tvr-jax[beam]'`") from None
    return beam_prepare.pipeline_options(runner, options)


def _describe_beam(options) -> dict:
    from data_pipeline import beam_prepare

    return beam_prepare.describe(options)


# ----------------------------------------------------------------------------- report

def _failure(split: str, video_id: str, path: str | None, reason: str, detail: str) -> dict:
    return {"split": split, "video_id": video_id, "path": path, "reason": reason, "detail": detail, "fix": video_lib.FIXES[reason]}


def _read_report(out_dir: str) -> dict:
    path = os.path.join(out_dir, REPORT_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_report(out_dir: str, dataset: str, report: dict) -> None:
    """prepare_report.json maps each prepared set to its report; other sets' entries are kept."""
    full = _read_report(out_dir)
    full[dataset] = report
    _atomic_write(os.path.join(out_dir, REPORT_FILE), json.dumps(full, indent=1))


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.partial"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def summary(report: dict, max_failures: int = 20) -> str:
    """The console summary of one set's report."""
    lines = [f"{report['dataset']}: {report.get('status', '')} -> {report['tfds_dir']}"]
    if "splits" not in report:
        return lines[0]
    lines += [f"  query mode {report['query_mode']}, tagger {report['tagger']}, frames {report['params']}"]
    spec = word_weights.tagger_spec_of(report)
    if report["dataset"] != "synthetic" and spec != word_weights.PAPER_TAGGER:  # the configs expect the paper's
        lines.append(f"  note: tagger {spec!r} is not the paper's {word_weights.PAPER_TAGGER!r}; word weights differ "
                     f"from the release's (train with --config.data.tagger={spec} to silence its warning)")
    for split, c in report["splits"].items():
        lines.append(f"  {split:6s} {c['prepared']:6d} / {c['videos_in_annotations']} videos prepared, {c['failed']} failed, {c['captions']} captions")
    if report["dataset"] == "custom" and "test" not in report["splits"]:
        lines.append("  note: no 'test' split, the one `tvr-jax eval` scores: training works, evaluation needs rows with "
                     "split 'test' in the annotation file (then prepare again with --rebuild)")
    lines.append(f"  decoded this run {report['decoded_this_run']}, reused from an earlier run {report['reused_from_cache']}")
    runner = report.get("runner", "local")
    if isinstance(runner, dict):
        counters = ", ".join(f"{k} {v}" for k, v in sorted(runner["counters"].items())) or "none kept by this runner"
        lines.append(f"  Beam runner {runner['beam'].get('runner')}; decoding counters: {counters}")
    failures = report["failures"]
    if failures:
        by_reason: dict[str, int] = {}
        for f in failures:
            by_reason[f["reason"]] = by_reason.get(f["reason"], 0) + 1
        lines.append(f"  {len(failures)} videos left out: " + ", ".join(f"{n} {r}" for r, n in sorted(by_reason.items())))
        for f in failures[:max_failures]:
            lines.append(f"    [{f['split']}] {f['video_id']}: {f['reason']} ({f['detail']}); fix: {f['fix']}")
        if len(failures) > max_failures:
            lines.append(f"    ... {len(failures) - max_failures} more in prepare_report.json")
    if report["annotation_problems"]:
        lines.append(f"  {len(report['annotation_problems'])} annotation problems (entries left out), listed in prepare_report.json")
    return "\n".join(lines)
