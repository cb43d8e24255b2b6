"""Lyapunov exponents of the carry dynamics by the QR (Benettin) method.

The lecture: "recurrent networks ∝ chaotic systems". The Lyapunov exponents λ_1 ≥ λ_2 ≥ ...
are the average exponential growth rates, per step, of the products J_t ⋯ J_1 along
orthogonal directions:

.. math::
    Q_0 \\text{ orthonormal } (N \\times k), \\qquad
    J_t Q_{t-1} = Q_t R_t \\;(\\text{QR}), \\qquad
    \\lambda_i = \\frac{1}{T - T_0} \\sum_{t > T_0} \\log |R_t[i, i]|

after a transient of T_0 steps that lets the frame align with the dynamics. λ_1 > 0 means
nearby trajectories separate (chaos, exploding sensitivity), λ_1 < 0 that they converge
(vanishing memory of c_0). Checks (tests): a constant Jacobian M gives log|eig(M)|;
Σ_i λ_i (k = N) equals the mean of log|det J_t|; the random tanh map x ← J tanh(x) with
J_ij ~ N(0, g²/N) has λ_1 → log g for g < 1 and λ_1 crosses 0 near g = 1.

References:
    Benettin, Galgani, Giorgilli & Strelcyn, Meccanica 15, 1980.
    Engelken, Wolf & Abbott, "Lyapunov spectra of chaotic recurrent neural networks", 2023.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.analysis._core import check_int, prepare, step_fn, unbatch
from rnnjax.cells.base import Array, Cell


def lyapunov_spectrum(
    cell: Cell,
    params: Any,
    xs: Array,
    carry: Any = None,
    k: int | None = None,
    *,
    transient: int = 0,
    key: Array | None = None,
) -> Array:
    """The k leading Lyapunov exponents (natural log per step) of the driven carry dynamics.

    The trajectory c_0..c_T is the one ``xs`` drives (input-driven exponents; pass zeros for
    the autonomous map). J_t Q is computed with k JVPs per step, never forming J_t.

    Args:
        cell, params: the cell and its parameters.
        xs: (B, T, D) or (T, D).
        carry: initial carry c_0 (None: zeros — a fixed point for many cells; start elsewhere
            to study the attractor).
        k: how many exponents, 1 <= k <= N (default N, the whole spectrum).
        transient: steps to run (and re-orthonormalise) before averaging, 0 <= transient < T.
        key: PRNG key of the random orthonormal start frame (default ``jax.random.key(0)``).

    Returns:
        (B, k) or (k,) exponents, sorted in decreasing order.

    Raises:
        ValueError: k outside [1, N], transient outside [0, T), bad xs or carry.

    Example:
        >>> lam = lyapunov_spectrum(cell, params, jnp.zeros((1000, D)), carry0, k=4,
        ...                         transient=200)
    """
    prob = prepare(cell, params, xs, carry)
    N, T = prob.N, prob.T
    k = N if k is None else check_int("k", k, 1, N)
    transient = check_int("transient", transient, 0, T - 1)
    step = step_fn(cell, params, prob.unflatten)
    key = jax.random.key(0) if key is None else key
    frame0, _ = jnp.linalg.qr(jax.random.normal(key, (N, k), prob.c0.dtype))  # (N, k)
    counted = jnp.arange(T) >= transient  # (T,)

    def one(px, c0):
        def body(acc, inputs):
            c, Q, total = acc  # (N,), (N, k), (k,)
            px_t, keep = inputs
            c_new, lin = jax.linearize(lambda c_: step(c_, px_t), c)
            Z = jax.vmap(lin, in_axes=1, out_axes=1)(Q)  # (N, k) = J_t Q_{t-1}
            Q, R = jnp.linalg.qr(Z)  # (N, k), (k, k)
            growth = jnp.log(jnp.abs(jnp.diagonal(R)))  # (k,)
            return (c_new, Q, total + jnp.where(keep, growth, 0.0)), None

        start = (c0, frame0, jnp.zeros((k,), c0.dtype))
        (_, _, total), _ = jax.lax.scan(body, start, (px, counted))
        return -jnp.sort(-total / (T - transient))  # (k,) decreasing

    return unbatch(jax.vmap(one)(prob.px, prob.c0), prob.batched)
