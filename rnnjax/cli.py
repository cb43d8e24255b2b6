"""The ``rnnjax`` command: train, sample, grads, demo — one argparse parser with subcommands.

    rnnjax train --task adding --T 100 --cell lstm --hidden 64 --steps 2000 --out runs/adding
    rnnjax train --task translate --steps 600 --out runs/translate    # an application
    rnnjax train --corpus default --cell gru --layers 2 --out runs/gru
    rnnjax train --out runs/gru --resume --steps 4000
    rnnjax sample --run runs/gru --prompt "def " --temperature 0.8
    rnnjax grads --cell lstm --T 200 --out runs/grads
    rnnjax demo

Bad input (unknown task or cell, a flag that does not apply to the run, a missing / empty /
binary / non-UTF-8 corpus, a run directory that cannot be written, a corrupted or
incompatible checkpoint, ...) prints one line on stderr and exits with status 2, before
anything is written. A run stopped by non-finite losses exits with status 1. Ctrl-C (SIGINT)
or SIGTERM during ``train`` finishes the current step, writes a checkpoint and exits with
status 130 (SIGINT) or 143 (SIGTERM); a second signal exits at once.

``train`` parses every flag in one parser: the `RunConfig` fields (`FIELD_FLAGS`, checked
against the dataclass) and the flags each application declares (its ``add_arguments``, with
its own defaults); a flag the chosen run does not take is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rnnjax import allocator
from rnnjax.cells import CELLS
from rnnjax.data.tasks import TASKS
from rnnjax.initializers import CHRONO, SCHEMES, SQUARE_RECURRENCE
from rnnjax.kernels import BACKENDS
from rnnjax.models.registry import APPLICATIONS, application_parser
from rnnjax.train.config import RunConfig
from rnnjax.train.step import OPTIMIZERS

TRAIN_HELP = """\
Train a recurrent network on a long-range task (--task) or on a text corpus
(--corpus), run an application (--task translate and others: rnnjax train --task
NAME -h shows its flags), or continue a run (--out DIR --resume).

