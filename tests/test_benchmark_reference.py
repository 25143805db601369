"""The performance benchmarks compare like with like: the FLOP count by hand equals the program's,
and the PyTorch peer computes our baseline step's loss and gradient on the same weights."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import flops
from benchmarks.train_step import BASELINE_OVERRIDES, TEMPERATURE, make_batch
from tvr_jax import experiment
from tvr_jax.config_io import load_config
from tvr_jax.models.clip import CLIP, PRESETS
from tvr_jax.objective import model_loss
from tvr_jax.models.retrieval import init_from_clip
from tvr_jax.train import MODEL_INPUTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("preset", ["tiny", "vit_b32", "vit_b16"])
def test_hand_counted_tower_flops_equal_the_jaxpr(preset):
    c = PRESETS[preset]
    model = CLIP(c)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *model.init_inputs(1)))["params"]
    images = jax.ShapeDtypeStruct((3, c.image_size, c.image_size, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((5, 32), jnp.int32)
    image = jax.make_jaxpr(lambda p, x: model.apply({"params": p}, x, method=model.image_tokens))(params, images)
    text = jax.make_jaxpr(lambda p, x: model.apply({"params": p}, x, method=model.text_tokens))(params, ids)
    assert flops.jaxpr_matmul_flops(image) == 3 * flops.image_tower_flops(c)["total"]
    assert flops.jaxpr_matmul_flops(text) == 5 * flops.text_tower_flops(c, 32)["total"]


def _baseline(config=os.path.join(ROOT, "configs", "msrvtt_vit_b32.py:tiny"), extra=()):
    cfg = load_config(config, BASELINE_OVERRIDES + list(extra))
    return cfg, experiment.build_model(cfg)[0]


@pytest.mark.parametrize("scan_layers", [False, True])
def test_hand_counted_step_flops_equal_the_gradient_jaxpr(scan_layers):
    """Forward + backward of the meanP step: 3 x forward minus the pixels' gradient, nothing else."""
    cfg, model = _baseline(extra=[f"model.scan_layers={scan_layers}"])
    m, batch = model.config, 6
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *model.dummy_batch(1)))["params"]
    data = make_batch(m.clip, m.max_frames, m.max_words, batch)
    inputs = tuple(jnp.asarray(data[k]) for k in MODEL_INPUTS)
    loss = lambda p: model_loss(model, p, inputs, experiment.loss_config(cfg))[0]
    counted = flops.jaxpr_matmul_flops(jax.make_jaxpr(jax.grad(loss))(params))
    assert counted == flops.meanp_step_flops(m.clip, batch, m.max_frames, m.max_words)["total"]


def test_jaxpr_flops_count_scan_bodies_and_convolutions():
    w = jnp.ones((4, 4))
    body = lambda h, _: (h @ w, None)
    jaxpr = jax.make_jaxpr(lambda h: jax.lax.scan(body, h, None, length=3)[0])(jnp.ones((2, 4)))
    assert flops.jaxpr_matmul_flops(jaxpr) == 3 * 2 * 2 * 4 * 4
    conv = jax.make_jaxpr(lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 2), "VALID"))(
        jnp.ones((1, 3, 8, 8)), jnp.ones((5, 3, 2, 2)))
    assert flops.jaxpr_matmul_flops(conv) == 2 * (1 * 5 * 4 * 4) * (3 * 2 * 2)


def _ours_and_peer(folder: str, seed: int):
    """Our baseline model and the PyTorch peer on the same weights: a random HF CLIP with every
    parameter moved off HF's init (norms 1, biases 0), saved and loaded with `clip.load`."""
    import torch

    from benchmarks import torch_reference as ref

    cfg, model = _baseline()
    hf = ref.random_clip(model.config.clip, seed=seed)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref.save_hf(hf, folder)
    cfg.init_checkpoint = folder
    model, clip_params = experiment.build_model(cfg)
    params = init_from_clip(model.config, model.init(jax.random.PRNGKey(0), *model.dummy_batch(1))["params"],
                                  clip_params)
    return cfg, model, params, hf


