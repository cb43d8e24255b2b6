"""Long Short-Term Memory, with the peephole and coupled-gate variants of the lecture.

Gate order is **(i, f, g, o)** — input, forget, candidate (c̃), output — the same as PyTorch
and ``jax.experimental.rnn``. The coupled variant has no input gate: its order is (f, g, o).

This module is the one place where the LSTM's equations are written (`lstm_pointwise`); every
backend of `rnnjax.unroll` and the analysis tools derive from it through the cell's
`rnnjax.cells.base.Structure`.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax import initializers
from rnnjax.cells.base import (
    Array,
    Cell,
    LSTMCarry,
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
    sigmoid,
    zeros_carry,
)


class LSTMParams(NamedTuple):
    """Parameters of `lstm`; gates concatenated in the order (i, f, g, o) ((f, g, o) if coupled).

    Attributes:
        U: input weights [U⁽ⁱ⁾ U⁽ᶠ⁾ U⁽ᵍ⁾ U⁽ᵒ⁾], (D, 4H) — (D, 3H) when coupled.
        W: recurrent weights [W⁽ⁱ⁾ W⁽ᶠ⁾ W⁽ᵍ⁾ W⁽ᵒ⁾] applied to m_{t-1}, (H, 4H) — (H, 3H) coupled.
        b: gate biases, (4H,) — (3H,) coupled; the forget block starts at ``forget_bias``
            (or, with ``chrono_init``, at the chrono draw, and the input block at its negative).
        p_i, p_f, p_o: diagonal peephole weights (H,) each, or None without peepholes
            (p_i is None for the coupled cell, which has no input gate).
    """

    U: Array
    W: Array
    b: Array
    p_i: Array | None = None
    p_f: Array | None = None
    p_o: Array | None = None


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
    """Hyper-parameters of `lstm` (see its docstring)."""

    hidden_size: int
    peephole: bool = False
    coupled: bool = False
    forget_bias: float = 1.0
    chrono_init: int | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @property
    def gates(self) -> int:
        """K: 4 gate blocks, 3 when coupled."""
        return 3 if self.coupled else 4


def check_chrono_init(chrono_init: int | None, forget_bias: float | None) -> int | None:
    """Validates `lstm`'s ``chrono_init`` (None, or an integer T_max > 2 given without a
    ``forget_bias``: None means not given); returns it as an int."""
    if chrono_init is None:
        return None
    try:
        value = operator.index(chrono_init)  # ints and numpy ints, not floats or bools
    except TypeError:
        value = None
    if value is None or isinstance(chrono_init, bool) or value <= 2:
        raise ValueError(
            f"chrono_init must be an integer > 2 (the longest dependency, in steps), "
            f"got chrono_init={chrono_init!r}"
        )
    if forget_bias is not None:
        raise ValueError(
            f"chrono_init={chrono_init} draws the forget-gate bias itself; "
            f"forget_bias={forget_bias} cannot be given with it"
        )
    return value


def lstm_bias(
    bias_init,
    key,
    H: int,
    K: int,
    dtype,
    forget_slot: int,
    forget_bias: float,
    chrono_init: int | None = None,
) -> Array:
    r"""The initial gate bias b, (K·H,): ``bias_init``'s draw with ``forget_bias`` added to the
    forget block — or, with ``chrono_init`` = T_max, the chrono initialisation of Tallec &
    Ollivier (2018):

    .. math::
        b^{(f)} \sim \log \mathcal U(1, T_{max} - 1), \qquad b^{(i)} = -b^{(f)}

    (the input block only where there is one: the gate order is (i, f, g, o), or (f, g, o)
    coupled, ``forget_slot`` 0). With x = 0 and h = 0 a unit then forgets at the rate
    1 − σ(b⁽ᶠ⁾) = 1 / (1 + u), u ~ U(1, T_max − 1): characteristic times 1 + u spread over
    [2, T_max], so that some units keep a value for as long as the task needs.
    """
    forget = slice(forget_slot * H, (forget_slot + 1) * H)
    if chrono_init is None:
        b = initialise(bias_init, key, (K * H,), dtype)  # (K·H,)
        return b.at[forget].add(forget_bias)
    k_init, k_chrono = jax.random.split(key)
    b = initialise(bias_init, k_init, (K * H,), dtype)  # (K·H,)
    u = jax.random.uniform(k_chrono, (H,), jnp.float32, 1.0, chrono_init - 1.0)  # (H,)
    b_f = jnp.log(u).astype(dtype)  # (H,)
    b = b.at[forget].set(b_f)
    return b if forget_slot == 0 else b.at[0:H].set(-b_f)


def lstm_pointwise(config: LSTMConfig):
    r"""The LSTM's step after the recurrent matmul (the one definition of its maths).

    With z_k = px_k + hw_k (gate blocks (i, f, g, o)) and peepholes p (zero without):

    .. math::
        f_t = \sigma(z_f + p_f c_{t-1}), \quad i_t = \sigma(z_i + p_i c_{t-1})
              \ (\text{coupled: } 1 - f_t), \quad \tilde c_t = \tanh(z_g) \\
        c_t = f_t c_{t-1} + i_t \tilde c_t, \quad
        o_t = \sigma(z_o + p_o c_t), \quad m_t = o_t \tanh(c_t)
    """
    peephole, coupled = config.peephole, config.coupled

    def pointwise(unit_params, carry: LSTMCarry, px, hw):
        z = [a + b for a, b in zip(px, hw, strict=True)]  # K x (..., H)
        zi, zf, zg, zo = [None, *z] if coupled else z
        c_prev = carry.c
        if peephole:  # f, i read c_{t-1} and o reads c_t: each gate activated on its own
            p_i, p_f, p_o = (None, *unit_params) if coupled else unit_params
            f = sigmoid(zf + expand(p_f, zf) * c_prev)
            if not coupled:
                i = sigmoid(zi + expand(p_i, zi) * c_prev)
            g = jnp.tanh(zg)  # (..., H)
        elif coupled:  # every gate in one pass
            f, g, o = activate_blocks((zf, zg, zo), (True, False, True))
        else:
            i, f, g, o = activate_blocks((zi, zf, zg, zo), (True, True, False, True))
        if coupled:
            i = 1.0 - f
        c = f * c_prev + i * g  # (..., H)
        if peephole:
            o = sigmoid(zo + expand(p_o, zo) * c)
        h = o * jnp.tanh(c)  # (..., H)
        return LSTMCarry(h, c), h

    return pointwise


def lstm(
    hidden_size: int,
    peephole: bool = False,
    coupled: bool = False,
    forget_bias: float | None = None,
    *,
    chrono_init: int | None = None,
    input_init=initializers.default_input_init,
    recurrent_init=initializers.default_recurrent_init,
    bias_init=initializers.default_bias_init,
    peephole_init=jax.nn.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Cell:
    r"""The LSTM of the lecture (Hochreiter & Schmidhuber 1997, with a forget gate).

    .. math::
        i_t &= \sigma(x_t U^{(i)} + m_{t-1} W^{(i)} + b^{(i)}) \\
        f_t &= \sigma(x_t U^{(f)} + m_{t-1} W^{(f)} + b^{(f)}) \\
        \tilde c_t &= \tanh(x_t U^{(g)} + m_{t-1} W^{(g)} + b^{(g)}) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot \tilde c_t \\
        o_t &= \sigma(x_t U^{(o)} + m_{t-1} W^{(o)} + b^{(o)}) \\
        m_t &= o_t \odot \tanh(c_t)

    With ``peephole=True`` (Gers & Schmidhuber 2000) i_t and f_t also see p ⊙ c_{t-1} and o_t
    sees p_o ⊙ c_t. With ``coupled=True`` the input gate is tied to the forget gate:
    c_t = f_t ⊙ c_{t-1} + (1 − f_t) ⊙ c̃_t.

    Args:
        hidden_size: H.
        peephole: add diagonal peephole connections.
        coupled: couple the input and forget gates (i_t = 1 − f_t).
        forget_bias: initial value of b⁽ᶠ⁾ (default 1.0, which keeps the cell-state path open
            at the start, Gers et al. 2000, Jozefowicz et al. 2015; PyTorch and Flax start at
            0). It is an initial value only: the computation never adds a hidden constant.
        chrono_init: T_max, the longest dependency the task holds, in steps: draw
            b⁽ᶠ⁾ ~ log U(1, T_max − 1) and set b⁽ⁱ⁾ = −b⁽ᶠ⁾ (Tallec & Ollivier 2018; see
            `lstm_bias`) instead of ``forget_bias`` — for lags of hundreds of steps, where a
            single forget bias either forgets (σ(5)^500 ≈ 3.5 %) or never learns to.
        input_init, recurrent_init, bias_init: initialisers of U, W (per gate block) and b.
        peephole_init: initialiser of the peephole vectors (default zeros).
        dtype: optional compute dtype of the matmuls (e.g. ``jnp.bfloat16``).
        param_dtype: dtype of the parameters (default float32).

    Returns:
        A `Cell` whose carry is ``LSTMCarry(h=m_t, c=c_t)`` and whose output is m_t.

    Example:
        >>> cell = lstm(256)
        >>> params = cell.init(jax.random.key(0), input_size=128)
        >>> params.W.shape                                # (H, 4H), gates (i, f, g, o)
        (256, 1024)

    References:
        Hochreiter & Schmidhuber, "Long short-term memory", 1997.
        Gers, Schmidhuber & Cummins, "Learning to forget", 2000.
        Gers & Schmidhuber, "Recurrent nets that time and count", 2000 (peepholes).
        Greff et al., "LSTM: A search space odyssey", 2017 (coupled gates).
        Tallec & Ollivier, "Can recurrent neural networks warp time?", ICLR 2018 (chrono).
    """
    config = LSTMConfig(
        hidden_size=check_positive("hidden_size", hidden_size),
        peephole=bool(peephole),
        coupled=bool(coupled),
        forget_bias=1.0 if forget_bias is None else float(forget_bias),
        chrono_init=check_chrono_init(chrono_init, forget_bias),
        dtype=check_compute_dtype(dtype),
        param_dtype=check_param_dtype(param_dtype),
    )
    H, K, pdt = config.hidden_size, config.gates, config.param_dtype
    forget_slot = 0 if coupled else 1

    def init(key, input_size: int) -> LSTMParams:
        D = check_positive("input_size", input_size)
        k_u, k_w, k_b, k_p = jax.random.split(key, 4)
        b = lstm_bias(
            bias_init, k_b, H, K, pdt, forget_slot, config.forget_bias, config.chrono_init
        )  # (G,)
        peep: list[Array | None] = [None, None, None]
        if peephole:
            k_pi, k_pf, k_po = jax.random.split(k_p, 3)
            peep = [initialise(peephole_init, k, (H,), pdt) for k in (k_pi, k_pf, k_po)]
            if coupled:
                peep[0] = None
        return LSTMParams(
            U=gate_blocks(input_init, k_u, D, H, K, pdt),  # (D, G)
            W=gate_blocks(recurrent_init, k_w, H, H, K, pdt),  # (H, G)
            b=b,
            p_i=peep[0],
            p_f=peep[1],
            p_o=peep[2],
        )

    def initial_carry(params: LSTMParams, batch_shape=()) -> LSTMCarry:
        dt = params.W.dtype
        return LSTMCarry(zeros_carry(batch_shape, H, dt), zeros_carry(batch_shape, H, dt))

    def project(params: LSTMParams, xs: Array) -> Array:
        return affine(xs, params.U, params.b, config.dtype)  # (..., G)

    def unit_params(params: LSTMParams) -> tuple[Array, ...]:
        return tuple(p for p in (params.p_i, params.p_f, params.p_o) if p is not None)

    structure = Structure(
        gates=K,
        recurrent_weights=lambda params: params.W,
        unit_params=unit_params,
        pointwise=lstm_pointwise(config),
        tied=(True,) * K,
        compute_dtype=config.dtype,
        memory_gate="forget",
    )
    return make_cell(
        name="lstm",
        hidden_size=H,
        config=config,
        init=init,
        initial_carry=initial_carry,
        project=project,
        structure=structure,
    )