A run directory holds config.json (an application's: application.json),
metrics.jsonl and checkpoints/. A flag that does not apply to the run is an
error (--T or --definition with --corpus, --window with --task, --momentum with
adam, an application's flag with another run). Bad input prints one line and
exits with status 2, writing nothing; non-finite training exits with 1. Ctrl-C
or SIGTERM finishes the current step, writes a checkpoint and exits with 130 or
143 (a second signal exits at once).
"""

TRAIN_EXAMPLES = """\
examples:
  rnnjax train --task adding --T 100 --cell lstm --steps 2000 --out runs/adding
  rnnjax train --corpus default --cell gru --layers 2 --out runs/gru
  rnnjax train --corpus book.txt --hidden 256 --window 100 --out runs/book
  rnnjax train --out runs/gru --resume --steps 4000
  rnnjax train --task translate --steps 600 --out runs/translate
"""

_CHOICES = {"cell": tuple(CELLS), "backend": tuple(BACKENDS), "optimizer": tuple(OPTIMIZERS)}
_APPLICATIONS = ", ".join(APPLICATIONS)

# RunConfig field -> (type, help): one flag each (--forget-bias for forget_bias, --T for T);
# defaults come from RunConfig (None = kind-dependent)
FIELD_FLAGS: dict[str, tuple[Any, str]] = {
    "task": (
        str,
        f"a long-range task: {', '.join(TASKS)}; or an application with its own flags "
        f"(rnnjax train --task NAME -h): {_APPLICATIONS}",
    ),
    "T": (int, "tasks: length parameter (default 100)"),
    "definition": (str, "adding task: hochreiter (default) or pascanu"),
    "corpus": (str, "a UTF-8 text file, or 'default' for Python's help text"),
    "cell": (str, f"{', '.join(CELLS)} (default lstm)"),
    "hidden": (int, "units per layer (default 64 for tasks, 128 for text)"),
    "layers": (int, "stacked layers (default 1)"),
    "init": (
        str,
        f"initialisation: {', '.join(SCHEMES)} (simple_rnn schemes), rho=R: recurrent "
        f"matrix of spectral radius R ({', '.join(SQUARE_RECURRENCE)}), or chrono=T: gate "
        f"biases for lags up to T steps ({', '.join(CHRONO)}) (default: the cell's)",
    ),
    "forget_bias": (float, "lstm: initial forget-gate bias (default 1)"),
    "embed": (int, "text: character embedding size (default 32)"),
    "dropout": (float, "text: dropout between layers (default 0)"),
    "input_dropout": (float, "variational dropout on x_t (default 0)"),
    "recurrent_dropout": (float, "variational dropout on h_{t-1} (default 0)"),
    "zoneout": (float, "zoneout probability of h and c (default 0)"),
    "weight_drop": (float, "DropConnect on the recurrent matrix (default 0)"),
    "backend": (
        str,
        f"unroll backend: {', '.join(BACKENDS)} (default auto: the fastest that runs the "
        "cell here; scan is the reference)",
    ),
    "optimizer": (str, f"{', '.join(OPTIMIZERS)} (default adam)"),
    "lr": (float, "learning rate (default 1e-3 for tasks, 2e-3 for text)"),
    "momentum": (float, "sgd / rmsprop: momentum (default 0)"),
    "lr_decay": (float, "lr multiplied by this every 1000 steps (default 1)"),
    "clip": (float, "global-norm clipping threshold (default 1; 0 = off)"),
    "omega": (float, "weight of Pascanu's regulariser Omega (default 0 = off)"),
    "omega_decay": (float, "with --omega: weight x this every step (default 1)"),
    "batch_size": (int, "sequences (or text streams) per step (default 32)"),
    "window": (int, "text: truncated-BPTT window in characters (default 64)"),
    "val_fraction": (float, "text: share held out for validation (default 0.1)"),
    "steps": (int, "training steps (default 2000)"),
    "seed": (int, "random seed (default 0)"),
    "eval_every": (int, "evaluate every N steps (default 250)"),
    "eval_size": (int, "tasks: fresh test sequences per evaluation (default 1000)"),
    "log_every": (int, "log every N steps (default 10)"),
    "checkpoint_every": (int, "checkpoint every N steps (default 100)"),
    "keep": (int, "checkpoints kept (default 3)"),
    "max_bad_steps": (int, "stop after N non-finite steps in a row (default 10)"),
}
INTERNAL_FIELDS = ("corpus_sha256",)  # RunConfig fields that `train` fills in, not flags


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _train_flags() -> dict[str, tuple[str, Any, str]]:
    """flag -> (RunConfig field, type, help), checked against `RunConfig`'s fields."""
    fields = [f.name for f in dataclasses.fields(RunConfig) if f.name not in INTERNAL_FIELDS]
    if sorted(fields) != sorted(FIELD_FLAGS):
        raise RuntimeError(
            f"RunConfig fields without a flag: {sorted(set(fields) - set(FIELD_FLAGS))}; "
            f"flags without a field: {sorted(set(FIELD_FLAGS) - set(fields))}"
        )
    return {_flag(name): (name, *FIELD_FLAGS[name]) for name in fields}


TRAIN_FLAGS = _train_flags()
# flags of `rnnjax train` itself, whatever the run: dest -> applies to applications
_RUN_FLAGS = {
    "out": True,
    "resume": True,
    "quiet": True,
    "distributed": False,
    "coordinator": False,
    "num_processes": False,
    "process_id": False,
    "heartbeat_timeout": False,
}


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" after a flag's help, unless it has none or names it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default, text = action.default, action.help or ""
        if action.required or default is None or default is False or "default" in text:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit status 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _application_actions() -> dict[str, list[tuple[str, argparse.Action]]]:
    """flag -> [(application, its argparse action)] over every application's own flags."""
    found: dict[str, list[tuple[str, argparse.Action]]] = {}
    for name in APPLICATIONS:
        for action in application_parser(name)._actions:
            found.setdefault(action.option_strings[0], []).append((name, action))
    return found


def _shape(action: argparse.Action) -> tuple[Any, ...]:
    """What one parser needs to agree on for a flag declared in several places."""
    return (action.dest, action.type or str, action.nargs, type(action).__name__)


class _TrainFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's lines; several values read ``OP [OP …]``."""

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if action.nargs == argparse.ONE_OR_MORE:
            (metavar,) = self._metavar_formatter(action, default_metavar)(1)
            return f"{metavar} [{metavar} …]"
        return super()._format_args(action, default_metavar)


class _TrainHelp(argparse.Action):
    """``-h``: the help of the application named by an earlier ``--task``, or of ``train``."""

    def __init__(
        self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None
    ):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        task = getattr(namespace, "task", None)
        if task in APPLICATIONS:
            parser = _Parser(
                prog=f"{parser.prog} --task {task}",
                description=f"{APPLICATIONS[task].summary}. Flags of other runs are refused.",
            )
            parser.add_argument("--out", help=f"run directory (default runs/{task})")
            parser.add_argument("--resume", action="store_true", help="continue the run in --out")
            parser.add_argument("--quiet", action="store_true", help="no progress display")
            APPLICATIONS[task].add_arguments(parser)
        parser.print_help()
        parser.exit()


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train on a task, a corpus or an application",
        description=TRAIN_HELP,
        epilog=TRAIN_EXAMPLES,
        formatter_class=_TrainFormatter,
        usage="%(prog)s (--task NAME | --corpus PATH | --out DIR --resume) [flags]",
        add_help=False,
    )
    p.add_argument(
        "-h",
        "--help",
        action=_TrainHelp,
        help="show this help (after --task NAME: the application's flags)",
    )
    for flag, (dest, kind, text) in TRAIN_FLAGS.items():
        p.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    p.add_argument("--out", help="run directory (default runs/<task or text>-<cell>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: call jax.distributed.initialize() first",
    )
    p.add_argument("--coordinator", help="with --distributed: host:port of process 0")
    p.add_argument("--num-processes", type=int, help="with --distributed: number of processes")
    p.add_argument("--process-id", type=int, help="with --distributed: this process's id")
    p.add_argument(
        "--heartbeat-timeout",
        type=int,
        help="with --distributed: seconds before a silent process counts as lost (default 100)",
    )
    for flag, uses in _application_actions().items():
        shapes = {_shape(action) for _, action in uses}
        if flag in TRAIN_FLAGS:
            dest, kind, _ = TRAIN_FLAGS[flag]
            shapes.add((dest, kind, None, argparse._StoreAction.__name__))
        if len(shapes) > 1:
            raise RuntimeError(f"{flag} is declared with different types or dests: {shapes}")
        if flag in TRAIN_FLAGS:
            continue
        names, first = ", ".join(name for name, _ in uses), uses[0][1]
        kind = "store_true" if isinstance(first, argparse._StoreTrueAction) else "store"
        extra = {} if kind == "store_true" else {"type": first.type, "nargs": first.nargs}
        p.add_argument(
            flag,
            dest=first.dest,
            action=kind,
            default=None,
            help=f"--task {names}: {first.help}",
            **extra,
        )
    p.set_defaults(func=_train)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The run flags given on the command line (dest -> value), ``train``'s own excluded."""
    skip = {*_RUN_FLAGS, "command", "func", "argv"}
    return {k: v for k, v in vars(args).items() if k not in skip and v is not None}


def _flag_names() -> dict[str, str]:
    """dest -> flag, over every flag of ``rnnjax train``."""
    names = {dest: flag for flag, (dest, _, _) in TRAIN_FLAGS.items()}
    for flag, uses in _application_actions().items():
        names.setdefault(uses[0][1].dest, flag)
    return names


def _read_application(out: str) -> dict[str, Any] | None:
    """``OUT/application.json`` of an application run, or None (a task or text run)."""
    from rnnjax.models.training import APPLICATION_CONFIG

    path = Path(out) / APPLICATION_CONFIG
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        return {"task": str(saved["task"]), "flags": dict(saved["flags"])}
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not an application record (task and flags)") from None


def application_namespace(
    args: argparse.Namespace, stop: Callable[[], bool] | None = None
) -> argparse.Namespace:
    """The flags of the application run ``args`` names (ValueError for a flag that does not
    apply, an unknown application or a bad choice): the application's defaults, then the
    saved flags of a resumed run, then the flags given."""
    given = _given(args)
    saved = _read_application(args.out) if args.resume and args.out else None
    name = args.task or (saved or {}).get("task")
    if name not in APPLICATIONS:
        raise ValueError(f"unknown application {name!r}; choose one of {_APPLICATIONS}")
    actions = {a.dest: a for a in application_parser(name)._actions}
    flags = {dest: action.default for dest, action in actions.items()}
    names = _flag_names()
    for dest in (*given, *(k for k, v in vars(args).items() if v and _RUN_FLAGS.get(k) is False)):
        if dest not in actions and dest != "task":
            flag = names.get(dest, _flag(dest))
            raise ValueError(
                f"{flag} does not apply to --task {name} (its flags: rnnjax train --task {name} -h)"
            )
    for dest, value in given.items():
        choices = getattr(actions.get(dest), "choices", None)
        for v in value if isinstance(value, list) else [value]:
            if choices is not None and v not in choices:
                raise ValueError(
                    f"argument {names[dest]}: invalid choice: {v!r} (choose from "
                    f"{', '.join(map(str, choices))})"
                )
    if args.resume:
        if saved is None:
            raise ValueError(f"--resume: {args.out} holds no application run to continue")
        if saved["task"] != name:
            raise ValueError(f"--resume: run {args.out} trains {saved['task']}, not {name}")
        changed = {k for k, v in given.items() if k not in ("steps", "cpu_minutes", "task")}
        ignored = sorted(names.get(k, k) for k in changed if saved["flags"].get(k) != given[k])
        if ignored:
            print(
                f"rnnjax: note: --resume uses the flags in {args.out}; ignoring "
                f"{', '.join(ignored)} (different from the run's)",
                file=sys.stderr,
            )
        flags.update(saved["flags"])
        flags.update({k: v for k, v in given.items() if k in ("steps", "cpu_minutes")})
    else:
        flags.update({k: v for k, v in given.items() if k != "task"})
    out = args.out or f"runs/{name}"
    argv = getattr(args, "argv", None)
    command = shlex.join(["rnnjax", *argv]) if argv else shlex.join(sys.argv)
    runtime = dict(out=out, run_dir=out, quiet=args.quiet, resume=args.resume, stop=stop)
    return argparse.Namespace(**flags, task=name, flags=flags, command=command, **runtime)


def _train_application(args, stop) -> int:
    from rnnjax.train import RunInterruptedError

    app_args = application_namespace(args, stop)
    try:
        result = APPLICATIONS[app_args.task].run(app_args)
    except RunInterruptedError as err:
        print(
            f"rnnjax train: interrupted by {stop.name} after step {err.step}; checkpoint at step "
            f"{err.checkpoint} in {err.directory}; continue with: rnnjax train --out "
            f"{app_args.out} --resume",
            file=sys.stderr,
        )
        return stop.exit_status
    summary = {k: v for k, v in result["evaluation"].items() if isinstance(v, int | float)}
    print(json.dumps({"task": result["task"], **summary, "target": result["target"]}))
    return 0


def _same(name: str, given: Any, saved: Any) -> bool:
    """Whether a flag given on resume equals the run's recorded value."""
    if name == "corpus" and given != "default" and saved not in (None, "default"):
        return Path(given).absolute() == Path(saved).absolute()
    return bool(given == saved)


def _train(args, stop) -> int:
    from rnnjax.train import RunDir, initialize_distributed, train
    from rnnjax.train.checkpoint import CHECKPOINTS
    from rnnjax.train.parallel import exit_on_error

    resumed_application = args.resume and args.out and _read_application(args.out) is not None
    if args.task in APPLICATIONS or (args.task is None and resumed_application):
        return _train_application(args, stop)
    if args.task is not None and args.task not in TASKS:
        raise ValueError(
            f"unknown task {args.task!r}; choose a task ({', '.join(TASKS)}) or an application "
            f"({_APPLICATIONS})"
        )
    fields = {dest for dest, _, _ in TRAIN_FLAGS.values()}
    names = _flag_names()
    for dest in _given(args):
        if dest not in fields:
            owners = [n for n, uses in APPLICATIONS.items() if dest in _dests(n)]
            raise ValueError(
                f"{names[dest]} applies to --task {' / '.join(owners)} only, not to this run"
            )
    given = {dest: getattr(args, dest) for dest, _, _ in TRAIN_FLAGS.values()}
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("clip") == 0:
        given["clip"] = None
    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out DIR, the run to continue")
        saved = RunDir(args.out).read_config()
        ignored = sorted(
            k for k, v in given.items() if k != "steps" and not _same(k, v, getattr(saved, k))
        )
        if ignored:
            print(
                f"rnnjax: note: --resume uses the settings in {args.out}/config.json; "
                f"ignoring {', '.join(ignored)} (different from the run's)",
                file=sys.stderr,
            )
        config = RunConfig(steps=given.get("steps"))
    else:
        config = RunConfig(**given).resolved()
    if args.distributed:
        initialize_distributed(
            args.coordinator, args.num_processes, args.process_id, args.heartbeat_timeout
        )
    out = (
        args.out or f"runs/{f'{config.task}-T{config.T}' if config.task else 'text'}-{config.cell}"
    )
    progress = None if args.quiet else sys.stderr
    with exit_on_error("rnnjax train", f"{out}/{CHECKPOINTS}"):  # several processes: see there
        summary = train(config, out, resume=args.resume, progress=progress, stop=stop)
    _print_summary(out, summary)
    if summary["interrupted"]:
        saved_step = summary["checkpoint"]
        where = (
            f"checkpoint at step {saved_step} in {out}/checkpoints"
            if saved_step is not None
            else "no checkpoint"
        )
        print(
            f"rnnjax train: interrupted by {stop.name} after step {summary['step']}; {where}; "
            f"continue with: rnnjax train --out {out} --resume",
            file=sys.stderr,
        )
        return stop.exit_status
    return 0


def _dests(application: str) -> set[str]:
    return {a.dest for a in application_parser(application)._actions}


def _print_summary(out: str, summary: dict) -> None:
    train, evaluation = summary["train"], summary["eval"]
    rate = summary["steps_per_s"]
    speed = f"{rate:.1f} steps/s" if rate is not None else "no step timed"
    ran = summary.get("steps_run", summary["step"])
    this_time = f" ({ran} in this call)" if ran != summary["step"] else ""
    print(
        f"run {out}: {summary['step']} steps{this_time}, {summary['n_params']:,} parameters, "
        f"{speed}, {summary['skipped']} skipped"
    )
    shown = ("loss", "bpc", "accuracy", "grad_norm", "clip_rate")
    print("  train: " + ", ".join(f"{k} {train[k]:.4g}" for k in shown if k in train))
    if evaluation:
        print("  eval:  " + ", ".join(f"{k} {v:.4g}" for k, v in evaluation.items()))
    print(f"  metrics: {out}/metrics.jsonl")


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample", help="sample text from a trained character model", formatter_class=_ShowDefaults
    )
    p.add_argument("--run", required=True, help="the run directory of a text run")
    p.add_argument("--prompt", default="\n", help="text to start from (default: a newline)")
    p.add_argument("--length", type=int, default=300, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=lambda args, stop: _sample(args))


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

    p = sub.add_parser(
        "grads",
        help="gradient-flow report of a cell (rnnjax.analysis)",
        description="Diagnose the gradient flow of a freshly initialised cell on random inputs: "
        "Jacobian norms over time, Pascanu's bound, loss-gradient contributions and Lyapunov "
        "exponents; writes OUT/report.json and OUT/report.png and prints the verdict.",
        formatter_class=_ShowDefaults,
    )
    add_grads_arguments(p)
    p.set_defaults(func=lambda args, stop: run_grads(args))


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="Simple RNN vs LSTM on Python's help text (~2 minutes)",
        formatter_class=_ShowDefaults,
    )
    p.add_argument("--out", default="runs/demo", help="where the report goes")
    p.add_argument("--seconds", type=float, default=None, help="training time per model")
    p.set_defaults(func=lambda args, stop: _demo(args))


