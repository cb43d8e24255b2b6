"""The two Mosaic GPU kernels of the ``"pallas_mosaic_gpu"`` backend: forward and backward loop.

One CTA (thread block) per sequence runs that sequence's whole time loop: the grid is the
batch, ``(B,)``, and the CTAs never talk to each other. Inside a CTA, Pallas thread g (one
CUDA warpgroup, 128 lanes) owns hidden units ``g·L … (g+1)·L`` (L = 128 on a GPU), and lane u
of it owns unit u of *every* gate block, so the cell's ``pointwise`` (and its VJP) runs on
vectors of L units with no data movement between lanes. W is loaded once, before the loop:
its first R rows into registers (each lane holds R·K numbers: W[r, k·Hp + u]), the other
H − R rows into shared memory.

Forward, step t, thread g::

    hw_k[u] = Σ_i h_{t-1}[i] · W[i, k·Hp + u]       # K vectors (L,): rank-1 updates, FMA in
                                                     # float32, h_{t-1}[i] a scalar read of SMEM
    state   = pointwise(px_t[k, u], hw_k, state)     # the cell's own maths, on this thread's units
    store h_t[units] into the SMEM exchange slot t mod 2; arrive + wait on the step barrier

Backward, step t (reverse order), thread g, with Wᵀ laid out the same way::

    dpx_t, dhw_t, d_direct = vjp(pointwise)(d_state)  # this thread's units
    store dhw_t[k, units] into the SMEM exchange slot; arrive + wait on the step barrier
    dh_{t-1}[u] = d_direct.h[u] + Σ_k Σ_n dhw_t[k, n] · W[u, k·Hp + n]

The exchange buffer has two slots, so one barrier per step suffices: the slot written at step
t was last read at step t − 2, and every thread passed step t − 1's barrier after that read.
With H ≤ 128 there is one thread and the barrier is a formality. Lengths are a per-CTA trip
count: the loop runs ``lengths[b]`` steps, then writes the frozen state (forward) or passes the
cotangent through (backward) for the remaining steps.

The cell's ``pointwise`` and its VJP are traced once and evaluated block by block
(`blockwise`): the cells activate their gate blocks as one concatenated array (one pass for
XLA), and Mosaic GPU cannot concatenate register arrays, nor does it lower ``add_any``.

Matmul precision: the rank-1 updates are float32 FMAs on CUDA cores (IEEE float32, not TF32),
with h (or dhw) rounded to the compute dtype first when there is one. The tensor cores (wgmma)
are not used: at B = 1 they would pad the batch to 64 rows, and float32 wgmma needs a
transposed B operand, which the Mosaic GPU interpreter of JAX 0.10 does not model.

`forward_call` and `backward_call` take the arrays of the persistent kernels' shared contract
(`rnnjax.kernels.pallas.KernelPair`: the dense W (Hp, K·Hp), each carry leaf's sequence
apart) and lay them out for these kernels: W and Wᵀ as (K, H, Hp), the carry leaves stacked
with their initial values as seq (S, T + 1, B, Hp).

References:
    Diamos et al., "Persistent RNNs: stashing recurrent weights on-chip", ICML 2016.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from rnnjax.kernels.pallas_kernels import Family

Array = jax.Array
f32 = jnp.float32


# ---------------------------------------------------------------------------------------------
# Tracing a cell's pointwise block by block (Mosaic GPU cannot concatenate register arrays).
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Blocks:
    """A 1-D value held as its blocks (a concatenate that was never materialised)."""

    parts: tuple

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(p.shape[-1] for p in self.parts)


def _as_blocks(x: Any, sizes: tuple[int, ...]) -> Any:
    """``x`` cut like a `_Blocks` of ``sizes`` (scalars stay whole: they broadcast)."""
    if isinstance(x, _Blocks):
        if x.sizes != sizes:
            raise NotImplementedError(f"blocks {x.sizes} meet blocks {sizes}")
        return x.parts
    if jnp.ndim(x) == 0:
        return (x,) * len(sizes)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    return tuple(
        jax.lax.slice_in_dim(x, o, o + n, axis=-1) for o, n in zip(offsets, sizes, strict=True)
    )


def _concatenated(x: Any) -> Any:
    return jnp.concatenate(x.parts, axis=-1) if isinstance(x, _Blocks) else x


def _split(x: _Blocks, sizes: tuple[int, ...]) -> list:
    """``x`` split into pieces of ``sizes``; each piece a block or a run of blocks."""
    out, parts = [], list(x.parts)
    for n in sizes:
        run: list = []
        while sum(p.shape[-1] for p in run) < n:
            run.append(parts.pop(0))
        if sum(p.shape[-1] for p in run) != n:
            raise NotImplementedError(f"split {sizes} across blocks {x.sizes}")
        out.append(run[0] if len(run) == 1 else _Blocks(tuple(run)))
    return out


def _eval_blockwise(jaxpr, consts, *args) -> list:
    """Evaluates ``jaxpr`` with every concatenate kept as its blocks, element-wise maths
    applied per block and ``add_any`` bound as ``add`` (what Mosaic GPU lowers)."""
    from jax.extend import core as jex_core

    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts, strict=True):
        env[v] = x
    for v, x in zip(jaxpr.invars, args, strict=True):
        env[v] = x
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        prim, params = eqn.primitive, eqn.params
        blocks = [x for x in invals if isinstance(x, _Blocks)]
        if prim.name == "concatenate" and params["dimension"] == eqn.outvars[0].aval.ndim - 1:
            parts = [p for x in invals for p in (x.parts if isinstance(x, _Blocks) else (x,))]
            outs: Any = [_Blocks(tuple(parts))]
        elif prim.name == "split" and blocks and params["axis"] == invals[0].parts[0].ndim - 1:
            outs = _split(invals[0], tuple(int(n) for n in params["sizes"]))
        elif prim.name == "add_any":
            outs = [_eval_elementwise(jax.lax.add_p, {}, invals)]
        elif (
            blocks
            and all(
                v.aval.ndim == 0 or v.aval.shape == eqn.outvars[0].aval.shape for v in eqn.invars
            )
            and not prim.multiple_results
        ):
            outs = [_eval_elementwise(prim, params, invals)]
        elif "jaxpr" in params and prim.name in ("pjit", "jit", "closed_call"):
            inner = params["jaxpr"]
            outs = _eval_blockwise(inner.jaxpr, inner.consts, *invals)
        else:
            invals = [_concatenated(x) for x in invals]
            outs = prim.bind(*invals, **params)
            outs = outs if prim.multiple_results else [outs]
        for v, x in zip(eqn.outvars, outs, strict=True):
            env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _eval_elementwise(prim, params: dict, invals: list) -> Any:
    blocks = [x for x in invals if isinstance(x, _Blocks)]
    if not blocks:
        return prim.bind(*invals, **params)
    sizes = blocks[0].sizes
    cut = [_as_blocks(x, sizes) for x in invals]
    return _Blocks(tuple(prim.bind(*ins, **params) for ins in zip(*cut, strict=True)))


def blockwise(fn: Callable) -> Callable:
    """``fn`` (arrays in, a pytree of arrays out) traced once and evaluated with its
    concatenates kept as blocks (`_eval_blockwise`): the same values, in the operations the
    Mosaic GPU lowering has. The cells' ``pointwise`` activate their gate blocks as one
    concatenated array (`rnnjax.cells.base.activate_blocks`, one pass for XLA)."""

    def wrapped(*args):
        closed, out_tree = jax.make_jaxpr(fn, return_shape=True)(*args)
        flat = jax.tree.leaves(args)
        outs = _eval_blockwise(closed.jaxpr, closed.consts, *flat)
        return jax.tree.unflatten(jax.tree.structure(out_tree), map(_concatenated, outs))

    return wrapped


@dataclasses.dataclass(frozen=True)
class GpuPlan:
    """Static geometry of the Mosaic GPU kernels (see `rnnjax.kernels.pallas_mosaic_gpu`).

    Attributes:
        family: the cell arithmetic (`rnnjax.kernels.pallas_kernels.Family`).
        T, B, H: time steps, batch (= CTAs), real hidden size.
        Hp: H rounded up to a multiple of ``lanes``.
        lanes: L, hidden units per Pallas thread (a warpgroup: 128 on a GPU).
        register_rows: R, rows of W (Wᵀ in the backward) held in registers; the other H − R
            rows are in shared memory.
        compute_dtype: dtype of W's copy and of the matmul operands; None = float32.
        interpret: None on a GPU, else the `InterpretGPUParams` of the Mosaic GPU interpreter.
    """

    family: Family
    T: int
    B: int
    H: int
    Hp: int
    lanes: int
    register_rows: int
    compute_dtype: Any
    interpret: Any

    @property
    def Bp(self) -> int:
        """The batch the shared layout pads to (`rnnjax.kernels.pallas.make_persistent_backend`):
        B itself, one CTA per sequence needs no batch blocks."""
        return self.B

    @property
    def threads(self) -> int:
        return self.Hp // self.lanes

    @property
    def weight_dtype(self) -> Any:
        return self.compute_dtype or f32


def _sync(barrier) -> None:
    """Every thread's stores before this point are visible to every thread after it."""
    plgpu.barrier_arrive(barrier)
    plgpu.barrier_wait(barrier)


