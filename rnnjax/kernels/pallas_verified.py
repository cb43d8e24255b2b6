"""``backend="pallas_verified"``: the persistent kernels with the per-family element-wise code
that was measured on an H100 (``benchmarks/results/gpu_NVIDIA_H100_80GB_HBM3.md``).

The generic ``"pallas"`` backend (`rnnjax.kernels.pallas`) runs the same kernels on a cell's
own ``pointwise``; it has run in Pallas interpret mode only. Interpret mode does not exercise
the Triton lowering of that code, so this GPU-verified form stays selectable — and is what
``backend="auto"`` picks on GPU — until the generic one has run on a card; then this module
goes. It restates the equations of `rnnjax.cells.lstm.lstm_pointwise` (plain, peephole,
coupled), `rnnjax.cells.gru.gru_pointwise` and the Simple RNN's ``σ(px + hw)``; the tests
check it against the generic backend and ``"scan"`` in interpret mode.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells.base import ACTIVATIONS, Array, Cell
from rnnjax.cells.gru import GRUConfig
from rnnjax.cells.lstm import LSTMConfig
from rnnjax.cells.simple_rnn import SimpleRNNConfig
from rnnjax.kernels.base import YES, Support, no
from rnnjax.kernels.pallas import make_pallas_backend, structured_for_pallas
from rnnjax.kernels.pallas_kernels import Family


def _lstm(px, hw, state, pv, peephole: bool, coupled: bool) -> list:
    """The LSTM of `rnnjax.cells.lstm`, gates (i, f, g, o) ((f, g, o) coupled)."""
    _, c_prev = state
    z = [a + b for a, b in zip(px, hw, strict=True)]
    if coupled:
        zf, zg, zo = z
        p_f, p_o = pv if peephole else (None, None)
    else:
        zi, zf, zg, zo = z
        p_i, p_f, p_o = pv if peephole else (None, None, None)
    f = jax.nn.sigmoid(zf + p_f * c_prev if peephole else zf)
    if coupled:
        i = 1.0 - f
    else:
        i = jax.nn.sigmoid(zi + p_i * c_prev if peephole else zi)
    c = f * c_prev + i * jnp.tanh(zg)
    o = jax.nn.sigmoid(zo + p_o * c if peephole else zo)
    return [o * jnp.tanh(c), c]


def _gru(px, hw, state, pv) -> list:
    """The GRU of `rnnjax.cells.gru` (reset_after=True), gates (r, z, n)."""
    (h_prev,) = state
    (b_hn,) = pv
    r = jax.nn.sigmoid(px[0] + hw[0])
    z = jax.nn.sigmoid(px[1] + hw[1])
    n = jnp.tanh(px[2] + r * (hw[2] + b_hn))
    return [(1.0 - z) * n + z * h_prev]


def _check(cell: Cell, name: str) -> Support:
    ok = structured_for_pallas(cell, name)
    if not ok:
        return ok
    cfg = cell.config
    if isinstance(cfg, LSTMConfig | SimpleRNNConfig) or (
        isinstance(cfg, GRUConfig) and cfg.reset_after
    ):
        if isinstance(cfg, SimpleRNNConfig) and cfg.activation not in ACTIVATIONS:
            return no(f"backend={name!r} needs a named activation, got {cfg.activation!r}")
        return YES
    return no(f"backend={name!r} covers the LSTM, GRU (reset_after) and Simple RNN cells only")


def verified_family(cell: Cell, params: Any) -> tuple[Family, list[Array]]:
    """The hand-written family of a cell that `_check` accepted."""
    cfg = cell.config
    if isinstance(cfg, LSTMConfig):
        vecs = [v for v in (params.p_i, params.p_f, params.p_o) if v is not None]
        peephole, coupled = cfg.peephole, cfg.coupled

        def lstm_pointwise(px, hw, state, pv):
            return _lstm(px, hw, state, pv, peephole, coupled)

        return Family("lstm", cfg.gates, 2, len(vecs), True, lstm_pointwise), vecs
    if isinstance(cfg, GRUConfig):
        return Family("gru", 3, 1, 1, False, _gru), [params.b_hn]
    act = ACTIVATIONS[cfg.activation][0]

    def simple_pointwise(px, hw, state, pv):
        return [act(px[0] + hw[0])]

    return Family("simple_rnn", 1, 1, 0, True, simple_pointwise), []


PALLAS_VERIFIED = make_pallas_backend(
    name="pallas_verified",
    family_fn=verified_family,
    cell_check=_check,
    description="the persistent Pallas kernels with the GPU-verified per-family element-wise code",
)
