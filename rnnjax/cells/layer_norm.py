r"""Layer-normalised LSTM and GRU (Ba, Kiros & Hinton 2016), in the structured form.

Layer normalisation rescales a pre-activation vector a (…, F) by its own statistics over the
features, then applies a learned per-feature gain α (and bias β):

.. math:: \mathrm{LN}(a; \alpha, \beta) = \alpha \odot \frac{a - \mu}{\sqrt{\sigma^2 + \epsilon}}
    + \beta, \quad \mu = \tfrac1F \textstyle\sum_j a_j, \quad
    \sigma^2 = \tfrac1F \textstyle\sum_j (a_j - \mu)^2

The input side LN(x_t U) depends on x_t alone, so it stays in ``project`` (hoisted out of the
loop, one matmul and one normalisation over all T); the recurrent side LN(h_{t-1} W) and the
normalised cell state are in ``pointwise``. The statistics are taken over all the gates'
pre-activations at once (the paper's form), or over each gate block on its own with
``per_gate=True`` (the form of TensorFlow's ``LayerNormBasicLSTMCell``).

Backends: a normalisation over the hidden units mixes units, so the structure says
``elementwise=False``: ``scan`` and ``fused`` run these cells (outputs and gradients equal);
``pallas``, which splits the hidden units across programs, refuses them with the reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax import initializers
from rnnjax.cells.base import (
    Array,
    Cell,
    LSTMCarry,
    RNNCarry,
    Structure,
    check_compute_dtype,
    check_param_dtype,
    check_positive,
    expand,
    gate_blocks,
    initialise,
    make_cell,
    matmul,
    sigmoid,
    split_blocks,
    zeros_carry,
)
from rnnjax.cells.lstm import lstm_bias


class LayerNormLSTMParams(NamedTuple):
    """Parameters of `layer_norm_lstm`; gates in the order (i, f, g, o).

    Attributes:
        U: input weights, (D, 4H).
        W: recurrent weights, (H, 4H).
        b: gate bias, (4H,): the paper's β₁ + β₂ + b in one vector (three biases added to
            the same pre-activation are one parameter); the forget block starts at
            ``forget_bias``.
        gain_x: α₂, the gain of LN(x_t U), (4H,).
        gain_h: α₁, the gain of LN(h_{t-1} W), (4H,).
        gain_c: α₃, the gain of LN(c_t), (H,).
        bias_c: β₃, the bias of LN(c_t), (H,).
    """

    U: Array
    W: Array
    b: Array
    gain_x: Array
    gain_h: Array
    gain_c: Array
    bias_c: Array


class LayerNormGRUParams(NamedTuple):
    """Parameters of `layer_norm_gru`; gates in the order (r, z, n).

    Attributes:
        U: input weights, (D, 3H).
        W: recurrent weights, (H, 3H).
        b: input-side bias, (3H,) (with the biases of the r and z recurrent blocks).
        b_hn: recurrent bias of the candidate, (H,), inside the reset product.
        gain_x: gain of LN(x_t U), (3H,).
        gain_h: gain of LN(h_{t-1} W), (3H,).
    """

    U: Array
    W: Array
    b: Array
    b_hn: Array
    gain_x: Array
    gain_h: Array


@dataclasses.dataclass(frozen=True)
class LayerNormConfig:
    """Hyper-parameters of `layer_norm_lstm` and `layer_norm_gru`."""

    hidden_size: int
    gates: int
    per_gate: bool = False
    eps: float = 1e-5
    forget_bias: float = 1.0
    dtype: Any = None
    param_dtype: Any = jnp.float32


def layer_norm(a: Array, gain: Array, bias: Array | None, groups: int, eps: float) -> Array:
    """LN over the last axis, in ``groups`` equal blocks normalised separately (1: all at once).

    Args:
        a: (…, F) pre-activations.
        gain: (F,) α.
        bias: (F,) β, or None.
        groups: number of blocks of F / groups features with their own statistics.
        eps: ε under the square root.

    Returns:
        (…, F).
    """
    shape = a.shape
    g = a.reshape(*shape[:-1], groups, shape[-1] // groups)  # (…, groups, F/groups)
    mu = jnp.mean(g, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(g - mu), axis=-1, keepdims=True)
    out = ((g - mu) * jax.lax.rsqrt(var + eps)).reshape(shape)  # (…, F)
    out = out * expand(gain, out)
    return out if bias is None else out + expand(bias, out)


def _config(hidden_size, gates, per_gate, eps, forget_bias, dtype, param_dtype):
    if not float(eps) > 0.0:
        raise ValueError(f"eps must be positive, got {eps=}")
    return LayerNormConfig(
        hidden_size=check_positive("hidden_size", hidden_size),
        gates=gates,
        per_gate=bool(per_gate),
        eps=float(eps),
        forget_bias=float(forget_bias),
        dtype=check_compute_dtype(dtype),
        param_dtype=check_param_dtype(param_dtype),
    )


def _normalised_hw(config: LayerNormConfig, gains: tuple[Array, ...], hw) -> tuple[Array, ...]:
    """LN(h_{t-1} W; α₁) as K blocks, from the K blocks of hw and of the gain."""
    K = config.gates
    a = jnp.concatenate(hw, axis=-1)  # (…, K·H)
    groups = K if config.per_gate else 1
    return split_blocks(layer_norm(a, jnp.concatenate(gains), None, groups, config.eps), K)


def layer_norm_lstm(
    hidden_size: int,
    *,
    per_gate: bool = False,
    eps: float = 1e-5,
    forget_bias: float = 1.0,
    input_init=initializers.default_input_init,
    recurrent_init=initializers.default_recurrent_init,
    bias_init=initializers.default_bias_init,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Cell:
    r"""The layer-normalised LSTM of Ba, Kiros & Hinton (2016), gates (i, f, g, o).

    .. math::
        (i, f, g, o)_t &= \mathrm{LN}(h_{t-1} W; \alpha_1) + \mathrm{LN}(x_t U; \alpha_2) + b \\
        c_t &= \sigma(f_t) \odot c_{t-1} + \sigma(i_t) \odot \tanh(g_t) \\
        h_t &= \sigma(o_t) \odot \tanh(\mathrm{LN}(c_t; \alpha_3, \beta_3))

    The carry holds the un-normalised c_t. Gains start at 1, β₃ at 0.

    Args:
        hidden_size: H.
        per_gate: normalise each gate block over its own H units instead of all 4H at once.
        eps: ε of the normalisations.
        forget_bias: initial value of the forget block of b.
        input_init, recurrent_init, bias_init: initialisers of U, W (per gate block), b.
        dtype: optional compute dtype of the matmuls.
        param_dtype: dtype of the parameters.

    Returns:
        A `Cell` with carry ``LSTMCarry(h, c)``. Runs on ``scan`` and ``fused`` (its
        pointwise mixes units, so ``pallas`` refuses it).

    Example:
        >>> cell = layer_norm_lstm(64)
        >>> carry, ys = rj.unroll(cell, cell.init(key, 8), xs, backend="fused")

    References:
        Ba, Kiros & Hinton, "Layer normalization", 2016 (section 3.1 and the LN-LSTM
        equations of the supplementary material).
    """
    config = _config(hidden_size, 4, per_gate, eps, forget_bias, dtype, param_dtype)
    H, K, pdt, groups = config.hidden_size, 4, config.param_dtype, 4 if per_gate else 1

    def init(key, input_size: int) -> LayerNormLSTMParams:
        D = check_positive("input_size", input_size)
        k_u, k_w, k_b = jax.random.split(key, 3)
        b = lstm_bias(bias_init, k_b, H, K, pdt, 1, config.forget_bias)  # (4H,)
        return LayerNormLSTMParams(
            U=gate_blocks(input_init, k_u, D, H, K, pdt),  # (D, 4H)
            W=gate_blocks(recurrent_init, k_w, H, H, K, pdt),  # (H, 4H)
            b=b,  # (4H,)
            gain_x=jnp.ones((K * H,), pdt),
            gain_h=jnp.ones((K * H,), pdt),
            gain_c=jnp.ones((H,), pdt),
            bias_c=jnp.zeros((H,), pdt),
        )

    def initial_carry(params, batch_shape=()) -> LSTMCarry:
        dt = params.W.dtype
        return LSTMCarry(zeros_carry(batch_shape, H, dt), zeros_carry(batch_shape, H, dt))

    def project(params: LayerNormLSTMParams, xs: Array) -> Array:
        xu = matmul(xs, params.U, config.dtype)  # (…, 4H)
        return layer_norm(xu, params.gain_x, params.b, groups, config.eps)

    def unit_params(params: LayerNormLSTMParams) -> tuple[Array, ...]:
        return (*split_blocks(params.gain_h, K), params.gain_c, params.bias_c)

    def pointwise(unit_params, carry: LSTMCarry, px, hw):
        *gains, gain_c, bias_c = unit_params
        hw_n = _normalised_hw(config, tuple(gains), hw)  # 4 x (…, H)
        zi, zf, zg, zo = (a + b for a, b in zip(px, hw_n, strict=True))
        c = sigmoid(zf) * carry.c + sigmoid(zi) * jnp.tanh(zg)  # (…, H)
        h = sigmoid(zo) * jnp.tanh(layer_norm(c, gain_c, bias_c, 1, config.eps))  # (…, H)
        return LSTMCarry(h, c), h

    structure = Structure(
        gates=K,
        recurrent_weights=lambda params: params.W,
        unit_params=unit_params,
        pointwise=pointwise,
        tied=(False,) * K,
        elementwise=False,
        compute_dtype=config.dtype,
        memory_gate="forget",
    )
    return make_cell(
        name="layer_norm_lstm",
        hidden_size=H,
        config=config,
        init=init,
        initial_carry=initial_carry,
        project=project,
        structure=structure,
    )


def layer_norm_gru(
    hidden_size: int,
    *,
    per_gate: bool = False,
    eps: float = 1e-5,
    input_init=initializers.default_input_init,
    recurrent_init=initializers.default_recurrent_init,
    bias_init=initializers.default_bias_init,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Cell:
    r"""A layer-normalised GRU (PyTorch's reset-after form), gates (r, z, n).

    Ba, Kiros & Hinton's recipe — normalise the input and the recurrent pre-activations
    separately, each with its own gain — applied to the GRU (which has no cell state, so
    there is no third normalisation):

    .. math::
        a^x_t &= \mathrm{LN}(x_t U; \alpha_x) + b, \quad a^h_t = \mathrm{LN}(h_{t-1} W; \alpha_h)
        \\
        r_t &= \sigma(a^x_r + a^h_r), \quad z_t = \sigma(a^x_z + a^h_z), \quad
        n_t = \tanh(a^x_n + r_t \odot (a^h_n + b_{hn})) \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    Args:
        hidden_size: H.
        per_gate: normalise each gate block over its own H units instead of all 3H at once.
        eps: ε of the normalisations.
        input_init, recurrent_init, bias_init: initialisers of U, W (per gate block), biases.
        dtype: optional compute dtype of the matmuls.
        param_dtype: dtype of the parameters.

    Returns:
        A `Cell` with carry ``RNNCarry(h)``; runs on ``scan`` and ``fused``.

    References:
        Ba, Kiros & Hinton, "Layer normalization", 2016.
        Cho et al., "Learning phrase representations using RNN encoder-decoder", 2014.
    """
    config = _config(hidden_size, 3, per_gate, eps, 0.0, dtype, param_dtype)
    H, K, pdt, groups = config.hidden_size, 3, config.param_dtype, 3 if per_gate else 1

    def init(key, input_size: int) -> LayerNormGRUParams:
        D = check_positive("input_size", input_size)
        k_u, k_w, k_b, k_bn = jax.random.split(key, 4)
        return LayerNormGRUParams(
            U=gate_blocks(input_init, k_u, D, H, K, pdt),  # (D, 3H)
            W=gate_blocks(recurrent_init, k_w, H, H, K, pdt),  # (H, 3H)
            b=initialise(bias_init, k_b, (K * H,), pdt),  # (3H,)
            b_hn=initialise(bias_init, k_bn, (H,), pdt),  # (H,)
            gain_x=jnp.ones((K * H,), pdt),
            gain_h=jnp.ones((K * H,), pdt),
        )

    def initial_carry(params, batch_shape=()) -> RNNCarry:
        return RNNCarry(zeros_carry(batch_shape, H, params.W.dtype))

    def project(params: LayerNormGRUParams, xs: Array) -> Array:
        xu = matmul(xs, params.U, config.dtype)  # (…, 3H)
        return layer_norm(xu, params.gain_x, params.b, groups, config.eps)

    def unit_params(params: LayerNormGRUParams) -> tuple[Array, ...]:
        return (*split_blocks(params.gain_h, K), params.b_hn)

    def pointwise(unit_params, carry: RNNCarry, px, hw):
        *gains, b_hn = unit_params
        hw_r, hw_z, hw_n = _normalised_hw(config, tuple(gains), hw)  # (…, H) each
        px_r, px_z, px_n = px
        r = sigmoid(px_r + hw_r)
        z = sigmoid(px_z + hw_z)
        n = jnp.tanh(px_n + r * (hw_n + expand(b_hn, hw_n)))  # (…, H)
        h = (1.0 - z) * n + z * carry.h  # (…, H)
        return RNNCarry(h), h

    structure = Structure(
        gates=K,
        recurrent_weights=lambda params: params.W,
        unit_params=unit_params,
        pointwise=pointwise,
        tied=(False,) * K,
        elementwise=False,
        compute_dtype=config.dtype,
        memory_gate="update",
    )
    return make_cell(
        name="layer_norm_gru",
        hidden_size=H,
        config=config,
        init=init,
        initial_carry=initial_carry,
        project=project,
        structure=structure,
    )
