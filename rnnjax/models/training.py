"""What the applications share: their common flags, training through the library's loop, and
the result files.

Every application trains through `rnnjax.train.loop.run_loop`, the loop of the tasks and text
runs — jitted `make_train_step` (global-norm clipping, non-finite steps skipped and
``--max-bad-steps`` in a row halting the run; data parallel over every device when the batch
splits evenly, the batch marked by `shard_batch`), metrics every ``--log-every`` steps, orbax
checkpoints every ``--checkpoint-every`` steps and at the end, the progress display, a stop
on SIGINT / SIGTERM after a checkpoint, and exact ``--resume`` — and writes the same files::

    OUT/application.json       the task and its flags (read back by ``--resume``)
    OUT/metrics.jsonl          training records every ``log_every`` steps, then the evaluation
    OUT/result.json            the measured result against the application's target
    OUT/checkpoints/<step>/    the `TrainState` (orbax), the last ``--keep`` of them
    OUT/*.png                  figures (captioning, handwriting)

An application that trains several models (handwriting) gives each its own subdirectory.

A loss for `fit` is ``loss(params, data, step, key) -> (loss, metrics)``: it draws batch
``step`` from ``data`` (arrays handed to the jitted step) with ``batch_indices``, so the batch
of a step depends on ``(seed, step)`` only and a resumed run ends where an uninterrupted one
does.
"""

from __future__ import annotations

import argparse
import contextvars
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from rnnjax.analysis import clip_by_global_norm_with_stats
from rnnjax.cells.base import Array
from rnnjax.train import parallel
from rnnjax.train.checkpoint import CHECKPOINTS, METRICS, Checkpointer, write_atomic
from rnnjax.train.loop import LoopSettings, RunInterruptedError, count_params, run_loop
from rnnjax.train.metrics import MetricsLog, read_metrics
from rnnjax.train.step import Objective, init_state, make_train_step

LossFn = Callable[[Any, Any, Array, Any], tuple[Array, dict[str, Array]]]
APPLICATION_CONFIG = "application.json"  # {"task": name, "flags": {dest: value}}
# the batch sharding of the step being traced by a data-parallel `fit` (None: one device)
_BATCH_ROWS: contextvars.ContextVar[Any] = contextvars.ContextVar("batch_rows", default=None)


