"""Streaming: run a recurrent model chunk by chunk with its state carried.

For online inference (audio frames, tokens as they arrive) and for sequences too long to
hold in one call, a causal model can read its input in chunks, passing the final carry of one
chunk as the initial carry of the next; the outputs equal one `rnnjax.unroll` over the
concatenation::

    push = rj.streaming.streamer(rj.rnn("lstm", 128, num_layers=2), params, chunk_size=50)
    carry = None
    for chunk in chunks:                       # (B, ≤ 50, D) each; the last may be shorter
        carry, ys = push(carry, chunk)         # ys: (B, len(chunk), 256)

``push`` is jitted for one chunk shape: a shorter chunk is padded to ``chunk_size`` and run
with ``lengths`` (the carry stops at its last real step), so the last chunk of a stream does
not compile a second program. Bidirectional layers read the whole sequence and cannot stream:
they are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array, Cell, check_positive
from rnnjax.driver import unroll
from rnnjax.layers import Bidirectional


def is_causal(model: Any) -> bool:
    """Whether ``model`` reads its inputs in order only (no bidirectional layer inside)."""
    if isinstance(model, Bidirectional) or getattr(model, "bidirectional", False) is True:
        return False
    inner = getattr(model, "cells", None) or getattr(getattr(model, "stack", None), "cells", None)
    return all(is_causal(layer) for layer in inner or ())


def apply_model(model: Any, params: Any, xs: Array, carry: Any = None, **options):
    """``unroll`` for a cell, ``model.apply`` for a layer (`rnnjax.rnn`, `stacked`)."""
    if isinstance(model, Cell):
        return unroll(model, params, xs, carry, **options)
    return model.apply(params, xs, carry, **options)


def streamer(
    model: Any, params: Any, *, chunk_size: int, time_major: bool = False, **options
) -> Callable[[Any, Array], tuple[Any, Array]]:
    """A jitted ``push(carry, chunk) -> (carry, ys)`` for one chunk size.

    Args:
        model: a cell or a causal sequence layer (`rnnjax.rnn`, `rnnjax.stacked`).
        params: its params.
        chunk_size: C, the steps of a full chunk; shorter chunks are padded (no recompile).
        time_major: chunks are (C, B, D) instead of (B, C, D).
        **options: for `rnnjax.unroll` / ``apply`` (``backend``, ``unroll``, ...); not
            ``lengths`` or ``reverse`` (a stream is read forwards, one chunk at a time).

    Returns:
        ``push``: carry None at the start of a stream; chunk (B, c, D) with 1 ≤ c ≤ C (or
        (c, D) for one unbatched stream); returns the carry after the chunk and its outputs.

    Raises:
        ValueError: a bidirectional model, ``lengths`` / ``reverse`` in the options, a chunk
            longer than ``chunk_size`` or empty.
    """
    C = check_positive("chunk_size", chunk_size)
    if not is_causal(model):
        raise ValueError("a bidirectional layer reads the whole sequence and cannot stream")
    for name in ("lengths", "reverse", "resets"):
        if name in options:
            raise ValueError(f"streamer does not take {name}=; got {name}={options[name]!r}")

    @jax.jit
    def run(carry, chunk, n):  # chunk: C steps, of which the first n are real
        t_axis = 0 if (time_major or chunk.ndim == 2) else 1
        batch = chunk.shape[:t_axis] + chunk.shape[t_axis + 1 : -1]
        lengths = jnp.full(batch, n, jnp.int32) if batch else n
        return apply_model(
            model, params, chunk, carry, lengths=lengths, time_major=time_major, **options
        )

    def push(carry: Any, chunk: Array) -> tuple[Any, Array]:
        chunk = jnp.asarray(chunk)
        t_axis = 0 if (time_major or chunk.ndim == 2) else 1
        n = chunk.shape[t_axis]
        if not 1 <= n <= C:
            raise ValueError(f"a chunk must have 1..{C} steps, got {n} (chunk.shape={chunk.shape})")
        if carry is None:  # one trace for the whole stream: start from an explicit carry
            batch = chunk.shape[:t_axis] + chunk.shape[t_axis + 1 : -1]
            carry = model.initial_carry(params, batch)
        pad = [(0, 0)] * chunk.ndim
        pad[t_axis] = (0, C - n)
        carry, ys = run(carry, jnp.pad(chunk, pad), jnp.int32(n))
        return carry, jax.lax.slice_in_dim(ys, 0, n, axis=t_axis)

    return push


def run_in_chunks(
    model: Any,
    params: Any,
    xs: Array,
    chunk_size: int,
    carry: Any = None,
    *,
    time_major: bool = False,
    **options,
) -> tuple[Any, Array]:
    """One sequence read chunk by chunk: equals ``apply_model(model, params, xs, carry)``.

    Args:
        model, params: as `streamer`.
        xs: (B, T, D) (or (T, B, D) with ``time_major``, or (T, D)).
        chunk_size: steps per chunk (the last chunk may be shorter).
        carry: the initial carry (None: zeros).
        time_major: the layout of xs.
        **options: as `streamer`.

    Returns:
        ``(final_carry, ys)`` with ys in the layout of xs.
    """
    push = streamer(model, params, chunk_size=chunk_size, time_major=time_major, **options)
    t_axis = 0 if (time_major or xs.ndim == 2) else 1
    outs = []
    for start in range(0, xs.shape[t_axis], chunk_size):
        stop = min(start + chunk_size, xs.shape[t_axis])
        carry, ys = push(carry, jax.lax.slice_in_dim(xs, start, stop, axis=t_axis))
        outs.append(ys)
    return carry, jnp.concatenate(outs, axis=t_axis)


__all__ = ["apply_model", "is_causal", "run_in_chunks", "streamer"]
