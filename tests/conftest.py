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
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

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


import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TinyConfig:
    """The demo config (configs/synthetic.py: the tiny CLIP from random initialisation) at test
    size: batches of 8, 4 frames, one temporal layer, a log line every step. A test's overrides
    are `field.sub=value` strings, as on the command line, applied after these (the last wins):

        tiny_config("total_steps=6")        # the ConfigDict (`config_io.load_config`)
        tiny_config.args("total_steps=6")   # the same for `tvr-jax`: --config PATH --config.FIELD=VALUE ...
    """

    path = os.path.join(ROOT, "configs", "synthetic.py")
    overrides = ("global_batch_size=8", "model.max_frames=4", "model.temporal_layers=1", "log_every=1",
                 "eval.batch_size=8")

    def __call__(self, *overrides: str):
        from tvr_jax.config_io import load_config

        return load_config(self.path, [*self.overrides, *overrides])

    def args(self, *overrides: str) -> list[str]:
        return ["--config", self.path] + [f"--config.{item}" for item in (*self.overrides, *overrides)]


@pytest.fixture(scope="session")
def tiny_config() -> TinyConfig:
    return TinyConfig()


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """The synthetic set, prepared once for every test that trains on it through the CLI."""
    from data_pipeline import prepare

    out = str(tmp_path_factory.mktemp("prepared_synthetic"))
    prepare.prepare("synthetic", out, progress=False)
    return out
