"""Evaluation: task success on fresh test sequences, bits per character on validation text.

- Tasks: ``eval_size`` sequences from the task's test stream (never seen in training), in
  chunks of at most `CHUNK`; reports the mean loss and ``accuracy``, the share of sequences
  meeting the papers' criterion (the task is *solved* when it exceeds `SOLVED_ACCURACY`).
- Text: the whole validation text, read as contiguous streams with the carry flowing from
  window to window (as in training, without gradients); reports ``loss`` (nats) and ``bpc``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.data.tasks import SOLVED_ACCURACY, Task
from rnnjax.data.text import bptt_window, num_windows
from rnnjax.losses import sequence_cross_entropy
from rnnjax.train.model import Model, task_outputs

CHUNK = 512


def task_evaluator(
    model: Model, task: Task, seed: int, size: int
) -> Callable[[Any], dict[str, float]]:
    """``params -> {"loss", "accuracy", "solved"}`` over ``size`` fresh test sequences."""
    chunk = min(size, CHUNK)
    sizes = [chunk] * (size // chunk) + ([size % chunk] if size % chunk else [])

    def score(params, index, n):
        batch = task.test_batch(seed, index, n)
        _, outputs = model.apply(params, batch.xs)  # (n, L, K)
        scored = task_outputs(task, outputs, batch)
        return task.loss(scored, batch) * n, jnp.sum(task.correct(scored, batch))

    scorer = jax.jit(score, static_argnums=2)

    def evaluate(params) -> dict[str, float]:
        results = jax.device_get([scorer(params, i, n) for i, n in enumerate(sizes)])
        loss = sum(float(r[0]) for r in results) / size
        accuracy = sum(int(r[1]) for r in results) / size
        return {"loss": loss, "accuracy": accuracy, "solved": float(accuracy > SOLVED_ACCURACY)}

    return evaluate


def text_evaluator(
    model: Model, streams: np.ndarray, window: int
) -> Callable[[Any], dict[str, float]]:
    """``params -> {"loss", "bpc"}`` over the validation streams (B_val, N_val)."""
    n = num_windows(streams, window)
    data = jnp.asarray(streams)

    def mean_nll(params):
        def body(carry, k):
            inputs, targets = bptt_window(data, k, window)  # (B, W) each
            carry, log_probs = model.apply(params, inputs, carry)
            return carry, sequence_cross_entropy(log_probs, targets)

        carry = model.initial_carry(params, (data.shape[0],))
        _, losses = jax.lax.scan(body, carry, jnp.arange(n))  # (n,) equal-sized windows
        return jnp.mean(losses)

    run = jax.jit(mean_nll)

    def evaluate(params) -> dict[str, float]:
        loss = float(run(params))
        return {"loss": loss, "bpc": loss / math.log(2.0)}

    return evaluate


__all__ = ["CHUNK", "task_evaluator", "text_evaluator"]
