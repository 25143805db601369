"""Your own videos (one CSV / JSON Lines file) and WebVid: parsing, every error with its line and
column, the file layouts videos are found in, and a tiny set prepared end to end."""

import csv
import json
import os
import sys

import pytest
import tensorflow_datasets as tfds

from data_pipeline import annotations as ann
from data_pipeline import prepare as prep
from test_data_fixtures import write_counting_clip
from tvr_jax import cli


def _write(path, text, mode="w"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
        f.write(text)
    return str(path)


# ----------------------------------------------------------------------------- custom: the two formats

def test_custom_csv_several_captions_per_video_splits_and_default_video_id(tmp_path):
    path = _write(tmp_path / "captions.csv",
                  "\ufeff Video ,Caption,SPLIT,notes\n"             # a spreadsheet's BOM, case and spaces in names
                  "clips/cat.mp4,a cat sleeps,train,x\n"
                  "\n"                                               # blank lines are no rows
                  './clips//cat.mp4,"a cat, asleep on\na sofa",,\n'  # the same file, quoted comma and newline, no split: train
                  "dog.mp4,a dog runs,test,\n"
                  "dog.mp4,a dog runs,test,\n"                      # repeated: kept once, reported
                  "bird,a bird sings, Val ,\n"
                  ",,,\n")                                           # an empty spreadsheet row
    result = ann.load_annotations("custom", path)
    assert result.name == "custom" and result.query_mode == ann.SENTENCE and list(result.splits) == ["train", "val", "test"]
    (cat,) = result.splits["train"]
    assert cat.video_id == "clips/cat.mp4" and cat.captions == ("a cat sleeps", "a cat, asleep on\na sofa") == cat.sentences
    assert cat.file_names == (ann.relative_key("clips/cat.mp4"),)
    assert [(v.video_id, v.captions) for v in result.splits["test"]] == [("dog.mp4", ("a dog runs",))]
    assert [v.video_id for v in result.splits["val"]] == ["bird"]
    (problem,) = result.problems
    assert problem["entry"] == "line 7" and problem["video_id"] == "dog.mp4" and "line 6" in problem["problem"]
    assert "or none" in result.protocol["train"] and "or none" not in result.protocol["test"]


@pytest.mark.parametrize("ext", [".jsonl", ".json"])
def test_custom_json_lines_with_video_ids(tmp_path, ext):
    lines = [{"video": "a/x.mp4", "caption": "first", "video_id": 17, "split": "test"},
             {"video": "a/x.mp4", "caption": "second", "video_id": "17", "split": "test", "extra": [1]},
             {"video": "b/x.mp4", "caption": " third ", "split": None},
             {"video": "c.webm", "caption": "fourth", "video_id": ""}]
    path = _write(tmp_path / f"captions{ext}", "\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" +
                  "\n".join(json.dumps(x) for x in lines[2:]) + "\n")
    result = ann.load_annotations("custom", path)
    assert [(v.video_id, v.captions) for v in result.splits["test"]] == [("17", ("first", "second"))]
    assert [(v.video_id, v.captions) for v in result.splits["train"]] == [("b/x.mp4", ("third",)), ("c.webm", ("fourth",))]
    assert result.problems == ()


def test_custom_relative_paths_find_that_file_only(tmp_path):
    videos = tmp_path / "videos"
    for name in ("cat.mp4", "a/cat.mp4", "b/cat.mp4", "b/cat.mkv", "c/dog.webm", "c/dog.mp4", "notes/cat.txt"):
        _write(videos / name, "x")
    path = _write(tmp_path / "c.csv", "video,caption\ncat.mp4,x\nb/cat.mkv,y\nc/dog,z\nb/cat.webm,w\n")
    index = ann.index_video_files(str(videos))
    found = {v.video_id: ann.find_video_file(index, v) for v in ann.load_custom(path).splits["train"]}
    rel = {k: os.path.relpath(p, videos) if p else None for k, p in found.items()}
    assert rel == {"cat.mp4": "cat.mp4", "b/cat.mkv": "b/cat.mkv", "c/dog": "c/dog.mp4", "b/cat.webm": None}
    (missing,) = [v for v in ann.load_custom(path).splits["train"] if v.video_id == "b/cat.webm"]
    assert ann.missing_file_detail(missing, str(videos)) == f"no file {videos}/b/cat.webm"


# ----------------------------------------------------------------------------- custom: errors

CSV_ERRORS = [
    ("clip,caption\na.mp4,x\n", r"c\.csv: line 1: no column 'video' in the header \['clip', 'caption'\]"),
    ("video;caption\na.mp4;x\n", r"line 1: no column 'video', 'caption' in the header .*comma-separated"),
    ("video,caption,video\na.mp4,x,y\n", r"line 1: column\(s\) \['video'\] named twice"),
    ("video,caption\na.mp4,x\nb.mp4,   \n", r"c\.csv: line 3, column 'caption': empty caption; write the video's description"),
    ("video,caption\n  ,x\n", r"line 2, column 'video': empty video path"),
    ("video,caption,split\na.mp4,x,train\nb.mp4,y,test\na.mp4,z,test\n",
     r"line 4, column 'split': video 'a.mp4' is in split 'test' here but in 'train' on line 2; a video belongs to one split"),
    ("video,caption,split\na.mp4,x,test\na.mp4,z,\n",
     r"line 3, column 'split': video 'a.mp4' is in split 'train' \(no split given\) here but in 'test' on line 2"),
    ("video,caption,split\na.mp4,x,testing\n", r"line 2, column 'split': unknown split 'testing'; write train, val or test"),
    ("video,caption,video_id\na.mp4,x,one\nb.mp4,y,one\n",
     r"line 3, column 'video_id': video_id 'one' names file 'b.mp4' here but 'a.mp4' on line 2; give each file its own video_id"),
    ("video,caption,video_id\na.mp4,x,one\na.mp4,y,two\n",
     r"line 3, column 'video_id': file 'a.mp4' has video_id 'two' here but 'one' on line 2; give all rows of a file the same"),
    ("video,caption,video_id\na.mp4,x,\nb.mp4,y,a.mp4\n", r"line 3, column 'video_id': video_id 'a.mp4' names file 'b.mp4'"),
    ("video,caption\na.mp4,a cat, asleep\n", r"line 2, column 3 \(after 'caption'\): 3 fields, the header \(line 1\) has 2; .*quote"),
    ("video,caption,split\na.mp4,x\n", r"line 2, column 'split': 2 fields, the header \(line 1\) has 3"),
    ("video,caption\n/data/a.mp4,x\n", r"line 2, column 'video': '/data/a.mp4' is an absolute path; write it relative to --videos"),
    ("video,caption\n../a.mp4,x\n", r"line 2, column 'video': '\.\./a\.mp4' leads out of --videos"),
    ("video,caption\na.txt,x\n", r"line 2, column 'video': 'a\.txt' does not end with a video extension"),
    ("", r"c\.csv is empty; the first line must name the columns"),
    ("video,caption\n", r"c\.csv holds no rows"),
]


@pytest.mark.parametrize("text,message", CSV_ERRORS)
def test_custom_csv_errors_name_line_column_and_fix(tmp_path, text, message):
    with pytest.raises(ann.AnnotationError, match=message):
        ann.load_annotations("custom", _write(tmp_path / "c.csv", text))


def test_custom_non_utf8_bytes_name_line_and_column(tmp_path):
    path = _write(tmp_path / "c.csv", "video,caption\na.mp4,a caf\xe9 table\n".encode("latin-1"), "wb")
    with pytest.raises(ann.AnnotationError, match=r"c\.csv: line 2, character 12 \(column 'caption'\): byte 0xe9 is not UTF-8; "
                                                  r"save the file as UTF-8"):
        ann.load_custom(path)
    path = _write(tmp_path / "c.jsonl", '{"video": "a.mp4", "caption": "ok"}\n{"video": "b.mp4", "caption": "caf\xe9"}\n'
                  .encode("latin-1"), "wb")
    with pytest.raises(ann.AnnotationError, match=r"c\.jsonl: line 2, character 35: byte 0xe9 is not UTF-8"):
        ann.load_custom(path)


JSONL_ERRORS = [
    ('{"video": "a.mp4", "caption": "x"}\n{"video": "b.mp4", "caption": }\n',
     r"c\.jsonl: line 2, character 31: not valid JSON \(Expecting value\); write one JSON object per line"),
    ('{"video": "a.mp4", "text": "x"}\n', r"line 1, column 'caption': no such key \(keys: \['text', 'video'\]\)"),
    ('{"video": "a.mp4", "caption": ""}\n', r"line 1, column 'caption': empty caption"),
    ('{"video": "a.mp4", "caption": 3}\n', r"line 1, column 'caption': must be a string, found 3; quote it"),
    ('{"video": "a.mp4", "caption": "x"}\n["b.mp4", "y"]\n', r"line 2: a JSON list, not an object"),
    ('[{"video": "a.mp4", "caption": "x"}]\n', r"line 1: a JSON array; write JSON Lines instead"),
    ('{"video": "a.mp4", "caption": "x", "split": "test"}\n{"video": "a.mp4", "caption": "y", "split": "val"}\n',
     r"line 2, column 'split': video 'a.mp4' is in split 'val' here but in 'test' on line 1"),
]


@pytest.mark.parametrize("text,message", JSONL_ERRORS)
def test_custom_json_lines_errors_name_line_column_and_fix(tmp_path, text, message):
    with pytest.raises(ann.AnnotationError, match=message):
        ann.load_annotations("custom", _write(tmp_path / "c.jsonl", text))


def test_annotation_file_or_folder_as_each_set_expects(tmp_path):
    with pytest.raises(ann.AnnotationError, match=r"custom annotations are a CSV file \(\.csv\) or a JSON Lines file .*not \.tsv"):
        ann.load_annotations("custom", _write(tmp_path / "c.tsv", "video\tcaption\n"))
    with pytest.raises(ann.AnnotationError, match="is a folder; custom takes the annotation file itself"):
        ann.load_annotations("custom", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="annotation file .* does not exist"):
        ann.load_annotations("custom", str(tmp_path / "none.csv"))
    with pytest.raises(ann.AnnotationError, match="is a file; msrvtt takes the folder holding its annotation files"):
        ann.load_annotations("msrvtt", _write(tmp_path / "c.csv", "video,caption\n"))


# ----------------------------------------------------------------------------- WebVid

WEBVID_HEADER = "videoid,contentUrl,duration,page_dir,name\n"


def _webvid_row(videoid, page_dir, name):
    return f'{videoid},https://example.com/{videoid}.mp4,PT00H00M12S,{page_dir},"{name}"\n'


def test_webvid_csvs_val_is_test_and_overlap_left_out_of_train(tmp_path):
    folder = tmp_path / "csv"
    _write(folder / "results_2M_train.csv", WEBVID_HEADER + _webvid_row(1001, "000001_000050", "Aerial view, city at night")
           + _webvid_row(1002, "000001_000050", "") + _webvid_row(2001, "000051_000100", "Seen in val too")
           + _webvid_row(1003, "000001_000050", "Cat on sofa") + _webvid_row(1003, "000001_000050", "Cat on sofa")
           + _webvid_row(1003, "000001_000050", "Cat asleep"))
    _write(folder / "results_2M_val.csv", WEBVID_HEADER + _webvid_row(2001, "000051_000100", "Waves on a beach"))
    result = ann.load_annotations("webvid", str(folder))
    assert result.query_mode == ann.SENTENCE and set(result.splits) == {"train", "test"}
    assert [(v.video_id, v.captions) for v in result.splits["train"]] == [
        ("1001", ("Aerial view, city at night",)), ("1003", ("Cat on sofa", "Cat asleep"))]
    (val,) = result.splits["test"]
    assert val.video_id == "2001" and val.file_names == ("./000051_000100/2001", "sidecar:2001", "2001")
    assert "results_2M_val.csv" in result.protocol["test"] and "'test'" in result.protocol["test"]
    problems = {(p["entry"], p["video_id"]): p["problem"] for p in result.problems}
    assert problems[("line 3", "1002")] == "empty caption left out"
    assert "kept once" in problems[("line 6", "1003")]
    assert "left out of train" in problems[("line 4", "2001")]
    assert result.sidecar_field == "videoid"


def test_webvid_file_errors(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    with pytest.raises(ann.AnnotationError, match="holds none of WebVid's CSVs"):
        ann.load_webvid(str(folder))
    _write(folder / "results_10M_train.csv", WEBVID_HEADER)
    with pytest.raises(ann.AnnotationError, match="results_10M_val.csv not found: WebVid-10M's validation pairs"):
        ann.load_webvid(str(folder))
    _write(folder / "results_10M_val.csv", "videoid,contentUrl,name\n1,u,x\n")
    with pytest.raises(ann.AnnotationError, match=r"results_10M_val.csv: line 1: no column 'page_dir' in the header"):
        ann.load_webvid(str(folder))
    _write(folder / "results_10M_val.csv", WEBVID_HEADER + "1,u,d,p\n")
    with pytest.raises(ann.AnnotationError, match=r"results_10M_val.csv: line 2, column 'name': 4 fields, the header \(line 1\) has 5"):
        ann.load_webvid(str(folder))
    _write(folder / "results_2M_val.csv", WEBVID_HEADER)
    with pytest.raises(ann.AnnotationError, match="both WebVid-2M and WebVid-10M CSVs"):
        ann.load_webvid(str(folder))


def test_webvid_video_layouts(tmp_path):
    videos = [ann.VideoAnnotation(i, ("x",), ("x",), ("./000001_000050/" + i, ann.sidecar_key(i), i)) for i in ("11", "12", "13")]
    # m-bain/webvid's download.py: {page_dir}/{videoid}.mp4
    download = tmp_path / "download"
    for name in ("000001_000050/11.mp4", "000001_000050/12.mp4", "000099_000100/13.mp4"):
        _write(download / name, "x")
    index = ann.index_video_files(str(download), "videoid")
    assert [os.path.relpath(ann.find_video_file(index, v), download) for v in videos] == [
        "000001_000050/11.mp4", "000001_000050/12.mp4", "000099_000100/13.mp4"]
    # TFDS's manual folder: {part}/{page_dir}/{videoid}.mp4
    tfds_layout = tmp_path / "tfds"
    _write(tfds_layout / "part0" / "000001_000050" / "11.mp4", "x")
    assert ann.find_video_file(ann.index_video_files(str(tfds_layout), "videoid"), videos[0]).endswith("part0/000001_000050/11.mp4")
    # video2dataset --output_format files: {shard}/{key}.mp4 + {key}.json naming the videoid; a key
    # that looks like another video's id is not taken for it.
    v2d = tmp_path / "v2d"
    _write(v2d / "00000" / "000000000.mp4", "x")
    _write(v2d / "00000" / "000000000.json", json.dumps({"videoid": 12, "key": "000000000", "status": "success"}))
    _write(v2d / "00001" / "11.mp4", "x")
    _write(v2d / "00001" / "11.json", json.dumps({"videoid": 13, "key": "11", "status": "success"}))
    index = ann.index_video_files(str(v2d), "videoid")
    found = [ann.find_video_file(index, v) for v in videos]
    assert found[0] is None and found[1].endswith("00000/000000000.mp4") and found[2].endswith("00001/11.mp4")
    assert "json sidecar says 11" in ann.missing_file_detail(videos[0], str(v2d))
    # Without sidecar reading (the other sets), the same files go by their names.
    assert ann.find_video_file(ann.index_video_files(str(v2d)), videos[0]).endswith("00001/11.mp4")


# ----------------------------------------------------------------------------- prepare

@pytest.fixture(scope="module")
def own_videos(tmp_path_factory):
    """Five short clips in two folders and a CSV of their captions: 3 train videos (one missing on
    disk), 2 test videos."""
    root = tmp_path_factory.mktemp("own")
    for name, seconds in (("clips/red.mp4", 2), ("clips/blue.mp4", 3), ("more/green.mp4", 2), ("more/pink.mp4", 1)):
        os.makedirs(os.path.dirname(root / "videos" / name), exist_ok=True)
        write_counting_clip(str(root / "videos" / name), seconds, fps=5, height=32, width=32)
    rows = [["video", "caption", "split", "video_id"],
            ["clips/red.mp4", "a red screen", "", "red"], ["clips/red.mp4", "red, then darker", "train", "red"],
            ["clips/blue.mp4", "a blue screen", "train", ""], ["clips/gone.mp4", "never downloaded", "", ""],
            ["more/green.mp4", "a green screen", "test", ""], ["more/pink.mp4", "a pink screen", "test", "pink"]]
    with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return str(root / "videos"), str(root / "captions.csv")


def test_prepare_custom_set_end_to_end(own_videos, tmp_path, capsys):
    videos, annotations = own_videos
    out = str(tmp_path / "data")
    assert cli.main(["prepare", "--dataset", "custom", "--videos", videos, "--annotations", annotations, "--out", out,
                     "--tagger", "fallback", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "train       2 / 3 videos prepared, 1 failed, 3 captions" in printed and "clips/gone.mp4: missing" in printed
    assert "--config.data.tagger=fallback" in printed  # the configs expect spaCy's weights
    report = json.load(open(os.path.join(out, prep.REPORT_FILE)))["custom"]
    (failure,) = report["failures"]
    assert failure["reason"] == "missing" and failure["detail"] == f"no file {videos}/clips/gone.mp4"
    builder = tfds.builder_from_directory(prep.dataset_dir(out, "custom"))
    meta = builder.info.metadata
    assert meta["query_mode"] == "sentence" and meta["dataset"] == "custom"
    assert meta["splits"]["train"]["video_ids"] == ["red", "clips/blue.mp4"] and meta["splits"]["train"]["num_captions"] == [2, 1]
    assert meta["splits"]["test"]["video_ids"] == ["more/green.mp4", "pink"]
    records = builder.as_data_source("train")
    assert records[0]["video_id"] == b"red" and [c.decode() for c in records[0]["captions"]] == ["a red screen", "red, then darker"]
    assert records[1]["num_frames"] == 3 and records[1]["caption_ids"].shape == (1, 77)
    test = builder.as_data_source("test")
    assert [r["video_id"].decode() for r in test] == ["more/green.mp4", "pink"]
    assert [c.decode() for c in test[1]["captions"]] == ["a pink screen"]


def test_custom_without_test_split_prepares_and_eval_says_what_to_do(own_videos, tmp_path, capsys):
    videos, annotations = own_videos
    train_only = _write(tmp_path / "train.jsonl", json.dumps({"video": "clips/red.mp4", "caption": "a red screen"}) + "\n")
    out = str(tmp_path / "data")
    assert cli.main(["prepare", "--dataset", "custom", "--videos", videos, "--annotations", train_only, "--out", out,
                     "--tagger", "fallback", "--workers", "1"]) == 0
    assert "note: no 'test' split" in capsys.readouterr().out
    from data_pipeline.input_pipeline import InputConfig, VideoTextInput

    with pytest.raises(ValueError, match=r"has no split 'test'; it has \['train'\].*give some rows split 'test' in the annotation file"):
        VideoTextInput(prep.dataset_dir(out, "custom"), InputConfig(split="test", training=False, global_batch_size=8))


def test_prepare_refuses_the_wrong_kind_of_annotations_before_decoding(own_videos, tmp_path, capsys):
    videos, annotations = own_videos
    out = str(tmp_path / "data")
    assert cli.main(["prepare", "--dataset", "custom", "--videos", videos, "--annotations", os.path.dirname(annotations),
                     "--out", out, "--tagger", "fallback"]) == 2
    assert "is a folder; custom takes the annotation file itself" in capsys.readouterr().err
    assert cli.main(["prepare", "--dataset", "msvd", "--videos", videos, "--annotations", annotations, "--out", out,
                     "--tagger", "fallback"]) == 2
    assert "is a file; msvd takes the folder" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "_work"))


def test_real_captions_default_to_spacy(own_videos, tmp_path, monkeypatch, capsys):
    assert [prep.default_tagger(d) for d in ("custom", "webvid", "msrvtt", "synthetic")] == ["spacy", "spacy", "spacy", "fallback"]
    videos, annotations = own_videos
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    assert cli.main(["prepare", "--dataset", "custom", "--videos", videos, "--annotations", annotations,
                     "--out", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "spaCy is not installed" in err and "--tagger fallback" in err


def test_prepare_webvid_download_layout(tmp_path):
    videos, csvs = tmp_path / "webvid" / "videos", tmp_path / "webvid" / "csv"
    for folder, name, seconds in (("000001_000050", "1001.mp4", 2), ("00000", "000000000.mp4", 1)):
        os.makedirs(videos / folder)
        write_counting_clip(str(videos / folder / name), seconds, fps=5, height=32, width=32)
    _write(videos / "00000" / "000000000.json", json.dumps({"videoid": 2001, "key": "000000000", "status": "success"}))
    _write(csvs / "results_2M_train.csv", WEBVID_HEADER + _webvid_row(1001, "000001_000050", "Aerial view of a city")
           + _webvid_row(1002, "000001_000050", "Not downloaded"))
    _write(csvs / "results_2M_val.csv", WEBVID_HEADER + _webvid_row(2001, "000051_000100", "Waves on a beach"))
    out = str(tmp_path / "data")
    report = prep.prepare("webvid", out, str(videos), str(csvs), tagger="fallback", workers=1, progress=False)
    assert report["splits"]["train"] == {"videos_in_annotations": 2, "prepared": 1, "failed": 1, "captions": 1}
    assert [f["video_id"] for f in report["failures"]] == ["1002"]
    meta = tfds.builder_from_directory(prep.dataset_dir(out, "webvid")).info.metadata
    assert meta["splits"]["train"]["video_ids"] == ["1001"] and meta["splits"]["test"]["video_ids"] == ["2001"]
