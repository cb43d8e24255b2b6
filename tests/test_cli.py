"""The ``rnnjax`` command: train / resume / sample end to end, and every bad input → one line on
stderr, exit status 2, nothing written."""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rnnjax.cli import main
from rnnjax.train.checkpoint import CHECKPOINTS, CONFIG

TINY_TEXT = "--cell gru --hidden 8 --embed 4 --batch-size 4 --window 16 --log-every 5 --quiet"
TINY_TASK = "--task adding --T 10 --hidden 8 --batch-size 8 --eval-size 50 --quiet"


def run(capsys, command: str):
    code = main(shlex.split(command))
    out, err = capsys.readouterr()
    return code, out, err


def expect_usage_error(capsys, command: str, match: str) -> None:
    code, out, err = run(capsys, command)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and match in lines[0], err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "code.txt"
    path.write_text("def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 60, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("runs") / "gru"
    command = f"train --corpus {corpus} --steps 20 --checkpoint-every 10 --out {out} {TINY_TEXT}"
    assert main(shlex.split(command)) == 0
    return out


def test_train_sample_resume(capsys, trained_run):
    assert (trained_run / CONFIG).is_file() and (trained_run / "metrics.jsonl").is_file()
    sample = f"sample --run {trained_run} --prompt 'def ' --length 30 --seed 3"
    code, out, _ = run(capsys, sample)
    assert code == 0 and out.startswith("def ") and len(out.rstrip("\n")) >= 4
    assert run(capsys, sample)[1] == out  # seeded
    resumed = trained_run.parent / "resumed"
    shutil.copytree(trained_run, resumed)
    code, out, err = run(capsys, f"train --out {resumed} --resume --steps 30 --quiet")
    assert code == 0 and "30 steps" in out, err
    assert "30" in [p.name for p in (resumed / CHECKPOINTS).iterdir()]


def test_task_training_from_the_command_line(capsys, tmp_path):
    out = tmp_path / "adding"
    code, text, err = run(capsys, f"train {TINY_TASK} --cell lstm --steps 10 --out {out}")
    assert code == 0, err
    assert "accuracy" in text and "eval:" in text
    expect_usage_error(capsys, f"sample --run {out}", match="not on text")


@pytest.mark.parametrize(
    "command,match",
    [
        ("train --task sorting", "unknown task"),
        ("train --task adding --cell transformer", "unknown cell"),
        ("train --task adding --T 0", "T must be"),
        ("train --task adding --T -5", "T must be"),
        ("train --task adding --hidden 0", "hidden must be"),
        ("train --task adding --hidden -8", "hidden must be"),
        ("train --task adding --T ten", "invalid int value"),
        ("train", "exactly one of a task"),
        ("train --corpus /no/such/file.txt", "not found"),
        ("sample --run /no/such/run", "does not exist"),
        ("train --resume --out /no/such/run", "does not exist"),
        ("frobnicate", "invalid choice"),
        ("grads --hidden 0 --out runs/g", "--hidden must be >= 1"),
        ("grads --cell foo --out runs/g", "invalid choice"),
    ],
)
def test_bad_arguments(capsys, tmp_path, monkeypatch, command, match):
    monkeypatch.chdir(tmp_path)
    expect_usage_error(capsys, command, match=match)
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks binary"),
        (b"caf\xe9 au lait, cr\xe8me br\xfbl\xe9e", "not valid UTF-8"),
        (b"just a few words", "shorter than one batch window"),
    ],
)
def test_bad_corpus(capsys, tmp_path, content, match):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    out = tmp_path / "run"
    expect_usage_error(capsys, f"train --corpus {path} --out {out}", match=match)
    assert not out.exists()


def test_existing_run_is_never_overwritten(capsys, trained_run, corpus):
    before = {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()}
    expect_usage_error(capsys, f"train --corpus {corpus} --out {trained_run}", "already exists")
    assert {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()} == before


def test_corrupted_and_incompatible_checkpoints(capsys, trained_run, tmp_path):
    incompatible = tmp_path / "incompatible"
    shutil.copytree(trained_run, incompatible)
    config = json.loads((incompatible / CONFIG).read_text())
    config["hidden"] = 12
    (incompatible / CONFIG).write_text(json.dumps(config))
    expect_usage_error(capsys, f"sample --run {incompatible}", match="does not match")
    expect_usage_error(capsys, f"train --resume --out {incompatible} --quiet", "does not match")
    assert json.loads((incompatible / CONFIG).read_text())["hidden"] == 12  # not rewritten

    corrupted = tmp_path / "corrupted"
    shutil.copytree(trained_run, corrupted)
    for f in (corrupted / CHECKPOINTS).rglob("*"):
        if f.is_file() and "METADATA" not in f.name and f.stat().st_size > 0:
            f.write_bytes(b"not an array")
    expect_usage_error(capsys, f"sample --run {corrupted}", match="corrupted")
    expect_usage_error(capsys, f"train --resume --out {corrupted} --quiet", match="corrupted")

    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken)
    (broken / CONFIG).write_text("{not json")
    expect_usage_error(capsys, f"sample --run {broken}", match="not valid JSON")


def test_non_finite_training_exits_1(capsys, tmp_path):
    command = (
        f"train {TINY_TASK} --cell simple_rnn --optimizer sgd --lr 1e30 --clip 0 --steps 40 "
        f"--log-every 1 --checkpoint-every 1 --max-bad-steps 3 --out {tmp_path / 'nan'}"
    )
    code, _, err = run(capsys, command)
    assert code == 1 and "non-finite" in err and "last good checkpoint: step" in err


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("rnnjax")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("train", "sample", "grads", "demo"):
        assert command in result.stdout


@pytest.mark.slow
def test_demo_end_to_end(capsys, tmp_path, monkeypatch):
    """The demo's whole path (two runs, table, gradient lags, sample, plot, report) on a tiny
    configuration; `make demo` runs the full one."""
    import rnnjax.demo as demo
    from rnnjax.train import RunConfig

    def tiny(cell):
        return RunConfig(corpus="default", cell=cell, hidden=8, embed=4, window=16,
                         batch_size=4, steps=6, log_every=3, eval_every=10**6,
                         val_fraction=0.002)  # fmt: skip

    monkeypatch.setattr(demo, "_config", tiny)
    out = tmp_path / "demo"
    code, text, _ = run(capsys, f"demo --out {out} --seconds 30")
    assert code == 0
    assert "| simple_rnn |" in text and "|       lstm |" in text and "lag 10" in text
    assert "LSTM sample" in text
    for name in ("report.md", "demo.png", "demo.json", "lstm/metrics.jsonl"):
        assert (out / name).is_file(), name
    demo._prepare(out)  # re-runnable: a previous demo's folder is emptied
    assert out.is_dir() and not any(out.iterdir())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    expect_usage_error(capsys, f"demo --out {foreign}", match="not a previous demo")
    assert (foreign / "notes.txt").read_text() == "mine"
