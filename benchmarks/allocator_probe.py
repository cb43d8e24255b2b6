"""What glibc's malloc settings (`rnnjax.allocator.keep_freed_memory`) do to a training step.

Run with ``python benchmarks/allocator_probe.py [--rounds 2] [--calls 30]``. Times the LSTM
training step (forward + BPTT of the mean square of all outputs, float32) at shape S,
(B, T, D, H) = (32, 100, 128, 256), for rnnjax (``backend="auto"``) and PyTorch ``nn.LSTM``
(its default threads), each in a fresh interpreter with glibc's defaults and with the
settings applied, the four runs alternated over ``--rounds``. Each run reports the median
of ``--calls`` calls after five warm-up calls, and the minor page faults per call
(``ru_minflt``). Writes benchmarks/results/allocator_probe.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"
B, T, D, H = 32, 100, 128, 256

STEP = {
    "rnnjax": """
        import jax, jax.numpy as jnp, rnnjax as rj
        cell = rj.lstm(H)
        k = jax.random.key(0)
        params, x = cell.init(k, D), jax.random.normal(k, (B, T, D))
        loss = lambda p, x: jnp.mean(rj.unroll(cell, p, x, backend="auto")[1] ** 2)
        grad = jax.jit(jax.grad(loss))
        step = lambda: jax.block_until_ready(grad(params, x))
    """,
    "pytorch": """
        import torch
        torch.manual_seed(0)
        model, x = torch.nn.LSTM(D, H), torch.randn(T, B, D)
        def step():
            model.zero_grad(set_to_none=True)
            (model(x)[0] ** 2).mean().backward()
    """,
}

PROBE = """
import json, resource, sys, time
B, T, D, H = {B}, {T}, {D}, {H}
{setup}
import rnnjax.allocator
applied = rnnjax.allocator.keep_freed_memory() if sys.argv[1] == "kept" else False
for _ in range(5):
    step()
times, faults = [], []
for _ in range({calls}):
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"applied": applied, "times": times, "faults": faults}}))
"""


def run_one(lib: str, mode: str, calls: int) -> dict:
    code = PROBE.format(B=B, T=T, D=D, H=H, setup=textwrap.dedent(STEP[lib]), calls=calls)
    load = os.getloadavg()[0]
    out = subprocess.run(
        [sys.executable, "-c", code, mode], capture_output=True, text=True, check=True
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "lib": lib,
        "mode": mode,
        "applied": r["applied"],
        "median_ms": 1e3 * statistics.median(r["times"]),
        "faults_per_call": statistics.median(r["faults"]),
        "load_average": [load, os.getloadavg()[0]],
    }


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# glibc's malloc settings and the LSTM training step",
        "",
        f"`{command}`: LSTM, (B, T, D, H) = ({B}, {T}, {D}, {H}), forward + BPTT, float32; "
        "each row one fresh interpreter, median of its calls after five warm-up calls. "
        "`default`: glibc's defaults; `kept`: `rnnjax.allocator.keep_freed_memory()`.",
        "",
        "| round | library | malloc | median ms | page faults per call | load average "
        "(start → end) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['round']} | {r['lib']} | {r['mode']} | {r['median_ms']:.1f} | "
            f"{r['faults_per_call']:.0f} | {r['load_average'][0]:.1f} → "
            f"{r['load_average'][1]:.1f} |"
        )
    med = {
        (lib, mode): statistics.median(
            r["median_ms"] for r in rows if r["lib"] == lib and r["mode"] == mode
        )
        for lib in STEP
        for mode in ("default", "kept")
    }
    lines += [
        "",
        "Medians over the rounds, rnnjax / PyTorch: "
        f"both default {med['rnnjax', 'default'] / med['pytorch', 'default']:.2f}, "
        f"both kept {med['rnnjax', 'kept'] / med['pytorch', 'kept']:.2f}; "
        f"kept / default: rnnjax {med['rnnjax', 'kept'] / med['rnnjax', 'default']:.2f}, "
        f"PyTorch {med['pytorch', 'kept'] / med['pytorch', 'default']:.2f}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args(argv)
    rows = []
    for round_ in range(args.rounds):
        for mode in ("default", "kept"):
            for lib in STEP:
                row = run_one(lib, mode, args.calls) | {"round": round_ + 1}
                print(json.dumps(row), flush=True)
                rows.append(row)
    command = "python benchmarks/allocator_probe.py " + " ".join(argv or sys.argv[1:])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "allocator_probe.json").write_text(json.dumps(rows, indent=1))
    (OUT / "allocator_probe.md").write_text(markdown(rows, command.strip()))
    print((OUT / "allocator_probe.md").read_text())
    return rows


if __name__ == "__main__":
    main()
