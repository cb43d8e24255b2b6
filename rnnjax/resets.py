r"""Resets: restart the carry at marked steps (episode boundaries, packed documents).

``rj.unroll(cell, params, xs, resets=r)`` with r boolean (B, T): where r[b, t] is true, the
carry entering the step that reads x_t is the cell's initial carry
``cell.initial_carry(params)`` (zeros for the library's cells) instead of the carry left by
the previous step, and no gradient crosses that step (as haiku's ``ResetCore``). A sequence
with resets equals its pieces run separately, each from the initial carry.

The loop is not changed for it: `resettable` derives a cell whose structure does the reset
inside ``pointwise``. The flag r_t rides in px as one more gate block
(`rnnjax.cells.transform`), and with h_0 the initial h and c_0 its other leaves::

    carry_{t-1} <- r_t ? (h_0, c_0, …) : carry_{t-1}
    hw_t        <- r_t ? h_0 W         : h_{t-1} W          # h_0 W: unit parameters (K of (H,))

so every backend that runs the cell runs it with resets: ``scan`` (any cell), ``fused`` and
``pallas`` (structured cells; for ``pallas`` the reset is per unit, so element-wise cells stay
element-wise), ``associative`` (cells linear in the carry: a_t <- 0 and b_t <- a_t h_0 + b_t
where r_t). ``fused_cpu`` and ``pallas_verified`` run only the plain cells they specialise on,
and their predicates refuse the transformed cell with the reason. Because the recurrent
pre-activation is replaced rather than summed, the cell's gate blocks are no longer *tied*
(the fused loop saves px_t and hw_t apart), and the extra block adds H columns to the
recurrent matmul.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.cells.base import Array, Cell, expand, make_cell, matmul, split_blocks
from rnnjax.cells.transform import (
    TransformedConfig,
    broadcast_block,
    extended_project,
    extended_structure,
    split_extra,
    split_px,
    where_leaves,
)


def _initial_leaves(cell: Cell, params: Any) -> tuple[Array, ...]:
    """The leaves of ``cell.initial_carry(params, ())``, each (H,) (or the leaf's width)."""
    return tuple(jax.tree.leaves(cell.initial_carry(params, ())))


def resettable(cell: Cell) -> Cell:
    """The cell with a reset flag in the last block of its projected input.

    Its ``project`` appends a block of zeros (no reset); `rnnjax.unroll` fills it from
    ``resets=``. Params and carry are the cell's own.

    Args:
        cell: any cell.

    Returns:
        A `Cell` named ``"<name>+resets"`` whose px has K + 1 blocks (or H more columns for
        a cell without a structure), the last one 1.0 where the step restarts.
    """
    H, s = cell.hidden_size, cell.structure
    project = extended_project(cell, lambda px: jnp.zeros((*px.shape[:-1], H), px.dtype))
    build: dict[str, Any] = dict(
        name=f"{cell.name}+resets",
        hidden_size=H,
        config=TransformedConfig("resets", cell),
        init=cell.init,
        initial_carry=cell.initial_carry,
        project=project,
    )
    if s is None:

        def recur(params, carry, px):
            flag = px[..., -1:] > 0.5  # (…, 1)
            carry = where_leaves(flag, _initial_leaves(cell, params), carry)
            return cell.recur(params, carry, px[..., :-H])

        return make_cell(**build, recur=recur)

    K = s.gates

    def unit_params(params) -> tuple[Array, ...]:
        init = _initial_leaves(cell, params)
        W = s.recurrent_weights(params)
        h0w = () if W is None else split_blocks(matmul(init[0], W, s.compute_dtype), K)
        return (*s.unit_params(params), *h0w, *init)  # (H,) each

    def pointwise(up, carry, px, hw):
        px_in, flag_block = split_px(px)
        hw_in, _ = split_extra(hw)
        S, n_w = len(jax.tree.leaves(carry)), 0 if hw is None else K
        inner_up, h0w, init = up[: -n_w - S], up[-n_w - S : -S], up[-S:]
        flag = flag_block > 0.5  # (…, H): the same in every unit of a row
        carry = where_leaves(flag, init, carry)
        if hw_in is not None:
            hw_in = tuple(
                jnp.where(flag, expand(v, h).astype(h.dtype), h)
                for v, h in zip(h0w, hw_in, strict=True)
            )
        return s.pointwise(inner_up, carry, px_in, hw_in)

    linear = None
    if s.linear_coefficients is not None:
        inner_lc = s.linear_coefficients

        def linear(up, px):  # one carry leaf and no W: up = (*inner, h_0)
            px_in, flag_block = split_px(px)
            a, b = inner_lc(up[:-1], px_in)
            h0 = expand(up[-1], b).astype(b.dtype)
            flag = flag_block > 0.5
            return jnp.where(flag, jnp.zeros_like(a), a), jnp.where(flag, a * h0 + b, b)

    structure = extended_structure(
        s,
        H,
        pointwise=pointwise,
        unit_params=unit_params,
        tied=None if s.linear_coefficients is not None else (False,) * K,
        linear_coefficients=linear,
    )
    return make_cell(**build, structure=structure)


def check_resets(resets: Any, batch_shape: tuple[int, ...], T: int, time_major: bool) -> Array:
    """Checks ``resets`` against the inputs' layout; returns it time-major, (T, *batch) bool.

    Args:
        resets: bool (B, T) (batch-first), (T, B) (``time_major``) or (T,) (one sequence).
        batch_shape: the inputs' batch shape.
        T: the number of steps.
        time_major: the inputs' layout.
    """
    resets = jnp.asarray(resets)
    if resets.dtype != jnp.bool_:
        raise ValueError(f"resets must be a boolean array, got {resets.dtype=}")
    want: tuple[int, ...]
    if not batch_shape:
        want = (T,)
    else:
        want = (T, *batch_shape) if time_major else (*batch_shape, T)
    if resets.shape != want:
        layout = "(T,)" if not batch_shape else "(T, B)" if time_major else "(B, T)"
        raise ValueError(f"resets must have the shape {layout} = {want}, got {resets.shape=}")
    return resets if (time_major or not batch_shape) else jnp.swapaxes(resets, 0, 1)


def reset_block(resets_tm: Array, H: int, dtype: Any) -> Array:
    """The extra px block of `resettable`: (T, *batch) bool -> (T, *batch, H) of 0.0 / 1.0."""
    return broadcast_block(resets_tm, H, dtype)


def segment_ends(resets: Array, time_axis: int) -> Array:
    """Segment starts (as a forward direction reads them) -> the steps a backward one restarts.

    A backward direction reads each segment from its last step, so it restarts at the step
    before each start: ends[t] = starts[t + 1] (and never at the last step).
    """
    shifted = jnp.roll(resets, -1, axis=time_axis)
    last = np.arange(resets.shape[time_axis]) == resets.shape[time_axis] - 1
    last = last.reshape([-1 if a == time_axis else 1 for a in range(resets.ndim)])
    return jnp.where(last, False, shifted)


__all__ = ["check_resets", "reset_block", "resettable", "segment_ends"]
