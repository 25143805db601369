"""`tvr-jax prepare --beam-runner`: the Beam path writes the local path's dataset and reports the same failures."""

import json
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

pytest.importorskip("apache_beam")

from data_pipeline import annotations as annotations_lib  # noqa: E402
from data_pipeline import beam_prepare, decoder  # noqa: E402
from data_pipeline import prepare as prep  # noqa: E402
from test_data_fixtures import write_counting_clip, write_msrvtt_set  # noqa: E402
from test_data_prepare import hang_on_video1  # noqa: E402
from tvr_jax import cli  # noqa: E402

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
TRAIN = {"video0": (3, ["a red cat sleeps", "a cat naps"]), "video1": (5, ["a dog runs"]), "video2": (2, ["a bird sings"]),
         "video3": (0, ["never there"]), "video4": (3, ["an empty file"]), "video5": (4, ["cut in half"]),
         "video6": (3, ["not a video at all"]), "video7": (6, ["frame data cut"])}
TEST = {"video8": (6, "a man cooks"), "video9": (2, "a woman swims")}
MULTI_PROCESSING = ["direct_running_mode=multi_processing", "direct_num_workers=2"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small MSR-VTT-layout set with every kind of bad video: missing, empty, truncated, not a video, cut stream."""
    videos, annotations = write_msrvtt_set(str(tmp_path_factory.mktemp("beam_src")), TRAIN, TEST)
    open(os.path.join(videos, "video4.mp4"), "wb").close()
    path = os.path.join(videos, "video5.mp4")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    open(os.path.join(videos, "video6.mp4"), "w").write("<html>a download error page</html>")
    path = os.path.join(videos, "video7.mp4")
    write_counting_clip(path, seconds=6, faststart=True)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) * 2 // 3])
    return videos, annotations


@pytest.fixture
def importable_tests(monkeypatch):
    """Beam's worker processes start from a fresh interpreter: let them import this folder's helpers."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")])))


def _records(out):
    builder = tfds.builder_from_directory(prep.dataset_dir(out, "msrvtt"))
    return builder.info.metadata, {split: [source[i] for i in range(len(source))]
                                   for split in builder.info.splits for source in [builder.as_data_source(split=split)]}


def test_beam_path_writes_the_local_paths_dataset_and_failures(source, tmp_path, importable_tests):
    videos, annotations = source
    local_out, beam_out = str(tmp_path / "local"), str(tmp_path / "beam")
    local = prep.prepare("msrvtt", local_out, videos, annotations, tagger="fallback", workers=2, progress=False)
    beam = prep.prepare("msrvtt", beam_out, videos, annotations, tagger="fallback", progress=False,
                        beam_runner="DirectRunner", beam_options=MULTI_PROCESSING)
    assert beam["status"] == local["status"] == "prepared"
    assert beam["splits"] == local["splits"]
    failures = lambda report: sorted((f["split"], f["video_id"], f["reason"], f["fix"]) for f in report["failures"])
    assert failures(beam) == failures(local)
    assert {f[1]: f[2] for f in failures(local)} == {"video3": "missing", "video4": "empty", "video5": "unreadable",
                                                   "video6": "unreadable", "video7": "unreadable"}
    assert local["runner"] == "local" and beam["runner"]["beam"]["runner"] == "DirectRunner"
    assert beam["runner"]["counters"] == {"videos_decoded": 5, "videos_failed": 4}  # video3 has no file to decode
    assert json.load(open(os.path.join(beam_out, prep.REPORT_FILE)))["msrvtt"]["runner"] == beam["runner"]

    (local_meta, local_data), (beam_meta, beam_data) = _records(local_out), _records(beam_out)
    assert beam_meta["splits"] == local_meta["splits"]
    assert local_meta["splits"]["train"]["video_ids"] == ["video0", "video1", "video2"]
    assert local_meta["splits"]["train"]["num_frames"] == [3, 5, 2]
    assert set(beam_data) == set(local_data) == {"train", "test"}
    for split in local_data:
        assert len(beam_data[split]) == len(local_data[split])
        for ours, theirs in zip(beam_data[split], local_data[split]):
            assert set(ours) == set(theirs)
            for field in theirs:  # frames decoded to pixels: equal, and never zeros
                assert np.array_equal(np.asarray(ours[field]), np.asarray(theirs[field])), (split, field)
            assert np.asarray(ours["frames"]).max() > 0 and ours["caption_weights"].max() == 2


