"""The row-sharded objective equals the single-device one, forward and gradient, on 1, 2, 4x2
and 8 fake CPU devices (tests/conftest.py makes 8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tvr_jax import sharding
from tvr_jax.objective import LossConfig, sharded_total_loss, total_loss

B, L, T, NV, D = 16, 6, 5, 10, 8


def _features(seed=0, wti=False):
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
    if wti:
        f["word_logits"], f["frame_logits"] = rng.normal(size=(B, L)), rng.normal(size=(B, T))
    return {k: jnp.asarray(v, jnp.float32 if v.dtype.kind == "f" else v.dtype) for k, v in f.items()}


FLOAT_KEYS = ("t_cls", "words", "frames", "visual", "visual_masked", "word_tpm_weights", "word_logits", "frame_logits")


def _loss_and_grads(fn, feats):
    floats = {k: v for k, v in feats.items() if k in FLOAT_KEYS}
    rest = {k: v for k, v in feats.items() if k not in FLOAT_KEYS}
    (loss, parts), grads = jax.jit(jax.value_and_grad(lambda fl: fn({**fl, **rest}), has_aux=True))(floats)
    return loss, parts, grads


@pytest.mark.parametrize("interaction,lambda_tpm", [("att_ti", 1.0), ("wti", 0.0), ("ti", 1.0)])
@pytest.mark.parametrize("mesh_shape", [(1, 1), (2, 1), (8, 1), (4, 2)])
def test_sharded_equals_single_device(interaction, lambda_tpm, mesh_shape):
    cfg = LossConfig(lambda_tpm=lambda_tpm, block_size=3)
    feats = _features(wti=interaction == "wti")
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
