"""Training: the sharded step equals the single-device step, gradient caching equals the plain
step, shardings are as intended, a killed run resumes exactly, a non-finite loss stops the run."""

import json
import os

import jax
import numpy as np
import pytest

from tvr_jax import experiment, sharding, train
from tvr_jax.optim import make_optimizer, weight_decay_mask

B, T, L = 8, 3, 8
# The shared tiny config (conftest.py) at this file's batch shapes: 6 steps, a log line every 2
# steps, a checkpoint every 3, similarity blocks of 4 videos.
SHAPES = (f"global_batch_size={B}", f"model.max_frames={T}", f"model.max_words={L}", "total_steps=6", "log_every=2",
          "checkpoint_every=3", "loss.block_size=4")


@pytest.fixture(scope="module")
def config(tiny_config):
    """config(*overrides): the tiny config at SHAPES, then `field.sub=value` overrides."""
    return lambda *overrides: tiny_config(*SHAPES, *overrides)


def random_batch(position: int, size: int = 32):
    rng = np.random.default_rng(position)
    ids = np.zeros((B, L), np.int32)
    for i in range(B):
        n = rng.integers(3, L + 1)
        ids[i, 0], ids[i, 1 : n - 1], ids[i, n - 1] = 49406, rng.integers(300, 40000, n - 2), 49407
    return dict(
        video=rng.normal(size=(B, T, size, size, 3)).astype(np.float32),
        video_mask=np.arange(T)[None] < rng.integers(1, T + 1, B)[:, None],
        text_ids=ids, text_mask=ids > 0,
        word_weights=((ids > 0) * rng.integers(1, 3, (B, L))).astype(np.float32),
        video_index=REPEATED_VIDEOS,
    )


# Rows 0 and 5, 3 and 7 are captions of one video (on different shards from 2 devices up).
REPEATED_VIDEOS = np.array([0, 1, 2, 3, 4, 0, 6, 3], np.int32)


def make_batches(data_state, model_config=None):
    """A restartable stream: batch n is a pure function of n; the state is the position."""
    position = {"n": 0 if data_state is None else data_state["position"]}

    def gen():
        while True:
            n = position["n"]
            position["n"] += 1  # counted when handed out: the state is the next batch to give
            yield random_batch(n)

    return gen(), lambda: {"position": position["n"]}


