#!/usr/bin/env bash
# A short check of your GPU (under 5 minutes): the ViT-B/32 train step in bfloat16, clips/s and
# MFU against the GPU's measured bf16 matmul peak, our step against the PyTorch peer, and
# compiled memory with and without remat. Needs jax with CUDA, flax, optax, orbax,
# ml_collections, torch and transformers (`pip install -e '.[test]'` plus jax's CUDA build).
#
#   bash benchmarks/gpu_check.sh [--out-dir DIR] [--batch 128] [--steps 10]
# Results: DIR/gpu_check.json. DIR: --out-dir, else $TVR_RESULTS_DIR, else benchmarks/results
# (where `python -m benchmarks.report` reads them for BENCHMARKS.md).
set -euo pipefail
out_dir="${TVR_RESULTS_DIR:-}"
if [ "${1:-}" = "--out-dir" ]; then
  out_dir="${2:?--out-dir needs a directory}"
  shift 2
fi
if [ -n "$out_dir" ]; then  # resolved before changing directory, so a relative DIR means the caller's
  mkdir -p "$out_dir"
  out_dir="$(cd "$out_dir" && pwd)"
fi
cd "$(dirname "$0")/.."
out_dir="${out_dir:-benchmarks/results}"
missing=$(python3 -c 'import importlib.util as u; print(" ".join(n for n in ("jax", "flax", "optax", "ml_collections", "torch", "transformers") if u.find_spec(n) is None))')
if [ -n "$missing" ]; then
  echo "gpu_check: missing Python packages: $missing. Install them: pip install -e '.[test]', and jax's" \
       "CUDA build (JAX's installation guide, e.g. pip install -U 'jax[cuda12]')" >&2
  exit 2
fi
# No preallocation: the PyTorch peer shares the GPU in the same process.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
timeout 290 python3 -m benchmarks.gpu_check --out "$out_dir/gpu_check.json" "$@"