def _gate_cols(plan: GpuPlan, k: int, g) -> Any:
    return pl.ds(k * plan.Hp + g * plan.lanes, plan.lanes)


def _operand(plan: GpuPlan, x: Array) -> Array:
    """A matmul operand rounded to the compute dtype and computed with in float32."""
    if plan.compute_dtype is None:
        return x.astype(f32)
    return x.astype(plan.compute_dtype).astype(f32)


def _load_weights(plan: GpuPlan, w_ref, w_smem, loaded, units) -> list[list[Array]]:
    """Starts the copy of this thread's columns of rows R… of ``w_ref`` (K, H, Hp) to SMEM
    (arriving on ``loaded``); returns its rows < R as values, [r][k] -> (L,)."""
    R, K = plan.register_rows, plan.family.gates
    rows = pl.ds(R, plan.H - R)
    plgpu.copy_gmem_to_smem(w_ref.at[:, rows, units], w_smem.at[:, :, units], loaded)
    return [[_operand(plan, w_ref[k, r, units]) for k in range(K)] for r in range(R)]


def _contract(
    plan: GpuPlan,
    x: Callable[[int, Any], Array],
    w_regs: list[list[Array]],
    w_smem,
    units,
    sum_gates: bool,
) -> list[Array]:
    """Σ_i x(k, i) · W_k[i, units] by rank-1 updates over the H rows i, for every gate k.

    ``x(k, i)`` is a scalar read of the exchange buffer; W_k[i, units] comes from registers
    (i < R) or SMEM (``w_smem`` (K, H − R, Hp), row i − R). Returns K vectors (L,), or their
    sum (one vector) when ``sum_gates``. The first SMEM row starts the sums so that every
    partial sum has the layout of a vector read from memory (a loop carry must keep it).
    """
    K, R = plan.family.gates, plan.register_rows

    def row(i, acc, w_row):  # w_row[k]: (L,)
        terms = [_operand(plan, x(k, i)) * w_row[k] for k in range(K)]
        if sum_gates:
            terms = [functools.reduce(jnp.add, terms)]
        return terms if acc is None else [a + d for a, d in zip(acc, terms, strict=True)]

    def smem_row(i):
        return [_operand(plan, w_smem[k, i - R, units]) for k in range(K)]

    acc = row(R, None, smem_row(R))  # K or 1 x (L,)
    for r in range(R):
        acc = row(r, acc, w_regs[r])
    return jax.lax.fori_loop(R + 1, plan.H, lambda i, a: row(i, a, smem_row(i)), acc)