def _mesh(n, fsdp=1):
    return sharding.make_mesh((n // fsdp, fsdp), jax.devices()[:n])


def _step_outputs(cfg, mesh, batch, with_step=False):
    model, _ = experiment.build_model(cfg)
    optimizer = make_optimizer(cfg.optim, cfg.total_steps)
    state, shardings = experiment.create_train_state(cfg, model, optimizer, mesh)
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    grads_fn = jax.jit(train.make_loss_and_grads(model, experiment.loss_config(cfg), mesh, cfg.accumulation_steps))
    (loss, parts), grads = grads_fn(state.params, batch)
    out = dict(loss=float(loss), parts=jax.device_get(parts), grads=jax.device_get(grads), state=state)
    if with_step:
        step = train.make_train_step(model, experiment.loss_config(cfg), optimizer, mesh, shardings, cfg.accumulation_steps)
        out["state"], _ = step(state, batch)
        out["params1"] = jax.device_get(out["state"].params)
    return out


def _assert_tree_close(a, b, rtol):
    """Leaf by leaf, relative to the leaf's scale, but never finer than 1e-3 of the whole tree's:
    some gradients are exactly zero in exact arithmetic (attention key biases: softmax ignores a
    per-row constant) and hold only float32 noise, different for every device layout."""
    tree_scale = max(float(np.abs(y).max()) for y in jax.tree.leaves(b))

    def check(path, x, y):
        scale = max(float(np.abs(y).max()), 1e-3 * tree_scale)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale, err_msg=jax.tree_util.keystr(path))
    jax.tree_util.tree_map_with_path(check, a, b)


@pytest.fixture(scope="module")
def reference(config):
    return _step_outputs(config(), _mesh(1), random_batch(0), with_step=True)


@pytest.mark.parametrize("devices,fsdp,accumulation", [(2, 1, 1), (8, 1, 1), (8, 2, 1), (1, 1, 2), (4, 1, 2)])
def test_loss_and_gradients_equal_single_device(reference, config, devices, fsdp, accumulation):
    out = _step_outputs(config(f"accumulation_steps={accumulation}"), _mesh(devices, fsdp), random_batch(0))
    np.testing.assert_allclose(out["loss"], reference["loss"], rtol=1e-5)
    assert float(reference["parts"]["t2v_num_hard"]) == float(out["parts"]["t2v_num_hard"])
    _assert_tree_close(out["grads"], reference["grads"], 1e-5 if accumulation == 1 else 2e-5)


def test_video_ids_reach_the_loss(reference, config):
    """The step's loss is `objective.model_loss` with the batch's video ids (docs/method.md 3.1:
    tested against a loop reference in tests/test_losses.py), not the loss without them."""
    from tvr_jax.objective import model_loss

    cfg = config()
    model, _ = experiment.build_model(cfg)
    batch = random_batch(0)
    inputs = tuple(batch[k] for k in train.MODEL_INPUTS)
    state, _ = experiment.create_train_state(cfg, model, make_optimizer(cfg.optim, cfg.total_steps), _mesh(1))
    params = state.params  # the reference's parameters before its step (same seed)
    with_ids = model_loss(model, params, inputs, experiment.loss_config(cfg), video_ids=batch["video_index"])[1]
    without = model_loss(model, params, inputs, experiment.loss_config(cfg))[1]
    np.testing.assert_allclose(reference["loss"], float(with_ids["loss"]), rtol=1e-5)
    assert float(reference["parts"]["same_video_pairs"]) == 4
    assert abs(float(with_ids["loss"]) - float(without["loss"])) > 1e-4


def test_fsdp_step_equals_single_device_and_keeps_shardings(reference, config):
    out = _step_outputs(config(), _mesh(8, 2), random_batch(0), with_step=True)
    _assert_tree_close(out["params1"], reference["params1"], 1e-5)
    emb = out["state"].params["clip"]["text"]["token_embedding"]["embedding"]
    assert emb.sharding.spec == jax.sharding.PartitionSpec("fsdp")  # (49408, 64): vocab axis split
    nu_leaves = [x for x in jax.tree.leaves(out["state"].opt_state) if getattr(x, "shape", ()) == emb.shape]
    assert nu_leaves and all(x.sharding.spec == jax.sharding.PartitionSpec("fsdp") for x in nu_leaves)
    bias = out["state"].params["clip"]["visual"]["ln_pre"]["bias"]
    assert bias.sharding.is_fully_replicated


def test_weight_decay_mask():
    params = {"clip": {"visual": {"conv1": {"kernel": 1}, "ln_pre": {"scale": 1, "bias": 1}, "proj": 1,
                                  "class_embedding": 1, "positional_embedding": 1},
                       "text": {"token_embedding": {"embedding": 1}, "text_projection": 1}, "logit_scale": 1},
              "frame_position_embeddings": 1, "word_weight_predictor": {"fc1": {"kernel": 1}, "norm": {"scale": 1}}}
    mask = weight_decay_mask(params)
    decayed = {jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_leaves_with_path(mask) if v}
    assert decayed == {"['clip']['visual']['conv1']['kernel']", "['clip']['visual']['proj']",
                       "['clip']['text']['text_projection']", "['word_weight_predictor']['fc1']['kernel']"}


def _read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_killed_run_resumes_exactly(tmp_path, config):
    cfg = config()
    mesh = _mesh(2)
    full = train.train(cfg, str(tmp_path / "full"), make_batches, mesh=mesh)
    train.train(cfg, str(tmp_path / "killed"), make_batches, mesh=mesh, stop_after=4)  # killed after step 4
    assert [m["step"] for m in _read_metrics(tmp_path / "killed")] == [2, 4]
    resumed = train.train(cfg, str(tmp_path / "killed"), make_batches, mesh=mesh)
    _assert_tree_close(jax.device_get(resumed.params), jax.device_get(full.params), 1e-6)
    a, b = _read_metrics(tmp_path / "full"), _read_metrics(tmp_path / "killed")
    assert [m["step"] for m in a] == [m["step"] for m in b] == [2, 4, 6]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x["loss"], y["loss"], rtol=1e-6)
        assert {"step", "loss", "dmae", "tpm", "grad_norm", "clips_per_s"} <= set(x)


