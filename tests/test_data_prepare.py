"""The offline job: protocol per split, failures reported and skipped, resume, atomic output, CLI."""

import json
import os
import sys
import time
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipeline import decoder
from data_pipeline import prepare as prep
from data_pipeline import video
from data_pipeline.tokenizer import default_tokenizer
from test_data_fixtures import level_to_second, write_msrvtt_set
from tvr_jax import cli

TRAIN = {"video0": (3, ["a red cat sleeps", "a cat naps"]), "video1": (5, ["a dog runs"]), "video2": (2, ["a bird sings"]),
         "video3": (0, ["never downloaded"]), "video4": (4, ["an empty file"]), "video5": (4, ["a truncated file"])}
TEST = {"video8": (6, "a man cooks"), "video9": (2, "a woman swims")}


def _damage(videos):
    open(os.path.join(videos, "video4.mp4"), "wb").close()
    path = os.path.join(videos, "video5.mp4")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    videos, annotations = write_msrvtt_set(str(tmp_path_factory.mktemp("msrvtt")), TRAIN, TEST)
    _damage(videos)
    return videos, annotations


def test_prepare_reports_and_skips_bad_videos(source, tmp_path, capsys):
    videos, annotations = source
    out = str(tmp_path / "data")
    report = prep.prepare("msrvtt", out, videos, annotations, tagger="fallback", workers=2, progress=False)
    assert report["status"] == "prepared" and report["tagger"] == "fallback-stoplist-v1"
    assert report["tagger_info"] == {"spec": "fallback", "name": "fallback-stoplist-v1"}
    assert report["splits"]["train"] == {"videos_in_annotations": 6, "prepared": 3, "failed": 3, "captions": 4}
    assert report["splits"]["test"] == {"videos_in_annotations": 2, "prepared": 2, "failed": 0, "captions": 2}
    reasons = {f["video_id"]: f["reason"] for f in report["failures"]}
    assert reasons == {"video3": "missing", "video4": "empty", "video5": "unreadable"}
    assert all(f["fix"] and f["split"] == "train" for f in report["failures"])
    on_disk = json.load(open(os.path.join(out, prep.REPORT_FILE)))
    assert on_disk["msrvtt"]["failures"] == report["failures"]
    summary = prep.summary(report)
    assert "3 videos left out: 1 empty, 1 missing, 1 unreadable" in summary and "video5" in summary
    assert "not the paper's 'spacy:en_core_web_md'" in summary
    assert not os.path.exists(os.path.join(out, "_work", "msrvtt"))  # cache dropped after success

    builder = tfds.builder_from_directory(prep.dataset_dir(out, "msrvtt"))
    meta = builder.info.metadata
    assert meta["query_mode"] == "sentence" and meta["tagger"] == "fallback-stoplist-v1"
    assert meta["tagger_info"] == {"spec": "fallback", "name": "fallback-stoplist-v1"}
    # Training compares it with the config's data.tagger (the paper's by default).
    assert prep.tagger_warning(out, "msrvtt", "fallback") is None
    assert "WORD WEIGHTS MISMATCH" in prep.tagger_warning(out, "msrvtt", "spacy:en_core_web_md")
    assert prep.tagger_warning(str(tmp_path / "nothing"), "msrvtt", "fallback") is None
    assert meta["splits"]["train"] == {"video_ids": ["video0", "video1", "video2"], "num_captions": [2, 1, 1], "num_frames": [3, 5, 2]}
    records = builder.as_data_source("train")  # TFDS's own decoding: the full stored example
    assert len(records) == 3
    first = records[0]
    assert first["video_id"] == b"video0" and first["num_frames"] == 3 and first["duration"] == pytest.approx(3.0)
    assert [c.decode() for c in first["captions"]] == ["a red cat sleeps", "a cat naps"]
    np.testing.assert_array_equal(level_to_second([f.mean() for f in first["frames"]]), [0, 1, 2])  # 1 fps, in order
    np.testing.assert_allclose(first["frame_times"], [0.5, 1.5, 2.5])
    ids, _ = default_tokenizer()(["a red cat sleeps", "a cat naps"], 77)
    np.testing.assert_array_equal(first["caption_ids"], ids)
    np.testing.assert_array_equal(first["caption_weights"][0][:6], [0, 1, 2, 2, 2, 0])
    assert first["frames"][0].shape == (48, 64, 3) and first["source_height"] == 48


