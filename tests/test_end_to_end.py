"""One real run through the command line: prepare the synthetic set, train two steps on all 8
fake devices, resume, evaluate, and read the report."""

import json
import os

import jax
import numpy as np
import pytest

from data_pipeline import prepare
from tvr_jax import cli, clip, metrics

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prepared"))
    prepare.prepare("synthetic", out, progress=False)
    return out


def test_prepare_train_resume_eval(data, tmp_path, capsys):
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
    gallery = open(os.path.join(work, "eval", "gallery.html")).read()
    assert gallery.count("<tr>") == 12 and "rank" in gallery
    for src in set(__import__("re").findall(r"src='(thumbs/\d+\.jpg)'", gallery)):
        assert os.path.isfile(os.path.join(work, "eval", src)), src
    assert os.path.getsize(os.path.join(work, "eval", "recall_at_k.png")) > 1000
    # Export the test split, then search it: chunked scoring gives the ranking of one big chunk.
    index = str(tmp_path / "index")
    assert cli.main(["export", "--config", CONFIG, "--workdir", work, "--split", "test", "--out", index] + tiny) == 0
    from tvr_jax import search

    manifest, video_ids, arrays = search.load_index(index)
    assert manifest["num_videos"] == len(video_ids) == arrays["frames"].shape[0] == 100
    query = "a red square moves north and a blue circle moves west"
    chunked = search.search(index, query, top_k=5, chunk=16)
    whole = search.search(index, query, top_k=5, chunk=4096)
    assert [v for v, _ in chunked] == [v for v, _ in whole] and len(chunked) == 5
    np.testing.assert_allclose([s for _, s in chunked], [s for _, s in whole], rtol=1e-5, atol=1e-6)
    assert all(a >= b for (_, a), (_, b) in zip(chunked, chunked[1:]))
    capsys.readouterr()
    assert cli.main(["search", index, query, "--top-k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    # A bad override is refused with the field's name.
    assert cli.main(["train", "--config", CONFIG, "--workdir", work, "--config.model.temporal=lstm"] + tiny) == 2
    assert "temporal='lstm'" in capsys.readouterr().err


def test_zero_shot_equals_plain_clip_cosine(data, tmp_path):
    """`eval --zero-shot` on converted CLIP weights = cosine of CLIP's text embedding and the mean
    of its normalised frame embeddings, computed here directly from `clip.CLIP`."""
    model = clip.CLIP(clip.PRESETS["tiny"])
    params = model.init(jax.random.PRNGKey(3), *model.init_inputs(1))["params"]
    clip.save_converted(model.config, params, str(tmp_path / "clip"))
    work = str(tmp_path / "zs")
    args = ["eval", "--zero-shot", "--config", CONFIG, "--workdir", work, f"--config.data_dir={data}",
            f"--config.init_checkpoint={tmp_path / 'clip'}", "--config.model.max_frames=4", "--config.eval.batch_size=8"]
    assert cli.main(args) == 0
    with open(os.path.join(work, "eval", "metrics.json")) as f:
        report = json.load(f)
    assert report["checkpoint"]["zero_shot"].endswith("clip")

    from configs.synthetic import get_config
    from tvr_jax import train

    cfg = get_config()
    cfg.data_dir, cfg.model.max_frames = data, 4
    rcfg = train.build_model(cfg)[0].config
    norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    videos, texts, video_of_text = [], [], []
    for batch in train.dataset_input(cfg, "test", False, rcfg, 8, eval_rows="videos", process_index=0, process_count=1):
        b, t = batch["video"].shape[:2]
        frames = model.apply({"params": params}, batch["video"].reshape(b * t, 32, 32, 3), method=model.encode_image)
        frames = norm(np.asarray(frames)).reshape(b, t, -1)
        pooled = (frames * batch["video_mask"][..., None]).sum(1) / batch["video_mask"].sum(1, keepdims=True)
        videos.append(norm(pooled)[batch["valid"]])
    for batch in train.dataset_input(cfg, "test", False, rcfg, 8, eval_rows="captions", process_index=0, process_count=1):
        texts.append(norm(np.asarray(model.apply({"params": params}, batch["text_ids"], method=model.encode_text)))[batch["valid"]])
        video_of_text.append(batch["video_index"][batch["valid"]])
    sim = np.concatenate(texts) @ np.concatenate(videos).T
    ref = metrics.multi_caption_metrics(sim, np.concatenate(video_of_text))
    assert report["t2v"] == pytest.approx(ref["t2v"]) and report["v2t"] == pytest.approx(ref["v2t"])


def test_validation_selection_picks_the_best_kept_checkpoint(data, tmp_path, monkeypatch):
    """With a 'val' split, every kept checkpoint is scored on it and the best one is reported."""
    from configs.synthetic import get_config
    from tvr_jax import evaluate, sharding

    cfg = get_config()
    cfg.data_dir = data
    monkeypatch.setattr(evaluate, "_has_split", lambda cfg, split: split == "val")
    steps = {"calls": []}

    class Manager:
        def all_steps(self):
            return [10, 20, 30]

        def close(self):
            pass

    def fake_restore(cfg, workdir, step, mesh):
        steps["calls"].append(step)
        return None, step, step

    def fake_score(cfg, model, params, mesh, split):
        assert split == "val"  # never the test split
        r1 = {10: 5.0, 20: 9.0, 30: 7.0}[params]
        return {"t2v": {"R@1": r1}, "v2t": {"R@1": r1}}, None, None, None, None

    from tvr_jax import train

    monkeypatch.setattr(train, "checkpoint_manager", lambda workdir, keep: Manager())
    monkeypatch.setattr(train, "restore_params", fake_restore)
    monkeypatch.setattr(evaluate, "_score_split", fake_score)
    step, why = evaluate.select_checkpoint(cfg, str(tmp_path), sharding.make_mesh((1, 1), jax.devices()[:1]))
    assert step == 20 and "validation" in why and steps["calls"] == [10, 20, 30]
    monkeypatch.setattr(evaluate, "_has_split", lambda cfg, split: False)
    assert evaluate.select_checkpoint(cfg, str(tmp_path), None) == (30, "last checkpoint (no separate validation split)")
