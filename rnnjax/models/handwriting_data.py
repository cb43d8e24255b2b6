"""Pen trajectories of whole words, written with the single-stroke Hershey fonts.

No online-handwriting data set ships with any package, so the trajectories are made. The
Hershey vector fonts (PyPI ``Hershey-Fonts``, module ``HersheyFonts``) draw every glyph as
centre-line polylines — the path of a pen, not an outline. Of their 32 faces two are
single-stroke lowercase Latin faces, `FONTS`: ``cursive`` (joined script; ``scripts`` has the
same a–z glyphs) and ``futural`` (simplex print; ``rowmans`` has the same a–z glyphs). The
``scriptc`` / ``rowmand`` faces trace each letter twice for a thick line, so they are left out.

A word becomes a trajectory in four steps (`draw`):

1. *Strokes.* The font's segments are joined into strokes wherever one ends where the next
   begins — cursive letters join into one stroke per word — with the i and j dots moved after
   their letter's body, as people write them. Units: em = 21 font units (cap line to base
   line), y up, the base line at y = 0.
2. *Augmentation* (per sample, from its own seeded generator): rotation, slant (shear),
   scale and aspect, then a smooth elastic warp p ← p + Σ_j a_j sin(ω_j · p + φ_j) of the
   densified strokes.
3. *Pen speed.* Each stroke is resampled along its arc length s at points spaced by the
   distance the pen travels per sampling tick: speed v(s) = v₀ · τ(s) · (1 + κ(s)/κ₀)^(−1/3),
   where κ(s) is the smoothed curvature (the two-thirds power law of Lacquaniti et al. 1983:
   the pen slows down in bends and cusps) and τ(s) = exp(Σ smooth random sines) a tempo that
   drifts along the word. The two ends of every stroke are kept.
4. *Jitter* of every sampled point, then the sequence of points

       x_t = (Δx_t, Δy_t, e_t)

   of pen offsets from the previous point (in units of `SCALE` em) and the end-of-stroke bit
   e_t = 1 at the last point of each stroke (the pen then lifts), as in Graves (2013), §4.

Given the same seed, `draw` and `dataset` return the same arrays. Words come from the
library's embedded corpus (Python's help text, `rnnjax.data.text.default_corpus`); a fixed
tenth of them (`split_words`) is held out of all training.

References:
    Graves, "Generating sequences with recurrent neural networks", 2013, section 4.
    Hershey, "Calligraphy for computers", 1967 (the fonts).
    Lacquaniti, Terzuolo & Viviani, "The law relating the kinematic and figural aspects of
    drawing movements", Acta Psychologica 54, 1983 (speed ∝ curvature^(−1/3)).
"""

from __future__ import annotations

import functools
import itertools
import re
from typing import NamedTuple

import numpy as np

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
CHAR_ID = {c: i + 1 for i, c in enumerate(ALPHABET)}  # 0 pads the character sequences
FONTS = ("cursive", "futural")  # the single-stroke lowercase Latin faces
EM = 21.0  # Hershey units from the cap line (y = −12) to the base line (y = 9)
BASE_LINE = 9.0
JOIN = 4.5  # font units: strokes of a glyph this close are written without lifting the pen
SPACING = 0.18  # mean distance between sampled points along a stroke, em
SCALE = 0.2  # offsets are divided by this, so that they are of order one
DENSE = 0.03  # strokes are densified to pieces of at most this length (em) before warping
SPLIT_SEED, HELD_OUT_FRACTION = 1234, 0.1


class Augment(NamedTuple):
    """How far each sample is distorted; every draw is uniform in ±value unless noted.

    Attributes:
        rotation: rotation angle, radians.
        slant: shear angle, radians (x ← x + tan(slant) · y).
        scale: log of the overall size factor.
        aspect: log of the width / height factor.
        warp: amplitude (em) of each of the elastic warp's sines.
        jitter: standard deviation (em) of the Gaussian noise added to every point.
        speed: log of the sample's mean pen speed (its point spacing).
        tempo: amplitude of the log-tempo drift along the word.
    """

    rotation: float = 0.08
    slant: float = 0.3
    scale: float = 0.15
    aspect: float = 0.12
    warp: float = 0.035
    jitter: float = 0.008
    speed: float = 0.15
    tempo: float = 0.25


