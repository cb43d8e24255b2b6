"""Data parallelism with `jax.sharding`: one `Mesh` axis "batch" over all devices.

Parameters and optimiser state are replicated; batches and the BPTT carry are split along
their first (batch) axis, one slice per device. The jitted step is written for the whole
batch; XLA (GSPMD) inserts the all-reduce of the gradients. Per-device results therefore
equal single-device training up to the order of floating-point sums.

Several hosts (or several processes on one machine): call `initialize_distributed` first
(``rnnjax train --distributed``) in every process; `jax.devices()` then lists the devices of
all processes and the same code shards over them. Every process holds the whole host-side
data (the seed, the corpus streams) and contributes the pieces of its own devices (`place`,
`shard_rows`); process 0 alone writes config and metrics, and every process writes its part
of each checkpoint. A process that dies ends the others within seconds (a collective with it
fails) or at most the heartbeat timeout (`initialize_distributed`); `exit_on_error` turns that
into one line naming the last good checkpoint (tests/test_multihost.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
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
    """Puts every leaf of ``tree`` on ``sharding`` (one sharding, or a matching tree of them).

    One host: ``jax.device_put``. Several hosts (a sharding over devices this process cannot
    address): each process holds the whole value (parameters initialised from the same seed,
    a seed key) and contributes the pieces of its own devices; a leaf that already has the
    sharding (a restored checkpoint) is kept as it is. PRNG key arrays travel as their raw
    ``key_data``.
    """

    def place_subtree(one: jax.sharding.Sharding, subtree: Any) -> Any:
        return jax.tree.map(lambda leaf: _place_leaf(leaf, one), subtree)

    if isinstance(sharding, jax.sharding.Sharding):
        return place_subtree(sharding, tree)
    return jax.tree.map(place_subtree, sharding, tree)  # ``sharding`` is a prefix of ``tree``


def _place_leaf(leaf: Any, sharding: jax.sharding.Sharding) -> Any:
    if sharding.is_fully_addressable:
        return jax.device_put(leaf, sharding)
    if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
        return leaf
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = _place_leaf(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)  # the whole value, the same on every process
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout: int | None = None,
) -> None:
    """`jax.distributed.initialize` (multi-host), once per process before any other JAX call.

    Without arguments JAX detects the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU);
    elsewhere give the coordinator's ``host:port`` (or set ``JAX_COORDINATOR_ADDRESS``), the
    number of processes and this process's id (0 on the coordinator). On CPUs the processes
    exchange gradients through gloo over TCP (JAX's ``jax_cpu_collectives_implementation``,
    "gloo" by default), so several processes on one machine are a faithful rehearsal of
    several hosts.

    Args:
        coordinator: ``host:port`` of process 0.
        num_processes: how many processes take part.
        process_id: this process, in ``[0, num_processes)``.
        heartbeat_timeout: seconds without a heartbeat after which the coordination service
            declares a process lost and ends the others (None: 100 s, JAX's default). A
            process killed in the middle of a collective is noticed at once by its peers
            (closed TCP connection); this bounds the wait when one hangs or its host
            vanishes.

    Raises:
        ValueError: a ``process_id`` outside ``[0, num_processes)``, a coordinator that is not
            ``host:port``, a non-positive ``num_processes`` or ``heartbeat_timeout``.
    """
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes=}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id=}")
    if coordinator is not None and not coordinator.rpartition(":")[2].isdigit():
        raise ValueError(f"the coordinator must be host:port, got {coordinator=}")
    if heartbeat_timeout is not None and heartbeat_timeout < 1:
        raise ValueError(f"heartbeat_timeout must be at least 1 second, got {heartbeat_timeout=}")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=100 if heartbeat_timeout is None else heartbeat_timeout,
    )
    # On CPUs, gloo connects the processes at their first collective and waits only 30 s
    # (fixed) for all of them to arrive; under load, processes that have drifted apart while
    # building their model miss that window. So the first collective is made here, while
    # the processes are still in step after `initialize` (which waits for all of them); later
    # collectives reuse the connection and wait up to --xla_cpu_collective_timeout_seconds.
    multihost_utils.sync_global_devices("rnnjax: every process connected")


# XLA runtime errors (gloo collectives, the coordination service) start with a status code
_STATUS = re.compile(r"^(UNKNOWN|UNAVAILABLE|INTERNAL|DEADLINE_EXCEEDED|ABORTED|CANCELLED): ")


def is_lost_process(err: BaseException) -> bool:
    """Whether ``err`` is the runtime failure of a multi-process run whose peer is gone.

    A collective whose peer died fails with a ``JaxRuntimeError`` (or, inside some JAX
    utilities, a ValueError carrying the same XLA status message, e.g. ``UNKNOWN: Gloo
    AllGather failed: ... Connection closed by peer``).
    """
    if jax.process_count() == 1:
        return False
    return isinstance(err, jax.errors.JaxRuntimeError) or bool(_STATUS.match(str(err)))


def last_checkpoint(directory: str | Path) -> int | None:
    """The newest finished checkpoint in ``directory`` (None if none), read from the file names.

    Orbax renames a checkpoint to its step only once every process has written its part, so
    a numbered folder is whole; this reads the folder alone (no collective, no other process
    needed).
    """
    folder = Path(directory)
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    return max(steps, default=None)


def lost_process_message(err: BaseException, checkpoints: str | Path) -> str:
    """One line for a user: what happened, which checkpoint is intact, what to do next."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    step = last_checkpoint(checkpoints)
    kept = (
        f"the last good checkpoint is step {step} in {Path(checkpoints).absolute()}"
        if step is not None
        else "no checkpoint was written yet"
    )
    return (
        f"lost contact with another process of this {jax.process_count()}-process run "
        f"({first}); {kept}. Start all {jax.process_count()} processes again with the same "
        f"command and --resume"
    )


@contextlib.contextmanager
def exit_on_error(prefix: str, checkpoints: str | Path) -> Iterator[None]:
    """Command line of a multi-process run: any error ends this process at once.

    JAX's distributed runtime shuts down with a barrier that waits for every process, so a
    process that returns normally after an error waits for its lost peer until the heartbeat
    timeout and is then aborted. Instead, an error leaves through ``os._exit`` after one line
    on stderr (checkpoints are synchronous, metrics lines are flushed as written):

    - a lost peer (`is_lost_process`): `lost_process_message`, exit status 1;
    - a ValueError (bad input): ``"{prefix}: error: ..."``, status 2;
    - a RuntimeError (e.g. `TrainingHaltedError`, raised by every process at the same step):
      its message, status 1; KeyboardInterrupt: status 130; anything else: its traceback,
      status 1.

    On one process (no ``jax.distributed``) errors propagate unchanged.
    """
    try:
        yield
    except BaseException as err:
        if jax.process_count() == 1 or isinstance(err, SystemExit):
            raise
        if is_lost_process(err):
            status, line = 1, f"{prefix}: error: {lost_process_message(err, checkpoints)}"
        elif isinstance(err, ValueError):
            status, line = 2, f"{prefix}: error: {' '.join(str(err).split())}"
        elif isinstance(err, KeyboardInterrupt):
            status, line = 130, f"{prefix}: interrupted"
        elif isinstance(err, RuntimeError):
            status, line = 1, f"{prefix}: {err}"
        else:
            traceback.print_exc()
            status, line = 1, f"{prefix}: {err}"
        print(line, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


__all__ = [
    "AXIS",
    "batch_sharded",
    "check_batch",
    "exit_on_error",
    "initialize_distributed",
    "is_lost_process",
    "last_checkpoint",
    "lost_process_message",
    "make_mesh",
    "place",
    "replicated",
    "shard_rows",
]
