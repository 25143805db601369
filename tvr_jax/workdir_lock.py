"""One trainer per work directory: a lock that names its holder and dies with it.

Two trainers writing one run's checkpoints and logs would interleave them silently. `held`
takes an exclusive `flock` on WORKDIR/train.lock for the run's duration and writes the holder's
host, pid and start time into the file; a second trainer finds the lock taken and stops with
those details. The kernel drops the lock when its process ends in any way (kill -9 included),
so a killed run never leaves it stuck: the file stays behind, but its lock does not. On NFS,
Linux maps `flock` to the server's byte-range locks, released when the holder's host ends its
lease.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket

LOCK_FILE = "train.lock"


class WorkdirBusy(RuntimeError):
    """Another live process holds the work directory's lock."""


def _holder(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        return f"pid {info['pid']} on host {info['host']} (started {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its details are not written yet)"


@contextlib.contextmanager
def held(workdir: str):
    """Hold WORKDIR's trainer lock for the `with` block; `WorkdirBusy` naming the holder if taken."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WorkdirBusy(
            f"{workdir} is in use by a trainer: {_holder(path)}. Two trainers would mix one run's checkpoints; "
            f"wait for it to finish, stop it, or train with another --workdir") from None
    try:
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield info
    finally:
        os.close(fd)  # releases the lock
