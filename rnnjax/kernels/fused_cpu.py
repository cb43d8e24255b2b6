"""The ``"fused_cpu"`` backend: the LSTM / GRU time loop as ONE XLA:CPU custom call (`jax.ffi`).

At small batch an XLA loop's time is per-iteration overhead, not arithmetic: each step runs
several thunks (matmul, element-wise fusions, output updates, loop counter) of about a
microsecond each, so B = 1 spends most of its time between kernels. This backend runs the
forward loop and the backward loop each as one C++ call (``fused_cpu.cc``), with the same
`jax.custom_vjp` structure as ``"fused"`` (`rnnjax.kernels.fused`): the forward saves the
activated gates and the incoming cell states, the backward carries only (dh, dc) and returns
d px, and dW = Σ_t h_{t-1}ᵀ dg_t is one XLA matmul after the backward call.

The C++ is compiled with the system's ``g++`` on first use into ``$RNNJAX_CACHE`` (default
``~/.cache/rnnjax``), keyed by the source's hash; where that fails, or off CPU, or for a cell
other than the plain float32 LSTM, the backend raises ValueError (so ``backend="auto"`` skips
it and uses ``"fused"``). The loop is single-threaded: it is meant for small batches.
Supported: the plain float32 LSTM and the float32 GRU with ``reset_after=True``.

The readable reference is the cell's ``recur`` under `rnnjax.kernels.scan.scan_backend`;
`rnnjax.kernels.fused_lstm` and `rnnjax.kernels.fused_gru` have the same equations in jnp.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array, Cell
from rnnjax.kernels.fused import sum_outer

SOURCE = Path(__file__).with_name("fused_cpu.cc")
KERNELS = ("RnnjaxLstmForward", "RnnjaxLstmBackward", "RnnjaxGruForward", "RnnjaxGruBackward")


def _cpu_flags() -> bytes:
    """The CPU's feature flags (Linux), so that a shared cache never serves a foreign build."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return next((line for line in f if line.startswith(b"flags")), b"")
    except OSError:
        return platform.machine().encode()


@functools.cache
def _library() -> str | None:
    """Compiles and registers the kernels once; returns an error message or None."""
    try:
        key = SOURCE.read_bytes() + _cpu_flags()  # -march=native: one build per CPU kind
        cache = Path(os.environ.get("RNNJAX_CACHE", Path.home() / ".cache" / "rnnjax"))
        cache.mkdir(parents=True, exist_ok=True)
        lib = cache / f"fused_cpu_{hashlib.sha256(key).hexdigest()[:16]}.so"
        if not lib.exists():
            tmp = lib.with_suffix(f".{os.getpid()}.tmp")
            cmd = ["g++", "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC"]
            cmd += ["-I", jax.ffi.include_dir(), str(SOURCE), "-o", str(tmp)]
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
            tmp.replace(lib)  # atomic: concurrent builders never see a partial file
        dll = ctypes.cdll.LoadLibrary(str(lib))
        for name in KERNELS:
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(dll, name)), "cpu")
    except (OSError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def check(cell: Cell) -> None:
    """Raises ValueError unless this backend can run ``cell`` here."""
    platform = jax.devices()[0].platform
    if platform != "cpu":
        raise ValueError(f"backend='fused_cpu' is an XLA:CPU kernel, not for {platform!r}")
    cfg = cell.config
    plain_lstm = cell.name == "lstm" and not (cfg["peephole"] or cfg["coupled"])
    gru = cell.name == "gru" and cfg["reset_after"]
    if not (plain_lstm or gru) or cfg.get("dtype") is not None:
        raise ValueError(
            f"backend='fused_cpu' runs the plain float32 LSTM and the float32 GRU "
            f"(reset_after=True), not the {cell.name!r} cell with config {cfg}; use "
            f"backend='fused'"
        )
    error = _library()
    if error is not None:
        raise ValueError(f"backend='fused_cpu' could not build its kernel ({error})")


def _shapes(*arrays_or_shapes):
    return tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in arrays_or_shapes)


