"""Ours and the PyTorch peer side by side: each in its own process, driven over pipes by one parent.

Each side gets its own process (its own thread pool, allocator settings and XLA_FLAGS, which are
read once per process). A benchmark module is both the parent and, run with `--serve SIDE`, the
worker: the worker builds its side's jobs and hands them to `serve`; the parent starts it with
`Worker`, asks `run JOB` (one call, its JSON result back) or `time JOB`, and alternates the two
sides round by round, so a load on the machine hits both alike.

`time JOB` runs the job once untimed, then once timed. On this VM a job that follows a wait of
a few seconds runs markedly slower than one run back to back (the kernel's DAMON pages out memory
left idle; benchmarks/notes/train_step.md), and neither a training loop nor an evaluation waits
like that.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

from tvr_jax import huge_pages as huge_pages_lib

_REPLY = "@@ "  # marks protocol lines on a worker's stdout: anything else it prints passes through


def keep_freed_host_memory() -> None:
    """Tell glibc to serve every allocation from its heap and never trim it, so freed pages stay mapped.

    By default glibc maps each allocation above 32 MiB afresh and unmaps it on free, so a program
    that allocates big temporaries at every step writes into pages the kernel must fault in and
    zero first. Both sides of a comparison run with this; train_step.py's --options table shows
    what it is worth to each (PyTorch, which allocates per operation, gains; XLA does not).
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    if not (libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1)):
        raise RuntimeError("mallopt refused the settings: not glibc?")


def _reply(obj) -> None:
    print(_REPLY + json.dumps(obj), flush=True)


def serve(jobs: dict[str, Callable[[], object]], ready: dict) -> None:
    """Worker loop: say `ready`, then answer `run JOB`, `time JOB` and `quit` lines on stdin."""
    _reply(ready)
    for line in sys.stdin:
        command, _, name = line.strip().partition(" ")
        if command == "run":
            _reply(jobs[name]())
        elif command == "time":
            jobs[name]()  # untimed: brings back the pages an idle wait lost
            t0 = time.perf_counter()
            jobs[name]()
            _reply(time.perf_counter() - t0)
        else:
            return


# The folder holding the `benchmarks` package: a worker imports the same code as its parent,
# whatever its working directory.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Worker:
    """`python -m MODULE --serve SIDE ARGS...` as a child process; `ready` is what its `serve` said first.
    Both sides get huge pages for their heaps by default: glibc's tunable, and PyTorch's
    THP_MEM_ALLOC_ENABLE for its CPU allocator."""

    def __init__(self, module: str, side: str, args: list[str], xla_flags: str = "", huge_pages: bool = True):
        env = dict(os.environ)
        if huge_pages:  # as `tvr-jax` runs (tvr_jax/huge_pages.py); PyTorch's own switch for its allocator too
            env = huge_pages_lib.environ_with_huge_pages(env) or env
            env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", module, "--serve", side, *args]
        self.side = side
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self._read()

    def ask(self, command: str):
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the worker is gone: _read says which one and how it ended
        return self._read()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(_REPLY):
                return json.loads(line[len(_REPLY):])
            print(line, end="", flush=True)
        raise RuntimeError(f"benchmark worker {self.side!r} exited with {self.proc.wait()} (its stderr is above)")

    def close(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def alternate(workers: list[Worker], jobs: list[str], rounds: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Time every job on every worker, round after round, workers alternating: {job: {side: [s, ...]}}."""
    times = {job: {w.side: [] for w in workers} for job in jobs}
    for r in range(warmup + rounds):
        for job in jobs:
            for w in workers:
                seconds = w.ask(f"time {job}")
                if r >= warmup:
                    times[job][w.side].append(seconds)
        if r >= warmup:
            print(f"round {r}: " + ", ".join(f"{job} " + "/".join(f"{times[job][w.side][-1]:.3f}" for w in workers)
                                            + " s" for job in jobs) + f" ({' / '.join(w.side for w in workers)})",
                  flush=True)
    return times
