"""The ``"pallas"`` backend: a persistent RNN kernel with the recurrent weights on chip.

The whole time loop runs inside one Pallas launch (Diamos et al. 2016); so does the backward
loop. Each program of the launch loads its columns of W once and holds them on chip (as
register values) for all T steps; the programs exchange h_t (forward) and their shares of
dh_{t-1} (backward) through global memory with one barrier per step, and dW = Σ_t h_{t-1}ᵀ
dhw_t is a single matmul after the backward loop (Appleyard et al. 2016). The kernels are in
`rnnjax.kernels.pallas_kernels`; this module holds the plan (what fits on chip), the
`jax.custom_vjp` that wires them, and `persistent_rnn_reference`, the plain-jnp definition
they must equal.

Supported: every cell in the structured form (`rnnjax.cells.base.Structure`) with a recurrent
matrix and an element-wise ``pointwise`` — the Simple RNN, every LSTM variant, the GRU with
``reset_after=True`` and any such cell a user writes — in float32 or with a bfloat16 compute
dtype, with lengths and gradients with respect to params, inputs and the initial carry. The
kernels trace the cell's own ``pointwise`` on each program's slice of units (forward) and its
VJP (backward): no cell's equations are written here. Reverse and bidirectional come from
the driver. ``unroll`` is ignored (the kernel's loop is its own); ``remat=True`` is refused:
the kernel always stores the recurrent pre-activations and carries (like cuDNN's reserve
space).

GPU status: the kernels' loops, barriers and exchange buffers are those measured on an H100
(``benchmarks/results/gpu_NVIDIA_H100_80GB_HBM3.md``), but there they ran hand-written
per-family element-wise code; this generic form (tracing the cell's ``pointwise``) has run in
interpret mode only. Until it has run on a GPU, ``backend="pallas_verified"``
(`rnnjax.kernels.pallas_verified`) keeps the GPU-verified per-family code selectable, and
``backend="auto"`` prefers it on GPU.
Matmul precision follows ``jax.default_matmul_precision`` (TF32 by default on GPU, IEEE
float32 under "highest"), as the XLA backends do.

What "fits" means (per program, i.e. per SM): the resident block of W is Hp·Kp·hs numbers of
the compute dtype (Hp = H rounded up to hs = 16 units per program, Kp = gates rounded up to a
power of two: 4 for LSTM and GRU, 1 for the simple RNN); it must stay within
``RESIDENT_BYTES`` = 128 KiB, half of an H100 SM's 256 KiB register file, and the grid
(Hp/hs slices × batch blocks of 16–128 rows) must not exceed the number of SMs so that all
programs are resident at once (the barrier needs that). On an H100 (132 SMs) in float32:
LSTM and GRU H ≤ 512, simple RNN H ≤ 2048; bfloat16 doubles the first. Batch: up to 128 rows
per program, i.e. B ≤ 128 · ⌊132 / (Hp/16)⌋ (512 at H = 512). Outside these limits, and on
TPU (see `rnnjax.kernels.pallas_tpu` there), the backend raises ValueError; it never falls
back silently.
Whether ptxas keeps every resident value in registers (rather than spilling part of it to
local memory, which is L1-cached) was not inspected: the limit is a budget, not a proof.

On CPU it runs the same kernels in Pallas interpret mode automatically (slow: keep shapes tiny).

References:
    Diamos et al., "Persistent RNNs: stashing recurrent weights on-chip", ICML 2016.
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

from rnnjax.cells.base import Array, Cell
from rnnjax.kernels.base import YES, Backend, Problem, Support, no, structured
from rnnjax.kernels.pallas_kernels import Family, Plan, backward_call, forward_call

RESIDENT_BYTES = 128 * 1024  # W block per program (half an H100 SM's register file)
SLICE = 16  # hidden units per program (Triton's smallest dot width)
BLOCKS = (16, 32, 64, 128)  # batch rows per program, smallest first
FALLBACK_SMS = 64  # grid limit when the device does not report its SM count
OTHER_DEVICES = {"gpu": ("pallas_tpu", "fused"), "tpu": ("pallas", "fused")}  # in refusals


def family_of(cell: Cell, params: Any) -> tuple[Family, list[Array]]:
    """The kernel arithmetic of a structured cell and its per-unit parameter vectors (H,).

    The family's ``pointwise`` is the cell's own, called on lists of (rows, units) slices.
    """
    s = cell.structure
    assert s is not None, "see supports"
    carry = jax.eval_shape(lambda: cell.initial_carry(params, ()))
    treedef = jax.tree.structure(carry)
    vecs = list(s.unit_params(params))

    def pointwise(px: list, hw: list, state: list, pv: list) -> list:
        new, _ = s.pointwise(tuple(pv), jax.tree.unflatten(treedef, state), tuple(px), tuple(hw))
        return list(jax.tree.leaves(new))

    n_leaves = len(jax.tree.leaves(carry))
    family = Family(cell.name, s.gates, n_leaves, len(vecs), all(s.tied), pointwise)
    return family, vecs


def structured_for_pallas(cell: Cell, name: str) -> Support:
    """What the persistent kernels need of a cell's structure (shared with the verified path)."""
    ok = structured(cell, name)
    if not ok:
        return ok
    s = cell.structure
    assert s is not None
    if s.linear_coefficients is not None:
        return no(f"backend={name!r} needs a recurrent matrix; this cell is linear in its carry")
    if not s.elementwise:
        return no(
            f"backend={name!r} splits the hidden units across programs, so pointwise must be "
            f"element-wise per unit; the {cell.name!r} cell's is not (use backend='fused')"
        )
    return YES


