"""The retrieval model: feature sets of docs/method.md section 1, temporal module, token selection,
CLIP initialisation, parameter labels, and the total loss of section 4.4."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trees import assert_trees_close, largest_entry
from tvr_jax import losses, tpm
from tvr_jax.models.clip import CLIP, PRESETS, Transformer
from tvr_jax.models.clip_weights import stack_layers, unstack_layers
from tvr_jax.models.retrieval import (RetrievalConfig, RetrievalModel, init_from_clip, param_labels,
                                      straight_through_top_k)
from tvr_jax.objective import LossConfig, model_loss, similarity_matrix

TINY = PRESETS["tiny"]
B, T, L = 3, 4, 8


def _batch(seed=0, frames_valid=(4, 2, 3)):
    rng = np.random.default_rng(seed)
    video = rng.normal(size=(B, T, TINY.image_size, TINY.image_size, 3)).astype(np.float32)
    video_mask = np.arange(T)[None] < np.asarray(frames_valid)[:, None]
    ids = np.zeros((B, L), np.int32)
    for i, n in enumerate((8, 5, 3)):  # start, n - 2 words, end
        ids[i, 0], ids[i, 1 : n - 1], ids[i, n - 1] = 49406, rng.integers(300, 40000, n - 2), 49407
    weights = rng.integers(1, 3, size=(B, L)).astype(np.float32)
    return tuple(map(jnp.asarray, (video, video_mask, ids, ids > 0, weights)))


def _init(cfg, batch):
    model = RetrievalModel(cfg)
    return model, model.init(jax.random.PRNGKey(0), *batch)["params"]


def _cfg(**kw):
    return RetrievalConfig(clip=TINY, max_frames=T, max_words=L, **kw)


def test_text_features_and_masks():
    batch = _batch()
    model, params = _init(_cfg(temporal="meanP", tpm=False), batch)
    out = model.apply({"params": params}, *batch[2:], method=model.encode_text)
    expected_mask = np.zeros((B, L), bool)
    for i, n in enumerate((8, 5, 3)):
        expected_mask[i, 1 : n - 1] = True  # strictly between the start and end tokens
    np.testing.assert_array_equal(out["word_mask"], expected_mask)
    np.testing.assert_array_equal(out["word_weights"], np.where(expected_mask, batch[4], 0))
    clip = CLIP(TINY)
    tokens = clip.apply({"params": params["clip"]}, batch[2], method=clip.text_tokens)
    pooled = clip.apply({"params": params["clip"]}, batch[2], method=clip.encode_text)
    norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(out["t_cls"], norm(np.asarray(pooled)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["words"], norm(np.asarray(tokens)), rtol=1e-5, atol=1e-6)


def test_uint8_frames_are_normalised_on_the_device():
    """uint8 RGB frames (the input pipeline's) give the features of frames normalised with CLIP's
    mean and std beforehand (a numpy reference); other integer frames are refused."""
    from tvr_jax.models.clip import CLIP_MEAN, CLIP_STD

    batch = _batch()
    model, params = _init(_cfg(temporal="seqTransf", tpm=False), batch)
    pixels = np.random.default_rng(1).integers(0, 256, batch[0].shape, dtype=np.uint8)
    normalised = ((pixels / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).astype(np.float32)
    encode = lambda video: model.apply({"params": params}, video, batch[1], method=model.encode_video)
    ours, reference = encode(jnp.asarray(pixels)), encode(jnp.asarray(normalised))
    for key in ("visual", "frames"):
        np.testing.assert_allclose(ours[key], reference[key], rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="uint8 RGB or normalised floats"):
        encode(jnp.asarray(pixels, jnp.int32))


def test_meanP_frames_are_normalised_clip_frame_embeddings():
    batch = _batch()
    model, params = _init(_cfg(temporal="meanP", tpm=False), batch)
    out = model.apply({"params": params}, *batch[:2], method=model.encode_video)
    clip = CLIP(TINY)
    emb = np.asarray(clip.apply({"params": params["clip"]}, batch[0].reshape(B * T, *batch[0].shape[2:]), method=clip.encode_image))
    emb = (emb / np.linalg.norm(emb, axis=-1, keepdims=True)).reshape(B, T, -1)
    np.testing.assert_allclose(out["frames"], emb, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["frame_mask"], batch[1])


def test_seqTransf_is_residual_transformer_with_positions_and_frame_mask():
    batch = _batch()
    model, params = _init(_cfg(temporal="seqTransf", tpm=False), batch)
    out = model.apply({"params": params}, *batch[:2], method=model.encode_video)
    pre = np.asarray(out["visual_pre"])
    block = Transformer(width=TINY.embed_dim, layers=4, heads=TINY.text_heads, mlp_dim=TINY.text_mlp_dim)
    mask = np.asarray(batch[1])[:, None, None, :]
    y = block.apply({"params": params["temporal_transformer"]}, pre + np.asarray(params["frame_position_embeddings"]), mask)
    ref = pre + np.asarray(y)
    ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
    np.testing.assert_allclose(out["frames"], ref, rtol=1e-5, atol=1e-5)
    # Padded frames never influence valid ones.
    video2 = batch[0].at[1, 3].set(7.0).at[2, 3].set(-3.0)
    out2 = model.apply({"params": params}, video2, batch[1], method=model.encode_video)
    valid = np.asarray(batch[1])
    np.testing.assert_allclose(np.asarray(out2["frames"])[valid], np.asarray(out["frames"])[valid], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compute", [dict(), dict(scan_layers=True), dict(remat=True)])
@pytest.mark.parametrize("given", ["per-layer", "stacked"])
def test_init_from_clip_copies_text_blocks_into_temporal_module(compute, given):
    """CLIP parameters in either layout land in the config's layout (stacked with scan_layers or
    remat), and the temporal module gets CLIP's first text blocks in that layout too."""
    batch = _batch()
    clip_cfg = TINY.replace(text_layers=4, **compute)
    cfg = RetrievalConfig(clip=clip_cfg, max_frames=T, max_words=L, temporal_layers=3)
    model, params = _init(cfg, batch)
    per_layer_cfg = clip_cfg.replace(scan_layers=False, remat=False)
    clip_params = CLIP(per_layer_cfg).init(jax.random.PRNGKey(5), *CLIP(per_layer_cfg).init_inputs(1))["params"]
    new = init_from_clip(cfg, params, clip_params if given == "per-layer" else stack_layers(clip_params))
    assert jax.tree.structure(new) == jax.tree.structure(params)
    if clip_cfg.stacked_layers:
        jax.tree.map(np.testing.assert_array_equal, unstack_layers(new["clip"]), clip_params)
        new_temporal = unstack_layers(new["temporal_transformer"])
    else:
        jax.tree.map(np.testing.assert_array_equal, new["clip"], clip_params)
        new_temporal = new["temporal_transformer"]
    assert set(new_temporal) == {f"resblocks_{i}" for i in range(3)}
    for i in range(3):
        jax.tree.map(np.testing.assert_array_equal, clip_params["text"]["transformer"][f"resblocks_{i}"],
                     new_temporal[f"resblocks_{i}"])
    np.testing.assert_array_equal(new["frame_position_embeddings"], clip_params["text"]["positional_embedding"][:T])
    model.apply({"params": new}, *batch)  # still a valid parameter tree