def test_beam_decoding_stops_a_hung_decoder_like_the_local_pool(source, tmp_path, importable_tests):
    videos, annotations = source
    ann = annotations_lib.load_annotations("msrvtt", annotations)
    wanted = [v for v in ann.splits["train"] if v.video_id in ("video0", "video1", "video2", "video3")]
    params = {"fps": 1.0, "max_frames": None, "short_side": 224, "jpeg_quality": 90}
    options = beam_prepare.pipeline_options("DirectRunner", MULTI_PROCESSING)
    (tmp_path / "cache").mkdir()
    located, results, counters = beam_prepare.locate_and_decode(
        wanted, videos, None, str(tmp_path / "cache"), params, 3.0, options, str(tmp_path / "work"), decode_fn=hang_on_video1)
    assert located == {"video0": os.path.join(videos, "video0.mp4"), "video1": os.path.join(videos, "video1.mp4"),
                       "video2": os.path.join(videos, "video2.mp4"), "video3": None}
    by_id = {r["video_id"]: r for r in results}
    assert set(by_id) == {"video0", "video1", "video2"}
    assert by_id["video1"]["reason"] == "timeout" and not by_id["video1"]["ok"]
    assert by_id["video0"]["ok"] and by_id["video2"]["ok"]
    assert counters == {"videos_decoded": 2, "videos_failed": 1}
    todo = {vid: (path, str(tmp_path / f"local_{vid}.npz")) for vid, path in located.items() if path}
    local = {r["video_id"]: r["reason"] if not r["ok"] else "ok" for r in decoder.decode_all(
        todo, params, 2, timeout=3.0, progress=False, decode_fn=hang_on_video1)}
    assert local == {v: r["reason"] if not r["ok"] else "ok" for v, r in by_id.items()}
    # A rerun keeps what is decoded and retries the rest.
    _, again, counters = beam_prepare.locate_and_decode(
        wanted, videos, None, str(tmp_path / "cache"), params, 3.0, options, str(tmp_path / "work"))
    assert {r["video_id"]: bool(r.get("cached")) for r in again} == {"video0": True, "video1": False, "video2": True}
    assert counters == {"videos_cached": 2, "videos_decoded": 1}


