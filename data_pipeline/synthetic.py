"""The shipped synthetic set: moving coloured shapes, generated as real mp4 files + MSR-VTT annotations.

Each video (64x64, 12 s at 5 fps, H.264) shows two objects on a dark background. An object is
a colour (red, green, blue, yellow, white), a shape (square, circle, triangle) and a direction
of motion (north, south, east, west: up, down, right, left in the image) at a constant speed
(3-5 px/s). Its canonical caption names both:

    "a red square moves north and a blue circle moves west"

What the design makes a model need (method.md sections 0 and 2):
- Fine-grained hard negatives. Videos are generated in pairs that differ in exactly one
  attribute of one object, so every caption has, in its own split, a hard negative that
  differs from it in one word (NegNCE's target). `synthetic_meta.json` lists them.
- Content words. Colours, shapes, directions and the verb carry everything; "a", "and" carry
  nothing (the textual attention's 2-vs-1 weighting; compass words were chosen over
  up/down, which stop lists drop).
- Time. Objects move on a torus (leaving at one edge, re-entering at the other) from a
  uniformly random start, so the position at any instant is uniform whatever the direction:
  one frame cannot reveal the direction, only several frames in order can. Siblings that
  differ in a direction share their first frame exactly. Seen as an unordered set of frames
  (meanP: DMAE's scores do not change when frames are permuted) a scene is identical to its
  time reversal, and east vs west is left only in the correlation of the two objects'
  positions: the temporal module (seqTransf), which sees the order, is what this set rewards.
- Honesty. Scenes (the unordered pair of objects) are unique within a split and the test
  scenes never occur in training: the test split measures generalisation to new combinations
  of known words, not memorised captions. Training videos have three captions (two word
  orders, two verbs: "moves"/"goes", "and"/"while"); a test video has its canonical one.
  Text-to-video chance level is 1 / (number of test videos): 1 % at the default size.

Default size: 400 training and 100 test videos (`scale` multiplies both, up to the number of
distinct scenes). Frames are 64x64; the tiny model's 32x32 input is a resize of them.
Do not train with horizontal flips on this set: a flip turns east into west and the captions
would lie (the input pipeline refuses `random_flip` for it).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from typing import Any

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 100, 235), "yellow": (235, 215, 40), "white": (235, 235, 235)}
SHAPES = ("square", "circle", "triangle")
# (dy, dx) per second in image coordinates: north is up.
DIRECTIONS = {"north": (-1.0, 0.0), "south": (1.0, 0.0), "east": (0.0, 1.0), "west": (0.0, -1.0)}
BACKGROUND = (30, 30, 34)
FRAME_SIZE = 64
OBJECT_SIZE = 16
SOURCE_FPS = 5
DURATION_S = 12
SPEED_RANGE = (3.0, 5.0)
TRAIN_VIDEOS, TEST_VIDEOS = 400, 100
META_FILE = "synthetic_meta.json"


def _object_key(obj: dict) -> tuple[str, str, str]:
    return obj["colour"], obj["shape"], obj["direction"]


def scene_key(objects: list[dict]) -> tuple:
    """A scene is the unordered pair of (colour, shape, direction): word order does not matter."""
    return tuple(sorted(_object_key(o) for o in objects))


def canonical_caption(objects: list[dict]) -> str:
    a, b = objects
    return f"a {a['colour']} {a['shape']} moves {a['direction']} and a {b['colour']} {b['shape']} moves {b['direction']}"


def training_captions(objects: list[dict]) -> list[str]:
    a, b = objects
    return [
        canonical_caption(objects),
        canonical_caption([b, a]),
        f"a {a['colour']} {a['shape']} goes {a['direction']} while a {b['colour']} {b['shape']} goes {b['direction']}",
    ]


def max_scenes() -> int:
    """Distinct scenes: unordered pairs of distinct colour-shape objects, times 4 x 4 directions."""
    objects = len(COLOURS) * len(SHAPES)
    return objects * (objects - 1) // 2 * len(DIRECTIONS) ** 2


def _valid(objects: list[dict]) -> bool:
    # Two objects of the same colour and shape would make "the red square" ambiguous.
    return (objects[0]["colour"], objects[0]["shape"]) != (objects[1]["colour"], objects[1]["shape"])


def _random_object(rng: np.random.Generator) -> dict:
    return {
        "colour": str(rng.choice(list(COLOURS))), "shape": str(rng.choice(SHAPES)), "direction": str(rng.choice(list(DIRECTIONS))),
        "y0": float(rng.uniform(0, FRAME_SIZE)), "x0": float(rng.uniform(0, FRAME_SIZE)), "speed": float(rng.uniform(*SPEED_RANGE)),
    }


def _one_word_sibling(objects: list[dict], rng: np.random.Generator) -> list[dict]:
    """Same scene with one attribute of one object changed (same start, speed: same first frame)."""
    which = int(rng.integers(2))
    attribute = str(rng.choice(["colour", "shape", "direction"]))
    values = {"colour": list(COLOURS), "shape": list(SHAPES), "direction": list(DIRECTIONS)}[attribute]
    sibling = [dict(o) for o in objects]
    sibling[which][attribute] = str(rng.choice([v for v in values if v != objects[which][attribute]]))
    return sibling


def generate_scenes(seed: int = 0, scale: int = 1) -> dict[str, list[list[dict]]]:
    """Scenes per split, in pairs of one-word siblings; unique within and across splits."""
    if scale < 1:
        raise ValueError(f"synthetic scale must be >= 1, got {scale}")
    counts = {"train": TRAIN_VIDEOS * scale, "test": TEST_VIDEOS * scale}
    # Pairs are drawn at random: past ~60 % of the scene space rejection sampling stalls.
    if sum(counts.values()) > 0.6 * max_scenes():
        raise ValueError(
            f"synthetic scale {scale} asks for {sum(counts.values())} distinct scenes; the vocabulary has "
            f"{max_scenes()} ({len(COLOURS)} colours x {len(SHAPES)} shapes x {len(DIRECTIONS)} directions, two objects), "
            f"so use a scale of at most {int(0.6 * max_scenes()) // (TRAIN_VIDEOS + TEST_VIDEOS)}"
        )
    rng = np.random.default_rng(seed)
    used: set[tuple] = set()
    splits: dict[str, list[list[dict]]] = {}
    for split in ("test", "train"):  # test first: its scenes are then excluded from training
        scenes: list[list[dict]] = []
        while len(scenes) < counts[split]:
            base = [_random_object(rng), _random_object(rng)]
            sibling = _one_word_sibling(base, rng)
            if not (_valid(base) and _valid(sibling)):
                continue
            keys = scene_key(base), scene_key(sibling)
            if keys[0] == keys[1] or keys[0] in used or keys[1] in used:
                continue
            used.update(keys)
            scenes.extend([base, sibling][: counts[split] - len(scenes)])
        splits[split] = scenes
    return splits


def _shape_mask(shape: str, size: int = OBJECT_SIZE) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if shape == "square":
        return (np.abs(yy - size / 2) < size * 0.42) & (np.abs(xx - size / 2) < size * 0.42)
    if shape == "circle":
        return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.48) ** 2
    if shape == "triangle":  # apex up; width grows linearly towards the base
        top, bottom = size * 0.06, size * 0.94
        half_width = (yy - top) / (bottom - top) * size * 0.48
        return (yy >= top) & (yy <= bottom) & (np.abs(xx - size / 2) <= half_width)
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(objects: list[dict], num_frames: int = SOURCE_FPS * DURATION_S, fps: float = SOURCE_FPS) -> np.ndarray:
    """uint8 (N, 64, 64, 3): the objects moving on a torus (positions wrap at the edges)."""
    frames = np.empty((num_frames, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    frames[:] = BACKGROUND
    for obj in objects:
        mask = _shape_mask(obj["shape"])
        ys, xs = np.nonzero(mask)
        dy, dx = DIRECTIONS[obj["direction"]]
        for i in range(num_frames):
            t = i / fps
            top = int(round(obj["y0"] + dy * obj["speed"] * t))
            left = int(round(obj["x0"] + dx * obj["speed"] * t))
            frames[i, (ys + top) % FRAME_SIZE, (xs + left) % FRAME_SIZE] = COLOURS[obj["colour"]]
    return frames


def write_clip(path: str, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    """Write uint8 (N, H, W, 3) frames as an H.264 mp4 with PyAV, atomically (temp + rename)."""
    import av

    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 with 4:2:0 chroma needs even frame sizes, got {height}x{width}")
    tmp = f"{path}.partial"
    with av.open(tmp, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)) if float(fps).is_integer() else fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.partial"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def generate(out_dir: str, seed: int = 0, scale: int = 1, progress: bool = True) -> dict[str, str]:
    """Write `out_dir/videos/*.mp4` and MSR-VTT-format annotations in `out_dir/annotations/`.

    Resumable: videos already on disk are kept (each is written atomically). Returns the two
    folders (`videos`, `annotations`), ready for `prepare`.
    """
    from tqdm import tqdm

    videos_dir, annotations_dir = os.path.join(out_dir, "videos"), os.path.join(out_dir, "annotations")
    os.makedirs(videos_dir, exist_ok=True)
    os.makedirs(annotations_dir, exist_ok=True)
    spec = {"seed": seed, "scale": scale, "version": 1}
    meta_path = os.path.join(out_dir, META_FILE)
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            previous = json.load(f).get("spec")
        if previous != spec:
            raise ValueError(f"{out_dir} holds a synthetic set generated with {previous}, not {spec}; use another --out or delete {out_dir}")

    splits = generate_scenes(seed, scale)
    entries = []  # (split, video_id, objects)
    for split in ("train", "test"):
        for objects in splits[split]:
            entries.append((split, f"synth{len(entries):05d}", objects))
    for split, video_id, objects in tqdm(entries, desc="synthetic videos", disable=not progress):
        path = os.path.join(videos_dir, f"{video_id}.mp4")
        if not os.path.isfile(path):
            write_clip(path, render_scene(objects), SOURCE_FPS)

    videos, sentences = [], []
    for i, (split, video_id, objects) in enumerate(entries):
        videos.append({"video_id": video_id, "split": split, "id": i, "category": 0, "url": "synthetic",
                       "start time": 0.0, "end time": float(DURATION_S)})
        for caption in training_captions(objects):
            sentences.append({"caption": caption, "video_id": video_id, "sen_id": len(sentences)})
    data = {"info": {"description": "tvr-jax synthetic moving shapes", "spec": spec}, "videos": videos, "sentences": sentences}
    _atomic_write_text(os.path.join(annotations_dir, "MSRVTT_data.json"), json.dumps(data))
    train_csv = io.StringIO()
    csv.writer(train_csv).writerows([["video_id"]] + [[v] for s, v, _ in entries if s == "train"])
    _atomic_write_text(os.path.join(annotations_dir, "MSRVTT_train.9k.csv"), train_csv.getvalue())
    test_csv = io.StringIO()
    writer = csv.writer(test_csv)
    writer.writerow(["", "key", "vid_key", "video_id", "sentence"])
    for row, (split, video_id, objects) in enumerate(e for e in entries if e[0] == "test"):
        writer.writerow([row, f"ret{row}", video_id, video_id, canonical_caption(objects)])
    _atomic_write_text(os.path.join(annotations_dir, "MSRVTT_JSFUSION_test.csv"), test_csv.getvalue())
    # Written last: its presence marks a complete generation.
    _atomic_write_text(meta_path, json.dumps(describe(entries, spec), indent=1))
    return {"videos": videos_dir, "annotations": annotations_dir}


def describe(entries: list[tuple[str, str, list[dict]]], spec: dict) -> dict[str, Any]:
    """Scenes, one-word hard negatives per test caption and the chance level."""
    test = [(v, objects) for s, v, objects in entries if s == "test"]
    hard_negatives: dict[str, list[str]] = {}
    by_attribute = {"colour": 0, "shape": 0, "direction": 0}
    for v, objects in test:
        hard_negatives[v] = []
        for u, other in test:
            attribute = one_word_difference(objects, other) if u != v else None
            if attribute:
                hard_negatives[v].append(canonical_caption(other))
                by_attribute[attribute] += 1
    return {
        "spec": spec,
        "vocabulary": {"colours": list(COLOURS), "shapes": list(SHAPES), "directions": list(DIRECTIONS), "verbs": ["moves", "goes"]},
        "frame_size": FRAME_SIZE, "source_fps": SOURCE_FPS, "duration_s": DURATION_S,
        "counts": {s: sum(1 for e in entries if e[0] == s) for s in ("train", "test")},
        "text_to_video_chance_r1": 100.0 / len(test),
        "test_with_one_word_hard_negative": sum(1 for n in hard_negatives.values() if n),
        "test_hard_negative_pairs_by_attribute": by_attribute,
        "scenes": {v: {"split": s, "objects": objects} for s, v, objects in entries},
        "test_hard_negatives": hard_negatives,
    }


def one_word_difference(a: list[dict], b: list[dict]) -> str | None:
    """The attribute in which b differs from a in exactly one word (for some order of b's objects)."""
    for perm in itertools.permutations(b):
        diffs = [k for x, y in zip(a, perm) for k in ("colour", "shape", "direction") if x[k] != y[k]]
        if len(diffs) == 1:
            return diffs[0]
    return None
