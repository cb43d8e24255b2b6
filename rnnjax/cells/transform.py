"""What the cell transformations share: a structure with one more gate block for per-step data.

A transformation that needs a per-row, per-step value inside the loop (a reset flag, zoneout
masks) cannot pass it as a unit parameter (those are (H,) vectors, the same for every row);
the one per-row, per-step input every backend streams through its loop is the projected input
px_t. So the transformed structure has K + 1 gate blocks: the first K are the cell's own, the
last carries the data in px (``extra``), and the recurrent matrix gets H zero columns so that
its block of hw = h_{t-1} [W 0] is exactly zero. The extra block is *tied* (it enters only
through px + hw = px), so the fused backend saves it once. The cost is H more columns in the
recurrent matmul (a quarter more for the LSTM, a third for the GRU) and, for ``"pallas"``,
gate blocks rounded up to a power of two (an LSTM's 5 blocks are held as 8).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array, Cell, Structure, expand, split_blocks


@dataclasses.dataclass(frozen=True)
class TransformedConfig:
    """Config of a transformed cell: the transformation's name and options, and the cell.

    Its type is not the inner cell's config type, so the backends that specialise on a
    config (``fused_cpu``, ``pallas_verified``) do not mistake the transformed cell for the
    plain one.
    """

    transform: str
    cell: Cell
    options: tuple = ()
    training: bool = False


def zero_columns(W: Array | None, H: int) -> Array | None:
    """[W 0]: W (R, K·H) with H zero columns appended, (R, (K+1)·H); None stays None."""
    if W is None:
        return None
    return jnp.concatenate([W, jnp.zeros((W.shape[0], H), W.dtype)], axis=-1)


def split_extra(blocks: tuple[Array, ...] | None) -> tuple[tuple[Array, ...] | None, Any]:
    """(the cell's K blocks, the extra block) from K + 1 blocks (None stays None)."""
    if blocks is None:
        return None, None
    return tuple(blocks[:-1]), blocks[-1]


def split_px(blocks: tuple[Array, ...]) -> tuple[tuple[Array, ...], Array]:
    """(the cell's K blocks of px, the extra block) from K + 1 blocks."""
    return tuple(blocks[:-1]), blocks[-1]


def broadcast_block(values: Array, H: int, dtype: Any) -> Array:
    """(…,) per-row values -> (…, H): the same value in every unit of the extra block."""
    return jnp.broadcast_to(values[..., None], (*values.shape, H)).astype(dtype)


def where_leaves(flag: Array, replacement: tuple[Array, ...], carry: Any) -> Any:
    """Each carry leaf replaced by the (H,) vector of ``replacement`` where ``flag`` holds."""
    leaves, treedef = jax.tree.flatten(carry)
    new = [
        jnp.where(flag, expand(r, c).astype(c.dtype), c)
        for r, c in zip(replacement, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, new)


def extended_structure(
    s: Structure,
    H: int,
    *,
    pointwise: Callable,
    unit_params: Callable,
    recurrent_weights: Callable | None = None,
    tied: tuple[bool, ...] | None = None,
    linear_coefficients: Callable | None = None,
) -> Structure:
    """``s`` with one more (tied) gate block and H zero columns in its recurrent matrix.

    Args:
        s: the cell's structure.
        H: the hidden size.
        pointwise: the new pointwise, which gets K + 1 blocks of px and hw.
        unit_params: the new ``params -> tuple`` of (H,) vectors.
        recurrent_weights: the cell's W before the zero columns (default ``s``'s).
        tied: the flags of the cell's K blocks (default ``s.tied``); the extra one is tied.
        linear_coefficients: the new coefficients for cells linear in the carry (else None).
    """
    inner_w = s.recurrent_weights if recurrent_weights is None else recurrent_weights
    return Structure(
        gates=s.gates + 1,
        recurrent_weights=lambda params: zero_columns(inner_w(params), H),
        unit_params=unit_params,
        pointwise=pointwise,
        tied=(*(s.tied if tied is None else tied), True),
        elementwise=s.elementwise,
        compute_dtype=s.compute_dtype,
        linear_coefficients=linear_coefficients,
        memory_gate=s.memory_gate,
    )


def extended_project(cell: Cell, fill: Callable[[Array], Array]) -> Callable:
    """``project`` of the extended cell: the cell's px and an extra block ``fill(px)``."""

    def project(params: Any, xs: Array) -> Array:
        px = cell.project(params, xs)  # (…, K·H)
        return jnp.concatenate([px, fill(px)], axis=-1)  # (…, (K+1)·H)

    return project


__all__ = [
    "TransformedConfig",
    "broadcast_block",
    "extended_project",
    "extended_structure",
    "split_blocks",
    "split_extra",
    "split_px",
    "where_leaves",
    "zero_columns",
]
