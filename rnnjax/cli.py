"""The ``rnnjax`` command: train, sample, grads, demo.

::

    rnnjax train --task adding --T 100 --cell lstm --hidden 64 --steps 2000 --out runs/adding
    rnnjax train --corpus default --cell gru --layers 2 --out runs/gru
    rnnjax train --out runs/gru --resume --steps 4000
    rnnjax sample --run runs/gru --prompt "def " --temperature 0.8
    rnnjax grads ...          # the gradient report of rnnjax.analysis
    rnnjax demo               # Simple RNN vs LSTM on Python's help text, in about 2 minutes

Bad input (unknown task or cell, T <= 0, a missing / empty / binary / non-UTF-8 corpus, a
missing run directory, a corrupted or incompatible checkpoint, ...) prints one line on stderr
and exits with status 2, before anything is written. A run stopped by non-finite losses
exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from rnnjax.train.config import RunConfig

# flag -> (RunConfig field, type, help); defaults come from RunConfig (None = kind-dependent)
TRAIN_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--task": (
        "task",
        str,
        "a long-range task: adding, multiplication, temporal_order, "
        "temporal_order_3bit, permutation, memorisation, copy; or an application with its "
        "own flags (rnnjax train --task NAME -h): translate, caption, qa, handwriting, "
        "handwriting_recognition, tree",
    ),
    "--T": ("T", int, "task length parameter (default 100)"),
    "--definition": ("definition", str, "adding only: hochreiter (default) or pascanu"),
    "--corpus": ("corpus", str, "a UTF-8 text file, or 'default' for Python's help text"),
    "--cell": ("cell", str, "lstm (default), simple_rnn, gru, multiplicative_rnn, min_gru, ..."),
    "--hidden": ("hidden", int, "units per layer (default 64 for tasks, 128 for text)"),
    "--layers": ("layers", int, "stacked layers (default 1)"),
    "--init": ("init", str, "Simple RNN init scheme: sigmoid, basic_tanh, smart_tanh, irnn"),
    "--forget-bias": ("forget_bias", float, "LSTM: initial forget-gate bias (default 1)"),
    "--embed": ("embed", int, "character embedding size (default 32)"),
    "--dropout": ("dropout", float, "dropout between layers (default 0)"),
    "--backend": ("backend", str, "unroll backend (default scan)"),
    "--optimizer": ("optimizer", str, "adam (default), sgd, rmsprop or adagrad"),
    "--lr": ("lr", float, "learning rate (default 1e-3 for tasks, 2e-3 for text)"),
    "--momentum": ("momentum", float, "momentum of sgd / rmsprop (default 0)"),
    "--lr-decay": ("lr_decay", float, "lr multiplied by this every 1000 steps (default 1)"),
    "--clip": ("clip", float, "global-norm clipping threshold (default 1; 0 = off)"),
    "--omega": ("omega", float, "weight of Pascanu's regulariser Ω (default 0 = off)"),
    "--omega-decay": ("omega_decay", float, "Ω weight multiplied by this every step (default 1)"),
    "--batch-size": ("batch_size", int, "sequences (or text streams) per step (default 32)"),
    "--window": ("window", int, "truncated-BPTT window in characters (default 64)"),
    "--val-fraction": ("val_fraction", float, "share of the text held out (default 0.1)"),
    "--steps": ("steps", int, "training steps (default 2000)"),
    "--seed": ("seed", int, "random seed (default 0)"),
    "--eval-every": ("eval_every", int, "evaluate every N steps (default 250)"),
    "--eval-size": ("eval_size", int, "fresh test sequences per task evaluation (default 1000)"),
    "--log-every": ("log_every", int, "log every N steps (default 10)"),
    "--checkpoint-every": ("checkpoint_every", int, "checkpoint every N steps (default 100)"),
    "--keep": ("keep", int, "checkpoints kept (default 3)"),
    "--max-bad-steps": ("max_bad_steps", int, "stop after N non-finite steps in a row (10)"),
}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit status 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train on a task or a corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, (dest, kind, text) in TRAIN_FLAGS.items():
        p.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    p.add_argument("--out", help="run directory (default runs/<task or text>-<cell>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: call jax.distributed.initialize() first",
    )
    p.add_argument("--coordinator", help="with --distributed: host:port of process 0")
    p.add_argument("--num-processes", type=int, help="with --distributed: number of processes")
    p.add_argument("--process-id", type=int, help="with --distributed: this process's id")
    p.set_defaults(func=_train)


def _train(args) -> int:
    from rnnjax.train import initialize_distributed, train

    given = {dest: getattr(args, dest) for dest, _, _ in TRAIN_FLAGS.values()}
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("clip") == 0:
        given["clip"] = None
    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out DIR, the run to continue")
        ignored = sorted(k for k in given if k != "steps")
        if ignored:
            print(
                f"rnnjax: note: --resume uses the settings in {args.out}/config.json; "
                f"ignoring {', '.join(ignored)}",
                file=sys.stderr,
            )
        config = RunConfig(steps=given.get("steps"))
    else:
        config = RunConfig(**given).resolved()
    if args.distributed:
        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    out = (
        args.out or f"runs/{f'{config.task}-T{config.T}' if config.task else 'text'}-{config.cell}"
    )
    summary = train(config, out, resume=args.resume, progress=None if args.quiet else sys.stderr)
    _print_summary(out, summary)
    return 0


def _print_summary(out: str, summary: dict) -> None:
    train, evaluation = summary["train"], summary["eval"]
    print(
        f"run {out}: {summary['step']} steps, {summary['n_params']:,} parameters, "
        f"{summary['steps_per_s']:.1f} steps/s, {summary['skipped']} skipped"
    )
    shown = ("loss", "bpc", "accuracy", "grad_norm", "clip_rate")
    print("  train: " + ", ".join(f"{k} {train[k]:.4g}" for k in shown if k in train))
    if evaluation:
        print("  eval:  " + ", ".join(f"{k} {v:.4g}" for k, v in evaluation.items()))
    print(f"  metrics: {out}/metrics.jsonl")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="sample text from a trained character model")
    p.add_argument("--run", required=True, help="the run directory of a text run")
    p.add_argument("--prompt", default="\n", help="text to start from (default: a newline)")
    p.add_argument("--length", type=int, default=300, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=_sample)


def _sample(args) -> int:
    from rnnjax.train import restore_run, sample

    config, model, state, vocab = restore_run(args.run)
    if vocab is None:
        raise ValueError(f"run {args.run} was trained on the {config.task} task, not on text")
    text = sample(
        model,
        state.params,
        vocab,
        args.prompt,
        args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
    )
    print(args.prompt + text)
    return 0


def _add_grads(sub) -> None:
    from rnnjax.analysis.command import add_grads_arguments, run_grads

    p = sub.add_parser("grads", help="gradient-flow report of a cell (rnnjax.analysis)")
    add_grads_arguments(p)
    p.set_defaults(func=run_grads)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="Simple RNN vs LSTM on Python's help text (~2 minutes)")
    p.add_argument("--out", default="runs/demo", help="where the report goes (runs/demo)")
    p.add_argument("--seconds", type=float, default=None, help="training time per model")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from rnnjax.demo import run_demo

    return run_demo(args.out, seconds=args.seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rnnjax", description="Functional recurrent networks in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_sample(sub)
    _add_grads(sub)
    _add_demo(sub)
    return parser


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # the applications (rnnjax.models) parse their own flags
        from rnnjax.models.registry import APPLICATIONS, task_of
        from rnnjax.models.registry import main as run_application

        if task_of(argv[1:]) in APPLICATIONS:
            return run_application(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors (status 2) and --help (status 0)
        return int(exit_.code or 0)
    from rnnjax.train import TrainingHaltedError

    try:
        return int(args.func(args))
    except ValueError as err:
        print(f"rnnjax {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except TrainingHaltedError as err:
        print(f"rnnjax {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rnnjax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
