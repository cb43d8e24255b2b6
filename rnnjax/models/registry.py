"""The applications by name: ``rnnjax train --task NAME`` dispatches here.

Each application is an `App`: ``add_arguments(parser)`` declares its flags (the common ones
are ``--steps``, ``--out`` and ``--seed``) and ``run(args) -> result`` trains, evaluates and
writes ``OUT/metrics.jsonl`` and ``OUT/result.json`` (+ PNGs), raising ValueError for bad
input. Modules are imported only when their application runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple


class App(NamedTuple):
    """Attributes: add_arguments: ``parser -> None``; run: ``args -> result dict``;
    summary: one line for ``--help``."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]
    summary: str


def _lazy(module: str, summary: str, needs: tuple[str, str] | None = None) -> App:
    """An `App` whose module is imported when used; ``needs``: (import name, PyPI name) of a
    package of the ``apps`` extra it reads its data with, checked first (ValueError)."""

    def load() -> Any:
        if needs is not None and importlib.util.find_spec(needs[0]) is None:
            raise ValueError(
                f"the {module} application needs the package {needs[1]}: "
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
        ("num2words", "num2words"),
    ),
    "caption": _lazy(
        "caption",
        "captions of rows of 8×8 digits, convnet + LSTM decoder",
        ("sklearn", "scikit-learn"),
    ),
    "qa": _lazy("qa", "questions about generated stories, LSTM encoder–decoder"),
    "vqa": _lazy(
        "vqa",
        "questions about images of coloured digits, convnet + LSTM",
        ("sklearn", "scikit-learn"),
    ),
    "handwriting": _lazy(
        "handwriting",
        "Graves handwriting synthesis, read back by a recogniser",
        ("HersheyFonts", "Hershey-Fonts"),
    ),
    "handwriting_recognition": _lazy(
        "handwriting_recognition",
        "online handwriting, BLSTM + CTC",
        ("HersheyFonts", "Hershey-Fonts"),
    ),
    "tree": _lazy("tree", "value mod 10 of arithmetic trees, Child-Sum or N-ary Tree-LSTM"),
}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit status 2 (as the ``rnnjax`` command)."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser_for(name: str, prog: str = "rnnjax train") -> argparse.ArgumentParser:
    """The argument parser of application ``name`` (ValueError if unknown)."""
    if name not in APPLICATIONS:
        raise ValueError(f"unknown application {name!r}; choose one of {', '.join(APPLICATIONS)}")
    parser = _Parser(prog=f"{prog} --task {name}", description=APPLICATIONS[name].summary)
    parser.add_argument("--task", choices=[name], default=name, help=argparse.SUPPRESS)
    APPLICATIONS[name].add_arguments(parser)
    return parser


def task_of(argv: Sequence[str]) -> str | None:
    """The value of ``--task`` in argv (``--task NAME`` or ``--task=NAME``), if any."""
    for i, arg in enumerate(argv):
        if arg == "--task" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--task="):
            return arg.split("=", 1)[1]
    return None


def run_application(argv: Sequence[str], prog: str = "rnnjax train") -> dict[str, Any]:
    """Parses ``argv`` (the flags after ``train``) and runs the application it names.

    Raises:
        ValueError: unknown application or bad input (argparse errors exit with status 2).
    """
    argv = list(argv)
    name = task_of(argv)
    if name is None:
        raise ValueError(f"--task is required; choose one of {', '.join(APPLICATIONS)}")
    args = parser_for(name, prog).parse_args(argv)
    args.command = shlex.join([*prog.split(), *argv])
    return APPLICATIONS[name].run(args)


def main(argv: Sequence[str] | None = None, prog: str = "rnnjax train") -> int:
    """Runs an application; bad input → one line on stderr and exit status 2."""
    try:
        result = run_application(sys.argv[1:] if argv is None else argv, prog)
    except SystemExit as exit_:  # usage errors (status 2) and --help (status 0)
        return int(exit_.code or 0)
    except ValueError as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in result["evaluation"].items() if isinstance(v, int | float)}
    print(json.dumps({"task": result["task"], **summary, "target": result["target"]}))
    return 0


__all__ = ["APPLICATIONS", "App", "main", "parser_for", "run_application", "task_of"]
