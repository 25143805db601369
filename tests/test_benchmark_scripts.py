"""The benchmark harness and the GPU check run end to end on the CPU, so that a run on a GPU does
not stop at a script error."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from benchmarks.side_by_side import Worker, alternate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker_module(tmp_path, monkeypatch, body: str) -> str:
    """A worker module written to tmp_path (on the workers' PYTHONPATH); its name, for `Worker`."""
    (tmp_path / "toy_worker.py").write_text(textwrap.dedent(f"""
        import sys
        from benchmarks.side_by_side import serve
        side = sys.argv[2]
        {body}
    """))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "toy_worker"


def test_workers_answer_run_and_time_and_alternate(tmp_path, monkeypatch):
    module = _worker_module(tmp_path, monkeypatch, """
        calls = []
        serve({"count": lambda: calls.append(1) or len(calls), "side": lambda: side}, {"ready": side})
    """)
    with Worker(module, "a", []) as a, Worker(module, "b", []) as b:
        assert a.ready == {"ready": "a"} and b.ask("run side") == "b"
        assert a.ask("run count") == 1
        assert a.ask("time count") >= 0 and a.ask("run count") == 4  # `time` runs the job twice
        times = alternate([a, b], ["count", "side"], rounds=2, warmup=1)
    assert set(times) == {"count", "side"} and all(len(t) == 2 for job in times.values() for t in job.values())
    assert a.proc.returncode == 0 and b.proc.returncode == 0


def test_a_worker_that_dies_is_named(tmp_path, monkeypatch):
    module = _worker_module(tmp_path, monkeypatch, "raise SystemExit(3)")
    with pytest.raises(RuntimeError, match="worker 'x' exited with 3"):
        Worker(module, "x", [])


def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    """Every stage of benchmarks/gpu_check.py at the tiny config: peak, peer, our two steps, compiled memory."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--config", "configs/msrvtt_vit_b32.py:tiny",
                    "--batch", "4", "--steps", "1", "--out", str(out)], cwd=ROOT, check=True, timeout=600)
    result = json.loads(out.read_text())
    assert [r["name"].split(":")[0] for r in result["runs"]] == ["PyTorch peer", "ours", "ours"]
    assert all(r["seconds"] > 0 for r in result["runs"])
    assert set(result["memory"]) == {"no remat", "remat", "remat + scan_layers"}
    assert [t["title"].split(" ")[0] for t in result["tables"]] == ["Train", "Compiled"]
    assert result["meta"]["backend"] == "cpu"


def _run_gpu_check_sh(tmp_path, *args, env=None):
    """benchmarks/gpu_check.sh with a stand-in `python3` that records how benchmarks.gpu_check was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python3"
    fake.write_text('#!/bin/sh\nif [ "$1" = "-c" ]; then echo; else echo "$@" > "$ARGS_FILE"; fi\n')
    fake.chmod(0o755)
    args_file = tmp_path / "args.txt"
    run_env = {k: v for k, v in os.environ.items() if k != "TVR_RESULTS_DIR"}
    run_env.update(env or {}, PATH=f"{bin_dir}:{os.environ['PATH']}", ARGS_FILE=str(args_file))
    subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), *args], cwd=tmp_path, env=run_env,
                   check=True, timeout=60, capture_output=True)
    return args_file.read_text().split()


def test_gpu_check_sh_writes_where_it_is_told(tmp_path):
    """Default benchmarks/results; --out-dir (relative to the caller) or TVR_RESULTS_DIR otherwise; other
    arguments pass through to benchmarks.gpu_check."""
    args = _run_gpu_check_sh(tmp_path, "--batch", "8")
    assert args == ["-m", "benchmarks.gpu_check", "--out", "benchmarks/results/gpu_check.json", "--batch", "8"]
    here = tmp_path.resolve()
    args = _run_gpu_check_sh(tmp_path, "--out-dir", "mine", "--steps", "2")
    assert args[2:] == ["--out", str(here / "mine" / "gpu_check.json"), "--steps", "2"]
    args = _run_gpu_check_sh(tmp_path, env={"TVR_RESULTS_DIR": str(here / "env")})
    assert args[2:] == ["--out", str(here / "env" / "gpu_check.json")]