def _truncate_largest_file(step_dir):
    files = [os.path.join(root, f) for root, _, names in os.walk(step_dir) for f in names]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)


def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(tmp_path, config, caplog):
    cfg = config("total_steps=9")
    mesh = _mesh(1)
    full = train.train(cfg, str(tmp_path / "full"), make_batches, mesh=mesh)
    run = tmp_path / "damaged"
    train.train(cfg, str(run), make_batches, mesh=mesh, stop_after=6)  # checkpoints at steps 3 and 6
    _truncate_largest_file(run / "checkpoints" / "6")  # a copy cut short, a disk that filled up
    with caplog.at_level("WARNING", logger="tvr_jax.train"):
        resumed = train.train(cfg, str(run), make_batches, mesh=mesh)
    assert any("checkpoint step 6 does not restore" in r.getMessage() and "6.damaged" in r.getMessage()
               for r in caplog.records)
    assert (run / "checkpoints" / "6.damaged").is_dir()
    _assert_tree_close(jax.device_get(resumed.params), jax.device_get(full.params), 1e-6)  # steps 4-9 again, equal
    # Nothing restores: a clear message naming every step, and no silent start from scratch.
    for step in ("6", "9"):
        _truncate_largest_file(run / "checkpoints" / step)
    with pytest.raises(experiment.CheckpointUnreadable, match=r"step 9: .*step 6: .*move the checkpoints folder away"):
        train.train(cfg, str(run), make_batches, mesh=mesh)
    assert {p.name for p in (run / "checkpoints").iterdir()} >= {"6", "9", "6.damaged"}  # nothing moved then


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, config):
    cfg = config()

    def poisoned(data_state, model_config):
        batches, get_state = make_batches(data_state)

        def gen():
            for batch in batches:
                if get_state()["position"] == 5:  # the 5th batch carries a NaN frame
                    batch["video"][0, 0, 0, 0, 0] = np.nan
                yield batch
        return gen(), get_state

    with pytest.raises(train.NonFiniteLoss, match=r"non-finite .*loss.* at step 5"):
        train.train(cfg, str(tmp_path), poisoned, mesh=_mesh(1))
    manager = experiment.checkpoint_manager(str(tmp_path), 2)
    assert manager.latest_step() == 3  # the step-3 checkpoint; nothing after the bad step was saved
    manager.close()


def test_sigterm_saves_and_exits(tmp_path, config):
    import signal

    def terminated(data_state, model_config):
        batches, get_state = make_batches(data_state)

        def gen():
            for batch in batches:
                if get_state()["position"] == 2:  # SIGTERM arrives while step 2 runs
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch
        return gen(), get_state

    state = train.train(config(), str(tmp_path), terminated, mesh=_mesh(1))
    assert int(state.step) == 2
    manager = experiment.checkpoint_manager(str(tmp_path), 2)
    assert manager.latest_step() == 2
    manager.close()
    assert [m["step"] for m in _read_metrics(tmp_path)] == [2]


