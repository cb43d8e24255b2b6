"""The lecture's encoder–decoder: an LSTM reads the source, a second LSTM writes the target.

    Today the weather is good <EOS> Погода сегодня хорошая
    └──────── encoder ────────┘     └──── decoder ────┘ <EOS>

The encoder's final carry (every layer's (h, c)) is the decoder's initial carry. Training uses
teacher forcing: the decoder reads ``<BOS> y_1 … y_n`` and is scored on ``y_1 … y_n <EOS>``.
Decoding is greedy or beam search (`rnnjax.models.decoding`), both jit-compiled loops over a
``step(carry, token) -> (carry, log_probs)`` function that any decoder (this one, or the
captioning model's) provides::

    vocab_src, vocab_tgt = WordVocab.build(sources), WordVocab.build(targets)
    model = seq2seq(len(vocab_src), len(vocab_tgt), embed=64, hidden=256)
    params = model.init(key)
    loss, acc = model.loss(params, batch)                       # batch: a `Seq2SeqBatch`
    tokens, scores = model.decode(params, batch.src, batch.src_len, max_len=12, beam_size=4)

References:
    Sutskever, Vinyals & Le, "Sequence to sequence learning with neural networks", 2014
    (the encoder–decoder, <EOS>, reversed source sentences, beam search).
    Cho et al., "Learning phrase representations using RNN encoder–decoder", 2014.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.cells import lstm
from rnnjax.cells.base import Array, check_positive
from rnnjax.layers import EmbeddingParams, ReadoutParams, embedding, readout, stacked
from rnnjax.losses import sequence_cross_entropy
from rnnjax.models.decoding import beam_search, greedy_search

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<PAD>", "<BOS>", "<EOS>")


class WordVocab:
    """Words ↔ ids; ids 0, 1, 2 are ``<PAD>``, ``<BOS>``, ``<EOS>``.

    Args:
        words: the vocabulary (the specials are prepended).
    """

    def __init__(self, words: Iterable[str]):
        self.words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]]) -> WordVocab:
        """The vocabulary of tokenised sentences, in sorted order (deterministic)."""
        return cls(sorted({w for s in sentences for w in s}))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, sentence: Sequence[str]) -> list[int]:
        """Ids of the words (ValueError naming the first unknown word)."""
        unknown = [w for w in sentence if w not in self.index]
        if unknown:
            raise ValueError(f"unknown word {unknown[0]!r} in {' '.join(sentence)!r}")
        return [self.index[w] for w in sentence]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of the ids up to the first ``<EOS>`` (``<PAD>`` and ``<BOS>`` dropped)."""
        out = []
        for i in ids:
            if int(i) == EOS:
                break
            if int(i) not in (PAD, BOS):
                out.append(self.words[int(i)])
        return out


class Seq2SeqBatch(NamedTuple):
    """A padded batch of sentence pairs (int32 numpy or jax arrays).

    Attributes:
        src: (B, S) source ids, PAD after ``src_len``.
        src_len: (B,) source lengths (≥ 1).
        tgt_in: (B, L) decoder inputs ``<BOS> y_1 … y_n`` (PAD after).
        tgt_out: (B, L) decoder targets ``y_1 … y_n <EOS>`` (PAD after).
    """

    src: Any
    src_len: Any
    tgt_in: Any
    tgt_out: Any


def pad_pairs(
    sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], src_len: int, tgt_len: int
) -> Seq2SeqBatch:
    """Pads id sequences into a `Seq2SeqBatch` (numpy); tgt_len counts the ``<EOS>``."""
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)=} sources but {len(targets)=} targets")
    B = len(sources)
    src = np.zeros((B, src_len), np.int32)
    tgt_in = np.zeros((B, tgt_len), np.int32)
    tgt_out = np.zeros((B, tgt_len), np.int32)
    lengths = np.zeros((B,), np.int32)
    for b, (s, t) in enumerate(zip(sources, targets, strict=True)):
        if not 1 <= len(s) <= src_len or len(t) + 1 > tgt_len:
            raise ValueError(
                f"pair {b} does not fit: source of {len(s)} ids (max {src_len}), target of "
                f"{len(t)} ids (max {tgt_len - 1} before <EOS>)"
            )
        src[b, : len(s)] = s
        lengths[b] = len(s)
        tgt_in[b, : len(t) + 1] = [BOS, *t]
        tgt_out[b, : len(t) + 1] = [*t, EOS]
    return Seq2SeqBatch(src, lengths, tgt_in, tgt_out)


class Seq2SeqParams(NamedTuple):
    """Attributes: src_embed (V_s, E); encoder: per-layer LSTM params; tgt_embed (V_t, E);
    decoder: per-layer LSTM params; out: readout V (H, V_t), b (V_t,)."""

    src_embed: EmbeddingParams
    encoder: tuple
    tgt_embed: EmbeddingParams
    decoder: tuple
    out: ReadoutParams


