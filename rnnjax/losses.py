"""Sequence losses of the lecture: cross-entropy over time, perplexity, bits per character."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def _masked_mean(values: Array, mask: Array | None) -> Array:
    """Mean of ``values`` over the entries where ``mask`` is True (all if mask is None)."""
    if mask is None:
        return jnp.mean(values)
    if mask.shape != values.shape:
        raise ValueError(f"mask has shape {mask.shape} but the values have {values.shape}")
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def sequence_cross_entropy(logits: Array, targets: Array, mask: Array | None = None) -> Array:
    r"""Cross-entropy of a sequence, averaged over its valid steps (and the batch).

    .. math:: \mathcal{L} = -\frac{1}{T} \sum_t l_t \cdot \log y_t,
        \qquad y_t = \mathrm{softmax}(\text{logits}_t)

    with l_t the one-hot target; T counts only the steps where ``mask`` is True.

    Args:
        logits: (..., T, K) unnormalised scores or log-probabilities (log_softmax is applied,
            which leaves log-probabilities unchanged).
        targets: int (..., T) class indices in [0, K).
        mask: optional bool (..., T); False marks padding.

    Returns:
        A scalar: mean negative log-likelihood in nats per valid step.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {logits.shape} and targets {targets.shape} disagree: logits must be "
            f"targets.shape + (K,)"
        )
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"targets must be integer class indices, got {targets.dtype=}")
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # (..., T, K)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # (..., T)
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
