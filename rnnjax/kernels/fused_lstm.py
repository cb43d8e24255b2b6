r"""The fused LSTM step and its hand-written backward (plain, peephole and coupled variants).

Forward (gates (i, f, g, o); coupled: (f, g, o) with i = 1 − f; p = peepholes)::

    z   = px_t + h_{t-1} W                                  one fused (N, H) × (H, G) matmul
    i   = σ(z_i + p_i ⊙ c_{t-1}),  f = σ(z_f + p_f ⊙ c_{t-1}),  g = tanh(z_g)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    o   = σ(z_o + p_o ⊙ c_t),      h_t = o ⊙ tanh(c_t)

Saved per step: the activated gates (N, G) and the incoming cell state c_{t-1} (N, H); c_t is
recomputed in the backward from them (one multiply-add). Backward of one step, with
dh = dh_t + dy_t and dc = dc_t flowing in::

    dz_o = dh ⊙ tanh(c_t) ⊙ o(1 − o)
    dc  += dh ⊙ o ⊙ (1 − tanh²c_t) + p_o ⊙ dz_o
    dz_i = dc ⊙ g ⊙ i(1 − i),  dz_f = dc ⊙ c_{t-1} ⊙ f(1 − f),  dz_g = dc ⊙ i ⊙ (1 − g²)
          (coupled: dz_f = dc ⊙ (c_{t-1} − g) ⊙ f(1 − f))
    dc_{t-1} = dc ⊙ f + p_i ⊙ dz_i + p_f ⊙ dz_f,   dh_{t-1} = dz Wᵀ

After the loop: dW = Σ_t h_{t-1}ᵀ dz_t (one matmul), dp_i = Σ dz_i ⊙ c_{t-1},
dp_f = Σ dz_f ⊙ c_{t-1}, dp_o = Σ dz_o ⊙ c_t. The readable reference is ``rj.lstm``'s
``recur`` under `rnnjax.kernels.scan.scan_backend`.

References:
    Hochreiter & Schmidhuber 1997; Gers & Schmidhuber 2000 (peepholes); Greff et al. 2017
    (coupled gates); Appleyard et al. 2016 (the fused loop).
"""

from __future__ import annotations

import jax.numpy as jnp

from rnnjax.cells.base import Cell, matmul
from rnnjax.kernels.fused import FusedSpec, sum_outer


def sigmoid(x):
    """σ(x) = ½·tanh(x/2) + ½: XLA:CPU's tanh is a fast polynomial, its logistic is not."""
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


def _total(a):
    """(T, N, H) -> (1, H): the sum over time and batch."""
    return jnp.sum(a, axis=0).sum(axis=0, keepdims=True)


def lstm_spec(cell: Cell) -> FusedSpec:
    """The fused LSTM of ``cell`` (``rj.lstm(..., peephole, coupled, dtype)``)."""
    peephole, coupled, cd = cell.config["peephole"], cell.config["coupled"], cell.config["dtype"]
    n_gates = 3 if coupled else 4
    H = cell.hidden_size
    # Without peepholes every gate is one tanh of the fused pre-activation z:
    # act = s·tanh(s·z) + (1 − s), with s = ½ for the sigmoid gates and 1 for g.
    kinds = ("f", "g", "o") if coupled else ("i", "f", "g", "o")
    scale = jnp.concatenate([jnp.full((1, H), 1.0 if k == "g" else 0.5) for k in kinds], -1)

    def split(a):
        """Gate blocks as (i, f, g, o); i is None for the coupled cell."""
        parts = jnp.split(a, n_gates, axis=-1)  # (..., H) each
        return (None, *parts) if coupled else tuple(parts)

    def weights(params):
        rows = [None if p is None else p[None] for p in (params.p_i, params.p_f, params.p_o)]
        return (params.W, *rows)  # peepholes (1, H) for explicit broadcasting, None if absent

    def step(weights, carry, px_t):
        W, p_i, p_f, p_o = weights
        h, c = carry  # (N, H) each
        z = px_t + matmul(h, W, cd)  # (N, G)
        if not peephole:
            gates = scale * jnp.tanh(scale * z) + (1.0 - scale)  # (N, G), all gates at once
            i, f, g, o = split(gates)
            c_new = f * c + (1.0 - f if coupled else i) * g  # (N, H)
            return (o * jnp.tanh(c_new), c_new), o * jnp.tanh(c_new), (gates, c)
        zi, zf, zg, zo = split(z)  # (N, H) each
        f = sigmoid(zf + p_f * c)
        i = 1.0 - f if coupled else sigmoid(zi + p_i * c)
        g = jnp.tanh(zg)
        c_new = f * c + i * g  # (N, H)
        o = sigmoid(zo + p_o * c_new)
        h_new = o * jnp.tanh(c_new)  # (N, H)
        gates = jnp.concatenate(([f] if coupled else [i, f]) + [g, o], axis=-1)  # (N, G)
        return (h_new, c_new), h_new, (gates, c)

    def step_bwd(weights_t, saved_t, h_prev_t, y_t, dcarry):
        del h_prev_t, y_t
        W_t, p_i, p_f, p_o = weights_t
        gates, c_prev = saved_t  # (N, G), (N, H)
        i, f, g, o = split(gates)
        if coupled:
            i = 1.0 - f
        dh, dc = dcarry  # (N, H) each
        c = f * c_prev + i * g  # (N, H), recomputed
        tc = jnp.tanh(c)
        dzo = dh * tc * o * (1.0 - o)
        dc = dc + dh * o * (1.0 - tc * tc)
        if peephole:
            dc = dc + p_o * dzo
        dzg = dc * i * (1.0 - g * g)
        if coupled:
            dzf = dc * (c_prev - g) * f * (1.0 - f)
            dz = jnp.concatenate([dzf, dzg, dzo], axis=-1)  # (N, 3H)
        else:
            dzi = dc * g * i * (1.0 - i)
            dzf = dc * c_prev * f * (1.0 - f)
            dz = jnp.concatenate([dzi, dzf, dzg, dzo], axis=-1)  # (N, 4H)
        dc_prev = dc * f
        if peephole:
            dc_prev = dc_prev + p_f * dzf + (0.0 if coupled else p_i * dzi)
        return (matmul(dz, W_t, cd), dc_prev), dz

    def weight_grads(weights, saved, h_prev, dpx):
        dW = sum_outer(h_prev, dpx, cd)  # (H, G): one matmul over all T·N rows
        if not peephole:
            return (dW, None, None, None)
        gates, c_prev = saved  # (T, N, G), (T, N, H)
        i, f, g, _ = split(gates)
        if coupled:
            i = 1.0 - f
        dzi, dzf, _, dzo = split(dpx)
        c = f * c_prev + i * g  # (T, N, H)
        dp_i = None if coupled else _total(dzi * c_prev)
        return (dW, dp_i, _total(dzf * c_prev), _total(dzo * c))

    def bwd_weights(weights):
        return (weights[0].T, *weights[1:])  # (G, H) W transposed once

    return FusedSpec(weights, step, bwd_weights, step_bwd, weight_grads)
