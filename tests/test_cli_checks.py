"""The ``rnnjax`` command checks everything before it writes, says every failure in one line
(exit 2), refuses flags that do not apply, records and checks the corpus of a run, and has
help that reads in a terminal."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.cli import TRAIN_FLAGS, main
from rnnjax.kernels import BACKENDS
from rnnjax.train import CELLS
from rnnjax.train.checkpoint import CHECKPOINTS, CONFIG

TINY_TASK = "--task adding --T 10 --hidden 8 --batch-size 8 --eval-size 32 --quiet"
TINY_TEXT = "--cell gru --hidden 8 --embed 4 --batch-size 4 --window 16 --log-every 5 --quiet"


def run(capsys, command: str):
    code = main(shlex.split(command))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, command: str, match: str) -> str:
    code, out, err = run(capsys, command)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and match in lines[0], (code, out, err)
    return lines[0]


def files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def write_corpus(path: Path, seed: int = 0) -> Path:
    words = ["def", "class", "return", "self", "x", "=", "(", ")", ":", "\n", "    "]
    text = " ".join(words[(i * 7 + seed) % len(words)] for i in range(2000))
    path.write_text(text, encoding="utf-8")
    return path


def test_a_rejected_run_leaves_no_directory(capsys, tmp_path):
    """The step is traced and compiled before the run directory is made."""
    out = tmp_path / "mf"
    bad = f"train {TINY_TASK} --cell multiplicative_rnn --backend fused --steps 3 --out {out}"
    one_line_error(capsys, bad, "backend='fused' derives its loop from a cell's structured form")
    assert not out.exists()
    code, _, err = run(capsys, bad.replace("fused", "scan"))  # the fix is not blocked
    assert code == 0, err


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU refusal")
def test_pallas_on_the_cpu_is_refused(capsys, tmp_path):
    out = tmp_path / "p"
    one_line_error(capsys, f"train {TINY_TASK} --backend pallas --out {out}", "needs a GPU")
    assert not out.exists()


@pytest.mark.parametrize(
    "flags,match",
    [
        ("--corpus {corpus} --T 50", "T=50 applies to task runs only"),
        ("--corpus {corpus} --definition pascanu", "applies to the adding task only"),
        ("--corpus {corpus} --eval-size 10", "eval_size=10 applies to task runs only"),
        ("--task adding --window 10", "window=10 applies to text runs only"),
        ("--task adding --embed 8", "embed=8 applies to text runs only"),
        ("--task adding --dropout 0.1", "dropout=0.1 applies to text runs only"),
        ("--task copy --definition pascanu", "applies to the adding task only"),
        ("--task adding --momentum 0.9", "momentum=0.9 applies to the optimizers sgd and rmsprop"),
        ("--task adding --optimizer adagrad --momentum 0", "not to adagrad"),
        ("--task adding --omega-decay 0.99", "omega_decay=0.99 applies only with"),
        ("--task adding --cell gru --init smart_tanh", "it does not apply to gru"),
        ("--task adding --cell lstm --forget-bias 2 --init irnn", "does not apply to lstm"),
    ],
)
def test_flags_that_do_not_apply_are_errors(capsys, tmp_path, flags, match):
    corpus = write_corpus(tmp_path / "c.txt")
    out = tmp_path / "run"
    one_line_error(capsys, f"train {flags.format(corpus=corpus)} --out {out}", match)
    assert not out.exists()


def test_inits_accepted_by_grads_are_accepted_by_train(capsys, tmp_path):
    from rnnjax.train import RunConfig, build_cells

    for cell in ("simple_rnn", "lstm", "gru"):
        config = RunConfig(task="adding", cell=cell, init="rho=1.5").resolved()
        assert build_cells(config.cell, 8, init=config.init)[0].name == cell
    config = RunConfig(task="adding", optimizer="sgd", momentum=0.9).resolved()
    assert config.momentum == 0.9


def test_chrono_init_reaches_the_trained_model():
    from rnnjax.train import RunConfig
    from rnnjax.train.loop import build_model

    model, _ = build_model(RunConfig(task="adding", T=50, hidden=8, init="chrono=50").resolved())
    b = model.init(jax.random.key(0)).rnn[0].b  # (4H,), gates (i, f, g, o)
    np.testing.assert_array_equal(b[:8], -b[8:16])
    assert bool(jnp.all((b[8:16] >= 0.0) & (b[8:16] <= np.log(49.0))))


def test_out_under_a_file_or_unwritable_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    one_line_error(capsys, f"train {TINY_TASK} --out {blocker}/sub", "is a file")
    assert blocker.read_text() == "mine"
    if os.geteuid() != 0:  # root writes anywhere: use a place the kernel refuses
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "run"
    elif Path("/proc/self").is_dir():
        target = Path("/proc/rnnjax-run")
    else:
        pytest.skip("no unwritable directory for root")
    one_line_error(capsys, f"train {TINY_TASK} --steps 2 --out {target}", "run directory")
    assert not target.exists()
    one_line_error(capsys, f"grads --hidden 4 --T 3 --out {blocker}/g", "is a file")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    corpus = write_corpus(root / "corpus.txt")
    out = root / "run"
    cwd = os.getcwd()
    os.chdir(root)  # a relative --corpus path, as typed by a user
    try:
        code = main(shlex.split(f"train --corpus corpus.txt --steps 10 --out run {TINY_TEXT}"))
    finally:
        os.chdir(cwd)
    assert code == 0
    return corpus, out


def test_a_run_records_its_corpus_and_resumes_from_anywhere(capsys, tmp_path, text_run):
    corpus, out = text_run
    config = json.loads((out / CONFIG).read_text())
    assert config["corpus"] == str(corpus) and len(config["corpus_sha256"]) == 64
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        # the same corpus, given again: no note
        code, text, err = run(
            capsys, f"train --out {out} --resume --steps 15 --corpus {corpus} --quiet"
        )
        assert code == 0 and "15 steps" in text and err == "", err
        # another corpus: said to be ignored
        other = write_corpus(elsewhere / "other.txt", seed=3)
        code, _, err = run(
            capsys, f"train --out {out} --resume --steps 20 --corpus {other} --quiet"
        )
        assert code == 0 and "ignoring corpus" in err
    finally:
        os.chdir(cwd)


def test_a_changed_corpus_is_refused_on_resume(capsys, tmp_path, text_run):
    corpus, out = text_run
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(out, copy)
    before = files(copy)
    original = corpus.read_bytes()
    corpus.write_text(corpus.read_text() + "\nmore text", encoding="utf-8")
    try:
        one_line_error(capsys, f"train --out {copy} --resume --steps 40", "has changed")
    finally:
        corpus.write_bytes(original)
    assert files(copy) == before  # nothing written


def test_resume_at_or_past_its_steps_is_an_error(capsys, tmp_path, text_run):
    _, out = text_run
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    steps = json.loads((copy / CONFIG).read_text())["steps"]
    one_line_error(capsys, f"train --out {copy} --resume --steps {steps}", "already at step")


def test_short_runs_report_a_speed_not_nan(capsys, tmp_path):
    code, text, err = run(
        capsys, f"train {TINY_TASK} --steps 3 --log-every 10 --out {tmp_path / 'r'}"
    )
    assert code == 0, err
    assert "nan" not in text and " steps/s" in text


def _incompatible_and_corrupted(root: Path, trained: Path) -> tuple[Path, Path]:
    import shutil

    incompatible = root / "incompatible"
    shutil.copytree(trained, incompatible)
    config = json.loads((incompatible / CONFIG).read_text())
    config["hidden"] = 12
    (incompatible / CONFIG).write_text(json.dumps(config))
    corrupted = root / "corrupted"
    shutil.copytree(trained, corrupted)
    for f in (corrupted / CHECKPOINTS).rglob("*"):
        if f.is_file() and "METADATA" not in f.name and f.stat().st_size > 0:
            f.write_bytes(b"not an array")
    return incompatible, corrupted


@pytest.mark.slow
def test_bad_checkpoints_are_one_line_in_a_fresh_process(tmp_path):
    """In a real process, where orbax's abandoned reads used to print dozens of lines of
    "Event loop is closed" and unretrieved task errors after the message (about half the
    time: two tries each)."""
    trained = tmp_path / "trained"
    assert (
        main(shlex.split(f"train {TINY_TASK} --steps 10 --checkpoint-every 5 --out {trained}")) == 0
    )
    incompatible, corrupted = _incompatible_and_corrupted(tmp_path, trained)
    for run_dir, match in [
        (incompatible, "params.out.V is (8, 1) float32 in the checkpoint, (12, 1)"),
        (corrupted, "corrupted"),
    ]:
        for _ in range(2):
            result = subprocess.run(
                [sys.executable, "-m", "rnnjax.cli", "train", "--out", str(run_dir), "--resume",
                 "--steps", "20", "--quiet"],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            lines = result.stderr.splitlines()
            assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
            assert match in lines[0]


def test_help_reads_in_a_terminal(capsys):
    for command in ("train --help", "grads --help", "--help", "sample --help"):
        code, text, _ = run(capsys, command)
        assert code == 0 and "``" not in text and "::" not in text
        assert max(len(line) for line in text.splitlines()) <= 80, command
    _, train_help, _ = run(capsys, "train --help")
    assert "..." not in train_help  # every cell and backend spelled out
    for name in (*CELLS, *BACKENDS):
        assert name in train_help
    for flag in TRAIN_FLAGS:
        assert "default" in TRAIN_FLAGS[flag][2] or flag in ("--task", "--corpus"), flag
    _, grads_help, _ = run(capsys, "grads --help")
    assert "(default: 128)" in grads_help and "(default: lstm)" in grads_help
    code, version, _ = run(capsys, "--version")
    assert code == 0 and version.startswith("rnnjax ")


def test_readme_drop_ins_defaults_and_shell_path():
    import re

    import rnnjax as rj

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    drop_in = next(line for line in readme.splitlines() if line.startswith("cell = rj.lstm("))
    for call in re.findall(r"rj\.\w+\([^)]*\)", drop_in.split("#")[1]):
        cell = eval(call, {"rj": rj})  # each alternative runs as written
        assert cell.init(jax.random.key(0), 16) is not None, call
    b = rj.lstm(4).init(jax.random.key(0), 3).b
    assert float(b[4:8].min()) == 1.0  # the forget-gate bias starts at 1 ...
    assert "zero b except the LSTM forget gate's: 1" in readme  # ... as the README says
    first_shell_use = readme.index("rnnjax train --task adding")
    assert ".venv/bin/activate" in readme[:first_shell_use]


def test_configs_written_by_older_versions_still_load():
    """They stored a default for every field, applicable or not, and no corpus hash."""
    from rnnjax.train import RunConfig

    old = dict(task=None, T=100, definition=None, corpus="c.txt", cell="lstm", hidden=128,
               layers=1, init=None, forget_bias=None, embed=32, dropout=0.0, backend="scan",
               optimizer="adam", lr=0.002, momentum=0.0, lr_decay=1.0, clip=1.0, omega=0.0,
               omega_decay=1.0, batch_size=32, window=64, val_fraction=0.1, steps=2000, seed=0,
               eval_every=250, eval_size=1000, log_every=10, checkpoint_every=100, keep=3,
               max_bad_steps=10)  # fmt: skip
    config = RunConfig.from_json(json.dumps(old))
    assert config.T is None and config.eval_size is None and config.momentum is None
    assert config.window == 64 and config.corpus_sha256 is None
    task = RunConfig.from_json(json.dumps(dict(old, task="adding", corpus=None)))
    assert task.T == 100 and task.window is None and task.embed is None
    with pytest.raises(ValueError, match="T=50 applies to task runs only"):
        RunConfig.from_json(json.dumps(dict(old, T=50)))  # not a default: a real conflict


def test_every_run_config_field_has_one_flag_or_is_internal():
    import dataclasses

    from rnnjax.cli import FIELD_FLAGS, INTERNAL_FIELDS, build_parser
    from rnnjax.train import RunConfig

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert fields == set(FIELD_FLAGS) | set(INTERNAL_FIELDS)
    assert not set(FIELD_FLAGS) & set(INTERNAL_FIELDS)
    assert {dest for dest, _, _ in TRAIN_FLAGS.values()} == set(FIELD_FLAGS)
    args = build_parser().parse_args(["train", "--task", "adding", "--forget-bias", "3"])
    assert args.forget_bias == 3.0 and args.T is None  # a flag per field, None when not given
