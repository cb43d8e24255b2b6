"""Gated Recurrent Unit (Cho et al. 2014) with PyTorch / cuDNN semantics by default.

Gate order is **(r, z, n)** — reset, update, candidate — as in PyTorch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax import initializers
from rnnjax.cells.base import (
    Array,
    Cell,
    RNNCarry,
    check_compute_dtype,
    check_positive,
    expand,
    gate_blocks,
    make_cell,
    matmul,
    zeros_carry,
)


class GRUParams(NamedTuple):
    """Parameters of `gru`; gates concatenated in the order (r, z, n).

    Attributes:
        U: input weights [U⁽ʳ⁾ U⁽ᶻ⁾ U⁽ⁿ⁾], (D, 3H).
        W: recurrent weights [W⁽ʳ⁾ W⁽ᶻ⁾ W⁽ⁿ⁾], (H, 3H).
        b: input-side biases, (3H,) (PyTorch's b_ih, plus b_hh for r and z).
        b_hn: recurrent bias of the candidate, (H,), inside the reset gate's product
            (``reset_after=True`` only; None otherwise).
    """

    U: Array
    W: Array
    b: Array
    b_hn: Array | None = None


def gru(
    hidden_size: int,
    reset_after: bool = True,
    *,
    input_init=initializers.default_input_init,
    recurrent_init=initializers.default_recurrent_init,
    bias_init=initializers.default_bias_init,
    dtype: Any = None,
) -> Cell:
    r"""The GRU.

    .. math::
        r_t &= \sigma(x_t U^{(r)} + h_{t-1} W^{(r)} + b^{(r)}) \\
        z_t &= \sigma(x_t U^{(z)} + h_{t-1} W^{(z)} + b^{(z)}) \\
        n_t &= \tanh(x_t U^{(n)} + b^{(n)} + r_t \odot (h_{t-1} W^{(n)} + b_{hn}))
              \quad\text{(reset\_after=True: PyTorch, cuDNN, Flax)} \\
        n_t &= \tanh(x_t U^{(n)} + b^{(n)} + (r_t \odot h_{t-1}) W^{(n)})
              \quad\text{(reset\_after=False: Cho et al. 2014)} \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    Args:
        hidden_size: H.
        reset_after: apply the reset gate after the recurrent matmul (default, as PyTorch)
            or before it (Cho et al. 2014).
        input_init, recurrent_init, bias_init: initialisers of U, W (per gate block), biases.
        dtype: optional compute dtype of the matmuls.

    Returns:
        A `Cell` whose carry is ``RNNCarry(h)``.

    References:
        Cho et al., "Learning phrase representations using RNN encoder-decoder for
        statistical machine translation", 2014.
    """
    H = check_positive("hidden_size", hidden_size)
    compute_dtype = check_compute_dtype(dtype)

    def init(key, input_size: int) -> GRUParams:
        D = check_positive("input_size", input_size)
        k_u, k_w, k_b, k_bn = jax.random.split(key, 4)
        return GRUParams(
            U=gate_blocks(input_init, k_u, D, H, 3),  # (D, 3H)
            W=gate_blocks(recurrent_init, k_w, H, H, 3),  # (H, 3H)
            b=bias_init(k_b, (3 * H,), jnp.float32),  # (3H,)
            b_hn=bias_init(k_bn, (H,), jnp.float32) if reset_after else None,  # (H,)
        )

    def initial_carry(params: GRUParams, batch_shape=()) -> RNNCarry:
        del params
        return RNNCarry(zeros_carry(batch_shape, H))

    def project(params: GRUParams, xs: Array) -> Array:
        xu = matmul(xs, params.U, compute_dtype)  # (..., 3H)
        return xu + expand(params.b, xu)

    def recur(params: GRUParams, carry: RNNCarry, px: Array):
        h_prev = carry.h  # (..., H)
        px_r, px_z, px_n = jnp.split(px, 3, axis=-1)  # (..., H) each
        if reset_after:
            hw_r, hw_z, hw_n = jnp.split(matmul(h_prev, params.W, compute_dtype), 3, axis=-1)
            r = jax.nn.sigmoid(px_r + hw_r)
            z = jax.nn.sigmoid(px_z + hw_z)
            n = jnp.tanh(px_n + r * (hw_n + expand(params.b_hn, hw_n)))  # (..., H)
        else:
            hw_r, hw_z = jnp.split(matmul(h_prev, params.W[:, : 2 * H], compute_dtype), 2, -1)
            r = jax.nn.sigmoid(px_r + hw_r)
            z = jax.nn.sigmoid(px_z + hw_z)
            n = jnp.tanh(px_n + matmul(r * h_prev, params.W[:, 2 * H :], compute_dtype))
        h = (1.0 - z) * n + z * h_prev  # (..., H)
        return RNNCarry(h), h

    return make_cell(
        name="gru",
        hidden_size=H,
        config=dict(reset_after=reset_after, dtype=compute_dtype),
        init=init,
        initial_carry=initial_carry,
        project=project,
        recur=recur,
    )
