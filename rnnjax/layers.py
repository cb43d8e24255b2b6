"""Layers around the cells: embedding, softmax readout, deep stacks and bidirectional RNNs.

Like the cells, each layer is a NamedTuple of pure functions built by a factory::

    emb = rj.embedding(vocab_size=65, features=32)
    rnn = rj.stacked([rj.lstm(128), rj.lstm(128)], dropout=0.1)
    out = rj.readout(vocab_size=65)
    p_emb, p_rnn, p_out = emb.init(k1), rnn.init(k2, 32), out.init(k3, 128)
    carry, hs = rnn.apply(p_rnn, emb.apply(p_emb, tokens), key=k_dropout)
    log_probs = out.apply(p_out, hs)                     # (B, T, 65)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._ids import check_ids
from rnnjax.cells.base import Array, Cell, check_positive, expand
from rnnjax.driver import unroll
from rnnjax.regularise import with_key
from rnnjax.resets import segment_ends
from rnnjax.tokens import in_table, lookup


class Layer(NamedTuple):
    """A stateless layer: ``init(key, ...) -> params`` and ``apply(params, x) -> y``."""

    init: Callable[..., Any]
    apply: Callable[..., Array]


class EmbeddingParams(NamedTuple):
    """Attributes: E: the embedding table, (V, D); row k is the vector of token k."""

    E: Array


def embedding(
    vocab_size: int,
    features: int,
    *,
    pad_id: int | None = None,
    init=jax.nn.initializers.normal(1.0),
) -> Layer:
    r"""Token embedding: x_t = onehot(k_t) E, computed as the row lookup E[k_t].

    The lecture's "why not just indices?": feeding the index k as a number would make tokens
    with close indices look similar for no reason; a one-hot vector keeps all tokens
    equidistant, and multiplying it by E selects row k — which is exactly the lookup done here
    (tests check ``apply(params, k) == one_hot(k) @ E``).

    Ids outside the vocabulary never index another row (-1 is not the last row, as NumPy
    indexing would make it) and never give NaN:

    - concrete tokens (outside ``jit``) in [0, V) or equal to ``pad_id`` are accepted; any
      other value raises a ValueError naming it;
    - under ``jit`` / ``vmap`` the values cannot be checked: an id outside [0, V) gives the
      zero vector, like ``pad_id``, and no gradient reaches E from it.

    Args:
        vocab_size: V.
        features: D, the size of each embedding vector.
        pad_id: the padding id (e.g. -1 or 0): its tokens embed to the zero vector and add no
            gradient to E (PyTorch's ``padding_idx``). None: no padding id.
        init: initialiser of E (default N(0, 1)).

    Returns:
        A `Layer`: ``init(key) -> EmbeddingParams``; ``apply(params, tokens) -> (..., D)`` for
        int tokens (...) in [0, V) (or ``pad_id``).

    Example:
        >>> emb = embedding(65, 32, pad_id=-1)
        >>> x = emb.apply(emb.init(key), jnp.array([[3, 7, -1]]))   # (1, 3, 32); x[0, 2] = 0
    """
    V = check_positive("vocab_size", vocab_size)
    D = check_positive("features", features)
    if pad_id is not None and (isinstance(pad_id, bool) or not isinstance(pad_id, int)):
        raise ValueError(f"pad_id must be an int or None, got {pad_id=!r}")

    def init_fn(key) -> EmbeddingParams:
        return EmbeddingParams(E=init(key, (V, D), jnp.float32))  # (V, D)

    def apply(params: EmbeddingParams, tokens: Array) -> Array:
        tokens = jnp.asarray(tokens)
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"embedding needs integer tokens, got {tokens.dtype=}")
        check_ids("tokens", tokens, V, allowed=pad_id)
        keep = in_table(tokens, V)  # (...)
        if pad_id is not None:
            keep &= tokens != pad_id
        return lookup(params.E, tokens, keep)  # (..., D)

    return Layer(init_fn, apply)


class ReadoutParams(NamedTuple):
    """Attributes: V: output weights, (H, K); b: output bias, (K,)."""

    V: Array
    b: Array


def readout(vocab_size: int, *, init=jax.nn.initializers.lecun_normal()) -> Layer:
    r"""Softmax readout of the lecture: y_t = softmax(c_t V + b), returned as log-probabilities.

    Args:
        vocab_size: K, the number of classes.
        init: initialiser of V (b starts at zero).

    Returns:
        A `Layer`: ``init(key, input_size) -> ReadoutParams``; ``apply(params, h)`` maps
        (..., H) to log-probabilities (..., K) = log_softmax(h V + b).
    """
    K = check_positive("vocab_size", vocab_size)

    def init_fn(key, input_size: int) -> ReadoutParams:
        H = check_positive("input_size", input_size)
        return ReadoutParams(V=init(key, (H, K), jnp.float32), b=jnp.zeros((K,), jnp.float32))

    def apply(params: ReadoutParams, h: Array) -> Array:
        if h.shape[-1] != params.V.shape[0]:
            raise ValueError(
                f"readout got {h.shape[-1]} features (h.shape={h.shape}) but was built for "
                f"input_size={params.V.shape[0]}"
            )
        logits = h @ params.V  # (..., K)
        return jax.nn.log_softmax(logits + expand(params.b, logits), axis=-1)

    return Layer(init_fn, apply)


def output_size(layer: Any) -> int:
    """The number of output features of a cell or a sequence layer (its ``hidden_size``)."""
    size = getattr(layer, "hidden_size", None)
    if not isinstance(size, int):
        raise ValueError(
            f"a layer of a stack needs an int hidden_size (its output features); got "
            f"{type(layer).__name__} with hidden_size={size!r}"
        )
    return size


def run_layer(
    layer: Any, params: Any, xs: Array, carry: Any, key: Array | None, **options
) -> tuple[Any, Array]:
    """One cell (through `rnnjax.unroll`) or one sequence layer (its ``apply``) over xs.

    A cell is given its training form for ``key`` (`rnnjax.regularise.with_key`; the cell
    itself when it has no regularisation); a layer gets ``key=key``.
    """
    if isinstance(layer, Cell):
        return unroll(with_key(layer, key), params, xs, carry, **options)
    return layer.apply(params, xs, carry, key=key, **options)


class Stack(NamedTuple):
    """A deep RNN: layer l reads the outputs of layer l − 1.

    Attributes:
        init: ``(key, input_size) -> tuple of per-layer params``.
        initial_carry: ``(params, batch_shape=()) -> tuple of per-layer carries``.
        apply: ``(params, xs, carry=None, *, key=None, lengths=None, resets=None,
            **unroll_options) -> (carries, ys)``: runs each layer over the whole sequence in
            turn, so every layer's input projection stays hoisted out of its time loop.
        step: ``(params, carry, x_t, *, key=None) -> (carry, y_t)``: one timestep through all
            layers (for sampling; not for bidirectional layers, which read the whole sequence).
        cells: the layers, bottom first: cells or sequence layers (`bidirectional`, `stacked`).
        dropout: the dropout rate between layers.
        hidden_size: the output features of the top layer.
    """

    init: Callable[..., Any]
    initial_carry: Callable[..., Any]
    apply: Callable[..., tuple[Any, Array]]
    step: Callable[..., tuple[Any, Array]]
    cells: tuple[Any, ...]
    dropout: float
    hidden_size: int = 0


def _dropout(key: Array | None, rate: float, x: Array) -> Array:
    """Inverted dropout; identity when ``key`` is None (evaluation) or the rate is zero."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def stacked(cells: Sequence[Any], dropout: float = 0.0) -> Stack:
    """Stacks cells or sequence layers into a deep RNN (the lecture's "deep recurrent
    architectures").

    Args:
        cells: one per layer, bottom first: cells (e.g. ``[rj.lstm(256)] * 2``) or sequence
            layers with ``init(key, input_size)``, ``initial_carry(params, batch_shape)``,
            ``apply(params, xs, carry, *, key, **options)`` and ``hidden_size`` (e.g.
            ``[rj.bidirectional(rj.lstm(32))] * 2``, another `stacked`).
        dropout: rate of the dropout applied to each layer's outputs before the next layer
            (Zaremba et al. 2014: between layers only, never on the recurrent connection). It is
            active only when ``apply``/``step`` get an explicit PRNG ``key``, which also draws
            the masks of `rnnjax.regularised` cells (one key per layer).

    Returns:
        A `Stack`.
    """
    cells = tuple(cells)
    if not cells:
        raise ValueError("stacked needs at least one cell, got cells=()")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout=}")
    sizes = [output_size(c) for c in cells]

    def init(key, input_size: int) -> tuple:
        keys = jax.random.split(key, len(cells))
        params, size = [], input_size
        for cell, k, out in zip(cells, keys, sizes, strict=True):
            params.append(cell.init(k, size))
            size = out
        return tuple(params)

    def initial_carry(params, batch_shape=()) -> tuple:
        return tuple(c.initial_carry(p, batch_shape) for c, p in zip(cells, params, strict=True))

    def layer_keys(key):
        return [None] * len(cells) if key is None else list(jax.random.split(key, len(cells)))

    def own(k):  # the key of a layer's own regularisation (dropout uses k itself)
        return None if k is None else jax.random.fold_in(k, 1)

    def apply(params, xs, carry=None, *, key=None, **unroll_options):
        carry = (None,) * len(cells) if carry is None else carry
        finals, ys = [], xs
        for depth, (cell, p, c, k) in enumerate(
            zip(cells, params, carry, layer_keys(key), strict=True)
        ):
            if depth > 0:
                ys = _dropout(k, dropout, ys)
            final, ys = run_layer(cell, p, ys, c, own(k), **unroll_options)
            finals.append(final)
        return tuple(finals), ys

    def step(params, carry, x_t, *, key=None):
        new_carry, y = [], x_t
        for depth, (cell, p, c, k) in enumerate(
            zip(cells, params, carry, layer_keys(key), strict=True)
        ):
            if depth > 0:
                y = _dropout(k, dropout, y)
            if isinstance(cell, Cell):
                c, y = with_key(cell, own(k)).step(p, c, y)
            elif hasattr(cell, "step"):
                c, y = cell.step(p, c, y, key=own(k))
            else:
                raise ValueError(
                    f"layer {depth} ({type(cell).__name__}) reads the whole sequence and has no "
                    f"step; use apply"
                )
            new_carry.append(c)
        return tuple(new_carry), y

    return Stack(init, initial_carry, apply, step, cells, float(dropout), sizes[-1])


