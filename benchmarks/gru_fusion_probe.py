"""Probe: how XLA:CPU fuses one GRU step, and what that costs (B 32, H 256, T 100, forward).

The same step is timed three ways, the three loops' calls alternated (medians of 30):

- ``activations out``: the loop also writes r, z, n and the candidate term (as the hand-written
  fused GRU saved them for its backward); each of r, z, n then has a consumer outside the step's
  last fusion, so XLA materialises them in small fusions, one transcendental each;
- ``pre-activations out``: the loop writes z_r, z_z, px_n, hw_n (what the generic ``fused``
  backend saves), the sums being the very arrays the step activates;
- ``nothing out``: inference.

Where the step's σ, σ and tanh have no consumer outside its last fusion (inference), XLA:CPU
fuses them and the update into ONE loop fusion per step, which runs several times slower per
element than the small fusions it makes otherwise (see the profile with
``XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true`` and `jax.profiler.trace`). If the saved sums
are computed apart from the ones the step uses, XLA recomputes them inside that fusion and it
is as slow as with nothing written (which the generic backend did before it saved the step's own
blocks).

    python benchmarks/gru_fusion_probe.py
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp

N, H, T = 32, 256, 100
REPEATS = 30


def sigmoid(x):
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


def loop(saves: str):
    """A jitted GRU forward (reset_after) over px (T, N, 3H) writing ``saves`` per step."""

    def body(h, px_t, W, b_hn):
        hw = h @ W  # (N, 3H)
        z_rz = px_t[:, : 2 * H] + hw[:, : 2 * H]  # (N, 2H)
        r, z = sigmoid(z_rz[:, :H]), sigmoid(z_rz[:, H:])
        hn = hw[:, 2 * H :] + b_hn  # (N, H)
        n = jnp.tanh(px_t[:, 2 * H :] + r * hn)
        h_new = (1.0 - z) * n + z * h  # (N, H)
        if saves == "activations out":
            saved = jnp.concatenate([r, z, n, hn], axis=-1)  # (N, 4H)
        elif saves == "pre-activations out":
            saved = jnp.concatenate([z_rz, px_t[:, 2 * H :], hw[:, 2 * H :]], axis=-1)  # (N, 4H)
        else:
            saved = None
        return h_new, (h_new, saved)

    def run(h0, px, W, b_hn):
        return jax.lax.scan(lambda h, p: body(h, p, W, b_hn), h0, px)[1]

    return jax.jit(run)


def main() -> dict:
    k_w, k_x = jax.random.split(jax.random.key(0))
    W = 0.05 * jax.random.normal(k_w, (H, 3 * H))  # (H, 3H)
    px = jax.random.normal(k_x, (T, N, 3 * H))  # (T, N, 3H)
    args = (jnp.zeros((N, H)), px, W, jnp.zeros((H,)))
    loops = {s: loop(s) for s in ("activations out", "pre-activations out", "nothing out")}
    for f in loops.values():
        for _ in range(3):
            jax.block_until_ready(f(*args))
    times: dict = {s: [] for s in loops}
    load = os.getloadavg()[0]
    for _ in range(REPEATS):
        for s, f in loops.items():
            start = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[s].append(time.perf_counter() - start)
    medians = {s: statistics.median(t) for s, t in times.items()}
    for s, t in medians.items():
        print(f"{s:20s} {1e3 * t:7.2f} ms ({1e6 * t / T:.0f} us per step)")
    print(f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    return medians


if __name__ == "__main__":
    main()
