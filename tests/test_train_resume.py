"""A run killed with SIGKILL at a random step and resumed ends with exactly the parameters of an
uninterrupted run (same machine, same seed): compared bit for bit."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import chex

from rnnjax.train import RunConfig, read_metrics, train
from rnnjax.train.checkpoint import CHECKPOINTS

FLAGS = dict(
    task="adding",
    T=10,
    cell="lstm",
    hidden=8,
    batch_size=8,
    steps=2000,
    checkpoint_every=100,
    log_every=25,
    eval_every=10**6,
    eval_size=64,
)


def _cli_args(out):
    args = [sys.executable, "-m", "rnnjax.cli", "train", "--out", str(out), "--quiet"]
    for key, value in FLAGS.items():
        args += [f"--{key.replace('_', '-')}" if key != "T" else "--T", str(value)]
    return args


def _finished_checkpoints(out):
    folder = out / CHECKPOINTS
    return [p for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []


def _logged_step(out):
    """The last training step in the metrics log (a line still being written is skipped)."""
    path = out / "metrics.jsonl"
    steps = [0]
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                steps.append(int(json.loads(line).get("step", 0)))
            except (ValueError, AttributeError):
                continue
    return max(steps)


def test_sigkill_at_a_random_step_then_resume_is_exact(tmp_path):
    out = tmp_path / "killed"
    # a random step after the first checkpoint and well before the end, however fast the machine
    target = random.randrange(FLAGS["checkpoint_every"] + 1, FLAGS["steps"] // 3)
    proc = subprocess.Popen(_cli_args(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (_finished_checkpoints(out) and _logged_step(out) >= target):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, f"step {target} not reached within 4 minutes"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    resumed = train(RunConfig(), str(out), resume=True, progress=None)
    start = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "resume"]
    assert len(start) == 1 and 0 < start[0]["step"] < FLAGS["steps"]
    reference = train(RunConfig(**FLAGS), str(tmp_path / "uninterrupted"), progress=None)
    assert int(resumed["state"].step) == FLAGS["steps"]
    chex.assert_trees_all_equal(resumed["state"].params, reference["state"].params)
    chex.assert_trees_all_equal(resumed["state"].opt_state, reference["state"].opt_state)
