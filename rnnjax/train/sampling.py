"""Sampling text from a character model: temperature, top-k, seeded.

The prompt is read in one `unroll`; then each new character is drawn from

.. math:: p(k) \\propto \\exp(\\log y_t(k) / \\tau) \\quad \\text{over the } k
    \\text{ most likely characters (top-}k\\text{), } \\tau = \\text{temperature}

and fed back as the next input (`Model.step`), inside one `lax.scan`. The same seed gives the
same text.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array
from rnnjax.data.text import Vocab
from rnnjax.train.model import Model


def filter_logits(log_probs: Array, temperature: float, top_k: int | None) -> Array:
    """Scales log-probabilities (V,) by 1/temperature and keeps only the top k (others −inf)."""
    logits = log_probs / temperature  # (V,)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][-1]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    return logits


def _generate(model: Model, params, prompt: Array, length: int, temperature, top_k, key):
    """The characters after ``prompt`` (P,), as int32 (length,) (jit with length, top_k static)."""
    carry = model.initial_carry(params, ())
    carry, log_probs = model.apply(params, prompt, carry)  # (P, V)

    def body(state, t):
        carry, last = state  # last: (V,) log-probabilities of the next character
        token = jax.random.categorical(
            jax.random.fold_in(key, t), filter_logits(last, temperature, top_k)
        )
        carry, nxt = model.step(params, carry, token)
        return (carry, nxt), token

    _, tokens = jax.lax.scan(body, (carry, log_probs[-1]), jnp.arange(length))
    return tokens  # (length,)


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
    generate = jax.jit(partial(_generate, model), static_argnums=(2, 4))
    out = generate(params, tokens, length, float(temperature), top_k, jax.random.key(seed))
    return vocab.decode(out)


__all__ = ["filter_logits", "sample"]