def round_up(x: int, m: int) -> int:
    """x rounded up to a multiple of m."""
    return -(-x // m) * m


def plan_or_reason(
    family: Family,
    T: int,
    B: int,
    H: int,
    compute_dtype: Any = None,
    *,
    interpret: bool,
    num_sms: int | None,
    block_batch: int | None = None,
    slice_size: int = SLICE,
    num_warps: int | None = None,
) -> Plan | str:
    """The launch geometry, or the reason (a sentence) why W cannot stay on chip.

    Pure: reads only its arguments, so the backend's support predicate can ask it.

    Args:
        family, T, B, H: the problem (only ``family.gates`` and ``family.name`` are read
            for the geometry).
        compute_dtype: matmul operand dtype (None = float32).
        interpret: Pallas interpret mode (no residency limits apply there).
        num_sms: streaming multiprocessors of the GPU (the grid must not exceed it).
        block_batch: batch rows per program; None picks the smallest that fits the grid.
        slice_size: hidden units per program (a multiple of 16).
        num_warps: Triton warps; None picks 4, or 8 when W's block exceeds 32 KiB.
    """
    if slice_size < 16 or slice_size % 16:
        return f"slice_size must be a positive multiple of 16, got {slice_size=}"
    Hp = round_up(H, slice_size)
    kc = math.gcd(Hp, 128)
    itemsize = jnp.dtype(compute_dtype or jnp.float32).itemsize
    gates = 1 << (family.gates - 1).bit_length()  # GRU's 3 gates are held as 4 (Triton)
    resident = Hp * gates * slice_size * itemsize
    if resident > RESIDENT_BYTES and not interpret:
        return (
            f"backend='pallas' keeps W on chip: a {family.name} with H={H} needs "
            f"{resident // 1024} KiB of W per program (Hp={Hp} x {gates} gates x "
            f"{slice_size} units x {itemsize} B) but the limit is {RESIDENT_BYTES // 1024} "
            f"KiB; use a smaller H, dtype=jnp.bfloat16, or backend='scan'/'fused'"
        )
    n_slices = Hp // slice_size
    limit = num_sms if (num_sms and not interpret) else None
    choices: tuple[int, ...]
    if block_batch is not None:
        choices = (block_batch,)
    elif limit is None:
        choices = BLOCKS[:1]
    else:
        choices = BLOCKS
    for bB in choices:
        n_prog = n_slices * (-(-B // bB))
        if limit is None or n_prog <= limit:
            break
    else:
        return (
            f"backend='pallas' runs all programs at once: H={H} needs {n_slices} slices and "
            f"B={B} needs {-(-B // choices[-1])} blocks of {choices[-1]} rows, "
            f"{n_prog} programs > {limit} SMs; split the batch or use backend='scan'"
        )
    if bB < 16 or bB & (bB - 1):
        return f"block_batch must be a power of two >= 16, got {bB}"
    if num_warps is None:
        num_warps = 4 if resident <= 32 * 1024 else 8
    return Plan(
        family, T, round_up(B, bB), Hp, bB, slice_size, kc, compute_dtype, interpret, num_warps
    )


def make_plan(*args: Any, **kwargs: Any) -> Plan:
    """`plan_or_reason`, raising ValueError with the reason where there is no plan."""
    plan = plan_or_reason(*args, **kwargs)
    if isinstance(plan, str):
        raise ValueError(plan)
    return plan


# ---------------------------------------------------------------------------------------------
# The custom_vjp: padded, time-major, batch-flat arrays in and out.
# ---------------------------------------------------------------------------------------------


class KernelPair(NamedTuple):
    """The two launches of a persistent kernel (Triton here, Mosaic TPU in `pallas_tpu`).

    Attributes:
        forward: ``(plan, px, w, states0, pv, lengths, *, save) -> (hseq, finals, hw,
            state_seqs)`` (the last two None unless ``save``).
        backward: ``(plan, px, hw, hseq, state_seqs, states0, pv, w, lengths, dhseq,
            dfinals) -> (dpx, dhw, dstates0, dpv_rows)`` with dpv_rows (max(P, 1), Bp, Hp).
    """

    forward: Callable[..., tuple]
    backward: Callable[..., tuple]


TRITON = KernelPair(forward_call, backward_call)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def persistent_rnn(kernels: KernelPair, plan: Any, px, w, states0, pv, lengths):
    """A kernel pair as one differentiable function.

    Args:
        kernels: the forward and backward launches.
        plan: their launch geometry (``plan.family``, ``plan.Hp``, ``plan.compute_dtype``).
        px: (T, Bp, K·Hp) projected inputs, gate-major columns.
        w: (Hp, K·Hp) recurrent weights in the compute dtype.
        states0: tuple of S initial carry leaves (Bp, Hp), h first.
        pv: (max(P, 1), Hp) per-unit parameter vectors.
        lengths: (Bp,) int32 valid steps.

    Returns:
        ``(hseq, finals)``: hseq (T, Bp, Hp) the carry's h after each step (frozen past each
        length) and finals the other carry leaves after the last step (S - 1 of (Bp, Hp)).
    """
    hseq, finals, _, _ = kernels.forward(plan, px, w, states0, pv, lengths, save=False)
    return hseq, tuple(finals)


def _persistent_fwd(kernels, plan, px, w, states0, pv, lengths):
    hseq, finals, hw, seqs = kernels.forward(plan, px, w, states0, pv, lengths, save=True)
    return (hseq, tuple(finals)), (px, w, states0, pv, lengths, hseq, hw, seqs)


def _persistent_bwd(kernels, plan, res, cot):
    px, w, states0, pv, lengths, hseq, hw, seqs = res
    dhseq, dfinals = cot
    dpx, dhw, ds0, dpv = kernels.backward(
        plan, px, hw, hseq, seqs, states0, pv, w, lengths, dhseq, list(dfinals)
    )
    h_prev = jnp.concatenate([states0[0][None], hseq[:-1]], axis=0)  # (T, Bp, Hp)
    # dW = Σ_t h_{t-1}ᵀ dhw_t: one (Hp, T·Bp) x (T·Bp, K·Hp) matmul after the loop.
    dw = jnp.einsum("tbi,tbj->ij", h_prev, dhw).astype(w.dtype)  # (Hp, K·Hp)
    dpv = jnp.sum(dpv, axis=1)[: pv.shape[0]]  # (max(P, 1), Hp)
    if plan.family.n_params == 0:
        dpv = jnp.zeros_like(pv)
    return dpx, dw, tuple(ds0), dpv, None


persistent_rnn.defvjp(_persistent_fwd, _persistent_bwd)


def persistent_rnn_reference(plan: Any, px, w, states0, pv, lengths):
    """Plain-jnp `lax.scan` definition of `persistent_rnn` (same arguments and results)."""
    fam, Hp = plan.family, plan.Hp

    def body(state, inputs):
        px_t, t = inputs  # (Bp, K·Hp), ()
        h = state[0]
        if plan.compute_dtype is not None:
            h = h.astype(plan.compute_dtype)
        hw = jnp.dot(h, w, preferred_element_type=jnp.float32)  # (Bp, K·Hp)

        def split(z):  # (Bp, K·Hp) -> K x (Bp, Hp)
            return [z[:, k * Hp : (k + 1) * Hp] for k in range(fam.gates)]

        vecs = [jnp.broadcast_to(v[None], state[0].shape) for v in pv[: fam.n_params]]
        new = fam.pointwise(split(px_t), split(hw), list(state), vecs)
        valid = (t < lengths)[:, None]  # (Bp, 1)
        kept = tuple(jnp.where(valid, n, o) for n, o in zip(new, state, strict=True))
        return kept, kept[0]

    final, hseq = jax.lax.scan(body, tuple(states0), (px, jnp.arange(px.shape[0])))
    return hseq, tuple(final[1:])


# ---------------------------------------------------------------------------------------------
# The backend: layout, padding and checks around `persistent_rnn`.
# ---------------------------------------------------------------------------------------------


def _platform() -> str:
    return jax.devices()[0].platform


def pad_gates(x: Array, K: int, H: int, Hp: int) -> Array:
    """(..., K·H) -> (..., K·Hp), padding each gate block with zeros."""
    if Hp == H:
        return x
    x = x.reshape(*x.shape[:-1], K, H)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, Hp - H)])
    return x.reshape(*x.shape[:-2], K * Hp)


