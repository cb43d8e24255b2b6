"""The applications by name: ``rnnjax train --task NAME`` dispatches here.

Each application is an `App`: ``add_arguments(parser)`` declares its own flags with their
defaults (`rnnjax.models.training.add_common_arguments` and the application's), and
``run(args) -> result`` trains through `rnnjax.models.training.fit`, evaluates and writes
``OUT/metrics.jsonl``, checkpoints and ``OUT/result.json`` (+ PNGs), raising ValueError for
bad input. ``rnnjax train`` (`rnnjax.cli`) parses every application's flags with its one
parser and refuses a flag that the chosen ``--task`` does not declare. A module's heavy
dependencies are checked when its application runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple


class App(NamedTuple):
    """Attributes: add_arguments: ``parser -> None``; run: ``args -> result dict``;
    summary: one line for ``--help``."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]
    summary: str


def _lazy(module: str, summary: str, needs: tuple[tuple[str, str], ...] = ()) -> App:
    """An `App` whose module is imported when its flags are declared (``add_arguments``, on
    every parser build) or it runs, not when this table is built. ``needs``: (import name,
    PyPI name) of each package of the ``apps`` extra the application reads its data or scores
    with, all checked before it runs (ValueError naming the first missing one)."""

    def load() -> Any:
        for import_name, pip_name in needs:
            if importlib.util.find_spec(import_name) is None:
                raise ValueError(
                    f"the {module} application needs the package {pip_name}: "
                    f"pip install 'rnnjax[apps]' (make installs it)"
                )
        return importlib.import_module(f"rnnjax.models.{module}")

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        importlib.import_module(f"rnnjax.models.{module}").add_arguments(parser)

    def run(args: argparse.Namespace) -> dict[str, Any]:
        return load().run(args)

    return App(add_arguments, run, summary)


APPLICATIONS: dict[str, App] = {
    "translate": _lazy(
        "translate",
        "English → Russian number words, LSTM encoder–decoder",
        (("num2words", "num2words"), ("sacrebleu", "sacrebleu")),
    ),
    "caption": _lazy(
        "caption",
        "captions of rows of 8×8 digits, convnet + LSTM decoder",
        (("sklearn", "scikit-learn"),),
    ),
    "qa": _lazy("qa", "questions about generated stories, LSTM encoder–decoder"),
    "vqa": _lazy(
        "vqa",
        "questions about images of coloured digits, convnet + LSTM",
        (("sklearn", "scikit-learn"),),
    ),
    "handwriting": _lazy(
        "handwriting",
        "Graves handwriting synthesis, read back by a recogniser",
        (("HersheyFonts", "Hershey-Fonts"),),
    ),
    "handwriting_recognition": _lazy(
        "handwriting_recognition",
        "online handwriting, BLSTM + CTC",
        (("HersheyFonts", "Hershey-Fonts"),),
    ),
    "tree": _lazy("tree", "value mod 10 of arithmetic trees, Child-Sum or N-ary Tree-LSTM"),
}


def application_parser(name: str) -> argparse.ArgumentParser:
    """A parser holding only application ``name``'s own flags, as its module declares them
    (read by ``rnnjax train``, which parses them; ValueError if the name is unknown)."""
    if name not in APPLICATIONS:
        raise ValueError(f"unknown application {name!r}; choose one of {', '.join(APPLICATIONS)}")
    parser = argparse.ArgumentParser(add_help=False, description=APPLICATIONS[name].summary)
    APPLICATIONS[name].add_arguments(parser)
    return parser


def run_application(argv: Sequence[str], stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Parses ``argv`` (the flags after ``rnnjax train``) and runs the application it names.

    Args:
        argv: e.g. ``["--task", "qa", "--steps", "50", "--out", "runs/qa"]``.
        stop: polled after every training step (`rnnjax.train.interrupt.StopRequest`).

    Raises:
        ValueError: unknown application or bad input (argparse errors exit with status 2).
        rnnjax.train.RunInterruptedError: ``stop`` fired (a checkpoint was written).
    """
    from rnnjax.cli import application_namespace, build_parser

    args = build_parser().parse_args(["train", *argv])
    args.argv = ["train", *argv]
    app_args = application_namespace(args, stop)
    return APPLICATIONS[app_args.task].run(app_args)


__all__ = ["APPLICATIONS", "App", "application_parser", "run_application"]