def forward_kernel(*refs, plan: GpuPlan, save: bool) -> None:
    """One sequence (CTA b), units of thread g: the forward loop (see the module docstring).

    Refs: px (T, B, K·Hp), w (K, H, Hp), s0 (S, B, Hp), pv (max(P, 1), Hp), lengths (B,);
    out seq (S, T + 1, B, Hp) (the carry before step 0 and after every step, frozen past the
    length), and if ``save`` hw (T, B, K·Hp) (zero past the length); scratch w_smem
    (K, H − R, Hp), h_smem (2, Hp), barriers ``loaded`` (one per thread) and ``written``.
    """
    fam, T, L = plan.family, plan.T, plan.lanes
    K, S, P = fam.gates, fam.states, fam.n_params
    px_ref, w_ref, s0_ref, pv_ref, len_ref, seq_ref, *rest = refs
    hw_ref: Any = rest.pop(0) if save else None
    w_smem, h_smem, loaded, written = rest
    b, g = jax.lax.axis_index("b"), jax.lax.axis_index("thread")
    units = pl.ds(g * L, L)

    w_regs = _load_weights(plan, w_ref, w_smem, loaded.at[g], units)
    pv = [pv_ref[p, units] for p in range(P)]  # P x (L,)
    state = [s0_ref[s, b, units] for s in range(S)]  # S x (L,)
    for s in range(S):
        seq_ref[s, 0, b, units] = state[s]
    h_smem[1, units] = state[0]
    plgpu.barrier_wait(loaded.at[g])
    _sync(written)

    def step(t, state: list) -> list:
        src = jax.lax.rem(t + 1, 2)  # the slot of h_{t-1}
        hw = _contract(plan, lambda k, i: h_smem[src, i], w_regs, w_smem, units, False)
        px = [px_ref[t, b, _gate_cols(plan, k, g)] for k in range(K)]  # K x (L,)
        new = blockwise(fam.pointwise)(px, hw, state, pv)  # S x (L,)
        for s in range(S):
            seq_ref[s, t + 1, b, units] = new[s]
        if save:
            for k in range(K):
                hw_ref[t, b, _gate_cols(plan, k, g)] = hw[k]
        h_smem[jax.lax.rem(t, 2), units] = new[0]
        _sync(written)
        return new

    n = len_ref[b]
    state = jax.lax.fori_loop(0, n, step, state)

    def frozen(t, state: list) -> list:
        for s in range(S):
            seq_ref[s, t + 1, b, units] = state[s]
        if save:
            for k in range(K):
                hw_ref[t, b, _gate_cols(plan, k, g)] = jnp.zeros((L,), f32)
        return state

    jax.lax.fori_loop(n, T, frozen, state)


