"""The ``"pallas_tpu"`` backend: the persistent RNN kernel on Pallas's Mosaic TPU lowering.

A TensorCore runs a Pallas grid in order, one grid step after another, so the persistent
design (Diamos et al. 2016) needs no barrier there. The grid is (batch blocks, time chunks):

- W's block index never changes, so the pipeline copies it into VMEM once and it stays
  resident for the whole sequence (forward and backward);
- the carry lives in VMEM scratch from one time chunk to the next;
- each grid step runs Tc time steps in a loop while the pipeline prefetches the next chunk
  of px and writes the previous chunk of outputs back to HBM;
- batch blocks are "parallel" (split across the TensorCores of a megacore chip), time
  chunks "arbitrary" (in order).

Forward, grid step (b, c), for t = c·Tc … c·Tc + Tc − 1, on batch rows b·bB … (b+1)·bB::

    hw    = h_{t-1} @ W                                   # (bB, K·Hp) on the MXU
    state = pointwise(split(px_t), split(hw), state, pv)  # the cell's own, (bB, Hp) each
    hseq[t] = h_t   (with save: hw_t and the other carry leaves, for the backward)

Backward, the time chunks in reverse and t from each chunk's last step down::

    cot        = d state_t, with d h_t += d hseq[t]
    dpx_t, dhw_t, d_prev, dpv_t = vjp(pointwise)(cot)     # the cell's own VJP
    d h_{t-1}  = d_prev.h + Σ_k dhw_t[:, k] @ W[:, k]ᵀ    # (bB, Hp)

dW = Σ_t h_{t-1}ᵀ dhw_t is one matmul after the loop (`rnnjax.kernels.pallas.persistent_rnn`,
shared with the Triton kernels); so are the layout, the padding and the checks
(`rnnjax.kernels.pallas.make_persistent_backend`). Past a sequence's length the carry is
kept and nothing is written but the frozen h, exactly as in the Triton kernels.

Geometry: Hp = H rounded up to 128 lanes, bB = B rounded up to 8 sublanes, at most 128
rows per block; Tc the largest of 16, 8, 4, 2, 1 steps whose double-buffered blocks plus W
(twice: the pipeline's two buffers) fit in ``VMEM_BYTES``, else the backend says why not.
T is padded up to a multiple of Tc (the padded steps are past every length, so they do
nothing).

**Status: tested in Pallas's TPU interpret mode on CPU only** (``pltpu.InterpretParams``:
the kernels run on CPU with TPU memory spaces simulated), and lowered through Mosaic TPU by
``jax.export`` in the tests; it has not run on a TPU, so its speed there is unmeasured.
``backend="auto"`` picks it on TPU where it supports the cell (`rnnjax.kernels.auto`).

References:
    Diamos et al., "Persistent RNNs: stashing recurrent weights on-chip", ICML 2016.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from rnnjax.kernels.base import Backend
from rnnjax.kernels.pallas import KernelPair, make_persistent_backend, placement, round_up
from rnnjax.kernels.pallas_kernels import Family, compute_dot

Array = jax.Array
LANES = 128  # the last dimension of a TPU vector register
SUBLANES = 8  # its second-to-last
MAX_BLOCK_ROWS = 128  # batch rows per grid step (the MXU's height on v5e)
TIME_CHUNKS = (16, 8, 4, 2, 1)  # steps per grid step, the largest that fits first
VMEM_BYTES = 48 * 1024 * 1024  # what the kernels may ask of VMEM (v5e/v6e have 128 MiB)


@dataclasses.dataclass(frozen=True)
class TpuPlan:
    """Static launch geometry of the TPU kernels.

    Attributes:
        family: the cell arithmetic.
        T: time steps; Tc: steps per grid step (T is padded to Tp, a multiple of Tc).
        Bp, bB: padded batch and rows per batch block.
        Hp: padded hidden size (a multiple of 128).
        compute_dtype: matmul operand dtype (W is resident in it); None = float32.
        interpret: run through Pallas's TPU interpreter (on CPU).
        vmem_bytes: the kernels' VMEM need, the limit they are compiled with.
    """

    family: Family
    T: int
    Tc: int
    Bp: int
    bB: int
    Hp: int
    compute_dtype: Any
    interpret: bool
    vmem_bytes: int

    @property
    def Tp(self) -> int:
        return round_up(self.T, self.Tc)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.Bp // self.bB, self.Tp // self.Tc)


def _vmem_need(family: Family, Tc: int, bB: int, Hp: int, itemsize: int) -> int:
    """Bytes of VMEM the larger kernel (the backward) holds, every block double-buffered.

    Per step it streams px, hw, dpx and dhw (K·Hp columns each), the S carry leaves before the
    step and d hseq (Hp each); W is (Hp, K·Hp); the rest (carries, vectors, lengths) is small
    and counted as 4 S + 4 rows of Hp. S counts at least two leaves (an LSTM's h and c), so
    that the support predicate, which does not know S, never accepts what `run` refuses.
    """
    K, S = family.gates, max(family.states, 2)
    per_step = (4 * K + S + 1) * bB * Hp * 4
    small = (4 * S + 4) * bB * Hp * 4 + 2 * LANES * bB * 4
    return 2 * (Hp * K * Hp * itemsize) + 2 * Tc * per_step + small


def tpu_plan_or_reason(
    family: Family,
    T: int,
    B: int,
    H: int,
    compute_dtype: Any = None,
    *,
    interpret: bool,
    block_rows: int = MAX_BLOCK_ROWS,
    time_chunk: int | None = None,
) -> TpuPlan | str:
    """The geometry, or the reason (a sentence) why the kernels do not fit in VMEM. Pure.

    Args:
        family, T, B, H: the problem (only ``family.gates`` and ``family.states`` are read).
        compute_dtype: matmul operand dtype (None = float32).
        interpret: Pallas's TPU interpreter.
        block_rows: the most batch rows per block (a multiple of 8).
        time_chunk: steps per grid step; None = the largest of `TIME_CHUNKS` that fits.
    """
    if block_rows < SUBLANES or block_rows % SUBLANES:
        return f"block_rows must be a positive multiple of {SUBLANES}, got {block_rows}"
    Hp = round_up(H, LANES)
    bB = min(round_up(B, SUBLANES), block_rows)
    itemsize = jnp.dtype(compute_dtype or jnp.float32).itemsize
    for Tc in TIME_CHUNKS if time_chunk is None else (time_chunk,):
        need = _vmem_need(family, Tc, bB, Hp, itemsize)
        if need <= VMEM_BYTES:
            Bp = round_up(B, bB)
            return TpuPlan(family, T, min(Tc, T), Bp, bB, Hp, compute_dtype, interpret, need)
    return (
        f"backend='pallas_tpu' keeps W in VMEM: a {family.name} with H={H} and {bB} rows per "
        f"block needs {need // 2**20} MiB (W {Hp}x{family.gates * Hp}, twice) but the limit "
        f"is {VMEM_BYTES // 2**20} MiB; use dtype=jnp.bfloat16, a smaller H, or "
        f"backend='fused'"
    )


# ---------------------------------------------------------------------------------------------
# The kernels.
# ---------------------------------------------------------------------------------------------


def _gates(z: Array, K: int, Hp: int) -> list[Array]:
    """(rows, K·Hp) -> K x (rows, Hp): lane-aligned static slices."""
    return [z[:, k * Hp : (k + 1) * Hp] for k in range(K)]


def _unit_vectors(plan: TpuPlan, pv_ref) -> list[Array]:
    """P x (bB, Hp): the per-unit vectors broadcast over the block's rows."""
    rows = (plan.bB, plan.Hp)
    return [jnp.broadcast_to(pv_ref[pl.ds(p, 1), :], rows) for p in range(plan.family.n_params)]


def _forward_kernel(*refs, plan: TpuPlan, save: bool):
    fam = plan.family
    K, S, Hp, Tc = fam.gates, fam.states, plan.Hp, plan.Tc
    it = iter(refs)
    px_ref, w_ref = next(it), next(it)
    s0_refs = [next(it) for _ in range(S)]
    pv_ref, len_ref = next(it), next(it)
    hseq_ref = next(it)
    final_refs = [next(it) for _ in range(S - 1)]
    hw_ref: Any = next(it) if save else None
    sseq_refs = [next(it) for _ in range(S - 1)] if save else []
    state_refs = [next(it) for _ in range(S)]  # VMEM scratch, (bB, Hp) each
    c = pl.program_id(1)

    @pl.when(c == 0)
    def _():
        for state, s0 in zip(state_refs, s0_refs, strict=True):
            state[...] = s0[...]

    pv = _unit_vectors(plan, pv_ref)
    lengths = len_ref[...]  # (bB, 1)

    def step(i, state: list) -> list:
        t = c * Tc + i
        hw = compute_dot(state[0], w_ref[...], plan)  # (bB, K·Hp)
        new = fam.pointwise(_gates(px_ref[i], K, Hp), _gates(hw, K, Hp), state, pv)
        valid = lengths > t  # (bB, 1)
        new = [jnp.where(valid, n, o) for n, o in zip(new, state, strict=True)]
        hseq_ref[i] = new[0]
        if save:
            hw_ref[i] = hw
            for s in range(1, S):
                sseq_refs[s - 1][i] = new[s]
        return new

    state = jax.lax.fori_loop(0, Tc, step, [r[...] for r in state_refs])
    for ref, value in zip(state_refs, state, strict=True):
        ref[...] = value

    @pl.when(c == pl.num_programs(1) - 1)
    def _():
        for s in range(1, S):
            final_refs[s - 1][...] = state[s]


def _backward_kernel(*refs, plan: TpuPlan):
    fam = plan.family
    K, S, P, Hp, Tc = fam.gates, fam.states, fam.n_params, plan.Hp, plan.Tc
    it = iter(refs)
    px_ref, hw_ref = next(it), next(it)
    prev_refs = [next(it) for _ in range(S)]  # the carry before each step
    pv_ref, w_ref, len_ref, dhseq_ref = next(it), next(it), next(it), next(it)
    dfinal_refs = [next(it) for _ in range(S - 1)]
    dpx_ref = next(it)
    dhw_ref = dpx_ref if fam.tied else next(it)
    ds0_refs = [next(it) for _ in range(S)]
    dpv_ref = next(it)
    cot_refs = [next(it) for _ in range(S)]  # VMEM scratch: d state, (bB, Hp) each
    dpv_refs = [next(it) for _ in range(P)]  # VMEM scratch: Σ_t dpv_t, (bB, Hp) each
    c, n = pl.program_id(1), pl.num_programs(1)
    chunk = n - 1 - c  # the time chunk of this grid step
    zeros = jnp.zeros((plan.bB, Hp), jnp.float32)

    @pl.when(c == 0)
    def _():
        cot_refs[0][...] = zeros
        for s in range(1, S):
            cot_refs[s][...] = dfinal_refs[s - 1][...]
        for ref in dpv_refs:
            ref[...] = zeros

    pv = _unit_vectors(plan, pv_ref)
    lengths = len_ref[...]  # (bB, 1)

    def step(s, carry):
        cot, dpv = carry
        i = Tc - 1 - s
        t = chunk * Tc + i
        cot = [cot[0] + dhseq_ref[i], *cot[1:]]
        prev = [ref[i] for ref in prev_refs]
        _, vjp = jax.vjp(
            fam.pointwise, _gates(px_ref[i], K, Hp), _gates(hw_ref[i], K, Hp), prev, pv
        )
        dpx, dhw, dprev, dpv_t = vjp(cot)
        valid = lengths > t  # (bB, 1)
        dpx = [jnp.where(valid, d, zeros) for d in dpx]
        dhw = dpx if fam.tied else [jnp.where(valid, d, zeros) for d in dhw]
        dh = zeros
        for k in range(K):
            cols = pl.ds(k * Hp, Hp)
            dpx_ref[i, :, cols] = dpx[k]
            if not fam.tied:
                dhw_ref[i, :, cols] = dhw[k]
            dh = dh + compute_dot(dhw[k], w_ref[:, cols], plan, transpose_w=True)  # (bB, Hp)
        dprev = [jnp.where(valid, d, o) for d, o in zip(dprev, cot, strict=True)]
        dpv = [a + jnp.where(valid, d, zeros) for a, d in zip(dpv, dpv_t, strict=True)]
        return [dprev[0] + dh, *dprev[1:]], dpv

    carry = ([r[...] for r in cot_refs], [r[...] for r in dpv_refs])
    cot, dpv = jax.lax.fori_loop(0, Tc, step, carry)
    for ref, value in zip([*cot_refs, *dpv_refs], [*cot, *dpv], strict=True):
        ref[...] = value

    @pl.when(c == n - 1)
    def _():
        for s in range(S):
            ds0_refs[s][...] = cot[s]
        for p in range(max(P, 1)):
            dpv_ref[p] = dpv[p] if P else zeros


# ---------------------------------------------------------------------------------------------
# The launches: block specs, time padding.
# ---------------------------------------------------------------------------------------------


def _steps(plan: TpuPlan, width: int, *, reverse: bool = False) -> pl.BlockSpec:
    """A (Tc, bB, width) block of a (Tp, Bp, width) sequence: time chunk c of batch block b."""
    n = plan.Tp // plan.Tc
    if reverse:
        return pl.BlockSpec((plan.Tc, plan.bB, width), lambda b, c: (n - 1 - c, b, 0))
    return pl.BlockSpec((plan.Tc, plan.bB, width), lambda b, c: (c, b, 0))


def _rows(plan: TpuPlan, width: int) -> pl.BlockSpec:
    """A (bB, width) block of a (Bp, width) array: batch block b, every time chunk."""
    return pl.BlockSpec((plan.bB, width), lambda b, c: (b, 0))


def _whole(shape: tuple[int, ...]) -> pl.BlockSpec:
    """The whole array, the same block at every grid step (loaded once, kept in VMEM)."""
    return pl.BlockSpec(shape, lambda b, c: (0,) * len(shape))


def _pad_time(plan: TpuPlan, x: Array) -> Array:
    """(T, ...) -> (Tp, ...) with zeros: the padded steps are past every length."""
    return jnp.pad(x, [(0, plan.Tp - plan.T)] + [(0, 0)] * (x.ndim - 1))


def _launch(kernel, plan: TpuPlan, name: str, in_specs, out_specs, out_shape, scratch, inputs):
    interpret: Any = pltpu.InterpretParams() if plan.interpret else False
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=plan.grid,
        in_specs=in_specs,
        out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM((plan.bB, plan.Hp), jnp.float32)] * scratch,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary"),
            vmem_limit_bytes=plan.vmem_bytes + (4 << 20),
        ),
        interpret=interpret,
        name=f"persistent_{plan.family.name}_{name}_tpu",
    )(*inputs)


