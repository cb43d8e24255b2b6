r"""The step Jacobian of a structured cell, read off its ``pointwise``: the fast path of
`jacobian_norms`.

For a cell in the structured form (`rnnjax.cells.base.Structure`) with an element-wise
``pointwise``, step t maps the flat carry [s_0 = h, s_1, …] (S leaves of H units) to

.. math::  s'_a = \mathrm{pointwise}_a(s_0, s_1, …, hw_1, …, hw_K), \qquad hw_k = h W_k

and, unit by unit, every partial derivative of ``pointwise`` is a diagonal: with
D_{ab} = ∂s'_a/∂s_b (direct) and M_{ak} = ∂s'_a/∂hw_k, each an (H,) vector obtained by one
JVP of ``pointwise`` with a tangent of ones on one input block,

.. math::
    J_t = \begin{pmatrix} B_0 & \mathrm{diag}(D_{01}) & \cdots \\
                          B_1 & \mathrm{diag}(D_{11}) & \cdots \\ \vdots \end{pmatrix},
    \qquad B_a = \mathrm{diag}(D_{a0}) + \sum_k \mathrm{diag}(M_{ak})\, W_k^\top .

For the plain LSTM this is the textbook form: D_{11} = f, M_{1k} = (g i', c_{t-1} f', i g')
for k = (i, f, g), and B_0, B_1 the blocks ∂h_t/∂h_{t-1}, ∂c_t/∂h_{t-1}. Forming the B_a costs
O(K·H²) per example; stacked, [B_0; B_1; …] (S·H, H) is J's h column, and P J takes one
(n × S·H)·(S·H × H) GEMM (J Q one (S·H × H)·(H × n)) plus element-wise products for the
diagonal columns — for the LSTM 8H³ multiply-adds per step where pushing the N = 2H rows of
P through the VJP multiplies an (N, 4H) cotangent by Wᵀ: 16H³. The autodiff path of
`rnnjax.analysis.norms` is the reference (the tests check that both agree on every structured
cell).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array, Cell, matmul, split_blocks


class StepJacobian(NamedTuple):
    """J_t of one step as two products, ``left(P, scale) = P (s J_t)`` and
    ``right(Q, scale) = (s J_t) Q`` ((N, N)), with s = scale[0]·scale[1] applied factor by
    factor to J_t's entries: the power of two that keeps the accumulated product near 1 costs
    no pass over the (N, N) matrix (`rnnjax.analysis.norms`)."""

    left: Any
    right: Any


def supports(cell: Cell) -> bool:
    """Whether the structured form applies: a structure with an element-wise pointwise."""
    return cell.structure is not None and cell.structure.elementwise


def structured_linearisation(cell: Cell, params: Any, treedef: Any, S: int):
    """``(c_{t-1} (S·H,), px_t (G,)) -> (c_t, StepJacobian)`` for a structured cell."""
    s = cell.structure
    assert s is not None
    K = s.gates
    W = s.recurrent_weights(params)  # (H, K·H) or None
    # K x (H, H): W_kᵀ, transposed once here rather than at every step
    W_T = tuple(Wk.T for Wk in split_blocks(W, K)) if W is not None else ()
    up = tuple(s.unit_params(params))

    def new_leaves(leaves, hw, px):
        carry = jax.tree.unflatten(treedef, list(leaves))
        new, _ = s.pointwise(up, carry, px, hw if W is not None else None)
        return tuple(jax.tree.leaves(new))

    def linearise(c_prev: Array, px_t: Array) -> tuple[Array, StepJacobian]:
        leaves = tuple(jnp.split(c_prev, S)) if S > 1 else (c_prev,)  # S x (H,)
        px = split_blocks(px_t, K)  # K x (H,)
        hw = split_blocks(matmul(leaves[0], W, s.compute_dtype), K) if W is not None else ()

        def f(leaves, hw):
            return new_leaves(leaves, hw, px)

        out = f(leaves, hw)
        ones, zeros = jnp.ones_like(leaves[0]), jnp.zeros_like(leaves[0])

        def tangent(which: int):  # a tangent of ones on input block `which`
            t_leaves = tuple(ones if b == which else zeros for b in range(S))
            t_hw = tuple(ones if S + k == which else zeros for k in range(len(hw)))
            return jax.jvp(f, (leaves, hw), (t_leaves, t_hw))[1]  # S x (H,)

        diag = [tangent(b) for b in range(S + len(hw))]  # [input block][output leaf] -> (H,)
        D = [[diag[b][a] for b in range(S)] for a in range(S)]  # D[a][b] = ∂s'_a/∂s_b
        # B_a (H, H), row u, column j = ∂s'_a[u]/∂h[j]; stacked over a: the h column of J_t
        blocks = [
            jnp.diag(D[a][0]) + sum(diag[S + k][a][:, None] * WkT for k, WkT in enumerate(W_T))
            for a in range(S)
        ]
        B_col = jnp.concatenate(blocks, axis=0)  # (S·H, H)

        def scaled(scale):  # s·B_col (S·H, H) and s·D[a][b] (H,): fused where J_t is formed
            B = B_col * scale[0] * scale[1]
            return B, [[d * scale[0] * scale[1] for d in row] for row in D]

        def left(P, scale):  # P (s J): (n, S·H), the h columns in one GEMM
            B, Ds = scaled(scale)
            Ps = jnp.split(P, S, axis=1) if S > 1 else [P]
            rest = [sum(Ps[a] * Ds[a][b][None, :] for a in range(S)) for b in range(1, S)]
            return jnp.concatenate([P @ B, *rest], axis=1)

        def right(Q, scale):  # (s J) Q: (S·H, n), the h rows of Q through J's h column
            B, Ds = scaled(scale)
            Qs = jnp.split(Q, S, axis=0) if S > 1 else [Q]
            first = B @ Qs[0]  # (S·H, n)
            firsts = jnp.split(first, S, axis=0) if S > 1 else [first]
            rows = [
                firsts[a] + sum(Ds[a][b][:, None] * Qs[b] for b in range(1, S)) for a in range(S)
            ]
            return jnp.concatenate(rows, axis=0)

        return jnp.concatenate(out), StepJacobian(left, right)

    return linearise
