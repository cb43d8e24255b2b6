"""The two trainable models: a task model (features → RNN stack → linear / softmax readout)
and a character model (embedding → RNN stack → softmax over the vocabulary).

Both are NamedTuples of pure functions, like the cells and layers they are built from::

    model = char_model(vocab_size=80, cells=build_cells("lstm", 128, layers=2), embed_dim=32)
    params = model.init(key)
    carry, log_probs = model.apply(params, tokens, carry)   # tokens (B, W) -> (B, W, V)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax.cells import CELLS, Cell
from rnnjax.cells.base import Array, check_positive, expand
from rnnjax.data.tasks import Task, TaskBatch
from rnnjax.initializers import for_cell, readout_init
from rnnjax.layers import EmbeddingParams, ReadoutParams, Stack, embedding, readout, stacked
from rnnjax.tokens import Tokens


def build_cells(
    cell: str,
    hidden: int,
    layers: int = 1,
    init: str | None = None,
    forget_bias: float | None = None,
) -> list[Cell]:
    """``layers`` cells of family ``cell`` with ``hidden`` units each.

    Args:
        cell: one of `CELLS`.
        hidden: H, units per layer.
        layers: depth of the stack.
        init: optional initialisation, as `rnnjax.initializers.for_cell` reads it: a named
            scheme (Simple RNN only), e.g. "smart_tanh" for Pascanu et al.'s, or "rho=R" for
            a recurrent matrix of spectral radius R (simple_rnn, lstm, gru), or "chrono=T"
            for an LSTM's chrono initialisation (lags up to T steps).
        forget_bias: initial forget-gate bias of an LSTM (default 1). σ(b)^k is the share of
            the cell state kept over k steps at the start: b = 1 keeps 0.73^k (2.5e-14 at
            k = 100), b = 5 keeps 0.993^k (0.51): long lags need the larger value (or, for
            hundreds of steps, init "chrono=T").
    """
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
    check_positive("hidden", hidden)
    check_positive("layers", layers)
    kwargs: dict[str, Any] = for_cell(cell, init)
    if forget_bias is not None:
        if cell != "lstm":
            raise ValueError(f"forget_bias={forget_bias} applies to the lstm only, not {cell}")
        kwargs["forget_bias"] = float(forget_bias)
    return [CELLS[cell](hidden, **kwargs) for _ in range(layers)]


class ModelParams(NamedTuple):
    """Attributes: embed: EmbeddingParams (character models) or None; rnn: per-layer params of
    the stack; out: ReadoutParams (V (H, K), b (K,))."""

    embed: EmbeddingParams | None
    rnn: tuple
    out: ReadoutParams


class Model(NamedTuple):
    """A trainable model.

    Attributes:
        init: ``key -> ModelParams``.
        initial_carry: ``(params, batch_shape) -> carry`` (zeros; one entry per layer).
        apply: ``(params, inputs, carry=None, *, key=None) -> (carry, outputs)``: inputs
            (B, T, D) float features or (B, T) int tokens; outputs (B, T, K): log-probabilities,
            or raw values for a regression task. ``key`` switches dropout on.
        step: ``(params, carry, token) -> (carry, log_probs)``: one step (sampling).
        features: ``(params, inputs) -> xs``: what the first layer reads (the embedding of
            tokens; task features unchanged).
        head: ``(params, hs) -> outputs``: the readout applied to the top layer's outputs.
        stack: the RNN `Stack` (its cells are read by the analysis tools).
        output_size: K.
    """

    init: Callable[..., ModelParams]
    initial_carry: Callable[..., Any]
    apply: Callable[..., tuple[Any, Array]]
    step: Callable[..., tuple[Any, Array]]
    features: Callable[..., Array]
    head: Callable[..., Array]
    stack: Stack
    output_size: int


def _build(
    cells: list[Cell],
    input_size: int,
    output_size: int,
    *,
    emb=None,
    log_softmax: bool = True,
    dropout: float = 0.0,
    backend: str = "auto",
    readout_init: Any = None,
) -> Model:
    stack = stacked(cells, dropout=dropout)
    out = readout(output_size) if readout_init is None else readout(output_size, init=readout_init)
    H = cells[-1].hidden_size

    def init(key) -> ModelParams:
        k_emb, k_rnn, k_out = jax.random.split(key, 3)
        return ModelParams(
            embed=None if emb is None else emb.init(k_emb),
            rnn=stack.init(k_rnn, input_size),
            out=out.init(k_out, H),
        )

    def head(params: ModelParams, hs: Array) -> Array:
        if log_softmax:
            return out.apply(params.out, hs)  # (..., K) log-probabilities
        ys = hs @ params.out.V  # (..., K)
        return ys + expand(params.out.b, ys)

    def features(params: ModelParams, inputs: Array) -> Array:
        return inputs if emb is None else emb.apply(params.embed, inputs)  # (..., D)

    def initial_carry(params: ModelParams, batch_shape=()):
        return stack.initial_carry(params.rnn, batch_shape)

    def first_layer_inputs(params: ModelParams, inputs: Array) -> Array | Tokens:
        if params.embed is not None and isinstance(stack.cells[0], Cell):
            return Tokens(params.embed.E, inputs)  # embedded by unroll (rnnjax.tokens)
        return features(params, inputs)  # (..., D)

    def apply(params: ModelParams, inputs: Array, carry=None, *, key=None):
        xs = first_layer_inputs(params, inputs)
        carry, hs = stack.apply(params.rnn, xs, carry, key=key, backend=backend)
        return carry, head(params, hs)  # (B, T, K)

    def step(params: ModelParams, carry, token: Array):
        carry, h = stack.step(params.rnn, carry, features(params, token))
        return carry, head(params, h)  # (..., K)

    return Model(init, initial_carry, apply, step, features, head, stack, output_size)


def char_model(
    vocab_size: int,
    cells: list[Cell],
    embed_dim: int = 32,
    dropout: float = 0.0,
    backend: str = "auto",
) -> Model:
    """Embedding (V, E) → stacked cells → softmax readout over the V characters."""
    check_positive("embed_dim", embed_dim)
    emb = embedding(vocab_size, embed_dim)
    return _build(cells, embed_dim, vocab_size, emb=emb, dropout=dropout, backend=backend)


def task_model(
    task: Task, cells: list[Cell], backend: str = "auto", init: str | None = None
) -> Model:
    """Task features (D) → stacked cells → linear output (regression) or softmax (classes).

    ``init``: the named scheme the cells were built with; the readout then starts as in that
    scheme's paper (`rnnjax.initializers.readout_init`: N(0, 0.01) for Pascanu's smart tanh).
    """
    return _build(
        cells,
        task.input_size,
        task.output_size,
        log_softmax=task.objective == "xent",
        backend=backend,
        readout_init=None if init is None else readout_init(init),
    )


def task_outputs(task: Task, outputs: Array, batch: TaskBatch) -> Array:
    """The outputs the task is scored on: (B, K) at each sequence's last step, or all (B, L, K).

    The model is causal, so the output at step ``length − 1`` never sees the zero padding.
    """
    if task.readout == "all":
        return outputs
    last = (batch.lengths - 1)[:, None, None]  # (B, 1, 1)
    return jnp.take_along_axis(outputs, last, axis=1)[:, 0, :]  # (B, K)


__all__ = [
    "CELLS",
    "Model",
    "ModelParams",
    "build_cells",
    "char_model",
    "task_model",
    "task_outputs",
]
