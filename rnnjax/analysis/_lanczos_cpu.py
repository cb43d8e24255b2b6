"""`top_singular_value`'s native twin (``lanczos_cpu.cc``) as one XLA:CPU custom call.

The readable reference is `rnnjax.analysis.norms.top_singular_value`; this call runs the same
algorithm (restarted Lanczos on MᵀM with a Ritz estimate after every step) as plain C++ loops,
where XLA pays a microsecond or two of dispatch for each of the twenty-odd tiny operations of
a Lanczos step (``benchmarks/bench_jacobian_norms.py`` measures both). `jacobian_norms` takes it
on the CPU, in float32, once the library is built (``make`` builds it: ``python -m
rnnjax.kernels.build``); elsewhere, or unbuilt, the reference runs.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.cells.base import Array
from rnnjax.kernels.native import NativeLibrary

TARGET = "RnnjaxTopSingularValue"
LIBRARY = NativeLibrary(Path(__file__).with_name("lanczos_cpu.cc"), (TARGET,))


def available(dtype) -> bool:
    """Whether the native call can serve matrices of this dtype (float32, library built)."""
    return jnp.dtype(dtype) == jnp.float32 and LIBRARY.built()


def top_singular_values(
    lanes: tuple[tuple[Array, Array, bool], ...], *, krylov: int, tol: float, max_restarts: int
) -> tuple[tuple[Array, Array], ...]:
    """`rnnjax.analysis.norms.top_singular_value` in C++ for several lanes side by side.

    Each lane is (M (..., N, N), u (..., N), right), float32, one N for all; returns (σ (...),
    u (..., N)) per lane. The lanes run at the same time on XLA's CPU thread pool (the call's
    thread takes lane 0 and whatever no pool thread has started); each lane's leading axes
    (and `jax.vmap`'s) run one after another.
    """
    LIBRARY.register()
    out = []
    for M, u, _ in lanes:
        out += [jax.ShapeDtypeStruct(M.shape[:-2], M.dtype), jax.ShapeDtypeStruct(u.shape, u.dtype)]
    call = jax.ffi.ffi_call(TARGET, out, vmap_method="broadcast_all")
    right = sum(1 << lane for lane, (_, _, on_right) in enumerate(lanes) if on_right)
    results = call(
        *(a for M, u, _ in lanes for a in (M, u)),
        krylov=np.int64(krylov),
        tol=np.float32(tol),
        max_restarts=np.int64(max_restarts),
        right=np.int64(right),
    )
    return tuple((results[2 * i], results[2 * i + 1]) for i in range(len(lanes)))


def top_singular_value(
    M: Array, u: Array, *, krylov: int, tol: float, max_restarts: int, right: bool = False
) -> tuple[Array, Array]:
    """`rnnjax.analysis.norms.top_singular_value` in C++: M (..., N, N), u (..., N) float32.

    Returns (σ (...), u (..., N)). Leading axes (and `jax.vmap`) loop inside the call.
    """
    ((sigma, u),) = top_singular_values(
        ((M, u, right),), krylov=krylov, tol=tol, max_restarts=max_restarts
    )
    return sigma, u
