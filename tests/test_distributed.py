"""Several processes for real: `tvr-jax train|eval|export --distributed` launched as 2 and 4
processes on this machine, each with its own fake CPU devices, coordinated over loopback (JAX's
multi-process runtime, gloo collectives), against the same command in one process with as many
devices.

Each process reads only its rows of every global batch; the logged losses, the final parameters,
the evaluation metrics and the exported index must equal the single-process run's (the equality
the 8-fake-device tests show inside one process, here across processes).
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from trees import assert_trees_close
from tvr_jax import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 8  # in all, whatever the number of processes
STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(processes: int, args: list[str], devices: int = DEVICES, timeout: int = 600, command: str = "train") -> None:
    """`tvr-jax COMMAND` in `processes` processes of devices / processes fake CPU devices each; every
    process must exit 0 (their output is shown when one does not)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices // processes}"}
    command = [sys.executable, "-m", "tvr_jax.cli", command, *args]
    if processes > 1:
        command += ["--distributed", "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", str(processes)]
    procs = [subprocess.Popen(command + (["--process-id", str(i)] if processes > 1 else []), cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(processes)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            p.kill()
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} of {processes} exited {p.returncode}:\n{out[-4000:]}"


def _losses(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, tiny_config, synthetic_data):
    workdir = str(tmp_path_factory.mktemp("one_process"))
    _launch(1, _args(tiny_config, synthetic_data, workdir))
    return workdir


def _args(tiny_config, data, workdir: str, *overrides: str) -> list[str]:
    # A checkpoint every 2 steps: the resume tests restart from step 2.
    return tiny_config.args(f"data_dir='{data}'", f"total_steps={STEPS}", "checkpoint_every=2", *overrides) + ["--workdir", workdir]


@pytest.mark.parametrize("processes", [2, 4])
def test_distributed_train_equals_one_process(tmp_path, tiny_config, synthetic_data, single_process, processes):
    workdir = str(tmp_path / f"{processes}_processes")
    _launch(processes, _args(tiny_config, synthetic_data, workdir))
    ours, reference = _losses(workdir), _losses(single_process)
    _assert_same_run(ours, reference, rtol=2e-5)
    # The checkpoint all processes wrote restores in this one process, equal to the reference's.
    _assert_same_params(tiny_config(f"data_dir='{synthetic_data}'"), workdir, single_process)


@pytest.mark.parametrize("first, then", [
    (None, (2, 4, "(-1, 1)")),         # 8 devices -> 2 processes of 2 devices
    (None, (4, 8, "(-1, 2)")),         # replicated parameters -> 4 processes with FSDP
    ((1, 4, "(-1, 1)"), (2, 8, "(-1, 1)")),  # 4 devices, one process -> 8 devices, 2 processes
], ids=["8 to 4 devices", "to FSDP", "4 to 8 devices"])
def test_resume_on_another_process_and_device_count(tmp_path, tiny_config, synthetic_data, single_process, first, then):
    """A step-2 checkpoint resumed by other processes on another device count or parameter layout
    continues as the uninterrupted run: same input position, same losses, same final parameters.
    What must stay equal is the global batch (and the config); devices, processes and mesh may
    change. `first` None: the one-process 8-device run's checkpoint; else (processes, devices, mesh)
    of a run made for the test."""
    workdir = str(tmp_path / "resumed")
    if first is None:
        shutil.copytree(single_process, workdir)
    else:
        processes, devices, mesh = first
        _launch(processes, _args(tiny_config, synthetic_data, workdir, f"mesh_shape={mesh}"), devices=devices)
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(STEPS)))  # as if killed after step 2's checkpoint
    processes, devices, mesh = then
    _launch(processes, _args(tiny_config, synthetic_data, workdir, f"mesh_shape={mesh}"), devices=devices)
    _assert_same_run(_losses(workdir), _losses(single_process), rtol=1e-4)
    _assert_same_params(tiny_config(f"data_dir='{synthetic_data}'"), workdir, single_process)


@pytest.mark.parametrize("processes", [2, 4])
def test_distributed_eval_and_export_equal_one_process(tmp_path, tiny_config, synthetic_data, single_process, processes):
    """`tvr-jax eval` and `tvr-jax export` over several processes, each encoding its rows of every
    batch and scoring its rows of the similarity matrix: the same metrics and the same index as
    one process (process 0 writes them; every process returns once they exist)."""
    args = tiny_config.args(f"data_dir='{synthetic_data}'")
    outputs = {}
    for n in (1, processes):
        workdir = str(tmp_path / f"run_{n}")
        shutil.copytree(single_process, workdir)
        _launch(n, args + ["--workdir", workdir], command="eval")
        _launch(n, args + ["--workdir", workdir, "--split", "test", "--out", str(tmp_path / f"index_{n}")], command="export")
        outputs[n] = workdir, str(tmp_path / f"index_{n}")
    (one_run, one_index), (run, index) = outputs[1], outputs[processes]
    with open(os.path.join(one_run, "eval", "metrics.json")) as f:
        expected = json.load(f)
    with open(os.path.join(run, "eval", "metrics.json")) as f:
        assert json.load(f) == expected
    assert expected["counts"]["videos"] == 120  # the whole test split, not one process's share
    for name in ("metrics.md", "metrics.csv", "recall_at_k.png", "gallery.html"):
        assert os.path.getsize(os.path.join(run, "eval", name)) > 0
    assert sorted(os.listdir(os.path.join(run, "eval", "thumbs"))) == sorted(os.listdir(os.path.join(one_run, "eval", "thumbs")))
    manifests = []
    for folder in (one_index, index):
        with open(os.path.join(folder, "manifest.json")) as f:
            manifests.append(json.load(f))
        manifests[-1]["run"].pop("workdir")
    assert manifests[0] == manifests[1]
    files = lambda root: sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    assert files(index) == files(one_index)
    for name in files(one_index):
        if name.endswith(".json"):
            with open(os.path.join(index, name)) as a, open(os.path.join(one_index, name)) as b:
                assert name == "manifest.json" or json.load(a) == json.load(b), name
        elif not name.endswith(".npy"):  # the first stage's file and thumbnails: present on both
            continue
        else:
            np.testing.assert_allclose(np.load(os.path.join(index, name)).astype(np.float32),
                                       np.load(os.path.join(one_index, name)).astype(np.float32),
                                       rtol=1e-3, atol=1e-3, err_msg=name)