def _scripted_validation(monkeypatch, scores, mesh):
    """Validation on: the set 'has' a val split and each call returns the next scripted score
    (as t2v R@1 = v2t R@1 = score / 2), after checking it got the training params in memory."""
    from tvr_jax import evaluate

    monkeypatch.setattr(evaluate, "_has_split", lambda cfg, split: split == "val")
    scores = list(scores)

    def validator(cfg, model, mesh_):
        assert mesh_ is mesh

        def validate(params):
            leaf = jax.tree.leaves(params)[0]
            assert isinstance(leaf, jax.Array) and leaf.sharding.mesh == mesh  # on device, as in training
            s = scores.pop(0)
            return {"val_t2v_R@1": s / 2, "val_v2t_R@1": s / 2, "val_score": s}
        return validate
    monkeypatch.setattr(evaluate, "validator", validator)
    return scores


def test_best_validation_checkpoint_is_kept_reported_and_not_resumed_from(tmp_path, monkeypatch, config):
    """Validated at steps 2, 4, 6 with scores 30, 10, 20; saved at 2, 3, 4, 6 (eval_every 2,
    checkpoint_every 3), keep 2: step 2, the best, stays besides the newest two (4, 6) and is
    what eval reports; a run killed after step 4 resumes from 4, not from the best, exactly."""
    from tvr_jax import evaluate

    mesh = _mesh(2)
    cfg = config("eval_every=2", f"data_dir={tmp_path / 'data'}")
    left = _scripted_validation(monkeypatch, [30.0, 10.0, 20.0], mesh)
    full = train.train(cfg, str(tmp_path / "full"), make_batches, mesh=mesh)
    assert left == []

    _scripted_validation(monkeypatch, [30.0, 10.0], mesh)
    train.train(cfg, str(tmp_path / "killed"), make_batches, mesh=mesh, stop_after=4)
    manager = experiment.checkpoint_manager(str(tmp_path / "killed"), 2)
    assert manager.all_steps() == [2, 3, 4]  # 2 kept as the best so far
    manager.close()
    _scripted_validation(monkeypatch, [20.0], mesh)
    resumed = train.train(cfg, str(tmp_path / "killed"), make_batches, mesh=mesh)
    _assert_tree_close(jax.device_get(resumed.params), jax.device_get(full.params), 1e-6)

    for run in ("full", "killed"):
        manager = experiment.checkpoint_manager(str(tmp_path / run), 2)
        assert manager.all_steps() == [2, 4, 6] and manager.latest_step() == 6
        manager.close()
        step, why = evaluate.select_checkpoint(cfg, str(tmp_path / run))
        assert step == 2 and "best validation score" in why and "newest checkpoint: step 6" in why, why
        records = _read_metrics(tmp_path / run)
        val = [(m["step"], m["val_score"]) for m in records if "val_score" in m]
        assert val == [(2, 30.0), (4, 10.0), (6, 20.0)]
        assert [m["step"] for m in records if "loss" in m] == [2, 4, 6]
        assert {"val_t2v_R@1", "val_v2t_R@1"} <= set(next(m for m in records if "val_score" in m))
    losses = [[m["loss"] for m in _read_metrics(tmp_path / run) if "loss" in m] for run in ("full", "killed")]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


@pytest.mark.parametrize("override,why", [
    ("eval_every=0", "eval_every=0"),
    ("eval.split=val", "evaluated one"),
    ("data_dir=", "data_dir is empty"),
])
def test_validation_off(override, why, monkeypatch, caplog, config):
    from tvr_jax import evaluate

    monkeypatch.setattr(evaluate, "_has_split", lambda cfg, split: True)
    monkeypatch.setattr(evaluate, "validator", lambda *a: pytest.fail("validation is off"))
    cfg = config("eval_every=2", "data_dir=prepared", override)
    with caplog.at_level("INFO", logger="tvr_jax.train"):
        assert train._validator(cfg, None, None) is None
    assert [r.getMessage() for r in caplog.records if why in r.getMessage()]
    monkeypatch.setattr(evaluate, "_has_split", lambda cfg, split: split != "val")  # e.g. the synthetic set
    assert "no 'val' split" in evaluate.validation_off(config("eval_every=2", "data_dir=prepared"))
    with pytest.raises(ValueError, match="eval_every=-1"):
        evaluate.validation_off(config("eval_every=-1"))