def forward_call(plan: TpuPlan, px, w, states0, pv, lengths, *, save: bool):
    """Runs the forward kernel; returns (hseq, finals, hw, state_seqs) (last two if save).

    Same contract as the Triton kernels' `rnnjax.kernels.pallas_kernels.forward_call`.
    """
    S, T, Bp, Hp, G = plan.family.states, plan.T, plan.Bp, plan.Hp, plan.family.gates * plan.Hp
    f32 = jnp.float32
    seq = jax.ShapeDtypeStruct((plan.Tp, Bp, Hp), f32)
    row = jax.ShapeDtypeStruct((Bp, Hp), f32)
    out_shape = [seq] + [row] * (S - 1)
    out_specs = [_steps(plan, Hp)] + [_rows(plan, Hp)] * (S - 1)
    if save:
        out_shape += [jax.ShapeDtypeStruct((plan.Tp, Bp, G), f32)] + [seq] * (S - 1)
        out_specs += [_steps(plan, G)] + [_steps(plan, Hp)] * (S - 1)
    in_specs = [_steps(plan, G), _whole(w.shape), *[_rows(plan, Hp)] * S, _whole(pv.shape)]
    in_specs.append(_rows(plan, 1))
    inputs = [_pad_time(plan, px), w, *states0, pv, lengths[:, None]]
    kernel = functools.partial(_forward_kernel, plan=plan, save=save)
    outs = _launch(kernel, plan, "fwd", in_specs, out_specs, out_shape, S, inputs)
    hseq, finals = outs[0][:T], outs[1:S]
    if not save:
        return hseq, finals, None, None
    return hseq, finals, outs[S][:T], [x[:T] for x in outs[S + 1 : 2 * S]]


