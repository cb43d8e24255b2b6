"""Batches of similar length for the handwriting models, as a `fit` loss.

Written words run from a dozen points to more than a hundred. Padding every batch to the
longest would spend most of a short word's time on padding, so `buckets` splits the samples
into groups of similar length, each padded to its own longest, and `bucket_batches` makes the
`training.fit` loss that draws each step's batch from one group (chosen with probability
proportional to its size, so every sample is as likely as before). Inside the jitted step the
group is chosen by `jax.lax.switch`, whose branch computes its own value and gradient: one
compilation per group, no work on the others.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.models import handwriting_data as hd
from rnnjax.models.training import shard_batch


def buckets(data: hd.StrokeData, n: int, multiple: int = 8) -> list[hd.StrokeData]:
    """``data`` split into ``n`` groups of similar length, each padded only to its own longest
    (rounded up to ``multiple``), so that a batch drawn from one wastes few steps on padding."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    order = np.argsort(data.lengths, kind="stable")
    out = []
    for part in np.array_split(order, min(n, len(order))):
        T = -(-int(data.lengths[part].max()) // multiple) * multiple
        out.append(
            hd.StrokeData(
                data.inputs[part, :T],
                data.targets[part, :T],
                data.lengths[part],
                data.chars[part],
                data.char_lengths[part],
                data.fonts[part],
                [data.words[i] for i in part],
            )
        )
    return out


def _zero_cotangent(x):
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)  # integer inputs have no tangent space


def _switched(loss_on, n: int):
    """``(params, batches, g) -> loss_on(params, batches[g])`` whose gradient is taken inside
    the chosen branch: differentiating through `jax.lax.switch` would keep every branch's
    residuals (zeros for the branches not taken), as costly as running them."""

    def value_and_grad(params, batches, g):
        branches = [lambda p, b, i=i: jax.value_and_grad(loss_on)(p, b[i]) for i in range(n)]
        return jax.lax.switch(g, branches, params, batches)

    @jax.custom_vjp
    def f(params, batches, g):
        return value_and_grad(params, batches, g)[0]

    def fwd(params, batches, g):
        value, grads = value_and_grad(params, batches, g)
        return value, (grads, batches, g)

    def bwd(res, ct):
        grads, batches, g = res
        zeros = jax.tree.map(_zero_cotangent, batches)
        return jax.tree.map(lambda x: ct * x, grads), zeros, _zero_cotangent(g)

    f.defvjp(fwd, bwd)
    return f


def bucket_batches(loss_on, groups: list, sizes: list[int], seed: int, batch_size: int):
    """A `fit` loss over length buckets: step t draws a bucket with probability proportional to
    its size, then ``batch_size`` of its examples (deterministic in seed and t).

    Args:
        loss_on: ``(params, arrays) -> loss``: the loss of one batch (the arrays of a bucket
            indexed by the batch's examples).
        groups: per bucket, the arrays (a pytree with examples on axis 0), as `fit`'s data.
        sizes: the number of examples of each bucket.
        seed: the run's seed.
        batch_size: examples per batch.

    Returns:
        ``loss(params, groups, step, key) -> (loss, {})``.
    """
    bounds = jnp.asarray(np.cumsum(sizes))  # (G,)

    def loss(params, groups, step, key):
        k_bucket, k_batch = jax.random.split(jax.random.fold_in(jax.random.key(seed), step))
        g = jnp.searchsorted(bounds, jax.random.randint(k_bucket, (), 0, bounds[-1]), "right")
        batches = []  # a batch from every bucket (cheap gathers); the switch runs one loss
        for group, size in zip(groups, sizes, strict=True):
            idx = shard_batch(jax.random.randint(k_batch, (batch_size,), 0, size))  # (B,)
            batches.append(jax.tree.map(lambda a, idx=idx: a[idx], group))
        return _switched(loss_on, len(sizes))(params, batches, g), {}

    return loss


__all__ = ["bucket_batches", "buckets"]
