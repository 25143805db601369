"""XLA settings tvr-jax needs for correct results, applied when `tvr_jax` is imported.

XLA reads XLA_FLAGS once, when jax starts its first backend, so `tvr_jax/__init__.py` calls
`apply()` before anything here computes. A flag the user already set in XLA_FLAGS wins.

YNNPACK reduce fusion (CPU, jaxlib 0.10.2, on by default). XLA's CPU compiler hands a dot
product and the reductions that follow it to YNNPACK as one fusion, and that fusion returns wrong
values for output rows 512 and beyond once the product is wide enough: (600 x 64) @ (64 x 768)
followed by a max and a weighted sum over groups of 12 columns gave rows 0-511 right and rows
512-599 off by about 15. The DMAE similarity is exactly that shape of program (token grid, then
max over frames and weighted sums): scoring MSR-VTT's 1000 test texts on one CPU device gave
wrong scores for texts 512-999. `-reduce` takes that fusion type out; XLA's own loops run
instead. `tests/test_similarity.py` checks DMAE scores past row 512 against a loop reference.
"""

from __future__ import annotations

import os
import warnings

FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "-reduce"}


def apply() -> None:
    """Add FLAGS to XLA_FLAGS (those the user has not set); warn if a backend already started without them."""
    current = os.environ.get("XLA_FLAGS", "")
    missing = [f"--{name}={value}" for name, value in FLAGS.items() if f"--{name}" not in current]
    if not missing:
        return
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        warnings.warn(f"jax started its backends before tvr_jax was imported, without {' '.join(missing)}: "
                      "on CPU, DMAE scores of more than 512 texts at once can be wrong (tvr_jax/xla_workarounds.py). "
                      "Import tvr_jax before running any jax computation, or set XLA_FLAGS yourself.", stacklevel=3)
    os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()
