"""The shipped synthetic set: short "videos" of several shots, generated as real mp4 files + MSR-VTT annotations.

Each video (64x64, 12 s, H.264) is a sequence of shots. A shot shows one object, named by three
attributes, on its own dull background, for two or more seconds; between or inside the shots
sit one or two isolated one-second cut-aways that show another object, one the caption does
not mention. A caption names the shots' objects in order, wrapped in function words and filler:

    "at first there is a big red circle and then we can see a small blue cross and after that a big green square"

Each design choice gives one of the method's mechanisms (docs/method.md sections 2-4) the property
of real text-video data it was designed for; docs/synthetic.md has the details and a picture.
- Textual attention (content words weigh 2, function words 1): captions mix content words
  (size, colour, shape) with filler made only of words the part-of-speech tagger marks as
  function words ("at first there is", "and then we can see", "after that", "a").
- Token-wise matching against mean pooling: each object (the three words that name it) is
  visible in one shot only (2 to 7 of the 12 frames), and shot lengths vary, so a word is
  found by matching it to its frames, while the mean of all frames dilutes it.
- Hard negatives (NegNCE): scenes come in families: a base scene and variants of it that each
  change one attribute of one object (one word of the caption) and keep everything else
  (shot lengths, positions, backgrounds, cut-aways). A family has `FAMILY_SIZE` scenes, so a
  video has several one-word siblings in its split and batches of 64 meet some of them.
- Visual attention (a word's best frame reinforced by its most similar other frame): frames of
  a shot are similar neighbours (the object drifts a pixel or two, the background is the
  shot's); a cut-away is an isolated frame, similar to none of its neighbours, whose object
  matches no word of the video's caption but may match words of other captions.
- Readable by a tiny model from scratch: six well separated colours, four shapes, two sizes,
  drawn large enough to survive the model's 32x32 input; nothing depends on motion.
- Honesty: scenes (the unordered set of their shots' objects) are unique within and across the
  splits and test families are generated apart from training ones: the test split asks for new
  combinations of known words. Training videos have three captions (different filler, the
  same objects in the same order); a test video has one. Chance level for text-to-video R@1 is
  1 / (number of test videos).

Default size: 1,920 training and 120 test videos (`scale` multiplies both, up to 8). Frames
are 64x64 at 2 fps (both frames of a second identical, so preparing at 1 fps takes one per
second). `python -m data_pipeline.synthetic PNG` draws a few test scenes (docs/synthetic.md).
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

import numpy as np

COLOURS = {"red": (225, 35, 35), "green": (40, 200, 60), "blue": (45, 95, 245), "yellow": (240, 220, 30),
           "white": (240, 240, 240), "purple": (170, 60, 220)}
SHAPES = ("square", "circle", "triangle", "cross")
SIZES = {"small": 24, "big": 40}  # side of the object's box in pixels of the 64x64 frame
ATTRIBUTES = ("size", "colour", "shape")
# Dull shot backgrounds: no caption word names them.
BACKGROUNDS = ((28, 30, 36), (48, 44, 40), (30, 44, 46), (46, 36, 44), (38, 40, 30), (58, 58, 62))
FRAME_SIZE = 64
SECONDS = 12  # one stored frame per second when prepared at 1 fps
SOURCE_FPS = 2
SHOTS = 3
FAMILY_SIZE = 4  # a base scene and three one-word variants
TRAIN_VIDEOS, TEST_VIDEOS = 1920, 120
META_FILE = "synthetic_meta.json"
VERSION = 2

# Filler: every word here is a function word for the tagger (data_pipeline/word_weights.py,
# tests/test_data_synthetic.py checks it), so only size, colour and shape carry weight 2.
OPENERS = ("at first there is", "first we can see", "here we see", "there is", "we can see", "at first we see")
LINKS = ("and then", "and then we can see", "after that", "and after that there is", "next there is",
         "then we see", "afterwards there is", "and then there is")
FINAL_LINKS = ("and finally", "and last of all there is", "finally we see", "and last of all")


def object_phrase(obj: dict) -> str:
    return f"a {obj['size']} {obj['colour']} {obj['shape']}"


def _object_key(obj: dict) -> tuple[str, str, str]:
    return obj["size"], obj["colour"], obj["shape"]


def scene_key(scene: dict) -> tuple:
    """A scene is the unordered set of its shots' objects (cut-aways and layout do not count)."""
    return tuple(sorted(_object_key(o) for o in scene["objects"]))