def backward_call(plan: TpuPlan, px, hw, hseq, state_seqs, states0, pv, w, lengths, dhseq, dfin):
    """Runs the backward kernel; returns (dpx, dhw, dstates0, dpv_rows).

    Same contract as the Triton kernels' `rnnjax.kernels.pallas_kernels.backward_call`;
    dpv_rows is (max(P, 1), Bp, Hp), summed over rows by the caller.
    """
    fam = plan.family
    S, P, T, Bp, Hp, G = fam.states, fam.n_params, plan.T, plan.Bp, plan.Hp, fam.gates * plan.Hp
    f32 = jnp.float32
    prevs = [
        jnp.concatenate([s0[None], seq[:-1]], axis=0)  # (T, Bp, Hp): the carry before step t
        for s0, seq in zip(states0, [hseq, *state_seqs], strict=True)
    ]
    gseq = jax.ShapeDtypeStruct((plan.Tp, Bp, G), f32)
    n_dpv = max(P, 1)
    out_shape = [gseq] + ([] if fam.tied else [gseq])
    out_shape += [jax.ShapeDtypeStruct((Bp, Hp), f32)] * S
    out_shape.append(jax.ShapeDtypeStruct((n_dpv, Bp, Hp), f32))
    back = functools.partial(_steps, plan, reverse=True)
    out_specs = [back(G)] * (1 if fam.tied else 2) + [_rows(plan, Hp)] * S
    out_specs.append(pl.BlockSpec((n_dpv, plan.bB, Hp), lambda b, c: (0, b, 0)))
    in_specs = [back(G), back(G), *[back(Hp)] * S, _whole(pv.shape), _whole(w.shape)]
    in_specs += [_rows(plan, 1), back(Hp), *[_rows(plan, Hp)] * (S - 1)]
    padded = [_pad_time(plan, x) for x in (px, hw, *prevs)]
    inputs = [*padded, pv, w, lengths[:, None], _pad_time(plan, dhseq), *dfin]
    kernel = functools.partial(_backward_kernel, plan=plan)
    outs = _launch(kernel, plan, "bwd", in_specs, out_specs, out_shape, S + P, inputs)
    dpx = outs[0][:T]
    dhw = dpx if fam.tied else outs[1][:T]
    n = 1 if fam.tied else 2
    return dpx, dhw, list(outs[n : n + S]), outs[n + S]