class BidirectionalParams(NamedTuple):
    """Attributes: forward, backward: the params of the two directions' cells."""

    forward: Any
    backward: Any


class Bidirectional(NamedTuple):
    """A bidirectional RNN (Schuster & Paliwal 1997).

    Attributes:
        init: ``(key, input_size) -> BidirectionalParams``.
        apply: ``(params, xs, carry=None, *, key=None, lengths=None, resets=None,
            **unroll_options) -> ((carry_fw, carry_bw), ys)``.
        merge: "concat" (ys has H_fw + H_bw features) or "sum".
        initial_carry: ``(params, batch_shape=()) -> (carry_fw, carry_bw)``.
        hidden_size: the output features (H_fw + H_bw, or H for "sum").
    """

    init: Callable[..., Any]
    apply: Callable[..., tuple[Any, Array]]
    merge: str
    initial_carry: Callable[..., Any] = lambda params, batch_shape=(): None
    hidden_size: int = 0


def bidirectional(
    forward_cell: Any, backward_cell: Any | None = None, merge: str = "concat"
) -> Bidirectional:
    r"""Reads the sequence both ways and merges the two outputs at every step.

    .. math:: y_t = [\overrightarrow{h}_t ; \overleftarrow{h}_t] \text{ (concat) or }
        \overrightarrow{h}_t + \overleftarrow{h}_t \text{ (sum)}

    where the backward direction starts at each sequence's own last valid step (``lengths``),
    so padding never leaks into the backward states. With ``resets`` (segment starts, e.g.
    the first token of each packed document) the forward direction restarts there and the
    backward one at the segment ends (`rnnjax.resets.segment_ends`), so no segment sees
    another in either direction.

    Args:
        forward_cell: the cell (or sequence layer, e.g. a `stacked`) reading x_1..x_T.
        backward_cell: the one reading x_T..x_1 (default: a second copy of forward_cell's
            family, with its own params).
        merge: "concat" or "sum" (sum needs equal hidden sizes).

    Returns:
        A `Bidirectional`.
    """
    backward_cell = forward_cell if backward_cell is None else backward_cell
    if merge not in ("concat", "sum"):
        raise ValueError(f"unknown {merge=}; choose 'concat' or 'sum'")
    H_f, H_b = output_size(forward_cell), output_size(backward_cell)
    if merge == "sum" and H_f != H_b:
        raise ValueError(
            f"merge='sum' needs equal hidden sizes, got forward_cell.hidden_size={H_f} and "
            f"backward_cell.hidden_size={H_b}"
        )

    def init(key, input_size: int) -> BidirectionalParams:
        k_f, k_b = jax.random.split(key)
        return BidirectionalParams(
            forward_cell.init(k_f, input_size), backward_cell.init(k_b, input_size)
        )

    def initial_carry(params: BidirectionalParams, batch_shape=()) -> tuple:
        return (
            forward_cell.initial_carry(params.forward, batch_shape),
            backward_cell.initial_carry(params.backward, batch_shape),
        )

    def apply(params: BidirectionalParams, xs, carry=None, *, key=None, **unroll_options):
        c_f, c_b = (None, None) if carry is None else carry
        k_f, k_b = (None, None) if key is None else jax.random.split(key)
        final_f, ys_f = run_layer(forward_cell, params.forward, xs, c_f, k_f, **unroll_options)
        unroll_options["reverse"] = not unroll_options.get("reverse", False)
        resets = unroll_options.get("resets")
        if resets is not None:
            time_axis = 0 if (unroll_options.get("time_major") or xs.ndim == 2) else 1
            unroll_options["resets"] = segment_ends(jnp.asarray(resets), time_axis)
        final_b, ys_b = run_layer(backward_cell, params.backward, xs, c_b, k_b, **unroll_options)
        if merge == "concat":
            ys = jnp.concatenate([ys_f, ys_b], axis=-1)  # (..., T, H_fw + H_bw)
        else:
            ys = ys_f + ys_b  # (..., T, H)
        return (final_f, final_b), ys

    return Bidirectional(init, apply, merge, initial_carry, H_f + H_b if merge == "concat" else H_f)


__all__ = [
    "Bidirectional",
    "BidirectionalParams",
    "EmbeddingParams",
    "Layer",
    "ReadoutParams",
    "Stack",
    "bidirectional",
    "embedding",
    "output_size",
    "readout",
    "run_layer",
    "stacked",
]
