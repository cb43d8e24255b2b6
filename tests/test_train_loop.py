"""The training loop: metrics, keep-last-N checkpoints, exact resume, halting, bad input."""

import itertools
import json
import math
import shutil

import chex
import jax
import numpy as np
import pytest

from rnnjax.train import (
    RunConfig,
    TrainingHaltedError,
    read_metrics,
    restore_run,
    train,
)
from rnnjax.train.checkpoint import CHECKPOINTS, CONFIG

TINY_TASK = dict(task="adding", T=10, cell="lstm", hidden=8, batch_size=8, eval_size=64)


def _text_corpus(tmp_path):
    rng = np.random.default_rng(0)
    words = ["def", "class", "return", "the", "a", "of", "x", "=", "(", ")", ":", "\n"]
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(rng.choice(words, size=3000)), encoding="utf-8")
    return str(path)


def test_task_run_logs_checkpoints_and_refuses_bad_checkpoints(tmp_path):
    out = tmp_path / "run"
    config = RunConfig(
        **TINY_TASK, steps=20, log_every=5, checkpoint_every=5, eval_every=10, keep=2
    )
    summary = train(config, str(out), progress=None)
    assert summary["step"] == 20 and summary["skipped"] == 0
    records = read_metrics(out / "metrics.jsonl")
    steps = [r for r in records if "grad_norm" in r]
    assert [r["step"] for r in steps] == [5, 10, 15, 20]
    for r in steps:
        assert {"loss", "accuracy", "grad_norm", "clip_rate", "steps_per_s", "skipped"} <= set(r)
        assert 0.0 <= r["clip_rate"] <= 1.0 and math.isfinite(r["loss"])
    evals = [r for r in records if r.get("split") == "test"]
    assert [r["step"] for r in evals] == [10, 20]
    assert 0.0 <= evals[-1]["accuracy"] <= 1.0
    assert sorted(int(p.name) for p in (out / CHECKPOINTS).iterdir()) == [15, 20]  # keep 2

    config_bytes = (out / CONFIG).read_bytes()
    _, _, state, _ = restore_run(str(out))
    chex.assert_trees_all_equal(state.params, summary["state"].params)

    # a config whose model does not match the checkpoint: refused, nothing overwritten
    edited = json.loads(config_bytes)
    edited["hidden"] = 9
    (out / CONFIG).write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="does not match"):
        train(RunConfig(steps=30), str(out), resume=True, progress=None)
    (out / CONFIG).write_bytes(config_bytes)

    # a corrupted checkpoint: every array file of the latest one overwritten with garbage
    latest = out / CHECKPOINTS / "20"
    for f in latest.rglob("*"):
        if f.is_file() and "METADATA" not in f.name and f.stat().st_size > 0:
            f.write_bytes(b"\x00garbage" * 7)
    with pytest.raises(ValueError, match="corrupted or does not match"):
        train(RunConfig(steps=30), str(out), resume=True, progress=None)
    assert (out / CONFIG).read_bytes() == config_bytes
    assert sorted(int(p.name) for p in (out / CHECKPOINTS).iterdir()) == [15, 20]

    with pytest.raises(ValueError, match="already exists"):  # a new run never overwrites
        train(config, str(out), progress=None)


def test_text_run_resumes_exactly(tmp_path):
    """Resuming from the checkpoint of step 12 to step 24 gives, bit for bit, the state of the
    uninterrupted run (the BPTT carry and the dropout keys included)."""
    corpus = _text_corpus(tmp_path)
    config = RunConfig(
        corpus=corpus,
        cell="gru",
        hidden=8,
        layers=2,
        embed=4,
        batch_size=4,
        window=16,
        steps=24,
        log_every=4,
        checkpoint_every=12,
        eval_every=24,
        dropout=0.1,
    )
    full = train(config, str(tmp_path / "full"), progress=None)
    shutil.copytree(tmp_path / "full", tmp_path / "split")
    shutil.rmtree(tmp_path / "split" / CHECKPOINTS / "24")  # as if stopped after step 12
    resumed = train(RunConfig(steps=24), str(tmp_path / "split"), resume=True, progress=None)
    assert int(full["state"].step) == 24
    chex.assert_trees_all_equal(resumed["state"], full["state"])
    assert resumed["eval"] == full["eval"]
    events = [r.get("event") for r in read_metrics(tmp_path / "split" / "metrics.jsonl")]
    assert events.count("resume") == 1


def test_non_finite_training_stops_with_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "nan"
    config = RunConfig(
        task="adding",
        T=10,
        cell="simple_rnn",
        hidden=8,
        batch_size=8,
        optimizer="sgd",
        lr=1e30,
        clip=None,
        steps=50,
        log_every=1,
        checkpoint_every=1,
        max_bad_steps=3,
    )
    with pytest.raises(TrainingHaltedError, match="3 non-finite") as info:
        train(config, str(out), progress=None)
    steps = sorted(int(p.name) for p in (out / CHECKPOINTS).iterdir())
    assert f"step {steps[-1]}" in str(info.value)
    _, _, state, _ = restore_run(str(out))
    assert int(state.bad_run) == 0
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_time_limit_and_bad_settings(tmp_path):
    config = RunConfig(**TINY_TASK, steps=10**6, log_every=5)
    ticks = itertools.count()  # a clock that advances 1 s per reading: no wall-clock budget
    summary = train(
        config, str(tmp_path / "t"), progress=None, time_limit=2.5, clock=ticks.__next__
    )
    # read by the progress bar (0), at the start (1), at steps 5, 10, 15 (2, 3, 4): 4 - 1 > 2.5
    assert summary["step"] == 15
    assert summary["eval"]  # evaluated and checkpointed at the stop
    assert (tmp_path / "t" / CHECKPOINTS / str(summary["step"])).is_dir()
    for bad, match in [
        (dict(TINY_TASK, T=0), "T must be"),
        (dict(TINY_TASK, hidden=0), "hidden must be"),
        (dict(TINY_TASK, cell="transformer"), "unknown cell"),
        (dict(TINY_TASK, task="sorting"), "unknown task"),
        (dict(TINY_TASK, corpus="default"), "exactly one"),
        (dict(TINY_TASK, batch_size=6, omega=1.0, layers=2), "one recurrent layer"),
    ]:
        with pytest.raises(ValueError, match=match):
            train(RunConfig(**bad), str(tmp_path / "bad"), progress=None)
    assert not (tmp_path / "bad" / CONFIG).exists()
    with pytest.raises(ValueError, match="does not exist"):
        train(RunConfig(), str(tmp_path / "missing"), resume=True, progress=None)
