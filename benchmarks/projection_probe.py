"""The input projection x U + b and its gradient: rnnjax's `affine` against the plain line.

Times value and gradient (with respect to U, b and x) of sum((x_tm U + b)²) at the LSTM S
shape's projection — x (B, T, D) = (32, 100, 128) swapped to time-major, U (128, 1024) — for
the plain expression under autodiff and for `rnnjax.cells.base.affine` (one GEMM on CPU),
calls alternated, medians of 20 after warm-up::

    python benchmarks/projection_probe.py
    python benchmarks/projection_probe.py --transposes   # the two forms of affine's gradient

``--transposes`` times the same value and gradient for D = 64 ... 512 input features (B, T
= 32, 100; 1024 outputs) with the gradient's [x, 1]ᵀ d read through a transposed copy of [x,
1] and read in place by the matmul (`rnnjax.cells.base.TRANSPOSED_COPY_BELOW` picks one).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from rnnjax.cells import base
from rnnjax.cells.base import affine

ROUNDS = 20


def plain(x, U, b):
    return x @ U + b


def step(project):
    """jit(value_and_grad) of sum(px²) with respect to U, b and x, px time-major."""

    def loss(U, b, x):
        px = project(jnp.swapaxes(x, 0, 1), U, b)  # (T, B, 4H)
        return jnp.sum(px * px)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def medians(fns: dict, args) -> dict[str, float]:
    """Milliseconds per call of each function, calls alternated, medians of ROUNDS."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(3):
            jax.block_until_ready(fn(*args))
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def compiled_with_threshold(threshold: int, args):
    """`step(affine)` traced and compiled with ``TRANSPOSED_COPY_BELOW = threshold`` (JAX's
    trace caches are cleared first: they would serve the other form's derivative)."""
    saved = base.TRANSPOSED_COPY_BELOW
    base.TRANSPOSED_COPY_BELOW = threshold
    jax.clear_caches()
    try:
        return step(affine).lower(*args).compile()
    finally:
        base.TRANSPOSED_COPY_BELOW = saved


def transposes() -> None:
    key = jax.random.key(0)
    print("D     transposed copy   in place   (ms, value and gradient)")
    for D in (64, 128, 192, 256, 512):
        args = (
            jax.random.normal(key, (D, 1024)),  # U
            jax.random.normal(key, (1024,)),  # b
            jax.random.normal(key, (32, 100, D)),  # x
        )
        fns = {
            "copy": compiled_with_threshold(D + 1, args),
            "in place": compiled_with_threshold(D, args),
        }
        ms = medians(fns, args)
        print(f"{D:<5d} {ms['copy']:10.2f} {ms['in place']:14.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transposes", action="store_true")
    if parser.parse_args().transposes:
        transposes()
        return
    key = jax.random.key(0)
    x = jax.random.normal(key, (32, 100, 128))  # (B, T, D)
    U = jax.random.normal(key, (128, 1024))  # (D, 4H)
    b = jax.random.normal(key, (1024,))  # (4H,)
    fns = {"plain x @ U + b": step(plain), "rnnjax affine": step(affine)}
    for name, ms in medians(fns, (U, b, x)).items():
        print(f"{name:18s} {ms:7.2f} ms")


if __name__ == "__main__":
    main()
