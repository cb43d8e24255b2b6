"""The synthetic long-range tasks, generated on the fly with `jax.random`.

Every task is a `Task`: a generator ``generate(key, batch_size) -> TaskBatch`` plus what the
papers say about it — its loss, its per-sequence success criterion and the loss of a trivial
predictor (its baseline). Batches are deterministic functions of ``(seed, step)``::

    task = make_task("adding", T=100)                  # Hochreiter & Schmidhuber's definition
    batch = task.batch(seed=0, step=17, batch_size=32)  # xs (32, 110, 2), traceable under jit
    test = task.test_batch(seed=0, index=0, size=512)   # a stream the training steps never use

Sequences of a task have at most ``task.length`` steps; shorter ones are zero-padded and
``batch.lengths`` says where each ends. "last" tasks are read at step ``lengths − 1`` (the
network is causal, so the padding after it never matters); "all" tasks at every step.

Definitions follow the papers' own descriptions and code (see /shared/reference.md):

- ``adding``: ``definition="hochreiter"`` (default): pairs (value U[−1, 1], marker), length
  uniform on [T, T + T/10], X₁ among the first 10 pairs, X₂ among the first T/2 − 1 unmarked
  ones, first and last markers −1, target 0.5 + (X₁ + X₂)/4, correct if |error| < 0.04.
  ``definition="pascanu"``: (marker, value U[0, 1]), length in [T, 1.1T), p₀ ∈ [0, 0.1l),
  p₁ ∈ [0.1l, 0.5l), target (x_{p₀} + x_{p₁})/2, an error if the squared error > 0.04.
- ``multiplication``: Pascanu's adding with target x_{p₀}·x_{p₁}.
- ``temporal_order`` / ``temporal_order_3bit``: 6 one-hot symbols; A/B at 2 (3) random
  positions in windows 0.1T wide starting at 0.1T, 0.5T (0.1T, 0.3T, 0.6T); 4 (8) classes.
- ``permutation``: 100 one-hot symbols; the first is 0 or 1 and must be named at the end.
- ``memorisation``: Pascanu's noiseless memorisation: a pattern of 10 symbols out of 5, T
  blanks with a delimiter, recalled in the last 10 of T + 20 steps.
- ``copy``: Arjovsky et al.'s copy task: 10 symbols out of 8, T − 1 blanks, a delimiter,
  10 blanks; targets are T + 10 blanks and then the 10 symbols.

References:
    Hochreiter & Schmidhuber, "Long short-term memory", 1997 (experiments 4–6).
    Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks",
    2013 (section 5.1 and pascanur/trainingRNNs).
    Arjovsky, Shah & Bengio, "Unitary evolution recurrent neural networks", 2016.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array
from rnnjax.losses import sequence_cross_entropy

SOLVED_ACCURACY = 0.99  # a run solves a task when > 99 % of fresh test sequences are correct
_TRAIN_STREAM, _TEST_STREAM = 0, 1


class TaskBatch(NamedTuple):
    """One batch of a task.

    Attributes:
        xs: float32 inputs, (B, L, D) with L = ``task.length``; zero after each length.
        targets: (B,) float32 (regression), (B,) int32 (a class read at the end) or (B, L)
            int32 (a class at every step).
        lengths: int32 (B,), the valid steps of each sequence.
    """

    xs: Array
    targets: Array
    lengths: Array


class Task(NamedTuple):
    """A synthetic task (build one with `make_task`).

    Attributes:
        name: the task's name, e.g. "adding".
        T: the length parameter the task was built with.
        length: L, the padded length of every batch.
        input_size: D.
        output_size: K, the number of outputs (1 for regression).
        objective: "mse" (regression) or "xent" (classification).
        readout: "last" (one output per sequence) or "all" (one per step).
        generate: ``(key, batch_size) -> TaskBatch``, pure and jittable.
        baseline: the loss of the trivial predictor (the best memoryless / constant one).
        criterion: the per-sequence success criterion of the papers, in words.
        correct_fn: ``(outputs, batch) -> bool (B,)`` implementing the criterion.
    """

    name: str
    T: int
    length: int
    input_size: int
    output_size: int
    objective: str
    readout: str
    generate: Callable[[Array, int], TaskBatch]
    baseline: float
    criterion: str
    correct_fn: Callable[[Array, TaskBatch], Array]

    def batch(self, seed: int | Array, step: Array | int, batch_size: int) -> TaskBatch:
        """The training batch of ``step``: a pure function of ``(seed, step)``.

        ``seed`` is an int or the key ``jax.random.key(seed)`` (which may be traced).
        """
        key = jax.random.fold_in(jax.random.fold_in(_root(seed), _TRAIN_STREAM), step)
        return self.generate(key, batch_size)

    def test_batch(self, seed: int | Array, index: Array | int, size: int) -> TaskBatch:
        """Test batch ``index``: ``size`` fresh sequences from a stream no training step uses."""
        key = jax.random.fold_in(jax.random.fold_in(_root(seed), _TEST_STREAM), index)
        return self.generate(key, size)

    def loss(self, outputs: Array, batch: TaskBatch) -> Array:
        """Mean loss: MSE for regression, cross-entropy (nats) for classes.

        Args:
            outputs: (B, K) for "last" tasks (K = 1 for regression), (B, L, K) for "all".
            batch: the batch the outputs answer.
        """
        if self.objective == "mse":
            return jnp.mean(jnp.square(outputs[:, 0] - batch.targets))
        if self.readout == "last":
            return sequence_cross_entropy(outputs[:, None, :], batch.targets[:, None])
        return sequence_cross_entropy(outputs, batch.targets)

    def correct(self, outputs: Array, batch: TaskBatch) -> Array:
        """bool (B,): which sequences meet the papers' success criterion."""
        return self.correct_fn(outputs, batch)


