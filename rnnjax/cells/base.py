"""The `Cell` contract shared by every recurrent cell, and the small helpers they use.

A cell is a NamedTuple of pure functions, built by a lowercase factory that closes over the
hyper-parameters (like an optax ``GradientTransformation``)::

    cell = rj.lstm(hidden_size=256)
    params = cell.init(key, input_size=128)              # NamedTuple of arrays
    carry = cell.initial_carry(params, batch_shape=(32,))
    px = cell.project(params, xs)                        # (..., T, D) -> (..., T, G): x_t U + b
    carry, y = cell.recur(params, carry, px[..., t, :])  # one step of c_t = h(x_t, c_{t-1}; θ)
    carry, y = cell.step(params, carry, x_t)             # = recur ∘ project

Cells are written for one example; any leading axes are batch axes (``vmap`` works too).
``project`` is the input-side affine map, applied to a whole sequence in one matmul so that
only ``recur`` runs inside the time loop (the hoisting that cuDNN does, Appleyard et al. 2016).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
PRNGKey = jax.Array
Initializer = Callable[..., Array]


class RNNCarry(NamedTuple):
    """Carry of the single-state cells (Simple RNN, GRU, multiplicative RNN, ...).

    Attributes:
        h: the memory c_t of the lecture, shape (..., H).
    """

    h: Array


class LSTMCarry(NamedTuple):
    """Carry of the LSTM: the output memory m_t (called h) and the cell state c_t.

    Attributes:
        h: m_t = o_t ⊙ tanh(c_t), shape (..., H).
        c: the cell state c_t, shape (..., H).
    """

    h: Array
    c: Array


class Cell(NamedTuple):
    """A recurrent cell as pure functions (see the module docstring).

    Attributes:
        init: ``(key, input_size) -> params``.
        initial_carry: ``(params, batch_shape=()) -> carry`` (zeros).
        project: ``(params, xs) -> px``; xs (..., D) -> px (..., G), hoisted out of the loop.
        recur: ``(params, carry, px_t) -> (carry, y_t)``; one step given the projected input.
        step: ``(params, carry, x_t) -> (carry, y_t)`` = recur ∘ project.
        name: the family: "simple_rnn", "lstm", "gru", "multiplicative_rnn", ...
        hidden_size: H, the size of the output y_t.
        config: the hyper-parameters the factory closed over (read by kernels and analysis).
    """

    init: Callable[..., Any]
    initial_carry: Callable[..., Any]
    project: Callable[..., Array]
    recur: Callable[..., tuple[Any, Array]]
    step: Callable[..., tuple[Any, Array]]
    name: str
    hidden_size: int
    config: dict[str, Any]


def make_cell(
    *,
    name: str,
    hidden_size: int,
    config: dict[str, Any],
    init: Callable[..., Any],
    initial_carry: Callable[..., Any],
    project: Callable[..., Array],
    recur: Callable[..., tuple[Any, Array]],
) -> Cell:
    """Builds a `Cell`, deriving ``step = recur ∘ project``."""

    def step(params, carry, x_t):
        return recur(params, carry, project(params, x_t))

    return Cell(
        init=init,
        initial_carry=initial_carry,
        project=project,
        recur=recur,
        step=step,
        name=name,
        hidden_size=hidden_size,
        config=dict(config),
    )


def check_positive(name: str, value: int) -> int:
    """Returns ``value`` if it is a positive int, else raises a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    return value


def check_compute_dtype(dtype: Any) -> Any:
    """Validates the optional compute dtype of the matmuls (None = float32 throughout)."""
    if dtype is None:
        return None
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"compute dtype must be a floating dtype, got {dtype=}")
    return dtype


def matmul(a: Array, w: Array, compute_dtype: Any = None) -> Array:
    """``a @ w`` with optional low-precision operands and float32 accumulation.

    Args:
        a: (..., K) activations.
        w: (K, N) weights, stored float32.
        compute_dtype: e.g. ``jnp.bfloat16`` to run the matmul in bfloat16; None keeps float32.

    Returns:
        (..., N) float32.
    """
    if compute_dtype is None:
        return a @ w
    return jnp.matmul(
        a.astype(compute_dtype), w.astype(compute_dtype), preferred_element_type=jnp.float32
    )


def gate_blocks(init_fn: Initializer, key: PRNGKey, rows: int, cols: int, gates: int) -> Array:
    """Initialises a (rows, gates·cols) matrix one (rows, cols) gate block at a time.

    Orthogonal and identity initialisers are meant for each square recurrent block, not for
    the concatenation of all gates, so the recurrent matrices are built block by block.
    """
    keys = jax.random.split(key, gates)
    return jnp.concatenate([init_fn(k, (rows, cols), jnp.float32) for k in keys], axis=-1)


def zeros_carry(batch_shape: tuple[int, ...], hidden_size: int) -> Array:
    """A float32 zero state of shape (*batch_shape, hidden_size)."""
    return jnp.zeros((*tuple(batch_shape), hidden_size), jnp.float32)


# name -> (function, γ = sup |σ'(x)|, the constant of Pascanu et al.'s bound)
ACTIVATIONS: dict[str, tuple[Callable[[Array], Array], float]] = {
    "tanh": (jnp.tanh, 1.0),
    "sigmoid": (jax.nn.sigmoid, 0.25),
    "relu": (jax.nn.relu, 1.0),
    "identity": (lambda x: x, 1.0),
}


def resolve_activation(activation: str | Callable[[Array], Array]) -> tuple[str, Callable]:
    """Maps an activation name or function to ``(name, function)``.

    Strings must be one of `ACTIVATIONS`; a callable is used as is and named by its
    ``__name__`` (``jnp.tanh`` resolves to "tanh", so the analysis tools know its γ).
    """
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown {activation=}; choose one of {tuple(ACTIVATIONS)}")
        return activation, ACTIVATIONS[activation][0]
    if not callable(activation):
        raise ValueError(f"activation must be a name or a function, got {activation=}")
    name = getattr(activation, "__name__", repr(activation))
    for known, (fn, _) in ACTIVATIONS.items():
        if activation is fn:
            name = known
    return name, activation


def expand(v: Any, like: Array) -> Array:
    """Reshapes a vector (F,) to (1, ..., 1, F) with the rank of ``like``.

    Batching is by leading axes, and rnnjax runs with ``jax_numpy_rank_promotion="raise"``
    in its tests, so every bias / peephole vector is broadcast explicitly.
    """
    return v.reshape((1,) * (like.ndim - v.ndim) + v.shape)
