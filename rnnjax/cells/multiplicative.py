"""The multiplicative RNN of Sutskever, Martens & Hinton (2011): input-dependent transitions."""

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
    affine,
    check_compute_dtype,
    check_param_dtype,
    check_positive,
    initialise,
    make_cell,
    matmul,
    resolve_activation,
    zeros_carry,
)


class MultiplicativeRNNParams(NamedTuple):
    """Parameters of `multiplicative_rnn` (the paper's names in brackets; stored (in, out)).

    Attributes:
        U: input-to-hidden weights [W_hx], (D, H).
        U_f: input-to-factor weights [W_fx], (D, F).
        W_in: hidden-to-factor weights [W_fh], (H, F).
        W_out: factor-to-hidden weights [W_hf], (F, H).
        b: hidden bias, (H,).
    """

    U: Array
    U_f: Array
    W_in: Array
    W_out: Array
    b: Array


@dataclasses.dataclass(frozen=True)
class MultiplicativeRNNConfig:
    """Hyper-parameters of `multiplicative_rnn`."""

    hidden_size: int
    factors: int
    activation: str = "tanh"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def transition_matrices(self, params: MultiplicativeRNNParams, px: Array) -> Array:
        """W(x_t) = W_in diag(x_t U_f) W_out for every step: px (..., H + F) -> (..., H, H)."""
        gate = px[..., self.hidden_size :]  # (..., F): x_t U_f
        return jnp.einsum("hf,...f,fk->...hk", params.W_in, gate, params.W_out)


def multiplicative_rnn(
    hidden_size: int,
    factors: int,
    activation: str | Callable[[Array], Array] = "tanh",
    *,
    input_init=initializers.default_input_init,
    factor_init=jax.nn.initializers.lecun_normal(),
    bias_init=initializers.default_bias_init,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Cell:
    r"""The mRNN: each input selects its own recurrent matrix W(x_t) — the lecture's
    "multiplicative interactions".

    .. math::
        W(x_t) &= W_{in}\, \mathrm{diag}(x_t U_f)\, W_{out} \\
        h_t &= \sigma(x_t U + h_{t-1} W(x_t) + b)

    (row-vector convention; the factorisation keeps the parameter count at
    D·H + D·F + 2·H·F instead of D·H² for a full tensor). W(x_t) changes every step, so the
    cell has no structured form (`rnnjax.cells.base.Structure`): it runs on ``"scan"``.

    Args:
        hidden_size: H.
        factors: F, the number of factors of the factored tensor.
        activation: σ (default tanh).
        input_init, factor_init, bias_init: initialisers of U / U_f, W_in / W_out and b.
        dtype: optional compute dtype of the matmuls.
        param_dtype: dtype of the parameters (default float32).

    Returns:
        A `Cell` whose carry is ``RNNCarry(h)``.

    References:
        Sutskever, Martens & Hinton, "Generating text with recurrent neural networks", 2011.
    """
    act_name, act = resolve_activation(activation)
    config = MultiplicativeRNNConfig(
        hidden_size=check_positive("hidden_size", hidden_size),
        factors=check_positive("factors", factors),
        activation=act_name,
        dtype=check_compute_dtype(dtype),
        param_dtype=check_param_dtype(param_dtype),
    )
    H, F, compute_dtype, pdt = config.hidden_size, config.factors, config.dtype, config.param_dtype

    def init(key, input_size: int) -> MultiplicativeRNNParams:
        D = check_positive("input_size", input_size)
        k_u, k_uf, k_wi, k_wo, k_b = jax.random.split(key, 5)
        return MultiplicativeRNNParams(
            U=initialise(input_init, k_u, (D, H), pdt),  # (D, H)
            U_f=initialise(input_init, k_uf, (D, F), pdt),  # (D, F)
            W_in=initialise(factor_init, k_wi, (H, F), pdt),  # (H, F)
            W_out=initialise(factor_init, k_wo, (F, H), pdt),  # (F, H)
            b=initialise(bias_init, k_b, (H,), pdt),  # (H,)
        )

    def initial_carry(params: MultiplicativeRNNParams, batch_shape=()) -> RNNCarry:
        return RNNCarry(zeros_carry(batch_shape, H, params.W_in.dtype))

    def project(params: MultiplicativeRNNParams, xs: Array) -> Array:
        U = jnp.concatenate([params.U, params.U_f], axis=-1)  # (D, H + F)
        bias = jnp.concatenate([params.b, jnp.zeros((F,), params.b.dtype)])  # (H + F,)
        return affine(xs, U, bias, compute_dtype)  # (..., H + F)

    def recur(params: MultiplicativeRNNParams, carry: RNNCarry, px: Array):
        px_h, gate = px[..., :H], px[..., H:]  # (..., H), (..., F)
        factor = matmul(carry.h, params.W_in, compute_dtype) * gate  # (..., F)
        h = act(px_h + matmul(factor, params.W_out, compute_dtype))  # (..., H)
        return RNNCarry(h), h

    return make_cell(
        name="multiplicative_rnn",
        hidden_size=H,
        config=config,
        init=init,
        initial_carry=initial_carry,
        project=project,
        recur=recur,
    )
