"""Where one training step's time goes: per-op times from a `jax.profiler` trace.

Runs the training step of `bench_speed` (forward + BPTT of the mean square of all outputs,
gradients of all parameters) for one cell, shape and backend, traces 10 calls after warm-up
and prints the mean milliseconds per call of the heaviest ops (XLA fusions, custom calls)::

    python benchmarks/profile_step.py                                  # LSTM, S, fused_cpu
    python benchmarks/profile_step.py --cell gru --shape 128,50,256,512 --backend fused
    python benchmarks/profile_step.py --keep-freed-memory              # as the rnnjax command
    python benchmarks/profile_step.py --char-lm --keep-freed-memory    # char_lm.py's whole step

``--char-lm`` profiles the jitted training step of ``char_lm.py --versus-pytorch``'s recipe
(two LSTM layers, embedding, softmax readout, clipping, Adam) instead.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

import rnnjax as rj

CALLS = 10


def op_times(fn, args, calls: int = CALLS) -> list[tuple[str, float, int]]:
    """(op name, mean ms per call, occurrences per call), heaviest first."""
    for _ in range(3):
        jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(calls):
                jax.block_until_ready(fn(*args))
        trace = next(Path(trace_dir).rglob("*.trace.json.gz"))
        events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    total: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            total[event["name"]] += event["dur"]
            count[event["name"]] += 1
    return [(name, t / calls / 1e3, count[name] // calls) for name, t in total.most_common()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=("lstm", "gru", "simple_rnn"))
    parser.add_argument("--shape", default="32,100,128,256", help="B,T,D,H")
    parser.add_argument("--backend", default="fused_cpu")
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument("--char-lm", action="store_true", help="char_lm.py's training step")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="rnnjax.allocator.keep_freed_memory() first (glibc reuses freed blocks)",
    )
    args = parser.parse_args(argv)
    if args.keep_freed_memory:
        rj.allocator.keep_freed_memory()
    if args.char_lm:
        step, step_args = char_lm_step()
        print("char_lm.py --versus-pytorch's training step: ms per call")
    else:
        step, step_args = unroll_step(args)
    for name, ms, n in op_times(step, step_args)[: args.top]:
        print(f"{ms:8.2f}  x{n:<3d} {name[:90]}")


def char_lm_step():
    """The jitted training step of `char_lm.VERSUS` and its (state, data) arguments."""
    from char_lm import VERSUS, default_corpus, setup

    from rnnjax.train import init_state, make_train_step
    from rnnjax.train.config import RunConfig

    config = RunConfig(**VERSUS).resolved()
    s = setup(config, text=default_corpus())
    params = s.model.init(jax.random.key(config.seed))
    state = init_state(params, s.optimizer, s.objective.initial_carry(params))
    step = jax.jit(make_train_step(s.objective, s.optimizer))
    return (lambda state, data: step(state, data)[0]), (state, jnp.asarray(s.data))


def unroll_step(args):
    """jit(grad) of the mean square of `unroll`'s outputs, and its (params, xs)."""
    B, T, D, H = (int(v) for v in args.shape.split(","))
    cell = getattr(rj, args.cell)(H)
    key = jax.random.key(0)
    params = cell.init(key, D)
    xs = jax.random.normal(key, (B, T, D))  # (B, T, D)

    def loss(p, x):
        return jnp.mean(rj.unroll(cell, p, x, backend=args.backend)[1] ** 2)

    print(f"{args.cell} (B, T, D, H) = {(B, T, D, H)}, backend={args.backend}: ms per call")
    return jax.jit(jax.grad(loss)), (params, xs)


if __name__ == "__main__":
    main()
