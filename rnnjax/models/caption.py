"""Image captioning, the lecture's second application: a convnet feeds an LSTM decoder.

"Replace the encoder part with the output of a convnet; keep the decoder part to operate as a
translator." The images are rows of 2–4 of scikit-learn's bundled 8×8 digits (``load_digits``,
no download) placed at a random offset on an 8×36 canvas; the caption is the digits in words
("seven two nine"). Train and test compositions are built from disjoint sets of digit images,
so every test image is new.

Model (flax.nnx): two 3×3 convolutions, 2×2 average pooling and a linear map give the image
vector v ∈ R^E; the decoder is an rnnjax LSTM (`rnnjax.flax.RNN`) that reads v at the first
step only — "what has been working so far is to add the image only in the beginning" — then
the embedded words, and writes the caption and ``<EOS>``::

    x_0 = v,  x_t = E[w_t]  (t ≥ 1);   p(w_{t+1} | w_{≤t}, image) = softmax(h_t V + b)

Command::

    rnnjax train --task caption --steps 3000 --out runs/caption

References:
    Vinyals, Toshev, Bengio & Erhan, "Show and tell: a neural image caption generator", 2015.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax.cells import lstm
from rnnjax.cells.base import Array
from rnnjax.flax import RNN
from rnnjax.losses import sequence_cross_entropy
from rnnjax.models.decoding import beam_search, greedy_search
from rnnjax.models.seq2seq import EOS, PAD, WordVocab
from rnnjax.models.training import (
    add_common_arguments,
    check_common,
    fit,
    shard_batch,
    write_result,
)

TARGET = {"metric": "exact_caption", "threshold": 0.90}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HEIGHT, SLOT, MAX_DIGITS, MIN_DIGITS = 8, 8, 4, 2
WIDTH = MAX_DIGITS * SLOT + 4  # 36: room to shift a row of four by up to 4 pixels
VOCAB = WordVocab(DIGIT_WORDS)
MAX_LEN = MAX_DIGITS + 1  # the words and <EOS>
SPLIT_SEED = 1234


def load_digit_pools(test_fraction: float = 0.25) -> tuple[tuple, tuple]:
    """scikit-learn's 1797 bundled 8×8 digits, scaled to [0, 1] and split by image.

    Returns:
        ``((train_images, train_labels), (test_images, test_labels))``; images float32
        (N, 8, 8), labels int32 (N,). The split is fixed, whatever the run's seed.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8)
    labels = digits.target.astype(np.int32)  # (1797,)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_test = round(test_fraction * len(labels))
    test, train = order[:n_test], order[n_test:]
    return (images[train], labels[train]), (images[test], labels[test])


def compose(key: Array, images: Array, labels: Array, batch_size: int) -> tuple[Array, Array]:
    """Random rows of 2–4 digits from a pool (traceable; jit-compatible).

    Args:
        key: PRNG key.
        images: float32 (N, 8, 8) pool; labels: int32 (N,).
        batch_size: B.

    Returns:
        ``(canvas, captions)``: float32 (B, 8, 36) images and int32 (B, 5) caption ids
        (words, ``<EOS>``, PAD).
    """
    k_n, k_pick, k_shift = jax.random.split(key, 3)
    n = jax.random.randint(k_n, (batch_size,), MIN_DIGITS, MAX_DIGITS + 1)  # (B,)
    pick = jax.random.randint(k_pick, (batch_size, MAX_DIGITS), 0, labels.shape[0])  # (B, 4)
    used = jnp.arange(MAX_DIGITS)[None, :] < n[:, None]  # (B, 4)
    tiles = images[pick] * used[:, :, None, None]  # (B, 4, 8, 8)
    row = jnp.swapaxes(tiles, 1, 2).reshape(batch_size, HEIGHT, MAX_DIGITS * SLOT)  # (B, 8, 32)
    row = jnp.pad(row, ((0, 0), (0, 0), (0, WIDTH - MAX_DIGITS * SLOT)))  # (B, 8, 36)
    shift = jax.random.randint(k_shift, (batch_size,), 0, WIDTH - n * SLOT + 1)  # (B,)
    canvas = jax.vmap(lambda r, s: jnp.roll(r, s, axis=1))(row, shift)  # (B, 8, 36)
    words = labels[pick] + len(VOCAB.words) - len(DIGIT_WORDS)  # (B, 4) ids of the words
    captions = jnp.where(used, words, PAD)  # (B, 4)
    captions = jnp.concatenate([captions, jnp.full((batch_size, 1), PAD)], axis=1)  # (B, 5)
    captions = jnp.where(jnp.arange(MAX_LEN)[None, :] == n[:, None], EOS, captions)
    return canvas, captions.astype(jnp.int32)


