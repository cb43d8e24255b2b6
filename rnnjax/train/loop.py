"""The training loop: set up a run from its `RunConfig`, train, evaluate, checkpoint, resume.

::

    config = RunConfig(task="adding", T=100, cell="lstm", steps=2000)
    summary = train(config, "runs/adding-lstm")             # new run
    summary = train(RunConfig(steps=4000), "runs/adding-lstm", resume=True)   # continue it

Guarantees:

- Resume is exact: the state (params, optimiser state, BPTT carry, counters) is checkpointed
  whole, and the batch of every step depends on ``(seed, step)`` only, so a run killed at any
  moment and resumed ends with the same parameters as one that was never interrupted (same
  machine, same seed; tests/test_train_resume.py kills one with SIGKILL).
- Non-finite loss or gradient: the step is skipped and counted; ``max_bad_steps`` of them in a
  row stop training with `TrainingHaltedError`, and no checkpoint is written after the last good
  step, so the latest checkpoint holds good parameters.
- Data parallel over every device (`rnnjax.train.parallel`); the batch must divide evenly.
- Nothing is written before every check has passed, the step included (it is compiled
  first); a text run records its corpus's absolute path and SHA-256, and a resume on a
  changed corpus is refused.
- Interruption (``stop``, e.g. SIGINT / SIGTERM through `rnnjax.train.interrupt`): the
  current step finishes, is logged and checkpointed, orbax is closed; a resumed run drops the
  log records after its checkpoint, so ``metrics.jsonl`` holds every step once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import jax
import numpy as np
from jax.sharding import Mesh

from rnnjax.data.tasks import Task, make_task
from rnnjax.data.text import (
    DEFAULT_CORPUS,
    TextData,
    Vocab,
    load_corpus,
    num_windows,
    prepare_text,
)
from rnnjax.regularise import regularised
from rnnjax.train import parallel
from rnnjax.train.checkpoint import RunDir
from rnnjax.train.config import RunConfig
from rnnjax.train.evaluate import task_evaluator, text_evaluator
from rnnjax.train.metrics import MetricsLog, Progress, reduce_steps
from rnnjax.train.model import Model, build_cells, char_model, task_model
from rnnjax.train.step import (
    Objective,
    TrainState,
    init_state,
    make_optimizer,
    make_train_step,
    omega_schedule,
    task_objective,
    text_objective,
)


class TrainingHaltedError(RuntimeError):
    """Too many non-finite steps in a row; the message says which checkpoint is intact."""


class Setup(NamedTuple):
    """Everything built from a config: model, objective, optimiser, data, evaluator."""

    config: RunConfig
    model: Model
    objective: Objective
    optimizer: Any
    data: Any  # the training streams (B, N) of a text run, None for a task
    task: Task | None
    text: TextData | None
    evaluate: Any


def regularisation(config: RunConfig) -> dict[str, Any]:
    """The `rnnjax.regularised` options of a run ({} when all are off)."""
    z = config.zoneout
    rates: dict[str, Any] = dict(
        input_dropout=config.input_dropout,
        recurrent_dropout=config.recurrent_dropout,
        zoneout_h=z,
        zoneout_c=z,
        weight_drop=config.weight_drop,
    )
    return rates if any(v > 0 for v in rates.values()) else {}


def build_model(config: RunConfig, vocab_size: int | None = None) -> tuple[Model, Task | None]:
    """The model a (resolved) config describes, and its task (None for a text run)."""
    cells = build_cells(config.cell, config.hidden, config.layers, config.init, config.forget_bias)
    if regularisation(config):
        cells = [regularised(c, **regularisation(config)) for c in cells]
    if config.task is not None:
        task = make_task(config.task, config.T, config.definition)
        return task_model(task, cells, backend=config.backend, init=config.init), task
    if vocab_size is None:
        raise ValueError("a text model needs the vocabulary size")
    return char_model(vocab_size, cells, config.embed, config.dropout, config.backend), None


def _optimizer(config: RunConfig):
    return make_optimizer(
        config.optimizer, config.lr, config.clip, config.momentum, config.lr_decay
    )


def setup(
    config: RunConfig,
    vocab: Vocab | None = None,
    text: str | None = None,
    mesh: Mesh | None = None,
) -> Setup:
    """Builds a run's pieces (ValueError for bad settings or a bad corpus).

    Args:
        config: the run's config (resolved here).
        vocab: the vocabulary of a resumed text run.
        text: the corpus text, if already loaded (default: read ``config.corpus``).
        mesh: the device mesh of a data-parallel run (task batches are split over it).
    """
    config = config.resolved()
    optimizer = _optimizer(config)
    omega = omega_schedule(config.omega, config.omega_decay)
    if config.task is not None:
        model, task = build_model(config)
        assert task is not None
        shard = None
        if mesh is not None:
            rows = parallel.batch_sharded(mesh)
            shard = partial(jax.lax.with_sharding_constraint, shardings=rows)
        objective = task_objective(model, task, config.batch_size, omega, shard)
        evaluate = task_evaluator(model, task, config.seed, config.eval_size)
        return Setup(config, model, objective, optimizer, None, task, None, evaluate)
    assert config.corpus is not None
    data = prepare_text(
        load_corpus(config.corpus) if text is None else text,
        config.batch_size,
        config.window,
        config.val_fraction,
        vocab,
    )
    model, _ = build_model(config, data.vocab.size)
    n = num_windows(data.train, config.window)
    objective = text_objective(model, config.batch_size, config.window, n, omega)
    evaluate = text_evaluator(model, data.val, config.window)
    return Setup(config, model, objective, optimizer, data.train, None, data, evaluate)


def restore_run(out: str) -> tuple[RunConfig, Model, TrainState, Vocab | None]:
    """Loads a run's config, model and latest training state (for sampling and analysis).

    Only JSON and arrays are read; the corpus is not needed. ValueError for a missing run
    directory, a run without checkpoints or a checkpoint that does not fit the config.
    """
    run = RunDir(out)
    config = run.read_config()
    vocab = run.read_vocab() if config.task is None else None
    model, task = build_model(config, None if vocab is None else vocab.size)
    params = model.init(jax.random.key(config.seed))
    carry = () if task is not None else model.initial_carry(params, (config.batch_size,))
    with run.checkpointer(config.keep, create=False) as checkpoints:
        if checkpoints.latest_step() is None:
            raise ValueError(f"run {out} has no checkpoint yet")
        state = checkpoints.restore(init_state(params, _optimizer(config), carry))
    return config, model, state, vocab


def count_params(params: Any) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def corpus_digest(text: str) -> str:
    """The SHA-256 of a corpus's UTF-8 bytes (recorded in config.json, checked on resume)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _corpus(config: RunConfig, text: str | None, out: str, resume: bool) -> tuple[RunConfig, str]:
    """The corpus text and the config recording its absolute path and content hash.

    On resume the recorded hash (if any) must match: resuming on other data is not exact.
    """
    assert config.corpus is not None
    if text is None:
        try:
            text = load_corpus(config.corpus)
        except ValueError as err:
            if not resume:
                raise
            raise ValueError(f"cannot resume run {out}: {err}") from None
    corpus = config.corpus
    if corpus != DEFAULT_CORPUS:
        corpus = str(Path(corpus).absolute())
    digest = corpus_digest(text)
    if resume and config.corpus_sha256 not in (None, digest):
        raise ValueError(
            f"the corpus {corpus} has changed since run {out} started (sha256 {digest[:12]}... "
            f"now, {config.corpus_sha256[:12]}... recorded): resuming on other data would not "
            f"be exact; restore the file or start a new run"
        )
    return dataclasses.replace(config, corpus=corpus, corpus_sha256=digest), text