def caption(scene: dict, style: int) -> str:
    """Caption number `style` of a scene: the objects in shot order, wrapped in filler."""
    rng = np.random.default_rng([scene["caption_seed"], style])
    objects = scene["objects"]
    parts = [f"{OPENERS[rng.integers(len(OPENERS))]} {object_phrase(objects[0])}"]
    for i, obj in enumerate(objects[1:], 1):
        links = FINAL_LINKS if i == len(objects) - 1 and rng.random() < 0.5 else LINKS
        parts.append(f"{links[rng.integers(len(links))]} {object_phrase(obj)}")
    return " ".join(parts)


def canonical_caption(scene: dict) -> str:
    return caption(scene, 0)


def training_captions(scene: dict) -> list[str]:
    return [caption(scene, style) for style in range(3)]


def _random_object(rng: np.random.Generator) -> dict:
    return {"size": str(rng.choice(list(SIZES))), "colour": str(rng.choice(list(COLOURS))), "shape": str(rng.choice(SHAPES))}


def _random_layout(rng: np.random.Generator) -> dict:
    """Shot lengths (seconds), cut-away seconds, per-shot backgrounds and object positions."""
    num_cutaways = int(rng.integers(1, 3))
    shot_seconds = SECONDS - num_cutaways
    # Unequal shots of at least 2 s: a composition of shot_seconds into SHOTS parts.
    while True:
        cuts = np.sort(rng.choice(np.arange(1, shot_seconds), SHOTS - 1, replace=False))
        lengths = np.diff(np.concatenate([[0], cuts, [shot_seconds]]))
        if lengths.min() >= 2:
            break
    timeline = [i for i, n in enumerate(lengths) for _ in range(n)]  # shot index per second
    # Cut-aways go between two seconds of the timeline, never next to each other nor first.
    for _ in range(num_cutaways):
        candidates = [p for p in range(1, len(timeline) + 1) if timeline[p - 1] != -1 and (p == len(timeline) or timeline[p] != -1)]
        timeline.insert(int(rng.choice(candidates)), -1)
    backgrounds = [int(b) for b in rng.choice(len(BACKGROUNDS), SHOTS + num_cutaways, replace=False)]
    positions = [(float(rng.uniform(0.15, 0.85)), float(rng.uniform(0.15, 0.85)), float(rng.uniform(-1.5, 1.5)), float(rng.uniform(-1.5, 1.5)))
                 for _ in range(SHOTS + num_cutaways)]  # (y, x) centre as a fraction, drift (px/s)
    return {"timeline": timeline, "backgrounds": backgrounds, "positions": positions}


def _variant(scene: dict, rng: np.random.Generator) -> dict:
    """The scene with one attribute of one object changed: everything else (layout, cut-aways) kept."""
    which = int(rng.integers(SHOTS))
    attribute = str(rng.choice(ATTRIBUTES))
    values = {"size": list(SIZES), "colour": list(COLOURS), "shape": list(SHAPES)}[attribute]
    objects = [dict(o) for o in scene["objects"]]
    objects[which][attribute] = str(rng.choice([v for v in values if v != objects[which][attribute]]))
    return {**scene, "objects": objects, "caption_seed": int(rng.integers(2**31))}


def _valid(scene: dict) -> bool:
    keys = [_object_key(o) for o in scene["objects"]] + [_object_key(o) for o in scene["cutaways"]]
    return len(set(keys)) == len(keys)  # no object twice, and cut-aways show objects the caption lacks


def generate_scenes(seed: int = 0, scale: int = 1) -> dict[str, list[dict]]:
    """Scenes per split, in families of one-word variants; unique within and across splits."""
    if scale < 1:
        raise ValueError(f"synthetic scale must be >= 1, got {scale}")
    if scale > 8:
        raise ValueError(f"synthetic scale {scale} is too large: use a scale of at most 8")
    counts = {"train": TRAIN_VIDEOS * scale, "test": TEST_VIDEOS * scale}
    rng = np.random.default_rng(seed)
    used: set[tuple] = set()
    splits: dict[str, list[dict]] = {}
    family_id = 0
    for split in ("test", "train"):  # test first: its scenes are then excluded from training
        scenes: list[dict] = []
        while len(scenes) < counts[split]:
            layout = _random_layout(rng)
            num_cutaways = layout["timeline"].count(-1)
            base = {"objects": [_random_object(rng) for _ in range(SHOTS)],
                    "cutaways": [_random_object(rng) for _ in range(num_cutaways)],
                    "caption_seed": int(rng.integers(2**31)), **layout}
            family = [base]
            for _ in range(50 * FAMILY_SIZE):
                if len(family) == FAMILY_SIZE:
                    break
                candidate = _variant(base, rng)
                if scene_key(candidate) not in {scene_key(s) for s in family}:
                    family.append(candidate)
            keys = [scene_key(s) for s in family]
            if len(family) < FAMILY_SIZE or not all(_valid(s) for s in family) or any(k in used for k in keys):
                continue
            used.update(keys)
            for s in family[: counts[split] - len(scenes)]:
                scenes.append({**s, "family": family_id})
            family_id += 1
        splits[split] = scenes
    return splits


