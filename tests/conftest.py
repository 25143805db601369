"""Test set-up: 8 fake CPU devices, so sharded code is tested against single-device code.

XLA reads the flag when jax first initialises its backends, so it must be set before any
test module imports jax.
"""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TensorFlow (data pipeline) must not grab all cores' threads or print GPU warnings.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# Many tests compile the same tiny programs (a train run restarted, the same step on several
# meshes): a per-session persistent compilation cache turns repeats into cache hits.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

_cache_dir = tempfile.mkdtemp(prefix="tvr-jax-xla-cache-")
atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _cache_dir)

# Interpreter shutdown after the session can deadlock: deleting a tf.data iterator whose worker
# threads wait for the GIL inside `tf.numpy_function` (the main thread holds the GIL while the
# C++ destructor waits for them). Once pytest has printed its summary, leave without finalising.
_session = {}


def pytest_sessionfinish(session, exitstatus):
    _session["status"] = int(exitstatus)


def pytest_unconfigure(config):
    if "status" in _session:
        shutil.rmtree(_cache_dir, ignore_errors=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_session["status"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


import pytest  # noqa: E402

# The synthetic set prepared once for every test that trains on it through the CLI, and the
# overrides that shrink the demo config to test size.
SYNTHETIC_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic.py")


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    from data_pipeline import prepare

    out = str(tmp_path_factory.mktemp("prepared_synthetic"))
    prepare.prepare("synthetic", out, progress=False)
    return out


def tiny_synthetic_overrides(data_dir: str) -> list[str]:
    return [f"--config.data_dir={data_dir}", "--config.global_batch_size=8", "--config.model.max_frames=4",
            "--config.model.temporal_layers=1", "--config.log_every=1", "--config.eval.batch_size=8"]
