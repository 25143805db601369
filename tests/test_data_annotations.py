"""Each set's annotation format and split protocol, on small files in that format."""

import json
import os
import pickle

import pytest

from data_pipeline import annotations as ann
from test_data_fixtures import write_msrvtt_set


def test_msrvtt_train_all_captions_test_1k_a_pairs(tmp_path):
    _, folder = write_msrvtt_set(str(tmp_path), train={"video0": (0, ["a cat sleeps", "a cat naps"]), "video1": (0, ["a dog runs"])},
                                 test={"video7": (0, 'a man says "hi, there", then leaves')})
    # MSR-VTT's data json also holds the test video's other sentences; the 1k-A query is the csv's.
    data = json.load(open(os.path.join(folder, "MSRVTT_data.json")))
    data["sentences"].append({"video_id": "video7", "caption": "someone talks", "sen_id": 99})
    json.dump(data, open(os.path.join(folder, "MSRVTT_data.json"), "w"))
    result = ann.load_annotations("msrvtt", folder)
    assert result.query_mode == ann.SENTENCE
    assert [(v.video_id, v.captions) for v in result.splits["train"]] == [("video0", ("a cat sleeps", "a cat naps")), ("video1", ("a dog runs",))]
    (test,) = result.splits["test"]
    assert test.video_id == "video7" and test.captions == ('a man says "hi, there", then leaves',)  # quoted comma kept
    assert set(test.sentences) == {'a man says "hi, there", then leaves', "someone talks"}


def test_msrvtt_training_video_without_sentence_is_a_problem_not_a_crash(tmp_path):
    _, folder = write_msrvtt_set(str(tmp_path), train={"video0": (0, ["a cat"]), "video1": (0, [])}, test={"video2": (0, "x")})
    result = ann.load_msrvtt(folder)
    assert [v.video_id for v in result.splits["train"]] == ["video0"]
    (problem,) = result.problems
    assert problem["video_id"] == "video1" and problem["file"].endswith("MSRVTT_data.json")


def test_msrvtt_bad_field_names_file_entry_and_field(tmp_path):
    _, folder = write_msrvtt_set(str(tmp_path), train={"video0": (0, ["a cat"])}, test={"video2": (0, "x")})
    path = os.path.join(folder, "MSRVTT_data.json")
    data = json.load(open(path))
    data["sentences"][0]["caption"] = 17
    json.dump(data, open(path, "w"))
    with pytest.raises(ann.AnnotationError, match=r"MSRVTT_data.json: sentences\[0\].caption must be str"):
        ann.load_msrvtt(folder)
    os.remove(os.path.join(folder, "MSRVTT_JSFUSION_test.csv"))
    with pytest.raises(ann.AnnotationError, match="MSRVTT_JSFUSION_test.csv not found"):
        ann.load_msrvtt(folder)


