"""The retrieval model around the CLIP towers: the feature sets of docs/method.md section 1.

    video (B, T, H, W, 3) + video_mask (B, T)
      -> CLIP image tower per frame -> frame token (+ K selected patch tokens, TS2-Net style)
      -> temporal module (`meanP`: none; `seqTransf`: V + Transformer(V + position))
      -> V (B, N_v, D), N_v = T(1+K), and F = the frame positions of V; L2-normalised.
    text_ids (B, L) + text_mask (B, L) + word_weights (B, L)
      -> CLIP text tower -> t_cls (end-of-text token), W (every position between the start
         and end tokens, masked), omega = word weights on word positions; L2-normalised.

Besides the towers the model owns the new modules: the temporal transformer, the patch-token
scorer, the `wti` heads and the two TPM-CL weight predictors. Their parameters live beside
`clip` at the top level, so `param_labels` can give CLIP weights and new modules different
learning rates (docs/method.md section 5).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from tvr_jax import similarity, tpm
from tvr_jax.models.clip import CLIP, CLIPConfig, Transformer, end_of_text_index
from tvr_jax.models.clip_weights import stack_layers, unstack_layers

TEMPORAL_MODULES = ("meanP", "seqTransf")


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """Model switches of docs/method.md sections 1, 2.3 and 4 (loss weights live with the loss)."""

    clip: CLIPConfig = CLIPConfig()
    max_frames: int = 12
    max_words: int = 32
    temporal: str = "seqTransf"
    temporal_layers: int = 4
    patch_tokens: int = 0  # K selected patch tokens per frame; 0 = frame token only
    interaction: str = "att_ti"  # similarity.ALL_INTERACTIONS; the weighted ones build the wti heads
    wti_mlp: bool = False
    tpm: bool = True  # build the two cross-modal weight predictors

    def __post_init__(self):
        problems = []
        if self.temporal not in TEMPORAL_MODULES:
            problems.append(f"temporal={self.temporal!r} (allowed: {TEMPORAL_MODULES})")
        if self.interaction not in similarity.ALL_INTERACTIONS:
            problems.append(f"interaction={self.interaction!r} (allowed: {similarity.ALL_INTERACTIONS})")
        if self.temporal == "seqTransf" and self.clip.embed_dim != self.clip.text_width:
            problems.append(
                f"temporal='seqTransf' runs CLIP text blocks on D={self.clip.embed_dim} features, so it "
                f"needs clip.embed_dim == clip.text_width (got {self.clip.text_width})"
            )
        if self.temporal == "seqTransf" and self.max_frames > self.clip.context_length:
            problems.append(f"max_frames={self.max_frames} > clip.context_length={self.clip.context_length} "
                            "(frame positions are initialised from CLIP's text positions)")
        num_patches = self.clip.grid_size**2
        if not 0 <= self.patch_tokens <= num_patches:
            problems.append(f"patch_tokens={self.patch_tokens} must be in [0, {num_patches}]")
        if self.max_words > self.clip.context_length or self.max_words < 3:
            problems.append(f"max_words={self.max_words} must be in [3, {self.clip.context_length}]")
        if self.max_frames < 1 or self.temporal_layers < 1:
            problems.append("max_frames and temporal_layers must be >= 1")
        if problems:
            raise ValueError("invalid RetrievalConfig: " + "; ".join(problems))

    @property
    def tokens_per_frame(self) -> int:
        return 1 + self.patch_tokens

    @property
    def num_visual_tokens(self) -> int:
        return self.max_frames * self.tokens_per_frame

    @property
    def uses_wti_heads(self) -> bool:
        return self.interaction in similarity.WEIGHTED_INTERACTIONS

    @property
    def uses_word_logits(self) -> bool:
        # The release's 'wti' weights frames only (its sentence token has weight 1): no word head.
        return self.interaction in similarity.WORD_LOGIT_INTERACTIONS


def l2_normalise(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / ||x|| in float32; a zero vector stays zero with a finite gradient."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def straight_through_top_k(scores: jax.Array, k: int) -> jax.Array:
    """(..., N) scores -> (..., k, N) selection: hard top-k one-hots forward, softmax gradient.

    TS2-Net relaxes top-K with perturbed maxima; a straight-through estimator gives the scorer a
    gradient with one deterministic top-k instead of many noisy ones.
    """
    idx = jax.lax.top_k(jax.lax.stop_gradient(scores), k)[1]  # (..., k), descending score
    hard = jax.nn.one_hot(idx, scores.shape[-1], dtype=scores.dtype)
    soft = jax.nn.softmax(scores, axis=-1)[..., None, :]
    return hard + soft - jax.lax.stop_gradient(soft)


class PatchTokenSelector(nn.Module):
    """TS2-Net token selection: score each patch given its frame token, keep the top K."""

    k: int

    @nn.compact
    def __call__(self, cls, patches):  # (N, D), (N, P, D) -> (N, K, D)
        dim = patches.shape[-1]
        h = jnp.concatenate([patches, jnp.broadcast_to(cls[:, None], patches.shape)], axis=-1)
        h = nn.gelu(nn.Dense(dim // 2, name="fc1")(nn.LayerNorm(name="norm")(h)))
        scores = nn.Dense(1, name="fc2")(h)[..., 0]
        return jnp.einsum("nkp,npd->nkd", straight_through_top_k(scores, self.k), patches)


class RetrievalModel(nn.Module):
    """CLIP towers + temporal module + new modules; methods return the feature sets."""

    config: RetrievalConfig

    def setup(self):
        cfg = self.config
        self.clip = CLIP(cfg.clip)
        dim = cfg.clip.embed_dim
        if cfg.temporal == "seqTransf":
            ccfg = cfg.clip
            self.frame_position_embeddings = self.param(
                "frame_position_embeddings", nn.initializers.normal(0.01), (cfg.max_frames, dim))
            self.temporal_transformer = Transformer(
                width=dim, layers=cfg.temporal_layers, heads=ccfg.text_heads, mlp_dim=ccfg.text_mlp_dim,
                activation=ccfg.activation, eps=ccfg.layer_norm_eps, dtype=jnp.dtype(ccfg.dtype),
                remat=ccfg.remat, remat_policy=ccfg.remat_policy, scan_layers=ccfg.scan_layers)
        if cfg.patch_tokens:
            self.patch_selector = PatchTokenSelector(cfg.patch_tokens)
        if cfg.uses_wti_heads:
            self.wti_heads = similarity.WTIHeads(mlp=cfg.wti_mlp)
        if cfg.tpm:
            # w^t: words given the video's visual tokens; w^v: visual tokens given t_cls (4.1).
            self.word_weight_predictor = tpm.CrossModalWeightPredictor(n_q=cfg.num_visual_tokens, n_k=cfg.max_words, dim=dim)
            self.visual_weight_predictor = tpm.CrossModalWeightPredictor(n_q=1, n_k=cfg.num_visual_tokens, dim=dim)

    # -- text -------------------------------------------------------------------------------
    def encode_text(self, text_ids, text_mask, word_weights):
        """t_cls (B, D), words (B, L, D), word_mask (B, L), word_weights omega (B, L)."""
        cfg = self.config
        if text_ids.shape[-1] != cfg.max_words:
            raise ValueError(f"text_ids have {text_ids.shape[-1]} tokens, config.max_words is {cfg.max_words}")
        tokens = self.clip.text_tokens(text_ids)
        eot = end_of_text_index(text_ids)
        t_cls = jnp.take_along_axis(tokens, eot[:, None, None], axis=1)[:, 0]
        pos = jnp.arange(text_ids.shape[-1])
        word_mask = jnp.asarray(text_mask, bool) & (pos > 0) & (pos < eot[:, None])
        out = dict(t_cls=l2_normalise(t_cls), words=l2_normalise(tokens), word_mask=word_mask,
                   word_weights=jnp.where(word_mask, jnp.asarray(word_weights, jnp.float32), 0.0))
        if cfg.uses_word_logits:
            out["word_logits"] = self.wti_heads.word_head(out["words"])
        return out

    # -- video ------------------------------------------------------------------------------
    def visual_tokens(self, video, video_mask):
        """Pre-temporal visual tokens (B, T(1+K), D), frame-major, and their mask."""
        cfg = self.config
        b, t = video.shape[:2]
        if t != cfg.max_frames:
            raise ValueError(f"video has {t} frames, config.max_frames is {cfg.max_frames}")
        tokens = self.clip.image_tokens(video.reshape(b * t, *video.shape[2:]))  # (BT, 1+P, D)
        per_frame = tokens[:, :1]
        if cfg.patch_tokens:
            per_frame = jnp.concatenate([per_frame, self.patch_selector(tokens[:, 0], tokens[:, 1:])], axis=1)
        visual = per_frame.reshape(b, t * cfg.tokens_per_frame, -1).astype(jnp.float32)
        return visual, jnp.repeat(jnp.asarray(video_mask, bool), cfg.tokens_per_frame, axis=1)

    def temporal(self, visual, visual_mask):
        """Temporal module, then L2 normalisation: `meanP` is the identity."""
        cfg = self.config
        if cfg.temporal == "seqTransf":
            frame_of_token = jnp.arange(visual.shape[1]) // cfg.tokens_per_frame
            x = visual + self.frame_position_embeddings[frame_of_token]
            attend = visual_mask[:, None, None, :]  # (B, heads, query, key) broadcast
            visual = visual + self.temporal_transformer(x, attend).astype(jnp.float32)
        return l2_normalise(visual)

    def encode_video(self, video, video_mask):
        """visual (B, N_v, D), visual_mask, frames F (B, T, D), frame_mask; plus pre-temporal tokens."""
        cfg = self.config
        pre, visual_mask = self.visual_tokens(video, video_mask)
        visual = self.temporal(pre, visual_mask)
        frames = visual[:, :: cfg.tokens_per_frame]
        out = dict(visual=visual, visual_mask=visual_mask, frames=frames,
                   frame_mask=jnp.asarray(video_mask, bool), visual_pre=pre)
        if cfg.uses_wti_heads:
            out["frame_logits"] = self.wti_heads.frame_head(frames)
        return out

    # -- TPM-CL (training only) -------------------------------------------------------------
    def tpm_features(self, text: dict, video: dict, rho: float, straight_through: bool = True):
        """Matched pairs i: w^t, w^v, the masked visual tokens V' (re-run through the temporal module)."""
        word_w = self.word_weight_predictor(video["visual"], video["visual_mask"], text["words"], text["word_mask"])
        visual_w = self.visual_weight_predictor(text["t_cls"][:, None], jnp.ones_like(text["t_cls"][:, :1], bool),
                                                video["visual"], video["visual_mask"])
        masked_pre, marked = tpm.mask_visual_tokens(video["visual_pre"], video["visual_mask"], visual_w, rho,
                                                 straight_through=straight_through)
        return dict(word_tpm_weights=word_w, visual_tpm_weights=visual_w,
                    visual_masked=self.temporal(masked_pre, video["visual_mask"]), visual_marked=marked)

    def __call__(self, video, video_mask, text_ids, text_mask, word_weights, rho: float = 0.6,
                 straight_through: bool = True):
        """Every feature the training loss needs, for a batch of matched (video, text) pairs.

        `rho` (masking threshold, docs/method.md 4.2) and `straight_through` (gradient of the visual
        masking, see `tpm.mask_visual_tokens`) come from `LossConfig`: use `objective.model_loss`.
        """
        out = {**self.encode_text(text_ids, text_mask, word_weights), **self.encode_video(video, video_mask)}
        if self.config.tpm:
            out.update(self.tpm_features(out, out, rho, straight_through))
        return out

    def dummy_batch(self, batch: int = 1) -> tuple[jax.Array, ...]:
        """Zero inputs of the configured shapes, for `init` and `jax.eval_shape`."""
        cfg = self.config
        size = cfg.clip.image_size
        ids = jnp.zeros((batch, cfg.max_words), jnp.int32).at[:, 0].set(1)
        return (jnp.zeros((batch, cfg.max_frames, size, size, 3), jnp.float32), jnp.ones((batch, cfg.max_frames), bool),
                ids, ids > 0, jnp.ones((batch, cfg.max_words), jnp.float32))


