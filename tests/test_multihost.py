"""Multi-process training on one machine: ``rnnjax train --distributed``, 2 processes on localhost.

Each process is a separate ``python -m rnnjax.cli train --distributed ...`` with its own CPU
devices (``XLA_FLAGS=--xla_force_host_platform_device_count``); they meet through
``jax.distributed`` (the coordination service on a free localhost port) and exchange gradients
through gloo over TCP, exactly as processes on several hosts would. Checked, on a task and on
the embedded corpus:

- the final parameters equal a single-process run with the same global batch (float32
  rounding: rtol 1e-5 / atol 1e-6, the gradient is summed in another order);
- process 0 alone writes config.json, vocab.json and metrics.jsonl (an audit hook records the
  files each process opens for writing), every metrics record appears once;
- every process writes its part of each checkpoint (orbax's per-process files; the text run's
  BPTT carry is split by rows, so rows of process 1 come back only if it wrote them);
- ``--resume`` continues exactly: killed with SIGKILL and resumed, the run ends bit for bit
  where an uninterrupted 2-process run ends;
- killing one process ends the other with one clear line (exit status 1) naming the last good
  checkpoint, within a generous "no hang" bound, and that checkpoint resumes (with 2
  processes, and with 1: a checkpoint holds global arrays).

The runs of a test share JAX's persistent compilation cache (time only: the same programs run).
About 3 minutes of CPU in all (``time pytest tests/test_multihost.py``): one to two minutes on
an otherwise idle 2-core machine.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from rnnjax.cli import TRAIN_FLAGS, build_parser, main
from rnnjax.train import RunConfig, read_metrics, train
from rnnjax.train.checkpoint import CHECKPOINTS, RunDir

ROOT = Path(__file__).resolve().parents[1]
NO_HANG = 600  # seconds: generous bounds, never a speed claim (the machine is shared)

# The README's local multi-process command; the task test runs exactly these flags.
README_COMMAND = """\
for i in 0 1; do
  XLA_FLAGS=--xla_force_host_platform_device_count=1 \\
  rnnjax train --task adding --T 10 --hidden 8 --batch-size 8 --steps 60 --checkpoint-every 20 \\
      --eval-size 64 --out runs/two --distributed --coordinator localhost:12345 \\
      --num-processes 2 --process-id $i &
done; wait
"""
TEXT_FLAGS = (
    "--corpus default --cell gru --hidden 8 --embed 4 --batch-size 8 --window 8 "
    "--steps 12 --checkpoint-every 6 --log-every 3"
)
LAUNCH = {"--out", "--coordinator", "--num-processes", "--process-id"}  # set per run


def readme_flags() -> list[str]:
    """The training flags of `README_COMMAND` (without the per-process launch flags)."""
    command = README_COMMAND.replace("\\\n", " ")
    words = shlex.split(command[command.index("rnnjax train") : command.index("&")])[2:]
    flags, i = [], 0
    while i < len(words):
        if words[i] in LAUNCH:
            i += 2
        elif words[i] == "--distributed":
            i += 1
        else:
            flags.append(words[i])
            i += 1
    return flags


# Records, for each process, the files it opens for writing under the watched directory
# (Python-level opens: config, vocab, metrics and orbax's small metadata files; not the
# checkpoint arrays, which tensorstore writes from C++).
AUDIT = textwrap.dedent(
    """
    import os, sys
    _watch, _log = os.environ.get("RNNJAX_WATCH"), os.environ.get("RNNJAX_WRITES")
    if _watch and _log:
        _watch = os.path.realpath(_watch) + os.sep
        _write = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT

        def _hook(event, args):
            if event != "open" or not isinstance(args[0], (str, os.PathLike)):
                return
            if not (args[2] or 0) & _write and not any(c in (args[1] or "") for c in "wax+"):
                return
            path = os.path.realpath(args[0])
            if path.startswith(_watch):
                fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                os.write(fd, (path[len(_watch):] + "\\n").encode())
                os.close(fd)

        sys.addaudithook(_hook)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class Processes:
    """The processes of one multi-process run, their logs and the files each one wrote."""

    def __init__(self, tmp: Path, name: str, flags: list[str], out: Path, devices: int, n=2):
        hook = tmp / "audit"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(AUDIT)
        self.logs = [tmp / f"{name}-{i}.log" for i in range(n)]
        self.writes = [tmp / f"{name}-{i}.writes" for i in range(n)]
        port = _free_port()
        pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        self.procs = []
        for i in range(n):
            env = dict(
                os.environ,
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_PLATFORMS="cpu",
                PYTHONPATH=os.pathsep.join([str(hook), str(ROOT), *pythonpath]),
                # compiled programs are shared between the runs of a test (process 0 writes
                # them); this saves time only, the programs are the same
                JAX_COMPILATION_CACHE_DIR=str(tmp / "jax-cache"),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                RNNJAX_WATCH=str(out),
                RNNJAX_WRITES=str(self.writes[i]),
            )
            args = [sys.executable, "-m", "rnnjax.cli", "train", *flags, "--out", str(out)]
            args += ["--distributed", "--coordinator", f"localhost:{port}"]
            args += ["--num-processes", str(n), "--process-id", str(i)]
            with self.logs[i].open("w") as log:
                self.procs.append(
                    subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
                )

    def log(self, i: int) -> str:
        return self.logs[i].read_text()

    def written(self, i: int) -> set[str]:
        path = self.writes[i]
        return set(path.read_text().split()) if path.exists() else set()

    def wait(self, timeout: float = NO_HANG) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in self.procs]
        finally:
            self.kill()

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def check_ok(self) -> None:
        codes = self.wait()
        assert codes == [0] * len(codes), "\n\n".join(
            self.log(i)[-3000:] for i in range(len(codes))
        )