def test_eval_step_runs_end_to_end_and_both_sides_agree(tmp_path):
    """benchmarks/eval_step.py at the tiny config: both workers, the parity check (600 texts: past
    row 512, several video blocks), the timed rounds and the tables."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path / "eval_step.json"
    subprocess.run([sys.executable, "-m", "benchmarks.eval_step", "--config", "configs/msrvtt_vit_b32.py:tiny",
                    "--score-n", "600", "--rounds", "1", "--warmup", "0", "--out", str(out)], cwd=ROOT, check=True,
                   timeout=600)
    result = json.loads(out.read_text())
    assert set(result["times"]) == {"encode_videos", "encode_captions", "score"}
    assert all(len(t) == 1 for sides in result["times"].values() for t in sides.values())
    assert max(result["parity"][k] for k in ("frames", "t_cls", "words")) < 1e-5
    assert result["parity"]["S_fraction_over_1e-5"] < 1e-3
    # The whole-evaluation estimate needs the test set's size; a smoke run leaves it out.
    assert [t["title"].split(" ")[0] for t in result["tables"]] == ["Evaluation", "Largest"]


def test_eval_step_parity_stops_on_a_wrong_block(tmp_path):
    from benchmarks.eval_step import parity

    rng = np.random.default_rng(0)
    outputs = {k: rng.normal(size=(4, 3)).astype(np.float32) for k in ("frames", "t_cls", "words")}
    outputs["word_mask"], outputs["S"] = np.ones((4, 3), bool), rng.normal(size=(1000, 1000)).astype(np.float32)
    np.savez(tmp_path / "ours.npz", **outputs)
    near = dict(outputs, S=outputs["S"] + 1e-7)
    near["S"][0, 0] += 5e-5  # one flipped near-tie: allowed
    np.savez(tmp_path / "PyTorch.npz", **near)
    paths = {side: str(tmp_path / f"{side}.npz") for side in ("ours", "PyTorch")}
    assert parity(paths)["S"] == pytest.approx(5e-5, rel=0.01)
    wrong = dict(outputs, S=outputs["S"].copy())
    wrong["S"][512:, :64] += 1e-4  # a block of rows off by a little: too many entries
    np.savez(tmp_path / "PyTorch.npz", **wrong)
    with pytest.raises(SystemExit, match="different features or scores"):
        parity(paths)
    np.savez(tmp_path / "PyTorch.npz", **dict(outputs, frames=outputs["frames"] + 1e-4))
    with pytest.raises(SystemExit, match="different features or scores"):
        parity(paths)


def test_profile_breakdown_names_the_products_of_a_traced_program(tmp_path):
    """The profiler's thunks join the compiled program's HLO: a product and an elementwise loop,
    each under its kind, dtype and pass; nothing unrecognised."""
    import jax
    import jax.numpy as jnp

    from benchmarks.profile_step import traced_breakdown

    x = jnp.ones((256, 256), jnp.float32)
    f = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w) ** 2)))
    compiled = f.lower(x, x).compile()
    compiled(x, x).block_until_ready()
    result = traced_breakdown(lambda: compiled(x, x).block_until_ready(), compiled, str(tmp_path))
    assert result["per_op_us"], "no operation recorded"
    assert set(result["per_op_us"]) <= set(result["ops"]), "thunks that are not operations of the program"
    kinds = set(result["by_kind_us"])
    assert any(k.startswith("product") and ", f32," in k for k in kinds), kinds
    assert any("backward" in k for k in kinds) and any("forward" in k for k in kinds), kinds


def test_vector_bound_reads_lanes_and_clock(tmp_path):
    from benchmarks.flops import FMA_UNITS, vector_bound

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2600.000\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                       "processor\t: 1\ncpu MHz\t\t: 2400.000\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    cores = len(os.sched_getaffinity(0))
    f32, bf16 = vector_bound("float32", str(cpuinfo)), vector_bound("bfloat16", str(cpuinfo))
    assert (f32["lanes"], bf16["lanes"], f32["ghz"]) == (16, 32, 2.6)
    assert f32["flops"] == pytest.approx(cores * 16 * 2 * FMA_UNITS * 2.6e9)
    assert bf16["flops"] == pytest.approx(2 * f32["flops"])
    cpuinfo.write_text("cpu MHz\t\t: 3000.000\nflags\t\t: fpu avx2\n")
    assert vector_bound("bfloat16", str(cpuinfo))["lanes"] == 8  # no bf16 instruction: widened to float32
