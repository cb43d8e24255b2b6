"""Handwriting synthesis (Graves 2013), the lecture's fourth application, read back by a machine.

Pen trajectories (Δx, Δy, pen-up) of words written with the Hershey fonts (`handwriting_data`)
train two models with a mixture-density output (`mdn`):

- unconditional: LSTM → LSTM → a mixture of M bivariate Gaussians + a Bernoulli pen lift; it
  writes letter-like strokes of no word in particular;
- synthesis: the first LSTM also reads Graves' soft attention window over the characters of
  the word to write (and a one-hot of the face, cursive or print), so the text chooses what is
  drawn:

      x̃_t = [x_t ; s],  h¹_t = LSTM(x̃_t, w_{t−1}),  (α, β, κ)_t from h¹_t,
      w_t = Σ_u φ(t, u) c_u,  h²_t = LSTM([x̃_t ; h¹_t ; w_t]),  ŷ_t = [h¹_t ; w_t ; h²_t] W + b.

Both are scored by the negative log-likelihood per point (nats, offsets in units of
`handwriting_data.SCALE` em) of held-out words. *Legibility* is measured by a recogniser
(`handwriting_recognition`, BLSTM + CTC) trained on the same kind of data: the character error
rate of its readings of synthesised held-out words, sampled with bias b (Graves eq. 61–62).

``--recogniser DIR`` takes the recogniser of a finished ``handwriting_recognition`` run; without
it a recogniser is trained first (``OUT/recogniser``)::

    rnnjax train --task handwriting_recognition --out runs/recognition
    rnnjax train --task handwriting --recogniser runs/recognition --out runs/handwriting
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.cells import lstm
from rnnjax.cells.base import Array
from rnnjax.driver import unroll
from rnnjax.models import ctc, mdn
from rnnjax.models import handwriting_data as hd
from rnnjax.models import handwriting_recognition as hr
from rnnjax.models.training import add_common_arguments, check_common, fit

V = len(hd.ALPHABET) + 1  # character ids 1..26, 0 pads
STYLES = len(hd.FONTS)


class WriterParams(NamedTuple):
    """Attributes: first: layer-1 params (LSTMParams, or WindowParams when conditional);
    second: layer-2 LSTMParams over [x̃_t ; y¹_t]; W (H¹ + H, 6M + 1), b: the mixture head."""

    first: Any
    second: Any
    W: Array
    b: Array


class Writer(NamedTuple):
    """A two-layer handwriting model; see `writer`.

    Attributes:
        init: ``key -> WriterParams``.
        nll: ``(params, inputs, targets, lengths, chars=None, char_lengths=None, styles=None)``
            → mean NLL per valid point.
        sample: ``(params, key, steps, batch, chars=None, char_lengths=None, styles=None,
            bias=0.0)`` → (trajectories (B, steps, 3), window weights φ (B, steps, U + 1) or
            zeros).
        conditional: whether it reads a text (and a style).
    """

    init: Any
    nll: Any
    sample: Any
    conditional: bool


def writer(
    hidden: int, components: int = 20, window: int = 0, kappa_rate: float = mdn.KAPPA_STEP
) -> Writer:
    """Builds the model: ``window`` = K > 0 adds Graves' attention window and the style input
    (synthesis); ``kappa_rate`` is the window's initial advance in characters per point."""
    conditional = window > 0
    D = 3 + (STYLES if conditional else 0)  # x̃_t = [x_t ; s]

    def first_cell(chars, char_lengths):
        if not conditional:
            return lstm(hidden)
        mask = jnp.arange(chars.shape[-1])[None, :] < char_lengths[:, None]  # (B, U)
        return mdn.window_cell(hidden, window, jax.nn.one_hot(chars, V), mask, kappa_rate)

    H1 = hidden + (V if conditional else 0)
    second = lstm(hidden)

    def init(key) -> WriterParams:
        k1, k2, k3 = jax.random.split(key, 3)
        dummy = (jnp.zeros((1, 1), jnp.int32), jnp.ones((1,), jnp.int32))
        W = jax.nn.initializers.lecun_normal()(k3, (H1 + hidden, mdn.mixture_size(components)))
        return WriterParams(
            first_cell(*dummy).init(k1, D),
            second.init(k2, D + H1),
            W,
            jnp.zeros((mdn.mixture_size(components),), jnp.float32),
        )

    def head(params, y1, h2):
        y = jnp.concatenate([y1, h2], axis=-1) @ params.W  # (..., 6M + 1)
        return y + params.b.reshape((1,) * (y.ndim - 1) + (-1,))

    def with_style(x, styles):  # (B, ..., 3) -> (B, ..., D)
        if not conditional:
            return x
        s = jax.nn.one_hot(styles, STYLES, dtype=x.dtype)  # (B, S)
        s = s.reshape(s.shape[:1] + (1,) * (x.ndim - 2) + s.shape[1:])
        return jnp.concatenate([x, jnp.broadcast_to(s, (*x.shape[:-1], STYLES))], axis=-1)

    def nll(params, inputs, targets, lengths, chars=None, char_lengths=None, styles=None):
        cell = first_cell(chars, char_lengths)
        x = with_style(inputs, styles)  # (B, T, D)
        _, y1 = unroll(cell, params.first, x, lengths=lengths)  # (B, T, H1)
        _, h2 = unroll(second, params.second, jnp.concatenate([x, y1], -1), lengths=lengths)
        per_point = mdn.negative_log_likelihood(mdn.split_mixture(head(params, y1, h2)), targets)
        mask = jnp.arange(inputs.shape[1])[None, :] < lengths[:, None]  # (B, T)
        return jnp.sum(per_point * mask) / jnp.sum(mask)

    def sample(params, key, steps, batch, chars=None, char_lengths=None, styles=None, bias=0.0):
        cell = first_cell(chars, char_lengths)
        c1 = cell.initial_carry(params.first, (batch,))
        c2 = second.initial_carry(params.second, (batch,))
        x0 = jnp.tile(jnp.asarray([[0.0, 0.0, 1.0]]), (batch, 1))  # (B, 3) pen up

        def body(state, k):
            c1, c2, x = state
            xs = with_style(x, styles)  # (B, D)
            c1, y1 = cell.step(params.first, c1, xs)  # (B, H1)
            c2, h2 = second.step(params.second, c2, jnp.concatenate([xs, y1], -1))
            x = mdn.sample_point(k, mdn.split_mixture(head(params, y1, h2), bias))  # (B, 3)
            return (c1, c2, x), (x, c1.phi if conditional else jnp.zeros((batch, 1)))

        _, (xs, phi) = jax.lax.scan(body, (c1, c2, x0), jax.random.split(key, steps))
        return jnp.swapaxes(xs, 0, 1), jnp.swapaxes(phi, 0, 1)  # (B, T, 3), (B, T, U + 1)

    return Writer(init, nll, sample, conditional)


