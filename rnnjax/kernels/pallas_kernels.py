"""The two Pallas kernels of the ``"pallas"`` backend: a persistent forward and backward loop.

One launch runs the whole time loop (Diamos et al. 2016). The grid is (slices, batch blocks):
program (j, b) owns hidden units ``j·hs … (j+1)·hs`` of every gate for batch rows
``b·bB … (b+1)·bB`` and loads its columns of the recurrent matrix, W[:, gate k, slice j] for
every gate k ((Hp, Kp·hs) numbers), once, before the loop, holding them as values (registers)
for all T steps in both kernels.

Forward, step t, program (j, b)::

    wait until every slice of batch block b has written h_{t-1}
    hw    = h_{t-1}[b rows, :] @ W[:, :, j]                 # (bB, Kp·hs): ONE dot, gates fused
    state = pointwise(px_t[b, k, j], split(hw), state)      # (h, c) of the slice, on chip
    store h_t[b rows, j] (the exchange buffer is the output itself); signal "t done"

Backward, step t (reverse order), with the same column partition of W::

    dpx_t, dhw_t, d_direct = vjp(pointwise)(d_state)        # the slice's own units
    share_j = Σ_k dhw_t[:, k, j] @ W[:, k, j]ᵀ              # (bB, Hp): slice j's part of dh
    store share_j in a two-slot buffer; signal; wait for every slice of block b
    dh_{t-1}[b rows, j] = d_direct.h + Σ_j' share_j'[:, j]

The gates are fused in the forward dot and the backward dot has N = kc columns because
Triton spreads a dot's B operand over warps along N only: a (K, 16) operand would be
replicated in every warp (the first version did that and ran 2–4× slower). dW = Σ_t
h_{t-1}ᵀ dhw_t is one matmul outside the loop (`rnnjax.kernels.pallas`).

Synchronisation between programs is a flag per (batch block, slice) in global memory: a
program raises its flag to the step count with an ``atomic_max`` (release, after a
``bar.sync`` so that the whole block's stores come first) and spins on volatile loads of its
block's row of flags. h_t is read from addresses no program has read before (a new time
index each step), and the two-slot share buffer is read with volatile (L1-bypassing) loads,
so no stale L1 line can be hit. All programs must be resident at once: the grid is kept at
or under the number of SMs. A spin that exceeds ``SPIN_LIMIT`` polls gives up and poisons the
outputs with NaN, so a broken barrier shows up as NaN rather than a hang.

Interpret mode (CPU, CI) cannot run programs concurrently, so there the kernel is one program
that runs every (j, b) "program" in turn inside each phase of each step: the same slicing,
exchange buffers and arithmetic, serialised at each barrier.

References:
    Diamos et al., "Persistent RNNs: stashing recurrent weights on-chip", ICML 2016.
    Appleyard, Kočiský & Blunsom, "Optimizing performance of recurrent neural networks on
    GPUs", 2016.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

Array = jax.Array
SPIN_LIMIT = 1 << 22  # polls of a flag before a barrier gives up (seconds, not a hang)


@dataclasses.dataclass(frozen=True)
class Family:
    """The per-unit arithmetic of one cell, as the kernels see it.

    Built from a cell's `rnnjax.cells.base.Structure` by `rnnjax.kernels.pallas.family_of`:
    the kernels never restate a cell's equations, they trace its ``pointwise`` on each
    program's (rows, units) slice.

    Attributes:
        name: a label for the kernel's name.
        gates: K, gate blocks in W and px.
        states: S, carry leaves; leaf 0 is h, the one exchanged between programs.
        n_params: P, per-unit parameter vectors (peepholes, GRU's b_hn, ...).
        tied: px and hw only enter as px + hw in every block, so dpx = dhw and one buffer
            serves both.
        pointwise: ``(px, hw, state, pv) -> new_state``: lists of (rows, units) arrays (K, K,
            S and P of them) in, the S new carry leaves out.
    """

    name: str
    gates: int
    states: int
    n_params: int
    tied: bool
    pointwise: Callable[[list, list, list, list], list]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static launch geometry (see `rnnjax.kernels.pallas.make_plan`).

    Attributes:
        family: the cell arithmetic.
        T, Bp, Hp: time steps, padded batch, padded hidden size.
        bB: batch rows per program; hs: hidden units per program; kc: K-chunk of the matmuls.
        compute_dtype: dtype of the matmul operands (W is resident in it); None = float32.
        interpret: run on CPU through the Pallas interpreter.
        num_warps: Triton warps per program.
    """

    family: Family
    T: int
    Bp: int
    Hp: int
    bB: int
    hs: int
    kc: int
    compute_dtype: Any
    interpret: bool
    num_warps: int

    @property
    def gates_p2(self) -> int:
        """Gates rounded up to a power of two (Triton splits the fused gate dot in halves)."""
        return 1 << (self.family.gates - 1).bit_length()

    @property
    def n_slices(self) -> int:
        return self.Hp // self.hs

    @property
    def n_blocks(self) -> int:
        return self.Bp // self.bB

    @property
    def grid(self) -> tuple[int, int]:
        return (1, 1) if self.interpret else (self.n_slices, self.n_blocks)

    @property
    def flag_width(self) -> int:
        return max(2, 1 << (self.n_slices - 1).bit_length())  # a power of two for Triton


def initial_flags(plan: Plan) -> Array:
    """Zero flags for the real slices; padding columns start "done" so min() ignores them."""
    cols = jnp.arange(plan.flag_width)[None, :]  # (1, F)
    flags = jnp.where(cols < plan.n_slices, 0, jnp.iinfo(jnp.int32).max)  # (1, F)
    return jnp.broadcast_to(flags, (plan.n_blocks, plan.flag_width)).astype(jnp.int32)


def _compiler_params(plan: Plan) -> Any:
    # jax >= 0.7 calls it CompilerParams, older releases TritonCompilerParams.
    names = ("CompilerParams", "TritonCompilerParams")
    cls = next(getattr(plgpu, n) for n in names if hasattr(plgpu, n))
    # num_stages=1: no software pipelining, which could hoist the next step's loads above
    # the barrier that makes them valid.
    return cls(num_warps=plan.num_warps, num_stages=1)


@dataclasses.dataclass
class _Program:
    """What one program (j, b) holds on chip: its indices, weight blocks and lengths."""

    j: Any
    b: Any
    rows: Any
    units: Any
    weights: list  # [k][r] -> (kc, hs), resident for the whole loop
    pv: list  # P x (bB, hs)
    lengths: Array  # (bB, 1)

    def valid(self, t) -> Array:
        return self.lengths > t  # (bB, 1)


def _programs(plan: Plan, w_ref, pv_ref, len_ref, per_gate: bool) -> list[_Program]:
    """The programs this kernel instance runs: all of them in interpret mode, else its own.

    ``w_ref`` is W in program-major order, (slices, Hp, Kp·hs): program j's columns of every
    gate side by side. The forward keeps them fused, (kc, Kp·hs) per K-chunk, so that its one
    dot per chunk has N = Kp·hs columns (Triton spreads a dot's B operand over warps along N
    only); the backward keeps one (kc, hs) block per gate and chunk and multiplies by its
    transpose (N = kc).
    """
    ids: list[tuple[Any, Any]]
    if plan.interpret:
        ids = [(j, b) for b in range(plan.n_blocks) for j in range(plan.n_slices)]
    else:
        ids = [(pl.program_id(0), pl.program_id(1))]
    K, hs, kc, nc = plan.family.gates, plan.hs, plan.kc, plan.Hp // plan.kc
    out = []
    for j, b in ids:
        rows, units = pl.ds(b * plan.bB, plan.bB), pl.ds(j * hs, hs)
        if per_gate:
            w = [
                [w_ref[j, pl.ds(r * kc, kc), pl.ds(k * hs, hs)] for r in range(nc)]
                for k in range(K)
            ]
        else:
            w = [w_ref[j, pl.ds(r * kc, kc), :] for r in range(nc)]  # (kc, Kp·hs) each
        pv = [
            jnp.broadcast_to(pv_ref[p, units][None, :], (plan.bB, hs))
            for p in range(plan.family.n_params)
        ]
        lengths = len_ref[rows][:, None]  # (bB, 1)
        out.append(_Program(j, b, rows, units, w, pv, lengths))
    return out


def _gate_cols(plan: Plan, k: int, prog: _Program) -> Any:
    return pl.ds(k * plan.Hp + prog.j * plan.hs, plan.hs)


def compute_dot(x: Array, w: Array, plan: Any, transpose_w: bool = False) -> Array:
    """x @ w (or x @ wᵀ) with float32 accumulation, operands in ``plan.compute_dtype``."""
    if plan.compute_dtype is not None:
        x = x.astype(plan.compute_dtype)
    dims = (((1,), (1 if transpose_w else 0,)), ((), ()))
    return jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.float32)


