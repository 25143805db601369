"""One real run through the command line: prepare the synthetic set, train two steps on all 8
fake devices, resume, evaluate, and read the report."""

import json
import os

from data_pipeline import prepare
from tvr_jax import cli

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic.py")


def test_prepare_train_resume_eval(tmp_path, capsys):
    data = str(tmp_path / "data")
    prepare.prepare("synthetic", data, progress=False)
    work = str(tmp_path / "run")
    tiny = [f"--config.data_dir={data}", "--config.global_batch_size=8", "--config.model.max_frames=4",
            "--config.model.temporal_layers=1", "--config.log_every=1", "--config.checkpoint_every=2",
            "--config.eval.batch_size=8"]
    assert cli.main(["train", "--config", CONFIG, "--workdir", work, "--config.total_steps=2"] + tiny) == 0
    # The same command with more steps resumes from step 2.
    assert cli.main(["train", "--config", CONFIG, "--workdir", work, "--config.total_steps=3"] + tiny) == 0
    with open(os.path.join(work, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3]
    assert cli.main(["eval", "--config", CONFIG, "--workdir", work, "--config.total_steps=3"] + tiny) == 0
    with open(os.path.join(work, "eval", "metrics.json")) as f:
        report = json.load(f)
    assert report["counts"]["captions"] == report["counts"]["videos"] == 100
    assert report["checkpoint"]["step"] == 3
    assert 0.0 <= report["t2v"]["R@1"] <= 100.0 and report["t2v"]["MnR"] >= 1.0
    assert "| raw |" in capsys.readouterr().out
    # A bad override is refused with the field's name.
    assert cli.main(["train", "--config", CONFIG, "--workdir", work, "--config.model.temporal=lstm"] + tiny) == 2
    assert "temporal='lstm'" in capsys.readouterr().err
