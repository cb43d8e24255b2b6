"""The Simple (Elman) RNN of the lecture: c_t = tanh(x_t U + c_{t-1} W + b)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax import initializers
from rnnjax.cells.base import (
    Array,
    Cell,
    RNNCarry,
    Structure,
    affine,
    check_compute_dtype,
    check_param_dtype,
    check_positive,
    initialise,
    make_cell,
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


@dataclasses.dataclass(frozen=True)
class SimpleRNNConfig:
    """Hyper-parameters of `simple_rnn`; ``activation`` is the σ's name (or its __name__)."""

    hidden_size: int
    activation: str = "tanh"
    dtype: Any = None
    param_dtype: Any = jnp.float32


def simple_rnn(
    hidden_size: int,
    activation: str | Callable[[Array], Array] = "tanh",
    *,
    input_init=initializers.default_input_init,
    recurrent_init=initializers.default_recurrent_init,
    bias_init=initializers.default_bias_init,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Cell:
    r"""The Simple RNN: one memory vector, one non-linearity.

    .. math::  c_t = \sigma(x_t U + c_{t-1} W + b), \qquad y_t = c_t

    Args:
        hidden_size: H, the size of the memory c_t.
        activation: σ: "tanh" (default), "sigmoid", "relu", "identity" or a function.
        input_init, recurrent_init, bias_init: ``jax.nn.initializers``-style functions for
            U, W and b (see `rnnjax.initializers` for Pascanu's schemes and IRNN).
        dtype: optional compute dtype of the matmuls (e.g. ``jnp.bfloat16``).
        param_dtype: dtype of the parameters (default float32).

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
    act_name, act = resolve_activation(activation)
    config = SimpleRNNConfig(
        hidden_size=check_positive("hidden_size", hidden_size),
        activation=act_name,
        dtype=check_compute_dtype(dtype),
        param_dtype=check_param_dtype(param_dtype),
    )
    H, pdt = config.hidden_size, config.param_dtype

    def init(key, input_size: int) -> SimpleRNNParams:
        D = check_positive("input_size", input_size)
        k_u, k_w, k_b = jax.random.split(key, 3)
        return SimpleRNNParams(
            U=initialise(input_init, k_u, (D, H), pdt),  # (D, H)
            W=initialise(recurrent_init, k_w, (H, H), pdt),  # (H, H)
            b=initialise(bias_init, k_b, (H,), pdt),  # (H,)
        )

    def initial_carry(params: SimpleRNNParams, batch_shape=()) -> RNNCarry:
        return RNNCarry(zeros_carry(batch_shape, H, params.W.dtype))

    def project(params: SimpleRNNParams, xs: Array) -> Array:
        return affine(xs, params.U, params.b, config.dtype)  # (..., H)

    def pointwise(unit_params, carry: RNNCarry, px, hw):
        del unit_params, carry
        h = act(px[0] + hw[0])  # (..., H): c_t = σ(x_t U + b + c_{t-1} W)
        return RNNCarry(h), h

    structure = Structure(
        gates=1,
        recurrent_weights=lambda params: params.W,
        unit_params=lambda params: (),
        pointwise=pointwise,
        tied=(True,),
        compute_dtype=config.dtype,
    )
    return make_cell(
        name="simple_rnn",
        hidden_size=H,
        config=config,
        init=init,
        initial_carry=initial_carry,
        project=project,
        structure=structure,
    )
