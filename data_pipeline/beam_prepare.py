"""`tvr-jax prepare --beam-runner RUNNER`: the preparation's heavy steps as Apache Beam transforms.

The same steps as the local path (`prepare.py`), with the same code for each, so both give the
same dataset:
1. Listing, matching and decoding (`locate_and_decode`): the videos folder is listed in
   parallel pieces (`annotations.listing_parts`), each video gathers the index entries of its
   own names and picks its file by the local path's rule (`annotations.find_video_file`), and
   every video not yet in the decode cache is decoded, each worker with one
   `decoder.DecoderProcess` (the same time limit, crash and hang handling as the local pool).
   One status line per video comes back to the driver for the report.
2. Tagging, tokenising and writing: TFDS's own Beam support builds the dataset; each split's
   examples come from a transform that reads a video's frames from the cache and tokenises and
   tags its captions (`prepare.caption_features`), keyed by annotation order, which TFDS keeps
   because the builders disable shuffling.
Reading the annotation files stays in the driver: one pass over small files that decides what
the pipelines are given.

On a cluster every worker must see the same files: `--videos` and `--out` on a shared file
system (NFS, a FUSE mount of a bucket), and the `tvr-jax` package installed on the workers
(README: "Preparing at scale").

Beam counters (namespace "tvr_jax.prepare"): videos_decoded, videos_failed, videos_cached,
captions_tagged, examples_built. `prepare` prints and reports the first pipeline's; TFDS runs
the second and does not hand back its result, so those show in the runner's own UI and logs.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from data_pipeline import annotations as annotations_lib
from data_pipeline import decoder as decoder_lib

COUNTERS = "tvr_jax.prepare"
_RESULTS_PREFIX = "decode_results"


def pipeline_options(runner: str, options: Sequence[str] = ()) -> PipelineOptions:
    """`--beam-runner RUNNER --beam-option KEY=VALUE ...` as Beam pipeline options."""
    # Beam's workers log every bundle at INFO; warnings and errors are what a user needs here.
    flags = [f"--runner={runner}", "--default_sdk_harness_log_level=WARNING"]
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ValueError(f"--beam-option {option!r}: expected KEY=VALUE, e.g. direct_num_workers=2 or "
                             "project=my-project (the option names of Beam's PipelineOptions, without dashes)")
        flags.append(f"--{key}={value}")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    return PipelineOptions(flags)  # later flags win: a user's own log level replaces ours


class _Decode(beam.DoFn):
    """(video_id, path) -> status line: decodes one video into the cache with this worker's
    decoding process (replaced after a crash or a hang); a video already in the cache is kept."""

    def __init__(self, cache_dir: str, params: dict, timeout: float | None, decode_fn=None):
        self._cache_dir = cache_dir
        self._decode_fn = decode_fn  # None: video.decode_to_cache (imported on the worker)
        self._args = (params["fps"], params["max_frames"], params["short_side"], params["jpeg_quality"])
        self._timeout = timeout
        self._decoder = None
        self._decoded = beam.metrics.Metrics.counter(COUNTERS, "videos_decoded")
        self._failed = beam.metrics.Metrics.counter(COUNTERS, "videos_failed")
        self._cached = beam.metrics.Metrics.counter(COUNTERS, "videos_cached")

    def setup(self):
        from data_pipeline import video as video_lib

        self._decoder = decoder_lib.DecoderProcess(self._decode_fn or video_lib.decode_to_cache, self._args, self._timeout)

    def process(self, located):
        from data_pipeline import prepare

        video_id, path = located
        cache_path = prepare.cache_path(self._cache_dir, video_id)
        if os.path.isfile(cache_path):  # decoded by an earlier run
            self._cached.inc()
            yield json.dumps({"video_id": video_id, "path": path, "ok": True, "cached": True})
            return
        result = self._decoder.decode(video_id, path, cache_path)
        (self._decoded if result["ok"] else self._failed).inc()
        yield json.dumps(result)

    def teardown(self):
        if self._decoder is not None:
            self._decoder.close()


def _locate(video_and_found) -> tuple[str, str | None]:
    """(video, [(key, paths), ...]) -> (video_id, its file or None), by the local path's own rule."""
    video, found = video_and_found
    index: dict[str, list[str]] = {}
    for key, paths in found:
        index.setdefault(key, []).extend(paths)
    return video.video_id, annotations_lib.find_video_file(index, video)


