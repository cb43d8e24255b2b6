"""The one table of backends of `rnnjax.unroll`, and ``"auto"`` built on it.

Each backend module exports a `rnnjax.kernels.base.Backend` (its loop and its support
predicate); this module collects them. ``"auto"`` asks the predicates through
`rnnjax.kernels.auto.choose` and runs the winner.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Cell
from rnnjax.kernels import auto
from rnnjax.kernels.associative import ASSOCIATIVE
from rnnjax.kernels.base import YES, Backend, Problem, Support, problem_of, reverse_mode_only
from rnnjax.kernels.fused import FUSED
from rnnjax.kernels.fused_cpu import FUSED_CPU
from rnnjax.kernels.pallas import PALLAS
from rnnjax.kernels.pallas_mosaic_gpu import PALLAS_MOSAIC_GPU
from rnnjax.kernels.pallas_tpu import PALLAS_TPU
from rnnjax.kernels.pallas_verified import PALLAS_VERIFIED
from rnnjax.kernels.scan import SCAN

# Every backend but "scan" is a custom_vjp loop: reverse-mode autodiff only.
BACKENDS: dict[str, Backend] = {
    SCAN.name: SCAN,
    **{
        b.name: reverse_mode_only(b)
        for b in (
            FUSED,
            FUSED_CPU,
            ASSOCIATIVE,
            PALLAS,
            PALLAS_VERIFIED,
            PALLAS_TPU,
            PALLAS_MOSAIC_GPU,
        )
    },
}


def choose_backend(
    cell: Cell,
    batch: int,
    steps: int,
    platform: str | None = None,
    *,
    dtype: Any = "float32",
    remat: bool = False,
) -> tuple[str, int]:
    """The ``(backend, unroll)`` that ``backend="auto"`` runs for this cell and shape.

    Args:
        cell: the cell.
        batch: the flattened batch size (1 for one sequence).
        steps: T.
        platform: "cpu", "gpu" or "tpu"; None means the default device's platform.
        dtype: the carry dtype.
        remat: whether rematerialisation is asked for.
    """
    platform = platform or jax.devices()[0].platform
    problem = Problem(steps, batch, jnp.dtype(dtype), platform, remat)
    return auto.choose(cell, problem, BACKENDS)


def _auto_run(cell, params, px, carry, lengths, *, unroll=1, remat=False):  # RunFn
    problem = problem_of(cell, params, px, carry, remat)
    run, unroll = resolve(BACKENDS["auto"], cell, problem, unroll)
    return run.run(cell, params, px, carry, lengths, unroll=unroll, remat=remat)


def _auto_supports(cell: Cell, problem: Problem) -> Support:
    del cell, problem
    return YES  # "scan" closes every list


BACKENDS["auto"] = Backend(
    "auto", _auto_run, _auto_supports, "the fastest backend whose predicate accepts the cell"
)


def resolve(backend: Backend, cell: Cell, problem: Problem, unroll: int) -> tuple[Backend, int]:
    """The backend that runs: ``"auto"`` becomes its choice for this problem (with the table's
    ``unroll`` where larger), any other stays as it is."""
    if backend.name != "auto":
        return backend, unroll
    name, table_unroll = auto.choose(cell, problem, BACKENDS)
    return BACKENDS[name], max(unroll, table_unroll)


def get_backend(name: str) -> Backend:
    """The backend registered under ``name`` (ValueError listing the names if unknown)."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend={name!r}; choose one of {tuple(BACKENDS)}")
    return BACKENDS[name]
