"""Where one training step's time goes: the ViT-B/32 meanP step of `benchmarks/train_step.py`,
traced with the JAX profiler, its XLA:CPU operations summed by kind and joined with the
compiled program's optimized HLO (which layer and which pass each came from).

    python -m benchmarks.profile_step --dtype bfloat16           # prints the breakdown
    python -m benchmarks.profile_step --dtype float32 --top 30   # and the 30 slowest operations

XLA:CPU runs each operation as a thunk; the profiler records every synchronous thunk with its HLO
name. Products that XLA hands to Eigen run asynchronously on its thread pool and are not
recorded one by one: their time shows as the executor waiting ("wait for completion") beyond
the recorded thunks, reported here as `waiting on asynchronous work`. Thunk times are summed
over threads, so categories can add up to more than the wall time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """Entry-computation operation name -> (shape, opcode, jax op_name metadata)."""
    entry = hlo_text[hlo_text.index("ENTRY"):]
    ops = {}
    for line in entry.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-#]+) = (\S+) ([\w\-]+)\(", line)
        if m:
            meta = re.search(r'op_name="([^"]+)"', line)
            ops[m.group(1)] = (m.group(2), m.group(3), meta.group(1) if meta else "")
    return ops


def category(name: str, op: tuple[str, str, str]) -> str:
    """A kind of work: matrix products (offloaded to XNNPACK/YNNPACK fusions or run by Eigen),
    elementwise and reduction loops, copies; its dtype; forward or backward pass."""
    shape, opcode, meta = op
    dtype = shape.split("[")[0]
    direction = "backward" if "transpose(" in meta else "forward"
    if opcode == "dot":
        kind = "product (Eigen)"
    elif opcode == "fusion" and ("ynn" in name or "xnn" in name):
        kind = "product (XNNPACK)" if "dot_general" in meta or re.search(r"/(\w+_proj|c_fc|c_proj|conv1)/", meta) else "reduction (XNNPACK)"
    elif opcode in ("copy", "transpose") or name.startswith(("copy", "transpose")):
        kind = "copy / transpose"
    elif "reduce-window" in name:
        kind = "reduce-window loop"
    elif opcode == "fusion":
        kind = "elementwise / reduction loop"
    else:
        kind = opcode
    return f"{kind}, {dtype}, {direction}"


def breakdown(trace_file: str, ops: dict) -> dict:
    with gzip.open(trace_file) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    per_op, waiting, executing = collections.Counter(), 0.0, 0.0
    for e in events:
        if e.get("ph") != "X":
            continue
        if e["name"] == "ThunkExecutor::Execute (wait for completion)":
            waiting += e["dur"]
        elif e["name"] == "ThunkExecutor::Execute":
            executing += e["dur"]
        elif "hlo_op" in e.get("args", {}) and not e["name"].startswith("end:"):
            per_op[e["args"]["hlo_op"]] += e["dur"]
    by_kind = collections.Counter()
    for name, us in per_op.items():
        by_kind[category(name, ops.get(name, ("?", "?", "")))] += us
    return {"per_op_us": per_op, "by_kind_us": by_kind, "async_wait_us": max(waiting - executing, 0.0)}


def traced_breakdown(call, compiled, work: str) -> dict:
    """Run `call()` (one execution of the jitted program `compiled`) under the profiler; its
    `breakdown` against `compiled`'s optimized HLO, with the traced wall time."""
    import jax

    jax.profiler.start_trace(work, create_perfetto_trace=True)
    t0 = time.perf_counter()
    call()
    wall = time.perf_counter() - t0
    jax.profiler.stop_trace()
    trace = max(glob.glob(f"{work}/**/*.trace.json.gz", recursive=True), key=os.path.getmtime)
    ops = hlo_ops(compiled.as_text())
    return {**breakdown(trace, ops), "wall_s": wall, "ops": ops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--top", type=int, default=10, help="also list this many slowest operations")
    parser.add_argument("--steps", type=int, default=2, help="untraced steps timed before the traced one")
    args = parser.parse_args()
    import jax

    from benchmarks.train_step import BASELINE_OVERRIDES, SETTINGS, Ours

    config, batch, _ = SETTINGS["vit_b32"]
    overrides = BASELINE_OVERRIDES + ([f"model.dtype='{args.dtype}'"] if args.dtype != "float32" else [])
    ours = Ours(config, batch, overrides)
    ours.run_step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        ours.run_step()
        times.append(time.perf_counter() - t0)
    work = tempfile.mkdtemp(prefix="profile_step_")
    result = traced_breakdown(ours.run_step, ours.step, work)
    total = sum(result["by_kind_us"].values())
    print(f"ViT-B/32 meanP step, {batch} clips, {args.dtype}, jax {jax.__version__}: steps "
          f"{', '.join(f'{t:.2f}' for t in times)} s untraced, {result['wall_s']:.2f} s traced")
    print(f"recorded operations: {total / 1e6:.2f} s summed over threads; waiting on asynchronous work: "
          f"{result['async_wait_us'] / 1e6:.2f} s")
    for kind, us in result["by_kind_us"].most_common():
        if us >= 0.001 * total:
            print(f"  {us / 1e6:7.2f} s  {100 * us / total:5.1f} %  {kind}")
    print(f"slowest {args.top} operations:")
    for name, us in result["per_op_us"].most_common(args.top):
        shape, opcode, meta = result["ops"].get(name, ("?", "?", ""))
        print(f"  {us / 1e3:8.1f} ms  {name:28s} {shape.split('{')[0]:22s} {meta.split('/', 1)[-1][-80:]}")
    print(f"trace kept in {work}")


if __name__ == "__main__":
    main()
