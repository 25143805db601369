"""A run's config made concrete: checked, turned into the model, the loss, the input, the state and
its checkpoints. Training, evaluation, export, search and the ablation all start here, so each of
them reads a config and a work directory the same way.

The config (`configs/base.py`) takes its model, loss and input defaults from the dataclasses
built here (`RetrievalConfig`, `CLIPConfig`'s compute switches, `LossConfig`, `InputConfig`), and
the translations below copy fields by name: a default lives in one place.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from data_pipeline.input_pipeline import InputConfig, VideoTextInput
from data_pipeline.prepare import dataset_dir
from data_pipeline.video import FRAME_SAMPLINGS
from tvr_jax import sharding
from tvr_jax.models import clip_weights  # not tvr_jax.clip: its tokenizer (ftfy) is no training dependency
from tvr_jax.models.clip import COMPUTE_SWITCHES, PRESETS, CLIPConfig
from tvr_jax.models.retrieval import RetrievalConfig, RetrievalModel, init_from_clip
from tvr_jax.objective import LossConfig
from tvr_jax.optim import make_optimizer

# The config's `data` fields that are InputConfig's (the rest of InputConfig is per call).
INPUT_FIELDS = ("random_crop", "random_flip", "caption_sampling", "frame_sampling")
# The validation score saved with a validated checkpoint (docs/method.md section 5.2).
VAL_SCORE = "val_score"


# ==============================================================================================
# Config -> dataclasses
# ==============================================================================================
def model_fields() -> tuple[str, ...]:
    """The config's `model` fields that are RetrievalConfig's (all but its CLIP architecture)."""
    return tuple(f.name for f in dataclasses.fields(RetrievalConfig) if f.name != "clip")


def validate_config(cfg) -> None:
    """Every field a run uses, checked before anything heavy: errors name the field and the allowed values."""
    problems = []
    for field in ("global_batch_size", "total_steps", "log_every", "checkpoint_every", "keep_checkpoints",
                  "accumulation_steps"):
        if not isinstance(cfg[field], int) or cfg[field] < 1:
            problems.append(f"{field}={cfg[field]!r} must be an integer >= 1")
    if len(tuple(cfg.mesh_shape)) != len(sharding.MESH_AXES):
        problems.append(f"mesh_shape={tuple(cfg.mesh_shape)} must give one size per axis {sharding.MESH_AXES}")
    if cfg.model.clip_preset not in PRESETS:
        problems.append(f"model.clip_preset={cfg.model.clip_preset!r} (allowed: {sorted(PRESETS)})")
    if cfg.data.caption_sampling not in ("random", "all"):
        problems.append(f"data.caption_sampling={cfg.data.caption_sampling!r} (allowed: 'random', 'all')")
    if cfg.data.frame_sampling not in FRAME_SAMPLINGS:
        problems.append(f"data.frame_sampling={cfg.data.frame_sampling!r} (allowed: {FRAME_SAMPLINGS})")
    if cfg.eval.batch_size < 1 or cfg.eval.block_size < 1:
        problems.append(f"eval.batch_size={cfg.eval.batch_size} and eval.block_size={cfg.eval.block_size} must be >= 1")
    if problems:
        raise ValueError("invalid config: " + "; ".join(problems))
    try:  # the dataclasses check the model and loss fields, naming each bad one
        retrieval_config(cfg, _clip_config(cfg))
        loss_config(cfg)
    except (ValueError, TypeError) as e:
        raise ValueError(f"invalid config: {e}") from None


def _compute_switches(cfg) -> dict[str, Any]:
    return {name: cfg.model[name] for name in COMPUTE_SWITCHES if name in cfg.model}


def _clip_config(cfg) -> CLIPConfig:
    """The preset's architecture with the config's compute switches and geometry (random init)."""
    m = cfg.model
    geometry = {k: m[k] for k in ("image_size", "patch_size") if m.get(k, 0) > 0}
    return PRESETS[m.clip_preset].replace(**_compute_switches(cfg), **geometry)


def retrieval_config(cfg, clip_cfg: CLIPConfig) -> RetrievalConfig:
    return RetrievalConfig(clip=clip_cfg, **{name: cfg.model[name] for name in model_fields()})


def loss_config(cfg) -> LossConfig:
    return LossConfig(**cfg.loss.to_dict())


def build_model(cfg) -> tuple[RetrievalModel, dict | None]:
    """The model of `cfg.model`, and CLIP parameters when `cfg.init_checkpoint` is set."""
    m = cfg.model
    clip_params = None
    if cfg.init_checkpoint:
        if m.get("image_size", 0) > 0 or m.get("patch_size", 0) > 0:
            raise ValueError("model.image_size / model.patch_size change the architecture: they apply to random "
                             "initialisation only, the checkpoint fixes them (set them to 0)")
        clip_model, clip_params = clip_weights.load(cfg.init_checkpoint, **_compute_switches(cfg))
        clip_cfg = clip_model.config
    else:
        if m.clip_preset not in PRESETS:
            raise ValueError(f"model.clip_preset={m.clip_preset!r} (allowed: {sorted(PRESETS)})")
        clip_cfg = _clip_config(cfg)
    return RetrievalModel(retrieval_config(cfg, clip_cfg)), clip_params


def input_config(cfg, split: str, training: bool, model_config: RetrievalConfig, batch_size: int,
                 **kw) -> InputConfig:
    """The input pipeline's config for this run's model; augmentation applies to training input only."""
    data = {name: cfg.data[name] for name in INPUT_FIELDS}
    data["random_crop"] = data["random_crop"] and training
    data["random_flip"] = data["random_flip"] and training
    return InputConfig(split=split, training=training, global_batch_size=batch_size,
                       num_frames=model_config.max_frames, max_words=model_config.max_words,
                       image_size=model_config.clip.image_size, seed=cfg.seed, **data, **kw)


def dataset_input(cfg, split: str, training: bool, model_config: RetrievalConfig, batch_size: int,
                  **kw) -> VideoTextInput:
    """The tf.data input of a prepared dataset (`cfg.data_dir`, `cfg.dataset`) for this model."""
    if not cfg.data_dir:
        raise ValueError("config.data_dir is empty: prepare a dataset with `tvr-jax prepare --dataset "
                         f"{cfg.dataset} --out DIR` and pass --config.data_dir=DIR")
    return VideoTextInput(dataset_dir(cfg.data_dir, cfg.dataset),
                          input_config(cfg, split, training, model_config, batch_size, **kw))


# ==============================================================================================
# State
# ==============================================================================================
class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any
    # First step whose loss was non-finite (-1: none), and which metrics were non-finite then, as
    # a bitmask over the sorted metric names; the update of such a step is skipped, so the state
    # stays the last good one.
    bad_step: jax.Array
    bad_metrics_bitmask: jax.Array


def create_train_state(cfg, model: RetrievalModel, optimizer: optax.GradientTransformation, mesh: Mesh,
                       clip_params: dict | None = None) -> tuple[TrainState, TrainState]:
    """(state, its shardings): parameters created already sharded (`jax.jit(init, out_shardings)`)."""

    def init(rng):
        params = model.init(rng, *model.dummy_batch(1))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                          bad_step=jnp.full((), -1, jnp.int32), bad_metrics_bitmask=jnp.zeros((), jnp.int32))

    rng = jax.random.PRNGKey(cfg.seed)
    shardings = sharding.fsdp_shardings(jax.eval_shape(init, rng), mesh)
    state = jax.jit(init, out_shardings=shardings)(rng)
    if clip_params is not None:
        params = init_from_clip(model.config, jax.device_get(state.params), clip_params)
        params = jax.device_put(params, shardings.params)
        state = state.replace(params=params, opt_state=jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params))
    return state, shardings


# ==============================================================================================
# Checkpoints (orbax): state + input position, atomic, keep-N + best on validation, resumable
# ==============================================================================================
def checkpoint_manager(workdir: str, keep: int):
    """Keeps the newest `keep` checkpoints (resume starts from the newest) and, besides them, the
    one with the best validation score (docs/method.md section 5.2). The score is orbax metrics
    inside its checkpoint, committed atomically with it, and an old step is deleted only after
    the new one is committed: no crash can lose the best. Ties keep the later step."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as policies

    val_score = lambda metrics: float(metrics.get(VAL_SCORE, -math.inf))
    keep_policy = policies.AnyPreservationPolicy([
        policies.LatestN(n=keep),
        policies.BestN(get_metric_fn=val_score, n=1, keep_checkpoints_without_metrics=False)])
    # best_fn makes orbax write the metrics; the preservation policy alone decides what is kept.
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=True, best_fn=val_score,
                                           best_mode="max", preservation_policy=keep_policy)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=options,
                                 item_names=("state", "data"))