def test_interrupted_prepare_resumes_without_redoing_work(source, tmp_path, monkeypatch):
    videos, annotations = source
    out = str(tmp_path / "data")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "_build_tfds", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare("msrvtt", out, videos, annotations, tagger="fallback", workers=1, progress=False)
    monkeypatch.undo()
    cache = os.path.join(out, "_work", "msrvtt", "frames")
    cached = sorted(os.listdir(cache))
    assert cached == ["video0.npz", "video1.npz", "video2.npz", "video8.npz", "video9.npz"]
    assert not os.path.exists(prep.dataset_dir(out, "msrvtt"))  # nothing half-written is visible
    # As if the run had stopped while decoding: one video unfinished, one write left half done.
    os.remove(os.path.join(cache, "video1.npz"))
    open(os.path.join(cache, "video1.npz.partial"), "wb").write(b"half")
    report = prep.prepare("msrvtt", out, videos, annotations, tagger="fallback", workers=1, progress=False)
    assert report["decoded_this_run"] == 1 and report["reused_from_cache"] == 4
    assert report["splits"]["train"]["prepared"] == 3
    again = prep.prepare("msrvtt", out, videos, annotations, tagger="fallback", workers=1, progress=False)
    assert again["status"].startswith("already prepared")
    with pytest.raises(ValueError, match="--rebuild"):
        prep.prepare("msrvtt", out, videos, annotations, tagger="fallback", fps=2.0, progress=False)
    rebuilt = prep.prepare("msrvtt", out, videos, annotations, tagger="fallback", fps=2.0, rebuild=True, workers=2, progress=False)
    assert rebuilt["decoded_this_run"] == 5
    meta = tfds.builder_from_directory(prep.dataset_dir(out, "msrvtt")).info.metadata
    assert meta["splits"]["train"]["num_frames"] == [6, 10, 4] and meta["frames"]["fps"] == 2.0


def test_a_split_left_empty_is_an_error_with_a_report(tmp_path):
    videos, annotations = write_msrvtt_set(str(tmp_path / "src"), {"video0": (2, ["a cat"])}, {"video9": (0, "never there")})
    out = str(tmp_path / "data")
    with pytest.raises(prep.PrepareError, match=r"\['test'\] have no usable video"):
        prep.prepare("msrvtt", out, videos, annotations, tagger="fallback", workers=1, progress=False)
    report = json.load(open(os.path.join(out, prep.REPORT_FILE)))["msrvtt"]
    assert report["status"].startswith("error") and report["failures"][0]["video_id"] == "video9"
    assert not os.path.exists(prep.dataset_dir(out, "msrvtt"))


def crash_on_video2(video_id, path, cache_path, *args):
    """Decode like the real worker, but die (as a segfaulting decoder would) on video2."""
    if video_id == "video2":
        os._exit(11)
    return video.decode_to_cache(video_id, path, cache_path, *args)


def test_a_decoder_crash_is_traced_to_its_video(source, tmp_path):
    videos, _ = source
    todo = {v: (os.path.join(videos, f"{v}.mp4"), str(tmp_path / f"{v}.npz")) for v in ("video0", "video1", "video2", "video8")}
    params = {"fps": 1.0, "max_frames": None, "short_side": 224, "jpeg_quality": 90}
    results = {r["video_id"]: r for r in decoder.decode_all(todo, params, workers=2, progress=False, decode_fn=crash_on_video2)}
    assert set(results) == set(todo)
    assert results["video2"]["reason"] == "crashed" and not results["video2"]["ok"]
    assert all(results[v]["ok"] for v in ("video0", "video1", "video8"))