def _pointwise_vjp(fam: Family) -> Callable:
    """``(px, hw, prev, pv, cot) -> (dpx, dhw, dprev, dpv)``: the VJP of the cell's step."""

    def vjp(px, hw, prev, pv, cot):
        return jax.vjp(fam.pointwise, px, hw, prev, pv)[1](cot)

    return vjp


def backward_kernel(*refs, plan: GpuPlan) -> None:
    """One sequence (CTA b), units of thread g: the backward loop (see the module docstring).

    Refs: px, hw (T, B, K·Hp), seq (S, T + 1, B, Hp), pv (max(P, 1), Hp), wt (K, H, Hp) with
    wt[k, n, u] = W[u, k·Hp + n], lengths (B,), dhseq (T, B, Hp), dfinal (S, B, Hp); out dpx
    (T, B, K·Hp), dhw (same; absent when the family is tied: dhw = dpx), ds0 (S, B, Hp), dpv
    (max(P, 1), B, Hp) (per-sequence sums over time); scratch wt_smem (K, H − R, Hp), d_smem
    (2, K, Hp), barriers ``loaded`` and ``written``.
    """
    fam, T, L = plan.family, plan.T, plan.lanes
    K, S, P = fam.gates, fam.states, fam.n_params
    px_ref, hw_ref, seq_ref, pv_ref, wt_ref, len_ref, dhseq_ref, dfin_ref, *rest = refs
    dpx_ref = rest.pop(0)
    dhw_ref = dpx_ref if fam.tied else rest.pop(0)
    ds0_ref, dpv_ref, wt_smem, d_smem, loaded, written = rest
    b, g = jax.lax.axis_index("b"), jax.lax.axis_index("thread")
    units = pl.ds(g * L, L)

    wt_regs = _load_weights(plan, wt_ref, wt_smem, loaded.at[g], units)
    pv = [pv_ref[p, units] for p in range(P)]  # P x (L,)
    for p in range(max(P, 1)):
        dpv_ref[p, b, units] = jnp.zeros((L,), f32)
    cot = [dfin_ref[s, b, units] for s in range(S)]  # S x (L,)
    plgpu.barrier_wait(loaded.at[g])
    n = len_ref[b]

    def past_length(j, cot: list) -> list:
        t = T - 1 - j  # steps t >= length: the carry passes through, no gradient to px
        for k in range(K):
            dpx_ref[t, b, _gate_cols(plan, k, g)] = jnp.zeros((L,), f32)
            if not fam.tied:
                dhw_ref[t, b, _gate_cols(plan, k, g)] = jnp.zeros((L,), f32)
        return [cot[0] + dhseq_ref[t, b, units], *cot[1:]]

    cot = jax.lax.fori_loop(0, T - n, past_length, cot)

    def step(j, cot: list) -> list:
        t = n - 1 - j
        cot = [cot[0] + dhseq_ref[t, b, units], *cot[1:]]
        px = [px_ref[t, b, _gate_cols(plan, k, g)] for k in range(K)]  # K x (L,)
        hw = [hw_ref[t, b, _gate_cols(plan, k, g)] for k in range(K)]
        prev = [seq_ref[s, t, b, units] for s in range(S)]  # S x (L,)
        dpx, dhw, dprev, dpv_t = blockwise(_pointwise_vjp(fam))(px, hw, prev, pv, cot)
        if fam.tied:
            dhw = dpx
        slot = jax.lax.rem(j, 2)
        for k in range(K):
            dpx_ref[t, b, _gate_cols(plan, k, g)] = dpx[k]
            if not fam.tied:
                dhw_ref[t, b, _gate_cols(plan, k, g)] = dhw[k]
            d_smem[slot, k, units] = dhw[k]
        for p in range(P):
            dpv_ref[p, b, units] = dpv_ref[p, b, units] + dpv_t[p]
        _sync(written)
        (dh,) = _contract(plan, lambda k, i: d_smem[slot, k, i], wt_regs, wt_smem, units, True)
        return [dprev[0] + dh, *dprev[1:]]

    cot = jax.lax.fori_loop(0, n, step, cot)
    for s in range(S):
        ds0_ref[s, b, units] = cot[s]


