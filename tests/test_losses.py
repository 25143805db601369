"""NegNCE / DMAE loss (docs/method.md section 3) against a plain per-element reference.

References run in float64 (numpy for values, jnp under jax.enable_x64 for gradients): with
tau = 0.01 a float32 reference loses ~1e-4 relative accuracy in -log(1 - P) gradients where
P is close to 1, more than the implementation under test does.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tvr_jax.losses import (dmae_loss, dmae_loss_and_parts, negnce_block_sums,
                            negnce_from_sums, negnce_loss, negnce_parts, negnce_query_rest)

B = 6


def ref_negnce(xp, sim, sim_np, temperature=0.01, lambda_pos=1.0, lambda_neg=0.5, delta=0.0,
               videos=None):
    """Loops over rows and candidates; the hard set H is decided on the numpy copy sim_np.

    ``videos``: each pair's video; candidate j of row i is left out of the softmax and of H
    when j != i shows the same video (docs/method.md section 3.1).
    """
    n = len(sim_np)
    videos = list(range(n)) if videos is None else list(videos)
    pos_terms, neg_terms, num_hard = [], [], 0
    for i in range(n):
        cand = [j for j in range(n) if j == i or videos[j] != videos[i]]
        m = max(float(sim_np[i][j]) for j in cand) / temperature   # a constant shift
        e = xp.exp(sim[i][np.array(cand)] / temperature - m)
        p = xp.clip(e / xp.sum(e), 1e-6, 1 - 1e-6)   # over the candidates, in `cand` order
        pos_terms.append(-xp.log(p[cand.index(i)]))
        hard = [k for k, j in enumerate(cand) if j != i and (sim_np[i][j] - sim_np[i][i] + delta > 0
                                                             or sim_np[i][j] - sim_np[j][j] + delta > 0)]
        if hard:
            neg_terms.append(xp.sum(-xp.log(1 - p[np.array(hard)])))
            num_hard += len(hard)
    loss = lambda_pos * sum(pos_terms) / n
    if num_hard:
        loss = loss + lambda_neg * sum(neg_terms) / num_hard
    return loss, num_hard


def ref_dmae(xp, sim, sim_np, **kw):
    return 0.5 * (ref_negnce(xp, sim, sim_np, **kw)[0] + ref_negnce(xp, sim.T, sim_np.T, **kw)[0])


def random_sim(seed, scale=0.1, diag_boost=0.05):
    rng = np.random.default_rng(seed)
    s = scale * rng.normal(size=(B, B)) + diag_boost * np.eye(B)
    return s.astype(np.float32)


def check_against_reference(sim, videos=None, **kw):
    ids = None if videos is None else jnp.asarray(videos, jnp.int32)
    parts = negnce_parts(jnp.asarray(sim), video_ids=ids, **kw)
    ref_loss, ref_hard = ref_negnce(np, sim.astype(np.float64), sim, videos=videos, **kw)
    np.testing.assert_allclose(float(parts["loss"]), ref_loss, rtol=1e-5, atol=1e-6)
    assert int(parts["num_hard"]) == ref_hard
    loss, grad = jax.jit(jax.value_and_grad(lambda s: dmae_loss(s, video_ids=ids, **kw)))(jnp.asarray(sim))
    np.testing.assert_allclose(float(loss), ref_dmae(np, sim.astype(np.float64), sim, videos=videos, **kw),
                               rtol=1e-5, atol=1e-6)
    with jax.enable_x64(True):
        ref_grad = jax.jit(jax.grad(lambda s: ref_dmae(jnp, s, sim, videos=videos, **kw)))(
            jnp.asarray(sim, jnp.float64))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-4, atol=1e-5)
    return parts


@pytest.mark.parametrize("kw", [dict(), dict(lambda_pos=0.7, lambda_neg=1.3, delta=0.05),
                                dict(temperature=0.05)])
def test_matches_reference(kw):
    parts = check_against_reference(random_sim(0), **kw)
    assert 0 < int(parts["num_hard"]) < B * (B - 1)


@pytest.mark.parametrize("seed,scale", [(17, 0.1), (16, 0.3), (18, 0.1)])
def test_gradient_accurate_when_a_hard_negative_dominates(seed, scale):
    """Rows where one hard negative has P ~ 1 - 2e-5: float32 1 - P would lose ~1% here."""
    sim = random_sim(seed, scale=scale)
    p = np.exp(sim / 0.01 - np.log(np.exp(sim.astype(np.float64) / 0.01).sum(1, keepdims=True)))
    off = p - np.diag(np.diag(p))
    assert off.max() > 0.999, "the case must contain a dominating off-diagonal candidate"
    check_against_reference(sim)


def test_clamp_is_applied():
    """Well separated pairs push P_ii past 1 - 1e-6: the clamped value and a zero gradient."""
    sim = random_sim(1, scale=0.05, diag_boost=0.5)
    parts = check_against_reference(sim)
    np.testing.assert_allclose(float(parts["pos"]), -math.log1p(-1e-6), rtol=1e-6)
    assert float(parts["num_hard"]) == 0


def test_no_hard_negatives_leaves_only_the_positive_term():
    sim = random_sim(2, scale=0.01, diag_boost=0.1)  # diagonal dominates rows and columns
    parts = check_against_reference(sim)
    assert float(parts["num_hard"]) == 0 and float(parts["neg"]) == 0
    np.testing.assert_allclose(float(parts["loss"]), float(parts["pos"]), rtol=1e-7)


def test_all_off_diagonal_pairs_are_hard():
    sim = random_sim(3, scale=0.02) - 0.3 * np.eye(B, dtype=np.float32)
    parts = check_against_reference(sim)
    assert int(parts["num_hard"]) == B * (B - 1)


def test_ties_are_not_hard_without_margin():
    """S_ij == S_ii or S_ij == S_jj exactly is not hard at delta = 0, and hard at delta > 0."""
    sim = np.full((3, 3), -0.5, np.float32)
    np.fill_diagonal(sim, [0.2, 0.4, 0.6])
    sim[0, 1] = 0.2       # == S_00, < S_11
    sim[2, 1] = 0.4       # == S_11, < S_22
    assert float(negnce_parts(jnp.asarray(sim))["num_hard"]) == 0
    assert float(negnce_parts(jnp.asarray(sim), delta=1e-3)["num_hard"]) == 2
    sim[0, 1] = 0.3       # > S_00 only: hard
    assert float(negnce_parts(jnp.asarray(sim))["num_hard"]) == 1
    sim[0, 1] = 0.2
    for delta in (0.0, 1e-3):
        np.testing.assert_allclose(
            float(negnce_loss(jnp.asarray(sim), delta=delta)),
            ref_negnce(np, sim.astype(np.float64), sim, delta=delta)[0], rtol=1e-5)


def test_lambda_neg_zero_is_symmetric_infonce():
    sim = random_sim(4, scale=0.03)   # logits within +-15: no P_ii reaches the clamp
    labels = jnp.arange(B)

    def infonce(s):
        ce = optax.softmax_cross_entropy_with_integer_labels
        return 0.5 * (jnp.mean(ce(s / 0.01, labels)) + jnp.mean(ce(s.T / 0.01, labels)))

    loss, grad = jax.value_and_grad(lambda s: dmae_loss(s, lambda_neg=0.0))(jnp.asarray(sim))
    ref_loss, ref_grad = jax.value_and_grad(infonce)(jnp.asarray(sim))
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-4, atol=1e-5)


def test_parts_and_transpose():
    sim = random_sim(5)
    loss, parts = dmae_loss_and_parts(jnp.asarray(sim))
    t2v, v2t = negnce_parts(jnp.asarray(sim)), negnce_parts(jnp.asarray(sim.T))
    np.testing.assert_allclose(float(loss), 0.5 * (float(t2v["loss"]) + float(v2t["loss"])),
                               rtol=1e-6)
    for k in ("loss", "pos", "neg", "num_hard"):
        np.testing.assert_allclose(float(parts[f"t2v_{k}"]), float(t2v[k]), rtol=1e-6)
        np.testing.assert_allclose(float(parts[f"v2t_{k}"]), float(v2t[k]), rtol=1e-6)
    # H(S^T) = H(S)^T: the same number of hard pairs in both directions.
    assert float(parts["t2v_num_hard"]) == float(parts["v2t_num_hard"])
    np.testing.assert_allclose(float(negnce_loss(jnp.asarray(sim))), float(t2v["loss"]))


def _row_sharded_dmae(sim, row_blocks, **kw):
    """DMAE loss assembled from row blocks as a row-sharded caller would (psum = sum)."""
    tau = kw.get("temperature", 0.01)
    row_blocks = [jnp.asarray(ids) for ids in row_blocks]
    n = sim.shape[0]
    diag = jnp.diagonal(sim)
    all_ids = jnp.arange(n)
    # Column log-normaliser from per-block partial logsumexps (what a psum/pmax would combine).
    col_lse = jax.nn.logsumexp(jnp.stack([jax.nn.logsumexp(sim[ids] / tau, axis=0)
                                          for ids in row_blocks]), axis=0)
    col_rest = sum(negnce_query_rest(sim[ids].T, query_log_norm=col_lse, temperature=tau)
                   for ids in row_blocks)
    t2v, v2t = [], []
    for ids in row_blocks:
        rows = sim[ids]
        common = dict(temperature=tau, delta=kw.get("delta", 0.0))
        t2v.append(negnce_block_sums(rows, query_ids=ids, key_ids=all_ids, query_diag=diag[ids],
                                     key_diag=diag, query_log_norm=jax.nn.logsumexp(
                                         rows / tau, axis=1), **common))
        v2t.append(negnce_block_sums(rows.T, query_ids=all_ids, key_ids=ids, query_diag=diag,
                                     key_diag=diag[ids], query_log_norm=col_lse,
                                     query_rest=col_rest, **common))
    total = lambda parts: jax.tree.map(lambda *x: sum(x), *parts)  # noqa: E731
    lam = dict(lambda_pos=kw.get("lambda_pos", 1.0), lambda_neg=kw.get("lambda_neg", 0.5))
    return 0.5 * (negnce_from_sums(total(t2v), n, **lam)["loss"]
                  + negnce_from_sums(total(v2t), n, **lam)["loss"])


# Pairs 0 and 3 show video 7, pairs 1, 4 and 5 video 2: five same-video pairs off the diagonal.
DUPLICATES = [7, 2, 9, 7, 2, 2]


def _with_confusable_duplicates(sim):
    """The copies score like positives (above both diagonals), as a true match does."""
    sim = sim.copy()
    for i in range(B):
        for j in range(B):
            if i != j and DUPLICATES[i] == DUPLICATES[j]:
                sim[i, j] = max(sim[i, i], sim[j, j]) + 0.02
    return sim


@pytest.mark.parametrize("kw", [dict(), dict(lambda_pos=0.7, lambda_neg=1.3, delta=0.05)])
def test_same_video_pairs_match_reference(kw):
    """Loss and gradient with repeated videos equal the loop reference that leaves them out."""
    check_against_reference(_with_confusable_duplicates(random_sim(0)), videos=DUPLICATES, **kw)


def test_same_video_pairs_are_no_negatives():
    sim = _with_confusable_duplicates(random_sim(7, scale=0.02, diag_boost=0.2))
    ids = jnp.asarray(DUPLICATES, jnp.int32)
    without, with_ids = negnce_parts(jnp.asarray(sim)), negnce_parts(jnp.asarray(sim), video_ids=ids)
    # Without ids the copies are the only hard negatives (the diagonal dominates the rest).
    assert int(without["num_hard"]) == 8 and int(with_ids["num_hard"]) == 0
    assert float(with_ids["neg"]) == 0 and float(with_ids["pos"]) < float(without["pos"])
    grad = jax.grad(lambda s: dmae_loss(s, video_ids=ids))(jnp.asarray(sim))
    same = (np.asarray(DUPLICATES)[:, None] == np.asarray(DUPLICATES)[None]) & ~np.eye(B, dtype=bool)
    assert np.all(np.isfinite(np.asarray(grad))) and np.all(np.asarray(grad)[same] == 0)
    assert float(dmae_loss_and_parts(jnp.asarray(sim), video_ids=ids)[1]["same_video_pairs"]) == 8


@pytest.mark.parametrize("seed", [0, 16])
def test_distinct_videos_give_exactly_the_plain_loss(seed):
    sim = jnp.asarray(random_sim(seed))
    distinct = jnp.asarray([5, 3, 8, 0, 1, 9], jnp.int32)
    # Op by op, the same arithmetic: bit for bit the same loss and gradient.
    plain = jax.value_and_grad(dmae_loss)(sim)
    with_ids = jax.value_and_grad(lambda s: dmae_loss(s, video_ids=distinct))(sim)
    assert float(plain[0]) == float(with_ids[0])
    np.testing.assert_array_equal(np.asarray(plain[1]), np.asarray(with_ids[1]))
    # Compiled, XLA may fuse the two graphs differently: the same loss to float32 rounding.
    plain = jax.jit(jax.value_and_grad(dmae_loss))(sim)
    with_ids = jax.jit(jax.value_and_grad(lambda s: dmae_loss(s, video_ids=distinct)))(sim)
    np.testing.assert_allclose(float(with_ids[0]), float(plain[0]), rtol=1e-6)
    scale = float(jnp.abs(plain[1]).max())
    np.testing.assert_allclose(np.asarray(with_ids[1]), np.asarray(plain[1]), rtol=1e-6, atol=1e-6 * scale)


def test_block_sums_reassemble_the_global_loss():
    sim = jnp.asarray(random_sim(6))
    blocks = [[0, 1], [2, 3, 4], [5]]
    loss, grad = jax.jit(jax.value_and_grad(lambda s: _row_sharded_dmae(s, blocks)))(sim)
    ref_loss, ref_grad = jax.value_and_grad(dmae_loss)(sim)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-5, atol=1e-6)


def test_argument_validation():
    with pytest.raises(ValueError, match="square"):
        negnce_loss(jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match="temperature"):
        dmae_loss(jnp.zeros((3, 3)), temperature=0.0)
    with pytest.raises(ValueError, match="video_ids"):
        dmae_loss(jnp.zeros((3, 3)), video_ids=jnp.zeros(4, jnp.int32))