class TrainingInterruptedError(Exception):
    """A signal stopped the run before its first step (nothing was written)."""


class RunInterruptedError(Exception):
    """A stop request ended a run after a step (an application's; see `run_loop`).

    Attributes:
        step: the last step run.
        checkpoint: the step of the newest checkpoint (None: none written).
        directory: where the checkpoints are.
    """

    def __init__(self, step: int, checkpoint: int | None, directory: str):
        super().__init__(f"interrupted after step {step}; checkpoint {checkpoint} in {directory}")
        self.step, self.checkpoint, self.directory = step, checkpoint, directory


def _check_platform(config: RunConfig) -> None:
    if config.backend == "pallas" and jax.default_backend() == "cpu":
        raise ValueError(
            "backend 'pallas' needs a GPU or TPU: on the CPU it runs in Pallas's interpret "
            "mode, hundreds of times slower than 'scan'; use --backend scan, fused or auto"
        )


def train(
    config: RunConfig,
    out: str,
    *,
    resume: bool = False,
    devices: Sequence[jax.Device] | None = None,
    progress: TextIO | None = sys.stderr,
    text: str | None = None,
    time_limit: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) the run in directory ``out``.

    Everything that can be checked is checked before anything is written: the settings, the
    run directory (new and writable, or an existing run), the corpus, the checkpoint to
    resume from and the jitted step itself (traced and compiled) — a rejected run leaves no
    directory behind.

    Args:
        config: the run's settings. With ``resume`` only ``steps`` is read from it (when set):
            the rest comes from the run's own config.json.
        out: the run directory (must be new or empty unless ``resume``).
        resume: continue from the latest checkpoint in ``out``.
        devices: the devices to shard the batch over (default: all).
        progress: where the progress bar goes (None: silent).
        text: the corpus text, if already loaded.
        time_limit: stop (checkpoint and evaluate) at the first log point after this many
            seconds of training, even before ``config.steps`` (a fixed time budget).
        clock: the clock of ``time_limit``: wall time by default; ``time.process_time``
            counts the CPU time of this process instead (a CPU budget that load from other
            processes does not shrink).
        stop: polled after every step (e.g. a `rnnjax.train.interrupt.StopRequest`): when it
            returns True the run finishes that step, logs it, writes a checkpoint and returns
            with ``summary["interrupted"]`` set, without the final evaluation.

    Returns:
        A summary: ``step`` (the last step), ``steps_run`` (this call), the last training
        record, the final evaluation, ``n_params``, ``steps_per_s`` (None if no step ran),
        ``wall_s``, ``interrupted`` and the final ``state``.

    Raises:
        ValueError: bad settings, corpus, run directory or checkpoint (nothing is written), a
            changed corpus on resume, or a file that cannot be written.
        TrainingHaltedError: after ``max_bad_steps`` non-finite steps in a row.
        TrainingInterruptedError: ``stop`` fired before the first step (nothing is written).
    """
    run = RunDir(out)
    primary = jax.process_index() == 0  # several hosts: one writes the files, all train
    # 1. checks: nothing is written until all of them pass
    vocab = None
    if resume:
        saved = run.read_config()
        config = RunConfig(**{**saved.__dict__, "steps": config.steps or saved.steps}).resolved()
        if saved.corpus is not None:
            vocab = run.read_vocab()
    else:
        config = config.resolved()
        if primary:
            run.check_new()
    _check_platform(config)
    if config.kind == "text":
        config, text = _corpus(config, text, out, resume)
    mesh = parallel.make_mesh(devices)
    s = setup(config, vocab, text, mesh)
    config = s.config
    step_fn, state, data, shardings = sharded_step(s, mesh)
    if resume:
        with run.checkpointer(config.keep, create=False) as saved_checkpoints:
            if saved_checkpoints.latest_step() is not None:
                state = parallel.place(saved_checkpoints.restore(state), shardings)
    start = int(state.step)
    if start >= config.steps:
        raise ValueError(
            f"run {out} is already at step {start} >= steps={config.steps}; pass a larger "
            f"--steps to continue it"
        )
    compiled = step_fn.lower(state, data).compile()  # tracing errors surface here
    if stop is not None and stop():
        raise TrainingInterruptedError(f"interrupted before the first step; {out} not written")
    # 2. the run directory
    log = MetricsLog(run.metrics_path)
    if primary:
        run.write_config(config, s.text.vocab if s.text is not None else None)
        if resume:
            log.truncate(start)  # the steps after the checkpoint are replayed: log them once
    checkpoints = run.checkpointer(config.keep)
    n_params = count_params(state.params)
    budget = None if time_limit is None else (time_limit, clock)
    progress = progress if primary else None
    extra: dict[str, Any] = dict(progress=progress, n_params=n_params, budget=budget, stop=stop)
    return run_loop(
        loop_settings(config), state, compiled, data, checkpoints, log, s.evaluate, **extra
    )


def sharded_step(s: Setup, mesh: Mesh) -> tuple[Any, TrainState, Any, TrainState]:
    """The jitted train step over ``mesh`` with the initial state and the data placed on it.

    Parameters and optimiser state are replicated; the BPTT carry and the text streams are
    split by rows (batch), and task batches are split inside the step (see `setup`).

    Returns:
        ``(step, state, data, shardings)``: ``step(state, data) -> (state, metrics)`` jitted
        with those shardings, the initial `TrainState`, the data and the state's shardings.
    """
    config = s.config
    parallel.check_batch(config.batch_size, mesh)
    rep, rows = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    params = s.model.init(jax.random.key(config.seed))
    shardings = TrainState._make([rep, rep, rep, rows, rep, rep])
    state = init_state(params, s.optimizer, s.objective.initial_carry(params))
    state = parallel.place(state, shardings)
    if config.kind == "text":
        data = parallel.shard_rows(s.data, mesh)
    else:
        data = parallel.place(jax.random.key(config.seed), rep)
    step_fn = make_train_step(
        s.objective,
        s.optimizer,
        seed=config.seed,
        max_bad_steps=config.max_bad_steps,
        dropout=bool(config.dropout) or bool(regularisation(config)),
    )
    in_shardings = (shardings, rows if config.kind == "text" else rep)  # streams or seed key
    jitted = jax.jit(step_fn, in_shardings=in_shardings, out_shardings=(shardings, rep))
    return jitted, state, data, shardings


class LoopSettings(NamedTuple):
    """How `run_loop` drives a run (a `RunConfig` gives them for tasks and text, an
    application its own flags).

    Attributes:
        steps: the last step.
        log_every, checkpoint_every: steps between metrics records / checkpoints.
        eval_every: steps between evaluations (None: only `run_loop`'s caller evaluates).
        max_bad_steps: non-finite steps in a row that halt the run.
        label: the progress label.
        split: the name of the evaluation records' split ("val", "test").
    """

    steps: int
    log_every: int
    checkpoint_every: int
    eval_every: int | None
    max_bad_steps: int
    label: str
    split: str = "val"


def loop_settings(config: RunConfig) -> LoopSettings:
    """The `LoopSettings` of a (resolved) task or text run."""
    return LoopSettings(
        config.steps,
        config.log_every,
        config.checkpoint_every,
        config.eval_every,
        config.max_bad_steps,
        config.cell,
        "test" if config.task is not None else "val",
    )


def _check_halted(state: TrainState, step: int, max_bad_steps: int, checkpoints) -> None:
    bad_run = int(state.bad_run)
    if bad_run < max_bad_steps:
        return
    last = checkpoints.latest_step()
    where = f"step {last} in {checkpoints.directory}" if last is not None else "none was written"
    raise TrainingHaltedError(
        f"training stopped at step {step - bad_run}: {bad_run} non-finite losses or gradients "
        f"in a row (max_bad_steps={max_bad_steps}); last good checkpoint: {where}"
    )


def run_loop(
    settings: LoopSettings,
    state: TrainState,
    step_fn: Callable[[TrainState, Any], tuple[TrainState, dict]],
    data: Any,
    checkpoints,
    log: MetricsLog,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    progress: TextIO | None = None,
    n_params: int = 0,
    budget: tuple[float, Callable[[], float]] | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """The training loop of every run: steps, metrics, checkpoints, evaluations, stops.

    Runs ``step_fn(state, data)`` from ``state.step`` to ``settings.steps``. Every
    ``log_every`` steps (and at checkpoints, evaluations and the end) the buffered step metrics
    are reduced into one ``metrics.jsonl`` record and the progress display; every
    ``checkpoint_every`` steps and at the end the state is saved, unless its last step was
    non-finite; ``max_bad_steps`` non-finite steps in a row raise `TrainingHaltedError`.

    Args:
        settings: the `LoopSettings`.
        state: the `TrainState` to start from (a fresh or a restored one).
        step_fn: the compiled train step.
        data: its second argument (streams, a seed key, an application's arrays).
        checkpoints: a `rnnjax.train.checkpoint.Checkpointer` (closed at the end).
        log: the run's `MetricsLog`.
        evaluate: ``params -> record`` every ``eval_every`` steps and at the end (None: none).
        progress: the progress stream (None: silent).
        n_params: the parameter count (logged).
        budget: ``(seconds, clock)``: stop at the first log point past the budget.
        stop: polled after every step: True finishes the step, checkpoints and returns.

    Returns:
        The summary: ``step``, ``steps_run``, ``train`` (the last record), ``eval``,
        ``n_params``, ``skipped``, ``steps_per_s``, ``wall_s``, ``interrupted``,
        ``stopped_by_budget``, ``checkpoint`` (the newest saved step) and ``state``.
    """
    start = int(state.step)
    total = settings.steps
    limit, clock = budget if budget is not None else (None, None)
    bar = Progress(total, settings.label, progress, start, limit, clock or time.perf_counter)
    log.write({"event": "resume" if start else "start", "step": start, "n_params": n_params})
    buffer: list[dict] = []
    record: dict[str, Any] = {}
    t0 = t_log = time.perf_counter()
    c0 = clock() if clock is not None else 0.0
    step, train_time, interrupted, out_of_budget = start, 0.0, False, False
    saved = checkpoints.latest_step()  # the step of the newest checkpoint
    evaluation: dict[str, float] = {}
    every = settings.eval_every
    try:
        while step < total:
            state, metrics = step_fn(state, data)
            buffer.append(metrics)
            step += 1
            at_log = step % settings.log_every == 0
            if clock is not None and limit is not None and at_log:
                jax.block_until_ready(state)  # the steps dispatched so far count, not just queued
                if clock() - c0 > limit:
                    total, out_of_budget = step, True  # the time budget is spent: stop here
            if stop is not None and stop():
                total, interrupted = step, True  # finish this step, checkpoint, leave
            at_end = step == total and not interrupted
            do_eval = evaluate is not None and ((every and step % every == 0) or at_end)
            do_save = step % settings.checkpoint_every == 0 or step == total
            if step % settings.log_every == 0 or do_eval or do_save:
                record = reduce_steps(buffer)  # waits for the buffered steps
                now = time.perf_counter()  # the step is compiled already: every interval counts
                train_time += now - t_log
                record.update(step=step, steps_per_s=len(buffer) / (now - t_log), time=now - t0)
                log.write(record)
                bar.update(step, record)
                buffer = []
                _check_halted(state, step, settings.max_bad_steps, checkpoints)
                if do_save and int(state.bad_run) == 0:
                    checkpoints.save(step, state)
                    saved = step
                if do_eval:
                    assert evaluate is not None
                    evaluation = evaluate(state.params)
                    log.write({"split": settings.split, "step": step, **evaluation})
                t_log = time.perf_counter()  # evaluation and saving are not training time
    finally:
        try:  # no computation may outlive the loop (XLA torn down under it crashes)
            jax.block_until_ready(state)
        finally:
            bar.close()
            checkpoints.close()
    ran = step - start
    return {
        "step": step,
        "steps_run": ran,
        "train": record,
        "eval": evaluation,
        "n_params": n_params,
        "skipped": int(state.skipped),
        "steps_per_s": ran / train_time if ran and train_time > 0 else None,
        "wall_s": time.perf_counter() - t0,
        "interrupted": interrupted,
        "stopped_by_budget": out_of_budget,
        "checkpoint": saved,
        "state": state,
    }


__all__ = [
    "LoopSettings",
    "RunInterruptedError",
    "Setup",
    "TrainingHaltedError",
    "TrainingInterruptedError",
    "build_model",
    "corpus_digest",
    "count_params",
    "loop_settings",
    "restore_run",
    "run_loop",
    "setup",
    "sharded_step",
    "train",
]
