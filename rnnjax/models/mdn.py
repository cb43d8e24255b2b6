"""Graves' handwriting model pieces: the mixture density output and the soft window.

Mixture density output (Graves 2013, eq. 18–26): from the network output ŷ_t the next pen
point x_{t+1} = (Δx, Δy, e) has density

    p(x_{t+1} | y_t) = Σ_m π_m N(Δx, Δy | μ_m, σ_m, ρ_m) · (e_t if e = 1 else 1 − e_t)

with π = softmax(π̂), σ = exp(σ̂), ρ = tanh(ρ̂), e_t = sigmoid(ê) (a Bernoulli pen lift).

Soft attention window for synthesis (eq. 46–51): K Gaussians over the character positions u,

    (α̂, β̂, κ̂) = h¹_t W + b,  α = exp(α̂),  β = exp(β̂),  κ_t = κ_{t−1} + exp(κ̂) · KAPPA_STEP
    φ(t, u) = Σ_k α_k exp(−β_k (κ_k − u)²),        w_t = Σ_u φ(t, u) c_u

(c_u the one-hot characters). `window_cell` makes the first LSTM layer plus the window one
rnnjax `Cell`, so `rnnjax.unroll` runs it like any other cell; its output is [h¹_t ; w_t].

References:
    Graves, "Generating sequences with recurrent neural networks", 2013, sections 4–5.
    Bishop, "Mixture density networks", 1994.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax import initializers
from rnnjax.cells import lstm
from rnnjax.cells.base import Array, LSTMCarry, check_positive, expand, make_cell

KAPPA_STEP = 0.05  # κ advances by exp(κ̂)·0.05 per point: ≈ 1 character per 20 points at κ̂ = 0


class Mixture(NamedTuple):
    """Parameters of the next-point distribution, each (..., M) except ``e_logit`` (...)."""

    log_pi: Array
    mu_x: Array
    mu_y: Array
    log_sx: Array
    log_sy: Array
    rho: Array
    e_logit: Array


def mixture_size(components: int) -> int:
    """Width of the layer that feeds `split_mixture`: 6M + 1."""
    return 6 * check_positive("components", components) + 1


def split_mixture(y: Array, bias: float = 0.0) -> Mixture:
    """The raw output (..., 6M + 1) as a `Mixture`; ``bias`` > 0 sharpens it for sampling
    (Graves eq. 61–62: σ ← exp(σ̂ − b), π ← softmax(π̂ (1 + b)))."""
    M = (y.shape[-1] - 1) // 6
    pi_hat, mu_x, mu_y, sx, sy, rho_hat = jnp.split(y[..., : 6 * M], 6, axis=-1)  # (..., M)
    return Mixture(
        log_pi=jax.nn.log_softmax(pi_hat * (1.0 + bias), axis=-1),
        mu_x=mu_x,
        mu_y=mu_y,
        log_sx=sx - bias,
        log_sy=sy - bias,
        rho=0.99 * jnp.tanh(rho_hat),
        e_logit=y[..., 6 * M],
    )


def negative_log_likelihood(mix: Mixture, target: Array) -> Array:
    """−log p(x_{t+1}) per point, (...), for targets (..., 3) = (Δx, Δy, e)."""
    dx = (target[..., :1] - mix.mu_x) * jnp.exp(-mix.log_sx)  # (..., M)
    dy = (target[..., 1:2] - mix.mu_y) * jnp.exp(-mix.log_sy)  # (..., M)
    one_m_rho2 = 1.0 - jnp.square(mix.rho)  # (..., M)
    z = jnp.square(dx) + jnp.square(dy) - 2.0 * mix.rho * dx * dy  # (..., M)
    log_n = -z / (2.0 * one_m_rho2) - (
        math.log(2.0 * math.pi) + mix.log_sx + mix.log_sy + 0.5 * jnp.log(one_m_rho2)
    )  # (..., M)
    log_xy = jax.nn.logsumexp(mix.log_pi + log_n, axis=-1)  # (...)
    e = target[..., 2]
    log_e = e * jax.nn.log_sigmoid(mix.e_logit) + (1.0 - e) * jax.nn.log_sigmoid(-mix.e_logit)
    return -(log_xy + log_e)


def sample_point(key: Array, mix: Mixture) -> Array:
    """Draws (Δx, Δy, e) (..., 3) from a `Mixture`."""
    k_m, k_xy, k_e = jax.random.split(key, 3)
    m = jax.random.categorical(k_m, mix.log_pi, axis=-1)[..., None]  # (..., 1)
    pick = lambda a: jnp.take_along_axis(a, m, axis=-1)[..., 0]  # noqa: E731  (...)
    sx, sy, rho = jnp.exp(pick(mix.log_sx)), jnp.exp(pick(mix.log_sy)), pick(mix.rho)
    n1, n2 = jnp.split(jax.random.normal(k_xy, (*m.shape[:-1], 2)), 2, axis=-1)  # (..., 1)
    x = pick(mix.mu_x) + sx * n1[..., 0]
    y = pick(mix.mu_y) + sy * (rho * n1[..., 0] + jnp.sqrt(1.0 - rho**2) * n2[..., 0])
    e = jax.random.bernoulli(k_e, jax.nn.sigmoid(mix.e_logit)).astype(jnp.float32)
    return jnp.stack([x, y, e], axis=-1)


class WindowParams(NamedTuple):
    """Attributes: lstm: LSTMParams of layer 1 over [x_t ; w_{t−1}] (its U is (3 + V, 4H));
    W_win (H, 3K), b_win (3K,): the window's (α̂, β̂, κ̂)."""

    lstm: Any
    W_win: Array
    b_win: Array


