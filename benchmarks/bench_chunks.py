"""Time and memory of ``unroll(..., chunk=...)`` against the one-piece loop, training step.

The training step (forward + BPTT of the mean square error of all outputs) of an LSTM or GRU
at (B, T, D, H) = (32, 1000, 128, 256) — the memory row of ``bench_speed.py`` — with the
``fused`` backend in one piece, in chunks of 100 steps, in chunks with each chunk recomputed
(``remat=True``), and ``scan`` with ``remat=True`` (per-step checkpoints). Calls are
interleaved round-robin so load hits every variant alike; medians and ratios to the first,
written to ``results/cpu_chunks_<cell>.md``.

    python benchmarks/bench_chunks.py [--cell gru] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import rnnjax as rj

SHAPE = (32, 1000, 128, 256)  # (B, T, D, H)
RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = (
    ("fused", {}),
    ("fused", dict(chunk=100)),
    ("fused", dict(chunk=100, remat=True)),
    ("scan", dict(remat=True)),
    ("scan", {}),
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=("lstm", "gru"))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    B, T, D, H = SHAPE
    cell = getattr(rj, args.cell)(H)
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))  # (B, T, D)
    target = jnp.zeros((B, T, H))  # (B, T, H)
    steps, memory = [], []
    for backend, options in VARIANTS:

        def loss(p, x, backend=backend, options=options):
            return jnp.mean((rj.unroll(cell, p, x, backend=backend, **options)[1] - target) ** 2)

        step = jax.jit(jax.value_and_grad(loss)).lower(params, xs).compile()
        memory.append(step.memory_analysis().temp_size_in_bytes)
        for _ in range(2):  # warm-up
            jax.block_until_ready(step(params, xs))
        steps.append(step)
    load_start = os.getloadavg()[0]
    times: list[list[float]] = [[] for _ in VARIANTS]
    for _ in range(args.repeats):
        for i, step in enumerate(steps):
            start = time.perf_counter()
            jax.block_until_ready(step(params, xs))
            times[i].append(time.perf_counter() - start)
    base = statistics.median(times[0])
    lines = [
        f"### {args.cell}, (B, T, D, H) = {SHAPE}",
        "",
        f"`python benchmarks/bench_chunks.py --cell {args.cell}`: medians of {args.repeats} "
        f"interleaved calls on {os.cpu_count()} cores, jax {jax.__version__}; load average "
        f"{load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end.",
        "",
        "| variant | ms | / fused | temp MiB |",
        "|---|---|---|---|",
    ]
    for (backend, options), ts, mem in zip(VARIANTS, times, memory, strict=True):
        name = backend + "".join(f", {k}={v}" for k, v in options.items())
        median = statistics.median(ts)
        lines.append(f"| {name} | {median * 1e3:.0f} | {median / base:.2f} | {mem / 2**20:.0f} |")
    print("\n".join(lines))
    out = RESULTS / f"cpu_chunks_{args.cell}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
