"""The benchmark harness and the GPU check run end to end here, so they work when a machine is lent."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)

from benchmarks.side_by_side import Worker, alternate


def _worker_script(tmp_path, body: str) -> str:
    path = tmp_path / "worker.py"
    path.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        from benchmarks.side_by_side import serve
        side = sys.argv[2]
        {body}
    """))
    return str(path)


def test_workers_answer_run_and_time_and_alternate(tmp_path):
    script = _worker_script(tmp_path, """
        calls = []
        serve({"count": lambda: calls.append(1) or len(calls), "side": lambda: side}, {"ready": side})
    """)
    with Worker(script, "a", []) as a, Worker(script, "b", []) as b:
        assert a.ready == {"ready": "a"} and b.ask("run side") == "b"
        assert a.ask("run count") == 1
        assert a.ask("time count") >= 0 and a.ask("run count") == 4  # `time` runs the job twice
        times = alternate([a, b], ["count", "side"], rounds=2, warmup=1)
    assert set(times) == {"count", "side"} and all(len(t) == 2 for job in times.values() for t in job.values())
    assert a.proc.returncode == 0 and b.proc.returncode == 0


def test_a_worker_that_dies_is_named(tmp_path):
    script = _worker_script(tmp_path, "raise SystemExit(3)")
    with pytest.raises(RuntimeError, match="worker 'x' exited with 3"):
        Worker(script, "x", [])


def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    """Every stage of benchmarks/gpu_check.py at the tiny config: peak, peer, our two steps, compiled memory."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--config", "configs/msrvtt_vit_b32.py:tiny",
                    "--batch", "4", "--steps", "1", "--out", str(out)], cwd=ROOT, check=True, timeout=600)
    result = json.loads(out.read_text())
    assert [r["name"].split(":")[0] for r in result["runs"]] == ["PyTorch peer", "ours", "ours"]
    assert all(r["seconds"] > 0 for r in result["runs"])
    assert set(result["memory"]) == {"no remat", "remat", "remat + scan_layers"}
    assert [t["title"].split(" ")[0] for t in result["tables"]] == ["Train", "Compiled"]
    assert result["meta"]["backend"] == "cpu"