def _root(seed: int | Array) -> Array:
    return jax.random.key(seed) if isinstance(seed, int) else seed


def _steps(B: int, L: int) -> Array:
    return jnp.broadcast_to(jnp.arange(L)[None, :], (B, L))  # (B, L)


def _pick(values: Array, positions: Array) -> Array:
    """values[b, positions[b]] for (B, L) values and (B,) positions."""
    return jnp.take_along_axis(values, positions[:, None], axis=1)[:, 0]  # (B,)


def _adding_hochreiter(T: int) -> tuple[int, Callable]:
    L = T + T // 10
    half = T // 2 - 1  # X₂ is one of the first T/2 − 1 still unmarked pairs

    def generate(key, B):
        k_len, k_val, k_p1, k_p2 = jax.random.split(key, 4)
        lengths = jax.random.randint(k_len, (B,), T, L + 1)  # uniform on [T, T + T/10]
        values = jax.random.uniform(k_val, (B, L), minval=-1.0, maxval=1.0)  # (B, L)
        p1 = jax.random.randint(k_p1, (B,), 0, 10)
        r = jax.random.randint(k_p2, (B,), 0, half)
        p2 = r + (r >= p1)  # the r-th pair that is not p1
        t = _steps(B, L)
        marked = (t == p1[:, None]) | (t == p2[:, None])  # (B, L)
        ends = (t == 0) | (t == lengths[:, None] - 1)
        marker = jnp.where(marked, 1.0, jnp.where(ends, -1.0, 0.0))  # (B, L)
        values = jnp.where(marked & (t == 0), 0.0, values)  # "if the first pair is marked, X₁ = 0"
        valid = (t < lengths[:, None]).astype(jnp.float32)  # (B, L)
        xs = jnp.stack([values * valid, marker * valid], axis=-1)  # (B, L, 2)
        target = 0.5 + (_pick(values, p1) + _pick(values, p2)) / 4.0  # (B,)
        return TaskBatch(xs, target, lengths.astype(jnp.int32))

    return L, generate


