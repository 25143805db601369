"""Test set-up: 8 fake CPU devices, so sharded code is tested against single-device code.

XLA reads the flag when jax first initialises its backends, so it must be set before any
test module imports jax.
"""
import os

os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TensorFlow (data pipeline) must not grab all cores' threads or print GPU warnings.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
