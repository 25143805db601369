"""One trainer per work directory: the second refuses naming the first; a killed holder frees it."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tvr_jax import train, workdir_lock

HOLD = """
import sys, time
from tvr_jax import workdir_lock
with workdir_lock.held(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def _holder(workdir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_trainer_refuses_naming_the_first_and_a_killed_holder_frees_the_lock(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(workdir_lock.WorkdirBusy, match=rf"pid {holder.pid} on host {socket.gethostname()}.*another --workdir"):
            with workdir_lock.held(str(tmp_path)):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup of its own: the kernel drops the lock
        holder.wait()
    assert os.path.exists(tmp_path / workdir_lock.LOCK_FILE)  # the file stays, the lock does not
    with workdir_lock.held(str(tmp_path)) as info:
        assert info["pid"] == os.getpid()
    with workdir_lock.held(str(tmp_path)):  # released at the end of the block
        pass


def test_train_refuses_a_busy_workdir_before_any_work(tmp_path, tiny_config):
    holder = _holder(tmp_path)
    started = time.monotonic()
    try:
        with pytest.raises(workdir_lock.WorkdirBusy, match=f"pid {holder.pid}"):
            train.train(tiny_config("total_steps=2"), str(tmp_path), lambda *a: pytest.fail("no batches may be drawn"))
    finally:
        holder.kill()
        holder.wait()
    assert time.monotonic() - started < 60
    assert sorted(os.listdir(tmp_path)) == [workdir_lock.LOCK_FILE]  # no checkpoint, no log
