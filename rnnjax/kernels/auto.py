"""``backend="auto"``: the fastest backend that supports the cell, the shape and the device.

The choice is a lookup in `TABLE`, written from the measurements in
``benchmarks/results/cpu_speed.json`` (``make bench``; the GPU rows from the GPU benchmark):
for each platform an ordered list of `Rule` s — the first rule whose shape condition holds and
whose backend's ``supports`` predicate says yes wins. The predicates are pure (they read the
cell's structure, the shapes, the dtype and the platform; see `rnnjax.kernels.base`), so the
choice never traces or compiles anything and never hides an error: a backend that fails
while running is reported, not skipped. ``"auto"`` never changes the result, only the speed;
``"scan"`` runs everything and closes every list.

A rule may also set the loop ``unroll`` (steps per loop iteration): at small batch the
per-iteration overhead of the XLA loop, not arithmetic, sets the time (see the table's
comments). A larger ``unroll`` passed by the caller is kept.

Example:
    >>> rnnjax.kernels.choose_backend(cell, batch=32, steps=100, platform="cpu")
    ('fused', 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from rnnjax.cells.base import Cell
from rnnjax.kernels.base import Backend, Problem


class Rule(NamedTuple):
    """One row of the table: use ``backend`` (with ``unroll``) when the shape fits.

    Attributes:
        backend: a registered backend name.
        unroll: loop steps per iteration for that backend.
        max_batch: apply only when the flattened batch is at most this (None: any).
        min_gates: apply only to cells whose structured form has at least this many gate
            blocks K (cells without one have K = 1 here).
    """

    backend: str
    unroll: int = 1
    max_batch: int | None = None
    min_gates: int = 1


# platform -> ordered rules. CPU rows: benchmarks/results/cpu_speed.{json,md} (2-core x86,
# training step and inference of LSTM / GRU at B = 1, 32, 128): the one-call C++ loop
# ("fused_cpu", threaded at large batch) beats the XLA loop at every measured batch for the
# plain LSTM and GRU it runs. For the other gated cells at B <= 4, unroll=4 trims the XLA loop's
# per-iteration overhead — not for the Simple RNN, whose one-block step it slows by 27 % at
# B = 1 (benchmarks/results/cpu_simple_rnn_speed.md), so the rule asks for K >= 2 gate blocks.
# The linear cells of rnnjax.cells.linear go to the associative scan (O(log T) depth, no
# sequential loop).
# GPU rows: the persistent Pallas kernel where W fits on chip (the GPU-verified per-family
# form first, see rnnjax.kernels.pallas_verified), else the fused XLA loop.
# TPU rows: the Mosaic TPU persistent kernel (rnnjax.kernels.pallas_tpu) where W fits in VMEM,
# else the fused XLA loop; not measured on a TPU (the kernel has run in interpret mode only).
TABLE: dict[str, tuple[Rule, ...]] = {
    "cpu": (
        Rule("associative"),
        Rule("fused_cpu"),
        Rule("fused", unroll=4, max_batch=4, min_gates=2),
        Rule("fused"),
        Rule("scan"),
    ),
    "gpu": (
        Rule("associative"),
        Rule("pallas_verified"),
        Rule("pallas"),
        Rule("fused"),
        Rule("scan"),
    ),
    "tpu": (Rule("associative"), Rule("pallas_tpu"), Rule("fused"), Rule("scan")),
}


def choose(cell: Cell, problem: Problem, backends: Mapping[str, Backend]) -> tuple[str, int]:
    """The ``(backend, unroll)`` that ``backend="auto"`` runs for ``cell`` on ``problem``.

    Args:
        cell: the cell.
        problem: shapes, dtype, platform and remat (`rnnjax.kernels.base.Problem`).
        backends: the registry to choose from.

    Returns:
        The first rule of `TABLE` for the platform whose shape condition holds and whose
        backend supports the cell; ``("scan", 1)`` if none does.
    """
    for rule in TABLE.get(problem.platform, TABLE["cpu"]):
        if rule.max_batch is not None and problem.batch > rule.max_batch:
            continue
        if rule.min_gates > 1 and (cell.structure is None or cell.structure.gates < rule.min_gates):
            continue
        backend = backends.get(rule.backend)
        if backend is not None and backend.supports(cell, problem):
            return rule.backend, rule.unroll
    return "scan", 1
