"""Eager checks that a cell, its parameters, its carry and its inputs belong together.

Run at trace time only (shapes and structures, never values), so they cost nothing inside a
jitted loop. Every mismatch is a ValueError that names both sides: GRU params given to an
LSTM, ``lstm(32)`` params given to ``lstm(16)``, plain-LSTM params given to a peephole LSTM
(and the other way round), a carry of the wrong structure, shape or batch.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array, Cell, carry_dtype


def _describe(tree: Any) -> str:
    """``LSTMParams(U=(8, 128), W=(32, 128), b=(128,), p_i=None, ...)``-style summary."""
    if hasattr(tree, "_fields"):
        parts = [f"{f}={_describe(getattr(tree, f))}" for f in tree._fields]
        return f"{type(tree).__name__}({', '.join(parts)})"
    if isinstance(tree, tuple | list):
        return "(" + ", ".join(_describe(t) for t in tree) + ")"
    if tree is None:
        return "None"
    shape = getattr(tree, "shape", None)
    return str(tuple(shape)) if shape is not None else type(tree).__name__


@functools.lru_cache(maxsize=256)
def _expected_params_cached(cell: Cell, input_size: int) -> Any:
    return _expected_params(cell, input_size)


def _expected_params(cell: Cell, input_size: int) -> Any:
    try:
        return jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        # an initialiser that computes in numpy (e.g. an eigenvalue rescaling) cannot be
        # traced: run it once, eagerly even inside a caller's jit, and keep only the shapes
        with jax.ensure_compile_time_eval():
            params = cell.init(jax.random.key(0), input_size)
        return jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), params
        )


def expected_params(cell: Cell, input_size: int) -> Any:
    """Shape structs of ``cell.init(key, input_size)`` (cached when the cell is hashable)."""
    try:
        hash(cell)
    except TypeError:  # a user cell with an unhashable config: no cache
        return _expected_params(cell, input_size)
    return _expected_params_cached(cell, input_size)


def input_size_of(params: Any) -> int | None:
    """D read from the parameters (the rows of ``U``), or None where there is no U."""
    U = getattr(params, "U", None)
    return None if U is None or not hasattr(U, "shape") else int(U.shape[0])


def check_params(cell: Cell, params: Any, input_size: int | None = None) -> None:
    """Raises ValueError unless ``params`` has the structure and shapes ``cell.init`` gives.

    Args:
        cell: the cell.
        params: the parameters to check.
        input_size: D; None reads it from ``params.U``.
    """
    D = input_size if input_size is not None else input_size_of(params)
    if D is None:
        return  # a user cell without U: nothing to compare against
    expected = expected_params(cell, D)
    want, got = jax.tree.structure(expected), jax.tree.structure(params)
    shapes_ok = str(want) == str(got) and all(
        tuple(e.shape) == tuple(jnp.shape(p))
        for e, p in zip(jax.tree.leaves(expected), jax.tree.leaves(params), strict=True)
    )
    if not shapes_ok:
        raise ValueError(
            f"params do not fit the {cell.name} cell {cell.config}: it expects "
            f"{_describe(expected)} for input_size={D}, got {_describe(params)}"
        )


def check_carry(
    cell: Cell, params: Any, carry: Any, batch_shape: tuple[int, ...], dtype: Any = None
) -> Any:
    """The initial carry: ``cell.initial_carry`` when None, else the given one checked.

    Args:
        cell, params: the cell and its (checked) parameters.
        carry: None or a carry to check against the cell's own structure and shapes.
        batch_shape: the inputs' batch shape.
        dtype: the carry dtype (`rnnjax.cells.base.carry_dtype`); floating leaves are cast
            to it. None leaves dtypes alone.

    Returns:
        The carry, leaves (*batch_shape, ·).
    """
    expected = jax.eval_shape(lambda: cell.initial_carry(params, batch_shape))
    if carry is None:
        carry = cell.initial_carry(params, batch_shape)
    else:
        want, got = jax.tree.structure(expected), jax.tree.structure(carry)
        if str(want) != str(got):
            raise ValueError(
                f"carry has structure {_describe(carry)} but the {cell.name} cell expects "
                f"{_describe(expected)} for batch shape {batch_shape}"
            )
        for e, c in zip(jax.tree.leaves(expected), jax.tree.leaves(carry), strict=True):
            if tuple(e.shape) != tuple(jnp.shape(c)):
                raise ValueError(
                    f"carry leaf has shape {tuple(jnp.shape(c))} but the {cell.name} cell "
                    f"expects {tuple(e.shape)} for batch shape {batch_shape} "
                    f"(carry {_describe(carry)})"
                )
    if dtype is None:
        return carry
    return jax.tree.map(
        lambda leaf: leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf,
        carry,
    )


def check_features(params: Any, x: Any, what: str = "xs") -> Array:
    """Float dtype and feature size of an input array against the parameters."""
    x = jnp.asarray(x) if not isinstance(x, jax.Array) else x
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{what} must be a float array but has {x.dtype=}; embed integer tokens first "
            f"(rnnjax.layers.embedding) or cast with {what}.astype(jnp.float32)"
        )
    D = input_size_of(params)
    if D is not None and (x.ndim == 0 or x.shape[-1] != D):
        raise ValueError(
            f"{what} has {x.shape[-1] if x.ndim else 0} features ({what}.shape={x.shape}) "
            f"but the cell's params were built for input_size={D}"
        )
    return x


def check_step(cell: Cell, params: Any, carry: Any, x_t: Any) -> tuple[Any, Array]:
    """The checks of ``cell.step``: params, x_t (…, D) and the carry for x_t's batch shape."""
    x_t = check_features(params, x_t, "x_t")
    check_params(cell, params, x_t.shape[-1])
    carry = check_carry(cell, params, carry, tuple(x_t.shape[:-1]))
    return carry, x_t


__all__ = [
    "carry_dtype",
    "check_carry",
    "check_features",
    "check_params",
    "check_step",
    "expected_params",
    "input_size_of",
]
