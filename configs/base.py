"""Shared defaults of every tvr-jax config: docs/method.md sections 1-5 (the release's switches).

Dataset x backbone files derive from `base_config()` and change what differs. Fields:
  seed, data_dir, dataset, global_batch_size, total_steps, log_every, checkpoint_every,
  keep_checkpoints, eval_every, mesh_shape, accumulation_steps, init_checkpoint,
  model.*  (RetrievalConfig + the CLIP preset, geometry and compute switches),
  loss.*   (LossConfig: similarity and loss switches),
  optim.*  (optax recipe), data.* (input pipeline), eval.*.
The model, loss and data defaults are the dataclasses' own (tvr_jax/experiment.py translates
back field by field), so each default is written once, where it is checked.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from data_pipeline.input_pipeline import InputConfig
from tvr_jax.experiment import INPUT_FIELDS, model_fields
from tvr_jax.models.clip import COMPUTE_SWITCHES, CLIPConfig
from tvr_jax.models.retrieval import RetrievalConfig
from tvr_jax.objective import LossConfig


def _defaults(instance, names) -> dict:
    return {name: getattr(instance, name) for name in names}


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
    # Validation on the 'val' split every N steps (each validated step is checkpointed), when the set
    # has one besides the evaluated split; the best checkpoint is kept besides the newest ones and
    # evaluated by default (docs/method.md section 5.2). 0 = off.
    c.eval_every = 500
    c.mesh_shape = (-1, 1)  # ('data', 'fsdp'); -1 = all remaining devices
    c.accumulation_steps = 1  # micro-batches per step (gradient caching keeps global negatives)
    # CLIP weights (HF folder, OpenAI .pt, converted folder); "" = random init. The paper's
    # numbers start from OpenAI CLIP: pass --config.init_checkpoint=/path/to/ViT-B-32.pt.
    c.init_checkpoint = ""

    c.model = ml_collections.ConfigDict(dict(
        clip_preset="vit_b32",  # architecture when init_checkpoint is empty: tiny | vit_b32 | vit_b16
        image_size=0, patch_size=0,  # > 0: replace the preset's (random init only)
        **_defaults(RetrievalConfig(), model_fields()),  # frames, words, temporal module, interaction, TPM heads
        **_defaults(CLIPConfig(), COMPUTE_SWITCHES),  # dtype, remat, scan_layers, ...
    ))
    c.loss = ml_collections.ConfigDict(dataclasses.asdict(LossConfig()))
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-4, clip_lr_coef=1e-3, warmup_fraction=0.1, weight_decay=0.2,
        b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=1.0,
    ))
    c.data = ml_collections.ConfigDict(dict(
        # random_crop, random_flip, caption_sampling (training rows: "random", one caption per video
        # per epoch, or "all"), frame_sampling ("uniform" as in testing, the paper's; or
        # "random_segment"): docs/method.md section 5.1.
        **_defaults(InputConfig(split="train", training=True, global_batch_size=1), INPUT_FIELDS),
        # Word-weight tagger the prepared set must have used ("spacy:<model>" or "fallback"); training
        # warns when it differs. The release's: spaCy en_core_web_md (docs/method.md section 6.1).
        tagger="spacy:en_core_web_md",
    ))
    c.eval = ml_collections.ConfigDict(dict(split="test", batch_size=64, block_size=64))
    return c


# docs/method.md sections 1 and 6. `train_rows`: rows of one training epoch with every caption used
# (CLIP4Clip expands MSR-VTT's and MSVD's sentences; DiDeMo and ActivityNet have one paragraph
# per video); epochs from X-CLIP's scripts (docs/method.md section 5).
DATASETS = {
    "msrvtt": dict(frames=12, words=32, epochs=5, train_rows=180_000, eval_split="test"),
    "msvd": dict(frames=12, words=32, epochs=5, train_rows=48_774, eval_split="test"),
    "didemo": dict(frames=64, words=64, epochs=20, train_rows=8_392, eval_split="test"),
    "activitynet": dict(frames=64, words=64, epochs=20, train_rows=10_009, eval_split="val"),
    # Beyond the paper, with MSR-VTT's sentence-query settings. WebVid-2M: about 2.5M pairs, one
    # epoch, a checkpoint every tenth of it (WebVid-10M's 10.7M: scale total_steps); its val CSV
    # is prepared as 'test'. Your own videos: the size is yours, so `train_rows` is a placeholder
    # giving 1,000 steps; set total_steps to epochs x training captions / global_batch_size.
    "webvid": dict(frames=12, words=32, epochs=1, train_rows=2_500_000, eval_split="test", checkpoints=10),
    "custom": dict(frames=12, words=32, epochs=5, train_rows=25_600, eval_split="test"),
}
BACKBONES = ("vit_b32", "vit_b16")


def dataset_config(dataset: str, backbone: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The setting for `dataset` x `backbone` (the paper's, for its four sets); `arg="tiny"` gives the
    same config at test size (tiny random CLIP, a few frames and words, batch 8, 2 steps)."""
    if dataset not in DATASETS or backbone not in BACKBONES:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)} and backbone one of {BACKBONES}")
    if arg not in (None, "tiny"):
        raise ValueError(f"config argument must be empty or 'tiny', got {arg!r}")
    d = DATASETS[dataset]
    c = base_config()
    c.dataset = dataset
    c.model.clip_preset = backbone
    c.model.max_frames, c.model.max_words = d["frames"], d["words"]
    c.data.caption_sampling = "all"
    c.total_steps = d["epochs"] * -(-d["train_rows"] // c.global_batch_size)
    c.checkpoint_every = max(c.total_steps // d.get("checkpoints", d["epochs"]), 1)  # once per epoch unless said
    c.eval.split = d["eval_split"]
    if d["frames"] == 64:  # paragraph sets: smaller similarity blocks for 64 x 64 token grids
        c.loss.block_size = c.eval.block_size = 16
    if arg == "tiny":
        c.model.clip_preset = "tiny"
        c.model.max_frames, c.model.max_words = 4, 16
        c.model.temporal_layers = 1
        c.global_batch_size, c.total_steps, c.log_every, c.checkpoint_every = 8, 2, 1, 2
        c.eval.batch_size = 8
    c.eval_every = c.checkpoint_every  # validation once per epoch
    return c
