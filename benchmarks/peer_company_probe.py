"""Does PyTorch's step time depend on the company it keeps in the benchmark's process?

`bench_speed.py` times every library in one process, interleaved round-robin. This probe
times PyTorch's training step (default threads) in phases that alternate what runs between
its calls: nothing ("alone"), rnnjax's step only ("rnnjax"), or rnnjax and every JAX peer of
the benchmark ("all", as in `bench_speed.py`). Each phase is ``--calls`` rounds of
`bench_speed.time_interleaved`: in a round every workload of the phase runs once untimed and
once timed, PyTorch last. Phases cycle alone, rnnjax, all, ... so that a drift in the
machine's speed reaches each kind alike::

    python benchmarks/peer_company_probe.py                     # LSTM, shape S
    python benchmarks/peer_company_probe.py --shape L --cycles 2

Prints each phase's medians and, per kind of phase, the median over its phases of PyTorch's
step and of rnnjax / PyTorch.
"""

from __future__ import annotations

import argparse
import os
import statistics

import competitors as comp
from bench_speed import time_interleaved

from rnnjax import allocator

PEERS = {
    "lstm": ("flax.linen:OptimizedLSTMCell", "flax.nnx", "haiku", "equinox"),
    "gru": ("flax.linen:GRUCell", "flax.nnx", "haiku", "equinox"),
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=tuple(PEERS))
    parser.add_argument("--shape", default="S", help="a name of competitors.SHAPES or B,T,D,H")
    parser.add_argument("--cycles", type=int, default=3, help="alone, rnnjax, all: this often")
    parser.add_argument("--calls", type=int, default=10, help="rounds per phase")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(",")) if "," in args.shape else args.shape
    if not comp._installed("torch"):
        raise SystemExit("peer_company_probe.py times PyTorch: install the bench extra")
    allocator.keep_freed_memory()  # as bench_speed.py
    torch_step = comp.make_train_step("torch", args.cell, shape)
    ours = comp.make_train_step("rnnjax:auto", args.cell, shape)
    peers = [
        comp.make_train_step(lib, args.cell, shape)
        for lib in PEERS[args.cell]
        if comp._installed(lib.split(":")[0].split(".")[0])  # haiku, equinox: the bench extra
    ]
    company = {  # what runs before PyTorch in each round of a phase
        "alone": {},
        "rnnjax": {"rnnjax": ours},
        "all": {"rnnjax": ours} | {f"peer {i}": p for i, p in enumerate(peers)},
    }
    time_interleaved(company["all"] | {"torch": torch_step}, repeats=0, warmup=3)  # warm-up
    load_start = os.getloadavg()[0]
    phases: list[tuple[str, float, float | None]] = []
    for _ in range(args.cycles):
        for kind, workloads in company.items():
            times = time_interleaved(workloads | {"torch": torch_step}, args.calls, warmup=0)
            torch_times, our_times = times["torch"], times.get("rnnjax", [])
            ours_ms = 1e3 * statistics.median(our_times) if our_times else None
            phases.append((kind, 1e3 * statistics.median(torch_times), ours_ms))
            line = f"{kind:6s} PyTorch {phases[-1][1]:7.2f} ms"
            if ours_ms is not None:
                line += f"  rnnjax {ours_ms:7.2f} ms  ratio {ours_ms / phases[-1][1]:.3f}"
            print(line, flush=True)
    report = {}
    for kind in company:
        torch_ms = statistics.median(p[1] for p in phases if p[0] == kind)
        ratios = [p[2] / p[1] for p in phases if p[0] == kind and p[2] is not None]
        report[kind] = (torch_ms, statistics.median(ratios) if ratios else None)
        ratio = f", rnnjax / PyTorch {report[kind][1]:.3f}" if ratios else ""
        print(
            f"{args.cell} {args.shape} {kind}: PyTorch {torch_ms:.2f} ms (median of phases){ratio}"
        )
    print(f"load average {load_start:.2f} -> {os.getloadavg()[0]:.2f}")
    return report


if __name__ == "__main__":
    main()