def _num_sms(platform: str) -> int | None:
    if platform != "gpu":
        return None
    return getattr(jax.devices()[0], "core_count", None) or FALLBACK_SMS  # one program per SM


def placement(
    name: str, interpret: bool | None, device: str, kernels: str, maker: str
) -> tuple[Callable[[str], bool], Callable[[str], Support]]:
    """Where a kernel pair runs: ``(use_interpret(platform), runs_on(platform))``.

    Args:
        name: the backend's name (in messages).
        interpret: run through Pallas's interpreter; None = automatically on CPU.
        device: the platform the compiled kernels are for ("gpu", "tpu").
        kernels: what they are, for the refusal ("GPU (Triton)").
        maker: the factory that takes ``interpret=True`` (named in the refusal).
    """

    def use_interpret(platform: str) -> bool:
        return platform == "cpu" if interpret is None else interpret

    def runs_on(platform: str) -> Support:
        if use_interpret(platform) or platform == device:
            return YES
        others = ", ".join(f"{b!r}" for b in OTHER_DEVICES[device])
        return no(
            f"backend={name!r} has {kernels} kernels only, not {platform!r}: use {others} "
            f"there, or {maker}(interpret=True)"
        )

    return use_interpret, runs_on


PlanFn = Callable[[Family, int, int, int, Any, str], Any]
"""``(family, T, B, H, compute_dtype, platform) -> plan or reason``: a kernel's geometry."""


