"""Shared plumbing of the analysis tools: validation, flat carries and trajectories.

Every tool in `rnnjax.analysis` looks at the carry as one flat vector per example,

    c_t ∈ R^N,   N = Σ (size of each carry leaf),

the leaves concatenated in the carry's field order — ``RNNCarry(h)`` gives N = H and
``LSTMCarry(h, c)`` gives c_t = [h_t, c_t] with N = 2H (the same order as
``jax.flatten_util.ravel_pytree`` on one example).

Conventions shared by all tools:

- ``xs`` is batch-first ``(B, T, D)`` like `rnnjax.unroll`'s default, or ``(T, D)`` for one
  unbatched sequence; results then have a leading ``B`` axis or none.
- ``carry`` is the initial carry c_0 (None means the cell's zeros), leaves ``(B, ·)`` / ``(·)``.
- Steps are numbered t = 1..T: step t maps c_{t-1} to c_t = f(c_{t-1}, x_t; θ) and reads
  the projected input px_t = ``cell.project(params, xs)[..., t - 1, :]``.
- Jacobians are in numerator layout: J_t[i, j] = ∂c_t[i] / ∂c_{t-1}[j] (what ``jax.jacfwd``
  returns). With the library's row-vector cells (c_t = c_{t-1} W + x_t U + b) a linear RNN has
  J_t = Wᵀ and ∂c_T/∂c_t = (Wᵀ)^{T-t}; in the column-vector convention of Pascanu et al.
  (x_t = W x_{t-1} + ...) the same matrices are written W and W^{T-t}. Norms are identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.cells.base import Array, Cell
from rnnjax.driver import check_carry, check_inputs


class Problem(NamedTuple):
    """A cell, its inputs and its initial carry, in the flat batched form the tools use.

    Attributes:
        xs: raw inputs, (B, T, D) (a batch axis of 1 is added to unbatched inputs).
        px: projected inputs ``cell.project(params, xs)``, (B, T, G).
        c0: flat initial carries, (B, N).
        unflatten: maps (..., N) back to the carry pytree with leaves (..., n_i).
        batched: whether the caller's xs had a batch axis (results keep it only then).
    """

    xs: Array
    px: Array
    c0: Array
    unflatten: Callable[[Array], Any]
    batched: bool

    @property
    def T(self) -> int:
        return self.px.shape[1]

    @property
    def N(self) -> int:
        return self.c0.shape[-1]


def flatten_carry(carry: Any) -> Array:
    """Concatenates the carry's leaves along the last axis: leaves (..., n_i) -> (..., N)."""
    return jnp.concatenate([jnp.asarray(leaf) for leaf in jax.tree.leaves(carry)], axis=-1)


def carry_unflattener(carry: Any) -> Callable[[Array], Any]:
    """The inverse of `flatten_carry` for carries shaped like ``carry`` (any batch shape)."""
    leaves, treedef = jax.tree.flatten(carry)
    splits = np.cumsum([jnp.shape(leaf)[-1] for leaf in leaves])[:-1].tolist()

    def unflatten(flat: Array) -> Any:
        return jax.tree.unflatten(treedef, jnp.split(flat, splits, axis=-1))

    return unflatten


def prepare(cell: Cell, params: Any, xs: Any, carry: Any = None) -> Problem:
    """Validates ``xs`` and ``carry`` against the cell and returns the flat `Problem`.

    Raises:
        ValueError: xs not (B, T, D) / (T, D) floats, T = 0, features that do not match the
            params, or a carry whose structure or shapes do not match the cell.
    """
    xs = check_inputs(params, xs)
    batched = xs.ndim == 3
    T = xs.shape[-2]
    if T == 0:
        raise ValueError(f"xs has no time steps: {xs.shape=} gives T=0")
    batch_shape = (xs.shape[0],) if batched else ()
    carry = check_carry(cell, params, carry, batch_shape)
    c0 = flatten_carry(carry)  # (B, N) or (N,)
    unflatten = carry_unflattener(carry)
    if not batched:
        xs, c0 = xs[None], c0[None]
    px = cell.project(params, xs)  # (B, T, G)
    step = step_fn(cell, params, unflatten)
    out = jax.eval_shape(step, c0[0], px[0, 0])  # the carry dtype the steps produce
    c0 = c0.astype(out.dtype)
    return Problem(xs=xs, px=px, c0=c0, unflatten=unflatten, batched=batched)


def step_fn(cell: Cell, params: Any, unflatten: Callable) -> Callable[[Array, Array], Array]:
    """One step on flat carries: ``(c_{t-1} (N,), px_t (G,)) -> c_t (N,)``."""

    def step(c: Array, px_t: Array) -> Array:
        new_carry, _ = cell.recur(params, unflatten(c), px_t)
        return flatten_carry(new_carry)

    return step


def output_of(unflatten: Callable, c: Array) -> Array:
    """The output y_t of the flat carry c_t: its ``h`` field (y_t = h_t for every rnnjax cell)."""
    carry = unflatten(c)
    if not hasattr(carry, "h"):
        raise ValueError(
            f"the carry {type(carry).__name__} has no field 'h'; the analysis tools read the "
            f"output y_t as carry.h"
        )
    return carry.h


def trajectory(step: Callable, px: Array, c0: Array) -> Array:
    """The carries c_0..c_T of one example: (T+1, N), from px (T, G) and c0 (N,)."""

    def body(c, px_t):
        c_new = step(c, px_t)
        return c_new, c_new

    _, cs = jax.lax.scan(body, c0, px)  # (T, N): c_1..c_T
    return jnp.concatenate([c0[None], cs], axis=0)  # (T+1, N)


def batch_trajectory(prob: Problem, step: Callable) -> Array:
    """`trajectory` for every example: (B, T+1, N)."""
    return jax.vmap(trajectory, in_axes=(None, 0, 0))(step, prob.px, prob.c0)


def unbatch(tree: Any, batched: bool) -> Any:
    """Drops the batch axis of 1 that `prepare` added to unbatched inputs."""
    return tree if batched else jax.tree.map(lambda a: a[0], tree)


def log_mean_exp(log_values: Array, axis: int = 0) -> Array:
    """log(mean(exp(a))) along ``axis``, stable for values far outside float32's range."""
    n = log_values.shape[axis]
    return jax.nn.logsumexp(log_values, axis=axis) - jnp.log(float(n))


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Returns ``value`` if it is an int in [low, high], else raises a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {name}={value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bounds}, got {name}={value}")
    return int(value)
