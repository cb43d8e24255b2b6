"""The LSTM's step Jacobian in closed form: the fast path of `jacobian_norms`.

For the plain LSTM (no peepholes, not coupled, float32 matmuls) with flat carry [h, c]
(row-vector cell: z = px_t + h_{t-1} W, gates (i, f, g, o)):

.. math::
    J_t = \\begin{pmatrix} A & \\mathrm{diag}(d_1) \\\\ C & \\mathrm{diag}(f) \\end{pmatrix},
    \\qquad
    \\begin{aligned}
    C &= \\frac{\\partial c_t}{\\partial h_{t-1}}
       = \\mathrm{diag}(c_{t-1} f') W_f^\\top + \\mathrm{diag}(g\\, i') W_i^\\top
         + \\mathrm{diag}(i\\, g') W_g^\\top \\\\
    A &= \\frac{\\partial h_t}{\\partial h_{t-1}}
       = \\mathrm{diag}(\\tanh(c_t)\\, o') W_o^\\top + \\mathrm{diag}(o \\tanh'(c_t))\\, C \\\\
    d_1 &= \\frac{\\partial h_t}{\\partial c_{t-1}} = o \\tanh'(c_t) f
    \\end{aligned}

with f' = f(1 − f), i' = i(1 − i), o' = o(1 − o), g' = 1 − g². Forming A and C costs O(H²)
per example; then P J and J Q take two (N×H)·(H×H) products each — 8H³ multiply-adds where
pushing the N rows of P through the VJP (or the columns of Q through the JVP) multiplies an
(N, 4H) cotangent by Wᵀ: 16H³. The autodiff path in `rnnjax.analysis.norms` is the reference
(the tests check that both agree).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array, Cell


class StepJacobian(NamedTuple):
    """J_t of one step as two products: ``left(P) = P J_t``, ``right(Q) = J_t Q`` ((N, N))."""

    left: Any
    right: Any


def supports(cell: Cell) -> bool:
    """Whether the closed form applies: the plain float32 LSTM."""
    cfg = cell.config
    return (
        cell.name == "lstm"
        and not cfg.get("peephole")
        and not cfg.get("coupled")
        and cfg.get("dtype") is None
    )


def lstm_linearisation(params: Any, H: int):
    """``(c_{t-1} (2H,), px_t (4H,)) -> (c_t, StepJacobian)`` for the plain LSTM."""
    W = params.W  # (H, 4H)
    W_i, W_f, W_g, W_o = (W[:, k * H : (k + 1) * H] for k in range(4))  # (H, H) each

    def linearise(c_prev: Array, px_t: Array) -> tuple[Array, StepJacobian]:
        h, c = c_prev[:H], c_prev[H:]  # (H,), (H,)
        z = px_t + h @ W  # (4H,)
        i, f, o = (jax.nn.sigmoid(z[k * H : (k + 1) * H]) for k in (0, 1, 3))
        g = jnp.tanh(z[2 * H : 3 * H])
        c_new = f * c + i * g  # (H,)
        tc = jnp.tanh(c_new)
        dh_dc = o * (1.0 - tc * tc)  # ∂h_t/∂c_t, diagonal
        row = lambda a: a[None, :]  # noqa: E731  (scales column j of W_g by a[j])
        C = (W_i * row(g * i * (1 - i)) + W_f * row(c * f * (1 - f)) + W_g * row(i * (1 - g * g))).T
        A = (W_o * row(tc * o * (1 - o))).T + dh_dc[:, None] * C  # (H, H)
        d1 = dh_dc * f  # (H,)

        def left(P):  # P J: (N, N)
            P_h, P_c = P[:, :H], P[:, H:]
            return jnp.concatenate([P_h @ A + P_c @ C, P_h * row(d1) + P_c * row(f)], axis=1)

        def right(Q):  # J Q: (N, N)
            Q_h, Q_c = Q[:H], Q[H:]
            top = A @ Q_h + d1[:, None] * Q_c
            return jnp.concatenate([top, C @ Q_h + f[:, None] * Q_c], axis=0)

        return jnp.concatenate([o * tc, c_new]), StepJacobian(left, right)

    return linearise
