"""DMAE text-video similarity (docs/method.md section 2), computed blockwise over videos.

Conventions shared by every function here:

* Features are expected to be **L2-normalised already** (docs/method.md section 1); nothing here
  renormalises them, so a dot product is a cosine.
* Masks are boolean (True = real token). Maxima and argmaxima run over valid tokens and frames
  only (docs/method.md section 2, "chosen"); padded positions never win a maximum and carry zero
  weight, so their content does not matter.
* The result ``S`` has texts as rows and videos as columns, in float32 whatever the input
  dtype (the dot products accumulate in float32).
* The per-pair token grid ``(B_t, B_v, L, T)`` is never materialised: videos are processed in
  blocks of ``block_size`` with :func:`jax.lax.map`, each block under :func:`jax.checkpoint`,
  so the forward pass holds one ``(B_t, block_size, L, T)`` block at a time and the backward
  pass stores only each block's inputs and recomputes the rest.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

RELEASE_INTERACTIONS = ("ti", "wti", "att_ti", "att_wti")
"""The release's interactions, with its semantics (docs/method.md section 2.3): 'ti' and 'wti'
score the sentence token against the frames only; words enter through ``att_*`` alone, and the
'wti' word weights omega * softmax are not renormalised."""
OUR_INTERACTIONS = ("words_ti", "words_wti_norm", "att_wti_norm")
"""Ours: DRL's token-wise interaction on the words ('words_*'), and 'wti' word weights
renormalised to sum 1 ('*_norm') so both branches of S stay weighted means."""
INTERACTIONS = RELEASE_INTERACTIONS + OUR_INTERACTIONS
"""Allowed ``interaction`` values of :func:`dmae_similarity`."""
WEIGHTED_INTERACTIONS = ("wti", "att_wti", "words_wti_norm", "att_wti_norm")
"""Interactions with learned token weights: they need :class:`WTIHeads`."""
WORD_LOGIT_INTERACTIONS = ("att_wti", "words_wti_norm", "att_wti_norm")
"""Weighted interactions that score the words, so need word logits ('wti' weights frames only)."""
ALL_INTERACTIONS = INTERACTIONS + ("cosine",)
"""Plus the CLIP4Clip baseline: cosine of the sentence token and the mean-pooled frames."""


# --------------------------------------------------------------------------------------------
# Small numeric helpers.
# --------------------------------------------------------------------------------------------
def _normalise_weights(w: jax.Array) -> jax.Array:
    """w / sum(w) over the last axis; an all-zero row stays all zero (no NaN)."""
    total = jnp.sum(w, axis=-1, keepdims=True)
    return w / jnp.where(total > 0, total, 1.0)


def _masked_exp(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """exp(logits - max over valid), 0 on invalid positions: an unnormalised masked softmax.

    NaN-free in value and gradient even for rows without a valid position or with huge
    logits on padding (the exponent of a padded position is 0, not its logit).
    """
    logits = logits.astype(jnp.float32)
    row_max = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True)
    row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    return jnp.where(mask, jnp.exp(jnp.where(mask, logits - row_max, 0.0)), 0.0)


def _set_similarity(x, x_mask, alpha, frames, frame_mask, beta, *, visual_attention, gamma):
    """S(X_a, F_b) of docs/method.md 2.3 ('ti' form) for A token sets against a block of B videos.

    x (A, n, D), x_mask (A, n), alpha (A, n); frames (B, T, D), frame_mask (B, T), beta (B, T).
    Returns (A, B) float32.
    """
    # s_ab(t, v) = <x_at, f_bv> m_at m_bv  (the only (A, B, n, T) tensor, one block's worth).
    s = jnp.einsum("and,btd->abnt", x, frames, preferred_element_type=jnp.float32)
    s = jnp.where(x_mask[:, None, :, None] & frame_mask[None, :, None, :], s, 0.0)

    # Text -> video: best valid frame v* of each text token (argmax carries no gradient; the
    # value is gathered from s, so a video without valid frames yields 0, never -inf).
    v_star = jnp.argmax(jnp.where(frame_mask[None, :, None, :], s, -jnp.inf), axis=-1)
    t2v = jnp.take_along_axis(s, v_star[..., None], axis=-1)[..., 0]  # (A, B, n)

    if visual_attention:  # docs/method.md 2.1
        num_videos, num_frames = frame_mask.shape
        c = jnp.einsum("bvd,bud->bvu", frames, frames, preferred_element_type=jnp.float32)
        neighbour_ok = (frame_mask[:, :, None] & frame_mask[:, None, :]
                        & ~jnp.eye(num_frames, dtype=bool))
        nn_idx = jnp.argmax(jnp.where(neighbour_ok, c, -jnp.inf), axis=-1)  # (B, T)
        c_nn = jnp.take_along_axis(c, nn_idx[..., None], axis=-1)[..., 0]
        c_nn = jnp.where(jnp.any(neighbour_ok, axis=-1), c_nn, 0.0)  # one valid frame -> 0
        b_idx = jnp.arange(num_videos)[None, :, None]
        v_2star = nn_idx[b_idx, v_star]  # (A, B, n)
        s_2star = jnp.take_along_axis(s, v_2star[..., None], axis=-1)[..., 0]
        t2v = t2v + gamma * c_nn[b_idx, v_star] * s_2star

    # Video -> text: best valid token of each frame (no visual attention on this branch).
    if x.shape[1] == 1:
        v2t = s[:, :, 0, :]
    else:
        t_star = jnp.argmax(jnp.where(x_mask[:, None, :, None], s, -jnp.inf), axis=2)
        v2t = jnp.take_along_axis(s, t_star[:, :, None, :], axis=2)[:, :, 0, :]  # (A, B, T)

    # The grid comes first in these products. jaxlib 0.10.2's CPU compiler hands the token-grid
    # product and these sums to YNNPACK as one fusion, which returns wrong values for rows 512 and
    # beyond when the broadcast weights are the first operand (tests/test_similarity.py,
    # test_more_than_512_texts_against_wide_video_blocks).
    return 0.5 * (jnp.sum(t2v * alpha[:, None, :], axis=-1)
                  + jnp.sum(v2t * beta[None, :, :], axis=-1))


def _check_shape(name: str, array, shape: tuple, what: str) -> None:
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {what} = {tuple(shape)}, "
                         f"got {tuple(array.shape)}")


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------
def dmae_similarity(text_cls, words, word_weights, word_mask, frames, frame_mask, *,
                    interaction: str = "att_ti", visual_attention: bool = True,
                    textual_attention: bool = True, gamma: float = 0.5, block_size: int = 64,
                    word_logits: Optional[jax.Array] = None,
                    frame_logits: Optional[jax.Array] = None) -> jax.Array:
    """DMAE similarity S (B_t, B_v) of docs/method.md section 2 (eqs. 2.1-2.3).

    Args (all features L2-normalised by the caller):
      text_cls (B_t, D): sentence tokens t_cls.
      words (B_t, L, D), word_mask bool (B_t, L), word_weights (B_t, L): omega/m of 2.2, values
        in {0, 1, 2}; omega = m * word_weights, or omega = m when ``textual_attention=False``.
      frames (B_v, T, D), frame_mask bool (B_v, T).
      interaction: one of :data:`INTERACTIONS` (docs/method.md section 2.3). With S(X, F) the
        set similarity of 2.3, alpha the text token weights, beta the frame weights,
        u = uniform over valid frames, g_t/g_v = word_logits/frame_logits:
          'ti'             S({t_cls}, F), alpha = 1, beta = u                       (release)
          'wti'            S({t_cls}, F), alpha = 1, beta = softmax_v(g_v)           (release)
          'att_ti'         1/2[S({t_cls}, F) + S(W, F)], alpha_W = omega / sum omega, beta = u
          'att_wti'        as 'att_ti' with alpha_W = omega * softmax_{omega>0}(g_t) (sum in
                           [1, 2], not renormalised), beta = softmax_v(g_v)         (release)
          'words_ti'       S(W, F), alpha = omega / sum omega, beta = u (DRL's TI)
          'words_wti_norm' S(W, F), alpha = omega * exp(g_t) / sum(omega * exp(g_t)),
                           beta = softmax_v(g_v)
          'att_wti_norm'   1/2[S({t_cls}, F) + S(W, F)] with the weights of 'words_wti_norm'
        The sentence token always has alpha = 1; the words and the sentence share beta.
      visual_attention: add gamma * C(v*, v**) * s(t, v**) to the text->video branch (2.1).
      word_logits (B_t, L): required by :data:`WORD_LOGIT_INTERACTIONS`; frame_logits (B_v, T):
        required by :data:`WEIGHTED_INTERACTIONS`; both from :class:`WTIHeads`.
      block_size: videos per block; B_v is padded to a multiple with masked videos.

    A video without valid frames or a text without valid words gives finite scores and
    gradients (its weights are all zero). Ties in an argmax go to the lowest index.
    """
    if interaction not in INTERACTIONS:
        raise ValueError(f"interaction must be one of {INTERACTIONS}, got {interaction!r}")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if text_cls.ndim != 2:
        raise ValueError(f"text_cls must have shape (B_t, D), got {tuple(text_cls.shape)}")
    if frames.ndim != 3:
        raise ValueError(f"frames must have shape (B_v, T, D), got {tuple(frames.shape)}")
    num_texts, dim = text_cls.shape
    if words.ndim != 3:
        raise ValueError(f"words must have shape (B_t, L, D), got {tuple(words.shape)}")
    num_words = words.shape[1]
    num_videos, num_frames = frames.shape[:2]
    _check_shape("words", words, (num_texts, num_words, dim), "(B_t, L, D)")
    _check_shape("word_weights", word_weights, (num_texts, num_words), "(B_t, L)")
    _check_shape("word_mask", word_mask, (num_texts, num_words), "(B_t, L)")
    _check_shape("frames", frames, (num_videos, num_frames, dim), "(B_v, T, D) with D of text_cls")
    _check_shape("frame_mask", frame_mask, (num_videos, num_frames), "(B_v, T)")
    weighted = interaction in WEIGHTED_INTERACTIONS
    use_sentence = not interaction.startswith("words_")
    use_words = interaction not in ("ti", "wti")
    if weighted:
        if frame_logits is None or (use_words and word_logits is None):
            raise ValueError(f"interaction={interaction!r} needs "
                             + ("word_logits (B_t, L) and " if use_words else "")
                             + "frame_logits (B_v, T) (see WTIHeads); got None")
        if use_words:
            _check_shape("word_logits", word_logits, (num_texts, num_words), "(B_t, L)")
        _check_shape("frame_logits", frame_logits, (num_videos, num_frames), "(B_v, T)")

    word_mask = jnp.asarray(word_mask).astype(bool)
    frame_mask = jnp.asarray(frame_mask).astype(bool)
    if textual_attention:
        omega = jnp.where(word_mask, jnp.asarray(word_weights, jnp.float32), 0.0)
    else:
        omega = word_mask.astype(jnp.float32)
    if not use_words:
        alpha = jnp.zeros_like(omega)  # unused: the words never enter
    elif interaction == "att_wti":
        # The release: softmax over the words with omega > 0, then times omega, no renormalisation.
        alpha = omega * _normalise_weights(_masked_exp(word_logits, word_mask & (omega > 0)))
    elif weighted:
        alpha = _normalise_weights(omega * _masked_exp(word_logits, word_mask))
    else:
        alpha = _normalise_weights(omega)
    if weighted:
        beta = _normalise_weights(_masked_exp(frame_logits, frame_mask))
    else:
        beta = _normalise_weights(frame_mask.astype(jnp.float32))
    cls_set = text_cls[:, None, :]
    cls_mask = jnp.ones((num_texts, 1), bool)
    cls_alpha = jnp.ones((num_texts, 1), jnp.float32)

    def block_similarity(block):
        f, f_mask, f_beta = block
        kw = dict(visual_attention=visual_attention, gamma=gamma)
        sims = []
        if use_sentence:
            sims.append(_set_similarity(cls_set, cls_mask, cls_alpha, f, f_mask, f_beta, **kw))
        if use_words:
            sims.append(_set_similarity(words, word_mask, alpha, f, f_mask, f_beta, **kw))
        return sims[0] if len(sims) == 1 else 0.5 * (sims[0] + sims[1])  # (B_t, block)

    block = min(block_size, num_videos)
    num_blocks = -(-num_videos // block)
    if num_blocks == 1:
        return block_similarity((frames, frame_mask, beta))
    pad = num_blocks * block - num_videos
    if pad:  # masked filler videos: zero features, no valid frame, zero weights
        frames = jnp.pad(frames, ((0, pad), (0, 0), (0, 0)))
        frame_mask = jnp.pad(frame_mask, ((0, pad), (0, 0)))
        beta = jnp.pad(beta, ((0, pad), (0, 0)))
    blocks = (frames.reshape(num_blocks, block, num_frames, dim),
              frame_mask.reshape(num_blocks, block, num_frames),
              beta.reshape(num_blocks, block, num_frames))
    out = jax.lax.map(jax.checkpoint(block_similarity, prevent_cse=False), blocks)  # (nb, B_t, bs)
    out = jnp.transpose(out, (1, 0, 2)).reshape(num_texts, num_blocks * block)
    return out[:, :num_videos]


def pooled_cosine_similarity(text_cls, frames, frame_mask) -> jax.Array:
    """Baseline S (B_t, B_v) = <t_cls, normalise(mean over valid frames of F)> (CLIP4Clip meanP).

    The ablation baseline of docs/method.md section 2.3 ("cosine"); a video
    without valid frames scores 0.
    """
    frame_mask = jnp.asarray(frame_mask, bool)
    _check_shape("frames", frames, (frames.shape[0], frame_mask.shape[1], text_cls.shape[1]), "(B_v, T, D)")
    weights = _normalise_weights(frame_mask.astype(jnp.float32))
    pooled = jnp.einsum("bt,btd->bd", weights, frames.astype(jnp.float32))
    sq = jnp.sum(pooled * pooled, axis=-1, keepdims=True)
    pooled = pooled * jax.lax.rsqrt(jnp.maximum(sq, 1e-24))
    return jnp.einsum("ad,bd->ab", text_cls.astype(jnp.float32), pooled)


class TokenLogitHead(nn.Module):
    """g of the weighted interactions for one modality: per-token logit (B, N, D) -> (B, N).

    ``mlp=False``: Linear(D -> 1); ``mlp=True``: Linear(D -> D), ReLU, Linear(D -> 1).
    """

    mlp: bool = False

    @nn.compact
    def __call__(self, x):
        if x.ndim != 3:
            raise ValueError(f"token features must have shape (B, N, D), got {tuple(x.shape)}")
        if self.mlp:
            x = nn.relu(nn.Dense(x.shape[-1], name="hidden")(x))
        return nn.Dense(1, name="out")(x)[..., 0]


class WTIHeads(nn.Module):
    """Token-weight heads g_t, g_v of :data:`WEIGHTED_INTERACTIONS` (docs/method.md 2.3, DRL).

    Returns (word_logits (B, L), frame_logits (B, T)); masking and softmax happen inside
    :func:`dmae_similarity`. Each head depends on its own modality only, so evaluation can
    compute text and video logits separately (`word_head`, `frame_head`).
    """

    mlp: bool = False

    def setup(self):
        self.word_head = TokenLogitHead(self.mlp)
        self.frame_head = TokenLogitHead(self.mlp)

    def __call__(self, words, frames):
        return self.word_head(words), self.frame_head(frames)
