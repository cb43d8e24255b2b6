"""A run killed with SIGKILL at a random (seeded) step and resumed ends with exactly the
parameters of an uninterrupted run (same machine, same seed), compared bit for bit, and its
metrics log holds every step once.

The process kills itself from the loop's ``stop`` hook, so the step of the kill is chosen by
the seed, not by how fast the machine happens to be."""

import json
import random
import signal
import subprocess
import sys

import chex
import pytest

from rnnjax.train import RunConfig, read_metrics, train

FLAGS = dict(
    task="adding",
    T=10,
    cell="lstm",
    hidden=8,
    batch_size=8,
    steps=600,
    checkpoint_every=100,
    log_every=25,
    eval_every=10**6,
    eval_size=64,
)
SEED = 7  # picks the step of the kill

KILLED_RUN = """
import json, os, signal, sys
from rnnjax.train import RunConfig, train

flags, out, kill_at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
polls = []

def stop():  # polled once before anything is written, then after every step
    polls.append(None)
    if len(polls) == 1 + kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind
    return False

train(RunConfig(**flags), out, progress=None, stop=stop)
"""


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_exact(tmp_path):
    out = tmp_path / "killed"
    # between two checkpoints, after at least one log point that the resumed run replays
    rng = random.Random(SEED)
    every = FLAGS["checkpoint_every"]
    kill_at = every * rng.randrange(1, 3) + rng.randrange(FLAGS["log_every"], every)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, json.dumps(FLAGS), str(out), str(kill_at)],
        capture_output=True,
        text=True,
        timeout=1800,  # a guard against a hang only
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    logged = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "grad_norm" in r]
    checkpoint = kill_at - kill_at % every
    assert logged[-1] > checkpoint  # steps after the last checkpoint were logged, then lost

    resumed = train(RunConfig(), str(out), resume=True, progress=None)
    records = read_metrics(out / "metrics.jsonl")
    start = [r for r in records if r.get("event") == "resume"]
    assert len(start) == 1 and start[0]["step"] == checkpoint
    steps = [r["step"] for r in records if "loss" in r and "split" not in r]
    assert steps == sorted(set(steps)) and steps[-1] == FLAGS["steps"]  # each step logged once
    reference = train(RunConfig(**FLAGS), str(tmp_path / "uninterrupted"), progress=None)
    assert int(resumed["state"].step) == FLAGS["steps"]
    chex.assert_trees_all_equal(resumed["state"].params, reference["state"].params)
    chex.assert_trees_all_equal(resumed["state"].opt_state, reference["state"].opt_state)