def _shape_mask(shape: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    if shape == "square":
        return (np.abs(yy - c) < size * 0.40) & (np.abs(xx - c) < size * 0.40)
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 < (size * 0.47) ** 2
    if shape == "triangle":  # apex up; width grows linearly towards the base
        top, bottom = size * 0.05, size * 0.95
        half_width = (yy - top) / (bottom - top) * size * 0.5
        return (yy >= top) & (yy <= bottom) & (np.abs(xx - c) <= half_width)
    if shape == "cross":  # a plus sign
        arm = size * 0.17
        return ((np.abs(yy - c) < arm) | (np.abs(xx - c) < arm)) & (np.abs(yy - c) < size * 0.48) & (np.abs(xx - c) < size * 0.48)
    raise ValueError(f"unknown shape {shape!r}")


def _draw(frame: np.ndarray, obj: dict, centre_y: float, centre_x: float) -> None:
    size = SIZES[obj["size"]]
    mask = _shape_mask(obj["shape"], size)
    top = int(round(np.clip(centre_y - size / 2, 0, FRAME_SIZE - size)))
    left = int(round(np.clip(centre_x - size / 2, 0, FRAME_SIZE - size)))
    frame[top:top + size, left:left + size][mask] = COLOURS[obj["colour"]]


def render_scene(scene: dict) -> np.ndarray:
    """uint8 (SECONDS * SOURCE_FPS, 64, 64, 3): each second's frames identical (one stored frame per second)."""
    frames = np.empty((SECONDS, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    shot_start: dict[int, int] = {}
    cutaway = 0
    for second, shot in enumerate(scene["timeline"]):
        if shot == -1:  # an isolated cut-away: its own background and an object the caption lacks
            slot, obj, elapsed = SHOTS + cutaway, scene["cutaways"][cutaway], 0
            cutaway += 1
        else:
            slot, obj = shot, scene["objects"][shot]
            elapsed = second - shot_start.setdefault(shot, second)
        y, x, dy, dx = scene["positions"][slot]
        frames[second] = BACKGROUNDS[scene["backgrounds"][slot]]
        _draw(frames[second], obj, y * FRAME_SIZE + dy * elapsed, x * FRAME_SIZE + dx * elapsed)
    return np.repeat(frames, SOURCE_FPS, axis=0)


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
    spec = {"seed": seed, "scale": scale, "version": VERSION}
    meta_path = os.path.join(out_dir, META_FILE)
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            previous = json.load(f).get("spec")
        if previous != spec:
            raise ValueError(f"{out_dir} holds a synthetic set generated with {previous}, not {spec}; use another --out or delete {out_dir}")

    splits = generate_scenes(seed, scale)
    entries = []  # (split, video_id, scene)
    for split in ("train", "test"):
        for scene in splits[split]:
            entries.append((split, f"synth{len(entries):05d}", scene))
    for split, video_id, scene in tqdm(entries, desc="synthetic videos", disable=not progress):
        path = os.path.join(videos_dir, f"{video_id}.mp4")
        if not os.path.isfile(path):
            write_clip(path, render_scene(scene), SOURCE_FPS)

    videos, sentences = [], []
    for i, (split, video_id, scene) in enumerate(entries):
        videos.append({"video_id": video_id, "split": split, "id": i, "category": 0, "url": "synthetic",
                       "start time": 0.0, "end time": float(SECONDS)})
        for text in training_captions(scene):
            sentences.append({"caption": text, "video_id": video_id, "sen_id": len(sentences)})
    data = {"info": {"description": "tvr-jax synthetic shots", "spec": spec}, "videos": videos, "sentences": sentences}
    _atomic_write_text(os.path.join(annotations_dir, "MSRVTT_data.json"), json.dumps(data))
    train_csv = io.StringIO()
    csv.writer(train_csv).writerows([["video_id"]] + [[v] for s, v, _ in entries if s == "train"])
    _atomic_write_text(os.path.join(annotations_dir, "MSRVTT_train.9k.csv"), train_csv.getvalue())
    test_csv = io.StringIO()
    writer = csv.writer(test_csv)
    writer.writerow(["", "key", "vid_key", "video_id", "sentence"])
    for row, (split, video_id, scene) in enumerate(e for e in entries if e[0] == "test"):
        writer.writerow([row, f"ret{row}", video_id, video_id, canonical_caption(scene)])
    _atomic_write_text(os.path.join(annotations_dir, "MSRVTT_JSFUSION_test.csv"), test_csv.getvalue())
    # Written last: its presence marks a complete generation.
    _atomic_write_text(meta_path, json.dumps(describe(entries, spec), indent=1))
    return {"videos": videos_dir, "annotations": annotations_dir}


def describe(entries: list[tuple[str, str, dict]], spec: dict) -> dict[str, Any]:
    """Scenes, one-word hard negatives per test caption and the chance level."""
    test = [(v, scene) for s, v, scene in entries if s == "test"]
    hard_negatives: dict[str, list[str]] = {}
    by_attribute = {a: 0 for a in ATTRIBUTES}
    for v, scene in test:
        hard_negatives[v] = []
        for u, other in test:
            attribute = one_word_difference(scene, other) if u != v else None
            if attribute:
                hard_negatives[v].append(u)
                by_attribute[attribute] += 1
    return {
        "spec": spec,
        "vocabulary": {"sizes": list(SIZES), "colours": list(COLOURS), "shapes": list(SHAPES),
                       "filler": sorted({w for p in OPENERS + LINKS + FINAL_LINKS for w in p.split()} | {"a"})},
        "frame_size": FRAME_SIZE, "source_fps": SOURCE_FPS, "duration_s": SECONDS, "shots": SHOTS, "family_size": FAMILY_SIZE,
        "counts": {s: sum(1 for e in entries if e[0] == s) for s in ("train", "test")},
        "text_to_video_chance_r1": 100.0 / len(test),
        "test_with_one_word_hard_negative": sum(1 for n in hard_negatives.values() if n),
        "test_hard_negative_pairs_by_attribute": by_attribute,
        "scenes": {v: {"split": s, "family": scene["family"], "objects": scene["objects"], "cutaways": scene["cutaways"],
                       "timeline": scene["timeline"]} for s, v, scene in entries},
        "test_hard_negatives": hard_negatives,
    }


def one_word_difference(a: dict, b: dict) -> str | None:
    """The attribute in which b's objects differ from a's in exactly one word (shot order kept)."""
    diffs = [k for x, y in zip(a["objects"], b["objects"]) for k in ATTRIBUTES if x[k] != y[k]]
    return diffs[0] if len(diffs) == 1 else None


def picture(path: str, seed: int = 0, families: int = 2, per_family: int = 2, zoom: int = 2) -> None:
    """A PNG of a few test scenes: their twelve stored frames in a row, the caption and the cut-aways below."""
    from PIL import Image, ImageDraw

    test = generate_scenes(seed)["test"]
    chosen = [s for f in sorted({s["family"] for s in test})[:families] for s in [t for t in test if t["family"] == f][:per_family]]
    cell, pad, text_h = FRAME_SIZE * zoom, 4, 30
    width = SECONDS * (cell + pad) + pad
    sheet = Image.new("RGB", (width, len(chosen) * (cell + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, scene in enumerate(chosen):
        top = pad + row * (cell + text_h + pad)
        frames = render_scene(scene)[::SOURCE_FPS]
        for second, frame in enumerate(frames):
            left = pad + second * (cell + pad)
            sheet.paste(Image.fromarray(frame).resize((cell, cell), Image.NEAREST), (left, top))
            shot = scene["timeline"][second]
            draw.text((left + 2, top + 2), "cut-away" if shot == -1 else f"shot {shot + 1}", fill=(255, 255, 255))
        cut = ", ".join(f"{o['size']} {o['colour']} {o['shape']}" for o in scene["cutaways"])
        draw.text((pad, top + cell + 2), f'family {scene["family"]}: "{canonical_caption(scene)}"', fill=(0, 0, 0))
        draw.text((pad, top + cell + 15), f"cut-away (not in the caption): {cut}", fill=(90, 90, 90))
    sheet.save(path)


if __name__ == "__main__":  # python -m data_pipeline.synthetic docs/synthetic_frames.png
    import sys

    picture(sys.argv[1] if len(sys.argv) > 1 else "synthetic_frames.png")