@pytest.mark.parametrize("policy", ["nothing_saveable", "dots_with_no_batch_dims_saveable"])
def test_remat_same_loss_and_gradients(policy):
    """Remat of both towers and the (masked) temporal transformer: the plain model's loss and
    gradients, its per-layer parameters stacked for the rematerialised scans."""
    batch = _batch()
    plain_cfg = _cfg()
    remat_cfg = RetrievalConfig(clip=TINY.replace(remat=True, remat_policy=policy), max_frames=T, max_words=L)
    plain, params = _init(plain_cfg, batch)
    remat = RetrievalModel(remat_cfg)
    stacked = stack_layers(params)
    assert jax.tree.structure(remat.init(jax.random.PRNGKey(0), *batch)["params"]) == jax.tree.structure(stacked)
    lcfg = LossConfig(visual_mask_straight_through=True)
    (v0, g0), (v1, g1) = (jax.jit(jax.value_and_grad(lambda p, m=m: _loss_fn(m, None, lcfg, batch)(p)[0]))(q)
                          for m, q in ((plain, params), (remat, stacked)))
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    assert_trees_close(unstack_layers(g1), g0, 1e-4, key_bias_atol=1e-6 * largest_entry(g0))


def test_param_labels():
    batch = _batch()
    _, params = _init(_cfg(patch_tokens=2, interaction="wti"), batch)
    labels = param_labels(params)
    assert set(jax.tree.leaves(labels["clip"])) == {"clip"}
    for k in params:
        if k != "clip":
            assert set(jax.tree.leaves(labels[k])) == {"new"}, k
    assert {"patch_selector", "wti_heads", "word_weight_predictor", "visual_weight_predictor", "temporal_transformer"} <= set(params)