def cut_synthesis(traj: np.ndarray, phi: np.ndarray, n_chars: int) -> np.ndarray:
    """A synthesised trajectory (T, 3) up to the first pen lift at which the text is written,
    else whole. Written: the window weighs the position one past the text more than any of its
    characters, φ(t, U) > max_{u < U} φ(t, u) (Graves 2013, §5.1), at the lift itself — a
    window Gaussian that runs ahead passes that position for a few steps mid-word, so the
    first time alone is not enough. ``phi``: (T, ≥ U + 1)."""
    past = phi[:, n_chars] > phi[:, :n_chars].max(axis=-1)  # (T,)
    done = np.flatnonzero(past & (traj[:, 2] > 0.5))
    return traj[: done[0] + 1] if done.size else traj


def synthesise(
    model: Writer, params, key, texts: list[str], styles, bias: float, U: int, batch: int = 256
) -> list[np.ndarray]:
    """Samples one trajectory per text (style ``styles[i]``, texts of at most U letters), cut
    where the text ends. Batches are padded to multiples of 32 rows (one compilation)."""
    steps = 24 * U + 24  # well beyond the data's ~12 points per letter
    fn = jax.jit(model.sample, static_argnums=(2, 3))
    out: list[np.ndarray] = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        rows = -(-len(chunk) // 32) * 32
        chars, n = hd.encode_chars(chunk + ["a"] * (rows - len(chunk)), U)
        s = np.zeros((rows,), np.int32)
        s[: len(chunk)] = styles[start : start + batch]
        trajs, phi = fn(
            params,
            jax.random.fold_in(key, start),
            steps,
            rows,
            jnp.asarray(chars),
            jnp.asarray(n),
            jnp.asarray(s),
            bias,
        )
        cut = map(cut_synthesis, np.asarray(trajs), np.asarray(phi), n)
        out += list(cut)[: len(chunk)]
    return out


def render(path: Path, rows: Sequence[Sequence[tuple[str, Any]]], title: str = "") -> None:
    """A PNG of rows of (caption, trajectory (T, 3)) cells; the caption goes under the ink."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 1.25 * len(rows)), squeeze=False)
    for r, cells in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c >= len(cells):
                continue
            caption, traj = cells[c]
            if traj is not None:
                for stroke in hd.to_points(traj):
                    ax.plot(stroke[:, 0], stroke[:, 1], "k-", lw=1.1, solid_capstyle="round")
                ax.set_aspect("equal", adjustable="datalim")
            ax.set_xlabel(caption, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, steps=1600, batch_size=32, lr=3e-3, hidden=128)
    parser.add_argument("--components", type=int, default=20, help="mixture components (20)")
    parser.add_argument("--window", type=int, default=5, help="window Gaussians K (5)")
    parser.add_argument("--bias", type=float, default=1.0, help="sampling bias b (1.0)")
    parser.add_argument(
        "--unconditional-steps", type=int, default=300, help="of the unconditional model (300)"
    )
    parser.add_argument(
        "--samples", type=int, default=16000, help="written training samples (16000)"
    )
    parser.add_argument("--max-letters", type=int, default=8, help="longest word, letters (8)")
    hr.add_bucket_argument(parser)
    parser.add_argument(
        "--legibility-words", type=int, default=200, help="held-out words synthesised (200)"
    )
    parser.add_argument(
        "--recogniser",
        default=None,
        help="the --out directory of a handwriting_recognition run (default: train one)",
    )
    parser.add_argument("--recogniser-steps", type=int, default=1000, help="if trained here")
    parser.add_argument("--recogniser-hidden", type=int, default=64, help="if trained here")
    parser.add_argument("--recogniser-layers", type=int, default=2, help="if trained here")
    parser.add_argument("--recogniser-stack", type=int, default=3, help="if trained here")
    parser.add_argument(
        "--texts", nargs="+", default=None, help="words for the figure (a–z; default: held out)"
    )


def _check(args: argparse.Namespace) -> list[str] | None:
    check_common(args)
    hr.check_data_flags(args)
    for name in ("components", "window", "unconditional_steps", "legibility_words"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if not args.bias >= 0:
        raise ValueError(f"--bias must be >= 0, got {args.bias}")
    if args.recogniser is not None:
        hr.load(args.recogniser)  # fails early on a wrong directory
    if args.texts is None:
        return None
    texts = [hd.check_text(t) for t in args.texts]
    if any(len(t) > args.max_letters for t in texts):
        raise ValueError(f"--texts must have at most --max-letters={args.max_letters} letters")
    return texts


def _train_writer(args, model: Writer, data: hd.StrokeData, label: str, steps: int):
    groups = [
        jax.tree.map(
            jnp.asarray, (g.inputs, g.targets, g.lengths, g.chars, g.char_lengths, g.fonts)
        )
        for g in hd.buckets(data, args.buckets)
    ]

    def loss_on(params, batch):
        x, y, n, c, cn, s = batch
        return model.nll(params, x, y, n, *((c, cn, s) if model.conditional else ()))

    sizes = [len(g[2]) for g in groups]
    loss = hd.bucket_batches(loss_on, groups, sizes, args.seed, args.batch_size)
    budget = args.cpu_minutes
    if budget is not None:  # the synthesis model gets the share its steps ask for
        budget *= steps / (args.steps + args.unconditional_steps)
    run_args = argparse.Namespace(
        **{**vars(args), "out": str(Path(args.out) / label), "steps": steps, "cpu_minutes": budget}
    )
    init = jax.jit(model.init)(jax.random.key(args.seed))  # one compilation, not one per op
    return fit(loss, init, groups, run_args, label=label)


def _recogniser(args, train_words):
    if args.recogniser is not None:
        model, params = hr.load(args.recogniser)
        return model, params, {"from": str(args.recogniser)}
    rec_args = argparse.Namespace(
        **{
            **vars(args),
            "steps": args.recogniser_steps,
            "hidden": args.recogniser_hidden,
            "layers": args.recogniser_layers,
            "stack": args.recogniser_stack,
            "cpu_minutes": None,
        }
    )
    model, params, summary = hr.train(rec_args, train_words, label="recogniser")
    hr.save(Path(args.out) / "recogniser", model, params)
    return model, params, summary


def legibility(rec, rec_params, trajs, words, styles, beam: int = 0) -> dict[str, Any]:
    """The recogniser's readings of trajectories of ``words``: CER, per style, word accuracy."""
    readings = hr.read(rec, rec_params, trajs, beam)
    out = {"cer": ctc.error_rate(readings, words)}
    for f, name in enumerate(hd.FONTS):
        pick = [i for i, s in enumerate(styles) if s == f]
        if pick:
            out[f"cer_{name}"] = ctc.error_rate(
                [readings[i] for i in pick], [words[i] for i in pick]
            )
    out["word_accuracy"] = float(np.mean([h == w for h, w in zip(readings, words, strict=True)]))
    return {**out, "readings": readings}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains the recogniser (unless given), the synthesis and the unconditional model; writes
    metrics, result.json and handwriting_samples.png."""
    texts = _check(args)
    U = args.max_letters
    train_words, held_out = hd.split_words(hd.corpus_words(max_len=args.max_letters))
    rec, rec_params, rec_training = _recogniser(args, train_words)
    train = hd.dataset(train_words, args.samples, seed=args.seed, U=args.max_letters)
    val = hd.dataset(held_out, STYLES * len(held_out), seed=args.seed + 10_000, U=args.max_letters)
    rate = float(train.char_lengths.sum() / train.lengths.sum())  # characters per point
    evaluation: dict[str, Any] = {
        "train_words": len(train_words),
        "held_out_words": len(held_out),
        "training_samples": len(train.words),
        "val_points": int(val.lengths.sum()),
        "points_per_letter": round(1 / rate, 2),
    }
    training: dict[str, Any] = {"recogniser": rec_training}
    models = {}
    for label, K, steps in (
        ("synthesis", args.window, args.steps),
        ("unconditional", 0, args.unconditional_steps),
    ):
        model = writer(args.hidden, args.components, K, rate)
        params, training[label] = _train_writer(args, model, train, label, steps)
        cond = (val.chars, val.char_lengths, val.fonts) if K else ()
        arrays = jax.tree.map(jnp.asarray, (val.inputs, val.targets, val.lengths, *cond))
        evaluation[f"val_nll_per_point_{label}"] = float(jax.jit(model.nll)(params, *arrays))
        models[label] = (model, params)

    # legibility: the recogniser reads synthesised held-out words (the faces alternate)
    order = np.random.default_rng(hd.SPLIT_SEED).permutation(len(held_out))
    words = [held_out[i] for i in order[: args.legibility_words]]
    styles = [i % STYLES for i in range(len(words))]
    key = jax.random.key(args.seed + 1)
    synth, synth_params = models["synthesis"]
    written = synthesise(synth, synth_params, key, words, styles, args.bias, U)
    read = legibility(rec, rec_params, written, words, styles)
    evaluation["bias"] = args.bias
    evaluation["legibility_words"] = len(words)
    evaluation["cer_synthesis"] = read["cer"]
    evaluation["word_accuracy_synthesis"] = read["word_accuracy"]
    for name in hd.FONTS:
        evaluation[f"cer_synthesis_{name}"] = read[f"cer_{name}"]
    evaluation["cer_synthesis_by_bias"] = {
        str(b): legibility(
            rec,
            rec_params,
            synthesise(synth, synth_params, key, words, styles, b, U),
            words,
            styles,
        )["cer"]
        for b in (0.0, 0.5, 2.0)
        if b != args.bias
    }
    fresh = [  # the same words and faces written by the data generator, for comparison
        hd.draw(w, hd.FONTS[f], np.random.default_rng([args.seed + 20_000, i]))
        for i, (w, f) in enumerate(zip(words, styles, strict=True))
    ]
    evaluation["cer_written_data"] = legibility(rec, rec_params, fresh, words, styles)["cer"]
    evaluation["examples"] = [
        f"{w} → {r}" for w, r in list(zip(words, read["readings"], strict=True))[:16]
    ]

    # the figure: each word in the font's rendering and written by the model, read back
    show = texts or words[:6]
    by_face = {
        f: synthesise(synth, synth_params, key, show, [f] * len(show), args.bias, U)
        for f in range(STYLES)
    }
    fonts = {f: [hd.draw(text, face) for text in show] for f, face in enumerate(hd.FONTS)}
    reads = {f: hr.read(rec, rec_params, by_face[f] + fonts[f]) for f in range(STYLES)}
    rows = []
    for i, text in enumerate(show):
        row = []
        for f, face in enumerate(hd.FONTS):
            row += [
                (f"{face} font “{text}”, read “{reads[f][len(show) + i]}”", fonts[f][i]),
                (f"model, read “{reads[f][i]}”", by_face[f][i]),
            ]
        rows.append(row)
    uncond, uncond_params = models["unconditional"]
    samples, _ = jax.jit(uncond.sample, static_argnums=(2, 3))(uncond_params, key, 90, 4)
    rows.append([(f"unconditional sample {i + 1}", np.asarray(t)) for i, t in enumerate(samples)])
    figure = Path(args.out) / "handwriting_samples.png"
    render(
        figure,
        rows,
        f"held-out words: the font, then the model (bias {args.bias}) and the recogniser's reading",
    )
    evaluation["figure"] = str(figure)
    evaluation["units"] = f"NLL in nats per point; offsets in units of {hd.SCALE} em"
    parts = [training[k] for k in ("synthesis", "unconditional")]
    if "steps_done" in rec_training:
        parts.append(rec_training)
    training = {
        "steps_done": sum(t["steps_done"] for t in parts),
        "train_wall_s": round(sum(t["train_wall_s"] for t in parts), 1),
        "train_cpu_s": round(sum(t["train_cpu_s"] for t in parts), 1),
        **training,
    }
    target = {"metric": "cer_synthesis", "threshold": 0.2}
    return hr.finish(args, "handwriting", training, evaluation, target)


__all__ = [
    "Writer",
    "WriterParams",
    "add_arguments",
    "cut_synthesis",
    "legibility",
    "render",
    "run",
    "synthesise",
    "writer",
]
