"""Graves' handwriting networks: unconditional, and synthesis with the attention window.

Two LSTM layers and a mixture-density output (`mdn`) over the pen offsets of
`handwriting_data`:

- unconditional: x_t → LSTM → LSTM → ŷ_t, a mixture of M bivariate Gaussians for (Δx, Δy) and
  a Bernoulli pen lift; it writes letter-like strokes of no word in particular;
- synthesis: the first layer also reads Graves' soft window w over the characters c of the
  word to write, and both layers read the face s (one-hot, cursive or print):

      x̃_t = [x_t ; s],  h¹_t = LSTM(x̃_t, w_{t−1}),  (α, β, κ)_t from h¹_t,
      w_t = Σ_u φ(t, u) c_u,  h²_t = LSTM([x̃_t ; h¹_t ; w_t]),  ŷ_t = [h¹_t ; w_t ; h²_t] W + b.

`synthesise` samples with bias b (σ = exp(σ̂ − b), π = softmax(π̂ (1 + b))) and stops each
word at the first pen lift where the window has moved past its last letter.

References:
    Graves, "Generating sequences with recurrent neural networks", 2013, sections 4–5.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.cells import lstm
from rnnjax.cells.base import Array
from rnnjax.driver import unroll
from rnnjax.models import handwriting_data as hd
from rnnjax.models import mdn

V = len(hd.ALPHABET) + 1  # character ids 1..26, 0 pads
STYLES = len(hd.FONTS)


class WriterParams(NamedTuple):
    """Attributes: first: layer-1 params (LSTMParams, or WindowParams when conditional);
    second: layer-2 LSTMParams over [x̃_t ; y¹_t]; W (H¹ + H, 6M + 1), b: the mixture head."""

    first: Any
    second: Any
    W: Array
    b: Array


class Writer(NamedTuple):
    """A two-layer handwriting model; see `writer`.

    Attributes:
        init: ``key -> WriterParams``.
        nll: ``(params, inputs, targets, lengths, chars=None, char_lengths=None, styles=None)``
            → mean NLL per valid point.
        sample: ``(params, key, steps, batch, chars=None, char_lengths=None, styles=None,
            bias=0.0)`` → (trajectories (B, steps, 3), window weights φ (B, steps, U + 1) or
            zeros).
        conditional: whether it reads a text (and a style).
    """

    init: Any
    nll: Any
    sample: Any
    conditional: bool


def writer(
    hidden: int, components: int = 20, window: int = 0, kappa_rate: float = mdn.KAPPA_STEP
) -> Writer:
    """Builds the model: ``window`` = K > 0 adds Graves' attention window and the style input
    (synthesis); ``kappa_rate`` is the window's initial advance in characters per point."""
    conditional = window > 0
    D = 3 + (STYLES if conditional else 0)  # x̃_t = [x_t ; s]

    def first_cell(chars, char_lengths):
        if not conditional:
            return lstm(hidden)
        mask = jnp.arange(chars.shape[-1])[None, :] < char_lengths[:, None]  # (B, U)
        return mdn.window_cell(hidden, window, jax.nn.one_hot(chars, V), mask, kappa_rate)

    H1 = hidden + (V if conditional else 0)
    second = lstm(hidden)

    def init(key) -> WriterParams:
        k1, k2, k3 = jax.random.split(key, 3)
        dummy = (jnp.zeros((1, 1), jnp.int32), jnp.ones((1,), jnp.int32))
        W = jax.nn.initializers.lecun_normal()(k3, (H1 + hidden, mdn.mixture_size(components)))
        return WriterParams(
            first_cell(*dummy).init(k1, D),
            second.init(k2, D + H1),
            W,
            jnp.zeros((mdn.mixture_size(components),), jnp.float32),
        )

    def head(params, y1, h2):
        y = jnp.concatenate([y1, h2], axis=-1) @ params.W  # (..., 6M + 1)
        return y + params.b.reshape((1,) * (y.ndim - 1) + (-1,))

    def with_style(x, styles):  # (B, ..., 3) -> (B, ..., D)
        if not conditional:
            return x
        s = jax.nn.one_hot(styles, STYLES, dtype=x.dtype)  # (B, S)
        s = s.reshape(s.shape[:1] + (1,) * (x.ndim - 2) + s.shape[1:])
        return jnp.concatenate([x, jnp.broadcast_to(s, (*x.shape[:-1], STYLES))], axis=-1)

    def nll(params, inputs, targets, lengths, chars=None, char_lengths=None, styles=None):
        cell = first_cell(chars, char_lengths)
        x = with_style(inputs, styles)  # (B, T, D)
        _, y1 = unroll(cell, params.first, x, lengths=lengths)  # (B, T, H1)
        _, h2 = unroll(second, params.second, jnp.concatenate([x, y1], -1), lengths=lengths)
        per_point = mdn.negative_log_likelihood(mdn.split_mixture(head(params, y1, h2)), targets)
        mask = jnp.arange(inputs.shape[1])[None, :] < lengths[:, None]  # (B, T)
        return jnp.sum(per_point * mask) / jnp.sum(mask)

    def sample(params, key, steps, batch, chars=None, char_lengths=None, styles=None, bias=0.0):
        cell = first_cell(chars, char_lengths)
        c1 = cell.initial_carry(params.first, (batch,))
        c2 = second.initial_carry(params.second, (batch,))
        x0 = jnp.tile(jnp.asarray([[0.0, 0.0, 1.0]]), (batch, 1))  # (B, 3) pen up

        def body(state, k):
            c1, c2, x = state
            xs = with_style(x, styles)  # (B, D)
            c1, y1 = cell.step(params.first, c1, xs)  # (B, H1)
            c2, h2 = second.step(params.second, c2, jnp.concatenate([xs, y1], -1))
            x = mdn.sample_point(k, mdn.split_mixture(head(params, y1, h2), bias))  # (B, 3)
            return (c1, c2, x), (x, c1.phi if conditional else jnp.zeros((batch, 1)))

        _, (xs, phi) = jax.lax.scan(body, (c1, c2, x0), jax.random.split(key, steps))
        return jnp.swapaxes(xs, 0, 1), jnp.swapaxes(phi, 0, 1)  # (B, T, 3), (B, T, U + 1)

    return Writer(init, nll, sample, conditional)


