"""Sequence losses of the lecture: cross-entropy over time, perplexity, bits per character."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnnjax._ids import check_ids

Array = jax.Array


def _masked_mean(values: Array, mask: Array | None) -> Array:
    """Mean of ``values`` over the entries where ``mask`` is True (all if mask is None).

    Masked-out entries are ignored even when they are NaN or inf (forward and gradient).
    """
    if mask is None:
        return jnp.mean(values)
    if mask.shape != values.shape:
        raise ValueError(f"mask has shape {mask.shape} but the values have {values.shape}")
    weights = mask.astype(values.dtype)
    # where, not a product: NaN or inf in a masked-out entry (padding) must not leak
    kept = jnp.where(mask != 0, values * weights, jnp.zeros((), values.dtype))
    return jnp.sum(kept) / jnp.maximum(jnp.sum(weights), 1.0)


def sequence_cross_entropy(logits: Array, targets: Array, mask: Array | None = None) -> Array:
    r"""Cross-entropy of a sequence, averaged over its valid steps (and the batch).

    .. math:: \mathcal{L} = -\frac{1}{T} \sum_t l_t \cdot \log y_t,
        \qquad y_t = \mathrm{softmax}(\text{logits}_t)

    with l_t the one-hot target; T counts only the steps where ``mask`` is True.

    Args:
        logits: (..., T, K) unnormalised scores or log-probabilities (log_softmax is applied,
            which leaves log-probabilities unchanged).
        targets: int (..., T) class indices in [0, K). Masked-out steps may hold any value
            (e.g. a padding id of -1).
        mask: optional bool (..., T); False marks padding.

    Returns:
        A scalar: mean negative log-likelihood in nats per valid step.

    Raises:
        ValueError: shapes that disagree, non-integer targets, or (when the targets are
            concrete, i.e. outside ``jit``) a target outside [0, K) at a step the mask keeps.
            Under ``jit`` the values cannot be checked: such a target makes the loss NaN
            (never a plausible number), which the train step counts as a non-finite step.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {logits.shape} and targets {targets.shape} disagree: logits must be "
            f"targets.shape + (K,)"
        )
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"targets must be integer class indices, got {targets.dtype=}")
    if mask is not None and jnp.shape(mask) != targets.shape:
        raise ValueError(f"mask has shape {jnp.shape(mask)} but the targets have {targets.shape}")
    K = logits.shape[-1]
    check_ids("targets", targets, K, where=mask)
    if mask is not None:  # padded steps may hold NaN / inf: keep them out of the gradient too
        logits = jnp.where((mask != 0)[..., None], logits, jnp.zeros((), logits.dtype))
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # (..., T, K)
    index = jnp.clip(targets, 0, K - 1)[..., None]  # (..., T, 1)
    nll = -jnp.take_along_axis(log_probs, index, axis=-1)[..., 0]  # (..., T)
    nll = jnp.where((targets >= 0) & (targets < K), nll, jnp.asarray(jnp.nan, nll.dtype))
    return _masked_mean(nll, mask)


def mean_squared_error(predictions: Array, targets: Array, mask: Array | None = None) -> Array:
    """Mean of (predictions − targets)² over the valid entries (mask broadcast by the caller)."""
    if predictions.shape != targets.shape:
        raise ValueError(f"{predictions.shape=} and {targets.shape=} must be equal")
    return _masked_mean(jnp.square(predictions - targets), mask)


def perplexity(loss_nats: Array | float) -> Array:
    """exp(cross-entropy): the effective number of equally likely choices per step."""
    return jnp.exp(loss_nats)


def bits_per_char(loss_nats: Array | float) -> Array:
    """Cross-entropy in bits: nats / ln 2."""
    return jnp.asarray(loss_nats) / math.log(2.0)


__all__ = ["bits_per_char", "mean_squared_error", "perplexity", "sequence_cross_entropy"]
