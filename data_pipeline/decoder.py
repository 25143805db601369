"""Decoding processes that a bad video cannot stop: a crash or a hang costs one video, not the run.

Every video is decoded in a child process (`DecoderProcess`) that the parent can abandon. A
video whose decoder kills its process (a segfault in ffmpeg on a damaged file) is reported as
"crashed"; one that takes longer than the time limit (a decoder stuck on a broken stream) is
reported as "timeout". Either way that process is killed and a fresh one takes its place, and
the other videos go on. The local path (`decode_all`) runs `workers` of them; the Beam path
(`data_pipeline/beam_prepare.py`) gives each of its decoding workers one.

An exception that is not about the video (the disk is full, a bug) is not a failed video: it
stops the run with the video's name, so nothing is silently left out.
"""

from __future__ import annotations

import errno
import multiprocessing
import multiprocessing.connection
import os
import time
import traceback
from typing import Callable

from data_pipeline import video as video_lib

DEFAULT_TIMEOUT_S = 300.0  # a few seconds per minute of video at 1 fps; hours means a hung decoder
_READY, _RESULT, _ERROR = "ready", "result", "error"
# How long a fresh process may take to start (spawn imports numpy, decord and PIL).
_START_TIMEOUT_S = 300.0
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a full quota, a file-size limit


def _serve(conn, decode_fn: Callable, args: tuple) -> None:
    """Child: decode the videos the parent sends, one at a time, until told to stop (None)."""
    conn.send((_READY, None))
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent went away
            return
        if task is None:
            return
        video_id, path, cache_path = task
        try:
            conn.send((_RESULT, decode_fn(video_id, path, cache_path, *args)))
        except Exception as e:  # noqa: BLE001 - reported to the parent, which stops the run
            conn.send((_ERROR, (f"{type(e).__name__}: {e}", traceback.format_exc(), getattr(e, "errno", None))))


def failure(video_id: str, path: str, reason: str, detail: str) -> dict:
    return {"video_id": video_id, "path": path, "ok": False, "reason": reason, "detail": detail}


class DecoderProcess:
    """One child process decoding one video at a time, with a time limit per video.

    `submit` hands it a video; `collect` (once `conn` is readable) or `expire` (once the limit
    has passed) gives the video's status dict and leaves the process ready for the next one,
    replacing it when it died or was stopped.
    """

    def __init__(self, decode_fn: Callable, args: tuple, timeout: float | None = DEFAULT_TIMEOUT_S,
                 context=None):
        self._decode_fn, self._args = decode_fn, args
        self.timeout = timeout or None  # 0 or None: no limit
        # spawn, not fork: the parent may hold TensorFlow's threads, which fork does not survive.
        self._context = context or multiprocessing.get_context("spawn")
        self.task: tuple[str, str, str] | None = None
        self.since = 0.0
        self.replaced = 0  # processes started after the first (crashes and hangs)
        self._launch()

    def _launch(self) -> None:
        self.conn, child = self._context.Pipe()
        self.process = self._context.Process(target=_serve, args=(child, self._decode_fn, self._args), daemon=True)
        self.process.start()
        child.close()
        self._ready = False

    def wait_ready(self) -> None:
        """Block until the process has started; a process that cannot start is a set-up problem."""
        if self._ready:
            return
        try:
            if self.conn.poll(_START_TIMEOUT_S):
                kind, _ = self.conn.recv()
                self._ready = kind == _READY
        except (EOFError, OSError):
            pass
        if not self._ready:
            self.close()
            raise RuntimeError(
                "decoder worker processes could not start; when calling data_pipeline.prepare from a script, "
                "call it under `if __name__ == '__main__':` (worker processes are spawned and import the main module)")

    def submit(self, video_id: str, path: str, cache_path: str) -> None:
        self.wait_ready()
        self.conn.send((video_id, path, cache_path))
        self.task, self.since = (video_id, path, cache_path), time.monotonic()

    @property
    def deadline(self) -> float:
        return self.since + self.timeout if self.timeout else float("inf")

    def collect(self) -> dict:
        """The status of the submitted video, once `conn` is readable (a result, or the end of a dead process)."""
        video_id, path, cache_path = self.task
        self.task = None
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            self._replace()
            return failure(video_id, path, "crashed", "the decoder process died")
        if kind == _ERROR:
            self.close()
            error, trace, code = value
            if code in DISK_FULL_ERRNOS:  # the decode cache's disk is full: say so, naming the file
                raise OSError(code, f"{os.strerror(code)} (writing the decode cache of {video_id})", cache_path)
            raise RuntimeError(f"decoding {video_id} ({path}) failed with {error}: not a fault of the video (disk "
                               f"full, permissions, a bug); fix it and rerun, finished videos are kept. In the "
                               f"decoding process:\n{trace}")
        return value

    def expire(self) -> dict:
        """Stop the process working past its deadline and report its video as timed out."""
        video_id, path, _ = self.task
        self.task = None
        self._replace()
        return failure(video_id, path, "timeout", f"decoding took longer than {self.timeout:g} s; the decoder was stopped")

    def decode(self, video_id: str, path: str, cache_path: str) -> dict:
        """Synchronous: submit, then wait at most the time limit."""
        self.submit(video_id, path, cache_path)
        if self.conn.poll(self.timeout):
            return self.collect()
        return self.expire()

    def _replace(self) -> None:
        self._stop()
        self.replaced += 1
        self._launch()

    def _stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()

    def close(self) -> None:
        if self.process.is_alive() and self.task is None and self._ready:
            try:
                self.conn.send(None)
                self.process.join(5)
            except (BrokenPipeError, OSError):
                pass
        self._stop()


def decode_all(todo: dict[str, tuple[str, str]], params: dict, workers: int, *, timeout: float | None = DEFAULT_TIMEOUT_S,
               progress: bool = True, decode_fn: Callable = video_lib.decode_to_cache) -> list[dict]:
    """Decode `todo` ({video_id: (path, cache_path)}) in `workers` processes; one status dict per video.

    Each process holds one video at a time, so a crash or a hang is traced to its own file.
    """
    from tqdm import tqdm

    if not todo:
        return []
    args = (params["fps"], params["max_frames"], params["short_side"], params["jpeg_quality"])
    pool = [DecoderProcess(decode_fn, args, timeout) for _ in range(max(1, min(workers, len(todo))))]
    pending = [(vid, path, cache) for vid, (path, cache) in reversed(list(todo.items()))]
    results: list[dict] = []
    bar = tqdm(total=len(todo), desc="decoding videos", unit="video", disable=not progress)
    try:
        for decoder in pool:
            decoder.wait_ready()
        while pending or any(d.task for d in pool):
            for decoder in pool:
                if decoder.task is None and pending:
                    decoder.submit(*pending.pop())
            busy = [d for d in pool if d.task]
            wait_s = max(0.0, min(d.deadline for d in busy) - time.monotonic())
            ready = multiprocessing.connection.wait([d.conn for d in busy], timeout=None if wait_s == float("inf") else wait_s)
            now = time.monotonic()
            for decoder in busy:
                if decoder.conn in ready:
                    results.append(decoder.collect())
                elif now >= decoder.deadline:
                    results.append(decoder.expire())
                else:
                    continue
                bar.update(1)
                if not results[-1]["ok"]:
                    bar.set_postfix(failed=sum(not r["ok"] for r in results))
    finally:
        for decoder in pool:
            decoder.close()
        bar.close()
    return results
