"""What every backend of `rnnjax.unroll` shares: its signature, its support predicate, the
problem description the predicate reads, and the masking rule for lengths.

A backend is a pair of pure functions (`Backend`)::

    run(cell, params, px, carry, lengths, *, unroll, remat) -> (final_carry, ys)
    supports(cell, problem) -> Support        # yes, or the reason why not — never raises

with px the hoisted input projection (T, *batch, G) in time-major order, carry the initial
carry (leaves (*batch, ·)), lengths None or int (*batch,) and ys (T, *batch, H). With lengths,
steps t >= length leave the carry unchanged and output zeros, so the final carry is the carry
at each sequence's last valid step. Reversal, layout and the masking of padded inputs are the
driver's job (`rnnjax.driver`), not the backend's. ``backend="scan"`` is the reference: every
other backend equals it, forward and gradients.

``supports`` is pure and cheap: it reads the cell's `rnnjax.cells.base.Structure`, the shapes,
the dtype and the platform, never traces or compiles anything, so ``backend="auto"`` can ask
every backend and an explicit backend that cannot run a cell raises a ValueError with the
reason.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array, Carry, Cell, Params


class Problem(NamedTuple):
    """What a support predicate may look at (all static).

    Attributes:
        steps: T.
        batch: the flattened batch size N (1 for one sequence).
        dtype: the carry dtype (`rnnjax.cells.base.carry_dtype`).
        platform: "cpu", "gpu" or "tpu".
        remat: whether the caller asked for rematerialisation.
    """

    steps: int
    batch: int
    dtype: Any
    platform: str
    remat: bool = False


class Support(NamedTuple):
    """A predicate's answer: ``ok`` and, when not, the ``reason`` (one sentence)."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


YES = Support(True)


def no(reason: str) -> Support:
    """A negative `Support` with its reason."""
    return Support(False, reason)


class RunFn(Protocol):
    def __call__(
        self,
        cell: Cell,
        params: Params,
        px: Array,
        carry: Carry,
        lengths: Array | None,
        *,
        unroll: int = 1,
        remat: bool = False,
    ) -> tuple[Carry, Array]:
        """Runs the time loop: ``(final_carry, ys (T, *batch, H))``."""
        ...


class SupportsFn(Protocol):
    def __call__(self, cell: Cell, problem: Problem) -> Support:
        """Whether the backend runs ``cell`` on this problem (never raises)."""
        ...


class Backend(NamedTuple):
    """A registered backend.

    Attributes:
        name: its name in ``unroll(..., backend=name)``.
        run: the time loop (`RunFn`).
        supports: the predicate (`SupportsFn`).
        description: one line for docs and error messages.
    """

    name: str
    run: RunFn
    supports: SupportsFn
    description: str


def structured(cell: Cell, backend: str, *, recurrent: bool = True) -> Support:
    """Whether ``cell`` has the structured form a derived backend needs."""
    s = cell.structure
    if s is None:
        return no(
            f"backend={backend!r} derives its loop from a cell's structured form (recurrent "
            f"weights + pointwise, rnnjax.cells.base.Structure); the {cell.name!r} cell has "
            f"only a recur function: use backend='scan'"
        )
    if recurrent and s.gates < 1:
        return no(f"backend={backend!r} needs at least one gate block")
    return YES


def problem_of(cell: Cell, params: Params, px: Array, carry: Carry, remat: bool) -> Problem:
    """The `Problem` of a backend call (static shapes and dtypes only)."""
    del cell, params
    leaves = jax.tree.leaves(carry)
    dtype = leaves[0].dtype if leaves else px.dtype
    batch = 1
    for d in px.shape[1:-1]:
        batch *= int(d)
    return Problem(int(px.shape[0]), batch, jnp.dtype(dtype), jax.devices()[0].platform, remat)


def mask_step(valid: Array, new_carry: Any, old_carry: Any, y: Array) -> tuple[Any, Array]:
    """Keeps ``old_carry`` and zeroes ``y`` where ``valid`` (shape (*batch,)) is False."""
    keep = valid[..., None]  # (*batch, 1)
    carry = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_carry, old_carry)
    return carry, jnp.where(keep, y, jnp.zeros_like(y))
