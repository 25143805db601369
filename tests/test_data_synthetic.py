"""The generated set: unique scenes, one-word sibling families, shots and cut-aways, filler the tagger weighs 1, end to end."""

import json
import os

import numpy as np
import pytest

from data_pipeline import prepare as prep
from data_pipeline import synthetic
from data_pipeline.input_pipeline import InputConfig, VideoTextInput
from data_pipeline.tokenizer import default_tokenizer
from data_pipeline.word_weights import FallbackTagger, caption_weights
from tvr_jax import cli


@pytest.fixture(scope="module")
def scenes():
    return synthetic.generate_scenes(seed=0, scale=1)


def test_scenes_are_unique_and_test_scenes_unseen_in_training(scenes):
    assert {k: len(v) for k, v in scenes.items()} == {"train": synthetic.TRAIN_VIDEOS, "test": synthetic.TEST_VIDEOS}
    keys = {split: [synthetic.scene_key(s) for s in v] for split, v in scenes.items()}
    assert all(len(set(k)) == len(k) for k in keys.values())
    assert not set(keys["train"]) & set(keys["test"])
    assert not {s["family"] for s in scenes["train"]} & {s["family"] for s in scenes["test"]}
    for split in scenes.values():
        captions = [synthetic.canonical_caption(s) for s in split]
        assert len(set(captions)) == len(captions)
        for s in split:  # never one object twice; cut-aways show objects the caption does not name
            objects = [synthetic._object_key(o) for o in s["objects"] + s["cutaways"]]
            assert len(set(objects)) == len(objects)


def test_families_of_one_word_siblings(scenes):
    for split in scenes.values():
        families: dict[int, list[dict]] = {}
        for s in split:
            families.setdefault(s["family"], []).append(s)
        assert all(len(f) == synthetic.FAMILY_SIZE for f in families.values())
        for base, *variants in families.values():
            for v in variants:  # one attribute of one object differs; layout and cut-aways are the base's
                assert synthetic.one_word_difference(base, v) is not None
                assert (v["timeline"], v["positions"], v["cutaways"]) == (base["timeline"], base["positions"], base["cutaways"])
    assert synthetic.one_word_difference(scenes["test"][0], scenes["test"][0]) is None


def test_filler_is_function_words_and_attributes_are_content_words(scenes):
    tagger = FallbackTagger()
    filler = {w for phrase in synthetic.OPENERS + synthetic.LINKS + synthetic.FINAL_LINKS for w in phrase.split()} | {"a"}
    assert not [w for w in filler if tagger.is_content_word(w)]
    attributes = list(synthetic.SIZES) + list(synthetic.COLOURS) + list(synthetic.SHAPES)
    assert all(tagger.is_content_word(w) for w in attributes)
    scene = scenes["test"][0]
    text = synthetic.canonical_caption(scene)
    tokenized = default_tokenizer().tokenize_caption(text, 77)
    weights = caption_weights([tokenized], tagger)[0]
    content = [w for w in text.split() if w in attributes]
    assert len(content) == 3 * synthetic.SHOTS and len(text.split()) > len(content) + 6  # a real mix: filler and content words
    assert int((weights == 2).sum()) == len(content)  # each attribute word is one BPE token


def test_shots_cutaways_and_neighbours(scenes):
    scene = scenes["train"][0]
    frames = synthetic.render_scene(scene)
    assert frames.shape == (synthetic.SECONDS * synthetic.SOURCE_FPS, 64, 64, 3)
    per_second = frames[:: synthetic.SOURCE_FPS].astype(int)
    np.testing.assert_array_equal(frames[::2], frames[1::2])  # one stored frame per second at 1 fps
    timeline = scene["timeline"]
    assert sorted(set(timeline)) == [-1] + list(range(synthetic.SHOTS)) and 1 <= timeline.count(-1) <= 2
    for shot in range(synthetic.SHOTS):
        assert timeline.count(shot) >= 2
    diff = lambda a, b: np.abs(per_second[a] - per_second[b]).mean()
    for t in range(1, len(timeline)):
        if timeline[t] == timeline[t - 1] != -1:  # within a shot, neighbours are near copies
            assert diff(t, t - 1) < 3.0
        if timeline[t] == -1:  # a cut-away is isolated: never next to another one, unlike both neighbours
            assert timeline[t - 1] != -1 and (t + 1 == len(timeline) or timeline[t + 1] != -1)
            assert diff(t, t - 1) > 5.0
    # Each object's colour appears only in its shot's frames (a third or less of the video).
    colour = synthetic.COLOURS[scene["objects"][0]["colour"]]
    shown = [bool(np.all(per_second[t] == colour, axis=-1).any()) for t in range(len(timeline))]
    others = [synthetic.COLOURS[o["colour"]] for o in scene["objects"][1:] + scene["cutaways"]]
    if colour not in others:
        assert shown == [s == 0 for s in timeline]


def test_generation_is_deterministic(scenes):
    again = synthetic.generate_scenes(seed=0, scale=1)
    assert [synthetic.canonical_caption(s) for s in again["test"]] == [synthetic.canonical_caption(s) for s in scenes["test"]]
    other = synthetic.generate_scenes(seed=1, scale=1)
    assert [synthetic.canonical_caption(s) for s in other["test"]] != [synthetic.canonical_caption(s) for s in scenes["test"]]


def test_bad_scale_is_refused():
    with pytest.raises(ValueError, match="at most"):
        synthetic.generate_scenes(scale=100)
    with pytest.raises(ValueError, match=">= 1"):
        synthetic.generate_scenes(scale=0)


def test_cli_generates_and_prepares_the_synthetic_set(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(synthetic, "TRAIN_VIDEOS", 16)  # tiny scale: the test runs in seconds
    monkeypatch.setattr(synthetic, "TEST_VIDEOS", 8)
    out = str(tmp_path / "data")
    assert cli.main(["prepare", "--dataset", "synthetic", "--out", out, "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "train      16 / 16 videos prepared, 0 failed, 48 captions" in printed
    assert "test        8 / 8 videos prepared, 0 failed, 8 captions" in printed
    meta_file = json.load(open(os.path.join(out, "synthetic_source", synthetic.META_FILE)))
    assert meta_file["text_to_video_chance_r1"] == 12.5 and meta_file["test_with_one_word_hard_negative"] == 8
    pipe = VideoTextInput(prep.dataset_dir(out, "synthetic"), InputConfig(split="test", training=False, global_batch_size=8, image_size=32,
                                                                          process_index=0, process_count=1))
    assert pipe.metadata["synthetic"]["counts"] == {"train": 16, "test": 8}
    batch = next(pipe)
    assert batch["video"].shape == (8, 12, 32, 32, 3) and batch["video_mask"].all()
    weights = batch["word_weights"][0]
    assert set(np.unique(weights[weights > 0]).tolist()) == {1, 2} and int((weights == 2).sum()) == 3 * synthetic.SHOTS
    # The frames `prepare` stores (one per second) are the rendered seconds, H.264 aside.
    from data_pipeline.video import decode_video

    first_test = synthetic.generate_scenes(0, 1)["test"][0]
    decoded = decode_video(os.path.join(out, "synthetic_source", "videos", "synth00016.mp4"), fps=1.0).frames
    assert decoded.shape == (synthetic.SECONDS, 64, 64, 3)
    assert np.abs(decoded.astype(int) - synthetic.render_scene(first_test)[:: synthetic.SOURCE_FPS]).mean() < 4.0
