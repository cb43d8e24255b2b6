"""The ``"pallas_mosaic_gpu"`` backend: a persistent RNN kernel for small batches on Mosaic GPU.

The Triton kernel of ``backend="pallas"`` splits the hidden units over many programs (SMs)
and exchanges h_t between them through global memory, with an atomic flag barrier per step:
that exchange is what makes it lose to cuDNN at batch 1 (B = 1, T = 1000, H = 128). This
backend is written for that latency shape, on Pallas's Mosaic GPU lowering
(``jax.experimental.pallas.mosaic_gpu``, Hopper and newer): one CTA (thread block, one SM)
per sequence holds all of W on that SM and runs the whole time loop, so the per-step exchange
stays inside the SM — shared memory and one mbarrier — and the CTAs never synchronise.

Geometry (kernels in `rnnjax.kernels.pallas_mosaic_gpu_kernels`):

* grid ``(B,)``: CTA b runs sequence b, all T steps, forward (one launch) and backward (one
  launch); lengths are its trip count.
* Pallas threads (warpgroups of 128 lanes) per CTA: Hp / 128, Hp = H rounded up to 128. Lane
  u of thread g owns hidden unit g·128 + u of every gate block, so the cell's ``pointwise``
  (forward) and its VJP (backward) are traced on (128,) vectors of the thread's units with no
  data movement between lanes.
* W stays on chip for all T steps: its first R rows in registers (K·R numbers per lane), the
  other H − R rows in shared memory (copied once by TMA). ``h_{t-1} W`` is H rank-1 updates
  (float32 FMAs on CUDA cores; h_{t-1}[i] a broadcast read of shared memory); the backward's
  ``dhw_t Wᵀ`` the same with Wᵀ.
* the exchange is h_t (forward) or dhw_t (backward) in a two-slot shared-memory buffer with one
  mbarrier arrival per thread and step; with H ≤ 128 there is a single thread.
* dW = Σ_t h_{t-1}ᵀ dhw_t is one matmul after the backward loop: the kernels are a
  `rnnjax.kernels.pallas.KernelPair` (``MOSAIC_GPU``), and ``"pallas"``'s
  `rnnjax.kernels.pallas.persistent_rnn` wires them with its ``jax.custom_vjp``;
  `rnnjax.kernels.pallas.make_persistent_backend` does the checks, layout and padding.

Limits (per CTA, i.e. per SM): W's shared-memory part plus the exchange buffers within
``SMEM_BYTES`` = 200 KiB (an H100/H200 block may use 227 KiB), at most
``register_values(threads)`` = min(128, 256 / threads) register-resident W numbers per lane, at
most ``MAX_THREADS`` = 2 warpgroups. In float32 that is LSTM and GRU H ≤ 128 (the LSTM with 30
rows of W in registers, 256 KiB of W in all) and the simple RNN H ≤ 256; a bfloat16 compute
dtype holds the LSTM's W (128 KiB) in shared memory alone. Larger H would need a thread block
cluster sharing W through distributed shared memory, which the Mosaic GPU interpreter of JAX
0.10 does not model: not done here. Any batch size runs (the CTAs are independent), but each CTA
reads W from L2 and works on one sequence: B·T steps cost what T steps do only while B ≤ the
number of SMs, and at large batch ``"pallas"`` is the throughput kernel.

Supported cells: the structured ones of ``"pallas"`` (`structured_for_pallas`), derived from
the cell's own ``pointwise`` and its ``jax.vjp`` (`rnnjax.kernels.pallas.family_of`): the
Simple RNN, every LSTM variant, the GRU with ``reset_after=True``, any such cell a user
writes; float32 carries, optionally a bfloat16 compute dtype; lengths; gradients with respect
to params, inputs and the initial carry. ``remat=True`` is refused (the kernels store their
residuals). On CPU the kernels run in the Mosaic GPU interpreter
(`jax._src.pallas.mosaic_gpu.interpret`) automatically: it simulates shared memory, the
warpgroup threads (concurrently) and the barriers, and can detect races between threads.

GPU status: the kernels lower through Mosaic GPU for CUDA (``jax.export`` on a CPU machine
accepts the LSTM, GRU and simple RNN kernels at H = 128, the shared-memory budget included)
and equal ``"scan"`` in the interpreter; they have not run on a GPU yet. The cells'
``pointwise`` are traced block by block for that (`blockwise`): Mosaic GPU has no lowering for
the concatenate with which they activate all gate blocks in one pass.

References:
    Diamos et al., "Persistent RNNs: stashing recurrent weights on-chip", ICML 2016.
    Appleyard, Kočiský & Blunsom, "Optimizing performance of recurrent neural networks on
    GPUs", 2016.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array, Cell
from rnnjax.kernels.base import Backend, Support, no
from rnnjax.kernels.pallas import (
    KernelPair,
    family_of,
    make_persistent_backend,
    placement,
    round_up,
)
from rnnjax.kernels.pallas_kernels import Family
from rnnjax.kernels.pallas_mosaic_gpu_kernels import GpuPlan, backward_call, forward_call

SMEM_BYTES = 200 * 1024  # W's shared-memory rows + exchange buffers per CTA
LANES = 128  # hidden units per Pallas thread: one warpgroup, one unit per lane
MAX_THREADS = 2  # warpgroups per CTA (H ≤ 256)
NAME = "pallas_mosaic_gpu"
MOSAIC_GPU = KernelPair(forward_call, backward_call)


def _interpret_params(detect_races: bool = False) -> Any:
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

    return InterpretGPUParams(detect_races=detect_races)


def register_values(threads: int) -> int:
    """W numbers a lane may hold in registers: half of its 255-register (or 64K / lanes) file."""
    return min(128, 65536 // (LANES * threads) // 2)


def gpu_plan_or_reason(
    family: Family,
    T: int,
    B: int,
    H: int,
    compute_dtype: Any = None,
    *,
    interpret: Any,
    lanes: int = LANES,
    register_rows: int | None = None,
    name: str = NAME,
) -> GpuPlan | str:
    """The launch geometry, or the reason (a sentence) why W cannot stay on one SM.

    Pure: reads only its arguments, so the backend's support predicate can ask it.

    Args:
        family, T, B, H: the problem (only ``family.gates`` is read for the geometry).
        compute_dtype: W's dtype on chip and the matmul operands' (None = float32).
        interpret: None on a GPU, else the Mosaic GPU interpreter's params (no limits apply).
        lanes: hidden units per Pallas thread; 128 on a GPU (smaller values let the
            interpreter run several threads at tiny H).
        register_rows: R, rows of W held in registers; None = the fewest that leave the rest
            within ``SMEM_BYTES``.
        name: the backend's name, for messages.
    """
    if lanes < 1 or (interpret is None and lanes != LANES):
        return f"backend={name!r} puts one hidden unit per lane: lanes must be {LANES}"
    K = family.gates
    Hp = round_up(H, lanes)
    threads = Hp // lanes
    itemsize = jnp.dtype(compute_dtype or jnp.float32).itemsize
    row = K * Hp * itemsize  # one row of W (of Wᵀ in the backward), bytes
    exchange = 2 * K * Hp * 4  # the backward's two slots of dhw (the larger exchange)
    if register_rows is None:
        fits = (SMEM_BYTES - exchange) // row
        register_rows = max(0, H - max(fits, 1))
    R = min(register_rows, H - 1)
    if interpret is None:
        if threads > MAX_THREADS:
            return (
                f"backend={name!r} keeps W on one SM: H={H} needs {threads} warpgroups of "
                f"{LANES} units but the limit is {MAX_THREADS}; use backend='pallas'"
            )
        smem = (H - R) * row + exchange
        in_registers = K * R  # W numbers per lane
        if in_registers > register_values(threads) or smem > SMEM_BYTES:
            return (
                f"backend={name!r} keeps W on one SM: a {family.name} with H={H} needs "
                f"{H * row // 1024} KiB of W ({K} gates x {H} x {Hp} x {itemsize} B); "
                f"{R} rows in registers ({in_registers} numbers per lane, limit "
                f"{register_values(threads)}) leave {smem // 1024} KiB of shared memory "
                f"(limit {SMEM_BYTES // 1024} KiB); use dtype=jnp.bfloat16, a smaller H, "
                f"or backend='pallas'"
            )
    return GpuPlan(family, T, B, H, Hp, lanes, R, compute_dtype, interpret)


def make_gpu_plan(*args: Any, **kwargs: Any) -> GpuPlan:
    """`gpu_plan_or_reason`, raising ValueError with the reason where there is no plan."""
    plan = gpu_plan_or_reason(*args, **kwargs)
    if isinstance(plan, str):
        raise ValueError(plan)
    return plan


# ---------------------------------------------------------------------------------------------
# The backend: `make_persistent_backend` around the Mosaic GPU kernel pair.
# ---------------------------------------------------------------------------------------------


MIN_JAX = (0, 10, 2)  # the Mosaic GPU kernel API (and interpreter) these kernels are written for
JAX_VERSION = tuple(int(part) for part in jax.__version__.split(".")[:3] if part.isdigit())


def _gpu_is_too_old(platform: str) -> str | None:
    """The reason Mosaic GPU cannot run on this GPU (before Hopper), or None."""
    if platform != "gpu":
        return None
    capability = getattr(jax.devices()[0], "compute_capability", None)
    try:
        major = int(str(capability).split(".")[0])
    except ValueError:
        return None  # unknown: let Mosaic GPU say it
    if major < 9:
        return f"needs a Hopper or newer GPU (Mosaic GPU), this one is sm_{capability}"
    return None


def make_mosaic_gpu_backend(
    *,
    name: str = NAME,
    family_fn: Callable[[Cell, Any], tuple[Family, list[Array]]] = family_of,
    interpret: Any = None,
    lanes: int = LANES,
    register_rows: int | None = None,
) -> Backend:
    """Builds the Mosaic GPU persistent-kernel `Backend` with explicit options (tests, tuning).

    Args:
        name: the backend's name (in messages).
        family_fn: ``(cell, params) -> (Family, unit vectors)``: how the kernels see the cell.
        interpret: None = the Mosaic GPU interpreter on CPU, compiled on GPU; False = never
            interpret; True or an ``InterpretGPUParams`` = always interpret (with its
            options, e.g. ``detect_races=True``).
        lanes, register_rows: see `gpu_plan_or_reason`.
    """
    use_interpret, on_platform = placement(
        name,
        None if interpret is None else bool(interpret),
        "gpu",
        "Mosaic GPU",
        "make_mosaic_gpu_backend",
    )

    def interpret_for(platform: str) -> Any:
        """The interpreter's params, or None for the compiled kernels."""
        if not use_interpret(platform):
            return None
        return _interpret_params() if interpret is None or interpret is True else interpret

    def runs_on(platform: str) -> Support:
        if JAX_VERSION < MIN_JAX:
            return no(
                f"backend={name!r} is written against the Mosaic GPU kernel API of jax >= "
                f"{'.'.join(map(str, MIN_JAX))}; this is jax {jax.__version__}"
            )
        where = on_platform(platform)
        old = None if use_interpret(platform) else _gpu_is_too_old(platform)
        if where and old:
            return no(f"backend={name!r} {old}; use backend='pallas'")
        return where

    def plan_fn(family, T, B, H, compute_dtype, platform):
        return gpu_plan_or_reason(
            family,
            T,
            B,
            H,
            compute_dtype,
            interpret=interpret_for(platform),
            lanes=lanes,
            register_rows=register_rows,
            name=name,
        )

    return make_persistent_backend(
        name=name,
        kernels=MOSAIC_GPU,
        plan_fn=plan_fn,
        runs_on=runs_on,
        family_fn=family_fn,
        description="persistent Mosaic GPU kernel for small batches: one CTA per sequence, "
        "W on its SM",
    )


PALLAS_MOSAIC_GPU = make_mosaic_gpu_backend()
