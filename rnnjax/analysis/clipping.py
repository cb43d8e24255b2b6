"""Gradient clipping with statistics: optax's clipping, plus a record of when it fired.

Clipping itself is optax's (`optax.clip_by_global_norm` is Pascanu et al.'s Algorithm 1:
ĝ ← θ₀/‖ĝ‖ · ĝ if ‖ĝ‖ > θ₀; `optax.clip` is element-wise clipping, as in min-char-rnn).
`with_clip_stats` wraps any such transformation and keeps, in its state, the global norm the
gradient had before clipping, whether clipping changed it, and running counts, so that a
training log can report the clip rate::

    tx = optax.chain(clip_by_global_norm_with_stats(1.0), optax.sgd(0.01))
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    stats = clip_stats(state)                  # the ClipStatsState inside the chain
    print(stats.global_norm, stats.clipped, clip_rate(stats))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rnnjax.cells.base import Array


class ClipStatsState(NamedTuple):
    """State of `with_clip_stats`.

    Attributes:
        inner: the wrapped transformation's state.
        global_norm: ‖g‖₂ over all leaves before clipping, at the last update (float32 ()).
        clipped: whether the last update was changed by clipping (bool ()).
        steps: number of updates so far (int32 ()).
        clipped_steps: number of them that were clipped (int32 ()).
    """

    inner: Any
    global_norm: Array
    clipped: Array
    steps: Array
    clipped_steps: Array


def with_clip_stats(
    inner: optax.GradientTransformation, fired: Callable[[Array], Array] | None = None
) -> optax.GradientTransformation:
    """Wraps a clipping transformation so that its state records what it did.

    "Clipped" means the wrapped transformation changed at least one entry of the gradient
    (for ``clip_by_global_norm(m)``: ‖g‖ > m; for ``clip(d)``: some |g_i| > d), or, when
    ``fired`` is given, ``fired(‖g‖)``.

    Args:
        inner: an optax transformation, e.g. ``optax.clip_by_global_norm(1.0)`` or
            ``optax.clip(5.0)``.
        fired: ``global norm -> bool ()``, when the norm alone tells whether the clipping
            fired (global-norm clipping: ``norm > m``); it spares the comparison of every
            entry before and after.

    Returns:
        A ``GradientTransformation`` whose updates are exactly ``inner``'s and whose state is
        a `ClipStatsState`.
    """

    def init(params):
        return ClipStatsState(
            inner=inner.init(params),
            global_norm=jnp.zeros((), jnp.float32),
            clipped=jnp.zeros((), bool),
            steps=jnp.zeros((), jnp.int32),
            clipped_steps=jnp.zeros((), jnp.int32),
        )

    def update(updates, state, params=None):
        norm = optax.tree.norm(updates).astype(jnp.float32)
        new_updates, inner_state = inner.update(updates, state.inner, params)
        if fired is not None:
            clipped = fired(norm)
        else:
            changed = jax.tree.map(lambda a, b: jnp.any(a != b), new_updates, updates)
            leaves = jax.tree.leaves(changed)
            clipped = jnp.any(jnp.stack(leaves)) if leaves else jnp.zeros((), bool)
        return new_updates, ClipStatsState(
            inner=inner_state,
            global_norm=norm,
            clipped=clipped,
            steps=state.steps + 1,
            clipped_steps=state.clipped_steps + clipped.astype(jnp.int32),
        )

    return optax.GradientTransformation(init, update)


def clip_by_global_norm_with_stats(max_norm: float) -> optax.GradientTransformation:
    """``with_clip_stats(optax.clip_by_global_norm(max_norm))`` (Pascanu's Algorithm 1);
    clipped when ‖g‖ > max_norm (XLA computes the norm once for the clipping and the record)."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm=}")
    return with_clip_stats(optax.clip_by_global_norm(max_norm), lambda norm: norm > max_norm)


def clip_with_stats(max_delta: float) -> optax.GradientTransformation:
    """``with_clip_stats(optax.clip(max_delta))``: element-wise clipping to [−d, d]."""
    if not max_delta > 0:
        raise ValueError(f"max_delta must be > 0, got {max_delta=}")
    return with_clip_stats(optax.clip(max_delta))


def clip_stats(opt_state: Any) -> ClipStatsState:
    """The first `ClipStatsState` inside an optimizer state (e.g. of an ``optax.chain``).

    Raises:
        ValueError: if the state holds none.
    """
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ClipStatsState))
        if isinstance(s, ClipStatsState)
    ]
    if not found:
        raise ValueError("opt_state holds no ClipStatsState: wrap the clipping with_clip_stats")
    return found[0]


def clip_rate(stats: ClipStatsState) -> Array:
    """Fraction of updates that were clipped so far (0 before the first update)."""
    return stats.clipped_steps / jnp.maximum(stats.steps, 1)
