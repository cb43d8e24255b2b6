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
from jax.interpreters import ad

from rnnjax.cells.base import Array, Carry, Cell, Params


class Problem(NamedTuple):
    """What a support predicate may look at (all static).

    Attributes:
        steps: T.
        batch: the flattened batch size N (1 for one sequence).
        dtype: the carry dtype (`rnnjax.cells.base.carry_dtype`).
        platform: "cpu", "gpu" or "tpu".
        remat: whether the caller asked for rematerialisation.
        forward_mode: whether the inputs carry forward-mode tangents (``jax.jvp``,
            ``jax.jacfwd``, ``jax.hessian`` applied to the call, seen through `vmap`; see
            `forward_mode_of`): the ``custom_vjp`` backends refuse it, ``"scan"`` runs it.
    """

    steps: int
    batch: int
    dtype: Any
    platform: str
    remat: bool = False
    forward_mode: bool = False


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


def problem_of(
    cell: Cell,
    params: Params,
    px: Array,
    carry: Carry,
    remat: bool,
    forward_mode: bool | None = None,
) -> Problem:
    """The `Problem` of a backend call (shapes, dtypes and the kind of autodiff tracing it).

    ``forward_mode`` None: read from params, px and carry (`forward_mode_of`); a caller that
    passes a shape for px (`jax.ShapeDtypeStruct`) says it from the arrays it has.
    """
    del cell
    leaves = jax.tree.leaves(carry)
    dtype = leaves[0].dtype if leaves else px.dtype
    batch = 1
    for d in px.shape[1:-1]:
        batch *= int(d)
    if forward_mode is None:
        forward_mode = forward_mode_of((params, px, carry))
    platform = jax.devices()[0].platform
    return Problem(int(px.shape[0]), batch, jnp.dtype(dtype), platform, remat, forward_mode)


def forward_mode_of(tree: Any) -> bool:
    """Whether any leaf of ``tree`` is being traced by forward-mode autodiff.

    Looks through the tracers wrapped around each leaf (`vmap`'s, reverse mode's) for a
    JVP tracer: ``jax.jvp``, ``jax.jacfwd`` or ``jax.hessian`` applied to the call. A
    ``jax.jit`` between the transformation and the call hides it (the function is traced
    first, differentiated after): that case gets JAX's own error from a ``custom_vjp``
    backend, and ``backend="scan"`` is the way there.
    """
    jvp_tracer = getattr(ad, "JVPTracer", None)
    if jvp_tracer is None:  # pragma: no cover - a JAX without it: JAX's own error applies
        return False
    for leaf in jax.tree.leaves(tree):
        while isinstance(leaf, jax.core.Tracer):
            if isinstance(leaf, jvp_tracer):
                return True
            leaf = getattr(leaf, "primal", getattr(leaf, "val", None))
    return False


def reverse_mode_only(backend: Backend) -> Backend:
    """``backend`` with its predicate refusing forward-mode autodiff (a ``custom_vjp`` loop)."""

    def supports(cell: Cell, problem: Problem) -> Support:
        if problem.forward_mode:
            return no(
                f"backend={backend.name!r} is a custom_vjp function (reverse-mode autodiff "
                "only); jax.jvp, jax.jacfwd and jax.hessian need backend='scan' (or 'auto')"
            )
        return backend.supports(cell, problem)

    return backend._replace(supports=supports)


def mask_step(valid: Array, new_carry: Any, old_carry: Any, y: Array) -> tuple[Any, Array]:
    """Keeps ``old_carry`` and zeroes ``y`` where ``valid`` (shape (*batch,)) is False."""
    keep = valid[..., None]  # (*batch, 1)
    carry = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_carry, old_carry)
    return carry, jnp.where(keep, y, jnp.zeros_like(y))
