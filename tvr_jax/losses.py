"""NegNCE and the symmetric DMAE contrastive loss (docs/method.md section 3).

Layout, so that a row-sharded version can reuse the same arithmetic:

* :func:`negnce_block_sums` is the whole numeric content: for any block of S whose queries lie
  along its rows, given each query's log-normaliser over its *global* candidate set, it returns
  the sums and counts of the positive and hard-negative terms. Blocks add up, so a sharded
  caller computes its local block, ``psum``s the sums and counts and finishes with
  :func:`negnce_from_sums`. Positives are identified by global ids, never by local position.
* :func:`negnce_parts` / :func:`negnce_loss` / :func:`dmae_loss` are the single-device forms.
* :func:`exclude_same_video` removes the candidates that are a true match without being the
  query's own pair (two captions of one video in a batch, docs/method.md section 3.1): they are
  set to -inf, so they leave every denominator and can never be hard negatives.

Row-sharded S (each device holds rows ``ids`` of the global B x B matrix, all columns):
  text->video: ``negnce_block_sums(S_rows, query_ids=ids, key_ids=arange(B), query_diag=diag[ids],
  key_diag=diag, query_log_norm=logsumexp(S_rows / tau, axis=1))``;
  video->text: ``negnce_block_sums(S_rows.T, query_ids=arange(B), key_ids=ids, query_diag=diag,
  key_diag=diag[ids], query_log_norm=col_lse, query_rest=psum(negnce_query_rest(S_rows.T,
  query_log_norm=col_lse)))``,
  with ``diag`` the all-gathered global diagonal (B,) and ``col_lse`` the column logsumexp of
  S / tau combined over devices. Both are checked against the single-device loss in
  tests/test_losses.py.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

P_MIN, P_MAX = 1e-6, 1.0 - 1e-6  # clamp of P_ij (docs/method.md 3)
_LOG_P_MIN, _LOG_P_MAX = math.log(P_MIN), math.log1p(-P_MIN)


def _check_temperature(temperature) -> None:
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def _exclude_repeated_videos(sim, video_ids):
    """`exclude_same_video` for a square S whose pair i is row i and column i."""
    size = sim.shape[0]
    if tuple(video_ids.shape) != (size,) or not jnp.issubdtype(video_ids.dtype, jnp.integer):
        raise ValueError(f"video_ids must hold one integer video id per pair, shape ({size},), got "
                         f"{video_ids.dtype} {tuple(video_ids.shape)}")
    ids = jnp.arange(size)
    return exclude_same_video(sim, query_ids=ids, key_ids=ids, query_videos=video_ids, key_videos=video_ids)


def _check_square(sim) -> None:
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError("sim must be a square (B, B) similarity matrix with the matched pairs "
                         f"on its diagonal, got shape {tuple(sim.shape)}")


def exclude_same_video(sim, *, query_ids, key_ids, query_videos, key_videos):
    """S with S_qk = -inf where q and k are different pairs of the same video (docs/method.md 3.1).

    sim (R, K) for queries ``query_ids`` (R,) and candidates ``key_ids`` (K,) (global pair ids:
    the positive is ``query_ids == key_ids``); ``query_videos`` (R,) and ``key_videos`` (K,) the
    pairs' video ids. Such a candidate is a true match: it is removed from the softmax's
    denominator and from H rather than counted as a second positive, so that every query keeps
    exactly one positive, as in the release's batches, and a batch without a repeated video gives
    the unchanged loss. The gradient to a removed entry is zero.
    """
    same = (query_videos[:, None] == key_videos[None, :]) & (query_ids[:, None] != key_ids[None, :])
    return jnp.where(same, -jnp.inf, sim)


def count_same_video_pairs(video_ids) -> jax.Array:
    """Ordered pairs (i, j), i != j, of one batch that share a video (float32, for the logs)."""
    same = video_ids[:, None] == video_ids[None, :]
    return jnp.sum(same, dtype=jnp.float32) - video_ids.shape[0]


def negnce_query_rest(sim, *, query_log_norm, temperature=0.01):
    """R_q = sum of P_qk over the candidates with P_qk <= 1/2 (docs/method.md 3, numerics helper).

    A row has at most one P_qk > 1/2; for it 1 - P_qk = R_q, which float32 gets right where
    computing 1 - P_qk directly loses all digits as P_qk -> 1 (with tau = 0.01 the hard
    negatives NegNCE targets are exactly these). Sums over blocks of candidates add up, so a
    sharded caller psums the per-block values.
    """
    p = jnp.exp(sim / temperature - query_log_norm[:, None])
    return jnp.sum(jnp.where(p > 0.5, 0.0, p), axis=1)


def negnce_block_sums(sim, *, query_ids, key_ids, query_diag, key_diag, query_log_norm,
                      query_rest=None, temperature=0.01, delta=0.0) -> dict:
    """Per-block sums of the NegNCE terms of docs/method.md section 3 (queries along rows).

    sim (R, K): S_qk for R queries (global ids ``query_ids`` (R,)) and K candidates
    (global ids ``key_ids`` (K,)); ``query_diag`` (R,) = S_qq, ``key_diag`` (K,) = S_kk;
    ``query_log_norm`` (R,) = logsumexp_k'(S_qk' / tau) over the query's whole candidate set;
    ``query_rest`` (R,) = :func:`negnce_query_rest` over the whole candidate set (None: computed
    from this block, which must then hold complete rows).
    P_qk = exp(S_qk / tau - query_log_norm) clamped to [1e-6, 1 - 1e-6] (the clamp is applied
    to log P and to 1 - P, which is the same thing, with zero gradient outside).
    H = {q != k and (S_qk - S_qq + delta > 0 or S_qk - S_kk + delta > 0)} is a stop-gradient set.
    Returns dict(pos_sum = sum over positives of -log P, neg_sum = sum over H of -log(1 - P),
    num_hard = |H| (float32)).
    """
    log_p = sim / temperature - query_log_norm[:, None]
    p = jnp.exp(log_p)
    if query_rest is None:
        query_rest = negnce_query_rest(sim, query_log_norm=query_log_norm,
                                       temperature=temperature)
    top = p > 0.5
    one_minus_p = jnp.where(top, query_rest[:, None], 1.0 - p)
    # Where P > 1/2, log P = log1p(-(1 - P)) from the accurate 1 - P. Besides the digits, this
    # makes the upper clamp a comparison of a tiny rest with 1e-6 instead of log P with
    # log(1 - 1e-6): log P of a saturated positive is float32 rounding noise around 0 that XLA
    # may compute differently in the forward and backward fusions, which left a spurious
    # 1/tau gradient on clamped positives (seen with jax 0.12). Inner where: no NaN gradient.
    log_p = jnp.where(top, jnp.log1p(-jnp.where(top, one_minus_p, 0.0)), log_p)
    neg_log_p = -jnp.clip(log_p, _LOG_P_MIN, _LOG_P_MAX)
    neg_log_one_minus_p = -jnp.log(jnp.clip(one_minus_p, P_MIN, P_MAX))
    is_pos = query_ids[:, None] == key_ids[None, :]
    s = jax.lax.stop_gradient(sim)
    q_diag = jax.lax.stop_gradient(query_diag)[:, None]
    k_diag = jax.lax.stop_gradient(key_diag)[None, :]
    hard = ~is_pos & ((s - q_diag + delta > 0) | (s - k_diag + delta > 0))
    return dict(
        pos_sum=jnp.sum(jnp.where(is_pos, neg_log_p, 0.0)),
        neg_sum=jnp.sum(jnp.where(hard, neg_log_one_minus_p, 0.0)),
        num_hard=jnp.sum(hard, dtype=jnp.float32),
    )


def negnce_from_sums(sums: dict, num_queries, *, lambda_pos=1.0, lambda_neg=0.5) -> dict:
    """L_NegNCE of docs/method.md section 3 from (global) sums: means over queries and over H.

    Returns dict(loss, pos = mean_i -log P_ii, neg = mean_H -log(1 - P_ij) (0 if H is empty),
    num_hard). With H empty the loss is lambda_pos * pos only.
    """
    pos = sums["pos_sum"] / num_queries
    num_hard = sums["num_hard"]
    neg = sums["neg_sum"] / jnp.maximum(num_hard, 1.0)
    return dict(loss=lambda_pos * pos + lambda_neg * neg, pos=pos, neg=neg, num_hard=num_hard)


def negnce_parts(sim, *, temperature=0.01, lambda_pos=1.0, lambda_neg=0.5, delta=0.0,
                 video_ids=None) -> dict:
    """L_NegNCE(S) of docs/method.md section 3, one direction (rows are queries), with its parts.

    sim (B, B) with the matched pairs on the diagonal. ``video_ids`` (B,), optional: the video of
    each pair; off-diagonal pairs of one video are no candidates (:func:`exclude_same_video`).
    Returns dict(loss, pos, neg, num_hard).
    """
    _check_square(sim)
    _check_temperature(temperature)
    sim = sim.astype(jnp.promote_types(sim.dtype, jnp.float32))
    ids = jnp.arange(sim.shape[0])
    if video_ids is not None:
        sim = _exclude_repeated_videos(sim, video_ids)
    diag = jnp.diagonal(sim)  # taken after the exclusion, which never touches it: one use of sim, one gradient path
    sums = negnce_block_sums(
        sim, query_ids=ids, key_ids=ids, query_diag=diag, key_diag=diag,
        query_log_norm=jax.nn.logsumexp(sim / temperature, axis=1),
        temperature=temperature, delta=delta)
    return negnce_from_sums(sums, sim.shape[0], lambda_pos=lambda_pos, lambda_neg=lambda_neg)


def negnce_loss(sim, *, temperature=0.01, lambda_pos=1.0, lambda_neg=0.5, delta=0.0, video_ids=None):
    """L_NegNCE(S) of docs/method.md section 3 (rows are queries); scalar."""
    return negnce_parts(sim, temperature=temperature, lambda_pos=lambda_pos,
                        lambda_neg=lambda_neg, delta=delta, video_ids=video_ids)["loss"]


def dmae_loss_and_parts(sim, *, temperature=0.01, lambda_pos=1.0, lambda_neg=0.5, delta=0.0,
                        video_ids=None):
    """L_DMAE = 1/2 [L_NegNCE(S) + L_NegNCE(S^T)] of docs/method.md section 3, with parts.

    Returns (loss, parts) with parts = {loss, t2v_loss, t2v_pos, t2v_neg, t2v_num_hard,
    v2t_loss, v2t_pos, v2t_neg, v2t_num_hard}, plus same_video_pairs when ``video_ids`` (B,)
    is given (same-video pairs are then no negatives in either direction, section 3.1).
    lambda_neg = 0 gives CLIP4Clip's symmetric InfoNCE (exactly, as long as no P_ii reaches
    the clamp).
    """
    kw = dict(temperature=temperature, lambda_pos=lambda_pos, lambda_neg=lambda_neg, delta=delta)
    if video_ids is not None:  # once for both directions (the mask is symmetric)
        _check_square(sim)
        sim = _exclude_repeated_videos(sim, video_ids)
    t2v = negnce_parts(sim, **kw)
    v2t = negnce_parts(sim.T, **kw)
    loss = 0.5 * (t2v["loss"] + v2t["loss"])
    parts = {"loss": loss}
    if video_ids is not None:
        parts["same_video_pairs"] = count_same_video_pairs(jnp.asarray(video_ids))
    for prefix, d in (("t2v", t2v), ("v2t", v2t)):
        parts.update({f"{prefix}_{k}": v for k, v in d.items()})
    return loss, parts


def dmae_loss(sim, *, temperature=0.01, lambda_pos=1.0, lambda_neg=0.5, delta=0.0, video_ids=None):
    """L_DMAE = 1/2 [L_NegNCE(S) + L_NegNCE(S^T)] of docs/method.md section 3; scalar."""
    return dmae_loss_and_parts(sim, temperature=temperature, lambda_pos=lambda_pos,
                               lambda_neg=lambda_neg, delta=delta, video_ids=video_ids)[0]
