"""Checks of integer ids (tokens, class targets) against the size of the table they index.

Concrete ids are checked eagerly and a bad one raises a ValueError naming it. Under ``jit``
(or ``vmap``) the values are tracers and cannot be read: the caller then decides what an id
outside the table does and documents it (`rnnjax.layers.embedding`: a zero vector;
`rnnjax.losses.sequence_cross_entropy`: NaN, so that the train step sees a non-finite loss).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def concrete(x: Any) -> np.ndarray | None:
    """``x`` as a NumPy array, or None when it is traced (under jit / vmap / grad)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_ids(
    name: str, ids: Any, size: int, *, allowed: int | None = None, where: Any = None
) -> None:
    """Raises ValueError if concrete ``ids`` hold a value outside [0, size).

    Args:
        name: what the ids are, for the message ("tokens", "targets").
        ids: int array of any shape.
        size: the number of rows / classes.
        allowed: one extra value that is accepted anywhere (a padding id such as -1).
        where: optional mask broadcastable to ``ids``; only entries where it is non-zero are
            checked (e.g. the mask of a loss: padded targets may hold anything).
    """
    values = concrete(ids)
    if values is None or values.size == 0:
        return
    bad = (values < 0) | (values >= size)
    if allowed is not None:
        bad &= values != allowed
    if where is not None:
        mask = concrete(where)
        if mask is not None:
            bad &= np.broadcast_to(mask != 0, values.shape)
    if not bad.any():
        return
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    shown = np.unique(values[bad])
    listed = ", ".join(str(v) for v in shown[:6]) + (", ..." if shown.size > 6 else "")
    extra = f" or {allowed}" if allowed is not None else ""
    raise ValueError(
        f"{name} must be in [0, {size}){extra}, but {int(bad.sum())} of them are not "
        f"(values {listed}; the first at index {first} of {name}.shape={values.shape})"
    )


__all__ = ["check_ids", "concrete"]
