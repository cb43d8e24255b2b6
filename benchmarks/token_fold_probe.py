"""The character model's training step with the first projection folded into the embedding
table (`rnnjax.tokens`: px = (E U + b)[tok]) against gathering the rows first (px = E[tok] U +
b), on the `char_lm.py --versus-pytorch` recipe; two builds of the same jitted step, calls
alternated in one process, medians after warm-up::

    python benchmarks/token_fold_probe.py [--rounds 30]

The gathered build is traced with `rnnjax.tokens.projects_each_input_alone` answering False,
the switch `project_tokens` reads to choose the fold; freed memory is kept, as under the
`rnnjax` command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
from profile_step import char_lm_step

from rnnjax import allocator
from rnnjax import tokens as token_inputs


def builds():
    """``{"folded": step, "gathered": step}`` (each traced and compiled) and their args."""
    step, args = char_lm_step()
    folded = jax.jit(step)
    jax.block_until_ready(folded(*args))
    fold_switch = token_inputs.projects_each_input_alone
    token_inputs.projects_each_input_alone = lambda cell: False
    try:
        unfolded, _ = char_lm_step()
        gathered = jax.jit(unfolded)
        jax.block_until_ready(gathered(*args))
    finally:
        token_inputs.projects_each_input_alone = fold_switch
    return {"folded": folded, "gathered": gathered}, args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="alternated calls of each")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    allocator.keep_freed_memory()
    steps, step_args = builds()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(3):  # warm-up
        for step in steps.values():
            jax.block_until_ready(step(*step_args))
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(step(*step_args))
            times[name].append(time.perf_counter() - t0)
    ms = {name: 1e3 * statistics.median(v) for name, v in times.items()}
    print(
        f"char_lm training step, medians of {args.rounds} alternated calls (load average "
        f"{load:.1f} -> {os.getloadavg()[0]:.1f}): folded {ms['folded']:.1f} ms, gathered "
        f"{ms['gathered']:.1f} ms, folded / gathered {ms['folded'] / ms['gathered']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
