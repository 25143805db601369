"""Shared defaults of every tvr-jax config: method.md sections 1-5 (the release's switches).

Dataset x backbone files derive from `base_config()` and change what differs. Fields:
  seed, data_dir, dataset, global_batch_size, total_steps, log_every, checkpoint_every,
  keep_checkpoints, mesh_shape, accumulation_steps, init_checkpoint,
  model.*  (RetrievalConfig + the CLIP preset and compute switches),
  loss.*   (LossConfig: similarity and loss switches),
  optim.*  (optax recipe), data.* (input pipeline), eval.*.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = "msrvtt"
    c.data_dir = ""  # prepared dataset folder (`tvr-jax prepare --out`)
    c.global_batch_size = 128  # fixed, whatever the device count (accumulation makes up the rest)
    c.total_steps = 1000
    c.log_every = 50
    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    c.mesh_shape = (-1, 1)  # ('data', 'fsdp'); -1 = all remaining devices
    c.accumulation_steps = 1  # micro-batches per step (gradient caching keeps global negatives)
    c.init_checkpoint = ""  # CLIP weights (HF folder, OpenAI .pt, converted folder); "" = random init

    c.model = ml_collections.ConfigDict(dict(
        clip_preset="vit_b32",  # architecture when init_checkpoint is empty: tiny | vit_b32 | vit_b16
        image_size=0, patch_size=0,  # > 0: replace the preset's (random init only)
        max_frames=12, max_words=32,
        temporal="seqTransf", temporal_layers=4, patch_tokens=0,
        interaction="att_ti", wti_mlp=False, tpm=True,
        dtype="float32", remat=False, scan_layers=False,
    ))
    c.loss = ml_collections.ConfigDict(dict(
        visual_attention=True, textual_attention=True, gamma=0.5, block_size=64,
        temperature=0.01, lambda_pos=1.0, lambda_neg=0.5, delta=0.0,
        lambda_tpm=1.0, partial_type=4, margin=0.6, rho=0.6, normalize_masked_text=False,
        visual_mask_straight_through=True,
    ))
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-4, clip_lr_coef=1e-3, warmup_fraction=0.1, weight_decay=0.2,
        b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=1.0,
    ))
    c.data = ml_collections.ConfigDict(dict(
        image_size=224, random_crop=False, random_flip=False, shuffle_buffer=2048, num_parallel_calls=-1,
    ))
    c.eval = ml_collections.ConfigDict(dict(split="test", batch_size=64, block_size=64))
    return c
