"""Pen trajectories for the handwriting application, traced from rendered text.

No online-handwriting data set is bundled with any package, so the trajectories are made:
matplotlib's `TextPath` gives the glyph outlines of a word in the DejaVu Sans font (bundled
with matplotlib); every closed outline becomes one pen stroke, resampled at a fixed spacing
along its length. A trajectory is the sequence of points

    x_t = (Δx_t, Δy_t, e_t)

of pen offsets from the previous point (in font units / `SCALE`) and the end-of-stroke bit
e_t = 1 at the last point of each stroke — the pen lifts and moves to the next stroke — as in
Graves (2013), section 4. Words come from Python's bundled help text (`pydoc_data`); the
train / validation split is by word.

References:
    Graves, "Generating sequences with recurrent neural networks", 2013, section 4.
"""

from __future__ import annotations

import functools
import itertools
import re
from typing import NamedTuple

import numpy as np

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
CHAR_ID = {c: i + 1 for i, c in enumerate(ALPHABET)}  # 0 pads the character sequences
SPACING = 0.15  # distance between resampled points along an outline, in font units (em)
SCALE = 0.1  # offsets are divided by this, so that they are of order one
FONT = "DejaVu Sans"


def check_text(text: str) -> str:
    """ValueError unless text is a non-empty string of lowercase letters a–z."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    bad = sorted(set(text) - set(ALPHABET))
    if bad:
        raise ValueError(f"text {text!r} has characters {bad} outside a–z")
    return text


@functools.lru_cache(maxsize=4096)
def strokes(text: str) -> tuple[np.ndarray, ...]:
    """The outlines of ``text`` as pen strokes: (n_i, 2) arrays of points, left to right.

    Each closed outline of the rendered glyphs (curves flattened by matplotlib) is resampled
    every `SPACING` em along its perimeter and closed, so it starts and ends at one point.
    """
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    path = TextPath((0, 0), check_text(text), size=1.0, prop=FontProperties(family=FONT))
    out = []
    for outline in path.to_polygons(closed_only=True):
        poly = np.asarray(outline, np.float64)
        poly = np.vstack([poly, poly[:1]])  # (n + 1, 2) closed
        seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)  # (n,)
        arc = np.concatenate([[0.0], np.cumsum(seg)])  # (n + 1,)
        if arc[-1] < SPACING:
            continue
        at = np.linspace(0.0, arc[-1], max(round(arc[-1] / SPACING), 3) + 1)
        out.append(np.stack([np.interp(at, arc, poly[:, 0]), np.interp(at, arc, poly[:, 1])], 1))
    out.sort(key=lambda s: float(s[:, 0].min()))  # left to right, as a pen would go
    return tuple(out)


def trajectory(text: str) -> np.ndarray:
    """float32 (T, 3): the pen offsets (Δx, Δy) / SCALE and end-of-stroke bits of ``text``.

    The first offset is from the origin (the word's baseline start) to the first point.
    """
    points, ends = [], []
    for s in strokes(text):
        points.append(s)
        ends.append(np.zeros(len(s)))
        ends[-1][-1] = 1.0
    xy = np.concatenate(points)  # (T, 2)
    offsets = np.diff(xy, axis=0, prepend=np.zeros((1, 2))) / SCALE  # (T, 2)
    return np.concatenate([offsets, np.concatenate(ends)[:, None]], axis=1).astype(np.float32)


def to_points(traj: np.ndarray) -> list[np.ndarray]:
    """Inverse of `trajectory`: the strokes (n_i, 2) of a (T, 3) trajectory."""
    traj = np.asarray(traj)
    xy = np.cumsum(traj[:, :2], axis=0) * SCALE  # (T, 2)
    ends = np.flatnonzero(traj[:, 2] > 0.5)
    bounds = [0, *(ends + 1).tolist()]
    if bounds[-1] < len(xy):
        bounds.append(len(xy))
    return [xy[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def corpus_words(min_len: int = 2, max_len: int = 6) -> list[str]:
    """Lowercase words of min_len–max_len letters from Python's help topics, sorted."""
    from pydoc_data import topics

    text = " ".join(topics.topics[k] for k in sorted(topics.topics))
    words = {w for w in re.findall(r"[a-z]+", text) if min_len <= len(w) <= max_len}
    return sorted(words)


class StrokeData(NamedTuple):
    """Padded trajectories and their texts.

    Attributes:
        inputs: float32 (N, T, 3): x_0 = (0, 0, 1) (pen up at the origin) then x_1..x_{T−1}.
        targets: float32 (N, T, 3): x_1..x_T, the points to predict.
        lengths: int32 (N,) valid steps.
        chars: int32 (N, U) character ids (1..26), 0 after the word.
        char_lengths: int32 (N,).
        words: the N words.
    """

    inputs: np.ndarray
    targets: np.ndarray
    lengths: np.ndarray
    chars: np.ndarray
    char_lengths: np.ndarray
    words: list[str]


def encode_chars(texts: list[str], U: int) -> tuple[np.ndarray, np.ndarray]:
    """Character ids (N, U) and lengths (N,) of texts (ValueError if one is too long)."""
    chars = np.zeros((len(texts), U), np.int32)
    for i, t in enumerate(texts):
        if len(check_text(t)) > U:
            raise ValueError(f"text {t!r} has {len(t)} characters; at most {U} fit")
        chars[i, : len(t)] = [CHAR_ID[c] for c in t]
    return chars, np.asarray([len(t) for t in texts], np.int32)


def stroke_data(words: list[str], T: int, U: int) -> StrokeData:
    """Trajectories of ``words`` padded to T steps (words whose trajectory is longer are
    dropped), characters padded to U."""
    trajs = {w: trajectory(w) for w in words}
    kept = [w for w in words if len(trajs[w]) <= T]
    N = len(kept)
    inputs = np.zeros((N, T, 3), np.float32)
    targets = np.zeros((N, T, 3), np.float32)
    lengths = np.zeros((N,), np.int32)
    for i, w in enumerate(kept):
        x = trajs[w]
        targets[i, : len(x)] = x
        inputs[i, 0] = (0.0, 0.0, 1.0)
        inputs[i, 1 : len(x)] = x[:-1]
        lengths[i] = len(x)
    chars, char_lengths = encode_chars(kept, U)
    return StrokeData(inputs, targets, lengths, chars, char_lengths, kept)


__all__ = [
    "ALPHABET",
    "SCALE",
    "StrokeData",
    "check_text",
    "corpus_words",
    "encode_chars",
    "stroke_data",
    "strokes",
    "to_points",
    "trajectory",
]
