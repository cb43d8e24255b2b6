"""Where the gradient of the loss comes from in time: ‖∂L/∂c_t‖, ‖∂L_t/∂c_τ‖ and ∂L/∂θ by lag.

The loss of a sequence is a sum over time, L = Σ_t L_t(y_t), and its gradient a double sum
(lecture, "Rescaling vanishing gradients?"):

.. math::
    \\frac{\\partial L}{\\partial \\theta}
        = \\sum_t \\sum_{\\tau \\le t} \\frac{\\partial L_t}{\\partial c_t}
          \\frac{\\partial c_t}{\\partial c_\\tau} \\frac{\\partial^+ c_\\tau}{\\partial \\theta}
        = \\sum_{k \\ge 0} G_k, \\qquad
    G_k = \\sum_\\tau \\frac{\\partial L_{\\tau+k}}{\\partial c_\\tau}
          \\frac{\\partial^+ c_\\tau}{\\partial \\theta}

where ∂⁺c_τ/∂θ is the immediate derivative of step τ (c_{τ-1} held fixed). G_k is the part
of the gradient carried over a lag of k steps. When ‖∂c_t/∂c_τ‖ ~ η^{t−τ} with η < 1,
‖G_k‖ decays like η^k: rescaling the total gradient (as clipping does) multiplies every G_k
by the same factor, so the long-lag terms stay negligible next to the short ones — the
lecture's "more intuitively" slides, measured.

All derivatives ∂L/∂c_t are taken with respect to a zero perturbation δ_t added to each carry,
c_t ← f(c_{t-1}, x_t) + δ_t, so that one backward pass gives all of them; the output read by
the loss is y_t = h_t, the ``h`` field of the (perturbed) carry — the output of every rnnjax
cell. Unlike `jacobian_norms` these are plain float32 autodiff values: entries below ~1e-38
are 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax.analysis._core import (
    Problem,
    batch_trajectory,
    flatten_carry,
    output_of,
    prepare,
    step_fn,
    unbatch,
)
from rnnjax.cells.base import Array, Cell


class LossGradientNorms(NamedTuple):
    """Result of `loss_gradient_norms`.

    Attributes:
        loss: the scalar loss L.
        norms: ‖∂L/∂c_t‖ for t = 0..T (index t), (B, T+1) or (T+1,); per example.
        grads: ∂L/∂c_t itself, (B, T+1, N) or (T+1, N) (flat carries).
    """

    loss: Array
    norms: Array
    grads: Array


class TemporalContributions(NamedTuple):
    """Result of `temporal_contributions` (t, τ = 1..T stored at index t−1, τ−1).

    Attributes:
        matrix: ‖∂L_t/∂c_τ‖ per example, (B, T, T) or (T, T): row t (loss term), column τ
            (carry); zero above the diagonal (τ > t).
        lag_norms: ‖G_k‖ for lags k = 0..T−1, (T,) (global norm over all parameters).
        lag_norms_by_param: the params structure with ‖G_k‖ of each field, (T,) leaves.
        gradient: ∂L/∂θ = Σ_k G_k, the params structure (equals autodiff through
            `rnnjax.unroll`).
    """

    matrix: Array
    lag_norms: Array
    lag_norms_by_param: Any
    gradient: Any


def perturbed_outputs(cell: Cell, params: Any, prob: Problem, deltas: Array) -> Array:
    """Outputs y_t = h(c_t + δ_t) of the run with a perturbation added to every carry.

    Args:
        prob: from `prepare`.
        deltas: (T+1, B, N); δ_0 is added to the initial carry.

    Returns:
        ys, (B, T, H) (batch-first, like `rnnjax.unroll`).
    """
    step = step_fn(cell, params, prob.unflatten)

    def body(c, inputs):
        px_t, delta = inputs  # (B, G), (B, N)
        c = jax.vmap(step)(c, px_t) + delta  # (B, N)
        return c, output_of(prob.unflatten, c)

    px_tm = jnp.swapaxes(prob.px, 0, 1)  # (T, B, G)
    _, ys = jax.lax.scan(body, prob.c0 + deltas[0], (px_tm, deltas[1:]))  # (T, B, H)
    return jnp.swapaxes(ys, 0, 1)  # (B, T, H)


def carry_gradients(
    loss_fn: Callable[[Array], Array], cell: Cell, params: Any, prob: Problem
) -> tuple[Array, Array]:
    """(L, ∂L/∂c_t for t = 0..T as (T+1, B, N)) from one backward pass (see module doc)."""
    B, T, N = prob.px.shape[0], prob.T, prob.N
    zeros = jnp.zeros((T + 1, B, N), prob.c0.dtype)  # (T+1, B, N)

    def loss_of(deltas):
        ys = perturbed_outputs(cell, params, prob, deltas)
        return loss_fn(ys if prob.batched else ys[0])

    out = jax.eval_shape(loss_of, zeros)
    if not hasattr(out, "shape") or out.shape != ():
        raise ValueError(
            f"loss_fn must return a scalar, got {getattr(out, 'shape', type(out))} "
            f"(reduce over batch and time, e.g. with .mean())"
        )
    return jax.value_and_grad(loss_of)(zeros)


def loss_gradient_norms(
    loss_fn: Callable[[Array], Array], cell: Cell, params: Any, xs: Array, carry: Any = None
) -> LossGradientNorms:
    r"""‖∂L/∂c_t‖ for every t = 0..T from a single backward pass.

    .. math::
        \frac{\partial L}{\partial c_t}
            = \frac{\partial L}{\partial \delta_t}\Big|_{\delta=0},
        \qquad c_t \leftarrow f(c_{t-1}, x_t; \theta) + \delta_t

    This is the total derivative used by BPTT and by Pascanu's Ω: the direct term through
    y_t plus everything that flows back from later steps.

    Args:
        loss_fn: ``ys -> scalar`` with ys (B, T, H) batch-first (or (T, H) for unbatched xs),
            ys being the cell outputs y_t = h_t; close over targets.
        cell, params: the cell and its parameters.
        xs: (B, T, D) or (T, D).
        carry: initial carry c_0 (None: zeros).

    Returns:
        `LossGradientNorms` (loss, per-example norms (B, T+1), the flat gradients).

    Raises:
        ValueError: loss_fn does not return a scalar; bad xs or carry.

    Example:
        >>> out = loss_gradient_norms(lambda ys: (ys[:, -1] ** 2).sum(), cell, params, xs)
        >>> out.norms.shape                      # (B, T+1): t = 0 is the initial carry
    """
    prob = prepare(cell, params, xs, carry)
    loss, grads = carry_gradients(loss_fn, cell, params, prob)
    grads = jnp.swapaxes(grads, 0, 1)  # (B, T+1, N)
    norms = jnp.linalg.norm(grads, axis=-1)  # (B, T+1)
    return LossGradientNorms(loss, unbatch(norms, prob.batched), unbatch(grads, prob.batched))


def temporal_contributions(
    step_loss: Callable[[Array, Array], Array],
    cell: Cell,
    params: Any,
    xs: Array,
    carry: Any = None,
) -> TemporalContributions:
    r"""The T×T matrix ‖∂L_t/∂c_τ‖ and the split of ∂L/∂θ by lag k = t − τ.

    The lag-k cotangents a^{(k)}_τ = ∂L_{τ+k}/∂c_τ obey a^{(0)}_τ = ∂L_τ/∂c_τ (through y_τ)
    and a^{(k+1)}_τ = a^{(k)}_{τ+1} J_{τ+1}; one VJP of all T steps side by side turns every
    a^{(k)} into both a^{(k+1)} and G_k = Σ_τ a^{(k)}_τ ∂⁺c_τ/∂θ. A scan over k = 0..T−1
    fills the matrix diagonal by diagonal, with memory O(T·B·N) instead of O(T²·B·N).
    Σ_k G_k = ∂L/∂θ exactly (tested).

    Args:
        step_loss: ``(y_t, t) -> L_t`` scalar, with y_t (B, H) (or (H,) for unbatched xs) and
            t the 0-based step index (an int32 scalar, traced: index targets with it).
            L = Σ_t L_t.
        cell, params: the cell and its parameters.
        xs: (B, T, D) or (T, D).
        carry: initial carry c_0 (None: zeros).

    Returns:
        `TemporalContributions`.

    Raises:
        ValueError: step_loss does not return a scalar; bad xs or carry.

    Example:
        >>> readout = jax.random.normal(jax.random.key(1), (H,))
        >>> out = temporal_contributions(lambda y, t: (y @ readout).sum(), cell, params, xs)
        >>> out.lag_norms[0] / out.lag_norms[50]      # how much weaker lag 50 is than lag 0
    """
    prob = prepare(cell, params, xs, carry)
    T = prob.T
    step = step_fn(cell, params, prob.unflatten)
    states = batch_trajectory(prob, step)  # (B, T+1, N)

    def loss_t(c_t, t):  # L_t from the flat carries c_t (B, N)
        y = output_of(prob.unflatten, c_t)  # (B, H)
        return step_loss(y if prob.batched else y[0], t)

    out = jax.eval_shape(loss_t, states[:, 1], jnp.zeros((), jnp.int32))
    if not hasattr(out, "shape") or out.shape != ():
        raise ValueError(f"step_loss must return a scalar L_t, got {getattr(out, 'shape', out)}")
    steps = jnp.arange(T, dtype=jnp.int32)  # (T,)
    direct = jax.vmap(jax.grad(loss_t), in_axes=(1, 0), out_axes=1)(states[:, 1:], steps)
    # direct: (B, T, N), a^{(0)}_τ = ∂L_τ/∂c_τ at index τ-1

    def all_steps(theta, c_prev):  # every step side by side: (B, T, N) -> (B, T, N)
        def one(c, x):
            return flatten_carry(cell.step(theta, prob.unflatten(c), x)[0])

        return jax.vmap(jax.vmap(one))(c_prev, prob.xs)

    _, vjp = jax.vjp(all_steps, params, states[:, :-1])

    def lag(acc, _):
        a, total = acc  # a^{(k)}: (B, T, N); Σ_{j<k} G_j
        g_theta, g_prev = vjp(a)  # G_k and the cotangents on c_{τ-1}
        a_next = jnp.concatenate([g_prev[:, 1:], jnp.zeros_like(g_prev[:, :1])], axis=1)
        total = jax.tree.map(jnp.add, total, g_theta)
        leaf_norms = jax.tree.map(jnp.linalg.norm, g_theta)
        return (a_next, total), (jnp.linalg.norm(a, axis=-1), leaf_norms)

    zero = jax.tree.map(jnp.zeros_like, params)
    (_, gradient), (diagonals, by_param) = jax.lax.scan(lag, (direct, zero), steps)
    # diagonals[k, b, τ-1] = ‖∂L_{τ+k}/∂c_τ‖  ->  matrix[b, t-1, τ-1] with t = τ + k
    t_idx = jnp.arange(T)[:, None]  # (T, 1)
    tau_idx = jnp.arange(T)[None, :]  # (1, T)
    k_idx = jnp.clip(t_idx - tau_idx, 0, T - 1)  # (T, T)
    gathered = diagonals[k_idx, :, tau_idx]  # (T, T, B)
    matrix = jnp.where((t_idx >= tau_idx)[..., None], gathered, 0.0)  # (T, T, B)
    matrix = jnp.moveaxis(matrix, -1, 0)  # (B, T, T)
    return TemporalContributions(
        matrix=unbatch(matrix, prob.batched),
        lag_norms=jnp.sqrt(sum(jnp.square(n) for n in jax.tree.leaves(by_param))),  # (T,)
        lag_norms_by_param=by_param,
        gradient=gradient,
    )
