"""Where benchmark results go: one JSON per script, with the machine and the command that made it."""

from __future__ import annotations

import json
import os
import platform
import sys
import time


def write_results(path: str, **payload) -> None:
    """Atomically write {"meta": machine, jax version, date, command; **payload} to `path`."""
    import jax

    meta = dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(), jax=jax.__version__,
                date=time.strftime("%Y-%m-%d"), command="python " + " ".join(sys.argv))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(dict(meta=meta, **payload), f, indent=2)
    os.replace(path + ".tmp", path)
