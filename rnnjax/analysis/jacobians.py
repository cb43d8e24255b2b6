"""Per-step carry Jacobians ∂c_t/∂c_{t-1}: the factors of every BPTT product.

The gradient that flows from c_t back to c_τ is the product of the per-step Jacobians
(lecture, "Another look at the gradients"):

.. math::
    \\frac{\\partial c_t}{\\partial c_\\tau}
        = \\prod_{t \\ge k > \\tau} \\frac{\\partial c_k}{\\partial c_{k-1}}
        = J_t J_{t-1} \\cdots J_{\\tau+1}

`carry_jacobians` materialises the factors J_t (T·N² numbers per example: for small sizes,
tests and pictures); `rnnjax.analysis.jacobian_norms` accumulates the products without ever
storing them. Conventions (flat carries, numerator layout, row-vector cells) are described in
`rnnjax.analysis._core`.
"""

from __future__ import annotations

from typing import Any

import jax

from rnnjax.analysis._core import batch_trajectory, prepare, step_fn, unbatch
from rnnjax.cells.base import Array, Cell


def carry_jacobians(cell: Cell, params: Any, xs: Array, carry: Any = None) -> Array:
    r"""The Jacobian of every step with respect to the previous carry.

    .. math::  J_t = \frac{\partial c_t}{\partial c_{t-1}}, \qquad
               J_t[i, j] = \frac{\partial c_t[i]}{\partial c_{t-1}[j]}, \quad t = 1..T

    taken along the trajectory c_0..c_T that ``xs`` drives, with the input x_t held fixed.
    For a linear RNN (``simple_rnn(H, activation="identity")``, c_t = c_{t-1} W + x_t U + b)
    every J_t = Wᵀ; for the tanh RNN J_t = diag(1 − c_t²) Wᵀ; for the LSTM the flat carry is
    [h, c] and J_t has the blocks [[∂h_t/∂h_{t-1}, ∂h_t/∂c_{t-1}], [∂c_t/∂h_{t-1}, diag(f_t)]]
    (without peepholes).

    Args:
        cell: any `rnnjax.Cell`.
        params: its parameters.
        xs: (B, T, D) batch-first, or (T, D) for one sequence.
        carry: initial carry c_0 (None: zeros).

    Returns:
        (B, T, N, N), or (T, N, N) for unbatched xs; entry [..., t-1, :, :] is J_t. N is the
        flat carry size (H, or 2H for the LSTM's (h, c)). Memory is T·N² per example: use
        `jacobian_norms` for long sequences or wide cells.

    Raises:
        ValueError: bad xs (rank, dtype, features, T = 0) or a carry that does not match.

    Example:
        >>> cell = rj.lstm(4)
        >>> params = cell.init(jax.random.key(0), input_size=3)
        >>> carry_jacobians(cell, params, jnp.ones((2, 5, 3))).shape   # N = 2H = 8
        (2, 5, 8, 8)
    """
    prob = prepare(cell, params, xs, carry)
    step = step_fn(cell, params, prob.unflatten)
    states = batch_trajectory(prob, step)  # (B, T+1, N)
    per_step = jax.vmap(jax.jacfwd(step), in_axes=(0, 0))  # over t
    jacs = jax.vmap(per_step)(states[:, :-1], prob.px)  # (B, T, N, N)
    return unbatch(jacs, prob.batched)
