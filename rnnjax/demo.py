"""``rnnjax demo``: a Simple RNN and an LSTM, side by side, on Python's own help text.

Both models get the same CPU budget on the embedded corpus (`pydoc_data.topics`, no
download). Then the demo prints a table — loss, bits per character, clip rate and how much
of a change of the memory at step t still reaches step T, ‖∂c_T/∂c_t‖, at a few lags —
samples text from the LSTM, and writes plots and a report to ``runs/demo/``.

The lags column is the lecture's vanishing-gradient story measured on the trained networks:
the Simple RNN's c_T forgets c_t geometrically (each step multiplies by W diag(tanh')), the
LSTM's cell state is an additive path that forgets only through its forget gate.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.analysis import jacobian_norms
from rnnjax.data.text import default_corpus
from rnnjax.train import RunConfig, read_metrics, sample, setup, train
from rnnjax.train.checkpoint import METRICS

CELLS = ("simple_rnn", "lstm")
LAGS = (1, 10, 30, 60, 100)
SECONDS = 40.0  # training time per model: the whole demo takes about 2 minutes
PROMPT = "def "
_MARKER = "demo.json"  # written last; a directory holding it is a previous demo's


def _config(cell: str) -> RunConfig:
    return RunConfig(
        corpus="default",
        cell=cell,
        hidden=128,
        window=64,
        batch_size=32,
        lr=2e-3,
        clip=1.0,
        steps=100_000,
        eval_every=100_000,
        checkpoint_every=100_000,
        log_every=20,
    )


def _prepare(out: Path) -> None:
    """Empties ``out`` if it holds a previous demo; refuses to touch anything else."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / _MARKER).is_file():
            raise ValueError(f"{out} is not empty and not a previous demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _gradient_lags(setup_, params, T: int = 101, rows: int = 8) -> dict[int, float]:
    """‖∂c_T/∂c_t‖₂ of the first layer at every lag T − t = 0..T, mean over ``rows``
    validation windows of T characters."""
    model, val = setup_.model, setup_.text.val
    tokens = jnp.asarray(val[:rows, :T])  # (rows, T)
    xs = model.features(params, tokens)  # (rows, T, E)
    norms = jacobian_norms(model.stack.cells[0], params.rnn[0], xs, forward=False)
    log_mean = np.asarray(norms.log_backward_mean)  # (T+1,), index t
    return {lag: float(np.exp(log_mean[T - lag])) for lag in range(T + 1)}


def _plot(out: Path, results: dict[str, dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for cell, r in results.items():
        seconds = [m["time"] for m in r["curve"]]
        ax1.plot(seconds, [m["bpc"] for m in r["curve"]], label=f"{cell} (train)")
        ax1.axhline(r["eval"]["bpc"], ls="--", lw=1, color=ax1.lines[-1].get_color())
        lags = sorted(r["lags"])
        ax2.semilogy(lags, [r["lags"][k] for k in lags], label=cell)
    ax1.set(
        xlabel="seconds (same budget each)",
        ylabel="bits per character",
        title="training (dashed: validation)",
    )
    ax2.set(
        xlabel="lag T − t (characters)",
        ylabel="‖∂c_T/∂c_t‖₂ (first layer)",
        title="how far back a change still reaches",
    )
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(results: dict[str, dict[str, Any]]) -> str:
    lags = [k for k in LAGS if all(k in r["lags"] for r in results.values())]
    head = ["model", "params", "steps", "val loss", "val bpc", "clip rate"]
    head += [f"lag {k}" for k in lags]
    rows = []
    for cell, r in results.items():
        rows.append(
            [
                cell,
                f"{r['n_params']:,}",
                str(r["step"]),
                f"{r['eval']['loss']:.3f}",
                f"{r['eval']['bpc']:.3f}",
                f"{r['train']['clip_rate']:.0%}",
            ]
            + [f"{r['lags'][k]:.1e}" for k in lags]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), rule, *(line(r) for r in rows)])


def _story(results: dict[str, dict[str, Any]], vocab_size: int) -> str:
    """What the table says, in words, for a newcomer."""
    lstm, rnn = results["lstm"], results["simple_rnn"]
    lag = max(k for k in LAGS if k in lstm["lags"] and k in rnn["lags"])
    faster = "faster" if rnn["lags"][lag] < lstm["lags"][lag] else "no faster"
    gap = rnn["eval"]["bpc"] - lstm["eval"]["bpc"]
    if abs(gap) < 0.1:
        on_text = f"On this text the two score alike after {rnn['step']:,} / {lstm['step']:,} steps"
    else:
        better = "LSTM" if gap > 0 else "Simple RNN"
        on_text = f"On this text the {better} scores {abs(gap):.2f} bits per character better"
    return (
        f"val loss / val bpc: cross-entropy on held-out text, in nats / bits per character "
        f"(lower is better;\n  a uniform guess over the {vocab_size} characters is "
        f"{math.log2(vocab_size):.2f} bits).\n"
        f"clip rate: share of updates whose gradient norm exceeded 1 and was rescaled "
        f"(Pascanu et al. 2013).\n"
        f"lag k: ‖∂c_T/∂c_(T−k)‖, how much of a change of the memory k characters ago still "
        f"reaches the present.\n\n"
        f"At lag {lag}: {rnn['lags'][lag]:.1e} for the Simple RNN, {lstm['lags'][lag]:.1e} for "
        f"the LSTM. The Simple RNN's gradient\nvanishes {faster}: every step multiplies it by "
        f"Wᵀ diag(tanh'), while the LSTM's cell state is an additive\npath that fades only "
        f"through its forget gate. {on_text};\non tasks that need a memory of 100 steps only "
        f"the LSTM learns (benchmarks/results/long_range_*.md)."
    )


def run_demo(out: str = "runs/demo", seconds: float | None = None) -> int:
    """Runs the demo; returns the exit status. See the module docstring."""
    seconds = SECONDS if seconds is None else seconds
    if not seconds > 0:
        raise ValueError(f"--seconds must be > 0, got {seconds}")
    root = Path(out)
    _prepare(root)
    t0 = time.perf_counter()
    text = default_corpus()
    print(
        f"rnnjax demo: a Simple RNN and an LSTM (128 units each) learn to predict the next\n"
        f"character of Python's help text ({len(text):,} characters, no download), "
        f"{seconds:.0f} s of training each on {jax.device_count()} {jax.default_backend()} "
        f"device(s).\n"
    )
    results: dict[str, dict[str, Any]] = {}
    for cell in CELLS:
        config = _config(cell)
        summary = train(config, str(root / cell), text=text, time_limit=seconds)
        s = setup(config, text=text)
        assert s.text is not None
        params = summary.pop("state").params
        curve = [m for m in read_metrics(root / cell / METRICS) if "bpc" in m and "split" not in m]
        results[cell] = {**summary, "lags": _gradient_lags(s, params), "curve": curve}
        if cell == "lstm":
            results[cell]["sample"] = sample(
                s.model, params, s.text.vocab, PROMPT, 300, temperature=0.8, seed=0
            )
    table = _table(results)
    story = _story(results, len(set(text)))
    lstm = results["lstm"]
    print("\n" + table + "\n\n" + story + "\n")
    print(f"LSTM sample (prompt {PROMPT!r}, temperature 0.8):\n{PROMPT}{lstm['sample']}\n")
    plot = _plot(root, results)
    report = root / "report.md"
    report.write_text(
        f"# rnnjax demo\n\n{table}\n\n{story}\n\n"
        f"Lags: ‖∂c_T/∂c_t‖₂ of the first layer's carry (the LSTM's is (h, c)), averaged over "
        f"8 validation windows of 101 characters (rnnjax.analysis.jacobian_norms).\n\n"
        f"## LSTM sample\n\n```\n{PROMPT}{lstm['sample']}\n```\n\n![curves](demo.png)\n"
    )
    summary_json = {c: {k: v for k, v in r.items() if k != "curve"} for c, r in results.items()}
    (root / _MARKER).write_text(json.dumps(summary_json, indent=2, default=float) + "\n")
    print(
        f"wrote {report}, {plot} and the two runs under {root}/ "
        f"({time.perf_counter() - t0:.0f} s in all)"
    )
    print(f"try: rnnjax sample --run {root}/lstm --prompt 'class '")
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
