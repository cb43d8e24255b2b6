r"""LSTM with a recurrent projection layer (LSTMP; Sak, Senior & Beaufays 2014; PyTorch's
``nn.LSTM(proj_size=P)``).

The output m_t = o_t ⊙ tanh(c_t) of the H memory cells is projected to P < H units,
h_t = m_t W_hr, and it is the projected h_t that is fed back to the gates (and returned), so
the recurrent matrix is (P, 4H) instead of (H, 4H): fewer parameters and a cheaper step for
large H.

How it runs: the step is two dependent matmuls — h_{t-1} W, the LSTM's element-wise maths
(`rnnjax.cells.lstm.lstm_pointwise`, the same function the plain LSTM uses), then m_t W_hr —
and the carry's leaves have two widths (h: P, c: H). The structured form has one matmul
before the element-wise part and leaves of one width, so this cell gives ``recur`` only and
runs on ``backend="scan"`` (``"auto"`` picks it; the derived backends refuse it with the
reason). The input projection is still hoisted out of the loop.
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
    affine,
    check_compute_dtype,
    check_param_dtype,
    check_positive,
    gate_blocks,
    initialise,
    make_cell,
    matmul,
    split_blocks,
    zeros_carry,
)
from rnnjax.cells.lstm import LSTMConfig, check_chrono_init, lstm_bias, lstm_pointwise


class LSTMPParams(NamedTuple):
    """Parameters of `lstmp`; gates in the order (i, f, g, o).

    Attributes:
        U: input weights, (D, 4H).
        W: recurrent weights applied to the projected h_{t-1}, (P, 4H).
        b: gate biases, (4H,); the forget block starts at ``forget_bias``.
        W_hr: the projection, (H, P) (PyTorch's ``weight_hr`` (P, H), transposed).
    """

    U: Array
    W: Array
    b: Array
    W_hr: Array


@dataclasses.dataclass(frozen=True)
class LSTMPConfig:
    """Hyper-parameters of `lstmp`: H memory cells projected to P outputs."""

    hidden_size: int
    proj_size: int
    forget_bias: float = 1.0
    chrono_init: int | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32


def lstmp(
    hidden_size: int,
    proj_size: int,
    forget_bias: float | None = None,
    *,
    chrono_init: int | None = None,
    input_init=initializers.default_input_init,
    recurrent_init=initializers.default_recurrent_init,
    projection_init=initializers.default_input_init,
    bias_init=initializers.default_bias_init,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Cell:
    r"""The LSTM with a recurrent projection (LSTMP).

    .. math::
        (i, f, g, o)_t &= \sigma, \sigma, \tanh, \sigma\,(x_t U + h_{t-1} W + b) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t, \quad m_t = o_t \odot \tanh(c_t) \\
        h_t &= m_t W_{hr} \qquad (P \text{ units, fed back and returned})

    Args:
        hidden_size: H, the number of memory cells (the size of c_t).
        proj_size: P, the size of h_t and of the output; PyTorch requires P < H, and so does
            this cell.
        forget_bias: initial value of the forget block of b (default 1.0).
        chrono_init: T_max: the chrono initialisation of b⁽ᶠ⁾ and b⁽ⁱ⁾ instead of
            ``forget_bias`` (as in `lstm`; see `rnnjax.cells.lstm.lstm_bias`).
        input_init, recurrent_init, projection_init, bias_init: initialisers of U, W (per gate
            block), W_hr and b.
        dtype: optional compute dtype of the matmuls.
        param_dtype: dtype of the parameters.

    Returns:
        A `Cell` with ``hidden_size = P`` (the output size) and carry
        ``LSTMCarry(h (…, P), c (…, H))``; it runs on ``backend="scan"``.

    References:
        Sak, Senior & Beaufays, "Long short-term memory recurrent neural network
        architectures for large scale acoustic modeling", Interspeech 2014.
    """
    H = check_positive("hidden_size", hidden_size)
    P = check_positive("proj_size", proj_size)
    if P >= H:
        raise ValueError(f"proj_size must be smaller than hidden_size, got {P=} and {H=}")
    config = LSTMPConfig(
        hidden_size=H,
        proj_size=P,
        forget_bias=1.0 if forget_bias is None else float(forget_bias),
        chrono_init=check_chrono_init(chrono_init, forget_bias),
        dtype=check_compute_dtype(dtype),
        param_dtype=check_param_dtype(param_dtype),
    )
    pdt, cd = config.param_dtype, config.dtype
    pointwise = lstm_pointwise(LSTMConfig(hidden_size=H, dtype=cd, param_dtype=pdt))

    def init(key, input_size: int) -> LSTMPParams:
        D = check_positive("input_size", input_size)
        k_u, k_w, k_b, k_r = jax.random.split(key, 4)
        b = lstm_bias(bias_init, k_b, H, 4, pdt, 1, config.forget_bias, config.chrono_init)
        return LSTMPParams(
            U=gate_blocks(input_init, k_u, D, H, 4, pdt),  # (D, 4H)
            W=gate_blocks(recurrent_init, k_w, P, H, 4, pdt),  # (P, 4H)
            b=b,  # (4H,)
            W_hr=initialise(projection_init, k_r, (H, P), pdt),  # (H, P)
        )

    def initial_carry(params: LSTMPParams, batch_shape=()) -> LSTMCarry:
        dt = params.W.dtype
        return LSTMCarry(zeros_carry(batch_shape, P, dt), zeros_carry(batch_shape, H, dt))

    def project(params: LSTMPParams, xs: Array) -> Array:
        return affine(xs, params.U, params.b, cd)  # (…, 4H)

    def recur(params: LSTMPParams, carry: LSTMCarry, px: Array):
        hw = matmul(carry.h, params.W, cd)  # (…, 4H)
        (m, c), _ = pointwise((), carry, split_blocks(px, 4), split_blocks(hw, 4))
        h = matmul(m, params.W_hr, cd)  # (…, P)
        return LSTMCarry(h, c), h

    return make_cell(
        name="lstmp",
        hidden_size=P,
        config=config,
        init=init,
        initial_carry=initial_carry,
        project=project,
        recur=recur,
    )
