"""Interrupting a run: SIGINT / SIGTERM finish the step, write a checkpoint, close orbax and exit
with 128 + the signal (never a crash), and a resumed run logs every step exactly once."""

import contextlib
import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import chex
import pytest

from rnnjax.train import RunConfig, read_metrics, train
from rnnjax.train.checkpoint import CHECKPOINTS

TINY = dict(task="adding", T=10, cell="lstm", hidden=8, batch_size=8, log_every=5, eval_size=32)
SEED = 20240611  # the random moments of the signals; change it to explore others


def _training_steps(out: Path) -> list[int]:
    return [
        r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r and "split" not in r
    ]


def _checkpoints(out: Path) -> list[int]:
    folder = out / CHECKPOINTS
    return (
        sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    )


class StopAfter:
    """A stop request that fires at its n-th poll (`train` polls once before writing, then
    once after every step)."""

    def __init__(self, n: int):
        self.n, self.polls = n, 0

    def __call__(self) -> bool:
        self.polls += 1
        return self.polls >= self.n


def test_stop_checkpoints_the_step_and_resume_logs_each_step_once(tmp_path):
    config = RunConfig(**TINY, steps=40, checkpoint_every=100, eval_every=100)
    out = tmp_path / "stopped"
    summary = train(config, str(out), progress=None, stop=StopAfter(1 + 13))
    assert summary["interrupted"] and summary["step"] == 13 and summary["checkpoint"] == 13
    assert _checkpoints(out) == [13]  # written although checkpoint_every is 100
    assert _training_steps(out) == [5, 10, 13] and not summary["eval"]  # no final evaluation
    resumed = train(RunConfig(), str(out), resume=True, progress=None)
    assert not resumed["interrupted"] and resumed["steps_run"] == 27
    steps = _training_steps(out)
    assert steps == sorted(set(steps)) == [5, 10, 13, 15, 20, 25, 30, 35, 40]
    reference = train(config, str(tmp_path / "whole"), progress=None)
    chex.assert_trees_all_equal(resumed["state"].params, reference["state"].params)


def test_stop_before_the_first_step_writes_nothing(tmp_path):
    from rnnjax.train import TrainingInterruptedError

    out = tmp_path / "never"
    with pytest.raises(TrainingInterruptedError, match="before the first step"):
        train(RunConfig(**TINY, steps=10), str(out), progress=None, stop=lambda: True)
    assert not out.exists()


def test_resume_drops_the_log_records_after_its_checkpoint(tmp_path):
    """A run killed after logging steps beyond its last checkpoint replays them on resume."""
    out = tmp_path / "killed"
    train(RunConfig(**TINY, steps=20, checkpoint_every=10), str(out), progress=None)
    # as if killed at step 20 before its checkpoint: drop checkpoint 20, keep its log lines
    import shutil

    shutil.rmtree(out / CHECKPOINTS / "20")
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2')  # and a torn last line
    train(RunConfig(steps=20), str(out), resume=True, progress=None)
    assert _training_steps(out) == [5, 10, 15, 20]
    events = [r["event"] for r in read_metrics(out / "metrics.jsonl") if "event" in r]
    assert events == ["start", "resume"]


def _handler_installed(pid: int) -> bool:
    """Whether the process catches SIGTERM yet (the CLI's handler is in place)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(
        next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16
    )
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _start(out: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "rnnjax.cli", "train", "--task", "adding", "--T", "10",
            "--hidden", "8", "--batch-size", "8", "--steps", "1000000", "--log-every", "5",
            "--checkpoint-every", "1000000", "--eval-every", "1000000", "--eval-size", "32",
            "--out", str(out), "--quiet"]  # fmt: skip
    # SIGINT as a terminal delivers it (a job started in the background may inherit it ignored)
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.slow
@pytest.mark.parametrize(
    "trial,signals",
    [(0, (signal.SIGINT,)), (1, (signal.SIGTERM,)), (2, (signal.SIGINT, signal.SIGINT))],
)
def test_real_signals_at_random_moments(tmp_path, trial, signals):
    """The signal lands at a seeded random moment after the handler is installed: during
    setup or compilation (nothing written), or during training (checkpoint of the last step).
    A second signal exits at once. Never a crash, a traceback, or a lost step."""
    rng = random.Random(SEED + trial)
    out = tmp_path / "run"
    proc = _start(out)
    try:
        while not _handler_installed(proc.pid):
            assert proc.poll() is None, proc.communicate()
        wait_for = rng.uniform(0.0, 8.0)
        with contextlib.suppress(subprocess.TimeoutExpired):  # the moment, from the handler
            proc.communicate(timeout=wait_for)
        for signum in signals:
            proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signals[0], (proc.returncode, stderr)
    assert "Traceback" not in stderr and "Fatal" not in stderr and "Event loop" not in stderr
    if len(signals) > 1:  # left at once: whatever checkpoint exists is whole, and resumes
        if (out / "config.json").is_file():
            resumed = subprocess.run(
                [sys.executable, "-m", "rnnjax.cli", "train", "--out", str(out), "--resume",
                 "--steps", str(max(_checkpoints(out), default=0) + 5), "--quiet"],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert resumed.returncode == 0, resumed.stderr
        return
    if not out.exists():  # before the first step: one line, nothing written
        assert "interrupted before the first step" in stderr, stderr
        return
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted by SIG" in lines[0], stderr
    step = int(lines[0].split("after step ")[1].split(";")[0])
    assert _checkpoints(out) == [step] and f"checkpoint at step {step}" in lines[0]
    assert _training_steps(out)[-1] == step  # logged, so nothing is lost
    record = json.loads((out / "config.json").read_text())
    assert record["steps"] == 1000000
