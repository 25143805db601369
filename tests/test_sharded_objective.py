"""The row-sharded objective equals the single-device one, forward and gradient, on 1, 2, 4x2
and 8 fake CPU devices (tests/conftest.py makes 8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tvr_jax import sharding
from tvr_jax.objective import LossConfig, sharded_total_loss, similarity_matrix, total_loss

B, L, T, NV, D = 16, 6, 5, 10, 8


# Rows (0, 9), (3, 12) and (5, 6) show one video each: pairs within and across shards.
DUPLICATE_ROWS = ((0, 9), (3, 12), (5, 6))
VIDEO_IDS = np.array([40 + i for i in range(B)], np.int32)
for _i, _j in DUPLICATE_ROWS:
    VIDEO_IDS[_j] = VIDEO_IDS[_i]


def _features(seed=0, wti=False, duplicates=False):
    rng = np.random.default_rng(seed)
    norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    word_mask = np.arange(L)[None] < rng.integers(1, L + 1, B)[:, None]
    frame_mask = np.arange(T)[None] < rng.integers(1, T + 1, B)[:, None]
    visual_mask = np.repeat(frame_mask, 2, axis=1)
    word_w = rng.random((B, L)) * word_mask
    visual = norm(rng.normal(size=(B, NV, D)))
    marked = (rng.random((B, NV)) < 0.3) & visual_mask
    f = dict(
        t_cls=norm(rng.normal(size=(B, D))), words=norm(rng.normal(size=(B, L, D))), word_mask=word_mask,
        word_weights=(rng.integers(1, 3, (B, L)) * word_mask).astype(np.float32), frames=visual[:, ::2], frame_mask=frame_mask,
        visual=visual, visual_mask=visual_mask, visual_masked=np.where(marked[..., None], 0.0, visual),
        visual_marked=marked, word_tpm_weights=word_w / word_w.sum(-1, keepdims=True),
    )
    # Make some pairs confusable so that NegNCE finds hard negatives in both directions.
    f["frames"][1] = f["frames"][0]
    if duplicates:  # two captions of one video: the same frames, on different shards
        for i, j in DUPLICATE_ROWS:
            f["frames"][j], f["frame_mask"][j] = f["frames"][i], f["frame_mask"][i]
        f["video_ids"] = VIDEO_IDS
    if wti:
        f["word_logits"], f["frame_logits"] = rng.normal(size=(B, L)), rng.normal(size=(B, T))
    return {k: jnp.asarray(v, jnp.float32 if v.dtype.kind == "f" else v.dtype) for k, v in f.items()}


FLOAT_KEYS = ("t_cls", "words", "frames", "visual", "visual_masked", "word_tpm_weights", "word_logits", "frame_logits")


def _loss_and_grads(fn, feats):
    floats = {k: v for k, v in feats.items() if k in FLOAT_KEYS}
    rest = {k: v for k, v in feats.items() if k not in FLOAT_KEYS}
    (loss, parts), grads = jax.jit(jax.value_and_grad(lambda fl: fn({**fl, **rest}), has_aux=True))(floats)
    return loss, parts, grads


@pytest.mark.parametrize("interaction,lambda_tpm,duplicates", [("att_ti", 1.0, False), ("wti", 0.0, False),
                                                                ("ti", 1.0, False), ("att_ti", 1.0, True)])
@pytest.mark.parametrize("mesh_shape", [(1, 1), (2, 1), (8, 1), (4, 2)])
def test_sharded_equals_single_device(interaction, lambda_tpm, duplicates, mesh_shape):
    cfg = LossConfig(lambda_tpm=lambda_tpm, block_size=3)
    feats = _features(wti=interaction == "wti", duplicates=duplicates)
    ref_loss, ref_parts, ref_grads = _loss_and_grads(lambda f: total_loss(f, interaction, cfg), feats)
    mesh = sharding.make_mesh(mesh_shape, jax.devices()[: int(np.prod(mesh_shape))])
    feats_sharded = jax.device_put(feats, sharding.batch_sharding(mesh))
    loss, parts, grads = _loss_and_grads(lambda f: sharded_total_loss(f, interaction, cfg, mesh), feats_sharded)
    assert float(ref_parts["t2v_num_hard"]) > 0 and float(ref_parts["v2t_num_hard"]) > 0
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert set(parts) == set(ref_parts)
    for k in ref_parts:
        np.testing.assert_allclose(parts[k], ref_parts[k], rtol=1e-5, atol=1e-7, err_msg=k)
    for k in ref_grads:
        scale = float(jnp.abs(ref_grads[k]).max())
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-5, atol=1e-5 * scale, err_msg=k)


@pytest.mark.parametrize("mesh_shape", [(1, 1), (8, 1)])
def test_same_video_pairs_equal_the_loop_reference(mesh_shape):
    """With repeated videos, loss and feature gradients on 1 and 8 devices equal the loop
    reference of tests/test_losses.py (same-video pairs leave the softmax and H) applied to S."""
    from test_losses import ref_dmae

    cfg = LossConfig(lambda_tpm=0.0, block_size=3)
    feats = _features(duplicates=True)
    floats = {k: v for k, v in feats.items() if k in FLOAT_KEYS}
    rest = {k: v for k, v in feats.items() if k not in FLOAT_KEYS}
    sim_of = lambda fl: similarity_matrix({**fl, **rest}, {**fl, **rest}, "att_ti", cfg)
    sim_np = np.asarray(sim_of(floats), np.float64)
    # The copies score like positives: without the ids they would be hard negatives.
    assert all(sim_np[i, j] >= min(sim_np[i, i], sim_np[j, j]) - 1e-6 for i, j in DUPLICATE_ROWS)
    # The loss reference in float64 (as in tests/test_losses.py: float32 -log(1 - P) loses digits).
    ref = lambda fl: ref_dmae(jnp, sim_of(fl).astype(jnp.float64), sim_np, videos=list(VIDEO_IDS))
    with jax.enable_x64(True):
        ref_loss, ref_grads = jax.jit(jax.value_and_grad(ref))(floats)
    mesh = sharding.make_mesh(mesh_shape, jax.devices()[: int(np.prod(mesh_shape))])
    loss, parts, grads = _loss_and_grads(lambda f: sharded_total_loss(f, "att_ti", cfg, mesh),
                                         jax.device_put(feats, sharding.batch_sharding(mesh)))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert float(parts["same_video_pairs"]) == 2 * len(DUPLICATE_ROWS)
    for k in ref_grads:
        scale = float(jnp.abs(ref_grads[k]).max())
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-4, atol=1e-5 * scale, err_msg=k)


def test_make_mesh_infers_and_validates():
    mesh = sharding.make_mesh((-1, 2))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    assert sharding.num_batch_shards(mesh) == 8
    with pytest.raises(ValueError, match="not divisible"):
        sharding.make_mesh((-1, 3))
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.make_mesh((-1, -1))
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh((8, 2))
