r"""Token inputs: a first layer that reads token ids through an embedding table.

``unroll(cell, params, Tokens(E, ids))`` computes ``unroll(cell, params, E[ids])``: the
embedding and the cell's input projection in one place, so that the projection can be taken
where it is cheaper. A cell's projection maps each input on its own, x_t ↦ x_t U + b, so for
token inputs x_t = E[k_t] (a row of the (V, D) table)

    px_t = E[k_t] U + b = (E U + b)[k_t]          (the projected table, gathered)

When the vocabulary is smaller than the number of tokens projected at once (V < T·B, e.g. 103
characters against 32 × 100 tokens), the right-hand side replaces the (T·B, D) × (D, G)
product by a (V, D) × (D, G) one, and in the backward pass the two (T·B)-row products (dU =
xᵀ d px and d x = d px Uᵀ) by a scatter-add of d px into V rows and two V-row products.
Otherwise the rows are gathered first and projected (`project_tokens` chooses; the two forms
are equal to float rounding, and ``tests/test_tokens.py`` checks both against the float path).

The fold needs a projection that reads each input alone; a `rnnjax.regularised` cell in
training draws one input mask per sequence, so its tokens are always gathered first.

Ids outside [0, V) embed to the zero vector (px = b): concrete ids raise a ValueError naming
the value, traced ones (under ``jit``) cannot be checked — the convention of
`rnnjax.layers.embedding`, which looks rows up with the same `lookup`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from rnnjax._ids import check_ids
from rnnjax.cells import checks
from rnnjax.cells.base import Array, Cell
from rnnjax.cells.transform import TransformedConfig


class Tokens(NamedTuple):
    """Token ids with the table that embeds them, as an input of `rnnjax.unroll`.

    Attributes:
        table: the embedding table E, float (V, D); row k is the vector of token k.
        ids: int token ids in the layout of unroll's xs without the feature axis: (B, T)
            batch-first, (T, B) with ``time_major``, or (T,) for one sequence.
    """

    table: Array
    ids: Array


def lookup(table: Array, ids: Array, keep: Array) -> Array:
    """Rows of ``table`` (V, D) at ``ids`` (...), the zero vector where ``keep`` is false."""
    rows = jnp.take(table, ids, axis=0, mode="clip")  # (..., D)
    return jnp.where(keep[..., None], rows, jnp.zeros((), rows.dtype))


def in_table(ids: Array, V: int) -> Array:
    """Bool (...): which ids index a row of a table of V rows."""
    return (ids >= 0) & (ids < V)


def check_tokens(params: Any, tokens: Tokens) -> Tokens:
    """Checks the table (float (V, D), D the cell's input size) and the ids (int, rank 1 or
    2, concrete ones within [0, V))."""
    table = checks.check_features(params, tokens.table, "Tokens.table")
    if table.ndim != 2:
        raise ValueError(f"Tokens.table must be (V, D), got {table.shape=}")
    ids = jnp.asarray(tokens.ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"Tokens.ids must be integers, got {ids.dtype=}")
    if ids.ndim not in (1, 2):
        raise ValueError(
            f"Tokens.ids must be (B, T), (T, B) with time_major, or (T,); got {ids.shape=}"
        )
    check_ids("tokens", ids, table.shape[0])
    return Tokens(table, ids)


def projects_each_input_alone(cell: Cell) -> bool:
    """Whether ``cell.project`` maps each x_t on its own (any cell but a transformed one in
    training, e.g. a `rnnjax.regularised` cell drawing one input mask per sequence)."""
    config = cell.config
    return not (isinstance(config, TransformedConfig) and config.training)


def project_tokens(cell: Cell, params: Any, table: Array, ids: Array) -> Array:
    """px (..., G) = cell.project(params, E[ids]) for ids (...), E = ``table`` (V, D).

    With V < ids.size (and a projection of each input alone) the table is projected first and
    its rows gathered: one more row, the projection of the zero vector, serves ids outside
    the table.
    """
    V, D = table.shape
    if ids.size > V and projects_each_input_alone(cell):
        padded = jnp.concatenate([table, jnp.zeros((1, D), table.dtype)])  # (V + 1, D)
        projected = cell.project(params, padded)  # (V + 1, G); row V = project(0)
        rows = jnp.where(in_table(ids, V), ids, V)  # (...)
        return jnp.take(projected, rows, axis=0, mode="clip")  # (..., G)
    return cell.project(params, lookup(table, ids, in_table(ids, V)))  # (..., G)


__all__ = [
    "Tokens",
    "check_tokens",
    "in_table",
    "lookup",
    "project_tokens",
    "projects_each_input_alone",
]