def add_common_arguments(
    parser: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float, hidden: int
) -> None:
    """The flags every application takes, with the application's defaults (``--out``,
    ``--resume`` and ``--quiet`` belong to ``rnnjax train`` itself)."""
    parser.add_argument("--steps", type=int, default=steps, help=f"training steps ({steps})")
    parser.add_argument("--seed", type=int, default=0, help="seed of init and batches (0)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"({batch_size})")
    parser.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate ({lr})")
    parser.add_argument("--hidden", type=int, default=hidden, help=f"LSTM units ({hidden})")
    parser.add_argument("--clip", type=float, default=1.0, help="global-norm clipping (1.0)")
    parser.add_argument(
        "--cpu-minutes",
        type=float,
        default=None,
        help="stop training after this much CPU time of the process (all threads)",
    )
    parser.add_argument("--log-every", type=int, default=50, help="steps per metrics record")
    parser.add_argument(
        "--checkpoint-every", type=int, default=100, help="steps per checkpoint (100)"
    )
    parser.add_argument("--keep", type=int, default=3, help="checkpoints kept (3)")
    parser.add_argument(
        "--max-bad-steps",
        type=int,
        default=10,
        help="stop after N non-finite steps in a row (10)",
    )


def check_common(args: argparse.Namespace) -> None:
    """ValueError naming the first bad common flag; refuses a non-empty ``--out`` (unless the
    run is resumed)."""
    names = ("steps", "batch_size", "hidden", "log_every", "checkpoint_every", "keep")
    for name in (*names, "max_bad_steps"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if not args.clip > 0:
        raise ValueError(f"--clip must be > 0, got {args.clip}")
    if args.cpu_minutes is not None and not args.cpu_minutes > 0:
        raise ValueError(f"--cpu-minutes must be > 0, got {args.cpu_minutes}")
    out = Path(args.out)
    if getattr(args, "resume", False):
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty directory; choose another")


def shard_batch(x: Array) -> Array:
    """Marks axis 0 of ``x`` as the batch: split over the devices while a data-parallel `fit`
    traces its step (XLA then splits what is gathered with it and all-reduces the gradients),
    unchanged otherwise."""
    rows = _BATCH_ROWS.get()
    return x if rows is None else jax.lax.with_sharding_constraint(x, rows)


def batch_indices(seed: int, step: Array, n: int, batch_size: int) -> Array:
    """Batch ``step``'s example indices: ``batch_size`` draws from [0, n) (traceable), split
    over the devices of a data-parallel run (`shard_batch`)."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    return shard_batch(jax.random.randint(key, (batch_size,), 0, n))  # (B,)


def _mesh(batch_size: int):
    """The devices a step runs on: all of them when ``batch_size`` splits evenly over them
    (data parallelism), else one. Returns ``(mesh, replicated sharding)``."""
    mesh = parallel.make_mesh()
    if batch_size % mesh.devices.size:
        mesh = parallel.make_mesh(jax.devices()[:1])
    return mesh, parallel.replicated(mesh)


def _compiled_step(train_step, state, data, mesh):
    """The step jitted over ``mesh`` for the placed (replicated) ``state`` and ``data``."""
    rep = parallel.replicated(mesh)
    jitted = jax.jit(train_step, in_shardings=(rep, rep), out_shardings=(rep, rep))
    token = _BATCH_ROWS.set(parallel.batch_sharded(mesh) if mesh.devices.size > 1 else None)
    try:
        return jitted.lower(state, data).compile()
    finally:
        _BATCH_ROWS.reset(token)


def params_digest(params: Any) -> str:
    """SHA-256 of the parameters' bytes, leaf after leaf (equal params, equal digest)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(params)):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def _record_flags(args: argparse.Namespace) -> int:
    """Writes ``RUN/application.json`` (the task and its flags) once, for ``--resume``.

    Returns the length of the learning-rate schedule: the ``steps`` recorded by the run's
    first call (a resumed run given more steps keeps its schedule, whose step size stays at
    its final value after it ends), or ``args.steps`` without a run directory."""
    flags, root = getattr(args, "flags", None), getattr(args, "run_dir", None)
    if flags is None or root is None:
        return args.steps
    path = Path(root) / APPLICATION_CONFIG
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"task": args.task, "flags": flags}, indent=2) + "\n")
    try:
        return int(json.loads(path.read_text())["flags"].get("steps", args.steps))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{path} is not an application record (task and flags)") from None


