r"""The ``"associative"`` backend: a parallel prefix scan for cells linear in the carry.

For h_t = a_t ⊙ h_{t-1} + b_t (the cells of `rnnjax.cells.linear`), step t is the affine map
h ↦ a_t ⊙ h + b_t, and composing two steps is again affine::

    (a_1, b_1) ∘ (a_2, b_2) = (a_1 ⊙ a_2, a_2 ⊙ b_1 + b_2)      (step 1 first)

so all prefixes h_1..h_T come out of `jax.lax.associative_scan` in O(log T) depth
(Blelloch 1990; Martin & Cundy 2018). The initial carry is folded into the first step
(b_0 ← a_0 ⊙ h_0 + b_0). Lengths freeze the carry and zero the output at t >= length by
replacing those steps with the identity map (a = 1, b = 0).

The backward pass is itself a linear recurrence run in reverse — with g_t the cotangent of
h_t, dh_t = g_t + a_{t+1} ⊙ dh_{t+1}, db_t = dh_t and da_t = dh_t ⊙ h_{t-1} — so a
`jax.custom_vjp` runs it as a second associative scan instead of differentiating through the
scan's slicing tree.

The coefficients come from the cell's `rnnjax.cells.base.Structure` (``linear_coefficients``),
from which the cell's ``recur`` is also defined; the readable reference is that ``recur``
under `rnnjax.kernels.scan.scan_backend`. A cell without them is refused by `supports`.

References:
    Blelloch, "Prefix sums and their applications", 1990.
    Martin & Cundy, "Parallelizing linear recurrent neural nets over sequence length", 2018.
    Feng et al., "Were RNNs all we needed?", 2024.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array, Cell, split_blocks
from rnnjax.kernels.base import YES, Backend, Problem, Support, no


def _compose(first, second):
    """Composition of affine maps, ``first`` applied before ``second``."""
    a1, b1 = first
    a2, b2 = second
    return a1 * a2, a2 * b1 + b2


def linear_recurrence_reference(a: Array, b: Array) -> Array:
    """h_t = a_t ⊙ h_{t-1} + b_t from h_{-1} = 0, one step at a time (the reference).

    Args:
        a, b: (T, ...) coefficients.

    Returns:
        (T, ...) the states h_t.
    """

    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    return jax.lax.scan(step, jnp.zeros_like(b[0]), (a, b))[1]


@jax.custom_vjp
def linear_recurrence(a: Array, b: Array) -> Array:
    """h_t = a_t ⊙ h_{t-1} + b_t from h_{-1} = 0, by a parallel prefix scan over axis 0.

    Args:
        a, b: (T, ...) coefficients.

    Returns:
        (T, ...) the states h_t; equals `linear_recurrence_reference`.
    """
    return jax.lax.associative_scan(_compose, (a, b), axis=0)[1]


def _recurrence_fwd(a, b):
    h = linear_recurrence(a, b)
    return h, (a, h)


def _recurrence_bwd(residuals, g):
    a, h = residuals  # (T, ...) each
    # dh_t = g_t + a_{t+1} dh_{t+1}: the same recurrence run from the end.
    a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])], axis=0)  # (T, ...)
    dh = jax.lax.associative_scan(_compose, (a_next, g), axis=0, reverse=True)[1]
    h_prev = jnp.concatenate([jnp.zeros_like(h[:1]), h[:-1]], axis=0)  # (T, ...)
    return dh * h_prev, dh


linear_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def supports(cell: Cell, problem: Problem) -> Support:
    """Cells linear in their carry (``structure.linear_coefficients``), any platform.

    ``remat`` is accepted: the scan stores only the coefficients (a, b), no per-step
    activations, which is already what rematerialisation would leave.
    """
    del problem
    s = cell.structure
    if s is None or s.linear_coefficients is None:
        return no(
            f"backend='associative' needs a cell linear in its carry (a Structure with "
            f"linear_coefficients: diagonal_linear_rnn, min_gru, min_lstm); the {cell.name!r} "
            f"cell is not; use backend='scan' or 'fused'"
        )
    return YES


def associative_backend(cell, params, px, carry, lengths, *, unroll=1, remat=False):  # RunFn
    """Backend ``"associative"`` (signature of `rnnjax.kernels.base.RunFn`).

    Args:
        cell: a cell linear in its carry, e.g. `rnnjax.diagonal_linear_rnn`,
            `rnnjax.min_gru`, `rnnjax.min_lstm`.
        params: its parameters.
        px: projected inputs, (T, *batch, G).
        carry: initial ``RNNCarry(h)``, h (*batch, H).
        lengths: None or int (*batch,).
        unroll, remat: ignored (there is no sequential loop to unroll or checkpoint).

    Returns:
        ``(final_carry, ys)`` with ys (T, *batch, H).
    """
    del unroll, remat
    s = cell.structure
    assert s is not None and s.linear_coefficients is not None, "see supports"
    (h0,) = jax.tree.leaves(carry)  # (*batch, H)
    a, b = s.linear_coefficients(s.unit_params(params), split_blocks(px, s.gates))  # (T, *batch, H)
    if lengths is not None:
        t = jnp.arange(px.shape[0]).reshape((-1,) + (1,) * lengths.ndim)  # (T, *1)
        valid = (t < lengths[None])[..., None]  # (T, *batch, 1)
        a = jnp.where(valid, a, jnp.ones_like(a))  # identity map past the length
        b = jnp.where(valid, b, jnp.zeros_like(b))
    b = b.at[0].add(a[0] * h0)  # fold the initial carry into the first step
    hs = linear_recurrence(a, b)  # (T, *batch, H)
    final = jax.tree.unflatten(jax.tree.structure(carry), [hs[-1]])
    ys = hs if lengths is None else jnp.where(valid, hs, jnp.zeros_like(hs))
    return final, ys


ASSOCIATIVE = Backend(
    "associative",
    associative_backend,
    supports,
    "parallel prefix scan for cells linear in the carry (O(log T) depth)",
)
