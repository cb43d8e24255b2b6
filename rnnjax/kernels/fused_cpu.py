"""The ``"fused_cpu"`` backend: the LSTM / GRU time loop as ONE XLA:CPU custom call (`jax.ffi`).

An XLA loop pays per-iteration overhead (several thunks per step, about a microsecond each)
and runs the gate maths inside the loop as small fusions several times slower per element
than over a whole array. This backend runs the forward loop and the backward loop each as one
C++ call (``fused_cpu.cc``), with the same `jax.custom_vjp` structure as ``"fused"``
(`rnnjax.kernels.fused`): the forward saves the activated gates and the incoming cell states,
the backward carries only (dh, dc) and returns d px — the LSTM's also each h_t, recomputed as
the forward computed it and written one step on, after h0, as the h_{t-1} of step t, so that
its outputs are not kept for the backward (the GRU's step reads h_{t-1}, and keeps them) —
and dW = Σ_t h_{t-1}ᵀ dg_t is one XLA matmul after the backward call
(`rnnjax.kernels.fused.sum_outer`, as in ``"fused"``). Each step's (N, H) x (H, K·H) matmul
is register-blocked over a copy of W packed in column panels; at large batch a team of
threads splits the hidden units (`team_size`: one barrier per step; each thread on its own
CPU while the loop runs), at small batch and width one thread runs the loop.

It is a hand-written *specialisation*, kept because ``make bench`` measures it faster than the
generic ``"fused"`` loop at every measured batch (``benchmarks/results/cpu_speed.md``) — except
the LSTM's inference with one thread (small batch), which runs the generic XLA loop: it saves
nothing and is faster there (`lstm_loop`). It runs exactly two cells — the plain LSTM
(`rnnjax.cells.lstm.LSTMConfig` without peepholes or coupling) and the GRU with
``reset_after=True`` — in float32, and the tests check it against the generic ``"fused"``
backend and ``"scan"``, with one thread and with teams of 2 and 3. The equations of
``fused_cpu.cc`` restate those of `rnnjax.cells.lstm.lstm_pointwise` and
`rnnjax.cells.gru.gru_pointwise`.

Building: the C++ is compiled with the system's ``g++`` by `build` — explicitly, never inside
a trace — into ``$RNNJAX_CACHE`` (`rnnjax.kernels.native`); ``make`` builds it when it installs
the package (``python -m rnnjax.kernels.build``). Until it is built, `supports` answers no
(with the reason) and ``backend="auto"`` uses ``"fused"``. Under `jax.vmap` the call runs
once per mapped example (``vmap_method="sequential"``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.cells.base import Cell, LSTMCarry
from rnnjax.cells.gru import GRUConfig
from rnnjax.cells.lstm import LSTMConfig
from rnnjax.kernels.base import YES, Backend, Problem, Support, no
from rnnjax.kernels.fused import forward_loop, sum_outer
from rnnjax.kernels.native import NativeLibrary

SOURCE = Path(__file__).with_name("fused_cpu.cc")
KERNELS = (
    "RnnjaxLstmForward",
    "RnnjaxLstmBackward",
    "RnnjaxGruForward",
    "RnnjaxGruBackward",
)


LIBRARY = NativeLibrary(SOURCE, KERNELS)


def library_path() -> Path:
    """Where the compiled kernel lives for this source and this CPU."""
    return LIBRARY.path()


def build() -> Path:
    """Compiles the kernel with ``g++`` if it is not built yet; returns the library's path.

    Call it before tracing (``make`` does, at install). Raises RuntimeError with the
    compiler's message where the build fails.
    """
    return LIBRARY.build()


def _register() -> None:
    """Loads the built library and registers its FFI targets (once; no compilation)."""
    LIBRARY.register()


def _specialised(cell: Cell) -> str | None:
    """ "lstm" / "gru" if the cell is one the C++ loop implements, else None."""
    cfg = cell.config
    if isinstance(cfg, LSTMConfig) and not (cfg.peephole or cfg.coupled) and cfg.dtype is None:
        return "lstm"
    if isinstance(cfg, GRUConfig) and cfg.reset_after and cfg.dtype is None:
        return "gru"
    return None


def supports(cell: Cell, problem: Problem) -> Support:
    """The plain float32 LSTM and GRU (reset_after) on CPU, once the kernel is built."""
    if problem.platform != "cpu":
        return no(f"backend='fused_cpu' is an XLA:CPU kernel, not for {problem.platform!r}")
    if _specialised(cell) is None:
        return no(
            "backend='fused_cpu' runs the plain LSTM and the GRU with reset_after=True "
            f"(no compute dtype), not this {cell.name!r} cell ({cell.config}); use 'fused'"
        )
    if problem.dtype != jnp.float32:
        return no(f"backend='fused_cpu' is float32 only, got carry dtype {problem.dtype}")
    if problem.remat:
        return no(
            "backend='fused_cpu' keeps gates and cell states; remat=True is 'scan' (or "
            "unroll(..., chunk=k, remat=True))"
        )
    if not library_path().exists():
        return no(
            "backend='fused_cpu' is not built: run rnnjax.kernels.fused_cpu.build() (or "
            "`python -m rnnjax.kernels.build`) before tracing"
        )
    return YES


# A team of threads pays a barrier per step (and the exchange of h); it pays back where a
# step's matmul is large (batch x hidden x hidden, a quarter of the LSTM's, from
# MIN_WORK_FOR_A_TEAM) or where W is too large for one core to stream every step (from
# MIN_HIDDEN_FOR_A_TEAM units, W = 4H² floats: 256 KB at 128). Measured on the 2-core machine
# with the team's threads on their own CPUs (`benchmarks/team_size_probe.py`, training step,
# team of two / one): H = 128 at B = 1, 4, 16 0.87-0.91; H = 96 and 64 at B = 1 1.01, H = 64 at
# B = 4 1.13; two faster at B = 8 and 32 with H = 256.
MIN_WORK_FOR_A_TEAM = 2**19
MIN_HIDDEN_FOR_A_TEAM = 128


def team_size(batch: int, hidden: int) -> int:
    """Threads for the C++ loop at this (flattened) batch and hidden size.

    ``$RNNJAX_CPU_THREADS`` if set, else the CPUs this process may run on; 1 where a step's
    matmul (batch x hidden x 4 hidden) is too small, and W too, to pay for a barrier per step.
    """
    small = batch * hidden * hidden < MIN_WORK_FOR_A_TEAM and hidden < MIN_HIDDEN_FOR_A_TEAM
    if not os.environ.get("RNNJAX_CPU_THREADS") and small:
        return 1
    return cpu_threads()


def cpu_threads() -> int:
    """``$RNNJAX_CPU_THREADS`` if set, else the CPUs this process may run on."""
    env = os.environ.get("RNNJAX_CPU_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _call(name: str, out, threads: int):
    call = jax.ffi.ffi_call(name, out, vmap_method="sequential")
    return functools.partial(call, threads=np.int64(threads))


def _shapes(*arrays_or_shapes):
    return tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in arrays_or_shapes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def lstm_loop(structure, W, px, h0, c0, lengths):
    """(hT, cT, ys) of the LSTM over px (T, N, 4H) from (h0, c0); lengths None or int32 (N,).

    Undifferentiated (inference) with a team of one thread (small batch and width), the loop is the
    generic XLA one of ``"fused"`` (`rnnjax.kernels.fused.forward_loop`, nothing saved),
    faster there than the C++ forward, which also writes the gates for the backward; with a
    team, and whenever differentiated, the loops are C++.
    """
    if team_size(*h0.shape) == 1:
        treedef = jax.tree.structure(LSTMCarry(h0, c0))
        (hT, cT), ys, _ = forward_loop(structure, treedef, 1, W, (), px, (h0, c0), lengths, False)
        return hT, cT, ys
    ys, _, _, hT, cT = _forward(W, px, h0, c0, _every_step(lengths, px))
    return hT, cT, ys


def _every_step(lengths, px):
    """``lengths``, or all T steps for each of the N sequences of px (T, N, G) where None."""
    return jnp.full(px.shape[1:2], px.shape[0], jnp.int32) if lengths is None else lengths


def _forward(W, px, h0, c0, lengths):
    T, N, G = px.shape
    H = G // 4
    out = _shapes((T, N, H), (T, N, G), (T, N, H), (N, H), (N, H))
    return _call("RnnjaxLstmForward", out, team_size(N, H))(px, W, h0, c0, lengths)


def _loop_fwd(structure, W, px, h0, c0, lengths):
    del structure  # the C++ loop restates it
    lengths = _every_step(lengths, px)  # (N,)
    ys, gates, c_prev, hT, cT = _forward(W, px, h0, c0, lengths)
    # not ys: the backward recomputes h_t = o_t tanh(c_t), which it evaluates anyway (inside
    # `unroll(..., chunk=k)`'s scan a kept ys would be a second copy of the stacked outputs)
    return (hT, cT, ys), (W, gates, c_prev, h0, lengths)


def _loop_bwd(structure, residuals, cotangents):
    W, gates, c_prev, h0, lengths = residuals
    dhT, dcT, dys = cotangents
    out = _shapes(gates.shape, h0.shape, h0.shape, dys.shape)
    call = _call("RnnjaxLstmBackward", out, team_size(*h0.shape))
    dpx, dh0, dc0, h_prev = call(W, gates, c_prev, dys, dhT, dcT, lengths, h0)
    return sum_outer(h_prev, dpx), dpx, dh0, dc0, None  # dW = Σ_t h_{t-1}ᵀ dpx_t


lstm_loop.defvjp(_loop_fwd, _loop_bwd)


@jax.custom_vjp
def gru_loop(W, b_hn, px, h0, lengths):
    """(hT, ys) of the GRU (reset_after) over px (T, N, 3H) from h0; lengths int32 (N,)."""
    ys, _, hT = _gru_forward(W, b_hn, px, h0, lengths)
    return hT, ys


def _gru_forward(W, b_hn, px, h0, lengths):
    T, N, G = px.shape
    H = G // 3
    out = _shapes((T, N, H), (T, N, 4 * H), (N, H))
    return _call("RnnjaxGruForward", out, team_size(N, H))(px, W, b_hn, h0, lengths)


def _gru_fwd(W, b_hn, px, h0, lengths):
    ys, saved, hT = _gru_forward(W, b_hn, px, h0, lengths)
    return (hT, ys), (W, saved, ys, h0, lengths)


def _gru_bwd(residuals, cotangents):
    W, saved, ys, h0, lengths = residuals
    dhT, dys = cotangents
    H = h0.shape[-1]
    h_prev = jnp.concatenate([h0[None], ys[:-1]], axis=0)  # (T, N, H)
    out = _shapes((*ys.shape[:2], 3 * H), (*ys.shape[:2], 3 * H), h0.shape)
    dpx, da, dh0 = _call("RnnjaxGruBackward", out, team_size(*h0.shape))(
        W, saved, h_prev, dys, dhT, lengths
    )  # da = d(h W + [0, 0, b_hn]) = [dr, dz, dn r]: dpx but for the candidate's block
    db_hn = jnp.sum(da[..., 2 * H :], axis=(0, 1))  # (H,)
    return sum_outer(h_prev, da), db_hn, dpx, dh0, None  # dW = Σ_t h_{t-1}ᵀ da_t


gru_loop.defvjp(_gru_fwd, _gru_bwd)


def fused_cpu_backend(cell, params, px, carry, lengths, *, unroll=1, remat=False):  # RunFn
    """Backend ``"fused_cpu"`` (signature of `rnnjax.kernels.base.RunFn`).

    ``unroll`` is ignored (there is no XLA loop); ``remat`` is refused by `supports`.
    """
    del unroll, remat
    _register()
    T, batch, G = px.shape[0], px.shape[1:-1], px.shape[-1]
    N = 1
    for b in batch:
        N *= b
    H = cell.hidden_size
    leaves = [leaf.reshape(N, H) for leaf in jax.tree.leaves(carry)]  # (N, H) each
    lens = jnp.full((N,), T, jnp.int32) if lengths is None else lengths.reshape(N)
    lens = lens.astype(jnp.int32)
    px = px.reshape(T, N, G)
    f32 = jnp.float32  # the kernel's dtype; params of another dtype are cast (and cast back)
    W = params.W.astype(f32)
    if _specialised(cell) == "lstm":
        hT, cT, ys = lstm_loop(cell.structure, W, px, *leaves, None if lengths is None else lens)
        final = [hT, cT]
    else:
        hT, ys = gru_loop(W, params.b_hn.astype(f32), px, *leaves, lens)
        final = [hT]
    final = [leaf.reshape(*batch, H) for leaf in final]
    return jax.tree.unflatten(jax.tree.structure(carry), final), ys.reshape(T, *batch, H)


FUSED_CPU = Backend(
    "fused_cpu",
    fused_cpu_backend,
    supports,
    "the plain LSTM / GRU loop as one C++ XLA:CPU call (threaded at large batch)",
)
