"""Data parallelism with `jax.sharding`: one `Mesh` axis "batch" over all devices.

Parameters and optimiser state are replicated; batches and the BPTT carry are split along
their first (batch) axis, one slice per device. The jitted step is written for the whole
batch; XLA (GSPMD) inserts the all-reduce of the gradients. Per-device results therefore
equal single-device training up to the order of floating-point sums.

Several hosts: call `initialize_distributed` first (``rnnjax train --distributed``) on every
host; `jax.devices()` then lists the devices of all hosts and the same code shards over them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named "batch" over ``devices`` (default: every device of every host)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device")
    return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Splits the first axis over the mesh; the other axes stay whole."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def check_batch(batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"batch_size={batch_size} must be a multiple of the number of devices ({n}) for "
            f"data-parallel training"
        )


def shard_rows(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """A global array split by rows over the mesh, built from the host copy each process has.

    Every host holds the whole ``array`` (e.g. the corpus streams) and contributes the rows
    of its own devices, so this works on one host and on many.
    """
    sharding = batch_sharded(mesh)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def place(tree: Any, sharding: Any) -> Any:
    """``jax.device_put`` of a tree with one sharding (or a matching tree of them)."""
    return jax.device_put(tree, sharding)


def initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """`jax.distributed.initialize` (multi-host), once per process before any other JAX call.

    Without arguments JAX detects the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU);
    elsewhere give the coordinator's ``host:port`` (or set ``JAX_COORDINATOR_ADDRESS``), the
    number of processes and this process's id (0 on the coordinator).
    """
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


__all__ = [
    "AXIS",
    "batch_sharded",
    "check_batch",
    "initialize_distributed",
    "make_mesh",
    "place",
    "replicated",
    "shard_rows",
]
