"""Decoding for any recurrent decoder: greedy search, beam search and corpus BLEU.

Both searches are `lax.scan` loops (jit-compatible, fixed ``max_len``) over a decoder step
``step(carry, token) -> (carry, log_probs)`` whose carry and tokens may have any leading batch
axes. They start from the carry and log-probabilities of the decoder's *first* output — the
step after ``<BOS>`` in translation, the step after the image in captioning — so every
decoder can use them::

    carry, log_probs = step(encoder_carry, bos)            # (B, V)
    tokens, scores = beam_search(step, carry, log_probs, max_len=12, beam_size=4, eos=2)

Returned tokens are (B, max_len): the words, ``eos`` and then ``pad``; scores are the summed
log-probabilities of the returned sequences (up to and including ``eos``).

References:
    Sutskever, Vinyals & Le, "Sequence to sequence learning with neural networks", 2014
    (left-to-right beam search; a beam of 2 already gives most of the benefit).
    Papineni, Roukos, Ward & Zhu, "BLEU: a method for automatic evaluation of machine
    translation", ACL 2002.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array

Step = Callable[[Any, Array], tuple[Any, Array]]


def _check_search(log_probs: Array, max_len: int) -> None:
    if log_probs.ndim != 2:
        raise ValueError(f"first log_probs must be (B, V), got {log_probs.shape=}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len=}")


def greedy_search(
    step: Step, carry: Any, log_probs: Array, *, max_len: int, eos: int, pad: int = 0
) -> tuple[Array, Array]:
    """Takes the most probable token at every step until ``eos`` (then pads).

    Args:
        step: ``(carry, tokens (B,)) -> (carry, log_probs (B, V))``.
        carry: the decoder carry after its first step (leaves (B, ·)).
        log_probs: (B, V), the distribution of the first token.
        max_len: number of tokens returned (``eos`` included).
        eos, pad: the end-of-sequence and padding ids.

    Returns:
        ``(tokens, scores)``: int32 (B, max_len) and float32 (B,).
    """
    _check_search(log_probs, max_len)
    first = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)  # (B,)
    score = jnp.max(log_probs, axis=-1)  # (B,)

    def body(state, _):
        carry, last, done, score = state
        carry, lp = step(carry, last)  # (B, V)
        token = jnp.where(done, pad, jnp.argmax(lp, axis=-1)).astype(jnp.int32)  # (B,)
        score = score + jnp.where(done, 0.0, jnp.max(lp, axis=-1))
        return (carry, token, done | (token == eos), score), token

    state = (carry, first, first == eos, score)
    (_, _, _, score), rest = jax.lax.scan(body, state, None, length=max_len - 1)
    tokens = jnp.concatenate([first[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)  # (B, L)
    return tokens, score


def beam_search(
    step: Step,
    carry: Any,
    log_probs: Array,
    *,
    max_len: int,
    beam_size: int,
    eos: int,
    pad: int = 0,
) -> tuple[Array, Array]:
    r"""Keeps the ``beam_size`` most probable partial sequences at every step.

    A hypothesis' score is its summed log-probability :math:`\sum_t \log p(y_t | y_{<t}, x)`.
    Finished hypotheses (ended by ``eos``) keep their score and extend only with ``pad``, so
    they compete with the unfinished ones until the end; the best of the final beam wins.

    Args:
        step: ``(carry, tokens (B, K)) -> (carry, log_probs (B, K, V))``; the leading axes of
            carry and tokens are (B, K) during the search.
        carry: the decoder carry after its first step (leaves (B, ·)).
        log_probs: (B, V), the distribution of the first token.
        max_len: number of tokens returned (``eos`` included).
        beam_size: K (≤ V).
        eos, pad: the end-of-sequence and padding ids.

    Returns:
        ``(tokens, scores)`` of the best hypothesis: int32 (B, max_len) and float32 (B,).
    """
    _check_search(log_probs, max_len)
    B, V = log_probs.shape
    K = beam_size
    if isinstance(K, bool) or not isinstance(K, int) or not 1 <= K <= V:
        raise ValueError(f"beam_size must be an int in [1, V={V}], got {beam_size=}")
    scores, first = jax.lax.top_k(log_probs, K)  # (B, K) each
    carry = jax.tree.map(lambda x: jnp.repeat(x[:, None], K, axis=1), carry)  # (B, K, ·)
    tokens = jnp.full((B, K, max_len), pad, jnp.int32).at[:, :, 0].set(first)
    only_pad = jnp.full((V,), -jnp.inf).at[pad].set(0.0)  # (V,) the one way to go on

    def pick(x: Array, parent: Array) -> Array:
        index = parent.reshape(parent.shape + (1,) * (x.ndim - 2))  # (B, K, 1, ...)
        return jnp.take_along_axis(x, index, axis=1)

    def body(state, t):
        carry, tokens, scores, done = state
        carry, lp = step(carry, tokens[:, :, t - 1])  # (B, K, V)
        lp = jnp.where(done[..., None], only_pad[None, None], lp)  # (B, K, V)
        candidates = (scores[..., None] + lp).reshape(B, K * V)  # (B, K·V)
        scores, index = jax.lax.top_k(candidates, K)  # (B, K)
        parent, token = index // V, (index % V).astype(jnp.int32)  # (B, K) each
        carry = jax.tree.map(lambda x: pick(x, parent), carry)
        tokens = pick(tokens, parent)  # (B, K, L)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, t, axis=2)
        done = pick(done, parent) | (token == eos)  # (B, K)
        return (carry, tokens, scores, done), None

    state = (carry, tokens, scores, first == eos)
    (_, tokens, scores, _), _ = jax.lax.scan(body, state, jnp.arange(1, max_len))
    return tokens[:, 0], scores[:, 0]  # top_k sorts the beam: entry 0 is the best


def corpus_bleu(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]]) -> float:
    r"""Corpus-level BLEU (Papineni et al. 2002) as sacreBLEU computes it, on the 0–100 scale.

    .. math:: \mathrm{BLEU} = 100 \cdot \mathrm{BP} \cdot
        \exp\Big(\frac14 \sum_{n=1}^4 \log p_n\Big), \qquad \mathrm{BP} = \min(1, e^{1 - r/c})

    with p_n the clipped n-gram precision summed over the corpus, r the total reference length
    and c the total hypothesis length; sacreBLEU's standard settings (one reference, ``13a``
    tokenisation, mixed case, ``exp`` smoothing: a p_n with no match counts as
    1 / (2^k · total), k = 1, 2, ... for the k-th such order). Sentences are given as word
    lists and joined with spaces.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)=} references but {len(hypotheses)=} hypotheses")
    import sacrebleu

    refs = [" ".join(r) for r in references]
    return float(sacrebleu.corpus_bleu([" ".join(h) for h in hypotheses], [refs]).score)


__all__ = ["beam_search", "corpus_bleu", "greedy_search"]
