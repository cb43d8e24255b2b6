"""Sampling text from a character model: temperature, top-k, seeded.

The model's RNN stack runs as a stream (`rnnjax.streaming.streamer`, the carry passed from
one chunk to the next): the prompt is read in chunks of ``PROMPT_CHUNK`` characters, then each
new character is drawn from

.. math:: p(k) \\propto \\exp(\\log y_t(k) / \\tau) \\quad \\text{over the } k
    \\text{ most likely characters (top-}k\\text{), } \\tau = \\text{temperature}

with the key ``fold_in(key(seed), t)`` for the t-th character, and pushed back into the stream
as a chunk of one step. The same seed gives the same text.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array
from rnnjax.data.text import Vocab
from rnnjax.streaming import run_in_chunks, streamer
from rnnjax.train.model import Model

PROMPT_CHUNK = 64  # characters of the prompt read per call


def filter_logits(log_probs: Array, temperature: float, top_k: int | None) -> Array:
    """Scales log-probabilities (V,) by 1/temperature and keeps only the top k (others −inf)."""
    logits = log_probs / temperature  # (V,)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][-1]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    return logits


def _generate(model: Model, params, prompt: Array, length: int, temperature, top_k, key):
    """The characters after ``prompt`` (P,), as int32 (length,), read and written as a stream."""
    xs = model.features(params, prompt)  # (P, E)
    carry, hs = run_in_chunks(model.stack, params.rnn, xs, min(PROMPT_CHUNK, len(prompt)))
    push = streamer(model.stack, params.rnn, chunk_size=1)

    @jax.jit
    def draw(h: Array, t: Array) -> tuple[Array, Array]:  # h: (H,) -> token (), its input (1, E)
        logits = filter_logits(model.head(params, h), temperature, top_k)  # (V,)
        token = jax.random.categorical(jax.random.fold_in(key, t), logits)
        return token, model.features(params, token[None])

    h, tokens = hs[-1], []  # (H,)
    for t in range(length):
        token, x = draw(h, jnp.int32(t))
        tokens.append(token)
        carry, hs = push(carry, x)  # hs: (1, H)
        h = hs[-1]
    return jnp.stack(tokens)  # (length,)


def sample(
    model: Model,
    params: Any,
    vocab: Vocab,
    prompt: str,
    length: int = 200,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> str:
    """Continues ``prompt`` by ``length`` characters.

    Args:
        model: a character model (`rnnjax.train.model.char_model`).
        params: its parameters.
        vocab: the vocabulary it was trained with.
        prompt: the start of the text (non-empty; every character must be in the vocabulary).
        length: how many characters to draw.
        temperature: τ > 0; below 1 sharpens the distribution, above 1 flattens it.
        top_k: draw only among the k most likely characters (None: all).
        seed: the PRNG seed.

    Returns:
        The generated characters (without the prompt).
    """
    if not prompt:
        raise ValueError("the prompt must not be empty")
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise ValueError(f"length must be a positive integer, got {length=}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature=}")
    if top_k is not None and not 0 < top_k <= vocab.size:
        raise ValueError(f"top_k must be in [1, {vocab.size}] (the vocabulary), got {top_k=}")
    tokens = jnp.asarray(vocab.encode(prompt))  # (P,)
    out = _generate(model, params, tokens, length, float(temperature), top_k, jax.random.key(seed))
    return vocab.decode(out)


__all__ = ["filter_logits", "sample"]
