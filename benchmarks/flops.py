"""FLOPs of the CLIP towers counted by hand, the same counted off a jaxpr, and a measured matmul peak.

Model FLOPs (as in MFU) count matrix products only, 2 per multiply-add, without rematerialised
recomputation. A training step does the forward products once and, for each, the two backward
products (gradient of the input and of the weight) of the same size, except the gradient of the
pixels, which nothing needs: step = 3 x forward - the patch embedding's forward.
"""

from __future__ import annotations

import math
import time

import numpy as np

from tvr_jax.models.clip import CLIPConfig


def transformer_flops(tokens: int, width: int, mlp: int, layers: int) -> int:
    """Forward FLOPs of `layers` pre-LN blocks on one sequence of `tokens` tokens."""
    projections = 2 * tokens * width * width * 4  # q, k, v, out
    attention = 2 * tokens * tokens * width * 2  # q k^T and probs v, over all heads
    mlp_ = 2 * tokens * width * mlp * 2
    return layers * (projections + attention + mlp_)


def image_tower_flops(c: CLIPConfig) -> dict:
    """Forward FLOPs per image: patch embedding, blocks, projection of every token (as our tower does)."""
    patches = c.grid_size**2
    tokens = patches + 1
    parts = {"patch_embedding": 2 * patches * 3 * c.patch_size**2 * c.vision_width,
                 "blocks": transformer_flops(tokens, c.vision_width, c.vision_mlp_dim, c.vision_layers),
                 "projection": 2 * tokens * c.vision_width * c.embed_dim}
    return dict(parts, total=sum(parts.values()))


def text_tower_flops(c: CLIPConfig, words: int) -> dict:
    """Forward FLOPs per caption of `words` tokens (the embedding is a gather: no FLOPs)."""
    parts = {"blocks": transformer_flops(words, c.text_width, c.text_mlp_dim, c.text_layers),
                 "projection": 2 * words * c.text_width * c.embed_dim}
    return dict(parts, total=sum(parts.values()))


def meanp_step_flops(c: CLIPConfig, batch: int, frames: int, words: int) -> dict:
    """Model FLOPs of one meanP + InfoNCE training step (forward + backward) on `batch` clips."""
    image, text = image_tower_flops(c), text_tower_flops(c, words)
    image_step = batch * frames * (3 * image["total"] - image["patch_embedding"])
    text_step = batch * 3 * text["total"]
    # Mean pooling of frames is a (B, T) x (B, T, D) product: forward and the frames' gradient.
    pooling_and_similarity = 2 * 2 * batch * frames * c.embed_dim + 3 * 2 * batch * batch * c.embed_dim
    return {"image_tower": image_step, "text_tower": text_step, "pooling_and_similarity": pooling_and_similarity,
                "total": image_step + text_step + pooling_and_similarity}


# -- the same count read off a program ---------------------------------------------------------
def jaxpr_matmul_flops(jaxpr) -> int:
    """2 x multiply-adds of every dot_general and convolution in a (closed) jaxpr, sub-jaxprs
    included (a scan's body counts `length` times)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature dim, in feature dim, spatial...)
            per_output = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * per_output
        repeat = eqn.params.get("length", 1) if name == "scan" else 1
        for sub in _sub_jaxprs(eqn.params):
            total += repeat * jaxpr_matmul_flops(sub)
    return total


def _sub_jaxprs(params: dict):
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(v, "eqns") or hasattr(getattr(v, "jaxpr", None), "eqns"):
                yield v


# -- this machine's ceiling ---------------------------------------------------------------------
def measured_matmul_peak(dtype: str = "float32", sizes=(1024, 2048, 4096), repeats: int = 5) -> dict:
    """Best FLOP/s of a square matmul in `dtype`, through XLA (jax) and, if installed, PyTorch.

    The peak that MFU divides by: the best of both frameworks over a few sizes (the fastest of
    `repeats` products each, after one warm-up), so both are measured against the same number,
    with `vector_bound` beside it.
    """
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    results = {}
    dot = jax.jit(jnp.dot)
    for n in sizes:
        a, b = (jnp.asarray(rng.standard_normal((n, n)), dtype) for _ in range(2))
        results[f"jax_{n}"] = 2 * n**3 / _best_seconds(lambda a=a, b=b: dot(a, b).block_until_ready(), repeats)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and jax.default_backend() == "cpu":
        for n in sizes:
            a, b = (torch.from_numpy(rng.standard_normal((n, n))).to(getattr(torch, dtype)) for _ in range(2))
            results[f"torch_{n}"] = 2 * n**3 / _best_seconds(lambda a=a, b=b: a @ b, repeats)
    best = max(results, key=results.get)
    bound = vector_bound(dtype)
    # A VM's "cpu MHz" is often the base clock: the clock at which the measured peak would meet the bound.
    per_cycle = bound["cores"] * bound["lanes"] * 2 * bound["fma_units"]
    bound["implied_ghz"] = round(results[best] / per_cycle / 1e9, 2)
    return {"peak_flops": results[best], "best": best, "dtype": dtype, "all": {k: round(v / 1e9, 1) for k, v in results.items()},
            "bound": bound}


def _best_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(min(times))


FMA_UNITS = 2  # vector FMA pipes per core on recent x86 server cores (Zen 4/5, Sapphire Rapids): assumed


def vector_bound(dtype: str, cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The arithmetic limit of the cores this process may use: cores x lanes x 2 (multiply-add) x
    FMA_UNITS x clock. Lanes: vector width / 32 for float32; twice that for bfloat16 where the CPU
    has a bfloat16 dot-product instruction (avx512_bf16's VDPBF16PS), else float32's (bfloat16 is
    widened). The clock is /proc/cpuinfo's highest "cpu MHz", the current, not the boost, clock."""
    import os

    cores = len(os.sched_getaffinity(0))
    flags, mhz = set(), []
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    flags = set(value.split())
                elif key.strip() == "cpu MHz":
                    mhz.append(float(value))
    except OSError:
        pass
    bits = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
    lanes = bits // 32 * (2 if dtype == "bfloat16" and "avx512_bf16" in flags else 1)
    ghz = max(mhz) / 1000 if mhz else float("nan")
    return {"flops": cores * lanes * 2 * FMA_UNITS * ghz * 1e9, "cores": cores, "vector_bits": bits, "lanes": lanes,
            "fma_units": FMA_UNITS, "ghz": round(ghz, 3),
            "formula": f"{cores} cores x {lanes} {dtype} lanes ({bits}-bit) x 2 x {FMA_UNITS} FMA units x {ghz:.2f} GHz"}