def save_checkpoint(manager, state: TrainState, data_state: dict, validation: dict[str, float] | None = None) -> None:
    """`validation`: this step's validation metrics, saved with it (None: not validated)."""
    import orbax.checkpoint as ocp

    # An empty record, not None: orbax warns on every save without metrics; it ranks below any score.
    manager.save(int(jax.device_get(state.step)), metrics=validation or {},
                 args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))


def restore_checkpoint(manager, state: TrainState, shardings: TrainState, step: int | None = None):
    """(state, data_state) of `step` (default newest), restored onto `shardings`."""
    import orbax.checkpoint as ocp

    step = manager.latest_step() if step is None else step
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    return out["state"], out["data"]


class CheckpointUnreadable(RuntimeError):
    """No checkpoint of a run restores."""


def restore_newest_intact(manager, state: TrainState, shardings: TrainState):
    """(state, data_state, skipped) of the newest checkpoint that restores, for resuming.

    A newer one that does not (a file truncated or removed: a disk filled or a copy cut short)
    is moved aside to `checkpoints/STEP.damaged`, so that training can write that step again,
    and listed in `skipped` as (step, reason). When none restores, nothing is moved and
    `CheckpointUnreadable` names every step and why: never a silent start from scratch.
    """
    failures: list[tuple[int, str]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state_out, data_state = restore_checkpoint(manager, state, shardings, step)
        except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many kinds for a damaged file
            reason = (str(e).splitlines() or [""])[0].split(" See full TensorStore details")[0]  # its repr of a C++ binding
            failures.append((step, f"{type(e).__name__}: {reason[:200]}"))
            continue
        if failures:
            if sharding.is_writer():
                for bad, _ in failures:
                    os.replace(os.path.join(manager.directory, str(bad)), os.path.join(manager.directory, f"{bad}.damaged"))
            sharding.barrier("checkpoints_moved_aside")
            manager.reload()
        return state_out, data_state, failures
    listed = "; ".join(f"step {s}: {why}" for s, why in failures)
    raise CheckpointUnreadable(
        f"no checkpoint in {manager.directory} restores ({listed}). If the config changed since they were written, "
        "train with the config of the run (its config.json); if they are damaged, move the checkpoints folder "
        "away to start again from scratch")


def restore_params(cfg, workdir: str, step: int | None = None, mesh: Mesh | None = None):
    """(model, params, step) of checkpoint `step` (default: the newest) of `workdir`."""
    validate_config(cfg)
    mesh = mesh or sharding.make_mesh(tuple(cfg.mesh_shape))
    model, _ = build_model(cfg)
    state, shardings = create_train_state(cfg, model, make_optimizer(cfg.optim, cfg.total_steps), mesh)
    manager = checkpoint_manager(workdir, cfg.keep_checkpoints)
    try:
        if manager.latest_step() is None:
            raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint: train first (tvr-jax train)")
        state, _ = restore_checkpoint(manager, state, shardings, step)
    finally:
        manager.close()
    return model, state.params, int(jax.device_get(state.step))
