"""Transparent huge pages for the host heap, through glibc's malloc tunable.

A training step on the CPU touches gigabytes of activations and gradients on the heap every
step. With 4 KiB pages that walk misses the TLB far more than with 2 MiB ones, and Linux's usual
THP setting ("madvise") gives huge pages only to memory that asks for them. glibc asks for the
heap when `GLIBC_TUNABLES` holds `glibc.malloc.hugetlb=1` (glibc >= 2.35; older ones, other C
libraries and THP "never" ignore it). The tunable is read once, when the process starts, so
`tvr-jax` restarts itself with it (`exec`, same process id) before any work. On an AMD EPYC
Zen 5 (2 cores) the ViT-B/32 bfloat16 training step of `benchmarks/train_step.py`, timed in
fresh processes, took 5.2-5.3 s without and 4.0 s with it (benchmarks/notes/bf16_step.md); the
side-by-side record with it is in BENCHMARKS.md, "Train step". `TVR_JAX_HUGE_PAGES=0` opts out.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "TVR_JAX_HUGE_PAGES"


def environ_with_huge_pages(environ: dict[str, str]) -> dict[str, str] | None:
    """`environ` with glibc's huge-page tunable added; None when there is nothing to add (not Linux,
    opted out with TVR_JAX_HUGE_PAGES=0, or the tunable already set, to whatever value)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if not sys.platform.startswith("linux") or environ.get(OPT_OUT, "1") == "0" or TUNABLE in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))}


def restart_with_huge_pages() -> None:
    """Replace this process by the same command with the tunable set; returns when none is needed."""
    environ = environ_with_huge_pages(dict(os.environ))
    if environ is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
