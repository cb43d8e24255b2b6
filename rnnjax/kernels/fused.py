r"""The ``"fused"`` backend: one `jax.custom_vjp` over the whole time loop, derived from the cell.

Autodiff of ``backend="scan"`` stores every intermediate of every step and, in the backward
loop, adds a small ``h_{t-1}ᵀ dg_t`` weight-gradient matmul per step. The fused backend does
what cuDNN does (Appleyard et al. 2016), for ANY cell in the structured form
(`rnnjax.cells.base.Structure`), with no cell-specific code:

- forward: one `lax.scan` whose step is one fused matmul ``hw_t = h_{t-1} W`` (all gates at
  once; the input side ``x_t U + b`` is already hoisted by the driver) and the cell's own
  ``pointwise``; it saves only what the backward needs to recompute ``pointwise``: for each
  *tied* gate block (px_k and hw_k enter only as their sum) the sum z_k = px_k + hw_k, for the
  others px_k and hw_k, and the carry leaves other than h; h_{t-1} is the previous output,
  kept only where ``pointwise`` reads h itself (the GRU) — elsewhere (the LSTM, the Simple
  RNN) the backward recomputes each h_t, which the step's VJP evaluates anyway (`reads_h`);
- backward: one reverse `lax.scan` that carries the carry's cotangent and, per step, runs the
  VJP of ``pointwise`` (recomputing the element-wise part from what the forward saved) and
  ``dh_{t-1} += dhw_t Wᵀ``; the per-unit parameters' gradients are summed in the loop carry;
- after the loop, the recurrent weight gradient is ONE large matmul over all T·N rows,
  ``dW = Σ_t h_{t-1}ᵀ dhw_t``, and the input-side ``dU = Σ_t x_tᵀ d px_t`` is one matmul by
  autodiff of the driver's hoisted projection (this backend returns d px).

The readable reference is the cell's ``recur`` (defined from the same ``pointwise``) under
`rnnjax.kernels.scan`; the tests check outputs, final carry and every gradient against it, for
the library's cells and for a cell defined in a test file.

Lengths freeze the carry and zero the output at t >= length. ``remat=True`` is refused (the
fused loop already stores only the gate pre-activations and carries; ``backend="scan"`` with
``remat=True`` stores carries only; with ``unroll(..., chunk=k, remat=True)`` the driver
checkpoints whole chunks around this backend). Memory per step: N·(G + S·H) numbers for tied gates
(an LSTM saves z (N, 4H) and c_{t-1} (N, H)), plus N·H per untied block (the GRU's candidate),
plus the output where h is kept. Inside ``unroll(..., chunk=k)``'s scan the kept outputs
would be a second copy of the stacked outputs (the scan stacks residuals apart from outputs),
which is why the LSTM's are not kept.

References:
    Appleyard, Kočiský & Blunsom, "Optimizing performance of recurrent neural networks on
    GPUs", 2016.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array, Cell, Structure, matmul, pointwise_inputs, split_blocks
from rnnjax.kernels.base import YES, Backend, Problem, Support, no, structured

Leaves = tuple[Array, ...]  # the carry's leaves, each (N, H); h first


def sum_outer(a: Array, b: Array, compute_dtype: Any = None) -> Array:
    """``Σ_{t,n} a[t, n]ᵀ b[t, n]``: one (K, T·N) × (T·N, M) matmul, no explicit transpose.

    Args:
        a: (T, N, K), e.g. the previous states h_{t-1}.
        b: (T, N, M), e.g. the gate gradients dg_t.
        compute_dtype: optional low-precision operand dtype.

    Returns:
        (K, M) of dtype ``jnp.result_type(a, b)``.
    """
    out = jnp.result_type(a, b)
    if compute_dtype is not None:
        a, b = a.astype(compute_dtype), b.astype(compute_dtype)
    dims = (((0, 1), (0, 1)), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=out)


# ---------------------------------------------------------------------------------------------
# What the forward saves per step, and how the backward rebuilds pointwise's inputs from it
# ---------------------------------------------------------------------------------------------


def _pack(s: Structure, px_b, hw_b, others: Leaves) -> Array:
    """What one step saves, as ONE (N, ·) array (one buffer write per step in the loop).

    From `pointwise_inputs`' blocks (the arrays the step itself uses): z_k = px_k + hw_k for the
    tied gate blocks, then px_k and hw_k for the untied ones, then the carry leaves other than h.
    """
    if hw_b is None:
        parts = list(px_b)
    else:
        K = len(px_b)
        parts = [px_b[k] for k in range(K) if s.tied[k]]
        parts += [px_b[k] for k in range(K) if not s.tied[k]]
        parts += [hw_b[k] for k in range(K) if not s.tied[k]]
    return jnp.concatenate([*parts, *others], axis=-1)


def _unpack(s: Structure, packed: Array, has_w: bool, H: int, widths: tuple[int, ...]):
    """`_pack`'s inverse: pointwise's (px, hw) blocks (tied: (z_k, 0)) and the other leaves."""
    G = s.gates * H
    n_untied = 0 if not has_w else sum(not t for t in s.tied)
    cuts = [G + n_untied * H]
    for w in widths:
        cuts.append(cuts[-1] + w)
    gates, *others = jnp.split(packed, cuts[:-1], axis=-1)
    if not has_w:
        return split_blocks(gates, s.gates), None, tuple(others)
    blocks = iter(split_blocks(gates, s.gates + n_untied))
    tied = {k: next(blocks) for k in range(s.gates) if s.tied[k]}
    untied_px = {k: next(blocks) for k in range(s.gates) if not s.tied[k]}
    untied_hw = {k: next(blocks) for k in range(s.gates) if not s.tied[k]}
    px = tuple(tied[k] if s.tied[k] else untied_px[k] for k in range(s.gates))
    hw = tuple(jnp.zeros_like(tied[k]) if s.tied[k] else untied_hw[k] for k in range(s.gates))
    return px, hw, tuple(others)


def _pointwise_flat(s: Structure, treedef):
    """pointwise on flat carry leaves: ``(up, leaves, px, hw) -> (new_leaves, y)``."""

    def run(up, leaves, px, hw):
        new, y = s.pointwise(up, jax.tree.unflatten(treedef, list(leaves)), px, hw)
        return tuple(jax.tree.leaves(new)), y

    return run


# ---------------------------------------------------------------------------------------------
# The loop, forward and backward
# ---------------------------------------------------------------------------------------------


def forward_loop(
    s: Structure, treedef, unroll: int, W, up, px, leaves: Leaves, lengths, save: bool
):
    """Runs the forward loop; returns (final leaves, ys (T, N, H), saved (T, N, ·) or None)."""
    pointwise = _pointwise_flat(s, treedef)

    def body(leaves, inputs):
        px_t, t = inputs  # (N, G), ()
        hw_t = None if W is None else matmul(leaves[0], W, s.compute_dtype)  # (N, G)
        px_b, hw_b = pointwise_inputs(s, px_t, hw_t)  # K x (N, H) each
        new, y = pointwise(up, leaves, px_b, hw_b)
        if lengths is not None:
            valid = (t < lengths)[:, None]  # (N, 1)
            new = tuple(jnp.where(valid, n, o) for n, o in zip(new, leaves, strict=True))
            y = jnp.where(valid, y, jnp.zeros_like(y))
        saved = _pack(s, px_b, hw_b, leaves[1:]) if save else None
        return new, (y, saved)

    steps = jnp.arange(px.shape[0])  # (T,)
    final, (ys, saved) = jax.lax.scan(body, leaves, (px, steps), unroll=unroll)
    return final, ys, saved


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def fused_loop(s: Structure, treedef, unroll: int, W, up, px, leaves: Leaves, lengths):
    """The whole time loop as one differentiable op: ``(final_leaves, ys)``.

    Args:
        s: the cell's `Structure`.
        treedef: the carry's tree structure.
        unroll: loop steps per iteration (forward and backward).
        W: ``s.recurrent_weights(params)`` (H, K·H), or None.
        up: ``s.unit_params(params)``, a tuple of (H,) vectors.
        px: (T, N, G) projected inputs.
        leaves: the initial carry's leaves, each (N, H), h first.
        lengths: None or int (N,).
    """
    final, ys, _ = forward_loop(s, treedef, unroll, W, up, px, leaves, lengths, save=False)
    return final, ys


def reads_h(s: Structure, treedef, up, leaves: Leaves, px: Array, has_w: bool) -> bool:
    """Whether ``pointwise`` reads h_{t-1} itself, not only through hw = h_{t-1} W.

    The GRU's does (h_t = (1 − z) n + z h_{t−1}), the LSTM's and the Simple RNN's do not: for
    those the backward loop recomputes each step's h_t (the step's VJP evaluates the step
    anyway) instead of keeping the outputs as h_{t-1}. Read off the traced ``pointwise``:
    conservative, any use of h counts.
    """
    pointwise = _pointwise_flat(s, treedef)
    px_b = split_blocks(px[0], s.gates)  # K x (N, H)

    def step(h):
        return pointwise(up, (h, *leaves[1:]), px_b, px_b if has_w else None)  # hw: any (N, H)

    jaxpr = jax.make_jaxpr(step)(leaves[0]).jaxpr
    h = jaxpr.invars[0]
    return any(h is v for eqn in jaxpr.eqns for v in eqn.invars) or any(
        h is v for v in jaxpr.outvars
    )


def _fused_fwd(s, treedef, unroll, W, up, px, leaves, lengths):
    final, ys, saved = forward_loop(s, treedef, unroll, W, up, px, leaves, lengths, save=True)
    # the outputs as h_{t-1} only where pointwise reads h: an extra (T, N, H) residual when
    # the loop runs chunk by chunk inside a scan (`unroll(..., chunk=k)`), whose stacked
    # residuals are a copy of its stacked outputs
    kept = ys if reads_h(s, treedef, up, leaves, px, W is not None) else None
    return (final, ys), (W, up, saved, kept, leaves[0], lengths)


def _fused_bwd(s, treedef, unroll, residuals, cotangents):
    W, up, saved, ys, h0, lengths = residuals
    dfinal, dys = cotangents  # tuple of (N, H); (T, N, H)
    widths = tuple(d.shape[-1] for d in dfinal[1:])  # the carry leaves after h
    pointwise = _pointwise_flat(s, treedef)
    has_w = W is not None
    # h_{t-1} for every t. With lengths the valid steps are a prefix, so wherever the step is
    # valid its previous state is the previous output (elsewhere the gradient is masked).
    # Without the outputs (pointwise does not read h) the loop feeds zeros for h_{t-1} and
    # writes each step's recomputed h_t where step t+1 reads it, into a buffer carried in
    # place.
    T = dys.shape[0]
    h_prev = None if ys is None else jnp.concatenate([h0[None], ys[:-1]], axis=0)  # (T, N, H)
    no_h = jnp.zeros_like(h0)  # (N, H)
    recomputed = None if ys is not None else jnp.zeros((T, *h0.shape), h0.dtype).at[0].set(h0)
    W_t = W.T if has_w else None  # (K·H, H), transposed once outside the loop
    # The per-unit parameters' gradients are summed over the batch once, after the loop: the
    # step's VJP runs per row (vmap), so its d up is (N, H) and the loop only adds it up.
    N = h0.shape[0]
    up_rows = tuple(jnp.broadcast_to(u, (N, *u.shape)) for u in up)  # (N, H) each
    zeros_up = jax.tree.map(jnp.zeros_like, up_rows)
    pointwise_rows = jax.vmap(pointwise)

    def body(acc, inputs):
        dleaves, dup, recomputed = acc
        saved_t, h_prev_t, dy_t, t = inputs
        px_b, hw_b, others_t = _unpack(s, saved_t, has_w, h0.shape[-1], widths)
        prev = (no_h if h_prev_t is None else h_prev_t, *others_t)
        cot = (dleaves, dy_t)
        if lengths is not None:
            valid = (t < lengths)[:, None]  # (N, 1)
            cot = jax.tree.map(lambda d: jnp.where(valid, d, jnp.zeros_like(d)), cot)
        (_, h_t), vjp = jax.vjp(pointwise_rows, up_rows, prev, px_b, hw_b)
        dup_t, dprev, dpx_b, dhw_b = vjp(cot)
        dprev = list(dprev)
        if W_t is not None:
            dhw_t = jnp.concatenate(dhw_b, axis=-1) if s.gates > 1 else dhw_b[0]  # (N, G)
            dprev[0] = dprev[0] + matmul(dhw_t, W_t, s.compute_dtype)  # dhw Wᵀ
        if lengths is not None:  # past the length the carry's cotangent passes unchanged
            dprev = [jnp.where(valid, d, o) for d, o in zip(dprev, dleaves, strict=True)]
        dpx_t = jnp.concatenate(dpx_b, axis=-1) if s.gates > 1 else dpx_b[0]  # (N, G)
        untied = tuple(dhw_b[k] for k in range(s.gates) if has_w and not s.tied[k])
        dup = jax.tree.map(jnp.add, dup, dup_t)
        if recomputed is not None:  # h_t is step t+1's h_{t-1}; the last step's is unused
            at = jnp.minimum(t + 1, T - 1)
            kept = jax.lax.dynamic_index_in_dim(recomputed, at, axis=0, keepdims=False)
            h_next = jnp.where(t + 1 < T, h_t, kept)  # (N, H)
            recomputed = jax.lax.dynamic_update_index_in_dim(recomputed, h_next, at, axis=0)
        return (tuple(dprev), dup, recomputed), (dpx_t, untied)

    steps = jnp.arange(T)  # (T,)
    (dleaves0, dup, recomputed), (dpx, dhw_untied) = jax.lax.scan(
        body,
        (tuple(dfinal), zeros_up, recomputed),
        (saved, h_prev, dys, steps),
        reverse=True,
        unroll=unroll,
    )  # dpx: (T, N, G)
    h_prev = recomputed if h_prev is None else h_prev  # (T, N, H)
    assert h_prev is not None
    dW = None
    if has_w:
        # dhw = dpx on the tied blocks; the untied blocks came out of the loop separately.
        blocks, j = [], 0
        for k, dpx_k in enumerate(split_blocks(dpx, s.gates)):
            if s.tied[k]:
                blocks.append(dpx_k)
            else:
                blocks.append(dhw_untied[j])
                j += 1
        dhw = jnp.concatenate(blocks, axis=-1) if s.gates > 1 else blocks[0]  # (T, N, G)
        dW = sum_outer(h_prev, dhw, s.compute_dtype).astype(W.dtype)  # (H, G): one matmul
    dup = tuple(d.sum(axis=0) for d in dup)  # (H,) each
    return dW, dup, dpx, dleaves0, None


fused_loop.defvjp(_fused_fwd, _fused_bwd)


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------


def supports(cell: Cell, problem: Problem) -> Support:
    """Any cell in the structured form, on any platform, without ``remat``."""
    ok = structured(cell, "fused", recurrent=False)
    if not ok:
        return ok
    if problem.remat:
        return no(
            "backend='fused' already stores only the gate pre-activations and the carries; "
            "remat=True (carries only) is backend='scan', or pass chunk= to unroll (the carry "
            "kept at chunk boundaries, each chunk recomputed)"
        )
    return YES


def fused_backend(cell, params, px, carry, lengths, *, unroll=1, remat=False):  # RunFn
    """Backend ``"fused"`` (signature of `rnnjax.kernels.base.RunFn`).

    Args:
        cell: any cell with a `rnnjax.cells.base.Structure`.
        params: its parameters.
        px: projected inputs, (T, *batch, G).
        carry: initial carry, leaves (*batch, H), h first.
        lengths: None or int (*batch,).
        unroll: loop steps per iteration, forward and backward.
        remat: must be False (see the module docstring).

    Returns:
        ``(final_carry, ys)`` with ys (T, *batch, H).
    """
    del remat  # refused by `supports`, which the driver consults first
    s = cell.structure
    assert s is not None, "backend='fused' needs a structured cell (see supports)"
    T, batch = px.shape[0], px.shape[1:-1]
    N = math.prod(batch)
    flat, treedef = jax.tree.flatten(carry)
    leaves = tuple(leaf.reshape(N, leaf.shape[-1]) for leaf in flat)  # (N, H) each
    flat_lengths = None if lengths is None else lengths.reshape(N)  # (N,)
    W, up = s.recurrent_weights(params), tuple(s.unit_params(params))
    final, ys = fused_loop(
        s, treedef, unroll, W, up, px.reshape(T, N, px.shape[-1]), leaves, flat_lengths
    )
    final = jax.tree.unflatten(treedef, [leaf.reshape(*batch, leaf.shape[-1]) for leaf in final])
    return final, ys.reshape(T, *batch, ys.shape[-1])


FUSED = Backend(
    "fused",
    fused_backend,
    supports,
    "custom_vjp over the whole loop, derived from the cell's pointwise; dW as one matmul",
)
