"""`tvr_jax.xla_workarounds`: the flags reach XLA_FLAGS, a user's own setting wins, a late import warns."""
import os
import warnings

import pytest
from jax._src import xla_bridge

from tvr_jax import xla_workarounds

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"


def test_importing_tvr_jax_set_the_flags_for_this_process():
    for name, value in xla_workarounds.FLAGS.items():
        assert f"--{name}={value}" in os.environ["XLA_FLAGS"]


@pytest.mark.parametrize("before,after", [
    ("", FLAG),
    ("--xla_force_host_platform_device_count=8", "--xla_force_host_platform_device_count=8 " + FLAG),
    ("--xla_cpu_experimental_ynn_fusion_type=", "--xla_cpu_experimental_ynn_fusion_type="),  # the user's choice
])
def test_apply_adds_what_the_user_has_not_set(monkeypatch, before, after):
    monkeypatch.setenv("XLA_FLAGS", before)
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xla_workarounds.apply()
    assert os.environ["XLA_FLAGS"] == after


def test_apply_after_jax_started_warns_with_the_fix(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
    with pytest.warns(UserWarning, match="Import tvr_jax before running any jax computation"):
        xla_workarounds.apply()
