"""The reference time loop: `lax.scan` over ``cell.recur``.

This is the readable definition every other backend must equal (forward and gradients); it
runs every cell. See `rnnjax.kernels.base` for the backend signature.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Cell
from rnnjax.kernels.base import YES, Backend, Problem, Support, mask_step


def scan_backend(cell, params, px, carry, lengths, *, unroll=1, remat=False):  # RunFn
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


def supports(cell: Cell, problem: Problem) -> Support:
    """The reference runs every cell."""
    del cell, problem
    return YES


SCAN = Backend("scan", scan_backend, supports, "lax.scan over cell.recur: the reference")