def _config(flags: list[str]) -> RunConfig:
    """The RunConfig that ``rnnjax train FLAGS`` builds (for the single-process reference)."""
    args = build_parser().parse_args(["train", *flags])
    given = {dest: getattr(args, dest) for dest, _, _ in TRAIN_FLAGS.values()}
    return RunConfig(**{k: v for k, v in given.items() if v is not None})


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_close(got, want):
    for a, b in zip(_leaves(got), _leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _restore(out: Path, step: int, like):
    checkpoints = RunDir(out).checkpointer(keep=100)
    try:
        return checkpoints.restore(like, step)
    finally:
        checkpoints.close()


def _finished(out: Path) -> list[int]:
    folder = out / CHECKPOINTS
    return (
        sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    )


def _check_single_writer(run: Processes, out: Path, text: bool) -> None:
    """Process 0 wrote config, (vocab) and metrics; process 1 no file outside the checkpoints."""
    own = {"config.json", "metrics.jsonl"} | ({"vocab.json"} if text else set())
    written = {p.removesuffix(".tmp") for p in run.written(0)}  # JSON files: written, renamed
    assert own <= written, run.written(0)
    others = {p for p in run.written(1) if not p.startswith(CHECKPOINTS + os.sep)}
    assert not others, f"process 1 wrote {sorted(others)}"
    records = [json.dumps(r, sort_keys=True) for r in read_metrics(out / "metrics.jsonl")]
    assert len(records) == len(set(records)), "a metrics record was written twice"


def _check_collective_checkpoints(out: Path) -> None:
    """Every finished checkpoint holds a part written by each process (orbax's files)."""
    for step in _finished(out):
        parts = {p.name for p in (out / CHECKPOINTS / str(step) / "default").iterdir()}
        assert {"ocdbt.process_0", "ocdbt.process_1"} <= parts, (step, sorted(parts))


@pytest.mark.slow
def test_task_two_processes_equal_one_kill_and_resume(tmp_path):
    """A task, 2 processes of 1 device: equals 1 process; killed, resumed, equals uninterrupted."""
    flags = readme_flags()
    config = _config(flags)

    # a second run, killed with SIGKILL in process 1 after its first checkpoint
    killed = tmp_path / "killed"
    run = Processes(tmp_path, "killed", flags, killed, devices=1)
    try:
        deadline = time.monotonic() + NO_HANG
        while not _finished(killed):
            assert all(p.poll() is None for p in run.procs), run.log(0)[-3000:] + run.log(1)[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within the no-hang bound"
            time.sleep(0.02)
        run.procs[1].send_signal(signal.SIGKILL)
        codes = run.wait()
    finally:
        run.kill()
    assert codes[1] == -signal.SIGKILL, "process 1 finished before it could be killed"
    assert codes[0] == 1, run.log(0)[-3000:]
    last = _finished(killed)[-1]
    assert last < config.steps
    message = [line for line in run.log(0).splitlines() if line.startswith("rnnjax train:")]
    assert len(message) == 1, run.log(0)[-3000:]
    assert re.fullmatch(
        rf"rnnjax train: error: lost contact with another process of this 2-process run \(.+\); "
        rf"the last good checkpoint is step {last} in {re.escape(str(killed / CHECKPOINTS))}\. "
        rf"Start all 2 processes again with the same command and --resume",
        message[0],
    ), message[0]

    shutil.copytree(killed, tmp_path / "killed-then-one")  # to resume in one process below

    # the uninterrupted 2-process run (the README's command)
    whole = tmp_path / "whole"
    run = Processes(tmp_path, "whole", flags, whole, devices=1)
    run.check_ok()
    _check_single_writer(run, whole, text=False)
    _check_collective_checkpoints(whole)

    # resume the killed run with both processes: bit for bit the uninterrupted run
    run = Processes(tmp_path, "resumed", ["--resume"], killed, devices=1)
    run.check_ok()
    assert not {p for p in run.written(1) if not p.startswith(CHECKPOINTS)}, run.written(1)
    resumes = [r for r in read_metrics(killed / "metrics.jsonl") if r.get("event") == "resume"]
    assert [r["step"] for r in resumes] == [last]

    # the single-process reference (this process, one device, the same global batch)
    reference = train(config, str(tmp_path / "one"), progress=None, devices=jax.devices()[:1])
    like = reference["state"]
    final_whole = _restore(whole, config.steps, like)
    final_resumed = _restore(killed, config.steps, like)
    chex.assert_trees_all_equal(final_resumed, final_whole)
    _assert_close(final_whole.params, reference["state"].params)
    _assert_close(final_whole.opt_state, reference["state"].opt_state)

    # a checkpoint holds global arrays: the killed run also resumes in one process
    alone = train(
        RunConfig(),
        str(tmp_path / "killed-then-one"),
        resume=True,
        progress=None,
        devices=jax.devices()[:1],
    )
    assert int(alone["state"].step) == config.steps
    _assert_close(alone["state"].params, reference["state"].params)


@pytest.mark.slow
def test_text_two_processes_of_two_devices_equal_one_and_resume(tmp_path):
    """The embedded corpus, 2 processes of 2 devices (4 in all), resumed once: equals 1 process."""
    config = _config(TEXT_FLAGS.split())
    out = tmp_path / "text"
    half = TEXT_FLAGS.replace(f"--steps {config.steps}", f"--steps {config.steps // 2}")
    run = Processes(tmp_path, "first", half.split(), out, devices=2)
    run.check_ok()
    _check_single_writer(run, out, text=True)
    run = Processes(tmp_path, "second", ["--resume", "--steps", str(config.steps)], out, devices=2)
    run.check_ok()
    assert not {p for p in run.written(1) if not p.startswith(CHECKPOINTS)}, run.written(1)
    _check_collective_checkpoints(out)

    reference = train(config, str(tmp_path / "one"), progress=None, devices=jax.devices()[:1])
    for step in (config.steps // 2, config.steps):
        want = _restore(tmp_path / "one", step, reference["state"])
        got = _restore(out, step, reference["state"])
        assert int(got.step) == step
        _assert_close(got.params, want.params)
        _assert_close(got.carry, want.carry)  # rows of both processes' devices
    assert read_metrics(out / "metrics.jsonl")[-1]["step"] == config.steps


def test_readme_shows_the_local_command():
    assert README_COMMAND in (ROOT / "README.md").read_text()
    assert readme_flags()[:2] == ["--task", "adding"] and readme_flags()[-2:] == [
        "--eval-size",
        "64",
    ]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-processes", "2", "--process-id", "2"], "process_id must be in [0, 2), got"),
        (["--coordinator", "localhost"], "the coordinator must be host:port"),
        (["--heartbeat-timeout", "0"], "heartbeat_timeout must be at least 1 second"),
    ],
)
def test_bad_distributed_settings(tmp_path, capsys, flags, message):
    """Bad launch settings: one line on stderr, exit status 2, before JAX starts its service."""
    args = ["train", "--task", "adding", "--out", str(tmp_path / "run"), "--distributed"]
    defaults = {"--coordinator": "localhost:1", "--num-processes": "2", "--process-id": "0"}
    for flag, value in defaults.items():
        if flag not in flags:
            args += [flag, value]
    assert main(args + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnjax train: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
