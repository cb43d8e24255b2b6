"""Handwriting-style generation, the lecture's fourth application (Graves 2013).

Pen trajectories (Δx, Δy, pen-up) traced from rendered words (`handwriting_data`) train two
models with a mixture-density output (`mdn`):

- unconditional: LSTM → LSTM → mixture of M bivariate Gaussians + Bernoulli pen; it scribbles
  letter-like strokes;
- conditional synthesis: the first LSTM also reads Graves' soft attention window over the
  characters of the word to write, so the text chooses what is drawn.

Both are scored by the validation negative log-likelihood per point (nats, offsets in units
of `handwriting_data.SCALE` em) on held-out words, and sampled into a PNG.

Two models are trained: ``--steps`` is per model, ``--cpu-minutes`` is shared (half each)::

    rnnjax train --task handwriting --steps 1000 --out runs/handwriting
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.cells import lstm
from rnnjax.cells.base import Array
from rnnjax.driver import unroll
from rnnjax.models import handwriting_data as hd
from rnnjax.models import mdn
from rnnjax.models.training import (
    add_common_arguments,
    batch_indices,
    check_common,
    fit,
    write_result,
)

MAX_POINTS, SPLIT_SEED = 200, 1234
SYNTHESIS_TEXTS = ("hello", "lstm", "rnnjax")


class WriterParams(NamedTuple):
    """Attributes: first: layer-1 params (LSTMParams, or WindowParams when conditional);
    second: layer-2 LSTMParams over [x_t ; y¹_t]; W (H¹ + H, 6M + 1), b: the mixture head."""

    first: Any
    second: Any
    W: Array
    b: Array


class Writer(NamedTuple):
    """A two-layer handwriting model; see `writer`.

    Attributes:
        init: ``key -> WriterParams``.
        nll: ``(params, inputs, targets, lengths, chars=None, char_lengths=None)`` → mean
            NLL per valid point.
        sample: ``(params, key, steps, batch, chars=None, char_lengths=None, bias=0.5)`` →
            (trajectories (B, steps, 3), window centres (B, steps, K) or None).
    """

    init: Any
    nll: Any
    sample: Any


def writer(hidden: int, components: int = 10, window: int = 0) -> Writer:
    """Builds the model: ``window`` = K > 0 adds Graves' attention window (synthesis)."""
    V = len(hd.ALPHABET) + 1

    def first_cell(chars, char_lengths):
        if not window:
            return lstm(hidden)
        mask = jnp.arange(chars.shape[-1])[None, :] < char_lengths[:, None]  # (B, U)
        return mdn.window_cell(hidden, window, jax.nn.one_hot(chars, V), mask)

    H1 = hidden + (V if window else 0)
    second = lstm(hidden)

    def init(key) -> WriterParams:
        k1, k2, k3 = jax.random.split(key, 3)
        dummy = (jnp.zeros((1, 1), jnp.int32), jnp.ones((1,), jnp.int32))
        W = jax.nn.initializers.lecun_normal()(k3, (H1 + hidden, mdn.mixture_size(components)))
        return WriterParams(
            first_cell(*dummy).init(k1, 3),
            second.init(k2, 3 + H1),
            W,
            jnp.zeros((mdn.mixture_size(components),), jnp.float32),
        )

    def head(params, y1, h2):
        y = jnp.concatenate([y1, h2], axis=-1) @ params.W  # (..., 6M + 1)
        return y + params.b.reshape((1,) * (y.ndim - 1) + (-1,))

    def nll(params, inputs, targets, lengths, chars=None, char_lengths=None):
        cell = first_cell(chars, char_lengths)
        _, y1 = unroll(cell, params.first, inputs, lengths=lengths)  # (B, T, H1)
        _, h2 = unroll(second, params.second, jnp.concatenate([inputs, y1], -1), lengths=lengths)
        per_point = mdn.negative_log_likelihood(mdn.split_mixture(head(params, y1, h2)), targets)
        mask = jnp.arange(inputs.shape[1])[None, :] < lengths[:, None]  # (B, T)
        return jnp.sum(per_point * mask) / jnp.sum(mask)

    def sample(params, key, steps, batch, chars=None, char_lengths=None, bias=0.5):
        cell = first_cell(chars, char_lengths)
        c1 = cell.initial_carry(params.first, (batch,))
        c2 = second.initial_carry(params.second, (batch,))
        x0 = jnp.tile(jnp.asarray([[0.0, 0.0, 1.0]]), (batch, 1))  # (B, 3) pen up

        def body(state, k):
            c1, c2, x = state
            c1, y1 = cell.step(params.first, c1, x)  # (B, H1)
            c2, h2 = second.step(params.second, c2, jnp.concatenate([x, y1], -1))
            x = mdn.sample_point(k, mdn.split_mixture(head(params, y1, h2), bias))  # (B, 3)
            return (c1, c2, x), (x, c1.kappa if window else jnp.zeros((batch, 1)))

        _, (xs, kappa) = jax.lax.scan(body, (c1, c2, x0), jax.random.split(key, steps))
        return jnp.swapaxes(xs, 0, 1), jnp.swapaxes(kappa, 0, 1)  # (B, T, 3), (B, T, K)

    return Writer(init, nll, sample)


