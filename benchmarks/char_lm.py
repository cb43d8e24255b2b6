"""Character-level language model on the embedded corpus (Python's help text): validation bits
per character of an LSTM, the same LSTM with recurrent regularisation, and a Simple RNN after
the same CPU budget.

    python benchmarks/char_lm.py                 # MINUTES of CPU time per model
    python benchmarks/char_lm.py --minutes 1     # a shorter budget
    python benchmarks/char_lm.py --quick         # smoke run (not recorded)
    python benchmarks/char_lm.py --versus-pytorch --minutes 5    # whole loop against PyTorch

The budget is CPU time of this process (``time.process_time``), so other jobs on a shared
machine do not shrink it. The models have the same hidden size, embedding, window, batch and
optimiser; the regularised LSTM adds variational dropout (Gal & Ghahramani 2016: one mask per
sequence on x_t, one on h_{t-1} per forward pass, held over all steps; `rnnjax.regularise`) and
weight drop on W (Merity et al. 2017), off at evaluation.
The table gives their sizes, the steps each reached, validation BPC on the last 10 %
of the corpus (never trained on), and a sample.

Writes benchmarks/results/char_lm.json and char_lm.md, with the command that made them.

``--versus-pytorch`` instead trains one recipe (`VERSUS`: a 2-layer LSTM of 256 units,
embedding 64, batch 32, window 100, Adam 2e-3, clipping at 5) with ``rnnjax.train.train``
(backend auto) and with a plain PyTorch loop (`char_lm_pytorch.py`: same data order,
truncation, optimiser, clipping and validation) for the same *wall* time each, in alternating
slices (``--slices``, default 4: each loop continues from one of its slices to the next) on
the same machine, so that a drift in the machine's speed reaches both alike; writes
char_lm_vs_pytorch.{json,md}: steps in the budget, training steps per second (evaluations
excluded on both sides), overall and slice by slice, validation bits per character, and the
load average at each slice's start. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax

from rnnjax import allocator
from rnnjax.data import default_corpus
from rnnjax.train import RunConfig, read_metrics, sample, setup, train

# ---- settings -------------------------------------------------------------------------------
MINUTES = 10.0  # CPU minutes per model
# name -> RunConfig fields besides SETTINGS
MODELS: dict[str, dict] = {
    "lstm": dict(cell="lstm"),
    "lstm, regularised": dict(
        cell="lstm", input_dropout=0.1, recurrent_dropout=0.25, weight_drop=0.25
    ),
    "simple_rnn": dict(cell="simple_rnn"),
}
SETTINGS = dict(
    corpus="default",
    hidden=256,
    layers=1,
    embed=32,
    window=100,
    batch_size=32,
    optimizer="adam",
    lr=2e-3,
    clip=1.0,
    steps=10**7,
    eval_every=1000,
    checkpoint_every=10**7,
    log_every=50,
)
# the whole-loop comparison with PyTorch: one recipe, trained by both for the same wall time
VERSUS = dict(SETTINGS, cell="lstm", layers=2, embed=64, clip=5.0, eval_every=500)
PROMPT = "def "
RESULTS = Path(__file__).resolve().parent / "results"


def run(name: str, seconds: float, text: str, out: Path) -> dict:
    config = RunConfig(**MODELS[name], **SETTINGS)
    run_dir = out / name.replace(", ", "_")
    t0, c0 = time.perf_counter(), time.process_time()
    summary = train(config, str(run_dir), text=text, time_limit=seconds, clock=time.process_time)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    state = summary.pop("state")
    s = setup(config, text=text)
    assert s.text is not None
    curve = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("split") == "val"]
    text_sample = sample(s.model, state.params, s.text.vocab, PROMPT, 400, temperature=0.7)
    return dict(
        cell=name,
        config={k: v for k, v in MODELS[name].items() if k != "cell"},
        n_params=summary["n_params"],
        steps=summary["step"],
        val_bpc=summary["eval"]["bpc"],
        train_bpc=summary["train"]["bpc"],
        clip_rate=summary["train"]["clip_rate"],
        steps_per_s=summary["steps_per_s"],
        cpu_s=cpu,
        wall_s=wall,
        val_curve=[(r["step"], r["bpc"]) for r in curve],
        sample=PROMPT + text_sample,
    )


def markdown(rows: list[dict], command: str, minutes: float, n_chars: int) -> str:
    lines = [
        "# Character-level language model on the embedded corpus",
        "",
        f"Command: `{command}`",
        "",
        f"Corpus: Python's help text (`pydoc_data.topics`, {n_chars:,} characters), last 10 % "
        f"held out. Budget: {minutes:g} CPU minutes per model (process time). Machine: "
        f"{platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), "
        f"jax {jax.__version__}.",
        f"Settings: {json.dumps({k: v for k, v in SETTINGS.items() if k != 'steps'})}.",
        "Regularised LSTM: "
        + json.dumps({k: v for k, v in MODELS["lstm, regularised"].items() if k != "cell"})
        + " (training only).",
        "",
        "| model | parameters | steps | characters seen | train bpc | validation bpc | "
        "clip rate | CPU s | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        seen = r["steps"] * SETTINGS["batch_size"] * SETTINGS["window"]
        lines.append(
            f"| {r['cell']} | {r['n_params']:,} | {r['steps']:,} | {seen:,} | "
            f"{r['train_bpc']:.3f} | **{r['val_bpc']:.3f}** | {r['clip_rate']:.1%} | "
            f"{r['cpu_s']:.0f} | {r['wall_s']:.0f} |"
        )
    for r in rows:
        lines += [
            "",
            f"Sample from the {r['cell']} (temperature 0.7):",
            "",
            "```",
            r["sample"],
            "```",
        ]
    return "\n".join(lines) + "\n"


def versus_pytorch(seconds: float, text: str, out: Path, slices: int) -> list[dict]:
    """rnnjax's `train` and the PyTorch loop on `VERSUS`, ``seconds`` of wall time each, in
    ``slices`` alternating slices (rnnjax, PyTorch, rnnjax, ...): each library's run continues
    from one of its slices to the next (rnnjax's by resuming its run directory), so both see
    the machine in the same minutes."""
    from char_lm_pytorch import PytorchRun

    config = RunConfig(**VERSUS)
    data = setup(config, text=text).text
    assert data is not None
    torch_run = PytorchRun(data.train, data.val, data.vocab.size, VERSUS)
    run_dir = str(out / "rnnjax")
    jx: dict = dict(library="rnnjax", backend=chosen_backend(config), slices=[])
    pt: dict = dict(library="pytorch", slices=[])
    steps = 0
    for k in range(slices):
        load = os.getloadavg()[0]
        summary = train(
            config, run_dir, text=text, time_limit=seconds / slices, resume=k > 0, progress=None
        )
        ran = summary["step"] - steps
        steps = summary["step"]
        jx["slices"].append(dict(steps=ran, steps_per_s=summary["steps_per_s"], load=load))
        load = os.getloadavg()[0]
        pt["slices"].append(dict(torch_run.run(seconds / slices), load=load))
    curve = [r for r in read_metrics(out / "rnnjax" / "metrics.jsonl") if r.get("split") == "val"]
    jx.update(
        n_params=summary["n_params"],
        steps=steps,
        val_bpc=summary["eval"]["bpc"],
        val_curve=[(r["step"], r["bpc"]) for r in curve],
    )
    pt.update(torch_run.summary())
    for row in (jx, pt):  # training time summed over the slices
        train_s = sum(s["steps"] / s["steps_per_s"] for s in row["slices"])
        row["steps_per_s"] = row["steps"] / train_s
    return [jx, pt]


def loop_overhead(malloc: str, rounds: int = 4, steps: int = 200) -> str:
    """What `train` adds to the jitted step on the `VERSUS` recipe: steps per second of the bare
    step (``steps`` calls, then one wait) and of ``train`` (its own count, evaluations off),
    alternated ``rounds`` times in one process; medians. ``malloc``: the allocator's setting,
    for the report."""
    import statistics

    import jax.numpy as jnp

    from rnnjax.train import init_state, make_train_step

    text = default_corpus()
    config = RunConfig(**{**VERSUS, "steps": steps, "eval_every": 10**7}).resolved()
    s = setup(config, text=text)
    params = s.model.init(jax.random.key(config.seed))
    state = init_state(params, s.optimizer, s.objective.initial_carry(params))
    step, data = jax.jit(make_train_step(s.objective, s.optimizer)), jnp.asarray(s.data)
    jax.block_until_ready(step(state, data))  # compiled
    rates: dict[str, list[float]] = {"bare step": [], "rnnjax.train.train": []}
    load = os.getloadavg()[0]
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            state, _ = step(state, data)
        jax.block_until_ready(state)
        rates["bare step"].append(steps / (time.perf_counter() - t0))
        with tempfile.TemporaryDirectory() as out:
            summary = train(config, str(Path(out) / "run"), text=text, progress=None)
        rates["rnnjax.train.train"].append(summary["steps_per_s"])
    medians = {k: statistics.median(v) for k, v in rates.items()}
    ratio = medians["rnnjax.train.train"] / medians["bare step"]
    return "\n".join(
        [
            "# What the training loop adds to the step",
            "",
            "Command: `python benchmarks/char_lm.py --loop-overhead`",
            "",
            f"The `--versus-pytorch` recipe, {steps} steps per measurement, {rounds} rounds "
            f"alternated in one process, medians; load average {load:.1f} → "
            f"{os.getloadavg()[0]:.1f}; jax {jax.__version__}; malloc: {malloc}.",
            "",
            "| | steps/s (median) | every round |",
            "|---|---|---|",
            *(
                f"| {k} | {medians[k]:.2f} | {', '.join(f'{r:.2f}' for r in v)} |"
                for k, v in rates.items()
            ),
            "",
            f"train / bare step: **{ratio:.2f}**.",
            "",
        ]
    )


def chosen_backend(config: RunConfig) -> str:
    """The backend that ``backend="auto"`` runs for the recipe's LSTM layers here."""
    import jax.numpy as jnp

    import rnnjax as rj
    from rnnjax.kernels import BACKENDS, Problem, auto

    if config.backend != "auto":
        return config.backend
    problem = Problem(config.window, config.batch_size, jnp.dtype("float32"), jax.default_backend())
    return "auto: " + auto.choose(rj.lstm(config.hidden), problem, BACKENDS)[0]


def versus_markdown(rows: list[dict], command: str, minutes: float, malloc: str) -> str:
    import statistics

    import torch

    jx, pt = rows
    n = len(jx["slices"])
    lines = [
        "# The whole training loop: rnnjax train against a plain PyTorch loop",
        "",
        f"Command: `{command}`",
        "",
        f"Recipe: {json.dumps({k: v for k, v in VERSUS.items() if k != 'steps'})}; the "
        f"embedded corpus (Python's help text), last 10 % held out. {minutes:g} wall minutes "
        f"each, in {n} alternating slices of {60 * minutes / n:.0f} s (rnnjax, PyTorch, "
        "rnnjax, ...; each run continues from one of its slices to the next — rnnjax's by "
        "resuming its run directory — so both see the machine in the same minutes). Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs; "
        f"jax {jax.__version__}, torch {torch.__version__} ({pt['threads']} threads); "
        f"malloc: {malloc}. Steps "
        "per second count training time only (evaluations, checkpoints and rnnjax's "
        "compilation on resuming excluded); "
        "validation bits per character at the end of the budget, measured the same way. "
        "PyTorch's LSTM has two bias vectors per layer (b_ih, b_hh), hence 4H · L more "
        "parameters, and Adam moves their sum twice as far per update as rnnjax's one b; "
        "each library keeps its own initialisation. With b_hh frozen and the same weights the "
        "two loops give the same loss at every update (tests/test_parity.py).",
        "",
        "| library | parameters | steps in the budget | training steps/s | each slice's "
        "steps/s | validation bpc | load average at each slice's start |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["library"] + (f" (backend {r['backend']})" if "backend" in r else "")
        each = ", ".join(f"{s['steps_per_s']:.2f}" for s in r["slices"])
        loads = ", ".join(f"{s['load']:.1f}" for s in r["slices"])
        lines.append(
            f"| {name} | {r['n_params']:,} | {r['steps']:,} | {r['steps_per_s']:.2f} | "
            f"{each} | {r['val_bpc']:.3f} | {loads} |"
        )
    speed = jx["steps_per_s"] / pt["steps_per_s"]
    pairs = [
        a["steps_per_s"] / b["steps_per_s"] for a, b in zip(jx["slices"], pt["slices"], strict=True)
    ]
    lines += [
        "",
        f"rnnjax / PyTorch training steps per second: **{speed:.2f}** "
        f"(goal ≥ 1.2); slice by slice {', '.join(f'{p:.2f}' for p in pairs)} (median "
        f"{statistics.median(pairs):.2f}); steps in the same budget: "
        f"{jx['steps'] / pt['steps']:.2f}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--minutes",
        type=float,
        default=MINUTES,
        help="CPU minutes per model (with --versus-pytorch: wall minutes per library)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (not recorded)")
    parser.add_argument(
        "--loop-overhead",
        action="store_true",
        help="steps/s of the bare jitted step against rnnjax.train.train on the same recipe",
    )
    parser.add_argument(
        "--versus-pytorch",
        action="store_true",
        help="the whole loop against PyTorch on one recipe (--minutes of wall time each)",
    )
    parser.add_argument(
        "--slices",
        type=int,
        default=4,
        help="with --versus-pytorch: alternate the two loops in this many slices each",
    )
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="with --versus-pytorch or --loop-overhead: leave glibc's malloc as it is",
    )
    args = parser.parse_args(argv)
    if args.slices < 1:
        parser.error(f"--slices must be at least 1, got {args.slices}")
    if not args.minutes > 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    command = "python benchmarks/char_lm.py " + " ".join(sys.argv[1:] if argv is None else argv)
    seconds = 5.0 if args.quick else 60 * args.minutes
    if args.loop_overhead:
        malloc = "glibc defaults"  # else as under the rnnjax command (rnnjax.allocator)
        if not args.glibc_defaults and allocator.keep_freed_memory():
            malloc = "freed memory kept (rnnjax.allocator.keep_freed_memory)"
        report = loop_overhead(malloc)
        print(report)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "char_lm_loop_overhead.md").write_text(report)
        return 0
    text = default_corpus()
    out = Path(tempfile.mkdtemp(prefix="char_lm_"))
    if args.versus_pytorch:
        # both loops run in this process, so both reuse freed pages alike, as under the
        # rnnjax command (rnnjax.allocator); --glibc-defaults leaves glibc as it is
        malloc = "glibc defaults"
        if not args.glibc_defaults and allocator.keep_freed_memory():
            malloc = "freed memory kept (rnnjax.allocator.keep_freed_memory, both loops)"
        try:
            rows = versus_pytorch(seconds, text, out, args.slices)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        report = versus_markdown(rows, command, seconds / 60, malloc)
        print(report)
        if not args.quick:
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / "char_lm_vs_pytorch.json").write_text(
                json.dumps(dict(command=command, recipe=VERSUS, rows=rows), indent=1) + "\n"
            )
            (RESULTS / "char_lm_vs_pytorch.md").write_text(report)
        return 0
    try:
        rows = []
        for name in MODELS:
            rows.append(run(name, seconds, text, out))
            r = rows[-1]
            print(
                f"{name}: {r['steps']} steps, validation {r['val_bpc']:.3f} bits/char, "
                f"{r['n_params']:,} parameters, {r['cpu_s']:.0f} CPU s",
                flush=True,
            )
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if args.quick:
        return 0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "char_lm.json").write_text(
        json.dumps(
            dict(
                command=command, settings=SETTINGS, models=MODELS, minutes=args.minutes, rows=rows
            ),
            indent=1,
        )
        + "\n"
    )
    (RESULTS / "char_lm.md").write_text(markdown(rows, command, args.minutes, len(text)))
    print(f"wrote {RESULTS / 'char_lm.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