def _marked_pair(T: int, combine: Callable[[Array, Array], Array]) -> tuple[int, Callable]:
    """Pascanu's addition / multiplication generator (channels: marker, value)."""
    extra = max(T // 10, 1)
    L = T + extra - 1  # l ∈ [T, T + 0.1T)

    def generate(key, B):
        k_len, k_val, k_p0, k_p1 = jax.random.split(key, 4)
        lengths = jax.random.randint(k_len, (B,), T, T + extra)  # (B,)
        w0, w1 = lengths // 10, (4 * lengths) // 10  # int(0.1 l), int(0.4 l)
        p0 = jax.random.randint(k_p0, (B,), 0, w0)
        p1 = w0 + jax.random.randint(k_p1, (B,), 0, w1)
        values = jax.random.uniform(k_val, (B, L))  # (B, L), U[0, 1]
        t = _steps(B, L)
        marker = ((t == p0[:, None]) | (t == p1[:, None])).astype(jnp.float32)
        valid = (t < lengths[:, None]).astype(jnp.float32)
        xs = jnp.stack([marker, values * valid], axis=-1)  # (B, L, 2)
        target = combine(_pick(values, p0), _pick(values, p1))  # (B,)
        return TaskBatch(xs, target, lengths.astype(jnp.int32))

    return L, generate


def _temporal_order(T: int, starts: tuple[float, ...]) -> Callable:
    """Pascanu's temporal order: symbols 0, 1 (A, B) at random positions, distractors 2..5."""
    width = int(T * 0.1)
    offsets = jnp.asarray([int(T * s) for s in starts])  # (n,)
    n = len(starts)

    def generate(key, B):
        k_sym, k_pos, k_bit = jax.random.split(key, 3)
        symbols = jax.random.randint(k_sym, (B, T), 2, 6)  # (B, T) distractors
        positions = offsets[None, :] + jax.random.randint(k_pos, (B, n), 0, width)  # (B, n)
        bits = jax.random.randint(k_bit, (B, n), 0, 2)  # (B, n): A = 0, B = 1
        t = _steps(B, T)
        for j in range(n):
            symbols = jnp.where(t == positions[:, j : j + 1], bits[:, j : j + 1], symbols)
        target = jnp.sum(bits * (2 ** jnp.arange(n))[None, :], axis=1)  # (B,) in [0, 2ⁿ)
        lengths = jnp.full((B,), T, jnp.int32)
        return TaskBatch(jax.nn.one_hot(symbols, 6), target.astype(jnp.int32), lengths)

    return generate


def _permutation(T: int) -> Callable:
    def generate(key, B):
        k_sym, k_first = jax.random.split(key)
        symbols = jax.random.randint(k_sym, (B, T), 2, 100)  # (B, T)
        first = jax.random.randint(k_first, (B,), 0, 2)  # (B,)
        symbols = symbols.at[:, 0].set(first)
        lengths = jnp.full((B,), T, jnp.int32)
        return TaskBatch(jax.nn.one_hot(symbols, 100), first.astype(jnp.int32), lengths)

    return generate


def _recall(T: int, n_values: int, n_pos: int, delimiter_at: int) -> tuple[int, Callable]:
    """Memorisation / copy: symbols [0, n_values), blank = n_values, delimiter = n_values + 1.

    Inputs: the pattern (n_pos steps), blanks, the delimiter at ``delimiter_at``, blanks.
    Targets: blanks, then the pattern over the last n_pos steps.
    """
    L = T + 2 * n_pos
    blank, delimiter = n_values, n_values + 1

    def generate(key, B):
        pattern = jax.random.randint(key, (B, n_pos), 0, n_values)  # (B, n_pos)
        fill = jnp.full((B, L - n_pos), blank)
        inputs = jnp.concatenate([pattern, fill], axis=1)  # (B, L)
        inputs = inputs.at[:, delimiter_at].set(delimiter)
        targets = jnp.concatenate([jnp.full((B, L - n_pos), blank), pattern], axis=1)  # (B, L)
        lengths = jnp.full((B,), L, jnp.int32)
        return TaskBatch(jax.nn.one_hot(inputs, n_values + 2), targets.astype(jnp.int32), lengths)

    return L, generate


def _abs_within(tol: float) -> Callable:
    return lambda y, b: jnp.abs(y[:, 0] - b.targets) < tol


def _squared_within(tol: float) -> Callable:
    return lambda y, b: jnp.square(y[:, 0] - b.targets) <= tol


def _argmax_last(y, b):
    return jnp.argmax(y, axis=-1) == b.targets


def _argmax_all(y, b):
    return jnp.all(jnp.argmax(y, axis=-1) == b.targets, axis=1)


TASKS = (
    "adding",
    "multiplication",
    "temporal_order",
    "temporal_order_3bit",
    "permutation",
    "memorisation",
    "copy",
)
ADDING_DEFINITIONS = ("hochreiter", "pascanu")


def make_task(name: str, T: int, definition: str | None = None) -> Task:
    """Builds a task by name.

    Args:
        name: one of `TASKS`.
        T: the length parameter (minimum sequence length; the gap for memorisation / copy).
        definition: for "adding" only: "hochreiter" (default) or "pascanu".

    Returns:
        A `Task` (its generator is jitted, so eager calls compile once).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    if isinstance(T, bool) or not isinstance(T, int) or T < 10:
        raise ValueError(f"T must be an integer >= 10 for the long-range tasks, got T={T!r}")
    if definition is not None and name != "adding":
        raise ValueError(f"definition={definition!r} applies to the adding task only, not {name}")
    definition = definition or "hochreiter"
    if definition not in ADDING_DEFINITIONS:
        raise ValueError(f"unknown adding {definition=}; choose one of {ADDING_DEFINITIONS}")
    mse: dict[str, Any] = dict(input_size=2, output_size=1, objective="mse", readout="last")
    spec: dict[str, Any]
    if name == "adding" and definition == "hochreiter":
        L, gen = _adding_hochreiter(T)
        # Var(0.5 + (X₁ + X₂)/4), X ~ U[−1, 1] (variance 1/3), except that a marked first pair
        # counts as 0: P(p₁ = 0) = 1/10, P(p₂ = 0) = (9/10) / (T/2 − 1).
        kept = (1 - 1 / 10) + (1 - 0.9 / (T // 2 - 1))
        spec = dict(
            mse,
            length=L,
            generate=gen,
            baseline=kept / 3 / 16,
            criterion="|error| < 0.04 at the end",
            correct_fn=_abs_within(0.04),
        )
    elif name in ("adding", "multiplication"):
        combine = (lambda a, b: (a + b) / 2) if name == "adding" else (lambda a, b: a * b)
        L, gen = _marked_pair(T, combine)
        variance = 1 / 24 if name == "adding" else 1 / 9 - 1 / 16  # of the target
        spec = dict(
            mse,
            length=L,
            generate=gen,
            baseline=variance,
            criterion="squared error <= 0.04 at the end",
            correct_fn=_squared_within(0.04),
        )
    elif name in ("temporal_order", "temporal_order_3bit", "permutation"):
        starts = (0.1, 0.5) if name == "temporal_order" else (0.1, 0.3, 0.6)
        K = 100 if name == "permutation" else 2 ** len(starts)
        gen = _permutation(T) if name == "permutation" else _temporal_order(T, starts)
        criterion = (
            f"the right one of {K} orders" if K < 100 else "the first symbol named at the end"
        )
        spec = dict(
            length=T,
            input_size=6 if K < 100 else 100,
            output_size=K,
            objective="xent",
            readout="last",
            generate=gen,
            baseline=math.log(2 if K == 100 else K),
            criterion=criterion,
            correct_fn=_argmax_last,
        )
    else:
        n_values, n_pos = (5, 10) if name == "memorisation" else (8, 10)
        delimiter_at = T + n_pos if name == "memorisation" else T + n_pos - 1
        L, gen = _recall(T, n_values, n_pos, delimiter_at)
        spec = dict(
            length=L,
            input_size=n_values + 2,
            output_size=n_values + 1,
            objective="xent",
            readout="all",
            generate=gen,
            baseline=n_pos * math.log(n_values) / L,
            criterion=f"all {L} outputs right (the {n_pos} recalled symbols included)",
            correct_fn=_argmax_all,
        )
    spec["generate"] = jax.jit(spec["generate"], static_argnums=1)
    return Task(name=name, T=T, **spec)


__all__ = ["ADDING_DEFINITIONS", "SOLVED_ACCURACY", "TASKS", "Task", "TaskBatch", "make_task"]