def param_labels(params: dict) -> dict:
    """'clip' for the pretrained CLIP weights, 'new' for modules added by the method."""
    return {k: jax.tree.map(lambda _, k=k: "clip" if k == "clip" else "new", v) for k, v in params.items()}


def init_from_clip(config: RetrievalConfig, params: dict, clip_params: dict) -> dict:
    """Copy CLIP weights into `params`; with seqTransf, also initialise the temporal module from
    CLIP's text transformer (first `temporal_layers` blocks) and text positions, as CLIP4Clip does.

    `clip_params` may be in either layout (per-layer, as checkpoints store them, or stacked): they
    and the temporal module get the layout of `config.clip` (`CLIPConfig.stacked_layers`).
    """
    to_layout = stack_layers if config.clip.stacked_layers else unstack_layers
    params = dict(params)
    params["clip"] = clip_params = to_layout(clip_params)
    if config.temporal == "seqTransf":
        text_blocks = clip_params["text"]["transformer"]
        per_layer = unstack_layers(text_blocks) if "resblocks" in text_blocks else dict(text_blocks)
        if len(per_layer) < config.temporal_layers:
            raise ValueError(f"temporal_layers={config.temporal_layers} but CLIP's text transformer has "
                             f"only {len(per_layer)} blocks to initialise them from")
        chosen = {f"resblocks_{i}": per_layer[f"resblocks_{i}"] for i in range(config.temporal_layers)}
        params["temporal_transformer"] = to_layout(chosen)
        pos = clip_params["text"]["positional_embedding"][: config.max_frames]
        params["frame_position_embeddings"] = jnp.asarray(pos)
        params = jax.tree.map(jnp.asarray, params)
    return params

