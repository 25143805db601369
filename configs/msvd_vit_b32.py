"""msvd with CLIP vit_b32: the paper's setting (docs/method.md sections 1, 5, 6).

    tvr-jax prepare --dataset msvd --videos VIDEOS --annotations ANNOTATIONS --out DATA
    tvr-jax train --config configs/msvd_vit_b32.py --workdir runs/msvd_vit_b32 --config.data_dir=DATA --config.init_checkpoint=CLIP_WEIGHTS
    tvr-jax eval  --config configs/msvd_vit_b32.py --workdir runs/msvd_vit_b32 --config.data_dir=DATA
`get_config("tiny")` (`--config configs/msvd_vit_b32.py:tiny`) is the same config at test size.
"""

from configs.base import dataset_config


def get_config(arg=None):
    return dataset_config("msvd", "vit_b32", arg)