def _demo(args) -> int:
    from rnnjax.demo import run_demo

    return run_demo(args.out, seconds=args.seconds)


def build_parser() -> argparse.ArgumentParser:
    from rnnjax import __version__

    parser = _Parser(
        prog="rnnjax",
        description="Functional recurrent networks in JAX: train, sample, analyse gradients.",
        epilog="rnnjax COMMAND --help shows the flags of a command.",
    )
    parser.add_argument("--version", action="version", version=f"rnnjax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_sample(sub)
    _add_grads(sub)
    _add_demo(sub)
    return parser


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror}"
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from rnnjax.train import TrainingHaltedError, TrainingInterruptedError
    from rnnjax.train.interrupt import SIGNALS, graceful_stop

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors (status 2) and --help (status 0)
        return int(exit_.code or 0)
    args.argv = argv
    # this process is the command's own: XLA's per-call temporaries reuse freed pages
    allocator.keep_freed_memory()
    # train: SIGINT / SIGTERM stop the loop after the current step (see rnnjax.train.interrupt)
    with graceful_stop(SIGNALS if args.command == "train" else ()) as stop:
        try:
            return int(args.func(args, stop))
        except (ValueError, OSError) as err:  # bad input, files that cannot be read or written
            print(f"rnnjax {args.command}: error: {_one_line(err)}", file=sys.stderr)
            return 2
        except TrainingHaltedError as err:
            print(f"rnnjax {args.command}: {err}", file=sys.stderr)
            return 1
        except TrainingInterruptedError as err:
            print(f"rnnjax {args.command}: {err}", file=sys.stderr)
            return stop.exit_status
        except KeyboardInterrupt:
            print(f"rnnjax {args.command}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
