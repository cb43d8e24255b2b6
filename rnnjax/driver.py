"""`unroll`: the one time loop of rnnjax.

The driver owns everything about a sequence that is not the cell: layout (batch- or
time-major), lengths, reversal, the hoisted input projection and the choice of backend.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.cells import checks
from rnnjax.cells.base import Array, Cell, carry_dtype
from rnnjax.kernels import get_backend
from rnnjax.kernels.base import forward_mode_of, problem_of
from rnnjax.kernels.registry import resolve
from rnnjax.resets import check_resets, reset_block, resettable
from rnnjax.tokens import Tokens, check_tokens, project_tokens


def unroll(
    cell: Cell,
    params: Any,
    xs: Array,
    carry: Any = None,
    *,
    lengths: Array | None = None,
    resets: Array | None = None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int = 1,
    remat: bool = False,
    chunk: int | None = None,
    backend: str = "auto",
) -> tuple[Any, Array]:
    r"""Runs ``cell`` over a sequence: c_t = h(x_t, c_{t-1}; θ) for t = 1..T.

    The input projection ``cell.project`` runs once over the whole sequence (one matmul of
    (T·B, D) by (D, G)); only ``cell.recur`` runs inside the loop.

    Backends (how the loop runs; never what it computes — every one equals ``"scan"``,
    outputs and gradients):

    - ``"auto"`` (default): the fastest backend whose support predicate accepts the cell,
      the shape, the dtype, the device and the autodiff mode (`rnnjax.kernels.auto`); it
      changes the speed, never the result beyond float rounding;
    - ``"scan"``: `lax.scan` over ``cell.recur``, any cell; the readable reference, and the
      one backend that also supports forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``,
      ``jax.hessian``): the others are ``custom_vjp`` functions, reverse mode only, and
      refuse forward mode with that reason, so ``"auto"`` picks ``"scan"`` there — except
      under ``jax.linearize`` or a ``jax.jit`` placed between the transformation and this
      call, which hide the tangents (`rnnjax.kernels.base.forward_mode_of`): pass
      ``backend="scan"`` then;
    - ``"fused"``: one custom_vjp over the loop, derived from the cell's structured form;
    - ``"fused_cpu"``: the plain LSTM / GRU loop as one C++ call (CPU; threaded at large batch);
    - ``"associative"``: parallel prefix scan for cells linear in the carry;
    - ``"pallas"``: persistent GPU kernel with W on chip (interpret mode on CPU: slow),
      derived from the cell; ``"pallas_verified"``: its GPU-verified per-family form.

    An explicit backend that cannot run the cell raises a ValueError with the reason.

    Dtypes: carries and outputs have dtype ``jnp.result_type(xs, *float params)``
    (`rnnjax.cells.base.carry_dtype`): float32 by default, float64 for float64 inputs
    under ``jax_enable_x64``, bfloat16 for bfloat16 inputs and params; a given carry is
    cast to it.

    Padding: with ``lengths`` the padded steps are masked *before* the loop (their inputs
    are replaced by zeros), so NaN or inf in padding changes neither the outputs nor any
    gradient.

    Args:
        cell: a `Cell` (e.g. ``rj.lstm(64)``).
        params: the cell's parameters (checked against ``cell.init``'s structure and shapes).
        xs: float inputs, (B, T, D) batch-first (default), (T, B, D) with ``time_major``, or
            (T, D) for one unbatched sequence; or token ids with their embedding table,
            ``rnnjax.tokens.Tokens(E (V, D), ids)`` with ids (B, T), (T, B) or (T,), which
            runs as xs = E[ids] with the input projection folded into the table when
            V < T·B (`rnnjax.tokens`).
        carry: initial carry; None means ``cell.initial_carry`` (zeros).
        lengths: optional int (B,) (or a scalar for one sequence): the number of valid steps.
            Outputs at t >= length are zero and the final carry is each sequence's carry at
            its last valid step. Concrete lengths outside [0, T] raise; under ``jit`` the
            values cannot be checked, and a length above T acts as T, one below 0 as 0.
        resets: optional bool (B, T) ((T, B) with ``time_major``, (T,) for one sequence):
            where true, the carry entering the step that reads x_t is the cell's initial carry
            ``cell.initial_carry(params)`` (not the ``carry`` argument), and no gradient
            crosses that step (`rnnjax.resets`). With ``reverse`` the flags keep their input
            positions: the step reading x_t still restarts (`rnnjax.layers.bidirectional`
            turns segment starts into the backward direction's restarts).
        reverse: run from the end of each sequence to its start. With ``lengths`` each sequence
            is reversed within its own length (padding stays at the end); outputs are returned
            in input order either way, so y_t is the state after reading x_T..x_t.
        time_major: xs and ys are (T, B, ·) instead of (B, T, ·).
        unroll: loop steps per iteration (trades compile time for per-step overhead).
        remat: store only the carries for the backward pass and recompute each step
            (memory O(T·carry) instead of O(T·activations)); backends that already store
            only compact residuals refuse it, and ``"auto"`` then picks ``"scan"``. With
            ``chunk``, every backend accepts it: the carry is stored at chunk boundaries and
            each chunk's forward pass is recomputed in the backward pass (one extra forward).
        chunk: run the sequence in chunks of this many steps (the last one may be shorter):
            the input projection x_t U, the loop and their gradients run chunk by chunk
            (one `lax.scan` over chunks), so the projected inputs and their gradient, (T, B,
            G) arrays otherwise, are held one chunk at a time. Same results; less memory
            for long sequences (`run_in_chunks`).
        backend: one of the names above.

    Returns:
        ``(final_carry, ys)``; ys has the layout of xs with H features.

    Raises:
        ValueError: for a wrong rank, dtype or feature size of xs, T = 0, concrete lengths out
            of [0, T] or of the wrong shape, resets of the wrong shape or dtype, params or a
            carry that do not match the cell, an unknown backend, or a backend that does not
            support the cell (with the reason).

    Example:
        >>> cell = rj.lstm(32)
        >>> params = cell.init(jax.random.key(0), input_size=8)
        >>> carry, ys = rj.unroll(cell, params, jnp.ones((4, 10, 8)))
        >>> ys.shape
        (4, 10, 32)
    """
    run = get_backend(backend)
    table = None
    if isinstance(xs, Tokens):  # from here on xs holds the ids: (B, T), (T, B) or (T,)
        table, xs = check_tokens(params, xs)
        rank, D, in_dtype = xs.ndim + 1, table.shape[-1], table.dtype
    else:
        xs = check_inputs(params, xs)
        rank, D, in_dtype = xs.ndim, xs.shape[-1], xs.dtype
    checks.check_params(cell, params, D)
    one_sequence = rank == 2
    batch_shape = () if one_sequence else (xs.shape[1],) if time_major else (xs.shape[0],)
    T = xs.shape[0] if (time_major or one_sequence) else xs.shape[1]
    if T == 0:
        raise ValueError(f"xs has no time steps: {xs.shape=} gives T=0")
    if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be a positive int, got {unroll=}")
    if lengths is not None:
        lengths = check_lengths(lengths, batch_shape, T)
    dtype = carry_dtype(params, in_dtype)
    carry = check_carry(cell, params, carry, batch_shape, dtype)

    xs_tm = xs if (time_major or one_sequence) else jnp.swapaxes(xs, 0, 1)  # (T, *batch, D)
    if lengths is not None:  # padding never reaches the loop: NaN there stays harmless
        valid = jnp.arange(T).reshape((T,) + (1,) * lengths.ndim) < lengths[None]  # (T, *b)
        if table is None:
            xs_tm = jnp.where(valid[..., None], xs_tm, jnp.zeros_like(xs_tm))
        else:  # an id outside the table embeds to the zero vector
            xs_tm = jnp.where(valid, xs_tm, -1)  # (T, *batch)
    if reverse:
        xs_tm = reverse_within_lengths(xs_tm, lengths)
    flags = None
    if resets is not None:  # the flag rides in px as one more gate block (rnnjax.resets)
        flags = check_resets(resets, batch_shape, T, time_major)  # (T, *batch)
        if reverse:
            flags = reverse_within_lengths(flags, lengths)
    project = projection(cell, params, table)
    if resets is not None:
        cell = resettable(cell)
    # The backend is chosen here, from the arrays the caller passed (inside a chunked loop
    # they are the loop's own tracers, which would hide e.g. forward-mode autodiff).
    forward_mode = forward_mode_of((params, table, xs_tm, carry))
    steps = T if chunk is None else check_chunk(chunk, T)
    x_steps = jax.ShapeDtypeStruct((steps, *xs_tm.shape[1:]), xs_tm.dtype)
    f_steps = (
        None if flags is None else jax.ShapeDtypeStruct((steps, *flags.shape[1:]), flags.dtype)
    )
    px_shape = jax.eval_shape(project, x_steps, f_steps)  # (steps, *batch, G)
    backend_remat = remat and chunk is None  # with chunks, remat checkpoints whole chunks
    problem = problem_of(cell, params, px_shape, carry, backend_remat, forward_mode)
    run, unroll = resolve(run, cell, problem, unroll)
    support = run.supports(cell, problem)
    if not support:
        raise ValueError(support.reason)
    if chunk is None:
        px = project(xs_tm, flags)  # (T, *batch, G)
        final_carry, ys = run.run(cell, params, px, carry, lengths, unroll=unroll, remat=remat)
    else:
        final_carry, ys = run_in_chunks(
            run, cell, params, project, xs_tm, flags, carry, lengths, steps, unroll, remat
        )
    if reverse:
        ys = reverse_within_lengths(ys, lengths)  # (T, *batch, H), back in input order
    if not (time_major or one_sequence):
        ys = jnp.swapaxes(ys, 0, 1)  # (B, T, H)
    return final_carry, ys


def projection(cell: Cell, params: Any, table: Array | None = None):
    """``(xs (T, *batch, D), flags (T, *batch) or None) -> px (T, *batch, G)``: the cell's
    input projection, plus the reset flags, when given, as one more gate block
    (`rnnjax.resets`). With an embedding ``table`` (V, D), xs are token ids (T, *batch)
    (`rnnjax.tokens.project_tokens`)."""
    H = cell.hidden_size

    def project(xs_tm: Array, flags: Array | None) -> Array:
        if table is None:
            px = cell.project(params, xs_tm)  # (T, *batch, G)
        else:
            px = project_tokens(cell, params, table, xs_tm)  # (T, *batch, G)
        if flags is not None:
            px = jnp.concatenate([px, reset_block(flags, H, px.dtype)], axis=-1)
        return px

    return project


def check_chunk(chunk: Any, T: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int (steps per chunk), got {chunk=}")
    return min(chunk, T)


def run_in_chunks(run, cell, params, project, xs_tm, flags, carry, lengths, chunk, unroll, remat):
    r"""The loop over T steps as a `lax.scan` over chunks of ``chunk`` steps.

    Each chunk projects its own inputs and runs the backend on them, so px = x U + b and,
    under differentiation, d px exist for one chunk at a time: the weight gradients
    ``dU = Σ_chunks x_cᵀ d px_c`` (and the backend's ``dW``) are summed chunk by chunk by the
    scan's transpose. With ``remat`` each chunk is a `jax.checkpoint`: the backward pass
    recomputes the chunk's forward from the carry that entered it. The T mod chunk steps
    left over run as one more, shorter call. Lengths are shifted into each chunk's frame:
    a chunk starting at step s sees ``clip(lengths − s, 0, chunk)``.

    Args:
        run: the backend. cell, params, carry: as `unroll`.
        project: `projection`'s function.
        xs_tm: (T, *batch, D), already masked and reversed. flags: (T, *batch) or None.
        lengths: None or int (*batch,). chunk: steps per chunk, 1 <= chunk <= T.

    Returns:
        ``(final_carry, ys (T, *batch, H))``.
    """
    T = xs_tm.shape[0]
    n, rest = divmod(T, chunk)

    # What the projection's derivative reads (the chunk's x, laid out for the weight-gradient
    # matmul) is recomputed from x in the backward pass instead of being stacked per chunk.
    project_chunk = project if remat else jax.checkpoint(project)

    def piece(carry, inputs, steps):
        x, f, start = inputs  # (steps, *batch, D), (steps, *batch) or None, ()
        lens = None if lengths is None else jnp.clip(lengths - start, 0, steps)  # (*batch,)
        return run.run(cell, params, project_chunk(x, f), carry, lens, unroll=unroll, remat=False)

    if remat:
        piece = jax.checkpoint(piece, static_argnums=(2,))

    def body(carry, inputs):
        return piece(carry, inputs, chunk)

    def chunks(a: Array | None) -> Array | None:  # (n·chunk, ...) -> (n, chunk, ...)
        return None if a is None else a[: n * chunk].reshape((n, chunk, *a.shape[1:]))

    starts = jnp.arange(n) * chunk  # (n,)
    carry, ys = jax.lax.scan(body, carry, (chunks(xs_tm), chunks(flags), starts))
    ys = ys.reshape((n * chunk, *ys.shape[2:]))  # (n·chunk, *batch, H)
    if rest:
        tail = (xs_tm[n * chunk :], None if flags is None else flags[n * chunk :], n * chunk)
        carry, ys_tail = piece(carry, tail, rest)
        ys = jnp.concatenate([ys, ys_tail], axis=0)  # (T, *batch, H)
    return carry, ys


def reverse_within_lengths(xs: Array, lengths: Array | None) -> Array:
    """Reverses each sequence of a time-major array within its own length.

    Args:
        xs: (T, *batch, *F), any trailing feature axes (none for e.g. token ids).
        lengths: None (reverse all T steps) or int (*batch,).

    Returns:
        (T, *batch, *F) with ``out[t] = xs[length - 1 - t]`` for t < length and ``out[t] =
        xs[t]`` (padding stays in place) otherwise. The map is its own inverse.
    """
    if lengths is None:
        return jnp.flip(xs, axis=0)
    T = xs.shape[0]
    t = jnp.arange(T).reshape((T,) + (1,) * lengths.ndim)  # (T, *1)
    length = lengths[None]  # (1, *batch)
    source = jnp.where(t < length, length - 1 - t, t)  # (T, *batch)
    source = source.reshape(source.shape + (1,) * (xs.ndim - source.ndim))  # (T, *batch, *1)
    return jnp.take_along_axis(xs, source, axis=0)


def check_inputs(params: Any, xs: Any) -> Array:
    """Checks rank, dtype and feature size of xs against the cell's parameters."""
    xs = jnp.asarray(xs) if not isinstance(xs, jax.Array) else xs
    if xs.ndim not in (2, 3):
        raise ValueError(
            f"xs must be (B, T, D), (T, B, D) with time_major, or (T, D); got rank "
            f"{xs.ndim} with {xs.shape=}"
        )
    return checks.check_features(params, xs, "xs")


def check_lengths(lengths: Any, batch_shape: tuple[int, ...], T: int) -> Array:
    """Checks that lengths is int with the batch shape and (when concrete) within [0, T]."""
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be integers, got {lengths.dtype=}")
    if lengths.shape != batch_shape:
        raise ValueError(f"lengths must have the batch shape {batch_shape}, got {lengths.shape=}")
    try:
        values = np.asarray(lengths)
    except jax.errors.TracerArrayConversionError:
        return lengths  # traced under jit: the values cannot be checked here
    if values.size and (values.min() < 0 or values.max() > T):
        raise ValueError(
            f"lengths must lie in [0, T={T}], got min={values.min()} max={values.max()} "
            f"(lengths={values.tolist()})"
        )
    return lengths


def check_carry(
    cell: Cell, params: Any, carry: Any, batch_shape: tuple[int, ...], dtype: Any = None
) -> Any:
    """Returns the initial carry, checking a given one against the cell's own structure."""
    return checks.check_carry(cell, params, carry, batch_shape, dtype)
