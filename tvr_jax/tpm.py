"""TPM-CL: Triplet Partial Margin Contrastive Learning (docs/method.md section 4, training only).

Pieces, in the order the model uses them:

1. :class:`CrossModalWeightPredictor` (4.1) predicts, for each matched pair, the importance of
   one modality's tokens given the other modality (w^t over words, w^v over visual tokens).
2. :func:`adaptive_token_mask` (4.2) marks the most important tokens (cumulative weight < rho);
   :func:`masked_text_globals` builds t_g and the masked t^p_g from w^t, and
   :func:`mask_visual_tokens` zeroes the marked visual tokens (V').
3. :func:`tpm_loss` (4.3) applies the margin between each matched pair and its partially masked
   self, from features already computed (with ``seqTransf`` the model re-runs V' through the
   temporal module before calling it). Only the B matched pairs are scored: O(B).

Zeroed tokens stay in the valid set with zero features (the release's semantics): they still
take part in every max and mean of :func:`pair_similarity`, contributing <x, 0> = 0.
Features are expected L2-normalised (t_cls, words, visual tokens); t_g is renormalised here.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

PARTIAL_TYPES = (2, 3, 4)
"""Allowed ``partial_type`` values (docs/method.md 4.3): 2 = L1 + L2, 3 = L3, 4 = L1 + L2 + L3."""


def _normalise_weights(w):
    total = jnp.sum(w, axis=-1, keepdims=True)
    return w / jnp.where(total > 0, total, 1.0)


def _l2_normalise(x, eps=1e-12):
    """x / ||x|| with a safe denominator (a zero vector stays zero, gradient finite)."""
    sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def _masked_fraction(marked, mask):
    """Mean over the batch of (#marked / #valid) tokens."""
    valid = jnp.sum(mask, axis=-1).astype(jnp.float32)
    frac = jnp.sum(marked, axis=-1).astype(jnp.float32) / jnp.maximum(valid, 1.0)
    return jnp.mean(frac)


def _check_tokens(name, x, mask, batch=None, dim=None):
    if x.ndim != 3:
        raise ValueError(f"{name} must have shape (B, N, D), got {tuple(x.shape)}")
    if mask.shape != x.shape[:2]:
        raise ValueError(f"{name} mask must have shape {tuple(x.shape[:2])} (B, N), "
                         f"got {tuple(mask.shape)}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name} must have batch size {batch}, got {x.shape[0]}")
    if dim is not None and x.shape[2] != dim:
        raise ValueError(f"{name} must have feature size {dim}, got {x.shape[2]}")


class CrossModalWeightPredictor(nn.Module):
    """Cross-modal weight predictor (XWP) of docs/method.md 4.1: w (B, n_k), sum 1 over valid keys.

    q~ = Linear_{n_q -> n_k}(q^T)^T (token-axis mixing, no bias); h = [q~ ; k] (B, n_k, 2D);
    a = sigmoid(W2 GELU(W1 LayerNorm(h))) with the LayerNorm over the whole (n_k, 2D) block
    (learned scale/bias of shape (n_k, 2D), epsilon 1e-5 as torch), W1: 2D -> D/2, W2: D/2 -> 1,
    no biases, exact GELU; w = a / sum a. Padded keys get weight 0 before normalising (chosen).
    Padded query and key tokens are zeroed before use, so w does not depend on their content.
    """

    n_q: int
    n_k: int
    dim: int
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, q, q_mask, k, k_mask):
        if self.dim < 2:
            raise ValueError(f"dim must be >= 2 (W1 maps 2D -> D/2), got {self.dim}")
        _check_tokens("q", q, q_mask, dim=self.dim)
        _check_tokens("k", k, k_mask, batch=q.shape[0], dim=self.dim)
        if q.shape[1] != self.n_q or k.shape[1] != self.n_k:
            raise ValueError(f"q must have n_q={self.n_q} tokens and k n_k={self.n_k} tokens "
                             f"(fixed by the config), got {q.shape[1]} and {k.shape[1]}")
        q_mask = jnp.asarray(q_mask).astype(bool)
        k_mask = jnp.asarray(k_mask).astype(bool)
        q = jnp.where(q_mask[..., None], q, 0)
        k = jnp.where(k_mask[..., None], k, 0)
        q_mixed = nn.Dense(self.n_k, use_bias=False, name="token_mix")(jnp.swapaxes(q, 1, 2))
        h = jnp.concatenate([jnp.swapaxes(q_mixed, 1, 2), k], axis=-1)  # (B, n_k, 2D)
        h = nn.LayerNorm(epsilon=self.epsilon, reduction_axes=(-2, -1), feature_axes=(-2, -1),
                         use_fast_variance=False, name="norm")(h)
        h = nn.gelu(nn.Dense(self.dim // 2, use_bias=False, name="fc1")(h), approximate=False)
        a = nn.sigmoid(nn.Dense(1, use_bias=False, name="fc2")(h)[..., 0])
        return _normalise_weights(jnp.where(k_mask, a, 0.0))


def adaptive_token_mask(weights, mask, rho: float = 0.6):
    """Adaptive token masking M of docs/method.md 4.2: True where a token is to be zeroed.

    Sort valid tokens by weight, descending (ties: lower index first); with c the cumulative
    weight including the token itself, mark the tokens with c < rho. Padding is never marked,
    and the last valid token in that order is never marked, so at least one valid token stays
    (chosen; it only matters when the valid weights sum to less than rho). A discrete choice:
    no gradient flows through it.
    """
    if weights.shape != mask.shape or weights.ndim != 2:
        raise ValueError("weights and mask must both have shape (B, N), got "
                         f"{tuple(weights.shape)} and {tuple(mask.shape)}")
    mask = jnp.asarray(mask).astype(bool)
    w = jax.lax.stop_gradient(jnp.where(mask, weights, 0.0)).astype(jnp.float32)
    order = jnp.argsort(jnp.where(mask, -w, jnp.inf), axis=-1, stable=True)
    cumulative = jnp.cumsum(jnp.take_along_axis(w, order, axis=-1), axis=-1)
    rank = jnp.arange(w.shape[-1])
    num_valid = jnp.sum(mask, axis=-1, keepdims=True)
    marked_sorted = (cumulative < rho) & (rank < num_valid - 1)
    marked = jnp.take_along_axis(marked_sorted, jnp.argsort(order, axis=-1), axis=-1)
    return marked & mask


def masked_text_globals(words, word_mask, word_weights, rho: float = 0.6, *,
                        normalize_masked_text: bool = False):
    """t_g (4.1) and the masked text global t^p_g (4.2) from video-conditioned word weights.

    t_g = normalise(sum_l w_l W_l); t^p_g = sum_l w_l W'_l with W' the words zeroed by
    :func:`adaptive_token_mask` (weights not renormalised; t^p_g is not L2-normalised unless
    ``normalize_masked_text``). Returns (t_g (B, D), t_pg (B, D), marked (B, L) bool).
    """
    _check_tokens("words", words, word_mask)
    if word_weights.shape != word_mask.shape:
        raise ValueError(f"word_weights must have shape {tuple(word_mask.shape)} (B, L), got "
                         f"{tuple(word_weights.shape)}")
    word_mask = jnp.asarray(word_mask).astype(bool)
    words = jnp.where(word_mask[..., None], words, 0)
    w = jnp.where(word_mask, word_weights, 0.0)
    t_g = _l2_normalise(jnp.einsum("bl,bld->bd", w, words))
    marked = adaptive_token_mask(word_weights, word_mask, rho)
    t_pg = jnp.einsum("bl,bld->bd", w, jnp.where(marked[..., None], 0, words))
    if normalize_masked_text:
        t_pg = _l2_normalise(t_pg)
    return t_g, t_pg, marked


def mask_visual_tokens(visual, visual_mask, visual_weights, rho: float = 0.6, *,
                       straight_through: bool = True):
    """Masked visual tokens V' = (1 - M) V of docs/method.md 4.2, M from text-conditioned weights.

    Returns (V' (B, N_v, D), marked (B, N_v) bool). The validity mask is unchanged: zeroed
    tokens remain valid tokens with zero features.

    The weights w^v only choose M, a discrete choice, so as the spec (and the release) has it
    the text-conditioned predictor gets no gradient at all. ``straight_through=True`` (chosen,
    default) keeps the forward value exactly and lets the gradient pass as if
    V'_n = (1 - M_n - w_n) V_n: more weight on a token means masking more of it. ``False``
    gives the release's behaviour (the predictor stays at its initial values).
    """
    _check_tokens("visual", visual, visual_mask)
    marked = adaptive_token_mask(visual_weights, visual_mask, rho)
    keep = jnp.where(marked, 0.0, 1.0)
    if straight_through:
        w = jnp.where(jnp.asarray(visual_mask, bool), visual_weights, 0.0)
        keep = keep - (w - jax.lax.stop_gradient(w))  # exactly `keep` forward
    return visual * keep[..., None].astype(visual.dtype), marked


def pair_similarity(x, x_mask, y, y_mask):
    """S_pair(X, Y) of docs/method.md 4.3 for B matched pairs: (B,).

    S_pair = 1/2 [mean_x max_y <x, y> + mean_y max_x <x, y>] over valid tokens of each side;
    a side without valid tokens contributes 0 (finite value and gradient).
    """
    _check_tokens("x", x, x_mask)
    _check_tokens("y", y, y_mask, batch=x.shape[0], dim=x.shape[2])
    x_mask = jnp.asarray(x_mask).astype(bool)
    y_mask = jnp.asarray(y_mask).astype(bool)
    s = jnp.einsum("bnd,bmd->bnm", x, y, preferred_element_type=jnp.float32)
    valid = x_mask[:, :, None] & y_mask[:, None, :]
    s_masked = jnp.where(valid, s, -jnp.inf)
    x2y = jnp.where(jnp.any(valid, axis=2), jnp.max(s_masked, axis=2), 0.0)  # (B, n)
    y2x = jnp.where(jnp.any(valid, axis=1), jnp.max(s_masked, axis=1), 0.0)  # (B, m)
    mean_x = jnp.sum(jnp.where(x_mask, x2y, 0.0), -1) / jnp.maximum(jnp.sum(x_mask, -1), 1)
    mean_y = jnp.sum(jnp.where(y_mask, y2x, 0.0), -1) / jnp.maximum(jnp.sum(y_mask, -1), 1)
    return 0.5 * (mean_x + mean_y)


def tpm_loss(t_cls, words, word_mask, word_weights, visual, visual_mask,
             visual_masked: Optional[jax.Array] = None,
             visual_masked_mask: Optional[jax.Array] = None, *,
             partial_type: int = 4, margin: float = 0.6, rho: float = 0.6,
             normalize_masked_text: bool = False,
             visual_marked: Optional[jax.Array] = None):
    """L_TPM of docs/method.md 4.3 on the B matched pairs: (loss, parts).

    Args: t_cls (B, D); words (B, L, D) + word_mask; word_weights w^t (B, L) from the
    video-conditioned :class:`CrossModalWeightPredictor`; visual tokens V (B, N_v, D) +
    visual_mask; visual_masked V' (B, N_v', D) from :func:`mask_visual_tokens` (possibly re-run
    through the temporal module) with visual_masked_mask (default visual_mask), needed by
    partial types 2 and 4; visual_marked (B, N_v) optional, only for the logged fraction.
      L1 = mean [m - S_pair(t_cls, V) + S_pair(t_cls, V')]_+
      L2 = mean [m - S_pair(t_g, V)   + S_pair(t_g, V')]_+
      L3 = mean [m - S_pair(t_g, V)   + S_pair(t^p_g, V)]_+
    partial_type 2: L1 + L2; 3: L3; 4: L1 + L2 + L3. parts holds loss, the computed L terms
    (l1, l2, l3), text_masked_frac and (if visual_marked is given) visual_masked_frac.
    """
    if partial_type not in PARTIAL_TYPES:
        raise ValueError(f"partial_type must be one of {PARTIAL_TYPES}, got {partial_type!r}")
    if t_cls.ndim != 2:
        raise ValueError(f"t_cls must have shape (B, D), got {tuple(t_cls.shape)}")
    batch, dim = t_cls.shape
    _check_tokens("words", words, word_mask, batch=batch, dim=dim)
    _check_tokens("visual", visual, visual_mask, batch=batch, dim=dim)
    uses_visual_masking = partial_type in (2, 4)
    if uses_visual_masking:
        if visual_masked is None:
            raise ValueError(f"partial_type={partial_type} needs visual_masked (V' from "
                             "mask_visual_tokens); got None")
        if visual_masked_mask is None:
            visual_masked_mask = visual_mask
        _check_tokens("visual_masked", visual_masked, visual_masked_mask, batch=batch, dim=dim)

    t_g, t_pg, text_marked = masked_text_globals(
        words, word_mask, word_weights, rho, normalize_masked_text=normalize_masked_text)
    one = jnp.ones((batch, 1), bool)
    cls_set, g_set, pg_set = t_cls[:, None], t_g[:, None], t_pg[:, None]
    s_g_v = pair_similarity(g_set, one, visual, visual_mask)

    def hinge(anchor, partial):
        return jnp.mean(jax.nn.relu(margin - anchor + partial))

    parts = {}
    if uses_visual_masking:
        parts["l1"] = hinge(pair_similarity(cls_set, one, visual, visual_mask),
                            pair_similarity(cls_set, one, visual_masked, visual_masked_mask))
        parts["l2"] = hinge(s_g_v, pair_similarity(g_set, one, visual_masked, visual_masked_mask))
    if partial_type in (3, 4):
        parts["l3"] = hinge(s_g_v, pair_similarity(pg_set, one, visual, visual_mask))
    loss = sum(parts.values())
    parts["loss"] = loss
    parts["text_masked_frac"] = _masked_fraction(text_marked, word_mask)
    if visual_marked is not None:
        parts["visual_masked_frac"] = _masked_fraction(visual_marked, visual_mask)
    return loss, parts
