"""Sampling text from a character model: temperature, top-k, seeded.

The prompt is read in one pass of the model, then each new character is drawn from

.. math:: p(k) \\propto \\exp(\\log y_t(k) / \\tau) \\quad \\text{over the } k
    \\text{ most likely characters (top-}k\\text{), } \\tau = \\text{temperature}

with the key ``fold_in(key(seed), t)`` for the t-th character and fed back through
`Model.step`. Reading and drawing are one jitted program with a ``lax.scan`` over the
characters, compiled once per model, prompt length, length and top-k (the parameters and
the temperature are arguments). The same seed gives the same text.
"""

from __future__ import annotations

import functools
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


@functools.partial(jax.jit, static_argnames=("model", "length", "top_k"))
def _generate(model: Model, params, prompt: Array, length: int, temperature, top_k, key):
    """The characters after ``prompt`` (P,), as int32 (length,).

    The prompt is read in one `Model.apply`; then the t-th character is drawn with
    ``fold_in(key, t)`` and fed back through `Model.step`, all in one ``lax.scan``.
    ``params`` and ``temperature`` are arguments (not constants of the trace), so a second
    call with the same shapes reuses the compiled program.
    """
    carry = model.initial_carry(params, ())
    carry, log_probs = model.apply(params, prompt, carry)  # log_probs: (P, V)

    def one(state, t):
        carry, log_probs = state
        logits = filter_logits(log_probs, temperature, top_k)  # (V,)
        token = jax.random.categorical(jax.random.fold_in(key, t), logits)  # ()
        carry, log_probs = model.step(params, carry, token)  # log_probs: (V,)
        return (carry, log_probs), token

    _, tokens = jax.lax.scan(one, (carry, log_probs[-1]), jnp.arange(length))  # (length,)
    return tokens


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
