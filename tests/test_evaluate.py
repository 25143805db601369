"""Sharded whole-test-set scoring equals single-device scoring; the report's layout."""

import json

import jax
import numpy as np
import pytest

from tvr_jax import evaluate, sharding
from tvr_jax.objective import LossConfig, similarity_matrix


def _features(n_texts=13, n_videos=11, L=6, T=5, D=8, seed=0):
    rng = np.random.default_rng(seed)
    norm = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    word_mask = np.arange(L)[None] < rng.integers(1, L + 1, n_texts)[:, None]
    texts = dict(t_cls=norm(rng.normal(size=(n_texts, D))), words=norm(rng.normal(size=(n_texts, L, D))),
                 word_mask=word_mask, word_weights=(rng.integers(1, 3, (n_texts, L)) * word_mask).astype(np.float32),
                 word_logits=rng.normal(size=(n_texts, L)).astype(np.float32))
    videos = dict(frames=norm(rng.normal(size=(n_videos, T, D))),
                  frame_mask=np.arange(T)[None] < rng.integers(1, T + 1, n_videos)[:, None],
                  frame_logits=rng.normal(size=(n_videos, T)).astype(np.float32))
    return texts, videos


@pytest.mark.parametrize("interaction", ["att_ti", "wti"])
@pytest.mark.parametrize("devices", [1, 8])
def test_sharded_scoring_equals_single_device(interaction, devices):
    texts, videos = _features()
    cfg = LossConfig(block_size=4)
    mesh = sharding.make_mesh((devices, 1), jax.devices()[:devices])
    sim = evaluate.score(texts, videos, interaction, cfg, mesh)
    ref = np.asarray(similarity_matrix(texts, videos, interaction, cfg))
    assert sim.shape == (13, 11)
    np.testing.assert_allclose(sim, ref, rtol=1e-6, atol=1e-6)


def test_report_layout(tmp_path):
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(6, 3)) + np.repeat(np.eye(3), 2, axis=0)
    caption_video = np.repeat(np.arange(3), 2)
    report = evaluate.retrieval_report(sim, caption_video)
    assert set(report) == {"t2v", "v2t", "counts", "dsl"}
    assert set(report["t2v"]) == {"R@1", "R@5", "R@10", "MdR", "MnR"}
    evaluate.write_report(report, str(tmp_path), "test split")
    assert json.loads((tmp_path / "metrics.json").read_text())["t2v"] == report["t2v"]
    table = (tmp_path / "metrics.md").read_text()
    assert "| raw |" in table and "DSL (test-time trick)" in table
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "variant,direction,R@1,R@5,R@10,MdR,MnR"


def test_recall_curve_agrees_with_metrics_and_png(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    sim = rng.normal(size=(30, 12)) + 1.5 * np.repeat(np.eye(12), [3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2], axis=0)
    caption_video = np.repeat(np.arange(12), [3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2])
    curve = evaluate.recall_curve(sim, caption_video)
    report = evaluate.retrieval_report(sim, caption_video)
    for k in (1, 5, 10):
        assert curve["t2v"][k - 1] == report["t2v"][f"R@{k}"] and curve["v2t"][k - 1] == report["v2t"][f"R@{k}"]
    assert curve["K"][-1] == 12 and curve["t2v"][-1] == 100.0
    evaluate.write_recall_curve(sim, caption_video, str(tmp_path / "r.png"))
    assert Image.open(tmp_path / "r.png").size == (640, 400)


def test_select_checkpoint_reads_the_training_record(tmp_path, monkeypatch):
    """The best validation score saved with the checkpoints (ties to the later step), never
    re-scored; the last checkpoint without a record or when 'val' is the evaluated split."""
    from configs.base import base_config

    record = {10: {"val_score": 5.0}, 20: {"val_score": 9.0}, 30: {"val_score": 9.0}, 40: None}

    class Manager:
        def all_steps(self):
            return list(record)

        def metrics(self, step):
            return record[step]

        def close(self):
            pass

    monkeypatch.setattr(evaluate, "checkpoint_manager", lambda workdir, keep: Manager())
    monkeypatch.setattr(evaluate, "restore_params", lambda *a: pytest.fail("selection re-scores nothing"))
    cfg = base_config()
    step, why = evaluate.select_checkpoint(cfg, str(tmp_path))
    assert step == 30 and "step 20: 9.00" in why and "newest checkpoint: step 40" in why
    assert "docs/method.md section 5.2" in why
    cfg.eval.split = "val"
    assert evaluate.select_checkpoint(cfg, str(tmp_path))[0] == 40
    cfg.eval.split = "test"
    record.update({10: None, 20: None, 30: None})
    assert evaluate.select_checkpoint(cfg, str(tmp_path)) == (40, "last checkpoint (no validation recorded during training)")
