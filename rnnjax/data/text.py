"""Character-level text: the embedded corpus, vocabularies and streams for truncated BPTT.

The default corpus is Python's own help text (`pydoc_data.topics`, about 465 k characters of
English prose with code examples) that ships with every CPython: no download, no data file.
Any UTF-8 text file can be used instead::

    corpus = load_corpus("default")                   # or a path
    data = prepare_text(corpus, batch_size=32, window=64)
    data.vocab.size, data.train.shape                 # (V, (32, N)) contiguous streams
    inputs, targets = bptt_window(data.train, k=5, window=64)   # (32, 64) each

Truncated BPTT: the training text is cut into B contiguous streams, one per batch row, and
window k of every row continues window k − 1 of the same row, so the carry at the end of one
window is the right initial carry of the next (the trainer passes it on under
``stop_gradient``).

References:
    Williams & Peng, "An efficient gradient-based algorithm for on-line training of
    recurrent network trajectories", 1990 (truncated BPTT).
    Karpathy, Johnson & Fei-Fei, "Visualizing and understanding recurrent networks", 2015.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from rnnjax.cells.base import Array

DEFAULT_CORPUS = "default"


def default_corpus() -> str:
    """Python's help topics (`pydoc_data.topics`), joined in sorted order of their names."""
    from pydoc_data import topics

    return "\n\n".join(topics.topics[name] for name in sorted(topics.topics))


def load_corpus(source: str) -> str:
    """Reads a corpus: ``"default"`` for the embedded one, otherwise a UTF-8 text file.

    Raises:
        ValueError: with one readable line for a missing, empty, binary or non-UTF-8 file.
    """
    if source == DEFAULT_CORPUS:
        return default_corpus()
    path = Path(source)
    if not path.exists():
        raise ValueError(f"corpus file not found: {source}")
    if not path.is_file():
        raise ValueError(f"corpus {source} is not a regular file")
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"corpus {source} is empty")
    if b"\x00" in data:
        raise ValueError(f"corpus {source} looks binary (it contains NUL bytes); give a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"corpus {source} is not valid UTF-8 (byte {err.start}: {err.reason}); "
            f"convert it, e.g. with iconv -t UTF-8"
        ) from None


class Vocab(NamedTuple):
    """A character vocabulary: token k is ``chars[k]`` (characters in sorted order)."""

    chars: str

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """int32 token ids of ``text``; ValueError naming any character not in the vocabulary."""
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted({c for c in text if c not in index})
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {''.join(unknown)!r}")
        return np.fromiter((index[c] for c in text), np.int32, len(text))

    def decode(self, tokens) -> str:
        return "".join(self.chars[int(t)] for t in np.asarray(tokens).reshape(-1))


def build_vocab(text: str) -> Vocab:
    """The sorted set of characters of ``text``."""
    if not text:
        raise ValueError("cannot build a vocabulary from an empty text")
    return Vocab("".join(sorted(set(text))))


def split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """Splits into (train, validation): the validation text is the last ``val_fraction``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction=}")
    cut = len(text) - int(len(text) * val_fraction)
    return text[:cut], text[cut:]


def make_streams(
    tokens: np.ndarray, batch_size: int, window: int, what: str = "text"
) -> np.ndarray:
    """Cuts tokens into ``batch_size`` contiguous rows, (B, N) with N = len // B.

    Raises:
        ValueError: if a row is shorter than one window plus its target (N < window + 1).
    """
    B, W = batch_size, window
    N = len(tokens) // B
    if N < W + 1:
        raise ValueError(
            f"the {what} has {len(tokens)} characters, shorter than one batch window: "
            f"batch_size={B} rows of window={W} + 1 need at least {B * (W + 1)}"
        )
    return np.asarray(tokens[: B * N], np.int32).reshape(B, N)  # (B, N)


def num_windows(streams: Array | np.ndarray, window: int) -> int:
    """How many windows of ``window`` inputs (plus the next character) each row holds."""
    return (streams.shape[1] - 1) // window


def bptt_window(streams: Array | np.ndarray, k: Array | int, window: int) -> tuple[Array, Array]:
    """Window k of every stream: inputs ``s[:, kW : kW+W]`` and targets ``s[:, kW+1 : kW+W+1]``.

    Works with a traced ``k`` (under jit), so the data never leaves the device.
    """
    chunk = jax.lax.dynamic_slice_in_dim(streams, k * window, window + 1, axis=1)  # (B, W+1)
    return chunk[:, :-1], chunk[:, 1:]


class TextData(NamedTuple):
    """A prepared corpus.

    Attributes:
        vocab: the character vocabulary (of the whole corpus).
        train: int32 (B, N) training streams.
        val: int32 (B_val, N_val) validation streams (B_val ≤ B when the text is short).
    """

    vocab: Vocab
    train: np.ndarray
    val: np.ndarray


def prepare_text(
    text: str, batch_size: int, window: int, val_fraction: float = 0.1, vocab: Vocab | None = None
) -> TextData:
    """Vocabulary, train/validation split and streams for truncated BPTT.

    Args:
        text: the corpus.
        batch_size: B, the number of parallel streams.
        window: W, the truncation length of BPTT.
        val_fraction: the share of the text (at its end) kept for validation.
        vocab: an existing vocabulary (when resuming); default: built from ``text``.
    """
    for name, value in (("batch_size", batch_size), ("window", window)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    vocab = vocab or build_vocab(text)
    train, val = split_text(text, val_fraction)
    train_streams = make_streams(vocab.encode(train), batch_size, window, "training text")
    val_rows = max(1, min(batch_size, len(val) // (window + 1)))
    val_streams = make_streams(vocab.encode(val), val_rows, window, "validation text")
    return TextData(vocab, train_streams, val_streams)


__all__ = [
    "DEFAULT_CORPUS",
    "TextData",
    "Vocab",
    "bptt_window",
    "build_vocab",
    "default_corpus",
    "load_corpus",
    "make_streams",
    "num_windows",
    "prepare_text",
    "split_text",
]
