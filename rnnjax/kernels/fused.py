r"""The ``"fused"`` backend: one `jax.custom_vjp` over the whole time loop (portable XLA).

Autodiff of ``backend="scan"`` stores every intermediate of every step and, in the backward
loop, adds a small ``h_{t-1}ᵀ dg_t`` weight-gradient matmul per step. The fused backend does
what cuDNN does (Appleyard et al. 2016):

- forward: one `lax.scan` whose step is one fused gate matmul ``h_{t-1} W`` (all gates at once,
  the input side ``x_t U + b`` is already hoisted by the driver) plus element-wise gate maths;
  it saves only what the backward needs — the activated gates and the incoming cell state;
- backward: one reverse `lax.scan` that carries only (dh, dc) and computes ``dg_t Wᵀ`` per
  step, emitting the gate gradients dg_t (= d px_t);
- after the loop, the recurrent weight gradient is ONE large matmul over all T·B rows,
  ``dW = Σ_t h_{t-1}ᵀ dg_t``, and the input-side ``dU = Σ_t x_tᵀ dg_t`` is one matmul by
  autodiff of the driver's hoisted projection (this backend returns d px).

Each cell family (simple_rnn here, `fused_lstm`, `fused_gru`) supplies a `FusedSpec`: its
forward step, its hand-written backward step and its weight gradients. The readable reference
of every spec is the cell's own ``recur`` run by `rnnjax.kernels.scan.scan_backend`; the tests
(tests/test_backends.py) check outputs, final carry and gradients against it.

Lengths freeze the carry and zero the output at t >= length (as the scan backend); reversal
is done by the driver. ``remat`` is accepted and ignored: the fused backward already stores
only gates and cell states. A cell the backend does not implement raises a ValueError.

References:
    Appleyard, Kočiský & Blunsom, "Optimizing performance of recurrent neural networks on
    GPUs", 2016.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array, Cell, matmul

Carry = tuple[Array, ...]  # the carry's leaves, each (N, H): (h,) or (h, c)


class FusedSpec(NamedTuple):
    """How one cell family runs inside the fused loop (all arrays batch-flattened to N rows).

    Attributes:
        weights: ``params -> tuple`` of the arrays the recurrence reads (W, peepholes, ...;
            not U or b, which live in the hoisted projection).
        step: ``(weights, carry, px_t) -> (new_carry, y_t, saved_t)``; saved_t is what the
            backward step needs (a tuple of (N, ·) arrays).
        bwd_weights: ``weights -> tuple`` read by the backward step, computed once before the
            reverse loop (the transposed W: a transposed-operand matmul inside an XLA:CPU
            loop is ~1.4x slower than a plain one).
        step_bwd: ``(bwd_weights, saved_t, h_prev_t, y_t, dcarry) -> (dcarry_prev, dpx_t)``:
            the vector-Jacobian product of one step; ``dcarry`` already includes dy_t.
        weight_grads: ``(weights, saved, h_prev, dpx) -> dweights``: the weight gradients from
            the stacked (T, N, ·) residuals and gate gradients, after the loop.
    """

    weights: Callable[[Any], tuple]
    step: Callable[..., tuple[Carry, Array, tuple]]
    bwd_weights: Callable[[tuple], tuple]
    step_bwd: Callable[..., tuple[Carry, Array]]
    weight_grads: Callable[..., tuple]


def sum_outer(a: Array, b: Array, compute_dtype: Any = None) -> Array:
    """``Σ_{t,n} a[t, n]ᵀ b[t, n]``: one (K, T·N) × (T·N, M) matmul, no explicit transpose.

    Args:
        a: (T, N, K), e.g. the previous states h_{t-1}.
        b: (T, N, M), e.g. the gate gradients dg_t.
        compute_dtype: optional low-precision operand dtype (float32 accumulation).

    Returns:
        (K, M) float32.
    """
    if compute_dtype is not None:
        a, b = a.astype(compute_dtype), b.astype(compute_dtype)
    dims = (((0, 1), (0, 1)), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


# ---------------------------------------------------------------------------------------------
# The loop, forward and backward, shared by every cell family
# ---------------------------------------------------------------------------------------------


def _masked(valid: Array, new: Carry, old: Carry) -> Carry:
    return tuple(jnp.where(valid, n, o) for n, o in zip(new, old, strict=True))


def _forward(spec: FusedSpec, unroll: int, weights, px, carry, lengths):
    """Runs the fused forward loop; returns (final_carry, ys (T, N, H), saved (T, N, ·))."""

    def body(carry, inputs):
        px_t, t = inputs  # (N, G), ()
        new, y, saved = spec.step(weights, carry, px_t)
        if lengths is not None:
            valid = (t < lengths)[:, None]  # (N, 1)
            new = _masked(valid, new, carry)
            y = jnp.where(valid, y, jnp.zeros_like(y))
        return new, (y, saved)

    steps = jnp.arange(px.shape[0])  # (T,)
    final, (ys, saved) = jax.lax.scan(body, carry, (px, steps), unroll=unroll)
    return final, ys, saved


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def fused_loop(spec: FusedSpec, unroll: int, weights, px, carry, lengths):
    """The whole time loop as one differentiable op: ``(final_carry, ys)``.

    Args:
        spec: the cell family's `FusedSpec`.
        unroll: loop steps per iteration (forward and backward).
        weights: ``spec.weights(params)``.
        px: (T, N, G) projected inputs.
        carry: tuple of (N, H) initial carry leaves.
        lengths: None or int (N,).
    """
    final, ys, _ = _forward(spec, unroll, weights, px, carry, lengths)
    return final, ys


def _fused_fwd(spec, unroll, weights, px, carry, lengths):
    final, ys, saved = _forward(spec, unroll, weights, px, carry, lengths)
    return (final, ys), (weights, saved, ys, carry[0], lengths)


def _fused_bwd(spec, unroll, residuals, cotangents):
    weights, saved, ys, h0, lengths = residuals
    dfinal, dys = cotangents  # tuple of (N, H); (T, N, H)
    # h_{t-1} for every t. With lengths the valid steps are a prefix, so wherever the step is
    # valid its previous state is the previous output (elsewhere the gradient is masked).
    h_prev = jnp.concatenate([h0[None], ys[:-1]], axis=0)  # (T, N, H)

    def body(dcarry, inputs):
        saved_t, h_prev_t, y_t, dy_t, t = inputs
        dnew = (dcarry[0] + dy_t, *dcarry[1:])  # y_t = h_t
        dprev, dpx_t = spec.step_bwd(weights_t, saved_t, h_prev_t, y_t, dnew)
        if lengths is not None:
            valid = (t < lengths)[:, None]  # (N, 1)
            dprev = _masked(valid, dprev, dcarry)
            dpx_t = jnp.where(valid, dpx_t, jnp.zeros_like(dpx_t))
        return dprev, dpx_t

    steps = jnp.arange(ys.shape[0])  # (T,)
    weights_t = spec.bwd_weights(weights)  # transposed once, outside the loop
    dcarry0, dpx = jax.lax.scan(
        body, tuple(dfinal), (saved, h_prev, ys, dys, steps), reverse=True, unroll=unroll
    )  # dpx: (T, N, G)
    dweights = spec.weight_grads(weights, saved, h_prev, dpx)
    return dweights, dpx, dcarry0, None


fused_loop.defvjp(_fused_fwd, _fused_bwd)


# ---------------------------------------------------------------------------------------------
# Simple RNN: h_t = σ(px_t + h_{t-1} W)
# ---------------------------------------------------------------------------------------------

# σ'(a) written with the output y = σ(a), so nothing but the outputs needs saving.
_DERIVATIVE_FROM_OUTPUT: dict[str, Callable[[Array], Array]] = {
    "tanh": lambda y: 1.0 - y * y,
    "sigmoid": lambda y: y * (1.0 - y),
    "relu": lambda y: (y > 0).astype(y.dtype),
    "identity": lambda y: jnp.ones_like(y),
}


def simple_rnn_spec(cell: Cell) -> FusedSpec:
    """The fused Simple RNN for the named activations of `rnnjax.cells.ACTIVATIONS`."""
    name = cell.config["activation"]
    if name not in _DERIVATIVE_FROM_OUTPUT:
        raise ValueError(
            f"the fused backend supports simple_rnn activations {tuple(_DERIVATIVE_FROM_OUTPUT)}"
            f", not activation={name!r}; use backend='scan'"
        )
    from rnnjax.cells.base import ACTIVATIONS

    act, derivative = ACTIVATIONS[name][0], _DERIVATIVE_FROM_OUTPUT[name]
    cd = cell.config["dtype"]

    def step(weights, carry, px_t):
        (W,), (h,) = weights, carry
        h_new = act(px_t + matmul(h, W, cd))  # (N, H)
        return (h_new,), h_new, ()

    def step_bwd(weights_t, saved_t, h_prev_t, y_t, dcarry):
        del saved_t, h_prev_t
        da = dcarry[0] * derivative(y_t)  # (N, H)
        return (matmul(da, weights_t[0], cd),), da

    def weight_grads(weights, saved, h_prev, dpx):
        return (sum_outer(h_prev, dpx, cd),)  # dW (H, H): one matmul

    return FusedSpec(lambda p: (p.W,), step, lambda w: (w[0].T,), step_bwd, weight_grads)


def spec_for(cell: Cell) -> FusedSpec:
    """The `FusedSpec` of ``cell``; ValueError for a cell family the backend does not run."""
    from rnnjax.kernels.fused_gru import gru_spec
    from rnnjax.kernels.fused_lstm import lstm_spec

    specs = {"simple_rnn": simple_rnn_spec, "lstm": lstm_spec, "gru": gru_spec}
    if cell.name not in specs:
        raise ValueError(
            f"backend='fused' supports the cells {tuple(specs)}, not the {cell.name!r} cell; "
            f"use backend='scan'"
        )
    return specs[cell.name](cell)


def supports(cell: Cell) -> bool:
    """Whether the fused backend runs ``cell``."""
    try:
        spec_for(cell)
    except ValueError:
        return False
    return True


def fused_backend(
    cell: Cell,
    params: Any,
    px: Array,
    carry: Any,
    lengths: Array | None,
    *,
    unroll: int = 1,
    remat: bool = False,
) -> tuple[Any, Array]:
    """Backend ``"fused"`` (signature of `rnnjax.kernels.scan.scan_backend`).

    Args:
        cell: a simple_rnn (named activation), lstm (any peephole / coupled variant) or gru
            (either ``reset_after``) cell.
        params: its parameters.
        px: projected inputs, (T, *batch, G).
        carry: initial carry, leaves (*batch, H).
        lengths: None or int (*batch,).
        unroll: loop steps per iteration, forward and backward.
        remat: ignored (the fused backward already saves only gates and cell states).

    Returns:
        ``(final_carry, ys)`` with ys (T, *batch, H).

    Raises:
        ValueError: for a cell the fused backend does not implement.
    """
    del remat
    spec = spec_for(cell)
    T, batch = px.shape[0], px.shape[1:-1]
    N = math.prod(batch)
    leaves = tuple(leaf.reshape(N, leaf.shape[-1]) for leaf in jax.tree.leaves(carry))  # (N, H)
    flat_lengths = None if lengths is None else lengths.reshape(N)  # (N,)
    final, ys = fused_loop(
        spec, unroll, spec.weights(params), px.reshape(T, N, px.shape[-1]), leaves, flat_lengths
    )
    final = jax.tree.unflatten(
        jax.tree.structure(carry), [leaf.reshape(*batch, leaf.shape[-1]) for leaf in final]
    )
    return final, ys.reshape(T, *batch, ys.shape[-1])