def test_straight_through_top_k():
    scores = jnp.array([[0.1, 2.0, -1.0, 0.5], [3.0, 0.0, 1.0, 2.0]])
    sel = straight_through_top_k(scores, 2)
    np.testing.assert_allclose(sel, [[[0, 1, 0, 0], [0, 0, 0, 1]], [[1, 0, 0, 0], [0, 0, 0, 1]]], atol=1e-6)
    g = jax.grad(lambda s: jnp.sum(straight_through_top_k(s, 2) * jnp.arange(4.0)))(scores)
    ref = jax.grad(lambda s: jnp.sum(2 * jax.nn.softmax(s) * jnp.arange(4.0)))(scores)  # two selections
    np.testing.assert_allclose(g, ref, rtol=1e-5)


def test_patch_tokens_are_the_top_scored_patches():
    batch = _batch()
    model, params = _init(_cfg(temporal="meanP", patch_tokens=2, tpm=False), batch)
    out = model.apply({"params": params}, *batch[:2], method=model.encode_video)
    assert out["visual"].shape == (B, T * 3, TINY.embed_dim)
    np.testing.assert_array_equal(out["visual_mask"], np.repeat(batch[1], 3, axis=1))
    np.testing.assert_array_equal(out["frames"], out["visual"][:, ::3])
    # Each selected token is one of the frame's patch tokens (normalised).
    clip = CLIP(TINY)
    tokens = np.asarray(clip.apply({"params": params["clip"]}, batch[0].reshape(B * T, *batch[0].shape[2:]), method=clip.image_tokens))
    patches = tokens[:, 1:] / np.linalg.norm(tokens[:, 1:], axis=-1, keepdims=True)
    selected = np.asarray(out["visual"]).reshape(B * T, 3, -1)[:, 1:]
    for n in range(B * T):
        for k in range(2):
            assert np.min(np.abs(patches[n] - selected[n, k]).max(-1)) < 1e-5


def _loss_fn(model, cfg, lcfg, batch):
    return lambda params: model_loss(model, params, batch, lcfg)


def test_total_loss_is_dmae_plus_tpm():
    batch = _batch()
    cfg = _cfg()
    model, params = _init(cfg, batch)
    lcfg = LossConfig(lambda_tpm=0.7)
    loss, parts = _loss_fn(model, cfg, lcfg, batch)(params)
    feats = model.apply({"params": params}, *batch, rho=lcfg.rho)
    sim = similarity_matrix(feats, feats, cfg.interaction, lcfg)
    dmae = losses.dmae_loss(sim)
    l_tpm, _ = tpm.tpm_loss(feats["t_cls"], feats["words"], feats["word_mask"], feats["word_tpm_weights"],
                            feats["visual"], feats["visual_mask"], feats["visual_masked"])
    np.testing.assert_allclose(loss, dmae + 0.7 * l_tpm, rtol=1e-6)
    np.testing.assert_allclose(parts["dmae"], dmae, rtol=1e-6)
    assert {"t2v_pos", "t2v_neg", "t2v_num_hard", "l1", "l2", "l3", "text_masked_frac", "visual_masked_frac"} <= set(parts)
    loss0, parts0 = _loss_fn(model, cfg, LossConfig(lambda_tpm=0.0), batch)(params)
    np.testing.assert_allclose(loss0, dmae, rtol=1e-6)
    assert "tpm" not in parts0


@pytest.mark.parametrize("kw", [dict(), dict(temporal="meanP", patch_tokens=2, interaction="att_wti")])
def test_gradients_reach_every_module(kw):
    """TPM-CL trains both weight predictors (the visual one through our straight-through masking;
    the release's default gives it none); every new module gets a gradient."""
    batch = _batch()
    cfg = _cfg(**kw)
    model, params = _init(cfg, batch)
    lcfg = LossConfig(visual_mask_straight_through=True)
    grads = jax.grad(lambda p: _loss_fn(model, cfg, lcfg, batch)(p)[0])(params)
    for name, g in grads.items():
        total = sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g))
        assert np.isfinite(total) and total > 0, name


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="temporal='lstm'"):
        _cfg(temporal="lstm")
    with pytest.raises(ValueError, match="interaction='xti'"):
        _cfg(interaction="xti")
    with pytest.raises(ValueError, match="patch_tokens=99"):
        _cfg(patch_tokens=99)
    with pytest.raises(ValueError, match="partial_type=5"):
        LossConfig(partial_type=5)
    model, params = _init(_cfg(tpm=False), _batch())
    with pytest.raises(ValueError, match="max_words is 8"):
        model.apply({"params": params}, *_batch()[:2], jnp.zeros((B, 9), jnp.int32), jnp.zeros((B, 9), bool), jnp.zeros((B, 9)))
