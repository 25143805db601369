"""The demo: the tiny model trained from scratch on the shipped synthetic set.

    tvr-jax prepare --dataset synthetic --out data/
    tvr-jax train --config configs/synthetic.py --workdir runs/synthetic --config.data_dir=data/
    tvr-jax eval  --config configs/synthetic.py --workdir runs/synthetic --config.data_dir=data/
(`tvr-jax demo` does all three.) `get_config("meanP")` swaps the temporal module.
The set is described in docs/synthetic.md; `configs/synthetic_ablation.py` is this config at
the ablation's budget (REPRODUCING.md). Captions are up to 29 tokens long (start and end tokens
included), hence 32 words.
"""

from configs.base import base_config


def get_config(arg=None):
    c = base_config()
    c.dataset = "synthetic"
    c.global_batch_size = 64
    c.total_steps = 1500
    c.log_every = 50
    c.checkpoint_every = 500
    # No pretrained weights exist here: a tiny CLIP from random initialisation, so the "CLIP"
    # parameter group learns at the full rate.
    c.model.clip_preset = "tiny"
    c.model.max_frames, c.model.max_words = 12, 32
    c.model.temporal = arg or "seqTransf"
    c.model.temporal_layers = 2
    c.optim.learning_rate = 1e-3
    c.optim.clip_lr_coef = 1.0
    c.optim.weight_decay = 0.05
    c.loss.block_size = 64
    c.eval.batch_size = 64
    c.data.tagger = "fallback"  # what `tvr-jax prepare` tags the synthetic set with by default
    return c
