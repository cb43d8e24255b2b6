"""Online handwriting recognition: a bidirectional LSTM stack with a CTC output (Graves 2009).

The recogniser reads a pen trajectory x_1..x_T (offsets and pen lifts, `handwriting_data`)
and emits, at every frame, a distribution over the 26 letters and the CTC blank:

    z_τ = [x_{sτ+1} ; … ; x_{sτ+s}]                   s consecutive points per frame (``stack``)
    h¹_τ = [LSTM→(z)_τ ; LSTM←(z)_τ], h^l_τ = [LSTM→(h^{l−1})_τ ; LSTM←(h^{l−1})_τ]
    y_τ = softmax(h^L_τ V + b)                         (27 classes, blank = 0)

trained with the CTC loss (`ctc`) and read by best-path or prefix beam decoding. Its score is
the character error rate (edit distance / reference length) on the held-out words of
`handwriting_data.split_words`, written with fresh augmentation::

    rnnjax train --task handwriting_recognition --out runs/recognition

The run saves the trained parameters as ``OUT/recogniser.npz`` (with ``OUT/recogniser.json``),
which `load` reads back — the synthesis application uses it to measure legibility.

References:
    Graves, Liwicki, Fernández, Bertolami, Bunke & Schmidhuber, "A novel connectionist system
    for unconstrained handwriting recognition", IEEE TPAMI 31(5), 2009.
    Graves et al., "Connectionist temporal classification", ICML 2006.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.cells import lstm
from rnnjax.cells.base import Array
from rnnjax.layers import bidirectional, readout
from rnnjax.models import ctc
from rnnjax.models import handwriting_data as hd
from rnnjax.models.handwriting_batches import bucket_batches, buckets
from rnnjax.models.training import add_common_arguments, check_common, fit, write_result

CLASSES = len(hd.ALPHABET) + 1  # the letters and the blank


class Recogniser(NamedTuple):
    """A BLSTM + CTC recogniser; see `recogniser`.

    Attributes:
        init: ``key -> params`` (a tuple: the layers' `BidirectionalParams`, then the readout's).
        log_probs: ``(params, trajectories (B, T, 3), lengths (B,)) -> (log y (B, T', 27),
            frame lengths (B,))``, T' = ⌈T / stack⌉.
        loss: ``(params, trajectories, lengths, chars (B, U), char_lengths (B,))`` → the CTC
            loss in nats per character of the batch.
        config: the hyper-parameters (``hidden``, ``layers``, ``stack``).
    """

    init: Any
    log_probs: Any
    loss: Any
    config: dict[str, int]


def recogniser(hidden: int = 96, layers: int = 2, stack: int = 2) -> Recogniser:
    """Builds a recogniser: ``layers`` bidirectional LSTM layers of ``hidden`` units each way,
    reading frames of ``stack`` points."""
    for name, value in (("hidden", hidden), ("layers", layers), ("stack", stack)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    stack_layers = [bidirectional(lstm(hidden)) for _ in range(layers)]
    head = readout(CLASSES)

    def init(key) -> tuple:
        keys = jax.random.split(key, layers + 1)
        params, size = [], 3 * stack
        for layer, k in zip(stack_layers, keys[:-1], strict=True):
            params.append(layer.init(k, size))
            size = 2 * hidden
        return (*params, head.init(keys[-1], size))

    def frames(xs: Array, lengths: Array) -> tuple[Array, Array]:
        B, T, _ = xs.shape
        valid = jnp.arange(T)[None, :] < lengths[:, None]  # (B, T)
        xs = jnp.where(valid[..., None], xs, 0.0)  # a last frame never reads padding
        pad = -T % stack
        xs = jnp.pad(xs, ((0, 0), (0, pad), (0, 0)))  # (B, T + pad, 3)
        return xs.reshape(B, (T + pad) // stack, 3 * stack), (lengths + stack - 1) // stack

    def log_probs(params, xs: Array, lengths: Array) -> tuple[Array, Array]:
        h, n = frames(xs, lengths)  # (B, T', 3s), (B,)
        for layer, p in zip(stack_layers, params[:-1], strict=True):
            _, h = layer.apply(p, h, lengths=n)  # (B, T', 2H)
        return head.apply(params[-1], h), n  # (B, T', 27)

    def loss(params, xs, lengths, chars, char_lengths) -> Array:
        lp, n = log_probs(params, xs, lengths)
        per_word = ctc.ctc_loss(lp, n, chars, char_lengths)  # (B,)
        return jnp.sum(per_word) / jnp.sum(char_lengths)

    return Recogniser(init, log_probs, loss, {"hidden": hidden, "layers": layers, "stack": stack})


def read(model: Recogniser, params, trajs: list[np.ndarray], beam: int = 0, batch: int = 256):
    """The texts a recogniser reads in trajectories (each (T_i, 3)): greedy when ``beam`` is
    0, else prefix beam search of that width. Batches are padded to multiples of 32 rows and
    64 steps, so that few shapes are compiled."""
    fn = jax.jit(model.log_probs)
    texts: list[str] = []
    for start in range(0, len(trajs), batch):
        chunk = trajs[start : start + batch]
        rows, T = _round_up(len(chunk), 32), _round_up(max(len(x) for x in chunk), 64)
        xs = np.zeros((rows, T, 3), np.float32)
        lengths = np.ones((rows,), np.int32)
        for i, x in enumerate(chunk):
            xs[i, : len(x)] = x
            lengths[i] = len(x)
        lp, n = fn(params, jnp.asarray(xs), jnp.asarray(lengths))
        lp, n = lp[: len(chunk)], n[: len(chunk)]
        decoded = ctc.greedy_decode(lp, n) if beam == 0 else ctc.beam_decode(lp, n, beam)
        texts += [hd.decode_chars(labels) for labels in decoded]
    return texts


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def save(out: Path, model: Recogniser, params) -> None:
    """Writes ``out/recogniser.npz`` (the parameter leaves) and ``out/recogniser.json``."""
    leaves = jax.tree.leaves(params)
    np.savez(out / "recogniser.npz", *[np.asarray(x) for x in leaves])
    (out / "recogniser.json").write_text(json.dumps(model.config) + "\n")


def load(run_dir: str | Path) -> tuple[Recogniser, Any]:
    """``(model, params)`` saved by a ``handwriting_recognition`` run in ``run_dir``."""
    run_dir = Path(run_dir)
    if not (run_dir / "recogniser.npz").is_file() or not (run_dir / "recogniser.json").is_file():
        raise ValueError(
            f"{run_dir} has no recogniser.npz / recogniser.json; give the --out directory "
            "of a finished `rnnjax train --task handwriting_recognition` run"
        )
    model = recogniser(**json.loads((run_dir / "recogniser.json").read_text()))
    treedef = jax.tree.structure(jax.eval_shape(model.init, jax.random.key(0)))
    with np.load(run_dir / "recogniser.npz") as saved:
        leaves = [jnp.asarray(saved[f"arr_{i}"]) for i in range(len(saved.files))]
    return model, jax.tree.unflatten(treedef, leaves)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, steps=1000, batch_size=32, lr=3e-3, hidden=64)
    parser.add_argument("--layers", type=int, default=2, help="BLSTM layers (2)")
    parser.add_argument("--stack", type=int, default=3, help="points per frame (3)")
    parser.add_argument(
        "--samples", type=int, default=16000, help="written training samples (16000)"
    )
    parser.add_argument("--max-letters", type=int, default=8, help="longest word, letters (8)")
    add_bucket_argument(parser)
    parser.add_argument("--beam", type=int, default=8, help="beam width of the decoder (8)")
    parser.add_argument(
        "--eval-samples", type=int, default=2, help="held-out samples per word and face (2)"
    )


def add_bucket_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--buckets",
        type=int,
        default=4,
        help="length groups that batches are drawn from: less padding, one compilation each (4)",
    )


def check_data_flags(args: argparse.Namespace) -> None:
    """ValueError naming a bad --samples, --max-letters or --buckets."""
    for name in ("samples", "buckets"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}")
    if not 2 <= args.max_letters <= 12:
        raise ValueError(f"--max-letters must be in [2, 12], got {args.max_letters}")


def train(args: argparse.Namespace, words: list[str], label: str | None = None):
    """Trains a recogniser on ``args.samples`` written ``words``; returns (model, params,
    training summary). ``label`` names the run's subdirectory of ``args.out`` (None: args.out)."""
    model = recogniser(args.hidden, args.layers, args.stack)
    data = hd.dataset(words, args.samples, seed=args.seed, U=args.max_letters)
    groups = [
        jax.tree.map(jnp.asarray, (g.targets, g.lengths, g.chars, g.char_lengths))
        for g in buckets(data, args.buckets)
    ]
    sizes = [len(g[1]) for g in groups]
    loss = bucket_batches(
        lambda params, batch: model.loss(params, *batch), groups, sizes, args.seed, args.batch_size
    )
    out = Path(args.out) if label is None else Path(args.out) / label
    run_args = argparse.Namespace(**{**vars(args), "out": str(out)})
    init = jax.jit(model.init)(jax.random.key(args.seed))  # one compilation, not one per op
    params, summary = fit(loss, init, groups, run_args, label=label or "recogniser")
    summary["training_samples"] = len(data.words)
    return model, params, summary


def evaluate(model: Recogniser, params, words: list[str], samples_per: int, seed: int, beam: int):
    """CER (greedy and beam) and word accuracy on ``samples_per`` fresh samples of each word in
    each face, plus the greedy CER on the fonts' own renderings."""
    n = len(words) * len(hd.FONTS) * samples_per
    data = hd.dataset(words, n, seed=seed + 10_000)  # other generators than any training draw
    trajs = [data.targets[i, : data.lengths[i]] for i in range(n)]
    greedy = read(model, params, trajs)
    beamed = read(model, params, trajs, beam) if beam else greedy
    clean = hd.dataset(words, len(words) * len(hd.FONTS), seed=0, augment=None)
    clean_read = read(
        model, params, [clean.targets[i, : clean.lengths[i]] for i in range(len(clean.words))]
    )
    by_font = {}
    for f, name in enumerate(hd.FONTS):
        pick = [i for i in range(n) if data.fonts[i] == f]
        by_font[f"cer_{name}"] = ctc.error_rate(
            [greedy[i] for i in pick], [data.words[i] for i in pick]
        )
    return {
        "cer_greedy": ctc.error_rate(greedy, data.words),
        "cer_beam": ctc.error_rate(beamed, data.words),
        "beam": beam,
        "word_accuracy_greedy": float(
            np.mean([h == r for h, r in zip(greedy, data.words, strict=True)])
        ),
        **by_font,
        "cer_font_renderings": ctc.error_rate(clean_read, clean.words),
        "held_out_words": len(words),
        "held_out_samples": n,
        "examples": [f"{r} → {h}" for r, h in list(zip(data.words, greedy, strict=True))[:12]],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains the recogniser and measures its CER on held-out words; writes the run files."""
    check_common(args)
    check_data_flags(args)
    if isinstance(args.beam, bool) or not isinstance(args.beam, int) or args.beam < 0:
        raise ValueError(f"--beam must be a non-negative integer, got {args.beam}")
    if args.eval_samples < 1:
        raise ValueError(f"--eval-samples must be a positive integer, got {args.eval_samples}")
    recogniser(args.hidden, args.layers, args.stack)  # validates before any work
    train_words, held_out = hd.split_words(hd.corpus_words(max_len=args.max_letters))
    model, params, training = train(args, train_words)
    save(Path(args.out), model, params)
    evaluation = evaluate(model, params, held_out, args.eval_samples, args.seed, args.beam)
    evaluation["train_words"] = len(train_words)
    target = {"metric": "cer_greedy", "threshold": 0.05}
    return finish(args, "handwriting_recognition", training, evaluation, target)


def finish(args, task: str, training: dict, evaluation: dict, target: dict) -> dict[str, Any]:
    """`write_result` with a target that is a maximum (an error rate): met when ≤ threshold."""
    result = write_result(args, task, training, evaluation, {})
    result["target"] = {
        **target,
        "direction": "at most",
        "met": bool(evaluation[target["metric"]] <= target["threshold"]),
    }
    (Path(args.out) / "result.json").write_text(
        json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    )
    return result


__all__ = ["CLASSES", "Recogniser", "load", "read", "recogniser", "run", "save", "train"]