def _scratch(plan: GpuPlan, exchange_shape: tuple[int, ...]) -> tuple:
    K, R, H, Hp = plan.family.gates, plan.register_rows, plan.H, plan.Hp
    return (
        plgpu.SMEM((K, H - R, Hp), plan.weight_dtype),  # W's rows R… (Wᵀ's in the backward)
        plgpu.SMEM(exchange_shape, f32),  # two slots of h (forward) or dhw (backward)
        plgpu.Barrier(num_barriers=plan.threads),  # thread g's weight copy has landed
        plgpu.Barrier(num_arrivals=plan.threads),  # every thread stored its step
    )


def _launch(plan: GpuPlan, body, out_type: list, scratch: tuple, name: str):
    return plgpu.kernel(
        body,
        out_shape=out_type,  # (out_type / scratch_types in newer jax; these names work in all)
        scratch_shapes=scratch,
        grid=(plan.B,),
        grid_names=("b",),
        num_threads=plan.threads,
        thread_name="thread",
        interpret=plan.interpret,
        kernel_name=name,
    )


def _kernel_weights(plan: GpuPlan, w: Array, *, transposed: bool) -> Array:
    """The dense W (Hp, K·Hp) as the kernels' w, or their wt, (K, H, Hp).

    w[k, i, u] = W[i, k·Hp + u] (the forward's rows) or wt[k, n, u] = W[u, k·Hp + n] (the
    backward's: Wᵀ laid out the same way); the padded rows i, n ≥ H are dropped.
    """
    K, H, Hp = plan.family.gates, plan.H, plan.Hp
    w3 = w.reshape(Hp, K, Hp)  # (Hp_i, K, Hp_u)
    return jnp.transpose(w3, (1, 2, 0) if transposed else (1, 0, 2))[:, :H]  # (K, H, Hp)