def make_persistent_backend(
    *,
    name: str,
    kernels: KernelPair,
    plan_fn: PlanFn,
    runs_on: Callable[[str], Support],
    family_fn: Callable[[Cell, Any], tuple[Family, list[Array]]] = family_of,
    cell_check: Callable[[Cell, str], Support] = structured_for_pallas,
    description: str,
) -> Backend:
    """A `Backend` around a persistent kernel pair: the checks, layout and padding they share.

    The kernels see padded, time-major, batch-flat arrays: px (T, Bp, K·Hp) with each gate
    block padded from H to Hp units, W (Hp, K·Hp), the carry leaves (Bp, Hp), the per-unit
    vectors (max(P, 1), Hp) and lengths (Bp,) (padded rows have length 0 and never run).

    Args:
        name: the backend's name (in messages).
        kernels: the forward and backward launches (`persistent_rnn`).
        plan_fn: the launch geometry, or the reason (a sentence) why there is none; pure.
        runs_on: ``platform -> Support``: where the kernels (or their interpreter) run.
        family_fn: ``(cell, params) -> (Family, unit vectors)``: how the kernels see the cell
            (default: derived from its structure).
        cell_check: ``(cell, name) -> Support``: which cells ``family_fn`` covers.
        description: one line for the backend table.
    """

    def supports(cell: Cell, problem: Problem) -> Support:
        ok = cell_check(cell, name)
        if not ok:
            return ok
        if problem.remat:
            return no(
                f"backend={name!r} always stores its residuals; remat=True is 'scan' (or "
                "unroll(..., chunk=k, remat=True))"
            )
        if problem.dtype != jnp.float32:
            return no(f"backend={name!r} keeps float32 carries, got {problem.dtype}")
        where = runs_on(problem.platform)
        if not where:
            return where
        s = cell.structure
        assert s is not None
        shape_only = Family(cell.name, s.gates, 1, 0, True, lambda *a: [])
        plan = plan_fn(
            shape_only,
            problem.steps,
            problem.batch,
            cell.hidden_size,
            s.compute_dtype,
            problem.platform,
        )
        return no(plan) if isinstance(plan, str) else YES

    def run(cell, params, px, carry, lengths, *, unroll=1, remat=False):
        del unroll, remat  # the kernel owns its loop; remat is refused by supports
        family, vecs = family_fn(cell, params)
        s = cell.structure
        assert s is not None
        T, H, K = px.shape[0], cell.hidden_size, family.gates
        batch = px.shape[1:-1]
        B = math.prod(batch)
        cd = s.compute_dtype
        plan = plan_fn(family, T, B, H, cd, _platform())
        if isinstance(plan, str):
            raise ValueError(plan)
        Bp, Hp = plan.Bp, plan.Hp

        def pad_rows(x):  # (B, ...) -> (Bp, ...)
            return jnp.pad(x, [(0, Bp - B)] + [(0, 0)] * (x.ndim - 1))

        px_p = pad_gates(px.reshape(T, B, K * H), K, H, Hp)  # (T, B, K·Hp)
        px_p = jnp.pad(px_p, [(0, 0), (0, Bp - B), (0, 0)])  # (T, Bp, K·Hp)
        w = jnp.pad(s.recurrent_weights(params), [(0, Hp - H), (0, 0)])  # (Hp, K·H)
        w = pad_gates(w, K, H, Hp).astype(cd or jnp.float32)  # (Hp, K·Hp)
        leaves, treedef = jax.tree.flatten(carry)
        states0 = tuple(
            pad_rows(jnp.pad(leaf.reshape(B, H), [(0, 0), (0, Hp - H)])) for leaf in leaves
        )  # S x (Bp, Hp)
        pv = jnp.stack(vecs).astype(jnp.float32) if vecs else jnp.zeros((1, H), jnp.float32)
        pv = jnp.pad(pv, [(0, 0), (0, Hp - H)])  # (P, Hp)
        if lengths is None:
            lens = jnp.full((B,), T, jnp.int32)
        else:
            lens = lengths.reshape(B).astype(jnp.int32)
        lens = pad_rows(lens)  # (Bp,), padded rows never run

        hseq, finals = persistent_rnn(kernels, plan, px_p, w, states0, pv, lens)
        ys = hseq
        if lengths is not None:
            ys = jnp.where((jnp.arange(T)[:, None] < lens[None, :])[..., None], hseq, 0.0)
        ys = ys[:, :B, :H].reshape(T, *batch, H)  # (T, *batch, H)
        new = [hseq[-1], *finals]
        new = [leaf[:B, :H].reshape(*batch, H) for leaf in new]
        return jax.tree.unflatten(treedef, new), ys

    return Backend(name, run, supports, description)


