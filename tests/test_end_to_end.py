"""One real run through the command line: prepare the synthetic set, train two steps on all 8
fake devices, resume, evaluate, and read the report."""

import json
import os

import jax
import numpy as np
import pytest

from data_pipeline import prepare, synthetic
from tvr_jax import cli, clip, experiment, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(synthetic_data):
    return synthetic_data


def test_prepare_train_resume_eval(data, tiny_config, tmp_path, capsys):
    work = str(tmp_path / "run")
    tiny = tiny_config.args(f"data_dir={data}", "checkpoint_every=2")
    assert cli.main(["train", "--workdir", work, "--config.total_steps=2"] + tiny) == 0
    # The same command with more steps resumes from step 2.
    assert cli.main(["train", "--workdir", work, "--config.total_steps=3"] + tiny) == 0
    with open(os.path.join(work, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3]
    assert cli.main(["eval", "--workdir", work, "--config.total_steps=3"] + tiny) == 0
    with open(os.path.join(work, "eval", "metrics.json")) as f:
        report = json.load(f)
    assert report["counts"]["captions"] == report["counts"]["videos"] == synthetic.TEST_VIDEOS
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
    assert cli.main(["export", "--workdir", work, "--split", "test", "--out", index] + tiny) == 0
    from tvr_jax import search

    manifest, video_ids, arrays = search.load_index(index)
    assert manifest["num_videos"] == len(video_ids) == arrays["frames"].shape[0] == synthetic.TEST_VIDEOS
    query = "at first there is a big red circle and then a small blue square"
    engine = search.Searcher(index)
    chunked = [(h.video_id, h.score) for h in engine.search(query, top_k=5, exact=True, chunk=16).hits]
    whole = [(h.video_id, h.score) for h in engine.search(query, top_k=5, exact=True, chunk=4096).hits]
    assert [v for v, _ in chunked] == [v for v, _ in whole] and len(chunked) == 5
    np.testing.assert_allclose([s for _, s in chunked], [s for _, s in whole], rtol=1e-5, atol=1e-6)
    assert all(a >= b for (_, a), (_, b) in zip(chunked, chunked[1:]))
    two_stage = engine.search(query, top_k=5, candidates=manifest["num_videos"])
    assert two_stage.path == "two-stage" and [(h.video_id) for h in two_stage.hits] == [v for v, _ in chunked]
    assert all(os.path.isfile(os.path.join(index, h.thumbnail)) for h in two_stage.hits)
    capsys.readouterr()
    assert cli.main(["search", index, query, "--top-k", "3", "--candidates", "50"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("two-stage: Flat -> 50 of 120 videos") and len(lines) == 4
    assert cli.main(["search", index, query, "--top-k", "3", "--exact"]) == 0
    assert capsys.readouterr().out.startswith("exact: DMAE over all 120 videos")
    # The same model's features of another split append; the same split again is refused.
    assert cli.main(["export", "--workdir", work, "--split", "test", "--out", index, "--append"] + tiny) == 2
    assert "already holds 120 of these videos" in capsys.readouterr().err
    # Served: the trained model answers through the API.
    from fastapi.testclient import TestClient

    from tvr_jax import serve

    body = TestClient(serve.create_app(engine)).get("/search", params={"q": query, "k": 3}).json()
    assert [r["id"] for r in body["results"]] == [v for v, _ in chunked[:3]]
    # A bad override is refused with the field's name.
    assert cli.main(["train", "--workdir", work, "--config.model.temporal=lstm"] + tiny) == 2
    assert "temporal='lstm'" in capsys.readouterr().err


def test_zero_shot_equals_plain_clip_cosine(data, tiny_config, tmp_path):
    """`eval --zero-shot` on converted CLIP weights = cosine of CLIP's text embedding and the mean
    of its normalised frame embeddings, computed here directly from `clip.CLIP`."""
    model = clip.CLIP(clip.PRESETS["tiny"])
    params = model.init(jax.random.PRNGKey(3), *model.init_inputs(1))["params"]
    clip.save_converted(model.config, params, str(tmp_path / "clip"))
    work = str(tmp_path / "zs")
    overrides = [f"data_dir={data}", f"init_checkpoint={tmp_path / 'clip'}"]
    assert cli.main(["eval", "--zero-shot", "--workdir", work] + tiny_config.args(*overrides)) == 0
    with open(os.path.join(work, "eval", "metrics.json")) as f:
        report = json.load(f)
    assert report["checkpoint"]["zero_shot"].endswith("clip")

    cfg = tiny_config(*overrides)
    rcfg = experiment.build_model(cfg)[0].config
    norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    videos, texts, video_of_text = [], [], []
    for batch in experiment.dataset_input(cfg, "test", False, rcfg, 8, eval_rows="videos", process_index=0, process_count=1):
        b, t = batch["video"].shape[:2]
        frames = model.apply({"params": params}, batch["video"].reshape(b * t, 32, 32, 3), method=model.encode_image)
        frames = norm(np.asarray(frames)).reshape(b, t, -1)
        pooled = (frames * batch["video_mask"][..., None]).sum(1) / batch["video_mask"].sum(1, keepdims=True)
        videos.append(norm(pooled)[batch["valid"]])
    for batch in experiment.dataset_input(cfg, "test", False, rcfg, 8, eval_rows="captions", process_index=0, process_count=1):
        texts.append(norm(np.asarray(model.apply({"params": params}, batch["text_ids"], method=model.encode_text)))[batch["valid"]])
        video_of_text.append(batch["video_index"][batch["valid"]])
    sim = np.concatenate(texts) @ np.concatenate(videos).T
    ref = metrics.multi_caption_metrics(sim, np.concatenate(video_of_text))
    assert report["t2v"] == pytest.approx(ref["t2v"]) and report["v2t"] == pytest.approx(ref["v2t"])


def test_validation_during_training_keeps_and_reports_the_best(tmp_path, capsys):
    """A tiny MSVD-layout set (train / val / test): validation runs in the loop on the real 'val'
    split, its scores go to metrics.jsonl and into the checkpoints, orbax keeps the newest and the
    best, and `tvr-jax eval` reports the best recorded step."""
    import pickle

    from test_data_fixtures import write_counting_clip

    src, data, work = tmp_path / "src", str(tmp_path / "data"), str(tmp_path / "run")
    (src / "videos").mkdir(parents=True)
    (src / "annotations").mkdir()
    splits = {"train": [f"tr{i}" for i in range(4)], "val": ["va0", "va1", "va2"], "test": ["te0", "te1"]}
    captions = {}
    for split, ids in splits.items():
        (src / "annotations" / f"{split}_list.txt").write_text("\n".join(ids) + "\n")
        for i, vid in enumerate(ids):
            write_counting_clip(str(src / "videos" / f"{vid}.mp4"), seconds=i + 1, height=32, width=32)
            captions[vid] = [["a", "clip", "of", str(i + 1), "seconds"], ["gray", split, "video", str(i)]]
    with open(src / "annotations" / "raw-captions.pkl", "wb") as f:
        pickle.dump(captions, f)
    prepare.prepare("msvd", data, str(src / "videos"), str(src / "annotations"), max_frames=4, short_side=32,
                    workers=1, tagger="fallback", progress=False)
    config = os.path.join(ROOT, "configs", "msvd_vit_b32.py:tiny")
    args = ["--config", config, "--workdir", work, f"--config.data_dir={data}", "--config.total_steps=3",
            "--config.eval_every=1", "--config.checkpoint_every=3", "--config.keep_checkpoints=1"]
    assert cli.main(["train"] + args) == 0
    with open(os.path.join(work, "metrics.jsonl")) as f:
        recorded = {m["step"]: m for m in map(json.loads, f) if "val_score" in m}
    assert sorted(recorded) == [1, 2, 3]
    for m in recorded.values():
        assert 0.0 <= m["val_t2v_R@1"] <= 100.0 and 0.0 <= m["val_v2t_R@1"] <= 100.0
        assert m["val_score"] == pytest.approx(m["val_t2v_R@1"] + m["val_v2t_R@1"])
    best = max(recorded, key=lambda s: (recorded[s]["val_score"], s))
    manager = experiment.checkpoint_manager(work, 1)
    assert manager.all_steps() == sorted({best, 3})  # the newest (resume) and the best
    assert manager.metrics(best)["val_score"] == pytest.approx(recorded[best]["val_score"])
    manager.close()
    assert cli.main(["eval"] + args) == 0
    with open(os.path.join(work, "eval", "metrics.json")) as f:
        report = json.load(f)
    assert report["checkpoint"]["step"] == best and "best validation score" in report["checkpoint"]["selection"]
    assert report["counts"]["videos"] == 2  # the test split
    capsys.readouterr()
