"""Decoding videos with decord, and the two frame samplings of the method.

Offline (`decode_video`): frames at `fps` frames per second (uniformly capped at `max_frames`),
short side resized to `short_side` (never upsampled), encoded as JPEG.
Online (`sample_frame_indices`): T indices out of a video's stored frames, uniform (the paper's
sampling, in training as in evaluation) or, as a training augmentation, one random frame per
segment; short videos are padded, with a mask.

A video that cannot be decoded raises `VideoDecodeError` with a reason code and a fix; it is
never replaced by zeros (zeros caused NaN losses in peer code, docs/method.md section 6).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np

# Reason codes, as they appear in prepare_report.json, with the fix the report suggests.
FIXES = {
    "missing": "no file for this video id under --videos; download it again or accept that it is left out",
    "empty": "the file has 0 bytes (an interrupted download); download it again",
    "unreadable": "decord/ffmpeg cannot open it (truncated or not a video); re-download or re-encode it with ffmpeg",
    "no_frames": "the container holds no decodable video frames; re-download or re-encode it with ffmpeg",
    "decode_failed": "decoding stopped part way (truncated or damaged stream); re-download it or re-encode it with ffmpeg",
    "crashed": "the decoder process died on this file; re-encode it with ffmpeg (`ffmpeg -i IN -c:v libx264 OUT.mp4`)",
    "timeout": "decoding took longer than the time limit (a hung decoder or a very long video); check it with ffprobe and "
               "re-encode it, or raise `tvr-jax prepare --decode-timeout` for very long videos",
}


class VideoDecodeError(Exception):
    """A video that cannot be prepared: `reason` is one of FIXES' keys, `detail` says what happened."""

    def __init__(self, path: str, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = path, reason, detail
        super().__init__(f"{path}: {reason}: {detail} (fix: {FIXES[reason]})")


@dataclasses.dataclass(frozen=True)
class DecodedVideo:
    """Frames sampled from one video. `frames` uint8 (N, H, W, 3); `times` seconds, (N,)."""

    frames: np.ndarray
    times: np.ndarray
    duration: float
    source_fps: float
    source_num_frames: int
    source_height: int
    source_width: int


def sample_times(duration: float, fps: float, max_frames: int | None = None) -> np.ndarray:
    """Timestamps at `fps` per second, each in the middle of its 1/fps window; at least one.

    A 10 s video at 1 fps gives 0.5, 1.5, ..., 9.5 (10 frames). When that is more than
    `max_frames`, `max_frames` windows spread uniformly over the whole video are used instead.
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    count = max(1, int(np.floor(duration * fps + 1e-6)))
    if duration * fps < 1:  # shorter than one window: its middle, not a moment after its end
        return np.array([max(float(duration), 0.0) / 2])
    if max_frames is not None and count > max_frames:
        return (np.arange(max_frames) + 0.5) * (duration / max_frames)
    return (np.arange(count) + 0.5) / fps


def resized_shape(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) with the short side at `short_side`, aspect kept; never upsamples."""
    short = min(height, width)
    if short_side is None or short <= short_side:
        return height, width
    scale = short_side / short
    return (short_side, max(1, round(width * scale))) if height <= width else (max(1, round(height * scale)), short_side)


def decode_video(path: str, fps: float = 1.0, max_frames: int | None = None, short_side: int | None = 224) -> DecodedVideo:
    """Decode the frames at `sample_times` of one video; raise VideoDecodeError.

    Frames are found by their timestamps, so a variable frame rate is sampled at the right
    moments. A video whose container asks players to rotate it (a phone's portrait video) is
    decoded with PyAV and turned as a player shows it; decord, which reads every other video,
    cannot (it fails on a quarter turn and ignores a half turn)."""
    import decord

    if not os.path.isfile(path):
        raise VideoDecodeError(path, "missing", "file not found")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty", "0 bytes")
    rotation = _display_rotation(path)
    if rotation:
        frames, times, duration, source_fps, num_frames = _decode_rotated(path, fps, max_frames, rotation)
    else:
        try:
            # One decoder thread: parallelism comes from decoding several videos at once.
            reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        except Exception as e:  # decord raises RuntimeError or DECORDError
            raise VideoDecodeError(path, "unreadable", _first_line(e)) from None
        num_frames = len(reader)
        source_fps = float(reader.get_avg_fps())
        if num_frames <= 0 or not np.isfinite(source_fps) or source_fps <= 0:
            raise VideoDecodeError(path, "no_frames", f"{num_frames} frames at {source_fps} fps")
        starts, duration = _frame_starts(reader, num_frames, source_fps)
        times = sample_times(duration, fps, max_frames)
        indices = frame_at(starts, times)
        try:
            frames = reader.get_batch(indices.tolist()).asnumpy()
        except Exception as e:
            raise VideoDecodeError(path, "decode_failed", _first_line(e)) from None
        if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
            raise VideoDecodeError(path, "decode_failed", f"decord returned shape {frames.shape} for {len(indices)} frames")
    return _resized(frames, times, duration, source_fps, num_frames, short_side)


def _resized(frames: np.ndarray, times: np.ndarray, duration: float, source_fps: float, num_frames: int,
             short_side: int | None) -> DecodedVideo:
    from PIL import Image

    height, width = frames.shape[1:3]
    out_h, out_w = resized_shape(height, width, short_side)
    if (out_h, out_w) != (height, width):
        # PIL's resize filters over the whole footprint: proper anti-aliasing when shrinking.
        frames = np.stack([np.asarray(Image.fromarray(f).resize((out_w, out_h), Image.BICUBIC)) for f in frames])
    return DecodedVideo(frames, times.astype(np.float32), float(duration), source_fps, num_frames, height, width)


def frame_at(starts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """For each time, the index of the frame on screen then: the last one starting at or before it."""
    return np.clip(np.searchsorted(starts, times, side="right") - 1, 0, len(starts) - 1).astype(np.int64)


def _frame_starts(reader, num_frames: int, source_fps: float) -> tuple[np.ndarray, float]:
    """(each frame's start in seconds from the first, the video's duration) from the container's
    timestamps; evenly spaced at the average rate where the timestamps are unusable."""
    even = np.arange(num_frames) / source_fps, num_frames / source_fps
    try:
        stamps = np.asarray(reader.get_frame_timestamp(list(range(num_frames))), np.float64)
    except Exception:  # noqa: BLE001 - a container without usable timestamps
        return even
    if stamps.shape != (num_frames, 2) or not np.all(np.isfinite(stamps)):
        return even
    starts = stamps[:, 0] - stamps[0, 0]
    duration = float(stamps[-1, 1] - stamps[0, 0])
    if np.any(np.diff(starts) < 0) or (num_frames > 1 and starts[-1] <= 0) or duration <= 0:
        return even
    return starts, duration


def _display_rotation(path: str) -> int:
    """Quarter turns counterclockwise (0-3) that a player applies to the frames (the container's
    display matrix, as ffmpeg reads it). Raises VideoDecodeError for a file with no video stream."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams})
                raise VideoDecodeError(path, "no_frames", f"the file holds no video stream ({', '.join(kinds)} only)" if kinds
                                       else "the file holds no stream at all (nothing was recorded in it)")
            for frame in container.decode(video=0):
                return int(round(float(getattr(frame, "rotation", 0) or 0) / 90)) % 4
    except VideoDecodeError:
        raise
    except Exception:  # noqa: BLE001 - PyAV cannot read it either: decord says why below
        return 0
    return 0


def _decode_rotated(path: str, fps: float, max_frames: int | None, quarter_turns: int):
    """(frames turned as displayed, times, duration, average fps, frame count) with PyAV: timestamps
    from the packets first (no decoding), then only the sampled frames kept."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            base = stream.time_base
            packets = [p for p in container.demux(stream) if p.pts is not None and p.size]
            pts = np.sort(np.array([p.pts for p in packets], np.float64)) * float(base)
            last = max((p.duration or 0 for p in packets), default=0) * float(base)
        if len(pts) == 0:
            raise VideoDecodeError(path, "no_frames", "0 frames")
        starts = pts - pts[0]
        step = float(np.median(np.diff(starts))) if len(starts) > 1 else 0.0
        duration = float(starts[-1] + (last or step or 1.0))
        times = sample_times(duration, fps, max_frames)
        wanted = frame_at(starts, times)
        keep = set(wanted.tolist())
        picked: dict[int, np.ndarray] = {}
        with av.open(path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in keep:
                    picked[i] = np.rot90(frame.to_ndarray(format="rgb24"), quarter_turns)
                if i >= wanted.max():
                    break
    except VideoDecodeError:
        raise
    except Exception as e:  # noqa: BLE001
        raise VideoDecodeError(path, "decode_failed", _first_line(e)) from None
    if any(i not in picked for i in keep):
        raise VideoDecodeError(path, "decode_failed", f"{len(picked)} of {len(keep)} sampled frames decoded")
    frames = np.ascontiguousarray(np.stack([picked[i] for i in wanted.tolist()]))
    return frames, times, duration, len(starts) / duration, len(starts)


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """uint8 (H, W, 3) -> JPEG bytes (4:2:0, like the H.264 sources they come from)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


FRAME_SAMPLINGS = ("uniform", "random_segment")


def sample_frame_indices(num_frames: int, num_samples: int, mode: str = "uniform",
                         rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """T = `num_samples` indices into a video's `num_frames` stored frames, and their mask.

    "uniform": `linspace` over the whole video, rounded; what CLIP4Clip and the paper use in
    training and in testing alike (docs/method.md section 5.1). "random_segment": the video is
    cut into T equal segments and one frame is drawn at random in each (TSN's sampling), an
    augmentation that is not the paper's default. A video with fewer than T frames uses every
    frame once, in order, in both modes; the remaining positions repeat the last frame and are
    False in the mask (so a model that ignored the mask would still see real pixels, never zeros).
    """
    if mode not in FRAME_SAMPLINGS:
        raise ValueError(f"frame sampling must be one of {FRAME_SAMPLINGS}, got {mode!r}")
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    mask = np.zeros(num_samples, bool)
    if num_frames <= num_samples:
        indices = np.full(num_samples, num_frames - 1, np.int64)
        indices[:num_frames] = np.arange(num_frames)
        mask[:num_frames] = True
        return indices, mask
    mask[:] = True
    if mode == "uniform":
        return np.round(np.linspace(0, num_frames - 1, num_samples)).astype(np.int64), mask
    if rng is None:
        raise ValueError("random_segment sampling needs an rng")
    bounds = np.floor(np.linspace(0, num_frames, num_samples + 1)).astype(np.int64)
    # Every segment holds at least one frame since num_frames > num_samples.
    return rng.integers(bounds[:-1], bounds[1:]).astype(np.int64), mask


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


# ----------------------------------------------------------------------------- decode cache
# `prepare` decodes each video once into one small file per video (written atomically), so
# an interrupted run resumes where it stopped; the TFDS shards are then written from these.

def decode_to_cache(video_id: str, path: str, cache_path: str, fps: float, max_frames: int | None,
                    short_side: int | None, jpeg_quality: int = 90) -> dict:
    """Worker: decode one video, JPEG its frames, save to `cache_path`. Returns a status dict."""
    try:
        video = decode_video(path, fps, max_frames, short_side)
    except VideoDecodeError as e:
        return {"video_id": video_id, "path": path, "ok": False, "reason": e.reason, "detail": e.detail}
    jpegs = [encode_jpeg(f, jpeg_quality) for f in video.frames]
    meta = {
        "video_id": video_id, "path": path, "duration": video.duration, "source_fps": video.source_fps,
        "source_num_frames": video.source_num_frames, "source_height": video.source_height,
        "source_width": video.source_width, "height": int(video.frames.shape[1]), "width": int(video.frames.shape[2]),
    }
    offsets = np.cumsum([0] + [len(j) for j in jpegs]).astype(np.int64)
    tmp = f"{cache_path}.partial"
    with open(tmp, "wb") as f:
        np.savez(f, jpeg=np.frombuffer(b"".join(jpegs), np.uint8), offsets=offsets, times=video.times,
                 meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    os.replace(tmp, cache_path)
    return {"video_id": video_id, "path": path, "ok": True, "num_frames": len(jpegs)}


def cached_num_frames(cache_path: str) -> int:
    """How many frames a cache file written by decode_to_cache holds (reads its offsets only)."""
    with np.load(cache_path, allow_pickle=False) as data:
        return len(data["offsets"]) - 1


def read_cache(cache_path: str) -> tuple[list[bytes], np.ndarray, dict]:
    """(JPEG bytes per frame, frame times, metadata) of a cache file written by decode_to_cache."""
    with np.load(cache_path, allow_pickle=False) as data:
        blob, offsets = data["jpeg"].tobytes(), data["offsets"]
        times, meta = data["times"], json.loads(data["meta"].tobytes().decode())
    return [blob[a:b] for a, b in zip(offsets[:-1], offsets[1:])], times, meta
