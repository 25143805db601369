"""The training objective of docs/method.md section 4.4: L = L_DMAE + lambda_tpm * L_TPM.

A pure function of the features `RetrievalModel.__call__` returns for a batch of matched pairs,
so the same code runs on one device and inside a sharded train step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jax.sharding import Mesh, PartitionSpec as P

from tvr_jax import losses, similarity, sharding, tpm


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Similarity and loss switches (docs/method.md sections 2-4); defaults are the release's."""

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
    # (tpm.mask_visual_tokens). False is the release's behaviour, where that predictor never
    # learns; True is our improvement (an ablation row), off by default to keep the release's.
    visual_mask_straight_through: bool = False

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
    """S (texts x videos) from the feature dicts of `RetrievalModel`: DMAE, or the 'cosine' baseline."""
    if interaction == "cosine":
        return similarity.pooled_cosine_similarity(text["t_cls"], video["frames"], video["frame_mask"])
    return similarity.dmae_similarity(
        text["t_cls"], text["words"], text["word_weights"], text["word_mask"], video["frames"], video["frame_mask"],
        interaction=interaction, visual_attention=cfg.visual_attention, textual_attention=cfg.textual_attention,
        gamma=cfg.gamma, block_size=cfg.block_size, word_logits=text.get("word_logits"),
        frame_logits=video.get("frame_logits"))


def _lambdas(cfg: LossConfig) -> dict:
    return dict(lambda_pos=cfg.lambda_pos, lambda_neg=cfg.lambda_neg)


def _tpm_term(features: dict, cfg: LossConfig) -> tuple[jax.Array, dict]:
    if "word_tpm_weights" not in features:
        raise ValueError("lambda_tpm > 0 needs the TPM-CL weight predictors: build the model with tpm=True")
    l_tpm, tparts = tpm.tpm_loss(
        features["t_cls"], features["words"], features["word_mask"], features["word_tpm_weights"],
        features["visual"], features["visual_mask"], features["visual_masked"], features["visual_mask"],
        partial_type=cfg.partial_type, margin=cfg.margin, rho=cfg.rho,
        normalize_masked_text=cfg.normalize_masked_text, visual_marked=features["visual_marked"])
    return l_tpm, {"tpm": l_tpm, **{k: v for k, v in tparts.items() if k != "loss"}}


def _combine(dmae_parts: dict, tpm_parts: dict | None, cfg: LossConfig) -> tuple[jax.Array, dict]:
    parts = {**dmae_parts, **(tpm_parts or {})}
    loss = parts["dmae"] + (cfg.lambda_tpm * parts["tpm"] if tpm_parts else 0.0)
    parts["loss"] = loss
    return loss, jax.tree.map(jnp.asarray, parts)


def total_loss(features: dict, interaction: str, cfg: LossConfig) -> tuple[jax.Array, dict]:
    """L = L_DMAE(S) + lambda_tpm * L_TPM (4.4) and its logged parts, on one device.

    ``features["video_ids"]`` (B,), optional: each pair's video; pairs of one video are then no
    negatives of each other (docs/method.md section 3.1). Parts: loss, dmae (+ t2v/v2t pos, neg
    and num_hard, same_video_pairs), and with TPM-CL tpm, l1/l2/l3, text_masked_frac,
    visual_masked_frac.
    """
    sim = similarity_matrix(features, features, interaction, cfg)
    dmae, dparts = losses.dmae_loss_and_parts(sim, temperature=cfg.temperature, delta=cfg.delta,
                                              video_ids=features.get("video_ids"), **_lambdas(cfg))
    dmae_parts = {"dmae": dmae, **{k: v for k, v in dparts.items() if k != "loss"}}
    tpm_parts = _tpm_term(features, cfg)[1] if cfg.lambda_tpm > 0 else None
    return _combine(dmae_parts, tpm_parts, cfg)


VIDEO_KEYS = ("frames", "frame_mask", "frame_logits")  # the video side of `similarity_matrix`


def ring_similarity(text: dict, video: dict, interaction: str, cfg: LossConfig, axes: tuple[str, ...]) -> jax.Array:
    """Inside shard_map: this device's texts against the videos of every device, (b_t, n * b_v).

    The video shards rotate round the ring with ppermute (n - 1 hops); step j scores the shard
    of device (i + j) mod n. Backward, the video cotangent travels the ring back, one shard in
    size, instead of a global-size cotangent followed by a reduce-scatter.
    """
    n = jax.lax.axis_size(axes)
    this_device = jax.lax.axis_index(axes)
    to_previous = [(i, (i - 1) % n) for i in range(n)]

    def score_and_pass_on(shard, _):
        sim = similarity_matrix(text, shard, interaction, cfg)
        return jax.tree.map(lambda x: jax.lax.ppermute(x, axes, to_previous), shard), sim

    _, blocks = jax.lax.scan(score_and_pass_on, video, None, length=n)  # blocks[j]: device (this + j) % n
    blocks = blocks[(jnp.arange(n) - this_device) % n]  # global column order
    return jnp.transpose(blocks, (1, 0, 2)).reshape(blocks.shape[1], -1)


def _psum_at_once(tree, axes):
    """psum of a pytree of float32 scalars as one all-reduce (jax.lax.psum makes one per leaf, and
    those do not depend on each other: see the ordering note in `sharded_total_loss`)."""
    leaves, treedef = jax.tree.flatten(tree)
    summed = jax.lax.psum(jnp.stack([jnp.asarray(x, jnp.float32) for x in leaves]), axes)
    return jax.tree.unflatten(treedef, list(summed))


