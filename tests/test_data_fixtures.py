"""Clips and annotation files the data tests write themselves (helpers only, no tests here)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from data_pipeline.synthetic import write_clip


def second_level(second: int) -> int:
    """Gray level of the frames in second `second` of a counting clip (distinct up to 12 s)."""
    return 20 * second + 10


def write_counting_clip(path: str, seconds: int, fps: int = 10, height: int = 48, width: int = 64, faststart: bool = False) -> None:
    """An mp4 whose frames are uniformly gray, the level telling which second they belong to.

    `faststart`: index at the front and noise frames instead (for truncation tests)."""
    n = seconds * fps
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        frames[i] = second_level(i // fps)
    if faststart:
        import av

        with av.open(path, "w", format="mp4", options={"movflags": "faststart"}) as c:
            s = c.add_stream("libx264", rate=fps)
            s.width, s.height, s.pix_fmt = width, height, "yuv420p"
            # Pure noise: every frame is large, so cutting the file loses frame data, not just the index.
            rng = np.random.default_rng(0)
            for f in frames:
                noisy = rng.integers(0, 256, f.shape, dtype=np.uint8)
                for p in s.encode(av.VideoFrame.from_ndarray(noisy, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    else:
        write_clip(path, frames, fps)


def level_to_second(gray: np.ndarray) -> np.ndarray:
    """Invert `second_level` on decoded uint8-range values (JPEG/H.264 error is a few levels)."""
    return np.round((np.asarray(gray, np.float64) - 10) / 20).astype(int)


def write_msrvtt_set(root: str, train: dict[str, tuple[int, list[str]]], test: dict[str, tuple[int, str]]) -> tuple[str, str]:
    """Counting clips + MSR-VTT annotation files. train: id -> (seconds, captions); test: id -> (seconds, sentence).

    A clip of 0 seconds is not written (a missing video)."""
    videos, annotations = os.path.join(root, "videos"), os.path.join(root, "annotations")
    os.makedirs(videos, exist_ok=True)
    os.makedirs(annotations, exist_ok=True)
    sentences = []
    for vid, (seconds, captions) in train.items():
        sentences += [{"video_id": vid, "caption": c, "sen_id": len(sentences)} for c in captions]
    for vid, (seconds, sentence) in test.items():
        sentences.append({"video_id": vid, "caption": sentence, "sen_id": len(sentences)})
    for vid, (seconds, _) in {**train, **test}.items():
        if seconds:
            write_counting_clip(os.path.join(videos, f"{vid}.mp4"), seconds)
    with open(os.path.join(annotations, "MSRVTT_data.json"), "w") as f:
        json.dump({"videos": [{"video_id": v} for v in {**train, **test}], "sentences": sentences}, f)
    with open(os.path.join(annotations, "MSRVTT_train.9k.csv"), "w", newline="") as f:
        csv.writer(f).writerows([["video_id"]] + [[v] for v in train])
    with open(os.path.join(annotations, "MSRVTT_JSFUSION_test.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "key", "vid_key", "video_id", "sentence"])
        for i, (vid, (_, sentence)) in enumerate(test.items()):
            w.writerow([i, f"ret{i}", vid.replace("video", "msr"), vid, sentence])
    return videos, annotations
