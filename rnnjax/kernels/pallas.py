"""The ``"pallas"`` backend: a persistent RNN kernel with the recurrent weights on chip.

The whole time loop runs inside one Pallas launch (Diamos et al. 2016); so does the backward
loop. Each program of the launch loads its columns of W once and holds them on chip (as
register values) for all T steps; the programs exchange h_t (forward) and their shares of
dh_{t-1} (backward) through global memory with one barrier per step, and dW = Σ_t h_{t-1}ᵀ
dhw_t is a single matmul after the backward loop (Appleyard et al. 2016). The kernels are in
`rnnjax.kernels.pallas_kernels`; this module holds the plan (what fits on chip), the
`jax.custom_vjp` that wires them, and `persistent_rnn_reference`, the plain-jnp definition
they must equal.

Supported: ``lstm`` (plain, peephole, coupled), ``gru`` (reset_after=True), ``simple_rnn``
(tanh / relu / sigmoid / identity), float32 or a bfloat16 compute dtype, lengths, gradients
with respect to params, inputs and the initial carry. Reverse and bidirectional come from the
driver. ``unroll`` is ignored (the kernel's loop is its own); ``remat`` changes nothing: the
kernel always stores the recurrent pre-activations and carries (like cuDNN's reserve space).
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
TPU (no Mosaic-TPU kernel here), the backend raises ValueError; it never falls back silently.
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
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells.base import ACTIVATIONS, Array, Cell
from rnnjax.kernels.pallas_kernels import Family, Plan, backward_call, forward_call

RESIDENT_BYTES = 128 * 1024  # W block per program (half an H100 SM's register file)
SLICE = 16  # hidden units per program (Triton's smallest dot width)
BLOCKS = (16, 32, 64, 128)  # batch rows per program, smallest first
FALLBACK_SMS = 64  # grid limit when the device does not report its SM count


def cell_family(cell: Cell, params: Any) -> tuple[Family, list[Array]]:
    """The kernel arithmetic of ``cell`` and its per-unit parameter vectors (each (H,)).

    Raises:
        ValueError: for a cell the kernels do not implement.
    """
    cfg = cell.config
    if cell.name == "lstm":
        peep, coupled = bool(cfg.get("peephole")), bool(cfg.get("coupled"))
        vecs = [v for v in (params.p_i, params.p_f, params.p_o) if v is not None] if peep else []
        family = Family("lstm", 3 if coupled else 4, 2, len(vecs), True, peep, coupled)
        return family, vecs
    if cell.name == "gru":
        if not cfg.get("reset_after", True):
            raise ValueError(
                "backend='pallas' implements the GRU with reset_after=True only (PyTorch / "
                "cuDNN form); got reset_after=False: use backend='scan'"
            )
        return Family("gru", 3, 1, 1, False), [params.b_hn]
    if cell.name == "simple_rnn":
        act = cfg.get("activation")
        if act not in ACTIVATIONS:
            raise ValueError(
                f"backend='pallas' needs a named activation {tuple(ACTIVATIONS)}, got {act=}"
            )
        return Family("simple_rnn", 1, 1, 0, True, activation=act), []
    raise ValueError(
        f"backend='pallas' supports the lstm, gru and simple_rnn cells, not {cell.name!r}"
    )


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def make_plan(
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
) -> Plan:
    """Chooses the launch geometry, or raises ValueError where W cannot stay on chip.

    Args:
        family, T, B, H: the problem.
        compute_dtype: matmul operand dtype (None = float32).
        interpret: Pallas interpret mode (no residency limits apply there).
        num_sms: streaming multiprocessors of the GPU (the grid must not exceed it).
        block_batch: batch rows per program; None picks the smallest that fits the grid.
        slice_size: hidden units per program (a multiple of 16).
        num_warps: Triton warps; None picks 4, or 8 when W's block exceeds 32 KiB.
    """
    if slice_size < 16 or slice_size % 16:
        raise ValueError(f"slice_size must be a positive multiple of 16, got {slice_size=}")
    Hp = _round_up(H, slice_size)
    kc = math.gcd(Hp, 128)
    itemsize = jnp.dtype(compute_dtype or jnp.float32).itemsize
    gates = 1 << (family.gates - 1).bit_length()  # GRU's 3 gates are held as 4 (Triton)
    resident = Hp * gates * slice_size * itemsize
    if resident > RESIDENT_BYTES and not interpret:
        raise ValueError(
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
        raise ValueError(
            f"backend='pallas' runs all programs at once: H={H} needs {n_slices} slices and "
            f"B={B} needs {-(-B // choices[-1])} blocks of {choices[-1]} rows, "
            f"{n_prog} programs > {limit} SMs; split the batch or use backend='scan'"
        )
    if bB < 16 or bB & (bB - 1):
        raise ValueError(f"block_batch must be a power of two >= 16, got {bB}")
    if num_warps is None:
        num_warps = 4 if resident <= 32 * 1024 else 8
    return Plan(
        family, T, _round_up(B, bB), Hp, bB, slice_size, kc, compute_dtype, interpret, num_warps
    )


# ---------------------------------------------------------------------------------------------
# The custom_vjp: padded, time-major, batch-flat arrays in and out.
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def persistent_rnn(plan: Plan, px, w, states0, pv, lengths):
    """The kernel pair as one differentiable function.

    Args:
        plan: the launch geometry.
        px: (T, Bp, K·Hp) projected inputs, gate-major columns.
        w: (Hp, K·Hp) recurrent weights in the compute dtype.
        states0: tuple of S initial carry leaves (Bp, Hp), h first.
        pv: (max(P, 1), Hp) per-unit parameter vectors.
        lengths: (Bp,) int32 valid steps.

    Returns:
        ``(hseq, finals)``: hseq (T, Bp, Hp) the carry's h after each step (frozen past each
        length) and finals the other carry leaves after the last step (S - 1 of (Bp, Hp)).
    """
    hseq, finals, _, _ = forward_call(plan, px, w, states0, pv, lengths, save=False)
    return hseq, tuple(finals)


def _persistent_fwd(plan, px, w, states0, pv, lengths):
    hseq, finals, hw, seqs = forward_call(plan, px, w, states0, pv, lengths, save=True)
    return (hseq, tuple(finals)), (px, w, states0, pv, lengths, hseq, hw, seqs)


def _persistent_bwd(plan, res, cot):
    px, w, states0, pv, lengths, hseq, hw, seqs = res
    dhseq, dfinals = cot
    dpx, dhw, ds0, dpv = backward_call(
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


def persistent_rnn_reference(plan: Plan, px, w, states0, pv, lengths):
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
        new = tuple(jnp.where(valid, n, o) for n, o in zip(new, state, strict=True))
        return new, new[0]

    final, hseq = jax.lax.scan(body, tuple(states0), (px, jnp.arange(px.shape[0])))
    return hseq, tuple(final[1:])


# ---------------------------------------------------------------------------------------------
# The backend: layout, padding and checks around `persistent_rnn`.
# ---------------------------------------------------------------------------------------------


def _platform() -> str:
    return jax.devices()[0].platform


def _pad_gates(x: Array, K: int, H: int, Hp: int) -> Array:
    """(..., K·H) -> (..., K·Hp), padding each gate block with zeros."""
    if Hp == H:
        return x
    x = x.reshape(*x.shape[:-1], K, H)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, Hp - H)])
    return x.reshape(*x.shape[:-2], K * Hp)


def make_pallas_backend(
    *,
    interpret: bool | None = None,
    block_batch: int | None = None,
    slice_size: int = SLICE,
    num_warps: int | None = None,
):
    """Builds a ``"pallas"`` backend with explicit kernel options (for tuning and tests).

    Args:
        interpret: run through the Pallas interpreter; None = automatically on CPU.
        block_batch, slice_size, num_warps: see `make_plan`.
    """

    def backend(cell, params, px, carry, lengths, *, unroll=1, remat=False):
        del unroll, remat  # the kernel owns its loop and always keeps its residuals
        family, vecs = cell_family(cell, params)
        platform = _platform()
        use_interpret = platform == "cpu" if interpret is None else interpret
        if not use_interpret and platform != "gpu":
            raise ValueError(
                f"backend='pallas' has GPU (Triton) kernels only, not {platform!r}: use "
                f"backend='scan' or 'fused' there, or make_pallas_backend(interpret=True)"
            )
        T, H, K = px.shape[0], cell.hidden_size, family.gates
        batch = px.shape[1:-1]
        B = math.prod(batch)
        num_sms = None
        if platform == "gpu":  # all programs must be resident: at most one per SM
            num_sms = getattr(jax.devices()[0], "core_count", None) or FALLBACK_SMS
        cd = cell.config.get("dtype")
        plan = make_plan(
            family,
            T,
            B,
            H,
            cd,
            interpret=use_interpret,
            num_sms=num_sms,
            block_batch=block_batch,
            slice_size=slice_size,
            num_warps=num_warps,
        )
        Bp, Hp = plan.Bp, plan.Hp

        def pad_rows(x):  # (B, ...) -> (Bp, ...)
            return jnp.pad(x, [(0, Bp - B)] + [(0, 0)] * (x.ndim - 1))

        px_p = _pad_gates(px.reshape(T, B, K * H), K, H, Hp)  # (T, B, K·Hp)
        px_p = jnp.pad(px_p, [(0, 0), (0, Bp - B), (0, 0)])  # (T, Bp, K·Hp)
        w = jnp.pad(params.W, [(0, Hp - H), (0, 0)])  # (Hp, K·H)
        w = _pad_gates(w, K, H, Hp).astype(cd or jnp.float32)  # (Hp, K·Hp)
        leaves, treedef = jax.tree.flatten(carry)
        states0 = tuple(
            pad_rows(jnp.pad(leaf.reshape(B, H), [(0, 0), (0, Hp - H)])) for leaf in leaves
        )  # S x (Bp, Hp)
        pv = jnp.stack(vecs) if vecs else jnp.zeros((1, H), jnp.float32)  # (P, H)
        pv = jnp.pad(pv, [(0, 0), (0, Hp - H)])  # (P, Hp)
        if lengths is None:
            lens = jnp.full((B,), T, jnp.int32)
        else:
            lens = lengths.reshape(B).astype(jnp.int32)
        lens = pad_rows(lens)  # (Bp,), padded rows never run

        hseq, finals = persistent_rnn(plan, px_p, w, states0, pv, lens)
        ys = hseq
        if lengths is not None:
            ys = jnp.where((jnp.arange(T)[:, None] < lens[None, :])[..., None], hseq, 0.0)
        ys = ys[:, :B, :H].reshape(T, *batch, H)  # (T, *batch, H)
        new = [hseq[-1], *finals]
        new = [leaf[:B, :H].reshape(*batch, H) for leaf in new]
        return jax.tree.unflatten(treedef, new), ys

    return backend


pallas_backend = make_pallas_backend()
pallas_backend.__doc__ = "The persistent-kernel backend (see `rnnjax.kernels.pallas`)."
