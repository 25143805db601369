"""The ViT-B/32 train step on one GPU in bfloat16: clips/s and MFU against the GPU's measured matmul peak.

Run by `benchmarks/gpu_check.sh` (under 5 minutes). One process, in this order:
  1. the bf16 matmul peak of this GPU (XLA, square products, fastest of repeats);
  2. our full step (DMAE + NegNCE + TPM-CL, `configs/msrvtt_vit_b32.py`, 12 frames x 32 words)
     and our meanP + InfoNCE baseline step, bf16 compute, float32 parameters and Adam;
  3. the PyTorch peer (`torch_reference.py`, bf16 autocast, eager) at the same batch;
  4. compiled memory of our full step with remat (per-block layout, and with scan_layers) against
     without (compile only; benchmarks/notes/train_memory.md says why both).
MFU counts the towers' matmul FLOPs by hand (`flops.py`), so it is the conservative figure;
XLA's cost_analysis of the whole step is printed beside it. Inputs are random device arrays:
this measures the step, not the input pipeline.

    python -m benchmarks.gpu_check [--batch 128] [--steps 10] [--out benchmarks/results/gpu_check.json]
    python -m benchmarks.gpu_check --config configs/msrvtt_vit_b32.py:tiny --batch 8    # a CPU smoke run
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import flops
from benchmarks.results_io import print_tables, table, write_results
from benchmarks.train_step import BASELINE_OVERRIDES, Ours, Peer, make_batch

BF16 = ["model.dtype='bfloat16'"]
FULL, BASELINE = "ours: DMAE + NegNCE + TPM-CL", "ours: meanP + InfoNCE"
PEER = "PyTorch peer: meanP + InfoNCE (bf16 autocast, eager)"


def median_step_seconds(run_step, steps: int, warmup: int = 2) -> tuple[float, list[float]]:
    for _ in range(warmup):
        run_step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        run_step()  # returns the loss as a Python float: the step has finished
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/msrvtt_vit_b32.py")
    parser.add_argument("--batch", type=int, default=128, help="clips per step (the paper's global batch)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
    args = parser.parse_args()

    import jax

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}", flush=True)
    sizes = (2048, 4096, 8192) if jax.default_backend() != "cpu" else (512,)
    peak = flops.measured_matmul_peak("bfloat16", sizes=sizes, repeats=10)
    peak_flops = peak["peak_flops"]
    print(f"bf16 matmul peak: {peak_flops / 1e12:.1f} TFLOP/s ({peak['all']} GFLOP/s)", flush=True)

    from tvr_jax import experiment
    from tvr_jax.config_io import load_config

    m = experiment.build_model(load_config(args.config))[0].config
    frames, words, batch = m.max_frames, m.max_words, args.batch
    model_flops = flops.meanp_step_flops(m.clip, batch, frames, words)["total"]  # the towers', by hand
    runs, memory = [], {}

    def report() -> list[dict]:  # written after every stage: a run cut short keeps what it measured
        rows = [[r["name"], batch, f"{r['seconds'] * 1e3:.1f}", f"{batch / r['seconds']:.1f}",
                 f"{100 * model_flops / r['seconds'] / peak_flops:.1f}%",
                 f"{100 * r['xla_flops'] / r['seconds'] / peak_flops:.1f}%" if r.get("xla_flops") else "n/a"]
                for r in runs]
        by_name = {r["name"]: r["seconds"] for r in runs}
        if PEER in by_name and BASELINE in by_name:
            rows.append(["ratio ours / PyTorch, meanP + InfoNCE", "", f"{by_name[BASELINE] / by_name[PEER]:.2f}x",
                         "", "", ""])
        tables = [table(f"Train step on {device.device_kind}, bfloat16 compute, {batch} clips x {frames} frames x "
                        f"{words} words; bf16 matmul peak {peak_flops / 1e12:.0f} TFLOP/s measured in this run",
                        ["step", "clips", "step ms (median)", "clips/s", "MFU (towers' FLOPs by hand)",
                         "MFU (XLA cost_analysis FLOPs)"], rows)]
        if memory:
            tables.append(table("Compiled memory of our full step (XLA memory_analysis)",
                                ["variant", "temporaries GiB", "arguments GiB", "temporaries / clips, MiB"],
                                [[k, f"{v['temp_bytes'] / 2**30:.2f}", f"{v['argument_bytes'] / 2**30:.2f}",
                                  f"{v['temp_bytes'] / batch / 2**20:.0f}"] for k, v in memory.items()]))
        write_results(args.out, tables=tables, peak=peak, runs=runs, memory=memory, model_flops=model_flops)
        return tables

    # The peer first: JAX (not preallocating, see gpu_check.sh) has not yet taken the memory torch needs.
    if not args.skip_peer:
        import torch

        on = "cuda" if torch.cuda.is_available() else "cpu"
        peer = Peer(m.clip, make_batch(m.clip, frames, words, batch), bf16=True, device=on)
        seconds, times = median_step_seconds(peer.run_step, args.steps)
        runs.append({"name": PEER, "seconds": seconds, "all": times})
        print(runs[-1], flush=True)
        del peer
        if on == "cuda":
            torch.cuda.empty_cache()
        report()
    for name, overrides in ((FULL, []), (BASELINE, BASELINE_OVERRIDES)):
        ours = Ours(args.config, batch, BF16 + overrides)
        seconds, times = median_step_seconds(ours.run_step, args.steps)
        runs.append({"name": name, "seconds": seconds, "all": times, "compile_s": ours.compile_s, "xla_flops": ours.xla_flops,
                         "memory": ours.memory})
        print(runs[-1], flush=True)
        if name == FULL:
            memory["no remat"] = ours.memory
        del ours
        report()
    for name, overrides in (("remat", ["model.remat=True"]), ("remat + scan_layers", ["model.remat=True", "model.scan_layers=True"])):
        memory[name] = Ours(args.config, batch, BF16 + overrides).memory  # compiled, not run
        report()
    print_tables(report())


if __name__ == "__main__":
    main()
