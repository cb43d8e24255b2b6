r"""`rnn`: one PyTorch-shaped layer for the common case (deep, bidirectional, dropout, LSTMP).

    layer = rj.rnn("lstm", 128, num_layers=2, bidirectional=True, dropout=0.1)
    params = layer.init(key, input_size=40)
    carry, ys = layer.apply(params, xs, lengths=lengths, key=dropout_key)    # ys (B, T, 256)
    h_n, c_n = rj.rnn_layer.torch_state(layer, carry)         # PyTorch's (L·2, B, H) layout

It is `rnnjax.layers.stacked` over cells or `rnnjax.layers.bidirectional` pairs of cells, so
every backend and option of `rnnjax.unroll` applies (``lengths``, ``resets``, ``backend``, …).
`rnnjax.interop.from_torch_module_state` loads a whole ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``
state dict into it.

Differences from PyTorch: inputs are batch-first by default (``time_major=True`` for (T, B,
D)); the LSTM's forget-gate bias starts at 1.0 (``cell_options={"forget_bias": 0.0}`` for
PyTorch's 0); the carry is a tuple over layers of each layer's carry (a (forward, backward)
pair for bidirectional layers) — `torch_state` / `carry_from_torch` convert to and from
PyTorch's stacked (h_n, c_n).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp

from rnnjax.cells.base import Array, Cell, LSTMCarry, RNNCarry, check_positive
from rnnjax.cells.gru import gru
from rnnjax.cells.lstm import lstm
from rnnjax.cells.lstmp import lstmp
from rnnjax.cells.simple_rnn import simple_rnn
from rnnjax.layers import Stack, stacked
from rnnjax.layers import bidirectional as both_ways
from rnnjax.regularise import regularised

MODES = ("lstm", "gru", "rnn_tanh", "rnn_relu")


class RNNLayer(NamedTuple):
    """A deep (bidirectional) RNN layer (see `rnn`).

    Attributes:
        init: ``(key, input_size) -> params``: a tuple over layers of the cell's params (a
            `rnnjax.layers.BidirectionalParams` per bidirectional layer).
        initial_carry: ``(params, batch_shape=()) -> carry`` (zeros).
        apply: ``(params, xs, carry=None, *, lengths=None, key=None, **unroll_options)
            -> (carry, ys)``; ``key`` switches on dropout (between layers and in regularised
            cells); without it the layer evaluates.
        stack: the underlying `rnnjax.layers.Stack`.
        mode: "lstm", "gru", "rnn_tanh" or "rnn_relu".
        hidden_size: features of ys (H or P, times 2 when bidirectional).
        num_layers: L.
        bidirectional: whether each layer reads both ways.
        cell_hidden: H of each cell (the LSTM's c size with a projection).
        proj_size: P (0: no projection).
    """

    init: Callable[..., Any]
    initial_carry: Callable[..., Any]
    apply: Callable[..., tuple[Any, Array]]
    stack: Stack
    mode: str
    hidden_size: int
    num_layers: int
    bidirectional: bool
    cell_hidden: int
    proj_size: int


def _cell(mode: str, H: int, P: int, options: Mapping[str, Any]) -> Cell:
    if mode == "lstm":
        return lstmp(H, P, **options) if P else lstm(H, **options)
    if P:
        raise ValueError(f"proj_size is an LSTM option, got {mode=} with proj_size={P}")
    if mode == "gru":
        return gru(H, **options)
    return simple_rnn(H, activation=mode.removeprefix("rnn_"), **options)


def rnn(
    mode: str,
    hidden_size: int,
    num_layers: int = 1,
    *,
    bidirectional: bool = False,
    dropout: float = 0.0,
    proj_size: int = 0,
    cell_options: Mapping[str, Any] | None = None,
    input_dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    zoneout_h: float = 0.0,
    zoneout_c: float = 0.0,
    weight_drop: float = 0.0,
) -> RNNLayer:
    """A PyTorch-shaped recurrent layer: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` as one value.

    Args:
        mode: "lstm", "gru", "rnn_tanh" or "rnn_relu".
        hidden_size: H.
        num_layers: L stacked layers.
        bidirectional: each layer reads both ways; its output is [forward; backward].
        dropout: dropout on the outputs of every layer but the last (as PyTorch), active only
            when ``apply`` gets a ``key``.
        proj_size: P > 0 gives LSTMP cells (`rnnjax.lstmp`; LSTM only, P < H). They run on
            ``backend="scan"``.
        cell_options: keyword arguments for the cell factory (e.g. ``forget_bias``,
            ``dtype``, ``param_dtype``).
        input_dropout, recurrent_dropout, zoneout_h, zoneout_c, weight_drop: recurrent
            regularisation of every cell (`rnnjax.regularised`), active only with a ``key``.

    Returns:
        An `RNNLayer`.

    Raises:
        ValueError: an unknown mode, a non-positive size, a rate outside [0, 1), or
            proj_size for a mode other than "lstm" or not below hidden_size.
    """
    if mode not in MODES:
        raise ValueError(f"unknown {mode=}; choose one of {MODES}")
    H, L = check_positive("hidden_size", hidden_size), check_positive("num_layers", num_layers)
    P = int(proj_size)
    if P < 0:
        raise ValueError(f"proj_size must be >= 0, got {proj_size=}")
    rates: dict[str, Any] = dict(
        input_dropout=input_dropout,
        recurrent_dropout=recurrent_dropout,
        zoneout_h=zoneout_h,
        zoneout_c=zoneout_c,
        weight_drop=weight_drop,
    )
    cell = _cell(mode, H, P, dict(cell_options or {}))
    if any(r != 0.0 for r in rates.values()):
        cell = regularised(cell, **rates)
    layer: Any = both_ways(cell) if bidirectional else cell
    stack = stacked([layer] * L, dropout=dropout)
    out = (P or H) * (2 if bidirectional else 1)

    def apply(params, xs, carry=None, *, lengths=None, key=None, **unroll_options):
        return stack.apply(params, xs, carry, key=key, lengths=lengths, **unroll_options)

    return RNNLayer(
        stack.init, stack.initial_carry, apply, stack, mode, out, L, bool(bidirectional), H, P
    )


def base_cell(layer: RNNLayer) -> Cell:
    """A plain cell of the layer's family (no options, no regularisation), e.g. for interop."""
    return _cell(layer.mode, layer.cell_hidden, layer.proj_size, {})


def _leaves(carry: Any) -> tuple[Array, Array | None]:
    if isinstance(carry, LSTMCarry):
        return carry.h, carry.c
    return carry.h, None


def torch_state(layer: RNNLayer, carry: tuple) -> tuple[Array, Array | None]:
    """The carry in PyTorch's layout: ``(h_n, c_n)``, each (L·dirs, *batch, ·).

    Row ``l·dirs + d`` is layer l, direction d (0 forward, 1 backward), as in PyTorch; c_n is
    None for the GRU and the simple RNN.
    """
    hs: list[Any] = []
    cs: list[Any] = []
    for per_layer in carry:
        directions = per_layer if layer.bidirectional else (per_layer,)
        for c in directions:
            h, cell_state = _leaves(c)
            hs.append(h)
            cs.append(cell_state)
    c_n = None if cs[0] is None else jnp.stack(cs)
    return jnp.stack(hs), c_n


def carry_from_torch(layer: RNNLayer, h_0: Array, c_0: Array | None = None) -> tuple:
    """PyTorch's initial ``(h_0, c_0)`` (L·dirs, *batch, ·) as the layer's carry."""
    dirs = 2 if layer.bidirectional else 1
    if h_0.shape[0] != layer.num_layers * dirs:
        raise ValueError(
            f"h_0 has {h_0.shape[0]} rows but the layer has {layer.num_layers} layers x "
            f"{dirs} directions (h_0.shape={h_0.shape})"
        )
    if (layer.mode == "lstm") != (c_0 is not None):
        raise ValueError(f"c_0 is needed for mode='lstm' and only then (mode={layer.mode!r})")

    def one(i: int):
        return RNNCarry(h_0[i]) if c_0 is None else LSTMCarry(h_0[i], c_0[i])

    per_layer = [tuple(one(li * dirs + d) for d in range(dirs)) for li in range(layer.num_layers)]
    return tuple(p if layer.bidirectional else p[0] for p in per_layer)


__all__ = ["MODES", "RNNLayer", "base_cell", "carry_from_torch", "rnn", "torch_state"]