class WindowCarry(NamedTuple):
    """Attributes: lstm: LSTMCarry of layer 1; kappa (..., K) window centres; w (..., V) the
    last window vector; phi (..., U + 1) the last window weights φ(t, u) at every position
    u = 0..U, the text's or not (φ one past a text's end tells that it has been written)."""

    lstm: LSTMCarry
    kappa: Array
    w: Array
    phi: Array


def window_cell(
    hidden: int, mixtures: int, chars: Array, char_mask: Array, kappa_rate: float = KAPPA_STEP
):
    """LSTM layer 1 + Graves' soft window over ``chars`` as one rnnjax `Cell`.

    Args:
        hidden: H of the LSTM.
        mixtures: K window Gaussians.
        chars: float (B, U, V) one-hot characters of the texts being written.
        char_mask: bool (B, U), False after each text.
        kappa_rate: the window's initial advance, characters per point (the κ̂ bias starts at
            log(kappa_rate / KAPPA_STEP)): the data's characters per point is a good start.

    Returns:
        A `Cell` with input x_t (B, D), carry `WindowCarry` and output [h¹_t ; w_t] (B, H + V).
        Its params (``init(key, 3)``) do not depend on the texts.
    """
    H, K = check_positive("hidden", hidden), check_positive("mixtures", mixtures)
    if not kappa_rate > 0:
        raise ValueError(f"kappa_rate must be > 0, got {kappa_rate}")
    V = chars.shape[-1]
    base = lstm(H)
    U = chars.shape[-2]
    u = jnp.arange(U + 1, dtype=jnp.float32)  # (U + 1,): the positions, and one past them

    def init(key, input_size: int) -> WindowParams:
        k_l, k_w = jax.random.split(key)
        b_win = jnp.zeros((3 * K,), jnp.float32).at[K : 2 * K].set(-1.0)  # broad at first
        b_win = b_win.at[2 * K :].set(math.log(kappa_rate / KAPPA_STEP))
        W_win = initializers.default_input_init(k_w, (H, 3 * K), jnp.float32) * 0.1
        return WindowParams(base.init(k_l, input_size + V), W_win, b_win)

    def initial_carry(params: WindowParams, batch_shape=()) -> WindowCarry:
        zeros = jnp.zeros((*batch_shape, H), jnp.float32)
        kappa = jnp.zeros((*batch_shape, K), jnp.float32)
        w, phi = jnp.zeros((*batch_shape, V)), jnp.zeros((*batch_shape, U + 1))
        return WindowCarry(LSTMCarry(zeros, zeros), kappa, w, phi)

    def project(params: WindowParams, xs: Array) -> Array:
        U_x = params.lstm.U[: xs.shape[-1]]  # (3, 4H): the x_t rows; w_{t−1} is recurrent
        xu = xs @ U_x  # (..., 4H)
        return xu + expand(params.lstm.b, xu)

    def recur(params: WindowParams, carry: WindowCarry, px: Array):
        U_w = params.lstm.U[-V:]  # (V, 4H)
        lstm_carry, h = base.recur(params.lstm, carry.lstm, px + carry.w @ U_w)  # (B, H)
        abk = h @ params.W_win  # (B, 3K)
        alpha, beta, kappa_hat = jnp.split(jnp.exp(abk + expand(params.b_win, abk)), 3, -1)
        kappa = carry.kappa + KAPPA_STEP * kappa_hat  # (B, K)
        gap = kappa[..., None] - expand(u, kappa[..., None])  # (B, K, U + 1): κ_k − u
        phi = jnp.sum(alpha[..., None] * jnp.exp(-beta[..., None] * jnp.square(gap)), -2)
        on_text = jnp.where(char_mask, phi[..., :U], 0.0)  # (B, U)
        w = jnp.einsum("...u,...uv->...v", on_text, chars)  # (B, V)
        return WindowCarry(lstm_carry, kappa, w, phi), jnp.concatenate([h, w], axis=-1)

    cfg = {"hidden_size": H, "mixtures": K, "vocab": V, "kappa_rate": kappa_rate}
    return make_cell(
        name="graves_window",
        hidden_size=H + V,
        config=cfg,
        init=init,
        initial_carry=initial_carry,
        project=project,
        recur=recur,
    )


__all__ = [
    "KAPPA_STEP",
    "Mixture",
    "WindowCarry",
    "WindowParams",
    "mixture_size",
    "negative_log_likelihood",
    "sample_point",
    "split_mixture",
    "window_cell",
]
