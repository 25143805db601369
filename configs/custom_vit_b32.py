"""Your own videos with CLIP vit_b32: MSR-VTT's settings (12 frames, 32 words, every caption a
training row) on the set `tvr-jax prepare --dataset custom` makes from one CSV / JSON Lines file.

    tvr-jax prepare --dataset custom --videos VIDEOS --annotations captions.csv --out DATA
    tvr-jax train --config configs/custom_vit_b32.py --workdir runs/custom --config.data_dir=DATA --config.init_checkpoint=CLIP_WEIGHTS
    tvr-jax eval  --config configs/custom_vit_b32.py --workdir runs/custom --config.data_dir=DATA
`total_steps` is 1,000 whatever the set's size: set it to epochs x training captions / 128 (the
prepare summary prints the captions per split), e.g. --config.total_steps=400 for 5 epochs of
10,000 captions, and checkpoint_every (and eval_every) to about one epoch. `eval` scores the
'test' rows; with 'val' rows, training scores them every eval_every steps and `eval` reports the
best checkpoint. `get_config("tiny")` (`--config configs/custom_vit_b32.py:tiny`) is the same
config at test size.
"""

from configs.base import dataset_config


def get_config(arg=None):
    return dataset_config("custom", "vit_b32", arg)