def _write_msvd(folder, captions, splits):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "raw-captions.pkl"), "wb") as f:
        pickle.dump(captions, f)
    for split, ids in splits.items():
        with open(os.path.join(folder, f"{split}_list.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")


def test_msvd_every_caption_of_each_split_video(tmp_path):
    folder = str(tmp_path)
    _write_msvd(folder, {"-4wsuPCjDBc_5_15": [["a", "man", "sings"], ["someone", "is", "singing"]], "abc_1_2": [["a", "cat"]],
                         "zzz_0_1": [["a", "dog"], []]}, {"train": ["abc_1_2"], "val": ["zzz_0_1"], "test": ["-4wsuPCjDBc_5_15", "gone_1_2"]})
    result = ann.load_annotations("msvd", folder)
    assert result.splits["test"][0].captions == ("a man sings", "someone is singing")
    assert result.splits["val"][0].captions == ("a dog",)  # the empty caption is left out ...
    problems = {(p["video_id"], p["field"]) for p in result.problems}
    assert ("zzz_0_1", "caption") in problems and ("gone_1_2", "captions") in problems  # ... and reported


def test_msvd_pickle_with_code_is_refused(tmp_path):
    folder = str(tmp_path)
    _write_msvd(folder, {}, {"train": [], "val": [], "test": []})

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(os.path.join(folder, "raw-captions.pkl"), "wb") as f:
        pickle.dump({"v": Evil()}, f)
    with pytest.raises(ann.AnnotationError, match="refusing to load"):
        ann.load_msvd(folder)


def test_didemo_paragraph_of_all_descriptions(tmp_path):
    folder = str(tmp_path)
    moments = [{"video": "123@N00_456_abc.mov", "description": "a man walks in.", "times": [[0, 1]]},
               {"video": "99_1.mp4", "description": "a car passes", "times": [[2, 2]]},
               {"video": "123@N00_456_abc.mov", "description": "he sits down", "times": [[3, 4]]}]
    for split in ("train", "val", "test"):
        json.dump(moments, open(tmp_path / f"{split}_data.json", "w"))
    (tmp_path / "val_list.txt").write_text("99_1.mp4\n")  # a list, when present, restricts the split
    result = ann.load_annotations("didemo", folder)
    assert result.query_mode == ann.PARAGRAPH
    first = result.splits["train"][0]
    assert first.video_id == "123@N00_456_abc" and first.captions == ("a man walks in. he sits down",)
    assert first.sentences == ("a man walks in.", "he sits down") and first.file_names[0] == "123@N00_456_abc.mov"
    assert [v.video_id for v in result.splits["val"]] == ["99_1"]
    bad = [{"video": "x.mp4", "times": []}]
    json.dump(bad, open(tmp_path / "test_data.json", "w"))
    with pytest.raises(ann.AnnotationError, match=r"test_data.json: \[0\] has no field 'description'"):
        ann.load_didemo(folder)


def test_activitynet_paragraph_val_1_and_v_prefix(tmp_path):
    folder = str(tmp_path)
    train = {"v_abc": {"duration": 10.0, "timestamps": [[0, 5], [5, 10]], "sentences": ["A man runs.", " He jumps. "]}}
    val = {"v_def": {"duration": 5.0, "timestamps": [[0, 5]], "sentences": ["A cat sleeps."]}}
    json.dump(train, open(tmp_path / "train.json", "w"))
    json.dump(val, open(tmp_path / "val_1.json", "w"))
    json.dump(["v_abc"], open(tmp_path / "train_ids.json", "w"))
    json.dump(["v_def", "v_missing"], open(tmp_path / "val_ids.json", "w"))
    result = ann.load_annotations("activitynet", folder)
    assert result.query_mode == ann.PARAGRAPH and set(result.splits) == {"train", "val"}
    (video,) = result.splits["train"]
    assert video.captions == ("A man runs. He jumps.",) and video.file_names == ("v_abc", "abc")
    assert [p["video_id"] for p in result.problems] == ["v_missing"]
    # Files may be named with or without "v_"; .mp4 is preferred among same-stem files.
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    for name in ("sub/abc.mkv", "sub/abc.mp4", "def.webm", "notes.txt"):
        (videos / name).write_bytes(b"x")
    index = ann.index_video_files(str(videos))
    assert ann.find_video_file(index, video).endswith("sub/abc.mp4")
    assert ann.find_video_file(index, result.splits["val"][0]).endswith("def.webm")
    json.dump({"v_abc": {"duration": 1.0, "sentences": "not a list"}}, open(tmp_path / "train.json", "w"))
    with pytest.raises(ann.AnnotationError, match=r"train.json: 'v_abc'.sentences must be list"):
        ann.load_activitynet(folder)


def test_unknown_set_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        ann.load_annotations("kinetics", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--annotations"):
        ann.load_annotations("msvd", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="--videos"):
        ann.index_video_files(str(tmp_path / "nope"))
