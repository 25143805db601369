"""Offline frame sampling at an fps, decord decoding, resizing, bad files, online index sampling."""

import os

import numpy as np
import pytest

from data_pipeline import video
from test_data_fixtures import level_to_second, write_counting_clip


def test_sample_times_at_fps_and_capped():
    np.testing.assert_allclose(video.sample_times(10.0, 1.0), np.arange(10) + 0.5)
    np.testing.assert_allclose(video.sample_times(5.0, 2.0), (np.arange(10) + 0.5) / 2)
    np.testing.assert_allclose(video.sample_times(10.0, 1.0, max_frames=4), (np.arange(4) + 0.5) * 2.5)  # spread over the whole video
    assert len(video.sample_times(0.3, 1.0)) == 1  # a clip shorter than 1/fps still gives one frame
    with pytest.raises(ValueError, match="fps"):
        video.sample_times(1.0, 0.0)


@pytest.mark.parametrize("fps,max_frames,expected_seconds", [
    (1.0, None, [0, 1, 2, 3, 4]),
    (2.0, None, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]),
    (1.0, 3, [0, 2, 4]),  # windows of 5/3 s: middles at 0.83, 2.5, 4.17
])
def test_decoded_frame_counts_and_times(tmp_path, fps, max_frames, expected_seconds):
    path = str(tmp_path / "clip.mp4")
    write_counting_clip(path, seconds=5, fps=10)
    decoded = video.decode_video(path, fps=fps, max_frames=max_frames, short_side=None)
    assert decoded.frames.shape == (len(expected_seconds), 48, 64, 3) and decoded.frames.dtype == np.uint8
    assert decoded.duration == pytest.approx(5.0) and decoded.source_fps == pytest.approx(10.0)
    assert decoded.source_num_frames == 50
    np.testing.assert_array_equal(level_to_second(decoded.frames.mean(axis=(1, 2, 3))), expected_seconds)
    np.testing.assert_array_equal(np.floor(decoded.times).astype(int), expected_seconds)


def test_short_side_resize_keeps_aspect_and_never_upsamples(tmp_path):
    path = str(tmp_path / "tall.mp4")
    write_counting_clip(path, seconds=2, height=128, width=96)
    assert video.decode_video(path, short_side=48).frames.shape[1:] == (64, 48, 3)
    assert video.decode_video(path, short_side=224).frames.shape[1:] == (128, 96, 3)
    assert video.resized_shape(240, 320, 224) == (224, 299)


def _truncate(path, fraction=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("damage,reason", [
    ("missing", "missing"), ("empty", "empty"), ("garbage", "unreadable"),
    ("truncated", "unreadable"),  # moov atom at the end: the container cannot be opened
    ("truncated_faststart", "unreadable"),  # index intact, frame data cut: decord's open reads past the cut
])
def test_bad_videos_raise_with_reason_and_fix(tmp_path, damage, reason):
    path = str(tmp_path / "bad.mp4")
    if damage == "empty":
        open(path, "wb").close()
    elif damage == "garbage":
        open(path, "wb").write(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif damage == "truncated":
        write_counting_clip(path, seconds=4)
        _truncate(path)
    elif damage == "truncated_faststart":
        write_counting_clip(path, seconds=6, faststart=True)
        _truncate(path, 0.4)
    with pytest.raises(video.VideoDecodeError) as info:
        video.decode_video(path)
    assert info.value.reason == reason and path in str(info.value) and "fix:" in str(info.value)


def test_decode_to_cache_round_trip_and_failure(tmp_path):
    path, cache = str(tmp_path / "c.mp4"), str(tmp_path / "c.npz")
    write_counting_clip(path, seconds=3)
    status = video.decode_to_cache("c", path, cache, 1.0, None, 224)
    assert status["ok"] and status["num_frames"] == 3 and not os.path.exists(cache + ".partial")
    jpegs, times, meta = video.read_cache(cache)
    assert [j[:2] for j in jpegs] == [b"\xff\xd8"] * 3 and meta["source_fps"] == pytest.approx(10)
    np.testing.assert_allclose(times, [0.5, 1.5, 2.5])
    bad = video.decode_to_cache("m", str(tmp_path / "none.mp4"), str(tmp_path / "m.npz"), 1.0, None, 224)
    assert not bad["ok"] and bad["reason"] == "missing" and not os.path.exists(tmp_path / "m.npz")


def test_uniform_indices():
    indices, mask = video.sample_frame_indices(25, 5, "uniform")
    np.testing.assert_array_equal(indices, [0, 6, 12, 18, 24])
    assert mask.all()


def test_random_segment_indices_take_one_frame_per_segment():
    rng = np.random.default_rng(0)
    bounds = np.floor(np.linspace(0, 30, 7)).astype(int)
    seen = set()
    for _ in range(200):
        indices, mask = video.sample_frame_indices(30, 6, "random_segment", rng=rng)
        assert mask.all() and np.all(indices >= bounds[:-1]) and np.all(indices < bounds[1:])
        seen.add(tuple(indices))
    assert len(seen) > 100  # random, not a fixed pattern


@pytest.mark.parametrize("mode", video.FRAME_SAMPLINGS)
def test_short_videos_are_padded_with_the_last_frame_and_masked(mode):
    indices, mask = video.sample_frame_indices(3, 5, mode, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(indices, [0, 1, 2, 2, 2])
    np.testing.assert_array_equal(mask, [True, True, True, False, False])
    with pytest.raises(ValueError, match="at least one frame"):
        video.sample_frame_indices(0, 5, mode, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="frame sampling must be one of"):
        video.sample_frame_indices(10, 5, "random")
