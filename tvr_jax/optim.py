"""The optimizer recipe of docs/method.md section 5 (CLIP4Clip lineage), built with optax.

AdamW (betas 0.9/0.98, eps 1e-6), weight decay 0.2 on weight matrices only (not on norms,
biases, embeddings or the logit scale), warmup-cosine with 10% warmup, learning rate 1e-4 for
the new modules and coef x 1e-4 for the CLIP weights, global-norm clipping at 1.0.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from tvr_jax.models.retrieval import param_labels

# Leaves that are weight matrices: the only ones weight decay applies to.
_DECAYED_NAMES = ("kernel", "proj", "text_projection")


def weight_decay_mask(params: Any) -> Any:
    """True on weight matrices; False on norms, biases, embeddings and the logit scale."""
    def decayed(path, _):
        return getattr(path[-1], "key", None) in _DECAYED_NAMES
    return jax.tree_util.tree_map_with_path(decayed, params)


def learning_rate_schedules(cfg, total_steps: int) -> dict[str, optax.Schedule]:
    """Warmup-cosine per parameter group: 'new' peaks at cfg.learning_rate, 'clip' at coef x that."""
    warmup = max(int(round(cfg.warmup_fraction * total_steps)), 1)
    # optax needs a cosine part of at least one step, also for a run of one or two steps.
    make = lambda peak: optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1), end_value=0.0)
    return {"new": make(cfg.learning_rate), "clip": make(cfg.learning_rate * cfg.clip_lr_coef)}


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    """cfg: ml_collections.ConfigDict with learning_rate, clip_lr_coef, warmup_fraction,
    weight_decay, b1, b2, eps, grad_clip_norm (0 = off)."""
    schedules = learning_rate_schedules(cfg, total_steps)
    # A callable mask: multi_transform hands each group a tree with the other group masked out.
    adamw = lambda lr: optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                   mask=weight_decay_mask)
    chain = [optax.multi_transform({k: adamw(s) for k, s in schedules.items()}, param_labels)]
    if cfg.grad_clip_norm > 0:
        chain.insert(0, optax.clip_by_global_norm(cfg.grad_clip_norm))
    return optax.chain(*chain)