def _signal(plan: Plan, flags_ref, prog: _Program, value) -> None:
    """Tells the other slices of this batch block that step ``value`` is stored."""
    if plan.interpret:
        return
    plgpu.debug_barrier()  # every warp's stores precede the (release) atomic
    plgpu.atomic_max(flags_ref, (prog.b, prog.j), value)


def _wait(plan: Plan, flags_ref, prog: _Program, value, ok):
    """Spins until every slice of this batch block has signalled ``value``; returns ok."""
    if plan.interpret:
        return ok

    def poll():
        row = plgpu.load(flags_ref.at[prog.b], volatile=True)  # (F,)
        return jnp.min(row)

    limit = ok * SPIN_LIMIT  # no more polling once a barrier has failed

    def cond(carry):
        seen, polls = carry
        return (seen < value) & (polls < limit)

    seen, _ = jax.lax.while_loop(cond, lambda c: (poll(), c[1] + 1), (poll(), jnp.int32(0)))
    plgpu.debug_barrier()
    return jnp.where(seen >= value, ok, 0)


def _poison(x: Array, ok) -> Array:
    return jnp.where(ok > 0, x, jnp.nan)


def _forward_kernel(*refs, plan: Plan, save: bool):
    fam = plan.family
    K, S, kc, T = fam.gates, fam.states, plan.kc, plan.T
    it = iter(refs)
    px_ref, w_ref = next(it), next(it)
    s0_refs = [next(it) for _ in range(S)]
    pv_ref, len_ref, _ = next(it), next(it), next(it)
    hseq_ref = next(it)
    final_refs = [next(it) for _ in range(S - 1)]
    hw_ref: Any = next(it) if save else None
    sseq_refs = [next(it) for _ in range(S - 1)] if save else []
    flags_ref = next(it)
    progs = _programs(plan, w_ref, pv_ref, len_ref, per_gate=False)

    def step(prog: _Program, t, prev_t, state: list, ok) -> list:
        fused: Any = None
        for r in range(plan.Hp // kc):
            cols = pl.ds(r * kc, kc)
            if prev_t is None:
                h_chunk = s0_refs[0][prog.rows, cols]  # (bB, kc)
            else:
                h_chunk = hseq_ref[prev_t, prog.rows, cols]  # (bB, kc)
            y = compute_dot(h_chunk, prog.weights[r], plan)  # (bB, Kp·hs)
            fused = y if fused is None else fused + y
        hw = jnp.split(fused, plan.gates_p2, axis=1)[:K] if K > 1 else [fused]  # (bB, hs)
        px = [px_ref[t, prog.rows, _gate_cols(plan, k, prog)] for k in range(K)]  # (bB, hs)
        new = fam.pointwise(px, hw, state, prog.pv)
        valid = prog.valid(t)
        new = [jnp.where(valid, n, o) for n, o in zip(new, state, strict=True)]
        hseq_ref[t, prog.rows, prog.units] = _poison(new[0], ok)
        if save:
            for k in range(K):
                hw_ref[t, prog.rows, _gate_cols(plan, k, prog)] = hw[k]
            for s in range(1, S):
                sseq_refs[s - 1][t, prog.rows, prog.units] = new[s]
        return new

    ok = jnp.int32(1)
    states = [[s0[p.rows, p.units] for s0 in s0_refs] for p in progs]
    states = [step(p, 0, None, s, ok) for p, s in zip(progs, states, strict=True)]
    for p in progs:
        _signal(plan, flags_ref, p, 1)

    def body(t, carry):
        states, ok = carry
        for p in progs:
            ok = _wait(plan, flags_ref, p, t, ok)
        states = [step(p, t, t - 1, s, ok) for p, s in zip(progs, states, strict=True)]
        for p in progs:
            _signal(plan, flags_ref, p, t + 1)
        return states, ok

    states, ok = jax.lax.fori_loop(1, T, body, (states, ok))
    for p, s in zip(progs, states, strict=True):
        for i in range(1, S):
            final_refs[i - 1][p.rows, p.units] = _poison(s[i], ok)


def _backward_kernel(*refs, plan: Plan):
    fam = plan.family
    K, S, P, kc, T = fam.gates, fam.states, fam.n_params, plan.kc, plan.T
    it = iter(refs)
    px_ref, hw_ref, hseq_ref = next(it), next(it), next(it)
    sseq_refs = [next(it) for _ in range(S - 1)]
    s0_refs = [next(it) for _ in range(S)]
    pv_ref, w_ref, len_ref = next(it), next(it), next(it)
    dhseq_ref = next(it)
    dfinal_refs = [next(it) for _ in range(S - 1)]
    _ = next(it)
    dpx_ref = next(it)
    dhw_ref = dpx_ref if fam.tied else next(it)
    ds0_refs = [next(it) for _ in range(S)]
    dpv_ref, part_ref, flags_ref = next(it), next(it), next(it)
    progs = _programs(plan, w_ref, pv_ref, len_ref, per_gate=True)

    def phase_a(prog: _Program, t, prev_t, slot, cot: list, dpv: list):
        """The slice's own units: vjp of the pointwise step, then this slice's share of
        dh_{t-1} for ALL units, Σ_k dhw_t[:, k, j] @ W[:, k, j]ᵀ, stored for the others."""
        cols = [_gate_cols(plan, k, prog) for k in range(K)]
        px = [px_ref[t, prog.rows, c] for c in cols]  # (bB, hs) each
        hw = [hw_ref[t, prog.rows, c] for c in cols]
        if prev_t is None:
            prev = [s0[prog.rows, prog.units] for s0 in s0_refs]
        else:
            srcs = [hseq_ref, *sseq_refs]
            prev = [src[prev_t, prog.rows, prog.units] for src in srcs]
        cot = [cot[0] + dhseq_ref[t, prog.rows, prog.units], *cot[1:]]
        _, vjp = jax.vjp(fam.pointwise, px, hw, prev, prog.pv)
        dpx, dhw, dprev, dpv_t = vjp(cot)
        valid = prog.valid(t)
        zero = jnp.zeros_like(cot[0])
        dpx = [jnp.where(valid, d, zero) for d in dpx]
        dhw = dpx if fam.tied else [jnp.where(valid, d, zero) for d in dhw]
        for k in range(K):
            dpx_ref[t, prog.rows, cols[k]] = dpx[k]
            if not fam.tied:
                dhw_ref[t, prog.rows, cols[k]] = dhw[k]
        for r in range(plan.Hp // kc):
            part = None
            for k in range(K):
                y = compute_dot(dhw[k], prog.weights[k][r], plan, transpose_w=True)  # (bB, kc)
                part = y if part is None else part + y
            part_ref[slot, prog.j, prog.rows, pl.ds(r * kc, kc)] = part
        dprev = [jnp.where(valid, d, c) for d, c in zip(dprev, cot, strict=True)]
        dpv = [a + jnp.where(valid, d, zero) for a, d in zip(dpv, dpv_t, strict=True)]
        return dprev, dpv

    def phase_b(prog: _Program, slot, dprev: list) -> list:
        """dh_{t-1} of the slice's units: its direct term plus every slice's share."""
        dh = dprev[0]
        for jj in range(plan.n_slices):
            ref = part_ref.at[slot, jj, prog.rows, prog.units]
            # volatile (relaxed, gpu scope): never a stale L1 line from two steps ago.
            share = ref[...] if plan.interpret else plgpu.load(ref, volatile=True)
            dh = dh + share
        return [dh, *dprev[1:]]

    def step(t, prev_t, s, carry):
        cots, dpvs, ok = carry
        slot = s % 2 if isinstance(s, int) else jax.lax.rem(s, jnp.int32(2))
        outs = [
            phase_a(p, t, prev_t, slot, c, d) for p, c, d in zip(progs, cots, dpvs, strict=True)
        ]
        for p in progs:
            _signal(plan, flags_ref, p, s + 1)
        for p in progs:
            ok = _wait(plan, flags_ref, p, s + 1, ok)
        cots = [phase_b(p, slot, o[0]) for p, o in zip(progs, outs, strict=True)]
        return cots, [o[1] for o in outs], ok

    zeros = jnp.zeros((plan.bB, plan.hs), jnp.float32)
    cots = [[zeros] + [d[p.rows, p.units] for d in dfinal_refs] for p in progs]
    dpvs = [[zeros] * P for _ in progs]
    carry = (cots, dpvs, jnp.int32(1))
    carry = jax.lax.fori_loop(0, T - 1, lambda s, c: step(T - 1 - s, T - 2 - s, s, c), carry)
    cots, dpvs, ok = step(0, None, T - 1, carry)
    for p, cot, dpv in zip(progs, cots, dpvs, strict=True):
        for i in range(S):
            ds0_refs[i][p.rows, p.units] = _poison(cot[i], ok)
        for i in range(P):
            dpv_ref[i, p.rows, p.units] = dpv[i]


def program_major(plan: Plan, w: Array) -> Array:
    """W (Hp, K·Hp) -> (slices, Hp, Kp·hs): each program's gate columns side by side."""
    K, Kp, Hp, hs, ns = plan.family.gates, plan.gates_p2, plan.Hp, plan.hs, plan.n_slices
    w = w.reshape(Hp, K, ns, hs)
    w = jnp.pad(w, [(0, 0), (0, Kp - K), (0, 0), (0, 0)])  # (Hp, Kp, ns, hs)
    return jnp.transpose(w, (2, 0, 1, 3)).reshape(ns, Hp, Kp * hs)


def forward_call(plan: Plan, px, w, states0, pv, lengths, *, save: bool):
    """Runs the forward kernel; returns (hseq, finals, hw, state_seqs) (last two if save)."""
    S, T, Bp, Hp, G = plan.family.states, plan.T, plan.Bp, plan.Hp, plan.family.gates * plan.Hp
    f32 = jnp.float32
    seq = jax.ShapeDtypeStruct((T, Bp, Hp), f32)
    out_shape = [seq] + [jax.ShapeDtypeStruct((Bp, Hp), f32)] * (S - 1)
    if save:
        out_shape += [jax.ShapeDtypeStruct((T, Bp, G), f32)] + [seq] * (S - 1)
    flags = initial_flags(plan)
    out_shape.append(jax.ShapeDtypeStruct(flags.shape, flags.dtype))
    inputs = [px, program_major(plan, w), *states0, pv, lengths, flags]
    outs = pl.pallas_call(
        functools.partial(_forward_kernel, plan=plan, save=save),
        out_shape=out_shape,
        grid=plan.grid,
        input_output_aliases={len(inputs) - 1: len(out_shape) - 1},
        interpret=plan.interpret,
        compiler_params=_compiler_params(plan),
        name=f"persistent_{plan.family.name}_fwd",
    )(*inputs)
    hseq, finals = outs[0], outs[1:S]
    if not save:
        return hseq, finals, None, None
    return hseq, finals, outs[S], outs[S + 1 : 2 * S]


def backward_call(plan: Plan, px, hw, hseq, state_seqs, states0, pv, w, lengths, dhseq, dfin):
    """Runs the backward kernel; returns (dpx, dhw, dstates0, dpv_partial)."""
    fam = plan.family
    S, T, Bp, Hp, G = fam.states, plan.T, plan.Bp, plan.Hp, fam.gates * plan.Hp
    f32 = jnp.float32
    gseq = jax.ShapeDtypeStruct((T, Bp, G), f32)
    out_shape = [gseq] + ([] if fam.tied else [gseq])
    out_shape += [jax.ShapeDtypeStruct((Bp, Hp), f32)] * S
    out_shape.append(jax.ShapeDtypeStruct((max(fam.n_params, 1), Bp, Hp), f32))
    out_shape.append(jax.ShapeDtypeStruct((2, plan.n_slices, Bp, Hp), f32))  # shares of dh
    flags = initial_flags(plan)
    out_shape.append(jax.ShapeDtypeStruct(flags.shape, flags.dtype))
    wp = program_major(plan, w)
    inputs = [px, hw, hseq, *state_seqs, *states0, pv, wp, lengths, dhseq, *dfin, flags]
    outs = pl.pallas_call(
        functools.partial(_backward_kernel, plan=plan),
        out_shape=out_shape,
        grid=plan.grid,
        input_output_aliases={len(inputs) - 1: len(out_shape) - 1},
        interpret=plan.interpret,
        compiler_params=_compiler_params(plan),
        name=f"persistent_{fam.name}_bwd",
    )(*inputs)
    dpx = outs[0]
    dhw = dpx if fam.tied else outs[1]
    n = 1 if fam.tied else 2
    return dpx, dhw, list(outs[n : n + S]), outs[n + S]
