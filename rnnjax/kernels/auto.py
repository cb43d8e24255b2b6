"""``backend="auto"``: the fastest correct backend for the device, the cell and the shape.

The choice is a lookup in `TABLE`, written from the measurements in
``benchmarks/results/cpu_speed.json`` (``make bench``; the GPU rows from the GPU benchmark):
for each platform an ordered list of `Rule` s — the first rule whose shape condition holds and
whose backend accepts the cell *at this shape* wins. "Accepts" is checked by tracing the
candidate abstractly (`jax.eval_shape`): a backend that raises ValueError for the cell or the
shape (the fused backend for a multiplicative RNN, the Pallas kernel when W does not fit on
chip, the associative backend for a non-linear cell) is skipped, so ``"auto"`` never picks a
backend that cannot run and never changes the result — only the speed. ``"scan"`` runs
everything and closes every list.

A rule may also set the loop ``unroll`` (steps per loop iteration): at small batch the
per-iteration overhead of the XLA loop, not arithmetic, sets the time (see the table's
comments). A larger ``unroll`` passed by the caller is kept.

Example:
    >>> carry, ys = rj.unroll(cell, params, xs, backend="auto")
    >>> rnnjax.kernels.auto.choose_backend(cell, batch=32, steps=100, platform="cpu")
    ('fused', 1)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax

from rnnjax.cells.base import Array, Cell


class Rule(NamedTuple):
    """One row of the table: use ``backend`` (with ``unroll``) when the shape fits.

    Attributes:
        backend: a registered backend name.
        unroll: loop steps per iteration for that backend.
        max_batch: apply only when the flattened batch is at most this (None: any).
    """

    backend: str
    unroll: int = 1
    max_batch: int | None = None


# platform -> ordered rules. CPU rows: benchmarks/results/cpu_speed.{json,md} (2-core x86,
# training step and inference of LSTM / GRU at B = 1, 32, 128): at B = 1 the one-call C++
# loop ("fused_cpu") beats the XLA loop, whose time there is per-iteration overhead (and
# unroll=4 trims that overhead for the cells fused_cpu does not run); at B >= 32 the XLA
# loop with its multi-threaded matmuls ("fused") wins. The linear cells of rnnjax.cells.linear
# go to the associative scan (O(log T) depth, no sequential loop).
# GPU rows: the persistent Pallas kernel where W fits on chip, else the fused XLA loop.
TABLE: dict[str, tuple[Rule, ...]] = {
    "cpu": (
        Rule("associative"),
        Rule("fused_cpu", max_batch=4),
        Rule("fused", unroll=4, max_batch=4),
        Rule("fused"),
        Rule("scan"),
    ),
    "gpu": (Rule("associative"), Rule("pallas"), Rule("fused"), Rule("scan")),
    "tpu": (Rule("associative"), Rule("fused"), Rule("scan")),
}


def _accepts(name: str, cell: Cell, args: tuple) -> bool:
    """Whether backend ``name`` traces for ``cell`` on these (abstract) arguments."""
    from rnnjax.kernels import BACKENDS

    if name not in BACKENDS:
        return False
    try:
        jax.eval_shape(lambda *a: BACKENDS[name](cell, *a, unroll=1, remat=False), *args)
    except (ValueError, NotImplementedError):
        return False
    return True


def _abstract_args(cell: Cell, batch: int, steps: int) -> tuple:
    """ShapeDtypeStructs of (params, px, carry, lengths) for a shape, without computing."""
    params = jax.eval_shape(lambda: cell.init(jax.random.key(0), 1))
    px = jax.eval_shape(lambda p: cell.project(p, jax.numpy.zeros((steps, batch, 1))), params)
    carry = jax.eval_shape(lambda p: cell.initial_carry(p, (batch,)), params)
    return params, px, carry, None


def choose_backend(
    cell: Cell,
    batch: int,
    steps: int,
    platform: str | None = None,
    *,
    args: tuple | None = None,
) -> tuple[str, int]:
    """The ``(backend, unroll)`` that ``backend="auto"`` runs.

    Args:
        cell: the cell.
        batch: the flattened batch size (1 for one sequence).
        steps: T.
        platform: "cpu", "gpu" or "tpu"; None means the default device's platform.
        args: optional ``(params, px, carry, lengths)`` (arrays, tracers or shape structs) to
            check the candidates on; by default abstract ones of this shape.

    Returns:
        The first rule of `TABLE` for the platform that fits the shape and whose backend
        accepts the cell; ``("scan", 1)`` if none does.
    """
    platform = platform or jax.devices()[0].platform
    args = args if args is not None else _abstract_args(cell, batch, steps)
    for rule in TABLE.get(platform, TABLE["cpu"]):
        if rule.max_batch is not None and batch > rule.max_batch:
            continue
        if _accepts(rule.backend, cell, args):
            return rule.backend, rule.unroll
    return "scan", 1


def auto_backend(
    cell: Cell,
    params: Any,
    px: Array,
    carry: Any,
    lengths: Array | None,
    *,
    unroll: int = 1,
    remat: bool = False,
) -> tuple[Any, Array]:
    """Backend ``"auto"`` (signature of `rnnjax.kernels.scan.scan_backend`).

    Runs the backend `choose_backend` picks for this cell, platform and shape, with the
    larger of the caller's and the table's ``unroll``.
    """
    from rnnjax.kernels import BACKENDS

    batch = math.prod(px.shape[1:-1])
    name, table_unroll = choose_backend(cell, batch, px.shape[0], args=(params, px, carry, lengths))
    return BACKENDS[name](
        cell, params, px, carry, lengths, unroll=max(unroll, table_unroll), remat=remat
    )
