#!/usr/bin/env bash
# One short run on a lent GPU (under 5 minutes): the ViT-B/32 train step in bfloat16, clips/s and
# MFU against the GPU's measured bf16 matmul peak, our step against the PyTorch peer, and compiled
# memory with and without remat. Needs jax with CUDA, flax, optax, orbax, torch and transformers;
# ml_collections is installed from .whl/ when that folder is there (a machine with no registry).
#
#   bash benchmarks/gpu_check.sh [--batch 128] [--steps 10]
# Results: benchmarks/results/gpu_check.json, or $OUT/gpu_check.json when OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python3 -c "import ml_collections" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tvr_site .whl/*.whl
  export PYTHONPATH="/tmp/tvr_site:${PYTHONPATH:-}"
fi
missing=$(python3 -c 'import importlib.util as u; print(" ".join(n for n in ("jax", "flax", "optax", "ml_collections", "torch", "transformers") if u.find_spec(n) is None))')
if [ -n "$missing" ]; then
  echo "gpu_check: missing Python packages: $missing. pip install them; on a machine without a registry, download" \
       "their wheels here first (pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl $missing)" \
       "and carry .whl/ along" >&2
  exit 2
fi
# No preallocation: the PyTorch peer shares the GPU in the same process.
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
out="${OUT:-benchmarks/results}/gpu_check.json"
timeout 290 python3 benchmarks/gpu_check.py --out "$out" "$@"
