"""The helpers of `diagnose` for ragged batches (``lengths``) and non-finite inputs.

A ragged batch is measured by wrapping the cell (`ragged`): its inputs carry one more
feature, 1 at valid steps and 0 at padding, and at a padded step the carry is held, so that
∂c_t/∂c_{t-1} = I there. Every analysis tool then measures each example over its own steps,
without knowing about lengths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._ids import concrete
from rnnjax.analysis.pascanu import GateStats, PascanuBound, pascanu_bound
from rnnjax.cells.base import Array, Cell, make_cell


def valid_steps(xs: Array, lengths: Any) -> np.ndarray:
    """The (B, T) mask of valid steps from concrete lengths in [1, T] (ValueError if not)."""
    if xs.ndim != 3:
        raise ValueError(
            f"lengths needs batched xs (B, T, D), got {xs.shape=}; for one sequence pass "
            f"xs[:length] instead"
        )
    B, T = xs.shape[0], xs.shape[1]
    values = concrete(lengths)
    if values is None:
        raise ValueError("diagnose needs concrete lengths (it is not jit-compatible)")
    if not np.issubdtype(values.dtype, np.integer) or values.shape != (B,):
        raise ValueError(
            f"lengths must be ints of shape (B,) = ({B},), got {values.dtype} {values.shape}"
        )
    if values.min() < 1 or values.max() > T:
        raise ValueError(
            f"lengths must be in [1, T] = [1, {T}], got min {values.min()} and max {values.max()}"
        )
    return np.arange(T)[None, :] < values[:, None]


def non_finite(params: Any, xs: Array, carry: Any, valid: np.ndarray | None) -> str | None:
    """Where NaN / inf sit in the inputs (valid steps only), params or carry; None if nowhere."""
    bad_xs = ~np.isfinite(np.asarray(xs))  # (B, T, D) or (T, D)
    if valid is not None:
        bad_xs &= valid[..., None]
    found = [(int(bad_xs.sum()), "xs")]
    for name, tree in (("params", params), ("the carry", carry)):
        leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]
        found.append(
            (sum(int((~np.isfinite(a)).sum()) for a in leaves if a.dtype.kind in "fc"), name)
        )
    parts = [
        f"{where} hold{'s' if where != 'params' else ''} {n} NaN/inf values"
        for n, where in found
        if n
    ]
    return ", ".join(parts) or None


class RaggedParams(NamedTuple):
    """Params of `_ragged` (the wrapped cell's own params)."""

    inner: Any


def ragged(cell: Cell) -> Cell:
    """``cell`` reading one more input feature, 1 at valid steps and 0 at padding.

    At a padded step the carry is held (c_t = c_{t-1}, so ∂c_t/∂c_{t-1} = I) and the output
    is 0: every analysis tool then measures each example over its own steps.
    """

    def init(key, input_size: int) -> RaggedParams:
        return RaggedParams(cell.init(key, input_size - 1))

    def initial_carry(params: RaggedParams, batch_shape=()):
        return cell.initial_carry(params.inner, batch_shape)

    def project(params: RaggedParams, xs: Array) -> Array:
        px = cell.project(params.inner, xs[..., :-1])  # (..., G)
        return jnp.concatenate([px, xs[..., -1:].astype(px.dtype)], axis=-1)  # (..., G+1)

    def recur(params: RaggedParams, carry, px_t: Array):
        new, y = cell.recur(params.inner, carry, px_t[..., :-1])
        keep = px_t[..., -1:] > 0.5  # (..., 1)
        held = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, carry)
        return held, jnp.where(keep, y, jnp.zeros((), y.dtype))

    return make_cell(
        name=f"{cell.name}[lengths]",  # not a family name: no family-specific fast path
        hidden_size=cell.hidden_size,
        config=cell.config,
        init=init,
        initial_carry=initial_carry,
        project=project,
        recur=recur,
    )


def masked_step_loss(loss_fn: Callable, valid: Array) -> Callable:
    """``(y_t, t) -> L_t`` of ``loss_fn`` with the outputs of padded examples set to 0."""

    def step_loss(y_t: Array, t: Array) -> Array:
        return loss_fn(jnp.where(valid[:, t, None], y_t, jnp.zeros((), y_t.dtype)), t)

    return step_loss


def ragged_bound(cell: Cell, params: Any, xs: Array, carry: Any, valid: np.ndarray) -> PascanuBound:
    """`pascanu_bound` over the valid steps only: one call per distinct length, combined."""
    lengths = valid.sum(axis=1)
    bounds, counts = [], []
    for L in np.unique(lengths):
        rows = np.flatnonzero(lengths == L)
        part = None if carry is None else jax.tree.map(lambda a, r=rows: a[r], carry)
        bounds.append(pascanu_bound(cell, params, xs[rows, : int(L)], part))
        counts.append(len(rows) * int(L))  # steps measured
    if bounds[0].gate is None:  # η-based: the largest σ_max over all steps decides
        return max(bounds, key=lambda b: b.eta if b.eta is not None else -math.inf)
    w = np.asarray(counts, np.float64) / sum(counts)
    gates = [b.gate for b in bounds if b.gate is not None]
    mean_log = float(sum(wi * g.mean_log for wi, g in zip(w, gates, strict=True)))
    stats = GateStats(
        gate=gates[0].gate,
        mean=float(sum(wi * g.mean for wi, g in zip(w, gates, strict=True))),
        min=min(g.min for g in gates),
        max=max(g.max for g in gates),
        mean_log=mean_log,
        half_life=math.log(0.5) / mean_log if mean_log < 0 else math.inf,
        from_inputs=True,
    )
    explanation = (
        f"{cell.name}: the direct memory path is scaled by the {stats.gate} gate each step "
        f"(mean {stats.mean:.3f}, min {stats.min:.3f}, along the valid steps of the inputs): "
        f"it decays like {math.exp(stats.mean_log):.3f}^(T-t), half-life "
        f"{stats.half_life:.3g} steps; the Pascanu bound on W (max block σ_max = "
        f"{bounds[0].sigma_max:.3f}) does not apply"
    )
    return bounds[0]._replace(explanation=explanation, gate=stats)


__all__ = [
    "RaggedParams",
    "masked_step_loss",
    "non_finite",
    "ragged",
    "ragged_bound",
    "valid_steps",
]