def forward_call(plan: GpuPlan, px, w, states0, pv, lengths, *, save: bool):
    """Runs the forward kernel; returns (hseq, finals, hw, state_seqs) (last two if save).

    Same contract as the Triton kernels' `rnnjax.kernels.pallas_kernels.forward_call`: px
    (T, B, K·Hp), w (Hp, K·Hp) dense, states0 S x (B, Hp), pv (max(P, 1), Hp), lengths (B,)
    -> hseq (T, B, Hp), finals S − 1 x (B, Hp), hw (T, B, K·Hp), state_seqs S − 1 x
    (T, B, Hp).
    """
    fam, T, B, Hp = plan.family, plan.T, plan.B, plan.Hp
    out_type = [jax.ShapeDtypeStruct((fam.states, T + 1, B, Hp), f32)]
    if save:
        out_type.append(jax.ShapeDtypeStruct((T, B, fam.gates * Hp), f32))
    body = functools.partial(forward_kernel, plan=plan, save=save)
    scratch = _scratch(plan, (2, Hp))
    lens = jnp.clip(lengths, 0, T)  # (B,): the kernel's trip counts
    wk = _kernel_weights(plan, w, transposed=False)  # (K, H, Hp)
    outs = _launch(plan, body, out_type, scratch, f"persistent_mgpu_{fam.name}_fwd")(
        px, wk, jnp.stack(states0), pv, lens
    )
    seq = outs[0]  # (S, T + 1, B, Hp): the carry before step 0 and after every step
    finals = list(seq[1:, -1])  # S − 1 x (B, Hp)
    if not save:
        return seq[0, 1:], finals, None, None
    return seq[0, 1:], finals, outs[1], list(seq[1:, 1:])


def backward_call(plan: GpuPlan, px, hw, hseq, state_seqs, states0, pv, w, lengths, dhseq, dfin):
    """Runs the backward kernel; returns (dpx, dhw, dstates0, dpv_rows).

    Same contract as the Triton kernels' `rnnjax.kernels.pallas_kernels.backward_call`: dpx,
    dhw (T, B, K·Hp), dstates0 S x (B, Hp), dpv_rows (max(P, 1), B, Hp) (per-sequence sums
    over time, summed over rows by the caller).
    """
    fam, T, B, Hp = plan.family, plan.T, plan.B, plan.Hp
    seq = jnp.stack(
        [
            jnp.concatenate([s0[None], x], axis=0)  # (T + 1, B, Hp)
            for s0, x in zip(states0, [hseq, *state_seqs], strict=True)
        ]
    )  # (S, T + 1, B, Hp)
    dfinal = jnp.stack([jnp.zeros_like(dhseq[0]), *dfin])  # (S, B, Hp); h's is in dhseq
    gseq = jax.ShapeDtypeStruct((T, B, fam.gates * Hp), f32)
    out_type = [gseq] + ([] if fam.tied else [gseq])
    out_type += [
        jax.ShapeDtypeStruct((fam.states, B, Hp), f32),
        jax.ShapeDtypeStruct((max(fam.n_params, 1), B, Hp), f32),
    ]
    body = functools.partial(backward_kernel, plan=plan)
    scratch = _scratch(plan, (2, fam.gates, Hp))
    lens = jnp.clip(lengths, 0, T)  # (B,)
    wt = _kernel_weights(plan, w, transposed=True)  # (K, H, Hp)
    outs = _launch(plan, body, out_type, scratch, f"persistent_mgpu_{fam.name}_bwd")(
        px, hw, seq, pv, wt, lens, dhseq, dfinal
    )
    dpx = outs[0]
    n = 1 if fam.tied else 2
    return dpx, (dpx if fam.tied else outs[1]), list(outs[n]), outs[n + 1]
