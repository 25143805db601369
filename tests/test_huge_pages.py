"""`tvr-jax` restarts itself once with glibc's huge-page tunable (tvr_jax/huge_pages.py)."""

import os
import subprocess
import sys

import pytest

from tvr_jax import huge_pages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's tunable: Linux only")
def test_environment_gains_the_tunable_once_keeps_the_users_and_honours_the_opt_out():
    assert huge_pages.environ_with_huge_pages({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert huge_pages.environ_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
    assert huge_pages.environ_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None  # the user's choice
    assert huge_pages.environ_with_huge_pages({"TVR_JAX_HUGE_PAGES": "0"}) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's tunable: Linux only")
def test_a_process_restarts_itself_with_the_tunable_and_the_same_arguments_and_pid():
    code = ("import os, sys; from tvr_jax import huge_pages; print(os.getpid(), flush=True); "
            "huge_pages.restart_with_huge_pages(); print(os.getpid(), os.environ['GLIBC_TUNABLES'], sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "TVR_JAX_HUGE_PAGES")}
    out = subprocess.run([sys.executable, "-c", code, "an argument"], env=env, capture_output=True, text=True, check=True)
    first, again, last = out.stdout.splitlines()  # the restarted process runs the code again, then goes on
    assert again == first and last == f"{first} glibc.malloc.hugetlb=1 ['an argument']"
    env["TVR_JAX_HUGE_PAGES"] = "0"
    out = subprocess.run([sys.executable, "-c", code.replace("os.environ['GLIBC_TUNABLES']", "os.environ.get('GLIBC_TUNABLES')")],
                         env=env, capture_output=True, text=True, check=True)
    first, second = out.stdout.splitlines()
    assert second == f"{first} None []"