def cut_synthesis(traj: np.ndarray, phi: np.ndarray, n_chars: int) -> np.ndarray:
    """A synthesised trajectory (T, 3) up to the first pen lift at which the text is written,
    else whole. Written: the window weighs the position one past the text more than any of its
    characters, φ(t, U) > max_{u < U} φ(t, u) (Graves 2013, §5.1), at the lift itself — a
    window Gaussian that runs ahead passes that position for a few steps mid-word, so the
    first time alone is not enough. ``phi``: (T, ≥ U + 1)."""
    past = phi[:, n_chars] > phi[:, :n_chars].max(axis=-1)  # (T,)
    done = np.flatnonzero(past & (traj[:, 2] > 0.5))
    return traj[: done[0] + 1] if done.size else traj


def synthesise(
    model: Writer, params, key, texts: list[str], styles, bias: float, U: int, batch: int = 256
) -> list[np.ndarray]:
    """Samples one trajectory per text (style ``styles[i]``, texts of at most U letters), cut
    where the text ends. Batches are padded to multiples of 32 rows (one compilation)."""
    steps = 24 * U + 24  # well beyond the data's ~12 points per letter
    fn = jax.jit(model.sample, static_argnums=(2, 3))
    out: list[np.ndarray] = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        rows = -(-len(chunk) // 32) * 32
        chars, n = hd.encode_chars(chunk + ["a"] * (rows - len(chunk)), U)
        s = np.zeros((rows,), np.int32)
        s[: len(chunk)] = styles[start : start + batch]
        trajs, phi = fn(
            params,
            jax.random.fold_in(key, start),
            steps,
            rows,
            jnp.asarray(chars),
            jnp.asarray(n),
            jnp.asarray(s),
            bias,
        )
        cut = map(cut_synthesis, np.asarray(trajs), np.asarray(phi), n)
        out += list(cut)[: len(chunk)]
    return out


__all__ = ["STYLES", "Writer", "WriterParams", "cut_synthesis", "synthesise", "writer"]