@jax.custom_vjp
def lstm_loop(W, px, h0, c0, lengths):
    """(hT, cT, ys) of the LSTM over px (T, N, 4H) from (h0, c0); lengths int32 (N,)."""
    ys, _, _, hT, cT = _forward(W, px, h0, c0, lengths)
    return hT, cT, ys


def _forward(W, px, h0, c0, lengths):
    T, N, G = px.shape
    H = G // 4
    out = _shapes((T, N, H), (T, N, G), (T, N, H), (N, H), (N, H))
    return jax.ffi.ffi_call("RnnjaxLstmForward", out)(px, W, h0, c0, lengths)


def _loop_fwd(W, px, h0, c0, lengths):
    ys, gates, c_prev, hT, cT = _forward(W, px, h0, c0, lengths)
    return (hT, cT, ys), (W, gates, c_prev, ys, h0, lengths)


def _loop_bwd(residuals, cotangents):
    W, gates, c_prev, ys, h0, lengths = residuals
    dhT, dcT, dys = cotangents
    out = _shapes(gates.shape, h0.shape, h0.shape)
    call = jax.ffi.ffi_call("RnnjaxLstmBackward", out)
    dpx, dh0, dc0 = call(W.T, gates, c_prev, dys, dhT, dcT, lengths)
    h_prev = jnp.concatenate([h0[None], ys[:-1]], axis=0)  # (T, N, H), as in fused.py
    return sum_outer(h_prev, dpx), dpx, dh0, dc0, None  # dW: one matmul


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
    return jax.ffi.ffi_call("RnnjaxGruForward", out)(px, W, b_hn, h0, lengths)


def _gru_fwd(W, b_hn, px, h0, lengths):
    ys, saved, hT = _gru_forward(W, b_hn, px, h0, lengths)
    return (hT, ys), (W, saved, ys, h0, lengths)


def _gru_bwd(residuals, cotangents):
    W, saved, ys, h0, lengths = residuals
    dhT, dys = cotangents
    H = h0.shape[-1]
    h_prev = jnp.concatenate([h0[None], ys[:-1]], axis=0)  # (T, N, H)
    call = jax.ffi.ffi_call("RnnjaxGruBackward", _shapes((*ys.shape[:2], 3 * H), h0.shape))
    dpx, dh0 = call(W.T, saved, h_prev, dys, dhT, lengths)
    r, dn = saved[..., :H], dpx[..., 2 * H :]  # (T, N, H) each
    da = jnp.concatenate([dpx[..., : 2 * H], dn * r], axis=-1)  # (T, N, 3H)
    db_hn = jnp.sum(dn * r, axis=(0, 1))  # (H,)
    return sum_outer(h_prev, da), db_hn, dpx, dh0, None  # dW: one matmul


gru_loop.defvjp(_gru_fwd, _gru_bwd)


def fused_cpu_backend(
    cell: Cell,
    params: Any,
    px: Array,
    carry: Any,
    lengths: Array | None,
    *,
    unroll: int = 1,
    remat: bool = False,
) -> tuple[Any, Array]:
    """Backend ``"fused_cpu"`` (signature of `rnnjax.kernels.scan.scan_backend`).

    ``unroll`` and ``remat`` are ignored (there is no XLA loop). Raises ValueError where the
    kernel cannot run (see `check`).
    """
    del unroll, remat
    check(cell)
    T, batch, G = px.shape[0], px.shape[1:-1], px.shape[-1]
    N = 1
    for b in batch:
        N *= b
    H = cell.hidden_size
    leaves = [leaf.reshape(N, H) for leaf in jax.tree.leaves(carry)]  # (N, H) each
    lens = jnp.full((N,), T, jnp.int32) if lengths is None else lengths.reshape(N)
    lens = lens.astype(jnp.int32)
    px = px.reshape(T, N, G)
    if cell.name == "lstm":
        hT, cT, ys = lstm_loop(params.W, px, *leaves, lens)
        final = [hT, cT]
    else:
        hT, ys = gru_loop(params.W, params.b_hn, px, *leaves, lens)
        final = [hT]
    final = [leaf.reshape(*batch, H) for leaf in final]
    return jax.tree.unflatten(jax.tree.structure(carry), final), ys.reshape(T, *batch, H)
