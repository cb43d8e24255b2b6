"""Times one backend of two or more checkouts of rnnjax in ONE process, calls interleaved.

Separate processes run minutes apart see different load on a shared machine (run-to-run noise
of 10-20 % on the 2-core development CPU); here every version is imported in turn (its
modules removed from ``sys.modules`` before the next one is imported), its training step
(forward + BPTT of the mean square of all outputs) and inference jitted and warmed up, and
then the versions' calls alternate round-robin, so load hits them alike. Reports medians and
ratios to the first version.

    git worktree add /tmp/old 9cc1d38      # e.g. the hand-written fused LSTM / GRU
    python benchmarks/compare_versions.py --cell gru --shape S --backend fused \\
        old=/tmp/old new=$PWD
    python benchmarks/compare_versions.py --loops --cell lstm --shape S old=/tmp/old new=$PWD

Each version's ``fused_cpu`` library is built from its own source and its C++ calls are
registered under names prefixed with the version's name (`own_ffi_targets`). The process
keeps freed memory (`rnnjax.allocator`, as ``bench_speed.py`` does) unless
``--glibc-defaults``. The training step differentiates with respect to the inputs too.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

SHAPES = {"S": (32, 100, 128, 256), "L": (128, 50, 256, 512), "latency": (1, 1000, 64, 128)}
WARMUP = 3  # untimed calls per function after compilation


def import_version(path: str):
    """Imports the rnnjax package found under ``path``, replacing any loaded one."""
    for name in [m for m in sys.modules if m == "rnnjax" or m.startswith("rnnjax.")]:
        del sys.modules[name]
    sys.path.insert(0, path)
    try:
        module = importlib.import_module("rnnjax")
    finally:
        sys.path.pop(0)
    if not module.__file__.startswith(os.path.abspath(path)):
        raise SystemExit(f"{path}: imported {module.__file__} instead")
    return module


def own_ffi_targets(rj, name: str) -> None:
    """Registers this version's ``fused_cpu`` C++ calls under names of its own.

    Every version's library exports the same target names, and XLA refuses a second handler
    under a name already registered; prefixed with the version's name, each version's traced
    calls reach its own library.
    """
    fused_cpu = importlib.import_module("rnnjax.kernels.fused_cpu")
    if not hasattr(fused_cpu, "KERNELS"):
        return
    library = fused_cpu.build()  # this version's source, its own cached build
    dll = ctypes.cdll.LoadLibrary(str(library))
    for target in fused_cpu.KERNELS:
        capsule = jax.ffi.pycapsule(getattr(dll, target))
        jax.ffi.register_ffi_target(f"{name}_{target}", capsule, "cpu")
    call = fused_cpu._call
    fused_cpu._register = lambda: None
    fused_cpu._call = lambda target, out, threads: call(f"{name}_{target}", out, threads)


def build(rj, cell_kind: str, shape: str, backend: str) -> dict:
    """The version's jitted training step and inference, compiled and warmed up.

    Both are traced here, while this version's modules are the loaded ones (backends import
    some modules lazily, at trace time).
    """
    B, T, D, H = SHAPES[shape]
    cell = getattr(rj, cell_kind)(H)
    params = cell.init(jax.random.key(0), input_size=D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))  # (B, T, D)

    def loss(p, x):
        return jnp.mean(rj.unroll(cell, p, x, backend=backend)[1] ** 2)

    fns = {"train": jax.jit(jax.grad(loss, argnums=(0, 1))), "inference": jax.jit(loss)}
    for fn in fns.values():
        for _ in range(WARMUP):
            jax.block_until_ready(fn(params, xs))
    return {mode: (fn, params, xs) for mode, fn in fns.items()}


def build_loops(rj, cell_kind: str, shape: str) -> dict:
    """The version's ``fused_cpu`` C++ forward and backward calls alone (LSTM or GRU), jitted
    and warmed up: for changes to the loops themselves, whose share of a whole step is too
    small to see through this machine's noise."""
    fused_cpu = importlib.import_module("rnnjax.kernels.fused_cpu")
    B, T, _, H = SHAPES[shape]
    lstm = cell_kind == "lstm"
    G = (4 if lstm else 3) * H
    keys = jax.random.split(jax.random.key(0), 4)
    px = jax.random.normal(keys[0], (T, B, G))  # (T, B, G)
    W = 0.03 * jax.random.normal(keys[1], (H, G))
    h0 = 0.1 * jax.random.normal(keys[2], (B, H))
    dys = 0.01 * jax.random.normal(keys[3], (T, B, H))  # (T, B, H)
    lengths = jnp.full((B,), T, jnp.int32)
    threads = fused_cpu.team_size(B, H)
    shapes = fused_cpu._shapes
    if lstm:
        forward = jax.jit(fused_cpu._forward)
        fwd_args = (W, px, h0, h0, lengths)
        _, gates, c_prev, _, _ = forward(*fwd_args)
        out = shapes((T, B, G), (B, H), (B, H), (T, B, H))
        backward = jax.jit(fused_cpu._call("RnnjaxLstmBackward", out, threads))
        bwd_args = (W, gates, c_prev, dys, h0, h0, lengths, h0)
    else:
        b_hn = jnp.zeros((H,))
        forward = jax.jit(fused_cpu._gru_forward)
        fwd_args = (W, b_hn, px, h0, lengths)
        ys, saved, _ = forward(*fwd_args)
        h_prev = jnp.concatenate([h0[None], ys[:-1]], axis=0)  # (T, B, H)
        out = shapes((T, B, G), (T, B, G), (B, H))
        backward = jax.jit(fused_cpu._call("RnnjaxGruBackward", out, threads))
        bwd_args = (W, saved, h_prev, dys, h0, lengths)
    fns = {"forward loop": (forward, fwd_args), "backward loop": (backward, bwd_args)}
    for fn, fn_args in fns.values():
        for _ in range(WARMUP):
            jax.block_until_ready(fn(*fn_args))
    return fns


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=("lstm", "gru", "simple_rnn"))
    parser.add_argument("--shape", default="S", choices=tuple(SHAPES))
    parser.add_argument("--backend", default="fused")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="leave glibc's malloc as it is (default: keep freed memory, as bench_speed does)",
    )
    parser.add_argument(
        "--loops",
        action="store_true",
        help="time fused_cpu's C++ forward and backward calls alone (LSTM, GRU)",
    )
    parser.add_argument("versions", nargs="+", help="name=path of a checkout")
    args = parser.parse_args(argv)
    if args.loops and args.cell not in ("lstm", "gru"):
        parser.error(f"--loops times fused_cpu's LSTM and GRU loops, not --cell {args.cell}")
    versions = [v.split("=", 1) for v in args.versions]
    if any(len(v) != 2 for v in versions):
        parser.error(f"versions are name=path, got {args.versions}")
    runs = {}
    for name, path in versions:
        rj = import_version(path)
        if not args.glibc_defaults and not runs and hasattr(rj, "allocator"):
            rj.allocator.keep_freed_memory()  # process-wide, before the first computation
        own_ffi_targets(rj, name)
        if args.loops:
            runs[name] = build_loops(rj, args.cell, args.shape)
        else:
            fns = build(rj, args.cell, args.shape, args.backend)
            runs[name] = {mode: (fn, (params, xs)) for mode, (fn, params, xs) in fns.items()}
    modes = tuple(runs[versions[0][0]])
    load_start = os.getloadavg()
    times: dict = {(name, mode): [] for name in runs for mode in modes}
    for _ in range(args.repeats):
        for name, fns in runs.items():
            for mode, (fn, fn_args) in fns.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(*fn_args))
                times[(name, mode)].append(time.perf_counter() - start)
    first = versions[0][0]
    report = {}
    for mode in modes:
        medians = {name: statistics.median(times[(name, mode)]) for name in runs}
        report[mode] = medians
        cells = "  ".join(
            f"{name} {1e3 * t:.2f} ms ({t / medians[first]:.3f})" for name, t in medians.items()
        )
        backend = "fused_cpu" if args.loops else args.backend
        print(f"{args.cell} {args.shape} {mode} {backend}: {cells}")
    print(f"load average {load_start[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    return report


if __name__ == "__main__":
    main()
