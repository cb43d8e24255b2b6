"""Applications train through the library's loop: checkpoints, exact resume after a stop,
metrics logged once per step, and ``rnnjax train``'s one parser for their flags."""

import json
import shlex
from pathlib import Path

import pytest

from rnnjax.cli import main
from rnnjax.models.registry import run_application
from rnnjax.train import RunInterruptedError, read_metrics
from rnnjax.train.checkpoint import CHECKPOINTS

TINY_TREE = (
    "--task tree --steps 12 --hidden 8 --embed 4 --batch-size 8 --train-height 2 "
    "--test-heights 3 --train-size 40 --test-size 10 --layouts 1 --log-every 2 "
    "--checkpoint-every 5 --keep 2 --quiet"
)


class StopAfter:
    """A stop request that fires at its n-th poll (the loop polls after every step)."""

    def __init__(self, n: int):
        self.n, self.polls = n, 0

    def __call__(self) -> bool:
        self.polls += 1
        return self.polls >= self.n


def _checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name) for p in (out / CHECKPOINTS).iterdir() if p.name.isdigit())


def _training_steps(out: Path) -> list[int]:
    records = read_metrics(out / "metrics.jsonl")
    return [r["step"] for r in records if "loss" in r and "split" not in r]


def test_an_interrupted_application_resumes_to_the_uninterrupted_parameters(tmp_path):
    whole = run_application([*shlex.split(TINY_TREE), "--out", str(tmp_path / "whole")])
    assert _checkpoints(tmp_path / "whole") == [10, 12]  # every 5 steps and the last, keep 2
    assert whole["training"]["steps_done"] == 12
    split = tmp_path / "split"
    with pytest.raises(RunInterruptedError) as stopped:
        run_application([*shlex.split(TINY_TREE), "--out", str(split)], stop=StopAfter(7))
    assert (stopped.value.step, stopped.value.checkpoint) == (7, 7)
    assert _checkpoints(split) == [5, 7] and not (split / "result.json").exists()
    saved = json.loads((split / "application.json").read_text())
    assert saved["task"] == "tree" and saved["flags"]["train_size"] == 40
    resumed = run_application(["--out", str(split), "--resume"])  # the flags come from the run
    assert resumed["training"]["steps_this_call"] == 5
    assert resumed["training"]["params_sha256"] == whole["training"]["params_sha256"]
    assert resumed["evaluation"]["accuracy_deeper"] == whole["evaluation"]["accuracy_deeper"]
    assert _training_steps(tmp_path / "whole") == [2, 4, 5, 6, 8, 10, 12]
    assert _training_steps(split) == [2, 4, 5, 6, 7, 8, 10, 12]  # the stop's step, once


def test_a_run_resumed_with_more_steps_keeps_its_learning_rate_schedule(tmp_path, monkeypatch):
    import optax

    lengths = []
    real = optax.warmup_cosine_decay_schedule

    def recording(init_value, peak_value, warmup_steps, decay_steps, **kwargs):
        lengths.append(decay_steps)
        return real(init_value, peak_value, warmup_steps, decay_steps, **kwargs)

    monkeypatch.setattr(optax, "warmup_cosine_decay_schedule", recording)
    out = str(tmp_path / "run")
    short = TINY_TREE.replace("--steps 12", "--steps 6")
    run_application([*shlex.split(short), "--out", out])
    extended = run_application(["--out", out, "--resume", "--steps", "8"])
    assert extended["training"]["steps_done"] == 8
    assert lengths == [6, 6]  # not 8: the step size does not jump back up


def test_a_finished_run_resumes_without_compiling_the_step(tmp_path, monkeypatch):
    import rnnjax.models.training as training

    out = str(tmp_path / "run")
    done = run_application(
        [*shlex.split(TINY_TREE.replace("--steps 12", "--steps 4")), "--out", out]
    )

    def no_compile(*args, **kwargs):
        raise AssertionError("the step was compiled for a finished run")

    monkeypatch.setattr(training, "_compiled_step", no_compile)
    again = run_application(["--out", out, "--resume"])
    assert again["training"]["steps_this_call"] == 0
    assert again["training"]["params_sha256"] == done["training"]["params_sha256"]


@pytest.mark.parametrize(
    "flags,match",
    [
        ("--task tree --window 5", "--window does not apply to --task tree"),
        ("--task qa --T 20", "--T does not apply to --task qa"),
        ("--task qa --distributed", "--distributed does not apply to --task qa"),
        ("--task adding --beam 3", "--beam applies to --task translate / caption"),
        ("--corpus default --train-size 5", "--train-size applies to --task"),
        ("--task tree --cell lstm", "argument --cell: invalid choice: 'lstm'"),
        ("--task tree --bogus", "unrecognized arguments: --bogus"),
        ("--task qa --steps x", "invalid int value"),
        ("--task qa --resume", "holds no application run"),
    ],
)
def test_flags_of_other_runs_are_one_line_errors(capsys, tmp_path, flags, match):
    out = tmp_path / "r"
    code = main(["train", *shlex.split(flags), "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and match in err[0], err
    assert not out.exists()


def test_the_help_of_an_application_shows_its_own_flags(capsys):
    assert main(["train", "--task", "qa", "-h"]) == 0
    text = capsys.readouterr().out
    assert "--train-size" in text and "training steps (2500)" in text and "--window" not in text
    assert main(["train", "-h"]) == 0
    text = capsys.readouterr().out
    assert "--window" in text and "--train-size" in text  # every flag, each declared once


DATA_PARALLEL = """
import json, sys
import jax
from jax.sharding import Mesh
import numpy as np
from rnnjax.models.registry import run_application
from rnnjax.train import parallel

assert jax.device_count() == 4, jax.devices()
flags, out = sys.argv[1].split(), sys.argv[2]
many = run_application([*flags, "--out", out + "/many"])["training"]["last_train_record"]
parallel.make_mesh = lambda devices=None: Mesh(np.asarray(jax.devices()[:1]), (parallel.AXIS,))
one = run_application([*flags, "--out", out + "/one"])["training"]["last_train_record"]
print(json.dumps({"many": many["loss"], "one": one["loss"]}))
"""


@pytest.mark.slow  # a subprocess with four simulated devices
def test_an_application_trains_data_parallel_as_on_one_device(tmp_path, run_on_devices):
    """4 simulated devices (batch 8 split in 4) against 1: the same losses up to rounding."""
    losses = run_on_devices(DATA_PARALLEL, TINY_TREE, str(tmp_path), devices=4)
    assert losses["many"] == pytest.approx(losses["one"], rel=1e-4)


def test_the_application_record_is_written_whole_and_a_broken_one_is_named(tmp_path):
    from argparse import Namespace

    from rnnjax.models.training import APPLICATION_CONFIG, _record_flags

    args = Namespace(task="tree", flags={"steps": 7}, run_dir=str(tmp_path / "r"), steps=9)
    assert _record_flags(args) == 7  # the first call records its steps and reads them back
    assert [p.name for p in (tmp_path / "r").iterdir()] == [APPLICATION_CONFIG]  # no .tmp left
    assert json.loads((tmp_path / "r" / APPLICATION_CONFIG).read_text())["task"] == "tree"
    (tmp_path / "r" / APPLICATION_CONFIG).write_text('{"task": "tree", "fl')  # cut short
    with pytest.raises(ValueError, match=f"{APPLICATION_CONFIG} is not an application record"):
        _record_flags(args)
