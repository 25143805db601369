"""`tvr-jax ablate` trains and evaluates every variant of `tvr_jax.ablation.VARIANTS` for real (one
step each, tiny shapes) and writes one table whose rows say what each variant computes."""

import ast
import json
import os

import pytest

from data_pipeline import prepare
from tvr_jax import ablation, cli

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prepared"))
    prepare.prepare("synthetic", out, progress=False)
    return out


def test_ablate_runs_every_variant(data, tmp_path, capsys):
    work = str(tmp_path / "ablation")
    tiny = [f"--config.data_dir={data}", "--config.global_batch_size=8", "--config.model.max_frames=4",
            "--config.model.temporal_layers=1", "--config.total_steps=1", "--config.log_every=1",
            "--config.checkpoint_every=1", "--config.eval.batch_size=8"]
    assert cli.main(["ablate", "--config", CONFIG, "--workdir", work, "--seeds", "0"] + tiny) == 0
    with open(os.path.join(work, "ablation.json")) as f:
        record = json.load(f)
    assert list(record["results"]) == list(ablation.VARIANTS)
    assert record["labels"] == ablation.LABELS and record["variants"] == ablation.VARIANTS
    for name, by_seed in record["results"].items():
        report = by_seed["0"]
        assert report["checkpoint"]["step"] == 1, name
        assert 0.0 <= report["t2v"]["R@1"] <= 100.0 and 0.0 <= report["v2t"]["R@1"] <= 100.0, name
        # Each run trained what its row says: its overrides are in the run's saved config.
        with open(os.path.join(work, ablation.slug(name), "seed0", "config.json")) as f:
            saved = json.load(f)
        final = dict(item.split("=", 1) for item in ablation.VARIANTS[name])  # the last override wins
        for field, value in final.items():
            node = saved
            for key in field.split("."):
                node = node[key]
            assert node == ast.literal_eval(value), (name, field)
    table = capsys.readouterr().out
    for label in ablation.LABELS.values():
        assert label.replace("*", r"\*") in table
    # A finished ablation is read back, not retrained: the same command is quick and gives the same table.
    assert cli.main(["ablate", "--config", CONFIG, "--workdir", work, "--seeds", "0"] + tiny) == 0
    assert capsys.readouterr().out == table
