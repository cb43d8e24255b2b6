"""The reference time loop: `lax.scan` over ``cell.recur``.

This is the readable definition every other backend must equal (forward and gradients).
Backends share one signature::

    backend(cell, params, px, carry, lengths, *, unroll, remat) -> (final_carry, ys)

with px the hoisted input projection (T, *batch, G) in time-major order, carry the initial
carry (leaves (*batch, ·)), lengths None or int (*batch,) and ys (T, *batch, H). With lengths,
steps t >= length leave the carry unchanged and output zeros, so the final carry is the carry
at each sequence's last valid step. Reversal and layout are the driver's job, not the backend's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array, Cell


def mask_step(valid: Array, new_carry: Any, old_carry: Any, y: Array) -> tuple[Any, Array]:
    """Keeps ``old_carry`` and zeroes ``y`` where ``valid`` (shape (*batch,)) is False."""
    keep = valid[..., None]  # (*batch, 1)
    carry = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_carry, old_carry)
    return carry, jnp.where(keep, y, jnp.zeros_like(y))


def scan_backend(
    cell: Cell,
    params: Any,
    px: Array,
    carry: Any,
    lengths: Array | None,
    *,
    unroll: int = 1,
    remat: bool = False,
) -> tuple[Any, Array]:
    """Runs ``cell.recur`` over time with `lax.scan`.

    Args:
        cell: the cell.
        params: its parameters.
        px: projected inputs, (T, *batch, G).
        carry: initial carry, leaves (*batch, ·).
        lengths: None or int (*batch,): valid steps per sequence.
        unroll: steps per scan iteration (``lax.scan(unroll=...)``).
        remat: checkpoint each step so the backward pass recomputes its intermediates and
            only the carries are stored (memory O(T·carry) instead of O(T·activations)).

    Returns:
        ``(final_carry, ys)`` with ys (T, *batch, H).
    """

    def body(carry, inputs):
        px_t, t = inputs  # (*batch, G), ()
        new_carry, y = cell.recur(params, carry, px_t)  # y: (*batch, H)
        if lengths is not None:
            new_carry, y = mask_step(t < lengths, new_carry, carry, y)
        return new_carry, y

    if remat:
        body = jax.checkpoint(body, prevent_cse=False)
    steps = jnp.arange(px.shape[0])  # (T,)
    return jax.lax.scan(body, carry, (px, steps), unroll=unroll)
