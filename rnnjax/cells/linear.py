r"""Cells whose recurrence is linear in the carry: h_t = a_t ⊙ h_{t-1} + b_t.

Because every gate depends on x_t only, a_t and b_t are functions of the hoisted projection
px_t alone, and the whole sequence can run as a parallel prefix scan of the affine maps
h ↦ a_t ⊙ h + b_t (``backend="associative"``, O(log T) depth) instead of T sequential steps.
Each cell here also runs step by step (``backend="scan"``, through its ``recur``): the two
forms compute the same thing.

The contract with the associative backend: the cell's `rnnjax.cells.base.Structure` has no
recurrent matrix and a ``linear_coefficients(unit_params, px) -> (a, b)`` mapping the
projected input's gate blocks to the coefficients (..., H) of every step; ``pointwise`` (and
so ``recur``) is *defined* as ``a_t ⊙ h + b_t`` from them, so the two forms cannot differ.

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

import dataclasses
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
    expand,
    initialise,
    make_cell,
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


@dataclasses.dataclass(frozen=True)
class LinearCellConfig:
    """Hyper-parameters of the linear-in-carry cells (``blocks``: gate blocks of px)."""

    hidden_size: int
    blocks: int
    dtype: Any = None
    param_dtype: Any = jnp.float32
    decay_min: float | None = None
    decay_max: float | None = None


def _config(hidden_size: int, blocks: int, dtype: Any, param_dtype: Any, **extra) -> Any:
    return LinearCellConfig(
        hidden_size=check_positive("hidden_size", hidden_size),
        blocks=blocks,
        dtype=check_compute_dtype(dtype),
        param_dtype=check_param_dtype(param_dtype),
        **extra,
    )


def _linear_cell(name, config: LinearCellConfig, init, coefficients, unit_params) -> Cell:
    """A cell with ``recur(h, px) = a ⊙ h + b`` from ``coefficients(unit_params, px) = (a, b)``."""
    H = config.hidden_size

    def initial_carry(params, batch_shape=()) -> RNNCarry:
        return RNNCarry(zeros_carry(batch_shape, H, params.U.dtype))

    def project(params, xs: Array) -> Array:
        return affine(xs, params.U, params.b, config.dtype)  # (..., blocks·H)

    def pointwise(up, carry: RNNCarry, px, hw):
        del hw  # no recurrent matrix
        a, b = coefficients(up, px)  # (..., H) each
        h = a * carry.h + b  # (..., H)
        return RNNCarry(h), h

    structure = Structure(
        gates=config.blocks,
        recurrent_weights=lambda params: None,
        unit_params=unit_params,
        pointwise=pointwise,
        tied=(True,) * config.blocks,
        compute_dtype=config.dtype,
        linear_coefficients=coefficients,
        memory_gate="decay",
    )
    return make_cell(
        name=name,
        hidden_size=H,
        config=config,
        init=init,
        initial_carry=initial_carry,
        project=project,
        structure=structure,
    )


def diagonal_linear_rnn(
    hidden_size: int,
    decay_min: float = 0.9,
    decay_max: float = 0.999,
    *,
    input_init=initializers.default_input_init,
    bias_init=initializers.default_bias_init,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Cell:
    r"""A diagonal linear RNN: a per-unit leaky integrator of the projected input.

    .. math::  h_t = a \odot h_{t-1} + x_t U + b, \qquad a = \mathrm{sigmoid}(\nu) \in (0, 1)

    Args:
        hidden_size: H.
        decay_min, decay_max: the initial decays a are drawn uniformly from this range
            (0 < decay_min <= decay_max < 1); a close to 1 remembers for about 1/(1 − a) steps.
        input_init, bias_init: initialisers of U and b.
        dtype: optional compute dtype of the input matmul.
        param_dtype: dtype of the parameters (default float32).

    Returns:
        A `Cell` with carry ``RNNCarry(h)``, output h_t, and
        ``structure.linear_coefficients(unit_params, px) = (a, px)``.

    Example:
        >>> cell = diagonal_linear_rnn(64)
        >>> params = cell.init(jax.random.key(0), input_size=8)
        >>> carry, ys = rj.unroll(cell, params, xs, backend="associative")
    """
    if not 0.0 < decay_min <= decay_max < 1.0:
        raise ValueError(f"need 0 < decay_min <= decay_max < 1, got {decay_min=}, {decay_max=}")
    config = _config(
        hidden_size, 1, dtype, param_dtype, decay_min=float(decay_min), decay_max=float(decay_max)
    )
    H, pdt = config.hidden_size, config.param_dtype

    def init(key, input_size: int) -> DiagonalLinearRNNParams:
        D = check_positive("input_size", input_size)
        k_u, k_b, k_a = jax.random.split(key, 3)
        a = jax.random.uniform(k_a, (H,), pdt, decay_min, decay_max)  # (H,)
        return DiagonalLinearRNNParams(
            U=initialise(input_init, k_u, (D, H), pdt),  # (D, H)
            b=initialise(bias_init, k_b, (H,), pdt),  # (H,)
            nu=jnp.log(a) - jnp.log1p(-a),  # (H,): logit(a)
        )

    def coefficients(unit_params, px):
        (nu,), (px_h,) = unit_params, px
        a = jnp.broadcast_to(expand(jax.nn.sigmoid(nu), px_h), px_h.shape)  # (..., H)
        return a, px_h

    return _linear_cell(
        "diagonal_linear_rnn", config, init, coefficients, lambda params: (params.nu,)
    )


def min_gru(
    hidden_size: int,
    *,
    input_init=initializers.default_input_init,
    bias_init=initializers.default_bias_init,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
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
        param_dtype: dtype of the parameters (default float32).

    Returns:
        A `Cell` with carry ``RNNCarry(h)`` and output h_t.

    References:
        Feng et al., "Were RNNs all we needed?", 2024 (section 3.1).
    """
    config = _config(hidden_size, 2, dtype, param_dtype)
    H, pdt = config.hidden_size, config.param_dtype

    def init(key, input_size: int) -> MinGRUParams:
        D = check_positive("input_size", input_size)
        k_u, k_b = jax.random.split(key)
        return MinGRUParams(
            U=initialise(input_init, k_u, (D, 2 * H), pdt),
            b=initialise(bias_init, k_b, (2 * H,), pdt),
        )

    def coefficients(unit_params, px):
        k, h_tilde = px  # (..., H) each
        z = jax.nn.sigmoid(k)
        return 1.0 - z, z * h_tilde

    return _linear_cell("min_gru", config, init, coefficients, lambda params: ())