def _assert_same_run(ours: list[dict], reference: list[dict], rtol: float) -> None:
    assert [m["step"] for m in ours] == [m["step"] for m in reference] == list(range(1, STEPS + 1))  # one writer
    for a, b in zip(ours, reference):
        for key in ("loss", "dmae", "tpm", "grad_norm", "t2v_num_hard"):
            np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=1e-6, err_msg=f"step {a['step']} {key}")


def _assert_same_params(cfg, workdir: str, reference: str) -> None:
    """Every leaf to 1e-4 of its largest entry (measured: within 3e-5). Key biases start at zero and
    are moved by Adam on gradients of pure rounding noise, which differs with the process count and
    the CPU: measured up to 1.4e-6 in either run, against the 2e-3 that real gradients moved the
    other biases in these steps; they need only stay at that noise level."""
    params = jax.device_get(experiment.restore_params(cfg, workdir)[1])
    expected = jax.device_get(experiment.restore_params(cfg, reference)[1])
    assert_trees_close(params, expected, 1e-4, key_bias_atol=1e-4)


# The victim process of the test below: `tvr-jax train` that kills itself (SIGKILL, no cleanup)
# right after its step-2 checkpoint is committed, as a host lost mid-run.
_DIES_AFTER_STEP_2 = """
import os, signal, sys
from tvr_jax import cli, train
save = train.save_checkpoint
def save_then_die(manager, state, *args, **kwargs):
    save(manager, state, *args, **kwargs)
    if int(state.step) == 2:
        manager.wait_until_finished()
        os.kill(os.getpid(), signal.SIGKILL)
train.save_checkpoint = save_then_die
sys.argv = ["tvr-jax", *sys.argv[1:]]
cli.run()
"""


def test_a_dead_process_stops_the_others_and_a_rerun_resumes(tmp_path, tiny_config, synthetic_data, single_process):
    """Process 1 dies after step 2's checkpoint; process 0, waiting for it in step 3's
    collectives, aborts within the heartbeat timeout naming the dead task instead of hanging.
    The same command rerun on both resumes from step 2 and ends as the uninterrupted run."""
    import time

    workdir = str(tmp_path / "run")
    timeout_s = 10
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    command = ["train", *_args(tiny_config, synthetic_data, workdir), "--distributed", "--coordinator",
               f"127.0.0.1:{_free_port()}", "--num-processes", "2", "--heartbeat-timeout", str(timeout_s)]
    survivor = subprocess.Popen([sys.executable, "-m", "tvr_jax.cli", *command, "--process-id", "0"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = subprocess.Popen([sys.executable, "-c", _DIES_AFTER_STEP_2, *command, "--process-id", "1"], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        victim_out = victim.communicate(timeout=600)[0]
        died = time.monotonic()
        out = survivor.communicate(timeout=timeout_s + 120)[0]
        waited = time.monotonic() - died
    finally:
        survivor.kill()
        victim.kill()
    assert victim.returncode == -9, victim_out[-3000:]
    assert survivor.returncode != 0 and "stopped sending heartbeats" in out, out[-3000:]
    assert waited < timeout_s + 60, f"the survivor took {waited:.0f} s to stop"
    _launch(2, _args(tiny_config, synthetic_data, workdir), devices=8)  # the same command on both again
    _assert_same_run(_losses(workdir), _losses(single_process), rtol=2e-5)
    _assert_same_params(tiny_config(f"data_dir='{synthetic_data}'"), workdir, single_process)


def test_launch_flags_are_checked_before_anything_starts(tiny_config, tmp_path, capsys):
    from tvr_jax import cli, sharding

    with pytest.raises(ValueError, match="go together"):
        sharding.initialize_distributed("127.0.0.1:1234", None, None)
    with pytest.raises(ValueError, match=r"--process-id 2 must be in 0..1"):
        sharding.initialize_distributed("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="must be >= 1 second"):
        sharding.initialize_distributed("127.0.0.1:1234", 2, 0, heartbeat_timeout_s=0)
    # The ablation runs its variants in one process: --distributed is not its flag.
    with pytest.raises(SystemExit) as exit:
        cli.main(["ablate", "--distributed", "--workdir", str(tmp_path)] + tiny_config.args())
    assert exit.value.code == 2 and "unrecognised arguments: --distributed" in capsys.readouterr().err