def hang_on_video1(video_id, path, cache_path, *args):
    """Decode like the real worker, but never return on video1, as a decoder stuck on a broken stream."""
    if video_id == "video1":
        time.sleep(3600)
    return video.decode_to_cache(video_id, path, cache_path, *args)


def fail_on_video8(video_id, path, cache_path, *args):
    raise OSError(13, "Permission denied")


def disk_full_on_video8(video_id, path, cache_path, *args):
    raise OSError(28, "No space left on device")


def test_a_hung_decoder_is_stopped_reported_and_replaced(source, tmp_path):
    videos, _ = source
    todo = {v: (os.path.join(videos, f"{v}.mp4"), str(tmp_path / f"{v}.npz")) for v in ("video0", "video1", "video2", "video8", "video9")}
    params = {"fps": 1.0, "max_frames": None, "short_side": 224, "jpeg_quality": 90}
    started = time.monotonic()
    results = {r["video_id"]: r for r in decoder.decode_all(todo, params, workers=2, timeout=3.0, progress=False,
                                                            decode_fn=hang_on_video1)}
    assert time.monotonic() - started < 60
    assert set(results) == set(todo)
    assert results["video1"]["reason"] == "timeout" and "3 s" in results["video1"]["detail"]
    assert all(results[v]["ok"] and os.path.isfile(todo[v][1]) for v in ("video0", "video2", "video8", "video9"))
    # The synchronous form (one process per Beam worker) replaces its process too and goes on.
    one = decoder.DecoderProcess(hang_on_video1, tuple(params.values()), timeout=2.0)
    try:
        assert one.decode("video1", *todo["video1"])["reason"] == "timeout" and one.replaced == 1
        assert one.decode("video0", todo["video0"][0], str(tmp_path / "again.npz"))["ok"]
    finally:
        one.close()


def test_an_error_that_is_not_about_the_video_stops_the_run_naming_it(source, tmp_path):
    videos, _ = source
    todo = {"video8": (os.path.join(videos, "video8.mp4"), str(tmp_path / "video8.npz"))}
    params = {"fps": 1.0, "max_frames": None, "short_side": 224, "jpeg_quality": 90}
    with pytest.raises(RuntimeError, match="decoding video8 .*Permission denied"):
        decoder.decode_all(todo, params, workers=1, progress=False, decode_fn=fail_on_video8)
    # A full disk stays an OSError with its errno, naming the video and its cache file (the CLI says "the disk is full").
    with pytest.raises(OSError, match=r"decode cache of video8") as caught:
        decoder.decode_all(todo, params, workers=1, progress=False, decode_fn=disk_full_on_video8)
    assert caught.value.errno == 28 and caught.value.filename == todo["video8"][1]


def test_cli_prepare_prints_summary_and_reports_errors(source, tmp_path, capsys):
    videos, annotations = source
    out = str(tmp_path / "data")
    assert cli.main(["prepare", "--dataset", "msrvtt", "--videos", videos, "--annotations", annotations, "--out", out,
                     "--max-frames", "2", "--short-side", "32", "--workers", "2", "--tagger", "fallback"]) == 0
    printed = capsys.readouterr().out
    assert "train       3 / 6 videos prepared, 3 failed" in printed and "fix:" in printed
    meta = tfds.builder_from_directory(prep.dataset_dir(out, "msrvtt")).info.metadata
    assert meta["splits"]["train"]["num_frames"] == [2, 2, 2] and meta["frames"]["short_side"] == 32
    record = tfds.builder_from_directory(prep.dataset_dir(out, "msrvtt")).as_data_source("test")[0]
    assert record["frames"][0].shape == (32, 43, 3)
    assert cli.main(["prepare", "--dataset", "msvd", "--videos", videos, "--annotations", annotations, "--out", out,
                     "--tagger", "fallback"]) == 2
    assert "raw-captions.pkl not found" in capsys.readouterr().err