def fit(
    loss: LossFn,
    params: Any,
    data: Any,
    args: argparse.Namespace,
    *,
    label: str,
    random: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Trains ``params`` for ``args.steps`` steps of Adam with a cosine-decayed step size,
    through `rnnjax.train.loop.run_loop`, in the run directory ``args.out``. The schedule
    spans the steps the run was started with: resumed with more, it keeps that schedule and
    the extra steps run at its final step size (lr / 20), with no jump.

    With ``args.resume`` it continues from the newest checkpoint in ``args.out`` (a model
    already at ``args.steps`` is restored, not trained). ``args.stop`` (optional) is polled
    after every step: when it fires the step is checkpointed and `RunInterruptedError` raised.

    Args:
        loss: ``(params, data, step, key) -> (loss, metrics)``; ``key`` is None unless
            ``random``.
        params: initial parameters (any pytree, e.g. an ``nnx.State``).
        data: arrays the loss draws its batches from (passed to the jitted step).
        args: the parsed flags (`add_common_arguments`; ``out``, ``quiet``, ``resume``).
        label: the progress label.
        random: give the loss a PRNG key at every step (augmentation, dropout), drawn from
            ``(args.seed, step)`` like the batch, so a resumed run ends where an uninterrupted
            one does.

    Returns:
        ``(params, summary)``: the trained params and the training summary (steps done,
        wall and CPU seconds, steps/s, the last training record, the params' SHA-256).

    Raises:
        RunInterruptedError: ``args.stop`` fired (the checkpoint is written).
        rnnjax.train.TrainingHaltedError: ``args.max_bad_steps`` non-finite steps in a row.
    """
    out = Path(args.out)
    schedule_steps = _record_flags(args)  # the run's first --steps, kept on --resume
    schedule = optax.warmup_cosine_decay_schedule(  # lr, cosine-decayed to lr / 20
        args.lr, args.lr, 1, max(schedule_steps, 1), end_value=0.05 * args.lr
    )
    optimizer = optax.chain(clip_by_global_norm_with_stats(args.clip), optax.adam(schedule))

    def objective_loss(params, carry, data, step, key):
        value, metrics = loss(params, data, step, key)
        return value, (carry, {"loss": value, **metrics})

    objective = Objective(objective_loss, lambda params: ())
    train_step = make_train_step(
        objective, optimizer, seed=args.seed, max_bad_steps=args.max_bad_steps, dropout=random
    )
    mesh, rep = _mesh(args.batch_size)
    state = parallel.place(init_state(params, optimizer, ()), rep)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpointer(out / CHECKPOINTS, keep=args.keep)
    if getattr(args, "resume", False) and checkpoints.latest_step() is not None:
        state = parallel.place(checkpoints.restore(state), rep)
    start, n_params = int(state.step), count_params(params)
    log = MetricsLog(out / METRICS)
    if start:
        log.truncate(start)  # the steps after the checkpoint are replayed: log them once
    settings = LoopSettings(
        args.steps, args.log_every, args.checkpoint_every, None, args.max_bad_steps, label
    )
    budget = None if args.cpu_minutes is None else (60.0 * args.cpu_minutes, time.process_time)
    cpu0 = time.process_time()
    if start >= args.steps:  # a model finished before the interruption: nothing to train
        checkpoints.close()
        records = [r for r in read_metrics(log.path) if "loss" in r and "split" not in r]
        summary: dict[str, Any] = {"step": start, "steps_run": 0}
        summary.update(train=records[-1] if records else {})
        summary.update(wall_s=0.0, stopped_by_budget=False, skipped=int(state.skipped))
        summary.update(steps_per_s=None, state=state)
    else:
        data = parallel.place(data, rep)  # compiled only when there are steps left
        step_fn = _compiled_step(train_step, state, data, mesh)
        progress = None if args.quiet else sys.stderr
        extra: dict[str, Any] = dict(
            progress=progress, n_params=n_params, budget=budget, stop=getattr(args, "stop", None)
        )
        summary = run_loop(settings, state, step_fn, data, checkpoints, log, **extra)
    if summary.get("interrupted"):
        raise RunInterruptedError(summary["step"], summary["checkpoint"], str(out / CHECKPOINTS))
    state = summary["state"]
    return state.params, {
        "steps_done": summary["step"],
        "steps_this_call": summary["steps_run"],
        "stopped_by_cpu_limit": summary["stopped_by_budget"],
        "train_wall_s": round(summary["wall_s"], 1),
        "train_cpu_s": round(time.process_time() - cpu0, 1),
        "steps_per_s": summary["steps_per_s"],
        "n_params": n_params,
        "skipped_steps": summary["skipped"],
        "last_train_record": summary["train"],
        "params_sha256": params_digest(state.params),
    }


def write_result(
    args: argparse.Namespace,
    task: str,
    training: dict[str, Any],
    evaluation: dict[str, Any],
    target: dict[str, Any],
) -> dict[str, Any]:
    """Writes ``OUT/result.json`` (and the evaluation record into metrics.jsonl).

    Args:
        args: the parsed flags (``args.command``: the command line, if the caller set it).
        task: the application's name.
        training: `fit`'s summary.
        evaluation: the measured figures.
        target: ``{"metric": name, "threshold": x}`` (``met`` is added) or ``{}`` (no target).

    Returns:
        The result dict.
    """
    if target:
        target = {**target, "met": bool(evaluation[target["metric"]] >= target["threshold"])}
    result = {
        "task": task,
        "command": getattr(args, "command", None) or shlex.join(sys.argv),
        "seed": args.seed,
        "steps": args.steps,
        "training": training,
        "evaluation": evaluation,
        "target": target,
        "machine": {
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "jax": jax.__version__,
        },
    }
    MetricsLog(Path(args.out) / METRICS).write({"split": "test", **_flat(evaluation)})
    (Path(args.out) / "result.json").write_text(
        json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    )
    return result


def _flat(evaluation: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in evaluation.items() if isinstance(v, int | float | bool)}


__all__ = [
    "APPLICATION_CONFIG",
    "add_common_arguments",
    "batch_indices",
    "check_common",
    "fit",
    "params_digest",
    "shard_batch",
    "write_result",
]
