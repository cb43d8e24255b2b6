"""The ``rnnjax grads`` command: build a cell, diagnose its gradients, write PNG + JSON.

The console script (`rnnjax.cli`) wires it as::

    sub = subparsers.add_parser("grads", help="gradient dynamics report")
    add_grads_arguments(sub)
    ...
    return run_grads(args)          # ValueError -> exit code 2

Example::

    rnnjax grads --cell lstm --hidden 128 --T 200 --init default --out runs/grads
    rnnjax grads --cell simple_rnn --init rho=1.5 --T 300 --out runs/rho15
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import jax

from rnnjax import initializers
from rnnjax.analysis.report import diagnose
from rnnjax.cells import CELLS

CELL_NAMES = ("simple_rnn", "lstm", "gru", "multiplicative_rnn")
INIT_NAMES = ("default", *initializers.SCHEMES)


def add_grads_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the flags of ``rnnjax grads`` to ``parser``."""
    parser.add_argument("--cell", choices=CELL_NAMES, default="lstm", help="cell family")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size H")
    parser.add_argument("--T", type=int, default=200, help="sequence length")
    parser.add_argument("--batch", type=int, default=8, help="number of random sequences")
    parser.add_argument("--input-size", type=int, default=16, help="input features D")
    parser.add_argument(
        "--init",
        default="default",
        help=f"initialisation: default; {', '.join(initializers.SCHEMES)} (Simple RNN "
        f"schemes); or rho=R: each recurrent block rescaled to spectral radius R "
        f"({', '.join(initializers.SQUARE_RECURRENCE)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of params and inputs")
    parser.add_argument("--lyapunov", type=int, default=8, help="Lyapunov exponents (0: skip)")
    parser.add_argument("--out", required=True, help="output directory (report.json, .png)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing report")


def _init_kwargs(cell_name: str, init: str) -> dict[str, Any]:
    """The factory keyword arguments that realise ``--init`` (the same rule as ``train``)."""
    return initializers.for_cell(cell_name, init)


def build(args: argparse.Namespace):
    """(cell, params, xs) from parsed arguments (validated)."""
    for name in ("hidden", "T", "batch", "input_size"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.lyapunov < 0:
        raise ValueError(f"--lyapunov must be >= 0, got {args.lyapunov}")
    if args.cell not in CELL_NAMES:
        raise ValueError(f"unknown --cell {args.cell!r}; choose one of {CELL_NAMES}")
    kwargs = _init_kwargs(args.cell, args.init)
    cell = CELLS[args.cell](args.hidden, **kwargs)
    k_params, k_xs = jax.random.split(jax.random.key(args.seed))
    params = cell.init(k_params, args.input_size)
    xs = jax.random.normal(k_xs, (args.batch, args.T, args.input_size))  # (B, T, D)
    return cell, params, xs


def run_grads(args: argparse.Namespace) -> int:
    """Runs ``rnnjax grads``: writes OUT/report.json and OUT/report.png, prints the verdict.

    Returns:
        0 on success.

    Raises:
        ValueError: a bad flag value, or an existing report without ``--force``.
    """
    json_path = os.path.join(args.out, "report.json")
    png_path = os.path.join(args.out, "report.png")
    if not args.force and (os.path.exists(json_path) or os.path.exists(png_path)):
        raise ValueError(f"{json_path} already exists; pass --force to overwrite it")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} exists and is not a directory")
    base = os.path.abspath(args.out)
    while not os.path.exists(base):
        base = os.path.dirname(base)
    if not os.path.isdir(base) or not os.access(base, os.W_OK | os.X_OK):
        problem = "is a file" if not os.path.isdir(base) else "is not writable"
        raise ValueError(f"cannot create --out {args.out}: {base} {problem}")
    cell, params, xs = build(args)
    report = diagnose(cell, params, xs, lyapunov_k=args.lyapunov)
    from rnnjax.analysis.plot import plot_report

    os.makedirs(args.out, exist_ok=True)
    report.save_json(json_path)
    plot_report(report).savefig(png_path, dpi=110)
    print(report.verdict)
    print(f"wrote {json_path} and {png_path}")
    return 0