def sharded_total_loss(features: dict, interaction: str, cfg: LossConfig, mesh: Mesh) -> tuple[jax.Array, dict]:
    """`total_loss` of the global batch, with the batch split over the mesh's batch axes.

    Each device scores its own texts against every video of the global batch, so S is sharded by
    rows and no device holds more than (B/n) x B of it. Video features travel round a ring
    (`ring_similarity`) instead of being all-gathered, so their gradient never exists at global
    size on one device. The
    text->video NegNCE has whole rows locally; the video->text direction normalises each column
    across devices (a max, then a sum of exponentials, psum'd). Positives are found by global
    index, and all sums and counts are psum'd before the means: the loss and its gradients are
    those of the global batch whatever the number of devices. Same-video pairs
    (``features["video_ids"]``) are removed by global video id, as in `total_loss`. TPM-CL is
    per matched pair, so its local means are averaged (shards are equal-sized).
    """
    axes = sharding.batch_axes(mesh)
    # A device runs its collectives one at a time, and two that do not depend on each other may
    # start in a different order on different devices, each then waiting for the others (seen on
    # XLA:CPU with 8 devices under load). `x, _ = then((x, y))` (an optimization barrier: its
    # outputs exist only once all its inputs do) makes x wait for y, which gives every collective
    # below one order: ids, the ring, the diagonal, the column normaliser, the sums, TPM-CL. Only x
    # is kept: through the barrier, y would count as varying across devices for shard_map.
    then = jax.lax.optimization_barrier

    def local(feats):
        shard = jax.lax.axis_index(axes)
        video = {k: feats[k] for k in VIDEO_KEYS if k in feats}
        dmae_parts = {}
        if "video_ids" in feats:
            all_videos = jax.lax.all_gather(feats["video_ids"], axes, tiled=True)
            local_pairs = jnp.sum(feats["video_ids"][:, None] == all_videos[None, :], dtype=jnp.float32)
            same_video_pairs = jax.lax.psum(local_pairs, axes)
            video, _ = then((video, same_video_pairs))
        sim = ring_similarity(feats, video, interaction, cfg, axes)  # (b, B): local texts x all videos
        b, total = sim.shape
        row_ids = shard * b + jnp.arange(b)
        col_ids = jnp.arange(total)
        if "video_ids" in feats:
            sim = losses.exclude_same_video(sim, query_ids=row_ids, key_ids=col_ids, query_videos=feats["video_ids"],
                                            key_videos=all_videos)
            dmae_parts["same_video_pairs"] = same_video_pairs - total  # as count_same_video_pairs
        diag_local = sim[jnp.arange(b), row_ids]
        diag = jax.lax.all_gather(diag_local, axes, tiled=True)
        scaled = sim / cfg.temperature
        kw = dict(temperature=cfg.temperature, delta=cfg.delta)
        t2v = losses.negnce_block_sums(sim, query_ids=row_ids, key_ids=col_ids, query_diag=diag_local,
                                       key_diag=diag, query_log_norm=jax.nn.logsumexp(scaled, axis=1), **kw)
        # Column log-normaliser over all texts: the max only stabilises, so it carries no gradient.
        col_max, _ = then((scaled.max(axis=0), diag))
        col_max = jax.lax.pmax(jax.lax.stop_gradient(col_max), axes)
        col_lse = col_max + jnp.log(jax.lax.psum(jnp.exp(scaled - col_max).sum(axis=0), axes))
        rest = jax.lax.psum(losses.negnce_query_rest(sim.T, query_log_norm=col_lse, temperature=cfg.temperature), axes)
        v2t = losses.negnce_block_sums(sim.T, query_ids=col_ids, key_ids=row_ids, query_diag=diag,
                                       key_diag=diag_local, query_log_norm=col_lse, query_rest=rest, **kw)
        sums = _psum_at_once((t2v, v2t), axes)
        for name, summed in zip(("t2v", "v2t"), sums):
            d = losses.negnce_from_sums(summed, total, **_lambdas(cfg))
            dmae_parts.update({f"{name}_{k}": v for k, v in d.items()})
        dmae_parts["dmae"] = 0.5 * (dmae_parts["t2v_loss"] + dmae_parts["v2t_loss"])
        tpm_parts = None
        if cfg.lambda_tpm > 0:
            tpm_parts, _ = then((_tpm_term(feats, cfg)[1], dmae_parts))
            tpm_parts = jax.tree.map(lambda x: x / jax.lax.axis_size(axes), _psum_at_once(tpm_parts, axes))
        return _combine(dmae_parts, tpm_parts, cfg)

    spec = jax.tree.map(lambda _: P(axes), features)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec,), out_specs=P())(features)


def model_loss(model, params: dict, batch: tuple, cfg: LossConfig, video_ids=None) -> tuple[jax.Array, dict]:
    """Features of `RetrievalModel` for a batch (video, video_mask, text_ids, text_mask,
    word_weights) of matched pairs, then `total_loss`; ``video_ids`` (B,) as in `total_loss`."""
    features = model.apply({"params": params}, *batch, rho=cfg.rho, straight_through=cfg.visual_mask_straight_through)
    if video_ids is not None:
        features = {**features, "video_ids": jnp.asarray(video_ids)}
    return total_loss(features, model.config.interaction, cfg)
