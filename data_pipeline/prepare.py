"""The offline job: annotations + videos -> one TFDS dataset per set, each video decoded once.

    prepare("msrvtt", out_dir, videos_dir=..., annotations_dir=...)      # tvr-jax prepare ...

Steps, each resumable:
1. (synthetic only, when no videos are given) generate the set into `OUT/synthetic_source/`.
2. Read the annotation files (`annotations.py`); locate each video's file.
3. Decode every video once with decord, in `workers` processes, into
   `OUT/_work/<set>/frames/<video>.npz` (written atomically; a rerun keeps finished ones and
   retries failed ones). A missing, empty, truncated or undecodable video is left out and
   reported; a decoder crash is traced to its file and reported as such.
4. Tokenise captions and compute word weights (`word_weights.py`) with the tagger: spaCy's
   `en_core_web_md` for the paper's sets, like the release (docs/method.md section 6.1); the
   run stops before decoding anything when spaCy or the model is missing, unless the fallback
   tagger is asked for explicitly.
5. Write the TFDS dataset `OUT/<set>/1.0.0/` (TFDS writes into a temporary folder and
   renames it when complete, so a dataset folder is either whole or absent), then drop the
   decode cache (unless `keep_work`).
6. Write `OUT/prepare_report.json` (one entry per set: counts per split, failures with reason
   and fix, annotation problems, parameters, tagger with versions) atomically.
A split left with no video is an error (raised after the report is written).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
from typing import Any

import numpy as np

from data_pipeline import annotations as annotations_lib
from data_pipeline import video as video_lib
from data_pipeline import word_weights
from data_pipeline.tokenizer import default_tokenizer

REPORT_FILE = "prepare_report.json"
DATASETS = ("msrvtt", "msvd", "didemo", "activitynet", "synthetic")
PAPER_DATASETS = ("msrvtt", "msvd", "didemo", "activitynet")


class PrepareError(ValueError):
    """The preparation cannot produce a usable dataset (e.g. a split with no video left)."""


def dataset_dir(out_dir: str, dataset: str) -> str:
    from data_pipeline.builders import VERSION

    return os.path.join(out_dir, dataset, VERSION)


def prepare(dataset: str, out_dir: str, videos_dir: str | None = None, annotations_dir: str | None = None, *,
            fps: float = 1.0, max_frames: int | None = None, short_side: int | None = 224, workers: int | None = None,
            jpeg_quality: int = 90, tagger: str | None = None, spacy_model: str = word_weights.SPACY_MODEL,
            synthetic_scale: int = 1, synthetic_seed: int = 0, rebuild: bool = False, keep_work: bool = False,
            progress: bool = True) -> dict[str, Any]:
    """Prepare `dataset` into `out_dir`; returns its report entry (also in prepare_report.json).

    tagger: "spacy" (with `spacy_model`) or "fallback"; None: `default_tagger(dataset)`.
    """
    started = time.time()
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if fps <= 0 or (max_frames is not None and max_frames < 1) or (short_side is not None and short_side < 1):
        raise ValueError(f"need fps > 0, max_frames >= 1, short_side >= 1; got {fps}, {max_frames}, {short_side}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    tagger_spec = tagger_spec_for(dataset, tagger, spacy_model)
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
    file_index = annotations_lib.index_video_files(videos_dir)
    work_dir = os.path.join(out_dir, "_work", dataset)
    cache_dir = _prepare_cache_dir(work_dir, params)

    # Unique videos over all splits (a video listed in two splits is decoded once).
    failures: list[dict] = []
    tasks: dict[str, tuple[str, str]] = {}
    for split, videos in ann.splits.items():
        for v in videos:
            path = annotations_lib.find_video_file(file_index, v)
            if path is None:
                failures.append(_failure(split, v.video_id, None, "missing", f"no file named {' or '.join(v.file_names)}.* under {videos_dir}"))
            else:
                tasks[v.video_id] = (path, _cache_path(cache_dir, v.video_id))
    todo = {vid: t for vid, t in tasks.items() if not os.path.isfile(t[1])}
    decode_results = _decode_all(todo, params, workers, progress)
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
        "reused_from_cache": len(tasks) - len(todo),
        "failures": failures,
        "annotation_problems": list(ann.problems),
        "synthetic": synthetic_meta,
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
        texts = _text_features(videos, tagger_obj)
        metadata["splits"][split] = {
            "video_ids": [v.video_id for v in videos], "num_captions": [len(v.captions) for v in videos],
            "num_frames": [],
        }
        sources[split] = _example_source(videos, texts, tasks, metadata["splits"][split]["num_frames"])
    _build_tfds(dataset, out_dir, sources, metadata)
    if not keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)
    report["status"] = "prepared"
    report["elapsed_s"] = round(time.time() - started, 2)
    _write_report(out_dir, dataset, report)
    return report


# ----------------------------------------------------------------------------- tagger

def default_tagger(dataset: str) -> str:
    """spaCy for the paper's sets, like the release; the fallback for the synthetic set, whose
    captions are generated from a small template vocabulary (no paper tagging to match there),
    so that the demo runs with nothing beyond the base install."""
    return "spacy" if dataset in PAPER_DATASETS else word_weights.FALLBACK


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


def _cache_path(cache_dir: str, video_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", video_id)
    if safe != video_id or len(safe) > 150:  # keep distinct ids distinct after sanitising
        safe = f"{safe[:120]}-{hashlib.sha1(video_id.encode()).hexdigest()[:12]}"
    return os.path.join(cache_dir, f"{safe}.npz")


def _decode_all(todo: dict[str, tuple[str, str]], params: dict, workers: int, progress: bool,
                decode_fn=video_lib.decode_to_cache) -> list[dict]:
    """Decode `todo` in `workers` processes, at most `workers` in flight at a time.

    Keeping in-flight work to one video per process means that when a decoder crashes the
    process (a segfault in ffmpeg on a damaged file), the suspects are few: each is retried
    alone, and the one that kills its process again is reported as "crashed".
    """
    from tqdm import tqdm

    if not todo:
        return []
    # spawn, not fork: the parent may hold TensorFlow's threads, which fork does not survive.
    context = multiprocessing.get_context("spawn")
    args = (params["fps"], params["max_frames"], params["short_side"], params["jpeg_quality"])
    results: list[dict] = []
    pending = list(todo.items())[::-1]
    suspects: list[tuple[str, tuple[str, str]]] = []
    bar = tqdm(total=len(todo), desc="decoding videos", unit="video", disable=not progress)
    executor = cf.ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:  # a pool that cannot start at all is a set-up problem, not 10,000 damaged videos
        executor.submit(os.getpid).result()
    except cf.process.BrokenProcessPool:
        executor.shutdown(wait=False)
        bar.close()
        raise RuntimeError(
            "decoder worker processes could not start; when calling data_pipeline.prepare from a script, "
            "call it under `if __name__ == '__main__':` (worker processes are spawned and import the main module)"
        ) from None
    in_flight: dict[cf.Future, tuple[str, tuple[str, str]]] = {}
    try:
        while pending or in_flight:
            while pending and len(in_flight) < workers:
                vid, (path, cache) = item = pending.pop()
                in_flight[executor.submit(decode_fn, vid, path, cache, *args)] = item
            done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            broken = False
            for future in done:
                item = in_flight.pop(future)
                try:
                    results.append(future.result())
                    bar.update(1)
                except cf.process.BrokenProcessPool:
                    broken = True
                    suspects.append(item)
            if broken:
                suspects.extend(in_flight.values())
                in_flight.clear()
                executor.shutdown(wait=False, cancel_futures=True)
                executor = cf.ProcessPoolExecutor(max_workers=workers, mp_context=context)
        for vid, (path, cache) in suspects:  # alone, so a crash names its own file
            with cf.ProcessPoolExecutor(max_workers=1, mp_context=context) as single:
                try:
                    results.append(single.submit(decode_fn, vid, path, cache, *args).result())
                except cf.process.BrokenProcessPool:
                    results.append({"video_id": vid, "path": path, "ok": False, "reason": "crashed", "detail": "the decoder process died"})
            bar.update(1)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return results


# ----------------------------------------------------------------------------- text

def _text_features(videos, tagger) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per video: (ids int32 (n, 77), weights uint8 (n, 77)) of its captions, tagged in one batch."""
    tokenizer = default_tokenizer()
    flat = [tokenizer.tokenize_caption(c, 77) for v in videos for c in v.captions]
    weights = word_weights.caption_weights(flat, tagger)
    out, k = [], 0
    for v in videos:
        n = len(v.captions)
        ids = np.zeros((n, 77), np.int32)
        w = np.zeros((n, 77), np.uint8)
        for j in range(n):
            ids[j, : len(flat[k].ids)] = flat[k].ids
            w[j, : len(weights[k])] = weights[k]
            k += 1
        out.append((ids, w))
    return out


