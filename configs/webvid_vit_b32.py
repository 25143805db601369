"""WebVid with CLIP vit_b32: MSR-VTT's settings (12 frames, 32 words), one epoch of WebVid-2M's
about 2.5M pairs, a checkpoint every tenth of it; the val CSV is the evaluated split ('test').

    tvr-jax prepare --dataset webvid --videos WEBVID/videos --annotations WEBVID_CSVS --out DATA
    tvr-jax train --config configs/webvid_vit_b32.py --workdir runs/webvid_vit_b32 --config.data_dir=DATA --config.init_checkpoint=CLIP_WEIGHTS
    tvr-jax eval  --config configs/webvid_vit_b32.py --workdir runs/webvid_vit_b32 --config.data_dir=DATA
For WebVid-10M (10.7M pairs), or a partial download, set --config.total_steps to the training
captions the prepare summary prints / 128. `get_config("tiny")`
(`--config configs/webvid_vit_b32.py:tiny`) is the same config at test size.
"""

from configs.base import dataset_config


def get_config(arg=None):
    return dataset_config("webvid", "vit_b32", arg)
