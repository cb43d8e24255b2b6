"""The input projection x U + b and its gradient: rnnjax's `affine` against the plain line.

Times value and gradient (with respect to U, b and x) of sum((x_tm U + b)²) at the LSTM S
shape's projection — x (B, T, D) = (32, 100, 128) swapped to time-major, U (128, 1024) — for
the plain expression under autodiff and for `rnnjax.cells.base.affine` (one GEMM on CPU),
calls alternated, medians of 20 after warm-up::

    python benchmarks/projection_probe.py
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from rnnjax.cells.base import affine

ROUNDS = 20


def plain(x, U, b):
    return x @ U + b


def main() -> None:
    key = jax.random.key(0)
    x = jax.random.normal(key, (32, 100, 128))  # (B, T, D)
    U = jax.random.normal(key, (128, 1024))  # (D, 4H)
    b = jax.random.normal(key, (1024,))  # (4H,)

    def step(project):
        def loss(U, b, x):
            px = project(jnp.swapaxes(x, 0, 1), U, b)  # (T, B, 4H)
            return jnp.sum(px * px)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

    fns = {"plain x @ U + b": step(plain), "rnnjax affine": step(affine)}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(3):
            jax.block_until_ready(fn(U, b, x))
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(U, b, x))
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        print(f"{name:18s} {1e3 * statistics.median(ts):7.2f} ms")


if __name__ == "__main__":
    main()
