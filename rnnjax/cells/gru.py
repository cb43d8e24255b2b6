"""Gated Recurrent Unit (Cho et al. 2014) with PyTorch / cuDNN semantics by default.

Gate order is **(r, z, n)** — reset, update, candidate — as in PyTorch. The GRU's equations
are written once, here (`gru_pointwise` for the PyTorch form, the ``recur`` of ``reset_after
=False`` for Cho et al.'s form).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax import initializers
from rnnjax.cells.base import (
    Array,
    Cell,
    RNNCarry,
    Structure,
    activate_blocks,
    affine,
    check_compute_dtype,
    check_param_dtype,
    check_positive,
    expand,
    gate_blocks,
    initialise,
    make_cell,
    matmul,
    sigmoid,
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


@dataclasses.dataclass(frozen=True)
class GRUConfig:
    """Hyper-parameters of `gru` (see its docstring)."""

    hidden_size: int
    reset_after: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32


def gru_pointwise(unit_params, carry: RNNCarry, px, hw):
    r"""The GRU's step after the recurrent matmul (``reset_after=True``, PyTorch / cuDNN).

    .. math::
        r = \sigma(px_r + hw_r), \quad z = \sigma(px_z + hw_z), \quad
        n = \tanh(px_n + r \odot (hw_n + b_{hn})), \quad h_t = (1 - z) \odot n + z \odot h_{t-1}
    """
    (b_hn,) = unit_params
    px_r, px_z, px_n = px  # (..., H) each
    hw_r, hw_z, hw_n = hw
    r, z = activate_blocks((px_r + hw_r, px_z + hw_z), (True, True))  # σ of both, one pass
    n = jnp.tanh(px_n + r * (hw_n + expand(b_hn, hw_n)))  # (..., H)
    h = (1.0 - z) * n + z * carry.h  # (..., H)
    return RNNCarry(h), h


def gru(
    hidden_size: int,
    reset_after: bool = True,
    *,
    input_init=initializers.default_input_init,
    recurrent_init=initializers.default_recurrent_init,
    bias_init=initializers.default_bias_init,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
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

    The PyTorch form is one recurrent matmul followed by element-wise maths (the structured
    form every fast backend runs). Cho et al.'s form multiplies r_t ⊙ h_{t-1} by W⁽ⁿ⁾, a second
    matmul that depends on the first one's result, so it runs on ``backend="scan"`` only.

    Args:
        hidden_size: H.
        reset_after: apply the reset gate after the recurrent matmul (default, as PyTorch)
            or before it (Cho et al. 2014).
        input_init, recurrent_init, bias_init: initialisers of U, W (per gate block), biases.
        dtype: optional compute dtype of the matmuls.
        param_dtype: dtype of the parameters (default float32).

    Returns:
        A `Cell` whose carry is ``RNNCarry(h)``.

    References:
        Cho et al., "Learning phrase representations using RNN encoder-decoder for
        statistical machine translation", 2014.
    """
    config = GRUConfig(
        hidden_size=check_positive("hidden_size", hidden_size),
        reset_after=bool(reset_after),
        dtype=check_compute_dtype(dtype),
        param_dtype=check_param_dtype(param_dtype),
    )
    H, cd, pdt = config.hidden_size, config.dtype, config.param_dtype

    def init(key, input_size: int) -> GRUParams:
        D = check_positive("input_size", input_size)
        k_u, k_w, k_b, k_bn = jax.random.split(key, 4)
        return GRUParams(
            U=gate_blocks(input_init, k_u, D, H, 3, pdt),  # (D, 3H)
            W=gate_blocks(recurrent_init, k_w, H, H, 3, pdt),  # (H, 3H)
            b=initialise(bias_init, k_b, (3 * H,), pdt),  # (3H,)
            b_hn=initialise(bias_init, k_bn, (H,), pdt) if reset_after else None,  # (H,)
        )

    def initial_carry(params: GRUParams, batch_shape=()) -> RNNCarry:
        return RNNCarry(zeros_carry(batch_shape, H, params.W.dtype))

    def project(params: GRUParams, xs: Array) -> Array:
        return affine(xs, params.U, params.b, cd)  # (..., 3H)

    build = functools.partial(
        make_cell,
        name="gru",
        hidden_size=H,
        config=config,
        init=init,
        initial_carry=initial_carry,
        project=project,
    )
    if reset_after:
        structure = Structure(
            gates=3,
            recurrent_weights=lambda params: params.W,
            unit_params=lambda params: (params.b_hn,),
            pointwise=gru_pointwise,
            tied=(True, True, False),
            compute_dtype=cd,
            memory_gate="update",
        )
        return build(structure=structure)

    def recur(params: GRUParams, carry: RNNCarry, px: Array):
        h_prev = carry.h  # (..., H)
        px_r, px_z, px_n = jnp.split(px, 3, axis=-1)  # (..., H) each
        hw_r, hw_z = jnp.split(matmul(h_prev, params.W[:, : 2 * H], cd), 2, -1)
        r = sigmoid(px_r + hw_r)
        z = sigmoid(px_z + hw_z)
        n = jnp.tanh(px_n + matmul(r * h_prev, params.W[:, 2 * H :], cd))  # (..., H)
        h = (1.0 - z) * n + z * h_prev  # (..., H)
        return RNNCarry(h), h

    return build(recur=recur)
