"""The train step: loss → gradients → (Ω) → clipping → optax update, skipping non-finite steps.

One step, written as a pure function of the training state so that it can be jitted,
checkpointed and resumed bit for bit::

    objective = text_objective(model, batch_size=32, window=64, n_windows=n)  # or a task
    optimizer = make_optimizer("adam", 1e-3, clip_norm=1.0)
    step = make_train_step(objective, optimizer, seed=0)
    state, metrics = jax.jit(step)(state, data)   # data: the text streams, or the seed key

The batch of a step is a function of ``state.step`` only (tasks draw it from
``fold_in(key(seed), step)``, text reads window ``step mod n_windows``), so a resumed run
sees exactly the batches the uninterrupted run would have seen.

Non-finite loss or gradient: the update is dropped (params and optimiser state unchanged),
the step is counted in ``skipped`` and ``bad_run``; once ``bad_run`` reaches ``max_bad_steps``
the step is a no-op (the host then stops training and keeps the last good checkpoint).

References:
    Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks",
    2013 (Algorithm 1: norm clipping; eq. 9–10: the regulariser Ω).
    Williams & Peng, 1990 (truncated BPTT: the carry crosses windows, gradients do not).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rnnjax.analysis import clip_by_global_norm_with_stats, clip_stats, pascanu_regularizer
from rnnjax.analysis.pascanu import paper_gradient_supported
from rnnjax.cells.base import Array
from rnnjax.data.tasks import Task
from rnnjax.data.text import bptt_window
from rnnjax.losses import sequence_cross_entropy
from rnnjax.train.model import Model, task_outputs

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": lambda lr, momentum: optax.sgd(lr, momentum=momentum or None),
    "adam": lambda lr, momentum: optax.adam(lr),
    "rmsprop": lambda lr, momentum: optax.rmsprop(lr, momentum=momentum),
    "adagrad": lambda lr, momentum: optax.adagrad(lr),
}


class TrainState(NamedTuple):
    """Everything a run needs to continue exactly where it stopped.

    Attributes:
        step: int32 (), the number of steps taken (= the index of the next batch).
        params: the model's parameters.
        opt_state: the optax state.
        carry: the carry handed from one BPTT window to the next (text); () for tasks.
        bad_run: int32 (), consecutive non-finite steps.
        skipped: int32 (), all non-finite (skipped) steps.
    """

    step: Array
    params: Any
    opt_state: Any
    carry: Any
    bad_run: Array
    skipped: Array


class Objective(NamedTuple):
    """What a step minimises.

    Attributes:
        loss: ``(params, carry, data, step, key) -> (total, (carry, metrics))``: the loss of
            batch ``step`` plus the weighted Ω (if any), the carry for the next batch and the
            metrics (scalars: ``loss`` without Ω, ``omega`` if used, accuracy or bpc).
        initial_carry: ``params -> carry`` for the start of training.
    """

    loss: Callable[..., tuple[Array, tuple[Any, dict[str, Array]]]]
    initial_carry: Callable[[Any], Any]


OmegaWeight = Callable[[Array], Array]


def omega_schedule(weight: float, decay: float = 1.0) -> OmegaWeight | None:
    """The weight of Ω at step s: ``weight · decay**s`` (None when weight = 0: no Ω)."""
    if weight == 0:
        return None
    return lambda step: weight * jnp.power(decay, step.astype(jnp.float32))


def _with_omega(model: Model, omega_weight: OmegaWeight | None):
    """Adds ``weight(step) · Ω`` (Pascanu et al.'s regulariser on the first layer) to a loss."""
    if omega_weight is None:
        return lambda loss, metrics, *args: (loss, {**metrics, "loss": loss})
    if len(model.stack.cells) != 1:
        raise ValueError(
            f"the Pascanu regulariser is defined for one recurrent layer, the model has "
            f"{len(model.stack.cells)} (use --layers 1 with --omega)"
        )

    if not paper_gradient_supported(model.stack.cells[0]):
        raise ValueError(
            f"Ω (--omega) trains with Pascanu et al.'s eq. 10 gradient, defined for cells whose "
            f"step reads W as x U + h W (simple_rnn, lstm); the {model.stack.cells[0].name} "
            f"cell's step does not"
        )

    def add(loss, metrics, params, xs, carry, step, loss_of_outputs):
        omega = pascanu_regularizer(
            model.stack.cells[0], params.rnn[0], xs, carry, loss_fn=loss_of_outputs
        )
        return loss + omega_weight(step) * omega, {**metrics, "loss": loss, "omega": omega}

    return add


def task_objective(
    model: Model,
    task: Task,
    batch_size: int,
    omega_weight: OmegaWeight | None = None,
    shard_batch: Callable[[Any], Any] | None = None,
) -> Objective:
    """Fresh task sequences every step; metrics: ``accuracy`` (the share meeting the criterion).

    The step's ``data`` is the run's seed key ``jax.random.key(seed)``: batch s is
    ``task.batch(key, s, batch_size)`` (a traced key, so runs of several seeds share one
    compiled step, and can be vmapped).

    With ``omega_weight`` the loss gets ``omega_weight(step) · Ω`` (Pascanu et al. eq. 10).
    The batch is generated inside the step; ``shard_batch`` (a sharding constraint) splits it
    over the devices of a data-parallel run.
    """
    add_omega = _with_omega(model, omega_weight)

    def loss(params, carry, data, step, key):
        del carry
        batch = task.batch(data, step, batch_size)
        if shard_batch is not None:
            batch = shard_batch(batch)

        def scored_loss(outputs):
            return task.loss(task_outputs(task, outputs, batch), batch)

        _, outputs = model.apply(params, batch.xs, key=key)  # (B, L, K)
        scored = task_outputs(task, outputs, batch)
        accuracy = jnp.mean(task.correct(scored, batch).astype(jnp.float32))
        total, metrics = add_omega(
            task.loss(scored, batch),
            {"accuracy": accuracy},
            params,
            batch.xs,
            None,
            step,
            lambda ys: scored_loss(model.head(params, ys)),
        )
        return total, ((), metrics)

    return Objective(loss, lambda params: ())


def text_objective(
    model: Model,
    batch_size: int,
    window: int,
    n_windows: int,
    omega_weight: OmegaWeight | None = None,
) -> Objective:
    """Truncated BPTT over contiguous streams; the carry restarts at zero with every epoch.

    Metrics: ``bpc``, the training loss in bits per character.
    """
    add_omega = _with_omega(model, omega_weight)

    def loss(params, carry, data, step, key):
        inputs, targets = bptt_window(data, step % n_windows, window)  # (B, W) each
        zeros = model.initial_carry(params, (batch_size,))
        restart = step % n_windows == 0
        carry = jax.tree.map(lambda z, c: jnp.where(restart, z, c), zeros, carry)
        carry = jax.lax.stop_gradient(carry)  # gradients stop at the window's start
        carry_out, log_probs = model.apply(params, inputs, carry, key=key)  # (B, W, V)
        nll = sequence_cross_entropy(log_probs, targets)
        total, metrics = add_omega(
            nll,
            {"bpc": nll / math.log(2.0)},
            params,
            model.features(params, inputs),
            carry[0],
            step,
            lambda ys: sequence_cross_entropy(model.head(params, ys), targets),
        )
        return total, (carry_out, metrics)

    def initial_carry(params):
        return model.initial_carry(params, (batch_size,))

    return Objective(loss, initial_carry)


def make_optimizer(
    name: str,
    learning_rate: float,
    clip_norm: float | None = None,
    momentum: float = 0.0,
    decay: float = 1.0,
) -> optax.GradientTransformation:
    """``optax.chain(clip_by_global_norm_with_stats(clip_norm), <name>(learning_rate))``.

    The clipping is `rnnjax.analysis.clip_by_global_norm_with_stats`: optax's global-norm
    clipping, whose state also records the norm before clipping and whether it fired.

    Args:
        name: one of `OPTIMIZERS` ("sgd", "adam", "rmsprop", "adagrad").
        learning_rate: the step size.
        clip_norm: threshold of Pascanu's Algorithm 1 on the global norm (None: no clipping).
        momentum: for "sgd" and "rmsprop".
        decay: the learning rate is multiplied by this every 1000 steps (1: constant).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not learning_rate > 0:
        raise ValueError(f"learning rate must be > 0, got lr={learning_rate}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip norm must be > 0 (or None for no clipping), got {clip_norm=}")
    if not 0 < decay <= 1:
        raise ValueError(f"learning-rate decay must be in (0, 1], got {decay=}")
    rate = (
        learning_rate
        if decay == 1
        else optax.exponential_decay(learning_rate, 1000, decay, staircase=True)
    )
    opt = OPTIMIZERS[name](rate, momentum)
    if clip_norm is None:
        return opt
    return optax.chain(clip_by_global_norm_with_stats(clip_norm), opt)


def init_state(params: Any, optimizer: optax.GradientTransformation, carry: Any) -> TrainState:
    zero = jnp.zeros((), jnp.int32)
    return TrainState(zero, params, optimizer.init(params), carry, zero, zero)


def make_train_step(
    objective: Objective,
    optimizer: optax.GradientTransformation,
    *,
    seed: int = 0,
    max_bad_steps: int = 10,
    dropout: bool = False,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, Array]]]:
    """Builds ``step(state, data) -> (state, metrics)`` (pure; jit it).

    Args:
        objective: the loss and data (`task_objective` or `text_objective`).
        optimizer: an optax transformation (clipping included, see `make_optimizer`).
        seed: seeds the dropout keys (``fold_in(key(seed), step)``).
        max_bad_steps: after this many non-finite steps in a row the step becomes a no-op.
        dropout: pass a PRNG key to the model (switches dropout on).

    Returns:
        The step function. Its metrics: the objective's (``loss``, ``omega``, ``accuracy`` or
        ``bpc``), ``grad_norm`` (global, before clipping), ``clipped`` (1.0 if clipping fired),
        ``finite`` (0.0 for a skipped step).
    """
    dropout_root = jax.random.fold_in(jax.random.key(seed), 2**20)

    def pick(cond, new, old):
        return jax.tree.map(lambda n, o: jnp.where(cond, n, o), new, old)

    def step_fn(state: TrainState, data: Any):
        key = jax.random.fold_in(dropout_root, state.step) if dropout else None
        grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
        (total, (carry, metrics)), grads = grad_fn(state.params, state.carry, data, state.step, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm, clipped = _clip_report(grads, opt_state)

        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
        good = finite & (state.bad_run < max_bad_steps)  # latched off after too many
        new_state = TrainState(
            step=state.step + 1,
            params=pick(good, params, state.params),
            opt_state=pick(good, opt_state, state.opt_state),
            carry=pick(finite, carry, jax.tree.map(jnp.zeros_like, carry)),  # restart on NaN
            bad_run=jnp.where(finite, 0, state.bad_run + 1).astype(jnp.int32),
            skipped=state.skipped + (~finite).astype(jnp.int32),
        )
        new_state = pick(state.bad_run < max_bad_steps, new_state, state)
        metrics = {
            **metrics,
            "grad_norm": grad_norm,
            "clipped": clipped.astype(jnp.float32),
            "finite": finite.astype(jnp.float32),
        }
        return new_state, metrics

    return step_fn


def _clip_report(grads: Any, opt_state: Any) -> tuple[Array, Array]:
    """(‖g‖ before clipping, whether clipping fired) from the clipping's own record."""
    try:
        stats = clip_stats(opt_state)
    except ValueError:  # no clipping in this optimiser
        return optax.tree.norm(grads), jnp.zeros((), bool)
    return stats.global_norm, stats.clipped


__all__ = [
    "OPTIMIZERS",
    "Objective",
    "TrainState",
    "init_state",
    "make_optimizer",
    "make_train_step",
    "omega_schedule",
    "task_objective",
    "text_objective",
]