# ----------------------------------------------------------------------------- TFDS

def _example_source(videos, texts, tasks, num_frames_out: list[int]):
    def generate():
        num_frames_out.clear()
        for v, (ids, weights) in zip(videos, texts):
            jpegs, times, meta = video_lib.read_cache(tasks[v.video_id][1])
            num_frames_out.append(len(jpegs))
            yield v.video_id, {
                "video_id": v.video_id, "duration": meta["duration"], "num_frames": len(jpegs), "frame_times": times,
                "frames": jpegs, "source_fps": meta["source_fps"], "source_num_frames": meta["source_num_frames"],
                "source_height": meta["source_height"], "source_width": meta["source_width"],
                "captions": list(v.captions), "sentences": list(v.sentences), "caption_ids": ids, "caption_weights": weights,
            }
    return generate


def _build_tfds(dataset: str, out_dir: str, sources, metadata: dict) -> None:
    import tensorflow_datasets as tfds

    from data_pipeline.builders import BUILDERS

    parent = os.path.join(out_dir, dataset)
    if os.path.isdir(parent):  # temporary folders of an interrupted TFDS write
        for name in os.listdir(parent):
            if name.startswith("incomplete."):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    builder = BUILDERS[dataset](data_dir=out_dir, examples=sources, metadata=metadata)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))


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
    if report["dataset"] in PAPER_DATASETS and spec != word_weights.PAPER_TAGGER:
        lines.append(f"  note: tagger {spec!r} is not the paper's {word_weights.PAPER_TAGGER!r}; word weights differ "
                     f"from the release's (train with --config.data.tagger={spec} to silence its warning)")
    for split, c in report["splits"].items():
        lines.append(f"  {split:6s} {c['prepared']:6d} / {c['videos_in_annotations']} videos prepared, {c['failed']} failed, {c['captions']} captions")
    lines.append(f"  decoded this run {report['decoded_this_run']}, reused from an earlier run {report['reused_from_cache']}")
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
