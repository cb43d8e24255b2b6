r"""The fused GRU step and its hand-written backward (both ``reset_after`` conventions).

Forward, gates (r, z, n), with a = h_{t-1} W (one fused (N, H) × (H, 3H) matmul)::

    r = σ(px_r + a_r),  z = σ(px_z + a_z)
    n = tanh(px_n + r ⊙ (a_n + b_hn))                 reset_after=True (PyTorch, cuDNN)
    n = tanh(px_n + (r ⊙ h_{t-1}) W_n)                reset_after=False (Cho et al. 2014)
    h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}

Saved per step: r, z, n and (reset_after) the recurrent candidate term a_n + b_hn. Backward of
one step with dh = dh_t + dy_t::

    dn = dh ⊙ (1 − z) ⊙ (1 − n²),   dz = dh ⊙ (h_{t-1} − n) ⊙ z(1 − z)
    reset_after:  dr = dn ⊙ (a_n + b_hn) ⊙ r(1 − r);  da = [dr, dz, dn ⊙ r]
                  dh_{t-1} = dh ⊙ z + da Wᵀ
    reset_before: d(rh) = dn W_nᵀ;  dr = d(rh) ⊙ h_{t-1} ⊙ r(1 − r)
                  dh_{t-1} = dh ⊙ z + d(rh) ⊙ r + [dr, dz] W_{rz}ᵀ
    d px_t = [dr, dz, dn]

After the loop: reset_after: dW = Σ_t h_{t-1}ᵀ da_t (one matmul), db_hn = Σ dn ⊙ r;
reset_before: dW_{rz} = Σ h_{t-1}ᵀ [dr, dz]_t and dW_n = Σ (r ⊙ h_{t-1})ᵀ dn_t (two matmuls,
their left operands differ). The readable reference is ``rj.gru``'s ``recur`` under
`rnnjax.kernels.scan.scan_backend`.

References:
    Cho et al. 2014; Appleyard et al. 2016 (the fused loop).
"""

from __future__ import annotations

import jax.numpy as jnp

from rnnjax.cells.base import Cell, matmul
from rnnjax.kernels.fused import FusedSpec, sum_outer
from rnnjax.kernels.fused_lstm import sigmoid


def gru_spec(cell: Cell) -> FusedSpec:
    """The fused GRU of ``cell`` (``rj.gru(..., reset_after, dtype)``)."""
    reset_after, cd = cell.config["reset_after"], cell.config["dtype"]
    H = cell.hidden_size

    def weights(params):
        if reset_after:
            return (params.W, params.b_hn[None])  # (H, 3H), (1, H)
        return (params.W[:, : 2 * H], params.W[:, 2 * H :])  # W_rz (H, 2H), W_n (H, H)

    def step(weights, carry, px_t):
        (h,) = carry  # (N, H)
        px_r, px_z, px_n = jnp.split(px_t, 3, axis=-1)  # (N, H) each
        if reset_after:
            W, b_hn = weights
            a_r, a_z, a_n = jnp.split(matmul(h, W, cd), 3, axis=-1)  # (N, H) each
            r = sigmoid(px_r + a_r)
            z = sigmoid(px_z + a_z)
            hn = a_n + b_hn  # (N, H)
            n = jnp.tanh(px_n + r * hn)
            saved = jnp.concatenate([r, z, n, hn], axis=-1)  # (N, 4H)
        else:
            W_rz, W_n = weights
            a_r, a_z = jnp.split(matmul(h, W_rz, cd), 2, axis=-1)  # (N, H) each
            r = sigmoid(px_r + a_r)
            z = sigmoid(px_z + a_z)
            n = jnp.tanh(px_n + matmul(r * h, W_n, cd))
            saved = jnp.concatenate([r, z, n], axis=-1)  # (N, 3H)
        h_new = (1.0 - z) * n + z * h  # (N, H)
        return (h_new,), h_new, (saved,)

    def step_bwd(weights_t, saved_t, h_prev, y_t, dcarry):
        del y_t
        (saved,), (dh,) = saved_t, dcarry
        r, z, n = (saved[..., k * H : (k + 1) * H] for k in range(3))  # (N, H) each
        dn = dh * (1.0 - z) * (1.0 - n * n)  # at the pre-activation of n
        dz = dh * (h_prev - n) * z * (1.0 - z)
        dh_prev = dh * z
        if reset_after:
            hn = saved[..., 3 * H :]
            dr = dn * hn * r * (1.0 - r)
            da = jnp.concatenate([dr, dz, dn * r], axis=-1)  # (N, 3H)
            dh_prev = dh_prev + matmul(da, weights_t[0], cd)  # da Wᵀ
        else:
            W_rz_t, W_n_t = weights_t
            drh = matmul(dn, W_n_t, cd)  # (N, H)
            dr = drh * h_prev * r * (1.0 - r)
            drz = jnp.concatenate([dr, dz], axis=-1)  # (N, 2H)
            dh_prev = dh_prev + drh * r + matmul(drz, W_rz_t, cd)
        return (dh_prev,), jnp.concatenate([dr, dz, dn], axis=-1)

    def weight_grads(weights, saved_all, h_prev, dpx):
        (saved,) = saved_all  # (T, N, 4H) or (T, N, 3H)
        r = saved[..., :H]  # (T, N, H)
        dn = dpx[..., 2 * H :]  # (T, N, H)
        if reset_after:
            da = jnp.concatenate([dpx[..., : 2 * H], dn * r], axis=-1)  # (T, N, 3H)
            db_hn = jnp.sum(dn * r, axis=0).sum(axis=0, keepdims=True)  # (1, H)
            return (sum_outer(h_prev, da, cd), db_hn)  # dW (H, 3H): one matmul
        dW_rz = sum_outer(h_prev, dpx[..., : 2 * H], cd)  # (H, 2H)
        dW_n = sum_outer(r * h_prev, dn, cd)  # (H, H)
        return (dW_rz, dW_n)

    def bwd_weights(weights):
        return (weights[0].T,) if reset_after else (weights[0].T, weights[1].T)

    return FusedSpec(weights, step, bwd_weights, step_bwd, weight_grads)
