"""`tvr-jax ablate` trains and evaluates every variant of `tvr_jax.ablation.VARIANTS` for real (one
step each, tiny shapes) and writes one table whose rows say what each variant computes."""

import ast
import json
import os

import pytest

from tvr_jax import ablation, cli


def test_ablate_runs_every_variant(synthetic_data, tiny_config, tmp_path, capsys):
    work = str(tmp_path / "ablation")
    tiny = tiny_config.args(f"data_dir={synthetic_data}", "total_steps=1", "checkpoint_every=1")
    assert cli.main(["ablate", "--workdir", work, "--seeds", "0", "--variants", "all"] + tiny) == 0
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
    assert cli.main(["ablate", "--workdir", work, "--seeds", "0", "--variants", "all"] + tiny) == 0
    assert capsys.readouterr().out == table


def test_variant_groups():
    """`tvr-jax ablate` runs the paper's cumulative rows unless told otherwise; groups expand in order."""
    assert ablation.resolve_variants(None) == ablation.PAPER_ROWS
    assert ablation.PAPER_ROWS[0] == "baseline (cosine, InfoNCE)" and ablation.PAPER_ROWS[-1] == "+ TPM-CL type 4"
    assert ablation.PAPER_ROWS + ablation.BESIDE_ROWS == list(ablation.VARIANTS)
    assert ablation.resolve_variants(["beside", "+ NegNCE", "beside"]) == ablation.BESIDE_ROWS + ["+ NegNCE"]
    assert ablation.resolve_variants(["all"]) == list(ablation.VARIANTS)
    with pytest.raises(ValueError, match="no such row.*paper"):
        ablation.resolve_variants(["+ NegNCE", "no such row"])