class Seq2Seq(NamedTuple):
    """An encoder–decoder as pure functions (see the module docstring).

    Attributes:
        init: ``key -> Seq2SeqParams``.
        encode: ``(params, src, src_len) -> carry``: the encoder's final carry per layer.
        step: ``(params, carry, token) -> (carry, log_probs)``: one decoder step.
        loss: ``(params, batch) -> (loss, token_accuracy)``: teacher-forced cross-entropy
            (nats per target token, ``<EOS>`` included) and the share of correct tokens.
        decode: ``(params, src, src_len, *, max_len, beam_size=1) -> (tokens, scores)``:
            greedy (beam_size 1) or beam search; tokens (B, max_len) end with ``<EOS>``.
    """

    init: Callable[..., Seq2SeqParams]
    encode: Callable[..., Any]
    step: Callable[..., tuple[Any, Array]]
    loss: Callable[..., tuple[Array, Array]]
    decode: Callable[..., tuple[Array, Array]]


def seq2seq(
    src_vocab: int,
    tgt_vocab: int,
    *,
    embed: int = 64,
    hidden: int = 256,
    layers: int = 1,
    reverse_source: bool = True,
    backend: str = "auto",
) -> Seq2Seq:
    """Builds the LSTM encoder–decoder.

    Args:
        src_vocab, tgt_vocab: vocabulary sizes (ids 0, 1, 2 are PAD, BOS, EOS).
        embed: E, the size of the word vectors.
        hidden: H, units of every LSTM layer.
        layers: depth of the encoder and of the decoder.
        reverse_source: read each source backwards within its length (Sutskever et al. 2014:
            the first source words end up next to the first target words).
        backend: the `rnnjax.unroll` backend of both LSTMs.

    Returns:
        A `Seq2Seq`.
    """
    for name, value in (("src_vocab", src_vocab), ("tgt_vocab", tgt_vocab), ("embed", embed)):
        check_positive(name, value)
    check_positive("hidden", hidden)
    enc_emb, dec_emb = embedding(src_vocab, embed), embedding(tgt_vocab, embed)
    encoder = stacked([lstm(hidden) for _ in range(check_positive("layers", layers))])
    decoder = stacked([lstm(hidden) for _ in range(layers)])
    out = readout(tgt_vocab)

    def init(key) -> Seq2SeqParams:
        k = jax.random.split(key, 5)
        return Seq2SeqParams(
            enc_emb.init(k[0]),
            encoder.init(k[1], embed),
            dec_emb.init(k[2]),
            decoder.init(k[3], embed),
            out.init(k[4], hidden),
        )

    def encode(params: Seq2SeqParams, src: Array, src_len: Array):
        xs = enc_emb.apply(params.src_embed, src)  # (B, S, E)
        carry, _ = encoder.apply(
            params.encoder, xs, lengths=src_len, reverse=reverse_source, backend=backend
        )
        return carry  # per layer LSTMCarry((B, H), (B, H))

    def step(params: Seq2SeqParams, carry, token: Array):
        carry, h = decoder.step(params.decoder, carry, dec_emb.apply(params.tgt_embed, token))
        return carry, out.apply(params.out, h)  # (..., V_t)

    def loss(params: Seq2SeqParams, batch: Seq2SeqBatch):
        carry = encode(params, batch.src, batch.src_len)
        ys = dec_emb.apply(params.tgt_embed, batch.tgt_in)  # (B, L, E)
        _, hs = decoder.apply(params.decoder, ys, carry, backend=backend)  # (B, L, H)
        log_probs = out.apply(params.out, hs)  # (B, L, V_t)
        mask = batch.tgt_out != PAD  # (B, L)
        correct = jnp.argmax(log_probs, axis=-1) == batch.tgt_out  # (B, L)
        accuracy = jnp.sum(correct & mask) / jnp.maximum(jnp.sum(mask), 1)
        return sequence_cross_entropy(log_probs, batch.tgt_out, mask), accuracy

    def decode(params: Seq2SeqParams, src, src_len, *, max_len: int, beam_size: int = 1):
        carry = encode(params, src, src_len)
        bos = jnp.full(src.shape[:1], BOS, jnp.int32)  # (B,)
        carry, log_probs = step(params, carry, bos)  # (B, V_t)
        search = functools.partial(step, params)
        if beam_size == 1:
            return greedy_search(search, carry, log_probs, max_len=max_len, eos=EOS, pad=PAD)
        return beam_search(
            search, carry, log_probs, max_len=max_len, beam_size=beam_size, eos=EOS, pad=PAD
        )

    return Seq2Seq(init, encode, step, loss, decode)


__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "Seq2Seq",
    "Seq2SeqBatch",
    "Seq2SeqParams",
    "WordVocab",
    "pad_pairs",
    "seq2seq",
]
