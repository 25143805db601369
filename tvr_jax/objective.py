"""The training objective of method.md section 4.4: L = L_DMAE + lambda_tpm * L_TPM.

A pure function of the features `RetrievalModel.__call__` returns for a batch of matched pairs,
so the same code runs on one device and inside a sharded train step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tvr_jax import losses, similarity, tpm


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Similarity and loss switches (method.md sections 2-4); defaults are the release's."""

    visual_attention: bool = True
    textual_attention: bool = True
    gamma: float = 0.5
    block_size: int = 64
    temperature: float = 0.01
    lambda_pos: float = 1.0
    lambda_neg: float = 0.5
    delta: float = 0.0
    lambda_tpm: float = 1.0  # 0 switches TPM-CL off
    partial_type: int = 4
    margin: float = 0.6
    rho: float = 0.6
    normalize_masked_text: bool = False
    # Gradient of the discrete visual masking to the text-conditioned weight predictor
    # (tpm.mask_visual_tokens); False is the release's behaviour, where that predictor never learns.
    visual_mask_straight_through: bool = True

    def __post_init__(self):
        problems = []
        if not self.temperature > 0:
            problems.append(f"temperature={self.temperature} must be > 0")
        if self.partial_type not in tpm.PARTIAL_TYPES:
            problems.append(f"partial_type={self.partial_type} (allowed: {tpm.PARTIAL_TYPES})")
        if not 0.0 < self.rho <= 1.0:
            problems.append(f"rho={self.rho} must be in (0, 1]")
        for field in ("lambda_pos", "lambda_neg", "lambda_tpm", "block_size"):
            if getattr(self, field) < 0:
                problems.append(f"{field}={getattr(self, field)} must be >= 0")
        if problems:
            raise ValueError("invalid LossConfig: " + "; ".join(problems))


def similarity_matrix(text: dict, video: dict, interaction: str, cfg: LossConfig) -> jax.Array:
    """DMAE similarity S (texts x videos) from the feature dicts of `RetrievalModel`."""
    return similarity.dmae_similarity(
        text["t_cls"], text["words"], text["word_weights"], text["word_mask"], video["frames"], video["frame_mask"],
        interaction=interaction, visual_attention=cfg.visual_attention, textual_attention=cfg.textual_attention,
        gamma=cfg.gamma, block_size=cfg.block_size, word_logits=text.get("word_logits"),
        frame_logits=video.get("frame_logits"))


def total_loss(features: dict, interaction: str, cfg: LossConfig) -> tuple[jax.Array, dict]:
    """L = L_DMAE(S) + lambda_tpm * L_TPM (4.4) and its logged parts.

    Parts: loss, dmae (+ t2v/v2t pos, neg and num_hard), and with TPM-CL tpm, l1/l2/l3,
    text_masked_frac, visual_masked_frac.
    """
    sim = similarity_matrix(features, features, interaction, cfg)
    dmae, dparts = losses.dmae_loss_and_parts(sim, temperature=cfg.temperature, lambda_pos=cfg.lambda_pos,
                                              lambda_neg=cfg.lambda_neg, delta=cfg.delta)
    parts = {"dmae": dmae, **{k: v for k, v in dparts.items() if k != "loss"}}
    loss = dmae
    if cfg.lambda_tpm > 0:
        if "word_tpm_weights" not in features:
            raise ValueError("lambda_tpm > 0 needs the TPM-CL weight predictors: build the model with tpm=True")
        l_tpm, tparts = tpm.tpm_loss(
            features["t_cls"], features["words"], features["word_mask"], features["word_tpm_weights"],
            features["visual"], features["visual_mask"], features["visual_masked"], features["visual_mask"],
            partial_type=cfg.partial_type, margin=cfg.margin, rho=cfg.rho,
            normalize_masked_text=cfg.normalize_masked_text, visual_marked=features["visual_marked"])
        parts.update({"tpm": l_tpm, **{k: v for k, v in tparts.items() if k != "loss"}})
        loss = loss + cfg.lambda_tpm * l_tpm
    parts["loss"] = loss
    return loss, jax.tree.map(jnp.asarray, parts)


def model_loss(model, params: dict, batch: tuple, cfg: LossConfig) -> tuple[jax.Array, dict]:
    """Features of `RetrievalModel` for a batch (video, video_mask, text_ids, text_mask,
    word_weights) of matched pairs, then `total_loss`."""
    features = model.apply({"params": params}, *batch, rho=cfg.rho, straight_through=cfg.visual_mask_straight_through)
    return total_loss(features, model.config.interaction, cfg)
