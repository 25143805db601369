"""The device mesh and every sharding rule of the project, in one place.

The mesh has two axes, ('data', 'fsdp'); sizes of -1 are inferred from the device count. Two
rules place every array:
  - batches: the leading (batch) dimension is split over every axis in `BATCH_AXES` ('data',
    and 'fsdp' too: FSDP uses its axis for data parallelism as well), the rest replicated
    (`batch_sharding`);
  - parameters and optimizer state: each array's largest dimension divisible by the 'fsdp'
    size is split over 'fsdp', arrays under `FSDP_MIN_SIZE` elements are replicated
    (`fsdp_spec`, `fsdp_shardings`); with 'fsdp' of size 1 everything is replicated.
Inside `shard_map` regions (the similarity blocks, evaluation) the same batch axes are named
explicitly; elsewhere jit propagates from these.

Several processes (hosts) make one global mesh: `initialize_distributed` starts JAX's
multi-process runtime before any device is touched, and each process feeds its own rows of every
global batch (`jax.make_array_from_process_local_data`). Arrays every process holds whole (encoded
features to score) enter the mesh with `global_array`; results come back whole to every process
with `gather`; files other than checkpoints are written by one process (`is_writer`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")
FSDP_MIN_SIZE = 2**14  # smaller arrays (norms, biases) are replicated: splitting them saves nothing


HEARTBEAT_TIMEOUT_S = 100  # JAX's default


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> None:
    """jax.distributed.initialize, before any device is used. With no arguments the cluster
    manager says who is who (SLURM, Open MPI, the TPU runtime); a launch by hand (several
    processes on one machine, or hosts without a manager) gives all three: process 0's HOST:PORT,
    the number of processes, this one's index. CPU devices of different processes talk through
    gloo (JAX's CPU collectives); accelerators use their own.

    A process that dies stops sending heartbeats: after `heartbeat_timeout_s` the coordination
    service aborts every other process with "The following tasks are unhealthy (stopped sending
    heartbeats)", instead of leaving them waiting in a collective. Rerunning the same command on
    every host resumes from the newest checkpoint."""
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError("--coordinator, --num-processes and --process-id go together: give all three (a launch by "
                         "hand) or none (the cluster manager's, e.g. SLURM or a TPU pod)")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id {process_id} must be in 0..{num_processes - 1} (--num-processes {num_processes})")
    if heartbeat_timeout_s < 1:
        raise ValueError(f"--heartbeat-timeout {heartbeat_timeout_s} must be >= 1 second")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)


def is_writer() -> bool:
    """Whether this process writes the run's files besides checkpoints (config, logs, evaluation
    reports, an index): process 0 of a multi-process run, the only process otherwise. Orbax
    writes checkpoints from all."""
    return jax.process_index() == 0


def global_array(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """`x`, the same on every process, as one array laid out by `sharding` over the whole mesh:
    each process places only its own devices' parts (a plain device_put cannot reach the others)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def gather(tree: Any) -> Any:
    """A pytree of arrays laid out over the mesh, as numpy arrays whole on every process."""
    return multihost_utils.process_allgather(tree, tiled=True)


def barrier(name: str) -> None:
    """Every process waits here for the others (no-op in one process): files one process wrote
    exist for all once past it."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def make_mesh(shape: Sequence[int] = (-1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh; at most one size may be -1 (inferred from the device count)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must give one size per axis {MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh shape {shape}: sizes must be positive, with at most one -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"mesh shape {shape}: {len(devices)} devices are not divisible by {known}")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh shape {shape} needs {int(np.prod(shape))} devices, {len(devices)} given")
    # Auto axes: classic GSPMD propagation inside jit; shard_map regions are explicit anyway.
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes a global batch is split over (those of size > 1, in mesh order)."""
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh, batch_dim: int = 0) -> NamedSharding:
    """The batch rule: dimension `batch_dim` (the batch; 1 for stacked micro-batches) split over
    the batch axes, the rest replicated."""
    return NamedSharding(mesh, P(*([None] * batch_dim), batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def num_batch_shards(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """The parameter rule: split the largest dimension divisible by `fsdp`; small arrays replicate."""
    if fsdp == 1 or math.prod(shape) < FSDP_MIN_SIZE:
        return P()
    for d in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[d] % fsdp == 0:
            return P(*([None] * d + ["fsdp"]))
    return P()


def fsdp_shardings(tree: Any, mesh: Mesh) -> Any:
    """`fsdp_spec` for every leaf of a pytree of arrays (or shapes): parameters, optimizer state."""
    fsdp = mesh.shape.get("fsdp", 1)
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp)), tree)
