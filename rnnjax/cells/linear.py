r"""Cells whose recurrence is linear in the carry: h_t = a_t ⊙ h_{t-1} + b_t.

Because every gate depends on x_t only, a_t and b_t are functions of the hoisted projection
px_t alone, and the whole sequence can run as a parallel prefix scan of the affine maps
h ↦ a_t ⊙ h + b_t (``backend="associative"``, O(log T) depth) instead of T sequential steps.
Each cell here also runs step by step (``backend="scan"``, through its ``recur``): the two
forms compute the same thing.

The contract with the associative backend: ``cell.config["linear_coefficients"]`` is a
function ``(params, px) -> (a, b)`` mapping projected inputs (..., G) to the coefficients
(..., H) of every step, so that ``recur(params, h, px_t)`` equals ``a_t ⊙ h + b_t``.

- `diagonal_linear_rnn`: h_t = a ⊙ h_{t-1} + x_t U + b with a learned, input-independent
  decay a = sigmoid(ν) ∈ (0, 1) per unit (ν unconstrained, so a stays in (0, 1) and the
  recurrence is stable for any ν), as in the diagonal linear recurrences of Gu et al. and
  Orvieto et al. 2023 (real-valued here).
- `min_gru`, `min_lstm`: Feng et al. 2024 — gates without h_{t-1}, so the recurrence is linear.

The paper also gives a log-space parallel form (positive states through g(x) and a
log-sum-exp scan); it is not implemented: the associative backend scans the affine maps
directly, which is stable because every a_t lies in [0, 1] (products only shrink; nothing is
divided).

References:
    Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, "Were RNNs all we needed?", 2024.
    Orvieto et al., "Resurrecting recurrent neural networks for long sequences", 2023.
    Martin & Cundy, "Parallelizing linear recurrent neural nets over sequence length", 2018.
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
    make_cell,
    matmul,
    zeros_carry,
)


class DiagonalLinearRNNParams(NamedTuple):
    """Parameters of `diagonal_linear_rnn`.

    Attributes:
        U: input weights, (D, H).
        b: bias, (H,).
        nu: decay logits ν, (H,); the decay is a = sigmoid(ν) ∈ (0, 1).
    """

    U: Array
    b: Array
    nu: Array


class MinGRUParams(NamedTuple):
    """Parameters of `min_gru`; blocks (z, h̃).

    Attributes:
        U: input weights [U⁽ᶻ⁾ U⁽ʰ⁾], (D, 2H).
        b: biases, (2H,).
    """

    U: Array
    b: Array


class MinLSTMParams(NamedTuple):
    """Parameters of `min_lstm`; blocks (f, i, h̃).

    Attributes:
        U: input weights [U⁽ᶠ⁾ U⁽ⁱ⁾ U⁽ʰ⁾], (D, 3H).
        b: biases, (3H,).
    """

    U: Array
    b: Array


def _linear_cell(name, H, blocks, init, coefficients, compute_dtype, **config) -> Cell:
    """A cell with ``recur(h, px) = a ⊙ h + b`` from ``coefficients(params, px) = (a, b)``."""

    def initial_carry(params, batch_shape=()) -> RNNCarry:
        del params
        return RNNCarry(zeros_carry(batch_shape, H))

    def project(params, xs: Array) -> Array:
        xu = matmul(xs, params.U, compute_dtype)  # (..., blocks·H)
        return xu + expand(params.b, xu)

    def recur(params, carry: RNNCarry, px: Array):
        a, b = coefficients(params, px)  # (..., H) each
        h = a * carry.h + b  # (..., H)
        return RNNCarry(h), h

    return make_cell(
        name=name,
        hidden_size=H,
        config=dict(config, dtype=compute_dtype, linear_coefficients=coefficients, blocks=blocks),
        init=init,
        initial_carry=initial_carry,
        project=project,
        recur=recur,
    )


def diagonal_linear_rnn(
    hidden_size: int,
    decay_min: float = 0.9,
    decay_max: float = 0.999,
    *,
    input_init=initializers.default_input_init,
    bias_init=initializers.default_bias_init,
    dtype: Any = None,
) -> Cell:
    r"""A diagonal linear RNN: a per-unit leaky integrator of the projected input.

    .. math::  h_t = a \odot h_{t-1} + x_t U + b, \qquad a = \mathrm{sigmoid}(\nu) \in (0, 1)

    Args:
        hidden_size: H.
        decay_min, decay_max: the initial decays a are drawn uniformly from this range
            (0 < decay_min <= decay_max < 1); a close to 1 remembers for about 1/(1 − a) steps.
        input_init, bias_init: initialisers of U and b.
        dtype: optional compute dtype of the input matmul.

    Returns:
        A `Cell` with carry ``RNNCarry(h)``, output h_t, and
        ``config["linear_coefficients"](params, px) = (a, px)``.

    Example:
        >>> cell = diagonal_linear_rnn(64)
        >>> params = cell.init(jax.random.key(0), input_size=8)
        >>> carry, ys = rj.unroll(cell, params, xs, backend="associative")
    """
    H = check_positive("hidden_size", hidden_size)
    compute_dtype = check_compute_dtype(dtype)
    if not 0.0 < decay_min <= decay_max < 1.0:
        raise ValueError(f"need 0 < decay_min <= decay_max < 1, got {decay_min=}, {decay_max=}")

    def init(key, input_size: int) -> DiagonalLinearRNNParams:
        D = check_positive("input_size", input_size)
        k_u, k_b, k_a = jax.random.split(key, 3)
        a = jax.random.uniform(k_a, (H,), jnp.float32, decay_min, decay_max)  # (H,)
        return DiagonalLinearRNNParams(
            U=input_init(k_u, (D, H), jnp.float32),  # (D, H)
            b=bias_init(k_b, (H,), jnp.float32),  # (H,)
            nu=jnp.log(a) - jnp.log1p(-a),  # (H,): logit(a)
        )

    def coefficients(params, px):
        a = jnp.broadcast_to(jax.nn.sigmoid(params.nu), px.shape)  # (..., H)
        return a, px

    return _linear_cell("diagonal_linear_rnn", H, 1, init, coefficients, compute_dtype)


def min_gru(
    hidden_size: int,
    *,
    input_init=initializers.default_input_init,
    bias_init=initializers.default_bias_init,
    dtype: Any = None,
) -> Cell:
    r"""minGRU (Feng et al. 2024): a GRU whose gate and candidate do not see h_{t-1}.

    .. math::
        z_t = \sigma(x_t U^{(z)} + b^{(z)}), \quad \tilde h_t = x_t U^{(h)} + b^{(h)}, \quad
        h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

    Sequential form: ``recur``; parallel form: ``backend="associative"`` with
    a_t = 1 − z_t, b_t = z_t ⊙ h̃_t.

    Args:
        hidden_size: H.
        input_init, bias_init: initialisers of U (D, 2H) and b (2H,).
        dtype: optional compute dtype of the input matmul.

    Returns:
        A `Cell` with carry ``RNNCarry(h)`` and output h_t.

    References:
        Feng et al., "Were RNNs all we needed?", 2024 (section 3.1).
    """
    H = check_positive("hidden_size", hidden_size)
    compute_dtype = check_compute_dtype(dtype)

    def init(key, input_size: int) -> MinGRUParams:
        D = check_positive("input_size", input_size)
        k_u, k_b = jax.random.split(key)
        return MinGRUParams(
            U=input_init(k_u, (D, 2 * H), jnp.float32), b=bias_init(k_b, (2 * H,), jnp.float32)
        )

    def coefficients(params, px):
        del params
        k, h_tilde = jnp.split(px, 2, axis=-1)  # (..., H) each
        z = jax.nn.sigmoid(k)
        return 1.0 - z, z * h_tilde

    return _linear_cell("min_gru", H, 2, init, coefficients, compute_dtype)


def min_lstm(
    hidden_size: int,
    *,
    input_init=initializers.default_input_init,
    bias_init=initializers.default_bias_init,
    dtype: Any = None,
) -> Cell:
    r"""minLSTM (Feng et al. 2024): forget and input gates from x_t only, normalised to sum 1.

    .. math::
        f_t = \sigma(x_t U^{(f)} + b^{(f)}), \quad i_t = \sigma(x_t U^{(i)} + b^{(i)}), \quad
        \tilde h_t = x_t U^{(h)} + b^{(h)} \\
        f'_t = \frac{f_t}{f_t + i_t}, \quad i'_t = \frac{i_t}{f_t + i_t}, \quad
        h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t

    The normalisation makes the state's scale independent of the sequence length (the
    paper's length-independence scaling). Parallel form: a_t = f'_t, b_t = i'_t ⊙ h̃_t.

    Args:
        hidden_size: H.
        input_init, bias_init: initialisers of U (D, 3H) and b (3H,).
        dtype: optional compute dtype of the input matmul.

    Returns:
        A `Cell` with carry ``RNNCarry(h)`` and output h_t.

    References:
        Feng et al., "Were RNNs all we needed?", 2024 (section 3.2).
    """
    H = check_positive("hidden_size", hidden_size)
    compute_dtype = check_compute_dtype(dtype)

    def init(key, input_size: int) -> MinLSTMParams:
        D = check_positive("input_size", input_size)
        k_u, k_b = jax.random.split(key)
        return MinLSTMParams(
            U=input_init(k_u, (D, 3 * H), jnp.float32), b=bias_init(k_b, (3 * H,), jnp.float32)
        )

    def coefficients(params, px):
        del params
        kf, ki, h_tilde = jnp.split(px, 3, axis=-1)  # (..., H) each
        # f/(f+i) = 1/(1 + i/f) = sigmoid(log i − log f): no division, stable for any logits.
        log_ratio = jax.nn.log_sigmoid(ki) - jax.nn.log_sigmoid(kf)
        return jax.nn.sigmoid(-log_ratio), jax.nn.sigmoid(log_ratio) * h_tilde

    return _linear_cell("min_lstm", H, 3, init, coefficients, compute_dtype)