def test_beam_listing_finds_the_files_the_local_index_finds(tmp_path, importable_tests):
    """Nested folders, a sidecar-named file, same-stem files of two extensions, files directly in the root."""
    root = tmp_path / "videos"
    for rel in ("a.mp4", "a.webm", "x/b.mkv", "x/y/c.mp4", "z/0001.mp4", "z/notes.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"0")
    (root / "z" / "0001.json").write_text(json.dumps({"videoid": "d"}))
    names = {"a": ("a",), "b": ("b",), "c": (annotations_lib.relative_key("x/y/c"),), "d": (annotations_lib.sidecar_key("d"),),
             "e": ("e",), "f": (annotations_lib.relative_key("x/b.mkv"),)}
    wanted = [annotations_lib.VideoAnnotation(vid, ("c",), ("c",), file_names) for vid, file_names in names.items()]
    index = annotations_lib.index_video_files(str(root), "videoid")
    expected = {v.video_id: annotations_lib.find_video_file(index, v) for v in wanted}
    assert expected["a"].endswith("a.mp4") and expected["d"].endswith("0001.mp4") and expected["e"] is None
    options = beam_prepare.pipeline_options("DirectRunner", ["direct_num_workers=2", "direct_running_mode=multi_threading"])
    (tmp_path / "cache").mkdir()
    located, results, _ = beam_prepare.locate_and_decode(
        wanted, str(root), "videoid", str(tmp_path / "cache"), {"fps": 1.0, "max_frames": None, "short_side": 32, "jpeg_quality": 90},
        30.0, options, str(tmp_path / "work"))
    assert located == expected
    assert {r["video_id"] for r in results} == {vid for vid, path in expected.items() if path}  # all fail: not videos


def test_beam_options_and_missing_beam_are_clear(monkeypatch, tmp_path):
    options = beam_prepare.pipeline_options("DirectRunner", ["direct_num_workers=3", "--project=p"]).get_all_options()
    assert options["runner"] == "DirectRunner" and options["direct_num_workers"] == 3 and options["project"] == "p"
    with pytest.raises(ValueError, match="--beam-option 'direct_num_workers': expected KEY=VALUE"):
        beam_prepare.pipeline_options("DirectRunner", ["direct_num_workers"])
    import data_pipeline

    monkeypatch.delattr(data_pipeline, "beam_prepare")  # as if apache-beam were not installed
    monkeypatch.setitem(sys.modules, "data_pipeline.beam_prepare", None)
    with pytest.raises(ImportError, match=r"pip install -e '.\[beam\]'"):
        prep.prepare("synthetic", str(tmp_path), beam_runner="DirectRunner", progress=False)


def test_cli_passes_beam_and_timeout_flags(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(prep, "prepare", lambda *a, **k: seen.update(k) or {"dataset": "msrvtt", "tfds_dir": "x"})
    assert cli.main(["prepare", "--dataset", "msrvtt", "--videos", "v", "--annotations", "a", "--out", str(tmp_path),
                     "--decode-timeout", "12", "--beam-runner", "FlinkRunner", "--beam-option", "flink_master=h:8081",
                     "--beam-option", "parallelism=4"]) == 0
    assert seen["decode_timeout"] == 12 and seen["beam_runner"] == "FlinkRunner"
    assert seen["beam_options"] == ["flink_master=h:8081", "parallelism=4"]


@pytest.mark.parametrize("drops", [1, prep.BEAM_WRITE_ATTEMPTS])
def test_a_runner_that_loses_examples_is_caught_the_write_redone_and_a_short_dataset_never_kept(
        source, tmp_path, monkeypatch, capsys, caplog, drops):
    """A runner that drops a bundle (seen with the DirectRunner in multi-processing mode): the count
    after the write catches it; the write is redone from the decoded frames; a dataset that stays
    short is removed and `prepare` stops with one clear line."""
    videos, annotations = source
    expand, left = beam_prepare.SplitExamples.expand, {"drops": drops}

    def losing_expand(self, pipeline):  # decided here, in the driver: the runner loses train's first example
        examples = expand(self, pipeline)
        if left["drops"] <= 0 or self._items[0][1].video_id != "video0":
            return examples
        left["drops"] -= 1
        return examples | beam.Filter(lambda key_example: key_example[0] != 0)

    beam = pytest.importorskip("apache_beam")
    monkeypatch.setattr(beam_prepare.SplitExamples, "expand", losing_expand)
    out = str(tmp_path / "out")
    command = ["prepare", "--dataset", "msrvtt", "--videos", videos, "--annotations", annotations, "--out", out,
               "--tagger", "fallback", "--beam-runner", "DirectRunner", "--beam-option", "direct_running_mode=in_memory"]
    code = cli.main(command)
    attempts = prep.BEAM_WRITE_ATTEMPTS
    if drops < attempts:
        assert code == 0 and left["drops"] == 0
        assert json.load(open(os.path.join(out, prep.REPORT_FILE)))["msrvtt"]["runner"]["write_attempts"] == 2
        assert "examples written of 3" in caplog.text and f"attempt 2 of {attempts}" in caplog.text
        _, data = _records(out)
        assert [r["video_id"] for r in data["train"]] == [b"video0", b"video1", b"video2"]
        return
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("tvr-jax prepare: error: msrvtt: the Beam runner (DirectRunner) wrote fewer examples")
    assert "split 'train': 2 examples written of 3" in err[0] and "Rerun the same command" in err[0]
    assert not os.path.exists(prep.dataset_dir(out, "msrvtt"))  # nothing short left to train on
    assert os.listdir(os.path.join(out, "_work", "msrvtt", "frames"))  # the decoded frames are kept