TPU = KernelPair(forward_call, backward_call)


def make_tpu_backend(
    *,
    name: str = "pallas_tpu",
    interpret: bool | None = None,
    block_rows: int = MAX_BLOCK_ROWS,
    time_chunk: int | None = None,
) -> Backend:
    """Builds the Mosaic TPU persistent-kernel `Backend` with explicit options (tests, tuning).

    Args:
        name: the backend's name (in messages).
        interpret: run through Pallas's TPU interpreter; None = automatically on CPU.
        block_rows, time_chunk: see `tpu_plan_or_reason`.
    """

    use_interpret, runs_on = placement(name, interpret, "tpu", "TPU (Mosaic)", "make_tpu_backend")

    def plan_fn(family, T, B, H, compute_dtype, platform):
        return tpu_plan_or_reason(
            family,
            T,
            B,
            H,
            compute_dtype,
            interpret=use_interpret(platform),
            block_rows=block_rows,
            time_chunk=time_chunk,
        )

    return make_persistent_backend(
        name=name,
        kernels=TPU,
        plan_fn=plan_fn,
        runs_on=runs_on,
        description="persistent Pallas kernel on Mosaic TPU, W resident in VMEM, the cell's "
        "pointwise (tested in interpret mode only)",
    )


PALLAS_TPU = make_tpu_backend()
