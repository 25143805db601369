"""The generated set: unique scenes, one-word hard negatives, direction invisible in one frame, end to end."""

import json
import os

import numpy as np
import pytest

from data_pipeline import prepare as prep
from data_pipeline import synthetic
from data_pipeline.input_pipeline import InputConfig, VideoTextInput
from tvr_jax import cli


@pytest.fixture(scope="module")
def scenes():
    return synthetic.generate_scenes(seed=0, scale=1)


def test_scenes_are_unique_and_test_scenes_unseen_in_training(scenes):
    assert {k: len(v) for k, v in scenes.items()} == {"train": 400, "test": 100}
    keys = {split: [synthetic.scene_key(s) for s in v] for split, v in scenes.items()}
    assert all(len(set(k)) == len(k) for k in keys.values())
    assert not set(keys["train"]) & set(keys["test"])
    for split in scenes.values():
        captions = [synthetic.canonical_caption(s) for s in split]
        assert len(set(captions)) == len(captions)
        for s in split:  # never two identical colour-shape objects in one video
            assert (s[0]["colour"], s[0]["shape"]) != (s[1]["colour"], s[1]["shape"])


def test_every_caption_has_a_one_word_hard_negative_in_its_split(scenes):
    for split in scenes.values():
        for i in range(0, len(split), 2):
            base, sibling = split[i], split[i + 1]
            a, b = synthetic.canonical_caption(base).split(), synthetic.canonical_caption(sibling).split()
            assert sum(x != y for x, y in zip(a, b)) == 1
            assert synthetic.one_word_difference(base, sibling) is not None
    assert synthetic.one_word_difference(scenes["test"][0], scenes["test"][0]) is None


def test_direction_is_not_visible_in_one_frame():
    east = [{"colour": "red", "shape": "square", "direction": "east", "y0": 20.0, "x0": 58.0, "speed": 4.0},
            {"colour": "blue", "shape": "circle", "direction": "north", "y0": 40.0, "x0": 10.0, "speed": 3.0}]
    west = [dict(east[0], direction="west"), east[1]]
    a, b = synthetic.render_scene(east), synthetic.render_scene(west)
    np.testing.assert_array_equal(a[0], b[0])  # same first frame ...
    assert np.abs(a[-1].astype(int) - b[-1].astype(int)).sum() > 0  # ... different motion
    red = np.all(a[0] == synthetic.COLOURS["red"], axis=-1)
    assert red[:, :8].any() and red[:, -8:].any()  # at the right edge the square wraps around to the left
    # Position over many random starts is uniform whatever the direction: the mean x of a moving
    # object in one frame does not tell east from west.
    rng = np.random.default_rng(0)
    def mean_x(direction):
        xs = []
        for _ in range(300):
            obj = {"colour": "white", "shape": "square", "direction": direction, "y0": 30.0, "x0": float(rng.uniform(0, 64)), "speed": 4.0}
            frame = synthetic.render_scene([obj, dict(obj, colour="red", y0=5.0)], num_frames=40)[30]
            xs.append(np.nonzero(np.all(frame == synthetic.COLOURS["white"], axis=-1))[1].mean())
        return np.mean(xs)
    assert abs(mean_x("east") - mean_x("west")) < 3.0


def test_scale_beyond_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="at most"):
        synthetic.generate_scenes(scale=10)


def test_cli_generates_and_prepares_the_synthetic_set(tmp_path, capsys):
    out = str(tmp_path / "data")
    assert cli.main(["prepare", "--dataset", "synthetic", "--out", out, "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "train     400 / 400 videos prepared, 0 failed, 1200 captions" in printed
    assert "test      100 / 100 videos prepared, 0 failed, 100 captions" in printed
    meta_file = json.load(open(os.path.join(out, "synthetic_source", synthetic.META_FILE)))
    assert meta_file["text_to_video_chance_r1"] == 1.0 and meta_file["test_with_one_word_hard_negative"] == 100
    pipe = VideoTextInput(prep.dataset_dir(out, "synthetic"), InputConfig(split="test", training=False, global_batch_size=50, image_size=32,
                                                                          process_index=0, process_count=1))
    assert pipe.metadata["synthetic"]["counts"] == {"train": 400, "test": 100}
    batch = next(pipe)
    assert batch["video"].shape == (50, 12, 32, 32, 3) and batch["video_mask"].all()
    assert batch["word_weights"][0, 1:12].tolist() == [1, 2, 2, 2, 2, 1, 1, 2, 2, 2, 2]  # "a red square moves north and a ..."
    with pytest.raises(ValueError, match="east"):
        VideoTextInput(prep.dataset_dir(out, "synthetic"), InputConfig(split="train", training=True, global_batch_size=8, random_flip=True,
                                                                      process_index=0, process_count=1))