def check_images(images: Any) -> Array:
    """ValueError unless images is float (B, 8, 36) (one (8, 36) image is batched)."""
    images = jnp.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1:] != (HEIGHT, WIDTH):
        raise ValueError(
            f"images must be (B, {HEIGHT}, {WIDTH}) rows of 8×8 digits (or one ({HEIGHT}, "
            f"{WIDTH}) image), got shape {images.shape}"
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be float in [0, 1], got {images.dtype=}")
    return images


class Captioner(nnx.Module):
    """Convnet encoder + rnnjax LSTM decoder (see the module docstring).

    Args:
        embed: E, the size of the image vector and of the word vectors.
        hidden: H, the LSTM units.
        rngs: ``nnx.Rngs``.
        channels: channels of the two convolutions.
    """

    def __init__(self, embed: int, hidden: int, *, rngs: nnx.Rngs, channels=(16, 32)):
        c1, c2 = channels
        self.conv1 = nnx.Conv(1, c1, (3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(c1, c2, (3, 3), padding="SAME", rngs=rngs)
        self.project = nnx.Linear((HEIGHT // 2) * (WIDTH // 2) * c2, embed, rngs=rngs)
        self.embed = nnx.Embed(len(VOCAB), embed, rngs=rngs)
        self.rnn = RNN(lstm(hidden), input_size=embed, rngs=rngs)
        self.out = nnx.Linear(hidden, len(VOCAB), rngs=rngs)

    def encode(self, images: Array) -> Array:
        """(B, 8, 36) images → (B, E) image vectors."""
        x = images[..., None]  # (B, 8, 36, 1)
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))  # (B, 8, 36, C2)
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2))  # (B, 4, 18, C2)
        return self.project(x.reshape(x.shape[0], -1))  # (B, E)

    def __call__(self, images: Array, captions: Array) -> Array:
        """Teacher forcing: log-probabilities (B, 5, V) of the caption ids (B, 5)."""
        v = self.encode(images)[:, None, :]  # (B, 1, E)
        words = self.embed(captions[:, :-1])  # (B, 4, E): w_1..w_4 follow the image
        _, hs = self.rnn(jnp.concatenate([v, words], axis=1))  # (B, 5, H)
        return jax.nn.log_softmax(self.out(hs), axis=-1)  # (B, 5, V)

    def start(self, images: Array) -> tuple[Any, Array]:
        """The first step, on the image vector: (carry, log_probs (B, V) of the first word)."""
        v = self.encode(images)  # (B, E)
        carry, h = self.rnn.step(self.rnn.initial_carry(v.shape[:1]), v)  # (B, H)
        return carry, jax.nn.log_softmax(self.out(h), axis=-1)

    def step(self, carry: Any, token: Array) -> tuple[Any, Array]:
        """One decoder step on a word id (any leading axes)."""
        carry, h = self.rnn.step(carry, self.embed(token))  # (..., H)
        return carry, jax.nn.log_softmax(self.out(h), axis=-1)

    def caption(self, images: Array, beam_size: int = 1) -> Array:
        """Caption ids (B, 5) of images (B, 8, 36): greedy, or beam search if beam_size > 1."""
        images = check_images(images)
        carry, log_probs = self.start(images)
        if beam_size == 1:
            return greedy_search(self.step, carry, log_probs, max_len=MAX_LEN, eos=EOS)[0]
        return beam_search(
            self.step, carry, log_probs, max_len=MAX_LEN, beam_size=beam_size, eos=EOS
        )[0]


def caption_words(model: Captioner, images: Any, beam_size: int = 1) -> list[str]:
    """Captions of images as strings ("seven two nine"); ValueError for a wrong shape."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, images):
        return nnx.merge(graphdef, state).caption(images, beam_size)

    tokens = run(state, check_images(images))
    return [" ".join(VOCAB.decode(t)) for t in np.asarray(tokens)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, steps=3000, batch_size=64, lr=2e-3, hidden=128)
    parser.add_argument("--embed", type=int, default=64, help="image/word vector size (64)")
    parser.add_argument("--test-size", type=int, default=2000, help="held-out compositions")
    parser.add_argument("--beam", type=int, default=3, help="beam size for the beam score (3)")


def render_samples(path: Path, images: np.ndarray, truth: list[str], guess: list[str]) -> None:
    """A PNG of test images with their true and generated captions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(n, 1, figsize=(4.5, 1.0 * n))
    for ax, image, t, g in zip(np.atleast_1d(axes), images, truth, guess, strict=True):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(
            f"{g}" + ("" if g == t else f"   (true: {t})"),
            fontsize=9,
            color="black" if g == t else "red",
        )
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains and evaluates; writes metrics.jsonl, result.json and caption_samples.png."""
    check_common(args)
    if args.test_size < 1 or args.beam < 1 or args.embed < 1:
        raise ValueError(f"need positive sizes, got {args.test_size=}, {args.beam=}, {args.embed=}")
    (train_x, train_y), (test_x, test_y) = load_digit_pools()
    model = Captioner(args.embed, args.hidden, rngs=nnx.Rngs(args.seed))
    graphdef, state = nnx.split(model)

    def loss(state, pool, step, key):
        batch_key = jax.random.fold_in(jax.random.key(args.seed), step)
        images, captions = compose(batch_key, pool[0], pool[1], args.batch_size)
        images, captions = shard_batch(images), shard_batch(captions)  # split over devices
        log_probs = nnx.merge(graphdef, state)(images, captions)  # (B, 5, V)
        mask = captions != PAD  # (B, 5)
        correct = jnp.all((jnp.argmax(log_probs, -1) == captions) | ~mask, axis=-1)  # (B,)
        value = sequence_cross_entropy(log_probs, captions, mask)
        return value, {"caption_accuracy": jnp.mean(correct.astype(jnp.float32))}

    pool = (jnp.asarray(train_x), jnp.asarray(train_y))
    state, training = fit(loss, state, pool, args, label="caption")
    nnx.update(model, state)

    test_key = jax.random.key(SPLIT_SEED + 1)  # the same held-out compositions in every run
    images, captions = compose(test_key, jnp.asarray(test_x), jnp.asarray(test_y), args.test_size)
    truth = [" ".join(VOCAB.decode(c)) for c in np.asarray(captions)]
    evaluation: dict[str, Any] = {
        "test_compositions": args.test_size,
        "test_digit_images": len(test_y),
    }
    for name, k in (("", 1), ("_beam", args.beam)):
        t0 = time.perf_counter()
        guess = caption_words(model, images, beam_size=k)
        matches = [g == t for g, t in zip(guess, truth, strict=True)]
        evaluation[f"exact_caption{name}"] = float(np.mean(matches))
        evaluation[f"decode_s{name}"] = round(time.perf_counter() - t0, 2)
        if k == 1:
            pairs = [(t.split(), g.split()) for t, g in zip(truth, guess, strict=True)]
            evaluation["digit_accuracy"] = float(  # the k-th word right, over all true words
                np.mean([len(g) > k and g[k] == w for t, g in pairs for k, w in enumerate(t)])
            )
            figure = Path(args.out) / "caption_samples.png"
            render_samples(figure, np.asarray(images[:8]), truth[:8], guess[:8])
            evaluation["samples"] = [
                {"truth": t, "caption": g} for t, g in zip(truth[:8], guess[:8], strict=True)
            ]
            evaluation["figure"] = str(figure)
    evaluation["beam_size"] = args.beam
    return write_result(args, "caption", training, evaluation, TARGET)


__all__ = ["Captioner", "add_arguments", "caption_words", "check_images", "compose", "run"]
