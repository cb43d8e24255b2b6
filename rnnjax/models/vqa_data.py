"""Scenes, questions and answers for visual question answering (no download).

A scene is a row of 2–4 of scikit-learn's bundled 8×8 handwritten digits (``load_digits``),
each drawn in one of four colours, in 8-pixel slots from the left of an 8×36 RGB canvas, the
whole row moved right by a random 0–4 pixels. (Rows placed anywhere on the canvas, shifted by
up to 20 pixels, make "the third digit" a matter of counting from wherever the row starts: the
image-at-the-first-step model was still at 42 % of exact answers after 1400 steps.) The
questions come in six types, drawn uniformly (answers are words; ``which`` may need several)::

    digit      what is the third digit ?                        seven
    colour     what colour is the last digit ?                  blue
    count      how many sevens are there ?  /  how many red digits are there ?   two
    compare    is the first digit larger than the last ?        no
    neighbour  what colour is the digit left of the seven ?  /
               what is the digit right of the green one ?       red  /  four
    which      which digits are yellow ?                        three seven  (or none)

A neighbour question names a digit (or colour) that occurs exactly once in the scene. Train
and test scenes are built from disjoint sets of digit images (`caption.load_digit_pools`), so
every test image is new. A `Scenes` table holds the digit ids and colours, not the pixels;
`render` draws the pixels of a batch inside the jitted step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.cells.base import Array
from rnnjax.models.caption import DIGIT_WORDS, load_digit_pools
from rnnjax.models.seq2seq import EOS, PAD, WordVocab

HEIGHT, SLOT, MIN_DIGITS, MAX_DIGITS = 8, 8, 2, 4
WIDTH = MAX_DIGITS * SLOT + 4  # 36: room to shift a row of four by up to 4 pixels
COLOURS = ("red", "green", "blue", "yellow")
RGB = np.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]], np.float32)
ORDINALS = ("first", "second", "third", "fourth")
PLURALS = tuple(w + ("es" if w == "six" else "s") for w in DIGIT_WORDS)  # "sevens"
KINDS = ("digit", "colour", "count", "compare", "neighbour", "which")
_QUESTION_WORDS = (
    "what is the digit colour last how many are there red digits is larger than left right "
    "of one which ?"
)
VOCAB = WordVocab(
    dict.fromkeys(
        [
            *DIGIT_WORDS,
            *COLOURS,
            "yes",
            "no",
            "none",
            *ORDINALS,
            *PLURALS,
            *_QUESTION_WORDS.split(),
        ]
    )
)
QUESTION_LEN = 10  # the longest question: "what is the digit right of the green one ?"
ANSWER_LEN = MAX_DIGITS + 1  # "which" lists up to four digits, then <EOS>


class Scenes(NamedTuple):
    """N scenes with one question each (numpy int32; jax arrays inside the step).

    Attributes:
        ids: (N, 4) indices of the digit images in the pool, left to right (0 past ``count``).
        colours: (N, 4) colour of each digit (`COLOURS`).
        count: (N,) digits in the scene, 2–4.
        shift: (N,) horizontal offset of the row, 0–4 pixels.
        text: (N, QUESTION_LEN + ANSWER_LEN) the question then the answer words and ``<EOS>``,
            PAD after.
        question_len: (N,) words in the question (the answer starts there).
        kind: (N,) question type (`KINDS`).
    """

    ids: Any
    colours: Any
    count: Any
    shift: Any
    text: Any
    question_len: Any
    kind: Any


def ask(
    rng: np.random.Generator, digits: list[int], colours: list[int], kinds=KINDS
) -> tuple[str, str, str] | None:
    """One question about a scene (digits and colours left to right), of a type drawn from
    ``kinds``: (kind, question, answer); None if the scene has no question of those types (a
    neighbour question about a scene where no digit and no colour is unique)."""
    n = len(digits)

    def name(k: int) -> str:  # the last digit is "last" or its ordinal, at random
        return "last" if k == n - 1 and rng.random() < 0.5 else ORDINALS[k]

    while True:
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind in ("digit", "colour"):
            k = int(rng.integers(n))
            if kind == "digit":
                return kind, f"what is the {name(k)} digit ?", DIGIT_WORDS[digits[k]]
            return kind, f"what colour is the {name(k)} digit ?", COLOURS[colours[k]]
        if kind == "count":
            if rng.random() < 0.5:  # a digit, present half of the time
                d = digits[int(rng.integers(n))] if rng.random() < 0.5 else int(rng.integers(10))
                return kind, f"how many {PLURALS[d]} are there ?", DIGIT_WORDS[digits.count(d)]
            c = int(rng.integers(len(COLOURS)))
            answer = DIGIT_WORDS[colours.count(c)]
            return kind, f"how many {COLOURS[c]} digits are there ?", answer
        if kind == "compare":
            a, b = (int(k) for k in rng.choice(n, size=2, replace=False))
            answer = "yes" if digits[a] > digits[b] else "no"
            return kind, f"is the {name(a)} digit larger than the {name(b)} ?", answer
        if kind == "neighbour":  # (by colour?, side, k): the named digit or colour is unique
            options = [
                (by_colour, step, k)
                for by_colour, keys in ((False, digits), (True, colours))
                for step in (-1, 1)
                for k in range(n)
                if 0 <= k + step < n and keys.count(keys[k]) == 1
            ]
            if not options:  # e.g. two red sevens: nothing to name; ask something else
                kinds = [k for k in kinds if k != "neighbour"]
                if not kinds:
                    return None
                continue
            by_colour, step, k = options[int(rng.integers(len(options)))]
            side = "left" if step < 0 else "right"
            if by_colour:
                q = f"what is the digit {side} of the {COLOURS[colours[k]]} one ?"
                return kind, q, DIGIT_WORDS[digits[k + step]]
            q = f"what colour is the digit {side} of the {DIGIT_WORDS[digits[k]]} ?"
            return kind, q, COLOURS[colours[k + step]]
        c = colours[int(rng.integers(n))] if rng.random() < 0.75 else int(rng.integers(4))
        listed = [DIGIT_WORDS[d] for d, k in zip(digits, colours, strict=True) if k == c]
        return kind, f"which digits are {COLOURS[c]} ?", " ".join(listed) or "none"


def make_scenes(seed: int, n: int, labels: np.ndarray, kinds=KINDS) -> Scenes:
    """``n`` random scenes over a pool with these labels, one question each (numpy), its type
    drawn uniformly from ``kinds`` (ValueError for an unknown type)."""
    if n < 1:
        raise ValueError(f"need at least one scene, got n={n}")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"question types must be among {KINDS}, got {list(kinds)}")
    kinds = tuple(kinds)
    rng = np.random.default_rng(seed)
    count = rng.integers(MIN_DIGITS, MAX_DIGITS + 1, n)  # (N,)
    used = np.arange(MAX_DIGITS) < count[:, None]  # (N, 4)
    ids = rng.integers(len(labels), size=(n, MAX_DIGITS)) * used
    colours = rng.integers(len(COLOURS), size=(n, MAX_DIGITS)) * used
    shift = rng.integers(WIDTH - MAX_DIGITS * SLOT + 1, size=n)  # (N,) 0–4 pixels
    text = np.full((n, QUESTION_LEN + ANSWER_LEN), PAD, np.int32)
    question_len, kind = np.zeros((n,), np.int32), np.zeros((n,), np.int32)
    for i, k in enumerate(count.tolist()):
        while (
            asked := ask(rng, labels[ids[i, :k]].tolist(), colours[i, :k].tolist(), kinds)
        ) is None:
            ids[i, :k] = rng.integers(len(labels), size=k)  # a scene with nothing to ask: redraw
            colours[i, :k] = rng.integers(len(COLOURS), size=k)
        kind_i, question, answer = asked
        q, a = VOCAB.encode(question.split()), VOCAB.encode(answer.split())
        text[i, : len(q) + len(a) + 1] = [*q, *a, EOS]
        question_len[i], kind[i] = len(q), KINDS.index(kind_i)
    i32 = lambda a: np.asarray(a, np.int32)  # noqa: E731
    return Scenes(i32(ids), i32(colours), i32(count), i32(shift), text, question_len, kind)


def jitter(key: Array, tiles: Array, dimmest: float = 0.7) -> Array:
    """Training-time augmentation of digit tiles (B, K, 8, 8): each tile moved by −1, 0 or +1
    pixel along each axis (zeros move in) and its intensity scaled by u ~ U(dimmest, 1), so
    the encoder sees a new variant of each training digit at every step."""
    B, K = tiles.shape[:2]
    move_key, scale_key = jax.random.split(key)
    corner = jax.random.randint(move_key, (B, K, 2), 0, 3)  # (B, K, 2) top-left in the padding
    padded = jnp.pad(tiles, ((0, 0), (0, 0), (1, 1), (1, 1)))  # (B, K, 10, 10)
    crop = lambda t, c: jax.lax.dynamic_slice(t, (c[0], c[1]), (HEIGHT, SLOT))  # noqa: E731
    moved = jax.vmap(jax.vmap(crop))(padded, corner)  # (B, K, 8, 8)
    scale = jax.random.uniform(scale_key, (B, K, 1, 1), minval=dimmest, maxval=1.0)
    return moved * scale  # (B, K, 8, 8)


def render(
    images: Array, ids: Array, colours: Array, count: Array, shift: Array, key: Array | None = None
) -> Array:
    """The pixels of a batch of scenes (traceable; jit-compatible).

    Args:
        images: float32 (M, 8, 8) digit pool in [0, 1].
        ids, colours: int (B, 4); count, shift: int (B,) (as in `Scenes`).
        key: if given, every digit tile is augmented first (`jitter`; training only).

    Returns:
        float32 (B, 8, 36, 3) RGB canvases: digit k of a scene occupies columns
        [shift + 8k, shift + 8k + 8), its intensity times its colour.
    """
    B = ids.shape[0]
    used = jnp.arange(MAX_DIGITS)[None, :] < count[:, None]  # (B, 4)
    tiles = images[ids]  # (B, 4, 8, 8)
    if key is not None:
        tiles = jitter(key, tiles)  # (B, 4, 8, 8)
    tiles = tiles * used[:, :, None, None]  # (B, 4, 8, 8)
    rgb = tiles[..., None] * jnp.asarray(RGB)[colours][:, :, None, None, :]  # (B, 4, 8, 8, 3)
    row = jnp.moveaxis(rgb, 1, 2).reshape(B, HEIGHT, MAX_DIGITS * SLOT, 3)  # (B, 8, 32, 3)
    row = jnp.pad(row, ((0, 0), (0, 0), (0, WIDTH - MAX_DIGITS * SLOT), (0, 0)))  # (B, 8, 36, 3)
    return jax.vmap(lambda r, s: jnp.roll(r, s, axis=1))(row, shift)  # (B, 8, 36, 3)


def load_pools() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The disjoint train / test digit pools of `caption.load_digit_pools` (fixed split)."""
    return load_digit_pools()


def question_words(text: np.ndarray, question_len: int) -> str:
    """The question of one `Scenes.text` row as a string."""
    return " ".join(VOCAB.decode(text[:question_len]))


def answer_words(text: np.ndarray, question_len: int) -> str:
    """The answer of one `Scenes.text` row as a string."""
    return " ".join(VOCAB.decode(text[question_len:]))


__all__ = [
    "ANSWER_LEN",
    "COLOURS",
    "KINDS",
    "QUESTION_LEN",
    "VOCAB",
    "Scenes",
    "answer_words",
    "ask",
    "jitter",
    "load_pools",
    "make_scenes",
    "question_words",
    "render",
]
