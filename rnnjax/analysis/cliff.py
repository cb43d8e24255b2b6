"""Pascanu et al.'s one-neuron toy model of the gradient cliff and its bifurcation.

.. math::
    x_t = w\\, \\sigma(x_{t-1}) + b, \\qquad x_0 = 0.5, \\qquad
    E = (\\sigma(x_T) - 0.7)^2, \\quad T = 50, \\; \\sigma = \\text{sigmoid}

For w = 5 the map has one stable fixed point for most b and two (with an unstable one between)
for b in a narrow range: as b crosses the bifurcation x_T jumps from one branch to the other,
so E(b) has a step — a "cliff" — and |∂E/∂b| is huge on it and tiny elsewhere. A gradient
step that lands on the wall is thrown far away: the motivation for clipping.

References:
    Pascanu, Mikolov & Bengio, ICML 2013, section 2.2, figures 4–6.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.analysis._core import check_int
from rnnjax.cells.base import Array


class Cliff(NamedTuple):
    """Result of `cliff` on the grid w × b.

    Attributes:
        w: (W,) the grid of recurrent weights.
        b: (Bg,) the grid of biases.
        loss: E(w, b), (W, Bg).
        grad_w, grad_b: ∂E/∂w and ∂E/∂b, (W, Bg) each.
        final_state: x_T, (W, Bg).
    """

    w: Array
    b: Array
    loss: Array
    grad_w: Array
    grad_b: Array
    final_state: Array


def toy_final_state(w: Array, b: Array, T: int = 50, x0: float = 0.5) -> Array:
    """x_T of x_t = w σ(x_{t-1}) + b from x_0 (scalar w, b)."""

    def body(x, _):
        return w * jax.nn.sigmoid(x) + b, None

    x, _ = jax.lax.scan(body, jnp.asarray(x0, jnp.result_type(w, float)), None, length=T)
    return x


def toy_loss(w: Array, b: Array, T: int = 50, x0: float = 0.5, target: float = 0.7) -> Array:
    """E = (σ(x_T) − target)² of the toy model."""
    return jnp.square(jax.nn.sigmoid(toy_final_state(w, b, T, x0)) - target)


def cliff(w: Any, b: Any, *, T: int = 50, x0: float = 0.5, target: float = 0.7) -> Cliff:
    """Loss, gradient and final state of the toy model over a grid of (w, b).

    Args:
        w: 1-D grid of w values (or a scalar).
        b: 1-D grid of b values (or a scalar).
        T: number of steps (50 in the paper).
        x0: initial state (0.5).
        target: the target of σ(x_T) (0.7).

    Returns:
        `Cliff` with (len(w), len(b)) arrays.

    Raises:
        ValueError: T < 1 or grids that are not 1-D / empty.

    Example:
        >>> out = cliff(jnp.array([5.0]), jnp.linspace(-5, 0, 501))
        >>> int(jnp.argmax(jnp.abs(out.grad_b[0])))        # the b at the cliff
    """
    T = check_int("T", T, 1)
    w = jnp.atleast_1d(jnp.asarray(w, jnp.float32))
    b = jnp.atleast_1d(jnp.asarray(b, jnp.float32))
    for name, grid in (("w", w), ("b", b)):
        if grid.ndim != 1 or grid.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D grid, got shape {grid.shape}")
    value_grad = jax.value_and_grad(lambda w_, b_: toy_loss(w_, b_, T, x0, target), (0, 1))
    grid_fn = jax.vmap(jax.vmap(value_grad, (None, 0)), (0, None))
    loss, (gw, gb) = grid_fn(w, b)  # (W, Bg) each
    final = jax.vmap(jax.vmap(lambda w_, b_: toy_final_state(w_, b_, T, x0), (None, 0)), (0, None))
    return Cliff(w, b, loss, gw, gb, final(w, b))


def plot_cliff(result: Cliff, w_slice: float = 5.0):
    """Figure: E over (w, b); at w ≈ ``w_slice``, x_T against b (the bifurcation) and E with
    |∂E/∂b| against b (the cliff).

    Returns:
        A ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    w, b = np.asarray(result.w), np.asarray(result.b)
    i = int(np.argmin(np.abs(w - w_slice)))
    fig = Figure(figsize=(15, 4), layout="constrained")
    ax_surface, ax_state, ax_loss = fig.subplots(1, 3)
    if w.size > 1 and b.size > 1:
        mesh = ax_surface.pcolormesh(b, w, np.asarray(result.loss), shading="auto")
        fig.colorbar(mesh, ax=ax_surface, label="E")
    ax_surface.set(xlabel="b", ylabel="w", title="loss E(w, b) of x_t = w·σ(x_{t−1}) + b")
    ax_state.plot(b, np.asarray(result.final_state)[i])
    ax_state.set(xlabel="b", ylabel="x_T", title=f"w = {w[i]:g}: x_T jumps at the bifurcation")
    ax_loss.plot(b, np.asarray(result.loss)[i], color="tab:orange", label="E")
    ax_loss.set(xlabel="b", ylabel="E", title="the cliff: E steps, |∂E/∂b| spikes")
    ax_grad = ax_loss.twinx()
    ax_grad.semilogy(b, np.abs(np.asarray(result.grad_b)[i]) + 1e-30, "k:", label="|∂E/∂b|")
    ax_grad.set_ylabel("|∂E/∂b|")
    ax_loss.legend(loc="upper left")
    ax_grad.legend(loc="upper right")
    return fig