class _WordNlp:
    """Stands in for a loaded spaCy pipeline: every whitespace-separated word a NOUN, none a stop word."""

    meta = {"lang": "en", "name": "core_web_md", "version": "3.8.0"}

    def pipe(self, texts, batch_size=None):
        for text in texts:
            tokens, start = [], 0
            for word in text.split():
                idx = text.index(word, start)
                tokens.append(types.SimpleNamespace(text=word, idx=idx, pos_="NOUN", is_stop=False))
                start = idx + len(word)
            yield tokens


def test_paper_set_without_spacy_stops_before_decoding_and_says_how_to_install(source, tmp_path, monkeypatch, capsys):
    videos, annotations = source
    out = str(tmp_path / "data")
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    assert cli.main(["prepare", "--dataset", "msrvtt", "--videos", videos, "--annotations", annotations, "--out", out]) == 2
    err = capsys.readouterr().err
    assert "spaCy is not installed" in err and "pip install -e '.[spacy]'" in err
    assert "python -m spacy download en_core_web_md" in err and "--tagger fallback" in err
    assert not os.path.exists(os.path.join(out, "_work")) and not os.path.exists(prep.dataset_dir(out, "msrvtt"))

    def no_model(name, **kwargs):
        raise OSError(f"[E050] Can't find model '{name}'")

    monkeypatch.setitem(sys.modules, "spacy", types.SimpleNamespace(__version__="3.8.4", load=no_model))
    with pytest.raises(ValueError, match=r"(?s)en_core_web_sm model does not load .*python -m spacy download en_core_web_sm"):
        prep.prepare("msrvtt", out, videos, annotations, spacy_model="en_core_web_sm", progress=False)
    with pytest.raises(ValueError, match="spacy_model must be one of"):
        prep.prepare("msrvtt", out, videos, annotations, spacy_model="en_core_web_trf", progress=False)


def test_spacy_tagger_is_recorded_with_its_versions(tmp_path, monkeypatch):
    videos, annotations = write_msrvtt_set(str(tmp_path / "src"), {"video0": (2, ["a cat sleeps"])}, {"video9": (1, "a dog")})
    fake = types.SimpleNamespace(__version__="3.8.4", load=lambda name, **kwargs: _WordNlp())
    monkeypatch.setitem(sys.modules, "spacy", fake)
    out = str(tmp_path / "data")
    report = prep.prepare("msrvtt", out, videos, annotations, workers=1, progress=False)  # spaCy by default
    info = {"spec": "spacy:en_core_web_md", "name": "spacy-3.8.4/en_core_web_md-3.8.0", "spacy_version": "3.8.4",
            "model": "en_core_web_md", "model_version": "3.8.0"}
    assert report["tagger"] == info["name"] and report["tagger_info"] == info
    assert json.load(open(os.path.join(out, prep.REPORT_FILE)))["msrvtt"]["tagger_info"] == info
    meta = json.load(open(os.path.join(prep.dataset_dir(out, "msrvtt"), "metadata.json")))
    assert meta["tagger"] == info["name"] and meta["tagger_info"] == info
    assert "not the paper's" not in prep.summary(report)
    record = tfds.builder_from_directory(prep.dataset_dir(out, "msrvtt")).as_data_source("train")[0]
    np.testing.assert_array_equal(record["caption_weights"][0][:5], [0, 2, 2, 2, 0])  # the fake's tags: all content
    assert prep.tagger_warning(out, "msrvtt", "spacy:en_core_web_md") is None
    # Another tagger for a prepared set needs --rebuild, like other frame parameters.
    with pytest.raises(ValueError, match="prepared with tagger 'spacy:en_core_web_md', not 'fallback'"):
        prep.prepare("msrvtt", out, videos, annotations, tagger="fallback", progress=False)
