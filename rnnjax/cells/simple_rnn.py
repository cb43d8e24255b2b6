"""The Simple (Elman) RNN of the lecture: c_t = tanh(x_t U + c_{t-1} W + b)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from rnnjax import initializers
from rnnjax.cells.base import (
    Array,
    Cell,
    RNNCarry,
    check_compute_dtype,
    check_positive,
    expand,
    make_cell,
    matmul,
    resolve_activation,
    zeros_carry,
)


class SimpleRNNParams(NamedTuple):
    """Parameters of `simple_rnn` (lecture symbols; weights stored (in, out)).

    Attributes:
        U: input weights, (D, H).
        W: recurrent (memory) weights, (H, H).
        b: bias, (H,).
    """

    U: Array
    W: Array
    b: Array


def simple_rnn(
    hidden_size: int,
    activation: str | Callable[[Array], Array] = "tanh",
    *,
    input_init=initializers.default_input_init,
    recurrent_init=initializers.default_recurrent_init,
    bias_init=initializers.default_bias_init,
    dtype: Any = None,
) -> Cell:
    r"""The Simple RNN: one memory vector, one non-linearity.

    .. math::  c_t = \sigma(x_t U + c_{t-1} W + b), \qquad y_t = c_t

    Args:
        hidden_size: H, the size of the memory c_t.
        activation: σ: "tanh" (default), "sigmoid", "relu", "identity" or a function.
        input_init, recurrent_init, bias_init: ``jax.nn.initializers``-style functions for
            U, W and b (see `rnnjax.initializers` for Pascanu's schemes and IRNN).
        dtype: optional compute dtype of the matmuls (e.g. ``jnp.bfloat16``); params and the
            carry stay float32.

    Returns:
        A `Cell` whose carry is ``RNNCarry(h)`` with h = c_t of shape (..., H).

    Example:
        >>> cell = simple_rnn(3)               # the lecture's example: memory of 3 units
        >>> params = cell.init(jax.random.key(0), input_size=5)
        >>> params.U.shape, params.W.shape
        ((5, 3), (3, 3))

    References:
        Elman, "Finding structure in time", 1990.
    """
    H = check_positive("hidden_size", hidden_size)
    act_name, act = resolve_activation(activation)
    compute_dtype = check_compute_dtype(dtype)

    def init(key, input_size: int) -> SimpleRNNParams:
        D = check_positive("input_size", input_size)
        k_u, k_w, k_b = jax.random.split(key, 3)
        return SimpleRNNParams(
            U=input_init(k_u, (D, H), jax.numpy.float32),  # (D, H)
            W=recurrent_init(k_w, (H, H), jax.numpy.float32),  # (H, H)
            b=bias_init(k_b, (H,), jax.numpy.float32),  # (H,)
        )

    def initial_carry(params: SimpleRNNParams, batch_shape=()) -> RNNCarry:
        del params
        return RNNCarry(zeros_carry(batch_shape, H))

    def project(params: SimpleRNNParams, xs: Array) -> Array:
        xu = matmul(xs, params.U, compute_dtype)  # (..., H)
        return xu + expand(params.b, xu)

    def recur(params: SimpleRNNParams, carry: RNNCarry, px: Array):
        h = act(px + matmul(carry.h, params.W, compute_dtype))  # (..., H)
        return RNNCarry(h), h

    return make_cell(
        name="simple_rnn",
        hidden_size=H,
        config=dict(activation=act_name, dtype=compute_dtype),
        init=init,
        initial_carry=initial_carry,
        project=project,
        recur=recur,
    )
