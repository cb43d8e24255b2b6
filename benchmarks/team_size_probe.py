"""fused_cpu with a team of one thread against a team of two, alternated in ONE process.

`rnnjax.kernels.fused_cpu.team_size` reads ``$RNNJAX_CPU_THREADS`` when a step is traced, so
each variant's training step (and inference) is built with the variable set, then the
variants' calls alternate round-robin (medians of 15 calls per round, the median over the
rounds), as `compare_versions.py` does for checkouts. For choosing ``MIN_WORK_FOR_A_TEAM``::

    python benchmarks/team_size_probe.py --cases lstm:latency:train,gru:latency:train --rounds 9

A case is cell:shape:mode with shape a name of `competitors.SHAPES` or BxTxDxH.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import competitors as comp

from rnnjax import allocator


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="lstm:latency:train,gru:latency:train")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    allocator.keep_freed_memory()  # as bench_speed.py and the rnnjax command
    fns = {}
    for case in args.cases.split(","):
        cell, shape, mode = case.split(":")
        dims = tuple(int(v) for v in shape.split("x")) if "x" in shape else shape
        make = comp.make_train_step if mode == "train" else comp.make_inference
        for threads in ("1", "2"):
            os.environ["RNNJAX_CPU_THREADS"] = threads  # read while the step is traced
            fn, fn_args = make("rnnjax:fused_cpu", cell, dims)
            for _ in range(3):
                comp.block(fn(*fn_args))
            fns[(case, threads)] = (fn, fn_args)
    os.environ.pop("RNNJAX_CPU_THREADS")
    load_start = os.getloadavg()[0]
    rounds: dict = {key: [] for key in fns}
    for _ in range(args.rounds):
        for key, (fn, fn_args) in fns.items():
            times = []
            for _ in range(15):
                start = time.perf_counter()
                comp.block(fn(*fn_args))
                times.append(time.perf_counter() - start)
            rounds[key].append(statistics.median(times))
    report = {}
    for case in args.cases.split(","):
        one, two = (statistics.median(rounds[(case, t)]) for t in ("1", "2"))
        report[case] = (one, two)
        ratio = two / one
        print(f"{case}: team of 1 {1e3 * one:.2f} ms, team of 2 {1e3 * two:.2f} ms ({ratio:.3f})")
    print(f"load average {load_start:.2f} -> {os.getloadavg()[0]:.2f}")
    return report


if __name__ == "__main__":
    main()