def locate_and_decode(videos, videos_dir: str, sidecar_field: str | None, cache_dir: str, params: dict,
                      timeout: float | None, options: PipelineOptions, work_dir: str, decode_fn=None
                      ) -> tuple[dict[str, str | None], list[dict], dict[str, int]]:
    """List `videos_dir`, find each video's file and decode it into `cache_dir`, as one Beam pipeline.

    Returns ({video_id: file or None}, a status dict per found video (`"cached"` when an earlier
    run had decoded it), counters). The folder is listed in parallel pieces
    (`annotations.listing_parts`); each video gathers the index entries of its own names
    (`annotations.lookup_keys`) and picks its file with `annotations.find_video_file`, so both
    paths find the same files.
    """
    results_dir = os.path.join(work_dir, "beam_decode")
    os.makedirs(results_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(results_dir, "*")):
        os.remove(stale)  # an earlier attempt's lines; its finished videos are in the cache
    videos = list({v.video_id: v for v in videos}.values())
    parts = annotations_lib.listing_parts(videos_dir)
    pipeline = beam.Pipeline(options=options)
    listed = (pipeline
              | "folders" >> beam.Create(parts)
              | "spread folders" >> beam.Reshuffle()
              | "list" >> beam.FlatMap(lambda part: annotations_lib.index_entries(videos_dir, part, sidecar_field))
              | "paths by key" >> beam.GroupByKey())
    wanted = (pipeline
              | "videos" >> beam.Create(videos)
              | "names" >> beam.FlatMap(lambda v: [(key, v.video_id) for key in annotations_lib.lookup_keys(v)]))
    found = (({"paths": listed, "wanted": wanted} | "match" >> beam.CoGroupByKey())
             | "by video" >> beam.FlatMap(lambda kv: [(vid, (kv[0], [p for ps in kv[1]["paths"] for p in ps]))
                                                       for vid in kv[1]["wanted"] if kv[1]["paths"]]))
    every = pipeline | "every video" >> beam.Create([(v.video_id, v) for v in videos])
    located = (({"video": every, "found": found} | "gather" >> beam.CoGroupByKey())
               | "locate" >> beam.Map(lambda kv: _locate((kv[1]["video"][0], kv[1]["found"]))))
    _ = (located
         | "located" >> beam.Map(lambda vid_path: json.dumps({"video_id": vid_path[0], "path": vid_path[1]}))
         | "write located" >> beam.io.WriteToText(os.path.join(results_dir, "located"), file_name_suffix=".jsonl"))
    _ = (located
         | "with a file" >> beam.Filter(lambda vid_path: vid_path[1] is not None)
         | "spread videos" >> beam.Reshuffle()  # one video is seconds of work: spread them over all workers
         | "decode" >> beam.ParDo(_Decode(cache_dir, params, timeout, decode_fn))
         | "write status" >> beam.io.WriteToText(os.path.join(results_dir, _RESULTS_PREFIX), file_name_suffix=".jsonl"))
    outcome = pipeline.run()
    outcome.wait_until_finish()
    located_files = {r["video_id"]: r["path"] for r in _read_lines(results_dir, "located")}
    results = _read_lines(results_dir, _RESULTS_PREFIX)
    missing = ({v.video_id for v in videos} - set(located_files)) | (
        {vid for vid, path in located_files.items() if path} - {r["video_id"] for r in results})
    if missing:
        raise RuntimeError(f"the Beam decoding pipeline returned no status for {len(missing)} videos "
                           f"(e.g. {sorted(missing)[:3]}); rerun: decoded videos are kept in {cache_dir}")
    return located_files, results, counters(outcome)


def _read_lines(folder: str, prefix: str) -> list[dict]:
    lines = []
    for path in sorted(glob.glob(os.path.join(folder, prefix + "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            lines.extend(json.loads(line) for line in f if line.strip())
    return lines


class _Example(beam.DoFn):
    """(key, video) -> (key, TFDS example): frames from the decode cache, captions tokenised and tagged."""

    def __init__(self, tagger_spec: str):
        self._tagger_spec = tagger_spec
        self._examples = beam.metrics.Metrics.counter(COUNTERS, "examples_built")
        self._captions = beam.metrics.Metrics.counter(COUNTERS, "captions_tagged")

    def setup(self):
        from data_pipeline import word_weights
        from data_pipeline.tokenizer import default_tokenizer

        self._tagger = word_weights.load_tagger(self._tagger_spec)
        self._tokenizer = default_tokenizer()

    def process(self, item):
        from data_pipeline import prepare

        key, video, cache_path = item
        ids, weights = prepare.caption_features(video.captions, self._tokenizer, self._tagger)
        self._captions.inc(len(video.captions))
        self._examples.inc()
        yield key, prepare.example(video, ids, weights, cache_path)


class SplitExamples(beam.PTransform):
    """A split's examples, for the builders' Beam path: items are (key, VideoAnnotation, cache path)."""

    def __init__(self, items: list[tuple[int, Any, str]], tagger_spec: str):
        super().__init__()
        self._items, self._tagger_spec = items, tagger_spec

    def expand(self, pipeline):
        return (pipeline
                | "videos" >> beam.Create(self._items)
                | "spread" >> beam.Reshuffle()
                | "examples" >> beam.ParDo(_Example(self._tagger_spec)))


def counters(outcome) -> dict[str, int]:
    """This module's Beam counters of a finished pipeline, {name: value} (empty where the runner keeps none)."""
    try:
        found = outcome.metrics().query(beam.metrics.MetricsFilter().with_namespace(COUNTERS))["counters"]
    except (NotImplementedError, AttributeError, KeyError):
        return {}
    totals: dict[str, int] = {}
    for counter in found:
        name = counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[name] = totals.get(name, 0) + int(value or 0)
    return totals


def describe(options: PipelineOptions) -> dict[str, Any]:
    """What the report records of the pipeline options (the runner and the options given)."""
    return {k: v for k, v in options.get_all_options(drop_default=True).items() if v is not None}
