"""The tf.data pipeline: batch schema, frame sampling end to end, eval padding, hosts, resume."""

import numpy as np
import pytest

from data_pipeline import prepare as prep
from data_pipeline.input_pipeline import CLIP_MEAN, CLIP_STD, InputConfig, VideoTextInput
from tvr_jax.models.clip import normalize_pixels
from test_data_fixtures import level_to_second, write_msrvtt_set

TRAIN = {f"video{i}": (s, [f"caption {j} of clip {i}" for j in range(n)]) for i, (s, n) in enumerate([(3, 3), (5, 1), (8, 2), (12, 1), (2, 3), (6, 1), (9, 2), (4, 1)])}
TEST = {"video20": (12, "a long video of twelve seconds"), "video21": (3, "short"), "video22": (7, "seven"), "video23": (1, "one second"), "video24": (10, "ten")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    videos, annotations = write_msrvtt_set(str(root / "src"), TRAIN, TEST)
    prep.prepare("msrvtt", str(root / "data"), videos, annotations, workers=2, tagger="fallback", progress=False)
    return prep.dataset_dir(str(root / "data"), "msrvtt")


def _pipe(dataset, **overrides):
    config = dict(split="train", training=True, global_batch_size=4, num_frames=4, max_words=8, image_size=16, process_index=0, process_count=1)
    config.update(overrides)
    return VideoTextInput(dataset, InputConfig(**config))


def test_training_batch_schema(dataset):
    batch = next(_pipe(dataset))
    expected = {"video": (np.uint8, (4, 4, 16, 16, 3)), "video_mask": (np.bool_, (4, 4)), "text_ids": (np.int32, (4, 8)),
                "text_mask": (np.bool_, (4, 8)), "word_weights": (np.float32, (4, 8)), "video_index": (np.int32, (4,)),
                "caption_index": (np.int32, (4,)), "valid": (np.bool_, (4,))}
    assert {k: (v.dtype.type, v.shape) for k, v in batch.items()} == expected
    assert (batch["text_ids"][:, 0] == 49406).all() and batch["valid"].all()
    np.testing.assert_array_equal(batch["text_mask"], batch["text_ids"] != 0)
    ends = batch["text_mask"].sum(1) - 1
    assert (batch["text_ids"][np.arange(4), ends] == 49407).all()
    assert (batch["word_weights"][:, 0] == 0).all() and (batch["word_weights"][np.arange(4), ends] == 0).all()
    assert ((batch["word_weights"] > 0) == (batch["text_mask"] & (batch["text_ids"] < 49406))).all()


def test_evaluation_is_uniform_ordered_and_padded(dataset):
    pipe = _pipe(dataset, split="test", training=False)
    batches = list(pipe)
    assert len(batches) == len(pipe) == 2  # 5 videos, global batch 4: the last batch is padded, not dropped
    np.testing.assert_array_equal(np.concatenate([b["video_index"] for b in batches]), [0, 1, 2, 3, 4, 4, 4, 4])
    np.testing.assert_array_equal(np.concatenate([b["valid"] for b in batches]), [True] * 5 + [False] * 3)
    np.testing.assert_array_equal(np.concatenate([b["caption_index"] for b in batches]), [0, 1, 2, 3, 4, 4, 4, 4])
    video, mask = batches[0]["video"], batches[0]["video_mask"]
    seconds = level_to_second(video.mean(axis=(2, 3, 4)))
    np.testing.assert_array_equal(seconds[0], [0, 4, 7, 11])        # 12 frames -> linspace(0, 11, 4)
    np.testing.assert_array_equal(seconds[1], [0, 1, 2, 2])         # 3 frames: all of them, last repeated ...
    np.testing.assert_array_equal(mask[1], [True, True, True, False])  # ... and masked
    np.testing.assert_array_equal(seconds[3], [0, 0, 0, 0])
    np.testing.assert_array_equal(mask[3], [True, False, False, False])
    assert list(pipe) == []  # one pass


@pytest.mark.parametrize("image_size, resized", [(48, False), (16, True)])  # frames are stored at 48 x 64
@pytest.mark.parametrize("training", [False, True])
def test_uint8_pixels_normalised_on_the_device_equal_the_host_normalised_batch(dataset, image_size, resized, training):
    """The default batch is uint8, normalised by the model on the device; `pixels="float32"`
    normalises on the host. Same rows, same crops and flips: without resizing the normalised
    values agree to float32 rounding, with resizing to the half grey level uint8 rounds away."""
    kw = dict(image_size=image_size, training=training, split="train" if training else "test")
    if training:
        kw.update(random_crop=True, random_flip=True, seed=5)
    as_uint8, as_float = next(_pipe(dataset, **kw)), next(_pipe(dataset, pixels="float32", **kw))
    assert as_uint8["video"].dtype == np.uint8 and as_float["video"].dtype == np.float32
    for key in as_float:
        if key != "video":
            np.testing.assert_array_equal(as_uint8[key], as_float[key])
    on_device = np.asarray(normalize_pixels(as_uint8["video"]))
    # Reference from the equation: (x / 255 - mean) / std per channel.
    np.testing.assert_allclose(on_device, (as_uint8["video"] / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD), atol=2e-6)
    half_level = 0.5 / 255 / min(CLIP_STD)
    gap = np.abs(on_device - as_float["video"]).max()
    if resized and not training:  # the training crops vary in size, so some rows resize either way
        assert 0 < gap <= half_level + 1e-5
    elif not resized and not training:
        assert gap <= 2e-6
    else:
        assert gap <= half_level + 1e-5


def test_pixels_must_be_known(dataset):
    with pytest.raises(ValueError, match="pixels must be one of"):
        _pipe(dataset, pixels="float16")


@pytest.mark.parametrize("frame_sampling", ["uniform", "random_segment"])
def test_training_frames_and_a_random_caption_per_epoch(dataset, frame_sampling):
    """Training frames are uniform by default (the paper's sampling, as in evaluation) and one
    random frame per segment with frame_sampling="random_segment"; a random caption per epoch."""
    pipe = _pipe(dataset, num_frames=3, frame_sampling=frame_sampling)
    assert len(pipe) == 2  # 8 videos / 4 per batch
    captions_of_video0, frames_ok, draws = set(), True, {}
    for _ in range(12):  # 6 epochs
        batch = next(pipe)
        seconds = level_to_second(batch["video"].mean(axis=(2, 3, 4)))
        for row in range(4):
            v = int(batch["video_index"][row])
            n = TRAIN[f"video{v}"][0]
            if n > 3:
                if frame_sampling == "uniform":
                    frames_ok &= bool(np.array_equal(seconds[row], np.round(np.linspace(0, n - 1, 3))))
                else:
                    bounds = np.floor(np.linspace(0, n, 4)).astype(int)
                    frames_ok &= bool(np.all((seconds[row] >= bounds[:-1]) & (seconds[row] < bounds[1:])))
                draws.setdefault(v, set()).add(tuple(seconds[row]))
            if v == 0:
                captions_of_video0.add(int(batch["caption_index"][row]))
    assert frames_ok and draws
    # Uniform is deterministic; random segments differ between epochs for some video.
    if frame_sampling == "random_segment":
        assert max(len(d) for d in draws.values()) > 1
    else:
        assert all(len(d) == 1 for d in draws.values())
    assert captions_of_video0 <= {0, 1, 2} and len(captions_of_video0) >= 2


def test_order_depends_on_seed_only_and_epochs_reshuffle(dataset):
    a = [next(_pipe(dataset, seed=1))["video_index"] for _ in range(1)]
    b = [next(_pipe(dataset, seed=1))["video_index"] for _ in range(1)]
    np.testing.assert_array_equal(a, b)
    pipe = _pipe(dataset, seed=1)
    epochs = [np.concatenate([next(pipe)["video_index"] for _ in range(2)]) for _ in range(3)]
    assert all(sorted(e) == list(range(8)) for e in epochs)  # every video once per epoch
    assert len({tuple(e) for e in epochs}) > 1
    other = np.concatenate([next(_pipe(dataset, seed=2))["video_index"]])
    assert not np.array_equal(other, epochs[0][:4])


def test_hosts_split_the_global_batch(dataset):
    single = _pipe(dataset, random_crop=True)
    hosts = [_pipe(dataset, random_crop=True, process_index=i, process_count=2) for i in range(2)]
    for _ in range(3):
        whole = next(single)
        parts = [next(h) for h in hosts]
        for key in whole:
            np.testing.assert_array_equal(whole[key], np.concatenate([p[key] for p in parts]), err_msg=key)
    with pytest.raises(ValueError, match="not divisible"):
        _pipe(dataset, process_index=0, process_count=3)


def test_state_restores_the_exact_position(dataset):
    pipe = _pipe(dataset, random_crop=True)
    for _ in range(3):
        next(pipe)
    state = pipe.state()
    assert (state["epoch"], state["batch"]) == (1, 1)
    expected = [next(pipe) for _ in range(3)]
    resumed = _pipe(dataset, random_crop=True)
    resumed.restore(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    with pytest.raises(ValueError, match="different input configuration"):
        _pipe(dataset, seed=5).restore(state)
    with pytest.raises(ValueError, match="different input configuration"):
        _pipe(dataset, random_crop=True, global_batch_size=2).restore(state)


def test_a_state_restores_on_another_number_of_hosts(dataset):
    """The position counts global batches: one host's state resumes two hosts (and back), each
    reading its rows of the same global batches."""
    single = _pipe(dataset, random_crop=True)
    for _ in range(3):
        next(single)
    state = single.state()
    hosts = [_pipe(dataset, random_crop=True, process_index=i, process_count=2) for i in range(2)]
    for host in hosts:
        host.restore(state)
    for _ in range(3):
        whole, parts = next(single), [next(h) for h in hosts]
        for key in whole:
            np.testing.assert_array_equal(whole[key], np.concatenate([p[key] for p in parts]), err_msg=key)
    back = _pipe(dataset, random_crop=True)
    back.restore(hosts[1].state())
    np.testing.assert_array_equal(next(back)["video_index"], next(single)["video_index"])


def test_all_pairs_and_eval_row_kinds(dataset):
    pairs = _pipe(dataset, caption_sampling="all")
    assert len(pairs) == 14 // 4  # 14 (video, caption) pairs
    seen = np.concatenate([next(pairs)["caption_index"] for _ in range(3)])
    assert len(set(seen.tolist())) == 12
    videos = next(_pipe(dataset, split="train", training=False, eval_rows="videos"))
    assert "text_ids" not in videos and videos["video"].shape == (4, 4, 16, 16, 3) and (videos["caption_index"] == -1).all()
    captions = list(_pipe(dataset, split="train", training=False, eval_rows="captions"))
    assert "video" not in captions[0] and len(captions) == 4
    rows = np.concatenate([b["caption_index"][b["valid"]] for b in captions])
    np.testing.assert_array_equal(rows, np.arange(14))
    np.testing.assert_array_equal(np.concatenate([b["video_index"][b["valid"]] for b in captions]), np.repeat(np.arange(8), [3, 1, 2, 1, 3, 1, 2, 1]))


def test_long_captions_keep_the_end_token(dataset):
    batch = next(_pipe(dataset, split="test", training=False, max_words=4))
    row = batch["text_ids"][0]  # "a long video of twelve seconds" is longer than 4 tokens
    assert row[0] == 49406 and row[-1] == 49407 and batch["text_mask"][0].all()
    np.testing.assert_array_equal(batch["word_weights"][0], [0, 1, 2, 0])


@pytest.mark.parametrize("pixels", ["uint8", "float32"])
def test_decode_clip_crops_the_same_window_in_every_frame_and_flips(pixels):
    import tensorflow as tf

    from data_pipeline.input_pipeline import _decode_clip
    from data_pipeline.video import encode_jpeg

    # 40 x 80 frames: a left-to-right ramp, so crop position and flips are visible.
    ramp = np.broadcast_to(np.linspace(0, 255, 80).astype(np.uint8)[None, :, None], (40, 80, 3)).copy()
    jpegs = tf.constant([encode_jpeg(ramp, 100)] * 2)
    unit = (tf.constant(0.0), tf.constant(255.0))  # float32: "normalised" to x / 255

    def run(crop, flip):
        out = _decode_clip(jpegs, tf.constant(crop, tf.float32), tf.constant(flip), 8, *unit, pixels).numpy()
        assert out.dtype == pixels
        return out / 255.0 if pixels == "uint8" else out
    centre, left, right = run([0.5, 0.5, 1.0], False), run([0.5, 0.0, 1.0], False), run([0.5, 1.0, 1.0], False)
    assert centre.shape == (2, 8, 8, 3) and np.allclose(centre[0], centre[1])
    assert left[0, :, 0].mean() < 0.1 and right[0, :, -1].mean() > 0.9  # the window slides along the long side
    assert 0.2 < centre[0].mean() < 0.8
    np.testing.assert_allclose(run([0.5, 0.5, 1.0], True), centre[:, :, ::-1], atol=1e-5)  # uint8: exact too
    small = run([0.5, 0.5, 0.5], False)  # half the short side: a 20 px window around the centre
    assert small[0, :, -1].mean() - small[0, :, 0].mean() < centre[0, :, -1].mean() - centre[0, :, 0].mean()


def test_bad_configs(dataset):
    assert next(_pipe(dataset, random_flip=True, random_crop=True, seed=3, image_size=24))["video"].shape == (4, 4, 24, 24, 3)
    with pytest.raises(ValueError, match="no split 'val'"):
        _pipe(dataset, split="val")
    with pytest.raises(ValueError, match="fewer than one global batch"):
        _pipe(dataset, global_batch_size=64)
    with pytest.raises(ValueError, match="eval_rows"):
        _pipe(dataset, eval_rows="clips")
    with pytest.raises(FileNotFoundError, match="tvr-jax prepare"):
        VideoTextInput("/nonexistent", InputConfig(split="train", training=True, global_batch_size=4))


def test_a_state_saved_with_host_fields_still_restores(dataset):
    """States written before positions became host-independent carry process_index/count."""
    import json

    pipe = _pipe(dataset)
    next(pipe)
    state = pipe.state()
    old = {**json.loads(state["fingerprint"]), "process_index": 0, "process_count": 1}
    resumed = _pipe(dataset)
    resumed.restore({**state, "fingerprint": json.dumps(old, sort_keys=True)})
    np.testing.assert_array_equal(next(resumed)["video_index"], next(pipe)["video_index"])