NO_AUGMENT = Augment(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def check_text(text: str) -> str:
    """ValueError unless text is a non-empty string of lowercase letters a–z."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    bad = sorted(set(text) - set(ALPHABET))
    if bad:
        raise ValueError(f"text {text!r} has characters {bad} outside a–z")
    return text


def check_font(font: str) -> str:
    """ValueError unless font is one of `FONTS`."""
    if font not in FONTS:
        raise ValueError(f"unknown font {font!r}; choose one of {', '.join(FONTS)}")
    return font


@functools.lru_cache(maxsize=len(FONTS))
def _font(name: str):
    from HersheyFonts import HersheyFonts

    font = HersheyFonts()
    font.load_default_font(check_font(name))
    return font


@functools.lru_cache(maxsize=8192)
def font_strokes(text: str, font: str = "cursive") -> tuple[np.ndarray, ...]:
    """The pen strokes of ``text`` in a Hershey face: float64 (n_i, 2) arrays, in writing order.

    A glyph's dots (strokes at most 2 font units wide) follow its other strokes. Consecutive
    strokes are one pen stroke where one ends where the next begins (cursive letters join) and,
    within a glyph, where the next begins at most `JOIN` font units away: the pen moves there
    without lifting, as a hand retraces the first leg of an m. Coordinates in em, y up, the
    base line at y = 0.
    """
    check_text(text)
    face = _font(font)
    rendered = [np.asarray(s, np.float64) for s in face.strokes_for_text(text)]
    at = 0
    joined: list[list[np.ndarray]] = []
    for c in text:
        n = sum(1 for _ in face.strokes_for_text(c))
        glyph = rendered[at : at + n]
        at += n
        is_dot = [np.ptp(s, axis=0).max() <= 2 for s in glyph]
        body = [s for s, d in zip(glyph, is_dot, strict=True) if not d]
        for i, s in enumerate(body + [s for s, d in zip(glyph, is_dot, strict=True) if d]):
            gap = np.linalg.norm(joined[-1][-1][-1] - s[0]) if joined else np.inf
            if gap == 0:
                joined[-1].append(s[1:])
            elif 0 < i < len(body) and gap <= JOIN:
                joined[-1].append(s)
            else:
                joined.append([s])
    out = []
    for parts in joined:
        xy = np.concatenate(parts)  # (n, 2) font units, y down
        out.append(np.stack([xy[:, 0] / EM, (BASE_LINE - xy[:, 1]) / EM], axis=1))
    return tuple(out)


def _densify(stroke: np.ndarray) -> np.ndarray:
    """The polyline with repeated points dropped and every segment cut into pieces of at most
    `DENSE` em."""
    keep = np.concatenate([[True], np.any(np.diff(stroke, axis=0) != 0, axis=1)])
    stroke = stroke[keep]  # (n, 2)
    if len(stroke) == 1:
        return stroke
    seg = np.linalg.norm(np.diff(stroke, axis=0), axis=1)  # (n − 1,)
    pieces = np.ceil(seg / DENSE).astype(int)  # ≥ 1
    within = np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    frac = np.concatenate([within / np.repeat(pieces, pieces), [1.0]])  # along each segment
    start = np.concatenate([np.repeat(np.arange(len(seg)), pieces), [len(seg) - 1]])
    return stroke[start] + frac[:, None] * (stroke[start + 1] - stroke[start])


def _slowness(stroke: np.ndarray, width: float = 0.05, kappa0: float = 2.0) -> np.ndarray:
    """(n,) the inverse relative pen speed (1 + κ/κ₀)^(1/3) along a dense stroke (n, 2), κ its
    curvature (radians per em) smoothed by a Gaussian of ``width`` em of arc."""
    if len(stroke) < 3:
        return np.ones(len(stroke))
    seg = np.linalg.norm(np.diff(stroke, axis=0), axis=1)  # (n − 1,)
    heading = np.unwrap(np.arctan2(*np.diff(stroke, axis=0).T[::-1]))  # (n − 1,)
    turn = np.abs(np.diff(heading, prepend=heading[:1], append=heading[-1:]))  # (n,) at points
    h = seg.mean()  # the pieces are nearly equal
    k = np.arange(-int(3 * width / h) - 1, int(3 * width / h) + 2)
    kernel = np.exp(-0.5 * np.square(k * h / width)) / (np.sqrt(2 * np.pi) * width)
    curvature = np.convolve(turn, kernel)[len(k) // 2 : len(k) // 2 + len(stroke)]  # (n,)
    return np.cbrt(1.0 + curvature / kappa0)


@functools.lru_cache(maxsize=8192)
def _dense(text: str, font: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The densified strokes of ``text``: points (n, 2), stroke index (n,), slowness (n,)."""
    dense = [_densify(s) for s in font_strokes(text, font)]
    ids = np.concatenate([np.full(len(d), i) for i, d in enumerate(dense)])
    return np.concatenate(dense), ids, np.concatenate([_slowness(d) for d in dense])


def _warp(points: np.ndarray, rng: np.random.Generator, aug: Augment) -> np.ndarray:
    """The affine distortion then the smooth elastic warp of points (n, 2)."""
    rot = rng.uniform(-aug.rotation, aug.rotation)
    shear = np.tan(rng.uniform(-aug.slant, aug.slant))
    scale = np.exp(rng.uniform(-aug.scale, aug.scale))
    aspect = np.exp(rng.uniform(-aug.aspect, aug.aspect))
    c, s = np.cos(rot), np.sin(rot)
    A = (
        np.asarray([[c, -s], [s, c]])
        @ np.asarray([[1.0, shear], [0.0, 1.0]])
        @ np.diag([scale * np.sqrt(aspect), scale / np.sqrt(aspect)])
    )  # (2, 2), acting on column vectors
    points = points @ A.T  # (n, 2)
    omega = rng.normal(0.0, 2.5, (2, 3, 2))  # (axis, sine, 2): spatial frequencies, rad / em
    phase = rng.uniform(0.0, 2 * np.pi, (2, 3))
    amp = rng.uniform(-aug.warp, aug.warp, (2, 3))
    waves = np.sin(np.einsum("asd,nd->nas", omega, points) + phase)  # (n, 2, 3)
    return points + np.sum(amp * waves, axis=-1)  # (n, 2)


def draw(
    text: str,
    font: str = "cursive",
    rng: np.random.Generator | None = None,
    augment: Augment = Augment(),
) -> np.ndarray:
    """float32 (T, 3): one written sample of ``text`` as pen offsets / `SCALE` and pen lifts.

    Args:
        text: lowercase letters a–z.
        font: one of `FONTS`.
        rng: the sample's generator; None draws the font's own rendering (no distortion; the
            pen still slows in bends).
        augment: the distortion ranges (`Augment`).

    Every stroke of arc length L gets ⌈L / spacing⌉ + 1 points, its two ends included, at
    equal ticks of the pen's clock (module docstring). The first offset is from the origin
    (the start of the base line) to the first point.
    """
    dense, sid, slowness = _dense(check_text(text), check_font(font))
    if rng is None:
        rng, augment = np.random.default_rng(0), NO_AUGMENT
    p = _warp(dense, rng, augment)  # (n, 2)
    same = sid[1:] == sid[:-1]  # (n − 1,) False where a stroke ends
    seg = np.where(same, np.linalg.norm(np.diff(p, axis=0), axis=1), 0.0)  # (n − 1,)
    s = np.concatenate([[0.0], np.cumsum(seg)])  # (n,) arc length along the word
    amp, phase = rng.uniform(0, augment.tempo, 2), rng.uniform(0, 2 * np.pi, 2)
    log_tempo = amp[0] * np.sin(1.3 * s + phase[0]) + amp[1] * np.sin(3.1 * s + phase[1])
    speed = np.exp(log_tempo) / slowness  # (n,) relative pen speed
    ticks = np.concatenate([[0.0], np.cumsum(seg / (0.5 * (speed[1:] + speed[:-1])))])  # (n,)
    ticks += sid  # one empty tick between strokes keeps the clock strictly increasing
    first = np.flatnonzero(np.concatenate([[True], ~same]))  # (S,) each stroke's first point
    last = np.concatenate([first[1:] - 1, [len(p) - 1]])  # (S,)
    length, duration = s[last] - s[first], ticks[last] - ticks[first]  # (S,)
    spacing = SPACING * np.exp(rng.uniform(-augment.speed, augment.speed))
    m = np.where(length > 1e-9, np.ceil(length / spacing).astype(int) + 1, 1)  # (S,) points
    stroke = np.repeat(np.arange(len(m)), m)  # (T,) stroke of each sampled point
    k = np.arange(len(stroke)) - np.repeat(np.cumsum(m) - m, m)  # (T,) index in its stroke
    at = ticks[first][stroke] + k / np.maximum(m - 1, 1)[stroke] * duration[stroke]  # (T,)
    xy = np.stack([np.interp(at, ticks, p[:, 0]), np.interp(at, ticks, p[:, 1])], 1)  # (T, 2)
    if augment.jitter:
        xy = xy + rng.normal(0.0, augment.jitter, xy.shape)
    ends = np.zeros(len(xy))
    ends[np.cumsum(m) - 1] = 1.0
    offsets = np.diff(xy, axis=0, prepend=np.zeros((1, 2))) / SCALE  # (T, 2)
    return np.concatenate([offsets, ends[:, None]], axis=1).astype(np.float32)


def to_points(traj: np.ndarray) -> list[np.ndarray]:
    """Inverse of `draw`: the strokes (n_i, 2), in em, of a (T, 3) trajectory."""
    traj = np.asarray(traj)
    xy = np.cumsum(traj[:, :2], axis=0) * SCALE  # (T, 2)
    ends = np.flatnonzero(traj[:, 2] > 0.5)
    bounds = [0, *(ends + 1).tolist()]
    if bounds[-1] < len(xy):
        bounds.append(len(xy))
    return [xy[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def corpus_words(min_len: int = 2, max_len: int = 8) -> list[str]:
    """The distinct words of min_len–max_len letters a–z of the embedded corpus, sorted.

    Words are the corpus's whole alphabetic tokens that are lowercase or capitalised
    (identifiers such as ``NoneType`` are skipped), lowercased.
    """
    from rnnjax.data.text import default_corpus

    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len=}, {max_len=}")
    tokens = re.findall(r"(?<![A-Za-z0-9_])[A-Z]?[a-z]+(?![A-Za-z0-9_])", default_corpus())
    return sorted({t.lower() for t in tokens if min_len <= len(t) <= max_len})


def split_words(words: list[str]) -> tuple[list[str], list[str]]:
    """(training words, held-out words): a fixed `HELD_OUT_FRACTION` of the sorted distinct
    words, chosen by `SPLIT_SEED`, is held out."""
    words = sorted(set(words))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(words))
    n_out = max(1, round(HELD_OUT_FRACTION * len(words)))
    held = {words[i] for i in order[:n_out]}
    return [w for w in words if w not in held], [w for w in words if w in held]


class StrokeData(NamedTuple):
    """Padded trajectories and their texts.

    Attributes:
        inputs: float32 (N, T, 3): x_0 = (0, 0, 1) (pen up at the origin) then x_1..x_{T−1}.
        targets: float32 (N, T, 3): x_1..x_T, the points (what a recogniser reads).
        lengths: int32 (N,) valid steps.
        chars: int32 (N, U) character ids (1..26), 0 after the word.
        char_lengths: int32 (N,).
        fonts: int32 (N,) index into `FONTS` of each sample's face.
        words: the N words.
    """

    inputs: np.ndarray
    targets: np.ndarray
    lengths: np.ndarray
    chars: np.ndarray
    char_lengths: np.ndarray
    fonts: np.ndarray
    words: list[str]


def encode_chars(texts: list[str], U: int) -> tuple[np.ndarray, np.ndarray]:
    """Character ids (N, U) and lengths (N,) of texts (ValueError if one is too long)."""
    chars = np.zeros((len(texts), U), np.int32)
    for i, t in enumerate(texts):
        if len(check_text(t)) > U:
            raise ValueError(f"text {t!r} has {len(t)} characters; at most {U} fit")
        chars[i, : len(t)] = [CHAR_ID[c] for c in t]
    return chars, np.asarray([len(t) for t in texts], np.int32)


def decode_chars(ids) -> str:
    """The text of character ids (0 and ids outside 1..26 are skipped)."""
    return "".join(ALPHABET[i - 1] for i in np.asarray(ids).tolist() if 1 <= i <= len(ALPHABET))


def pad(trajs: list[np.ndarray], words: list[str], fonts: list[int], U: int, multiple: int = 8):
    """`StrokeData` of trajectories padded to the longest, rounded up to ``multiple`` steps."""
    T = -(-max(len(x) for x in trajs) // multiple) * multiple
    N = len(trajs)
    inputs = np.zeros((N, T, 3), np.float32)
    targets = np.zeros((N, T, 3), np.float32)
    for i, x in enumerate(trajs):
        targets[i, : len(x)] = x
        inputs[i, 0] = (0.0, 0.0, 1.0)
        inputs[i, 1 : len(x)] = x[:-1]
    lengths = np.asarray([len(x) for x in trajs], np.int32)
    chars, char_lengths = encode_chars(words, U)
    return StrokeData(
        inputs, targets, lengths, chars, char_lengths, np.asarray(fonts, np.int32), list(words)
    )


def dataset(
    words: list[str],
    samples: int,
    seed: int,
    *,
    fonts: tuple[str, ...] = FONTS,
    augment: Augment | None = Augment(),
    U: int | None = None,
) -> StrokeData:
    """``samples`` written words: sample i writes ``words[i % len(words)]`` in
    ``fonts[(i // len(words)) % len(fonts)]`` with its own generator ``(seed, i)``.

    Args:
        words: the texts (a–z).
        samples: how many samples (every word and face in turn).
        seed: the seed; the same seed gives the same arrays.
        fonts: faces from `FONTS`.
        augment: distortions; None for the fonts' own renderings.
        U: character padding (default: the longest word).
    """
    if not words:
        raise ValueError("words is empty")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples}")
    fonts = tuple(check_font(f) for f in fonts) or FONTS
    trajs, texts, faces = [], [], []
    for i in range(samples):
        word, face = words[i % len(words)], (i // len(words)) % len(fonts)
        rng = None if augment is None else np.random.default_rng([seed, i])
        trajs.append(draw(word, fonts[face], rng, augment or NO_AUGMENT))
        texts.append(word)
        faces.append(FONTS.index(fonts[face]))
    return pad(trajs, texts, faces, U or max(len(w) for w in texts))


__all__ = [
    "ALPHABET",
    "FONTS",
    "NO_AUGMENT",
    "SCALE",
    "Augment",
    "StrokeData",
    "check_font",
    "check_text",
    "corpus_words",
    "dataset",
    "decode_chars",
    "draw",
    "encode_chars",
    "font_strokes",
    "pad",
    "split_words",
    "to_points",
]