def make_pallas_backend(
    *,
    name: str = "pallas",
    family_fn: Callable[[Cell, Any], tuple[Family, list[Array]]] = family_of,
    cell_check: Callable[[Cell, str], Support] = structured_for_pallas,
    interpret: bool | None = None,
    block_batch: int | None = None,
    slice_size: int = SLICE,
    num_warps: int | None = None,
    description: str = "persistent Pallas kernel, W on chip, derived from the cell's pointwise",
) -> Backend:
    """Builds the Triton persistent-kernel `Backend` with explicit options (tuning and tests).

    Args:
        name: the backend's name (in messages).
        family_fn: ``(cell, params) -> (Family, unit vectors)``: how the kernels see the cell
            (default: derived from its structure).
        cell_check: ``(cell, name) -> Support``: which cells ``family_fn`` covers.
        interpret: run through the Pallas interpreter; None = automatically on CPU.
        block_batch, slice_size, num_warps: see `plan_or_reason`.
        description: one line for the backend table.
    """

    use_interpret, runs_on = placement(
        name, interpret, "gpu", "GPU (Triton)", "make_pallas_backend"
    )

    def plan_fn(family, T, B, H, compute_dtype, platform):
        return plan_or_reason(
            family,
            T,
            B,
            H,
            compute_dtype,
            interpret=use_interpret(platform),
            num_sms=_num_sms(platform),
            block_batch=block_batch,
            slice_size=slice_size,
            num_warps=num_warps,
        )

    return make_persistent_backend(
        name=name,
        kernels=TRITON,
        plan_fn=plan_fn,
        runs_on=runs_on,
        family_fn=family_fn,
        cell_check=cell_check,
        description=description,
    )


PALLAS = make_pallas_backend()