def cut_synthesis(traj: np.ndarray, kappa: np.ndarray, n_chars: int) -> np.ndarray:
    """A synthesised trajectory up to the first pen lift after the window passed the text."""
    done = np.flatnonzero((kappa.mean(-1) > n_chars - 0.5) & (traj[:, 2] > 0.5))
    return traj[: done[0] + 1] if done.size else traj


def render(path: Path, rows: list[tuple[str, list[tuple[str, np.ndarray]]]]) -> None:
    """A PNG with one row per (row title, [(label, trajectory (T, 3)), ...])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(t) for _, t in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.0 * cols, 1.7 * len(rows)), squeeze=False)
    for r, (title, cells) in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(cells):
                label, traj = cells[c]
                for stroke in hd.to_points(traj):
                    ax.plot(stroke[:, 0], stroke[:, 1], "k-", lw=1.0)
                ax.set_aspect("equal")
                ax.set_title(f"{title}: {label}" if c == 0 else label, fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, steps=1000, batch_size=32, lr=3e-3, hidden=96)
    parser.add_argument("--components", type=int, default=10, help="mixture components (10)")
    parser.add_argument("--window", type=int, default=5, help="window Gaussians K (5)")
    parser.add_argument("--bias", type=float, default=0.5, help="sampling bias (0.5)")
    parser.add_argument("--max-letters", type=int, default=6, help="longest word (6 letters)")
    parser.add_argument(
        "--texts",
        nargs="+",
        default=list(SYNTHESIS_TEXTS),
        help="words to synthesise (a–z, ≤ 6 letters)",
    )


def _train(args, model: Writer, train: hd.StrokeData, label: str, conditional: bool):
    data = jax.tree.map(
        jnp.asarray, (train.inputs, train.targets, train.lengths, train.chars, train.char_lengths)
    )

    def loss(params, data, step, key):
        idx = batch_indices(args.seed, step, len(train.words), args.batch_size)  # (B,)
        x, y, n, c, cn = jax.tree.map(lambda a: a[idx], data)
        value = model.nll(params, x, y, n, *((c, cn) if conditional else ()))
        return value, {}

    half = None if args.cpu_minutes is None else args.cpu_minutes / 2  # two models share it
    run_args = argparse.Namespace(
        **{**vars(args), "out": str(Path(args.out) / label), "cpu_minutes": half}
    )
    return fit(loss, model.init(jax.random.key(args.seed)), data, run_args, label=label)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains both models; writes metrics, result.json and handwriting_samples.png."""
    check_common(args)
    texts = [hd.check_text(t) for t in args.texts]
    U = args.max_letters
    if not 2 <= U <= 12:
        raise ValueError(f"--max-letters must be in [2, 12], got {U}")
    if any(len(t) > U for t in texts):
        raise ValueError(f"--texts must have at most --max-letters={U} letters each, got {texts}")
    words = hd.corpus_words(max_len=U)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(words))
    n_val = len(words) // 10
    T = min(MAX_POINTS, max(len(hd.trajectory(w)) for w in words))
    val = hd.stroke_data([words[i] for i in order[:n_val]], T, U)
    train = hd.stroke_data([words[i] for i in order[n_val:]], T, U)
    evaluation: dict[str, Any] = {
        "train_words": len(train.words),
        "val_words": len(val.words),
        "val_points": int(val.lengths.sum()),
    }
    data_row = [(val.words[i], val.targets[i, : val.lengths[i]]) for i in range(3)]
    training, rows = {}, [("held-out data", data_row)]
    key = jax.random.key(args.seed + 1)
    for label, K in (("unconditional", 0), ("synthesis", args.window)):
        model = writer(args.hidden, args.components, K)
        params, training[label] = _train(args, model, train, label, K > 0)
        cond = (jnp.asarray(val.chars), jnp.asarray(val.char_lengths)) if K else ()
        val_arrays = jax.tree.map(jnp.asarray, (val.inputs, val.targets, val.lengths))
        nll = jax.jit(model.nll)(params, *val_arrays, *cond)
        evaluation[f"val_nll_per_point_{label}"] = float(nll)
        sample = jax.jit(model.sample, static_argnums=(2, 3))
        if K:
            chars, n_chars = hd.encode_chars(texts, U)
            trajs, kappa = sample(
                params, key, 40 * U, len(texts), jnp.asarray(chars), jnp.asarray(n_chars), args.bias
            )
            cut = map(cut_synthesis, np.asarray(trajs), np.asarray(kappa), n_chars)
            rows.append(("synthesis", list(zip(texts, cut, strict=True))))
        else:
            trajs, _ = sample(params, key, 120, 3, None, None, args.bias)
            rows.append(("unconditional", [(f"sample {i + 1}", t) for i, t in enumerate(trajs)]))
    figure = Path(args.out) / "handwriting_samples.png"
    render(figure, rows)
    evaluation["figure"] = str(figure)
    evaluation["units"] = f"nats per point; offsets in units of {hd.SCALE} em"
    training = {
        "steps_done": sum(t["steps_done"] for t in training.values()),
        "train_wall_s": sum(t["train_wall_s"] for t in training.values()),
        "train_cpu_s": sum(t["train_cpu_s"] for t in training.values()),
        **training,
    }
    return write_result(args, "handwriting", training, evaluation, {})


__all__ = ["Writer", "WriterParams", "add_arguments", "cut_synthesis", "render", "run", "writer"]