def test_torch_peer_computes_our_baseline_loss_and_gradient(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from benchmarks import torch_reference as ref

    cfg, model, params, hf = _ours_and_peer(str(tmp_path), seed=3)
    m = model.config
    batch = make_batch(m.clip, m.max_frames, m.max_words, 6, seed=1)
    batch["video_mask"][1, 2:] = False  # a clip with fewer valid frames
    ours_loss, ours_grads = jax.value_and_grad(lambda p: model_loss(
        model, p, tuple(jnp.asarray(batch[k]) for k in MODEL_INPUTS), experiment.loss_config(cfg))[0])(params)

    peer = ref.MeanPRetrieval(hf, TEMPERATURE)
    loss = peer(*(torch.from_numpy(batch[k]) for k in ("video", "video_mask")), torch.from_numpy(batch["text_ids"]).long())
    loss.backward()
    np.testing.assert_allclose(float(loss.detach()), float(ours_loss), rtol=1e-5)
    # Parameter layouts differ (fused vs split, transposed), the global gradient norm does not.
    peer_norm = np.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in hf.parameters() if p.grad is not None))
    ours_norm = np.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in jax.tree.leaves(ours_grads)))
    np.testing.assert_allclose(ours_norm, peer_norm, rtol=1e-4)


def test_torch_peer_encodes_what_our_evaluation_encodes(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from benchmarks import torch_reference as ref
    from tvr_jax import evaluate, sharding

    _, model, params, hf = _ours_and_peer(str(tmp_path), seed=4)
    m = model.config
    batch = make_batch(m.clip, m.max_frames, m.max_words, 5, seed=2)
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    (videos, _), (texts, _) = (evaluate.compile_encoder(model, mesh, kind) for kind in ("videos", "captions"))
    ours = {**videos(params, batch), **texts(params, batch)}
    with torch.inference_mode():
        peer = {"frames": ref.frame_features(hf, torch.from_numpy(batch["video"])),
                **ref.caption_features(hf, torch.from_numpy(batch["text_ids"]).long())}
    np.testing.assert_array_equal(np.asarray(ours["word_mask"]), peer["word_mask"].numpy())
    assert np.asarray(ours["word_mask"]).sum(1).min() > 0
    for k in ("frames", "t_cls", "words"):
        np.testing.assert_allclose(np.asarray(ours[k]), peer[k].numpy(), atol=2e-5, err_msg=k)


def test_torch_peer_dmae_scores_equal_ours():
    """The peer's blockwise eager scoring against `dmae_similarity` (att_ti, visual + textual
    attention), with padded words and frames, a one-frame video, a video without frames, a text
    without words and blocks that do not divide."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")  # torch_reference imports it
    from benchmarks import torch_reference as ref
    from tvr_jax.similarity import dmae_similarity

    rng = np.random.default_rng(0)
    n_t, n_v, num_words, num_frames, dim = 7, 9, 6, 5, 8
    norm = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    text_cls, words = norm(rng.normal(size=(n_t, dim))), norm(rng.normal(size=(n_t, num_words, dim)))
    frames = norm(rng.normal(size=(n_v, num_frames, dim)))
    word_mask = np.arange(num_words)[None] < rng.integers(1, num_words + 1, n_t)[:, None]
    frame_mask = np.arange(num_frames)[None] < rng.integers(2, num_frames + 1, n_v)[:, None]
    frame_mask[3, 1:] = False  # one valid frame: no neighbour for the visual attention
    frame_mask[5] = False  # no valid frame
    word_mask[2] = False  # no valid word
    word_weights = rng.integers(1, 3, (n_t, num_words)).astype(np.float32)
    ours = dmae_similarity(text_cls, words, word_weights, word_mask, frames, frame_mask, block_size=4)
    peer = ref.dmae_similarity(*(torch.from_numpy(x) for x in (text_cls, words, word_weights, word_mask, frames,
                                                                    frame_mask)), text_block=3, video_block=4)
    np.testing.assert_allclose(peer.numpy(), np.asarray(ours), atol=1e-6)


def test_torch_peer_optimizer_decays_weight_matrices_only():
    pytest.importorskip("transformers")
    from benchmarks import torch_reference as ref

    peer = ref.MeanPRetrieval(ref.random_clip(PRESETS["tiny"]))
    decayed, other = ref.make_optimizer(peer, lr=1e-3, weight_decay=0.2).param_groups
    named = {id(p): n for n, p in peer.named_parameters()}
    assert decayed["weight_decay"] == 0.2 and other["weight_decay"] == 0.0
    assert all(named[id(p)].endswith("weight") and "norm" not in named[id(p)] for p in decayed["params"])
    assert any("q_proj.weight" in named[id(p)] for p in decayed["params"])
    assert any("embedding" in named[id(p)] or "norm" in named[id(p)] for p in other["params"])
    assert len(decayed["params"]) + len(other["params"]) == len(named)
