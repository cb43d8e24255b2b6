"""What the applications share: their command-line flags, a fit loop and the result files.

Every application trains with the library's own machinery — `rnnjax.train.make_train_step`
(jitted step, global-norm clipping, non-finite steps skipped), `reduce_steps` / `MetricsLog` /
`Progress` for the metrics and `Checkpointer` for the final state — and writes the same files::

    OUT/metrics.jsonl          training records every ``log_every`` steps, then the evaluation
    OUT/result.json            the measured result against the application's target
    OUT/checkpoints/<steps>/   the final `TrainState` (orbax)
    OUT/*.png                  figures (captioning, handwriting)

A loss for `fit` is ``loss(params, data, step, key) -> (loss, metrics)``: it draws batch
``step`` from ``data`` (arrays handed to the jitted step) with ``batch_indices``, so a run is
a deterministic function of its seed.
"""

from __future__ import annotations

import argparse
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
from rnnjax.train.checkpoint import Checkpointer
from rnnjax.train.metrics import MetricsLog, Progress, reduce_steps
from rnnjax.train.step import Objective, init_state, make_train_step

LossFn = Callable[[Any, Any, Array, Any], tuple[Array, dict[str, Array]]]


def add_common_arguments(
    parser: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float, hidden: int
) -> None:
    """The flags every application takes, with the application's defaults."""
    parser.add_argument("--steps", type=int, default=steps, help=f"training steps ({steps})")
    parser.add_argument("--out", required=True, help="run directory (new or empty)")
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
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def check_common(args: argparse.Namespace) -> None:
    """ValueError naming the first bad common flag; refuses a non-empty ``--out``."""
    for name in ("steps", "batch_size", "hidden", "log_every"):
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
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty directory; choose another")


def batch_indices(seed: int, step: Array, n: int, batch_size: int) -> Array:
    """Batch ``step``'s example indices: ``batch_size`` draws from [0, n) (traceable)."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    return jax.random.randint(key, (batch_size,), 0, n)  # (B,)


def fit(
    loss: LossFn,
    params: Any,
    data: Any,
    args: argparse.Namespace,
    *,
    label: str,
) -> tuple[Any, dict[str, Any]]:
    """Trains ``params`` for ``args.steps`` steps of Adam with a cosine-decayed step size.

    Args:
        loss: ``(params, data, step, key) -> (loss, metrics)``.
        params: initial parameters (any pytree, e.g. an ``nnx.State``).
        data: arrays the loss draws its batches from (passed to the jitted step).
        args: the parsed flags (`add_common_arguments`).
        label: the progress label.

    Returns:
        ``(params, summary)``: the trained params and the training summary (steps done,
        wall and CPU seconds, steps/s, the last training record).
    """
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    schedule = optax.warmup_cosine_decay_schedule(  # lr, cosine-decayed to lr / 20
        args.lr, args.lr, 1, max(args.steps, 1), end_value=0.05 * args.lr
    )
    optimizer = optax.chain(clip_by_global_norm_with_stats(args.clip), optax.adam(schedule))

    def objective_loss(params, carry, data, step, key):
        value, metrics = loss(params, data, step, key)
        return value, (carry, {"loss": value, **metrics})

    objective = Objective(objective_loss, lambda params: ())
    step_fn = jax.jit(make_train_step(objective, optimizer, seed=args.seed))
    state = init_state(params, optimizer, ())
    log = MetricsLog(out / "metrics.jsonl")
    n_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    log.write({"event": "start", "step": 0, "n_params": n_params, "argv": sys.argv[1:]})
    bar = Progress(args.steps, label, None if args.quiet else sys.stderr)
    limit = None if args.cpu_minutes is None else 60.0 * args.cpu_minutes
    buffer: list[dict] = []
    record: dict[str, Any] = {}
    t0 = t_log = time.perf_counter()
    cpu0 = time.process_time()
    step = 0
    try:
        while step < args.steps:
            state, metrics = step_fn(state, data)
            buffer.append(metrics)
            step += 1
            out_of_time = limit is not None and time.process_time() - cpu0 > limit
            if step % args.log_every == 0 or step == args.steps or out_of_time:
                record = reduce_steps(buffer)
                now = time.perf_counter()
                record.update(step=step, steps_per_s=len(buffer) / (now - t_log), time=now - t0)
                log.write(record)
                bar.update(step, record)
                buffer, t_log = [], now
            if out_of_time:
                break
    finally:
        bar.close()
    summary = {
        "steps_done": step,
        "stopped_by_cpu_limit": step < args.steps,
        "train_wall_s": round(time.perf_counter() - t0, 1),
        "train_cpu_s": round(time.process_time() - cpu0, 1),
        "n_params": n_params,
        "skipped_steps": int(state.skipped),
        "last_train_record": record,
    }
    checkpoints = Checkpointer(out / "checkpoints", keep=1)
    try:
        checkpoints.save(step, state)
    finally:
        checkpoints.close()
    return state.params, summary


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
    MetricsLog(Path(args.out) / "metrics.jsonl").write({"split": "test", **_flat(evaluation)})
    (Path(args.out) / "result.json").write_text(
        json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    )
    return result


def _flat(evaluation: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in evaluation.items() if isinstance(v, int | float | bool)}


__all__ = ["add_common_arguments", "batch_indices", "check_common", "fit", "write_result"]