def min_lstm(
    hidden_size: int,
    *,
    input_init=initializers.default_input_init,
    bias_init=initializers.default_bias_init,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
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
        param_dtype: dtype of the parameters (default float32).

    Returns:
        A `Cell` with carry ``RNNCarry(h)`` and output h_t.

    References:
        Feng et al., "Were RNNs all we needed?", 2024 (section 3.2).
    """
    config = _config(hidden_size, 3, dtype, param_dtype)
    H, pdt = config.hidden_size, config.param_dtype

    def init(key, input_size: int) -> MinLSTMParams:
        D = check_positive("input_size", input_size)
        k_u, k_b = jax.random.split(key)
        return MinLSTMParams(
            U=initialise(input_init, k_u, (D, 3 * H), pdt),
            b=initialise(bias_init, k_b, (3 * H,), pdt),
        )

    def coefficients(unit_params, px):
        kf, ki, h_tilde = px  # (..., H) each
        # f/(f+i) = 1/(1 + i/f) = sigmoid(log i − log f): no division, stable for any logits.
        log_ratio = jax.nn.log_sigmoid(ki) - jax.nn.log_sigmoid(kf)
        return jax.nn.sigmoid(-log_ratio), jax.nn.sigmoid(log_ratio) * h_tilde

    return _linear_cell("min_lstm", config, init, coefficients, lambda params: ())
