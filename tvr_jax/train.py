"""Training: the train step, logs and the loop, resuming exactly from checkpoints.

Everything numeric is a jitted pure function of (state, batch); the loop around it only moves
batches in, logs, validates and checkpoints. What a run is made of (model, loss, input, state,
checkpoints) comes from `tvr_jax.experiment`, shared with evaluation and search. Sections:
  1. the train step    2. logs    3. the loop
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from data_pipeline.prepare import tagger_warning
from tvr_jax import evaluate, sharding, workdir_lock
from tvr_jax.experiment import (TrainState, build_model, checkpoint_manager, create_train_state, dataset_input,
                                loss_config, restore_newest_intact, save_checkpoint, validate_config)
from tvr_jax.models.retrieval import RetrievalConfig, RetrievalModel
from tvr_jax.objective import LossConfig, sharded_total_loss
from tvr_jax.optim import make_optimizer

log = logging.getLogger("tvr_jax.train")
MODEL_INPUTS = ("video", "video_mask", "text_ids", "text_mask", "word_weights")  # RetrievalModel.__call__'s
# A training batch: the model's inputs and each pair's video, so that two captions of one video are
# never negatives of each other (docs/method.md section 3.1).
BATCH_KEYS = MODEL_INPUTS + ("video_index",)


# ==============================================================================================
# 1. The train step
# ==============================================================================================
def _split_features(features: dict) -> tuple[dict, dict]:
    """Float features (differentiable) and the rest (masks, indices)."""
    floats = {k: v for k, v in features.items() if jnp.issubdtype(v.dtype, jnp.floating)}
    return floats, {k: v for k, v in features.items() if k not in floats}


def make_loss_and_grads(model: RetrievalModel, loss_cfg: LossConfig, mesh: Mesh, accumulation_steps: int) -> Callable:
    """(params, batch) -> ((loss, parts), grads) of the global batch.

    With accumulation_steps = k > 1 the batch runs as k micro-batches by gradient caching: all
    features are computed first (no gradient), the loss and its gradient with respect to the
    features are taken over the whole global batch, then each micro-batch's forward pass is
    re-run and back-propagated with its slice of those feature gradients. Every example still
    sees every other as a negative, so the result equals the k = 1 step; memory holds one
    micro-batch of activations, at the price of a second forward pass.
    """
    n_shards = sharding.num_batch_shards(mesh)
    batch_spec, micro_batch_spec = sharding.batch_sharding(mesh), sharding.batch_sharding(mesh, batch_dim=1)
    def forward(params, batch):
        features = model.apply({"params": params}, *(batch[k] for k in MODEL_INPUTS), rho=loss_cfg.rho,
                               straight_through=loss_cfg.visual_mask_straight_through)
        return {**features, "video_ids": batch["video_index"]}

    loss_of_features = lambda feats: sharded_total_loss(feats, model.config.interaction, loss_cfg, mesh)

    if accumulation_steps == 1:
        return jax.value_and_grad(lambda p, b: loss_of_features(forward(p, b)), has_aux=True)

    k = accumulation_steps

    def to_micro(x):  # (B, ...) -> (k, B/k, ...), every micro-batch spread over every shard
        x = x.reshape(n_shards, k, -1, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x.reshape(k, -1, *x.shape[3:]), micro_batch_spec)

    def from_micro(x):  # (k, B/k, ...) -> (B, ...) in shard-major order (a permutation of the pairs)
        x = x.reshape(k, n_shards, -1, *x.shape[2:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x.reshape(-1, *x.shape[3:]), batch_spec)

    def loss_and_grads(params, batch):
        micro = jax.tree.map(to_micro, batch)
        feats = jax.lax.map(lambda mb: forward(params, mb), micro)
        floats, rest = _split_features(jax.tree.map(from_micro, feats))
        (loss, parts), feat_grads = jax.value_and_grad(lambda fl: loss_of_features({**fl, **rest}), has_aux=True)(floats)
        feat_grads = jax.tree.map(to_micro, feat_grads)

        def accumulate(grads, xs):
            mb, cotangent = xs
            _, vjp, _ = jax.vjp(lambda p: _split_features(forward(p, mb)), params, has_aux=True)
            return jax.tree.map(jnp.add, grads, vjp(cotangent)[0]), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, _ = jax.lax.scan(accumulate, zeros, (micro, feat_grads))
        return (loss, parts), grads

    return loss_and_grads


def make_train_step(model: RetrievalModel, loss_cfg: LossConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                    shardings: TrainState, accumulation_steps: int = 1) -> Callable:
    """jit((state, batch) -> (state, metrics)); batch leaves sharded over the batch axes."""
    loss_and_grads = make_loss_and_grads(model, loss_cfg, mesh, accumulation_steps)

    def step(state: TrainState, batch: dict):
        (loss, parts), grads = loss_and_grads(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**parts, "grad_norm": optax.tree.norm(grads)}
        bad = jnp.stack([~jnp.isfinite(metrics[n]) for n in sorted(metrics)])
        is_bad = jnp.any(bad)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(is_bad, b, a), new, old)
        first_bad = (state.bad_step < 0) & is_bad
        new_state = TrainState(
            step=state.step + 1, params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
            bad_step=jnp.where(first_bad, state.step, state.bad_step),
            bad_metrics_bitmask=jnp.where(first_bad, jnp.sum(bad * (2 ** jnp.arange(len(metrics)))),
                                          state.bad_metrics_bitmask))
        return new_state, metrics

    batch_sharding = sharding.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(shardings, batch_sharding), out_shardings=(shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,))


# ==============================================================================================
# 2. Logs: console, metrics.jsonl, TensorBoard
# ==============================================================================================
class MetricLogger:
    """One JSON object per write in WORKDIR/metrics.jsonl (appended, flushed): training metrics
    every `log_every` steps, validation metrics (val_*) every `eval_every` steps, each with its
    step; the same as TensorBoard scalars in WORKDIR/tensorboard. Only the writer process
    (`sharding.is_writer`) writes; the metrics are global, so every process holds the same."""

    def __init__(self, workdir: str, resume_step: int):
        self._file, self._tb = None, None
        if not sharding.is_writer():
            return
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        _truncate_jsonl(self.path, resume_step)  # a restart from step s drops lines logged after s
        self._file = open(self.path, "a")
        self._tb = None
        try:
            import tensorflow as tf

            self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
        except Exception as e:  # TensorBoard is a convenience: the jsonl is the record
            log.warning("TensorBoard logging off: %s", e)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self._file is None:
            return
        record = {"step": step, **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            import tensorflow as tf

            with self._tb.as_default(step=step):
                for k, v in metrics.items():
                    tf.summary.scalar(k, v)
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def _truncate_jsonl(path: str, last_step: int) -> None:
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


# ==============================================================================================
# 3. The loop
# ==============================================================================================
class NonFiniteLoss(RuntimeError):
    pass


MakeBatches = Callable[[dict | None, RetrievalConfig], tuple[Iterator[dict], Callable[[], dict]]]


def dataset_batch_factory(cfg) -> MakeBatches:
    """`make_batches` for `train`: the training split of the prepared dataset, resumable."""
    def make(data_state, model_config):
        pipe = dataset_input(cfg, "train", True, model_config, cfg.global_batch_size)
        if data_state is not None:
            pipe.restore(data_state)
        return iter(pipe), pipe.state
    return make


def train(cfg, workdir: str, make_batches: MakeBatches, *, mesh: Mesh | None = None,
          stop_after: int | None = None) -> TrainState:
    """Train `cfg` in `workdir`, resuming from its newest checkpoint.

    make_batches(data_state or None, model_config) -> (iterator of this host's numpy batches,
    get_data_state): the input pipeline, restartable from a saved position. `stop_after` ends
    the run early after that many steps of this invocation (tests use it to simulate a kill);
    SIGTERM saves and exits. A second trainer on the same `workdir` stops with
    `workdir_lock.WorkdirBusy`, naming the first one's host and pid (process 0 of a run holds it).
    """
    validate_config(cfg)
    with workdir_lock.held(workdir) if sharding.is_writer() else contextlib.nullcontext():
        return _train(cfg, workdir, make_batches, mesh, stop_after)


def _train(cfg, workdir: str, make_batches: MakeBatches, mesh: Mesh | None, stop_after: int | None) -> TrainState:
    if cfg.data_dir:  # word weights from another tagger than data.tagger change the method: say so loudly
        if warning := tagger_warning(cfg.data_dir, cfg.dataset, cfg.data.tagger):
            log.warning(warning)
    mesh = mesh or sharding.make_mesh(tuple(cfg.mesh_shape))
    if cfg.global_batch_size % (sharding.num_batch_shards(mesh) * cfg.accumulation_steps):
        raise ValueError(f"global_batch_size={cfg.global_batch_size} must be divisible by the batch shards "
                         f"({sharding.num_batch_shards(mesh)}) x accumulation_steps ({cfg.accumulation_steps})")
    model, clip_params = build_model(cfg)
    loss_cfg = loss_config(cfg)
    optimizer = make_optimizer(cfg.optim, cfg.total_steps)
    validate = _validator(cfg, model, mesh)
    state, shardings = create_train_state(cfg, model, optimizer, mesh, clip_params)
    manager = checkpoint_manager(workdir, cfg.keep_checkpoints)
    data_state = None
    if manager.latest_step() is not None:
        state, data_state, skipped = restore_newest_intact(manager, state, shardings)
        for step, why in skipped:
            log.warning("checkpoint step %d does not restore (%s): moved aside to %s/%d.damaged, resuming from an "
                        "older one", step, why, manager.directory, step)
        log.info("resumed from step %d", int(state.step))
    step_fn = make_train_step(model, loss_cfg, optimizer, mesh, shardings, cfg.accumulation_steps)
    batches, get_data_state = make_batches(data_state, model.config)
    start = int(jax.device_get(state.step))
    logger = MetricLogger(workdir, start)
    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, _: stop.update(signal=signum))
    batch_sharding = sharding.batch_sharding(mesh)
    clips = 0
    t_last = time.perf_counter()
    try:
        for done, step in enumerate(range(start, cfg.total_steps)):
            batch = next(batches)
            # Each host holds its rows of the global batch; assemble the global array.
            missing = [k for k in BATCH_KEYS if k not in batch]
            if missing:
                raise KeyError(f"training batch lacks {missing}; make_batches must yield {BATCH_KEYS}")
            batch = {k: jax.make_array_from_process_local_data(batch_sharding, batch[k]) for k in BATCH_KEYS}
            state, metrics = step_fn(state, batch)
            names = sorted(metrics)  # the order of the non-finite bitmask
            clips += cfg.global_batch_size
            last = step + 1 == cfg.total_steps or (stop_after is not None and done + 1 >= stop_after)
            if (step + 1) % cfg.log_every == 0 or last or stop["signal"]:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(state, names)
                now = time.perf_counter()
                metrics["clips_per_s"] = clips / (now - t_last)
                clips, t_last = 0, now
                logger.write(step + 1, metrics)
                eta = (cfg.total_steps - step - 1) * cfg.global_batch_size / max(metrics["clips_per_s"], 1e-9)
                log.info("step %d/%d loss %.4f (dmae %.4f%s) %.1f clips/s ETA %.0fs", step + 1, cfg.total_steps,
                         metrics["loss"], metrics["dmae"], f", tpm {metrics['tpm']:.4f}" if "tpm" in metrics else "",
                         metrics["clips_per_s"], eta)
            # Validated steps are checkpointed, so the best one can be kept. Not on SIGTERM: leave fast.
            validate_now = validate is not None and not stop["signal"] and (
                (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.total_steps)
            if (step + 1) % cfg.checkpoint_every == 0 or last or stop["signal"] or validate_now:
                _check_finite(state, names)
                validation = None
                if validate_now:
                    t_val = time.perf_counter()
                    validation = validate(state.params)  # the params in memory; state and input untouched
                    t_last += time.perf_counter() - t_val  # clips_per_s counts training time only
                    logger.write(step + 1, validation)
                    log.info("step %d validation: t2v R@1 %.2f, v2t R@1 %.2f", step + 1,
                             validation["val_t2v_R@1"], validation["val_v2t_R@1"])
                save_checkpoint(manager, state, get_data_state(), validation)
            if last or stop["signal"]:
                break
    finally:
        manager.wait_until_finished()
        manager.close()
        logger.close()
        signal.signal(signal.SIGTERM, previous)
    return state


def _validator(cfg, model: RetrievalModel, mesh: Mesh) -> Callable | None:
    """fn(params) -> validation metrics every `eval_every` steps (docs/method.md section 5.2), or
    None (logged once) when `cfg` validates nothing."""
    why = evaluate.validation_off(cfg)
    if why is not None:
        log.info("no validation during training: %s; evaluation will report the last checkpoint", why)
        return None
    log.info("validation on the '%s' split every %d steps; the best checkpoint is kept", evaluate.VALIDATION_SPLIT,
             cfg.eval_every)
    return evaluate.validator(cfg, model, mesh)


def _check_finite(state: TrainState, metric_names: list[str]) -> None:
    """Stop on the first non-finite step: name the step and the loss parts that were non-finite."""
    bad_step = int(jax.device_get(state.bad_step))
    if bad_step >= 0:
        mask = int(jax.device_get(state.bad_metrics_bitmask))
        names = [n for i, n in enumerate(metric_names) if mask >> i & 1] or [f"bitmask {mask}"]
        raise NonFiniteLoss(
            f"non-finite {', '.join(names)} at step {bad_step + 1}; that update was skipped and the last good "
            "checkpoint is intact. Lower the learning rate, check the data (prepare_report.json) or use float32 compute.")
