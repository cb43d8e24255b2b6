"""CPU speed benchmark: rnnjax backends against flax, haiku, equinox and PyTorch.

Run with ``make bench`` (or ``python benchmarks/bench_speed.py``; ``--quick`` for a smoke run).
For each cell (LSTM, GRU, Simple RNN) and shape (B, T, D, H) it times one training step
(forward + BPTT of the mean-squared loss on all outputs) and inference alone, every library in
the same process, interleaved round-robin so that load on a shared machine hits all of them
alike, and reports medians of REPEATS runs after WARMUP. It also records the compile time of
each JAX step, the peak temporary memory of the training step at T = MEMORY_T
(``memory_analysis()``), and the floor: the step's matmul FLOPs divided by the GEMM rate
measured in the same run.

Writes ``benchmarks/results/<prefix>_speed.{json,md,png}`` (prefix "cpu" by default).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import competitors as comp

from rnnjax import allocator

# ---- settings -------------------------------------------------------------------------------
SHAPES = dict(comp.SHAPES)  # name -> (B, T, D, H)
CELL_KINDS = comp.CELL_KINDS
REPEATS = 10  # timed runs per workload (median reported)
WARMUP = 2  # untimed runs after compilation
MEMORY_T = 1000  # T of the memory measurement (B, D, H of shape S)
GEMM_N = 2048  # the GEMM rate is measured on an N x N x N float32 matmul
# Targets of the training step: best rnnjax / fastest competitor, per shape.
TARGETS = {"S": 0.6, "L": 0.85, "latency": 0.5}
MEMORY_TARGET = 0.5  # fused backend's temp memory / flax's, at T = MEMORY_T

WARMUP_SECONDS = 1.0  # ... and at least this long (PyTorch's first calls build its kernels)
# --quick (the smoke test in tests/test_backends_bench.py): one tiny shape, one cell, few peers.
QUICK_SHAPES = {"S": (4, 12, 8, 16)}
QUICK_CELLS = ("lstm",)
QUICK_LIBS = ("rnnjax:fused", "flax.linen:OptimizedLSTMCell", "torch:threads=1")


def describe_machine() -> dict:
    """CPU model, core count, load and library versions."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    versions = {}
    for module in ("jax", "jaxlib", "flax", "haiku", "equinox", "torch", "numpy"):
        with contextlib.suppress(ImportError):
            versions[module] = __import__(module).__version__
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "platform": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "python": platform.python_version(),
        "os": platform.platform(),
        "load_average_start": os.getloadavg(),
        "versions": versions,
    }
    if "torch" in versions:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    return info


def gemm_rate(n: int, repeats: int) -> float:
    """FLOP/s of a float32 n x n x n matmul under jit (median)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    times = time_interleaved({"gemm": (f, (a, a))}, repeats, warmup=2)["gemm"]
    return 2.0 * n**3 / statistics.median(times)


def time_interleaved(
    workloads: dict, repeats: int, warmup: int, warmup_s: float = 0.0
) -> dict[str, list[float]]:
    """Warms every workload up (``warmup`` runs and at least ``warmup_s`` seconds, at most 50
    runs), then times ``repeats`` rounds, round-robin: in each round every workload runs once
    untimed (so that it does not pay for the previous library's threads still spinning —
    PyTorch's OpenMP barriers stall behind XLA's busy-waiting workers) and once timed."""
    for fn, args in workloads.values():
        start, runs = time.perf_counter(), 0
        while runs < warmup or (time.perf_counter() - start < warmup_s and runs < 50):
            comp.block(fn(*args))
            runs += 1
    times: dict[str, list[float]] = {name: [] for name in workloads}
    for _ in range(repeats):
        for name, (fn, args) in workloads.items():
            comp.block(fn(*args))  # settle
            start = time.perf_counter()
            comp.block(fn(*args))
            times[name].append(time.perf_counter() - start)
    return times


def build(libs, kind, shape, train):
    """Constructs and compiles every workload; returns {lib: (fn, args)} and compile seconds."""
    make = comp.make_train_step if train else comp.make_inference
    workloads, compile_s = {}, {}
    for lib in libs:
        try:
            fn, args = make(lib, kind, shape)
            if comp.is_jax(lib):
                start = time.perf_counter()
                fn = fn.lower(*args).compile()
                compile_s[lib] = time.perf_counter() - start
            workloads[lib] = (fn, args)
        except Exception as e:  # a peer that cannot run here is reported, not fatal
            print(f"  skip {lib}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    return workloads, compile_s


def temp_memory(libs, kind, shape) -> dict[str, int]:
    """Peak temporary bytes of each JAX library's compiled training step."""
    out = {}
    for lib in libs:
        if not comp.is_jax(lib):
            continue
        try:
            fn, args = comp.make_train_step(lib, kind, shape)
            out[lib] = int(fn.lower(*args).compile().memory_analysis().temp_size_in_bytes)
        except Exception as e:
            print(f"  memory skip {lib}: {type(e).__name__}")
    return out


def best(results: dict, prefix_in: bool) -> tuple[str, float] | None:
    """Fastest entry whose name starts (or not) with "rnnjax:"."""
    rows = [(v, k) for k, v in results.items() if k.startswith("rnnjax:") == prefix_in]
    return (min(rows)[1], min(rows)[0]) if rows else None


def run(shapes, kinds, libs_filter, repeats, warmup, warmup_s, memory_t, gemm_n) -> dict:
    machine = describe_machine()
    print("machine:", json.dumps(machine))
    rate = gemm_rate(gemm_n, repeats)
    print(f"GEMM rate ({gemm_n}^3 float32): {rate / 1e9:.1f} GFLOP/s")
    report: dict = {"machine": machine, "gemm_gflops": rate / 1e9, "settings": {}, "cases": []}
    report["settings"] = dict(
        shapes=shapes,
        repeats=repeats,
        warmup=warmup,
        warmup_s=warmup_s,
        memory_T=memory_t,
        gemm_n=gemm_n,
    )
    for kind in kinds:
        libs = comp.competitors(kind)
        if libs_filter:
            libs = [lib for lib in libs if lib in libs_filter]
        for shape_name, shape in shapes.items():
            for train in (True, False):
                mode = "train" if train else "inference"
                print(f"{kind} {shape_name} {shape} {mode}: {len(libs)} libraries")
                workloads, compile_s = build(libs, kind, shape, train)
                times = time_interleaved(workloads, repeats, warmup, warmup_s)
                medians = {lib: statistics.median(t) for lib, t in times.items()}
                flops = comp.matmul_flops(kind, shape, train)
                case = dict(
                    cell=kind,
                    shape=shape_name,
                    dims=shape,
                    mode=mode,
                    median_s=medians,
                    all_s=times,
                    compile_s=compile_s,
                    matmul_flops=flops,
                    floor_s=flops / rate,
                )
                ours, peer = best(medians, True), best(medians, False)
                if ours and peer:
                    case.update(best_rnnjax=ours[0], fastest_peer=peer[0], ratio=ours[1] / peer[1])
                report["cases"].append(case)
                for lib in sorted(medians, key=medians.get):
                    print(f"  {lib:34s} {medians[lib] * 1e3:9.2f} ms")
        B, _, D, H = SHAPES["S"]  # the memory row is at S's B, D, H whatever shapes are timed
        mem_shape = (B, memory_t, D, H)
        print(f"{kind} memory at {mem_shape}")
        report.setdefault("memory", {})[kind] = dict(
            dims=mem_shape,
            temp_bytes=temp_memory([*libs, *comp.memory_extras(libs)], kind, mem_shape),
        )
    machine["load_average_end"] = os.getloadavg()
    return report


# ---- output ---------------------------------------------------------------------------------


def merge(report: dict, rerun: dict) -> dict:
    """``report`` with the cases of the shapes ``rerun`` timed replaced by ``rerun``'s.

    The rerun's machine record (load, GEMM rate) is kept under ``reruns``, and the markdown
    says which shapes come from which run.
    """
    shapes = {c["shape"] for c in rerun["cases"]}
    kept = [c for c in report["cases"] if c["shape"] not in shapes]
    record = dict(shapes=sorted(shapes), machine=rerun["machine"], gemm_gflops=rerun["gemm_gflops"])
    reruns = [r for r in report.get("reruns", []) if not set(r["shapes"]) <= shapes]
    return {**report, "cases": kept + rerun["cases"], "reruns": [*reruns, record]}


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.2f}"


def speed_tables(report: dict) -> list[str]:
    """The ratio table and every library's times (the report's timed cases)."""
    lines = [
        "",
        "## Best rnnjax backend / fastest competitor (targets: training step)",
        "",
        "| cell | shape (B, T, D, H) | best rnnjax | ms | fastest peer | ms | ratio | target "
        "| floor ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in report["cases"]:
        if "ratio" not in case:
            continue
        med = case["median_s"]
        target = TARGETS.get(case["shape"]) if case["mode"] == "train" else None
        verdict = "" if target is None else (" ✅" if case["ratio"] <= target else " ❌")
        lines.append(
            f"| {case['cell']} {case['mode']} | {case['shape']} {tuple(case['dims'])} | "
            f"{case['best_rnnjax']} | {_ms(med[case['best_rnnjax']])} | {case['fastest_peer']} | "
            f"{_ms(med[case['fastest_peer']])} | **{case['ratio']:.2f}**{verdict} | "
            f"{'—' if target is None else f'≤ {target}'} | {_ms(case['floor_s'])} |"
        )
    lines += ["", "## Every library (median ms; compile s of the JAX step in brackets)", ""]
    for kind in sorted({c["cell"] for c in report["cases"]}):
        cases = [c for c in report["cases"] if c["cell"] == kind]
        libs = list(dict.fromkeys(lib for c in cases for lib in c["median_s"]))
        head = [f"{c['shape']} {c['mode']}" for c in cases]
        lines += [f"### {kind}", "", "| library | " + " | ".join(head) + " |"]
        lines.append("|---" * (len(head) + 1) + "|")
        for lib in libs:
            cells = []
            for c in cases:
                t = c["median_s"].get(lib)
                compile_time = c["compile_s"].get(lib)
                cells.append(_ms(t) + ("" if compile_time is None else f" ({compile_time:.1f})"))
            lines.append(f"| {lib} | " + " | ".join(cells) + " |")
        lines.append("| *floor* | " + " | ".join(_ms(c["floor_s"]) for c in cases) + " |")
        lines.append("")
    return lines


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# CPU speed: rnnjax vs peers",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}; load average "
        f"{m['load_average_start'][0]:.1f} at start, {m['load_average_end'][0]:.1f} at end "
        "(a shared machine: compare ratios within this run, not absolute times). "
        f"malloc: {m.get('malloc', 'glibc defaults')}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"GEMM rate measured in this run: {report['gemm_gflops']:.1f} GFLOP/s "
        f"({report['settings']['gemm_n']}³ float32). Medians of {report['settings']['repeats']} "
        f"interleaved runs after ≥ {report['settings']['warmup']} warm-up runs "
        f"(≥ {report['settings']['warmup_s']} s).",
    ]
    for r in report.get("reruns", []):
        rm = r["machine"]
        lines.append(
            f"Shapes {', '.join(r['shapes'])} come from a second run (load average "
            f"{rm['load_average_start'][0]:.1f} at start, {rm['load_average_end'][0]:.1f} at end; "
            f"GEMM {r['gemm_gflops']:.1f} GFLOP/s); their floors use that run's GEMM rate."
        )
    if report["cases"]:
        lines += speed_tables(report)
    else:
        lines[0] = "# CPU memory: rnnjax vs peers (the training step's temporary memory only)"
    if not report["cases"]:
        lines.append("")
    lines += ["## Peak temporary memory of the training step (memory_analysis)", ""]
    for kind, mem in report.get("memory", {}).items():
        temp = mem["temp_bytes"]
        lines.append(f"{kind}, (B, T, D, H) = {tuple(mem['dims'])}:")
        lines.append("")
        lines += ["| library | MiB | / flax |", "|---|---|---|"]
        anchor = next(p for p in comp.PEERS[kind] if p.startswith("flax.linen"))  # the first
        flax = temp.get(anchor)
        for lib in ("rnnjax:fused", *comp.RNNJAX_MEMORY_EXTRA):
            if flax and lib in temp:
                rel = temp[lib] / flax
                verdict = "met" if rel <= MEMORY_TARGET else "not met"
                lines.insert(
                    -2, f"{lib} / flax = **{rel:.2f}** (target ≤ {MEMORY_TARGET}: {verdict})."
                )
                lines.insert(-2, "")
        for lib, b in sorted(temp.items(), key=lambda kv: kv[1]):
            rel = "—" if not flax else f"{b / flax:.2f}"
            lines.append(f"| {lib} | {b / 2**20:.1f} | {rel} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in report["cases"] if c["mode"] == "train"]
    cols = min(3, len(cases))
    rows = -(-len(cases) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(cases) :]:
        ax.set_visible(False)
    for ax, case in zip(axes.flat, cases, strict=False):
        med = case["median_s"]
        libs = sorted(med, key=med.get)
        colors = ["tab:blue" if lib.startswith("rnnjax:") else "tab:gray" for lib in libs]
        ax.barh(libs, [med[lib] * 1e3 for lib in libs], color=colors)
        ax.axvline(case["floor_s"] * 1e3, color="tab:red", ls="--", label="matmul floor")
        ax.invert_yaxis()
        ax.set_title(f"{case['cell']} {case['shape']} {tuple(case['dims'])}", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("training step, ms (median, log scale)")
        ax.tick_params(axis="y", labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"rnnjax (blue) vs peers (grey) — {report['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--prefix", default="cpu")
    parser.add_argument("--cells", default=None, help="comma-separated: lstm,gru")
    parser.add_argument("--shapes", default=None, help="comma-separated shape names")
    parser.add_argument("--libs", default=None, help="comma-separated lib strings to keep")
    parser.add_argument(
        "--memory-only", action="store_true", help="no timing: the memory table alone"
    )
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="leave glibc's malloc as it is (default: rnnjax.allocator.keep_freed_memory() "
        "for the whole process, every library alike)",
    )
    parser.add_argument("--from-json", metavar="JSON", help="rewrite the .md and .png only")
    parser.add_argument(
        "--merge",
        metavar="RERUN_JSON",
        help="with --from-json: replace the cases of the shapes RERUN_JSON timed by its cases",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        if args.merge:
            report = merge(report, json.loads(Path(args.merge).read_text()))
            Path(args.from_json).write_text(json.dumps(report, indent=1) + "\n")
        Path(args.from_json).with_suffix(".md").write_text(markdown(report))
        plot(report, Path(args.from_json).with_suffix(".png"))
        return report

    # process-wide, so every library in the run reuses freed pages alike (rnnjax.allocator)
    malloc = "glibc defaults"
    if not args.glibc_defaults and allocator.keep_freed_memory():
        malloc = "freed memory kept (rnnjax.allocator.keep_freed_memory, every library)"
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = {k: shapes[k] for k in args.shapes.split(",")}
    if args.memory_only:
        shapes = {}
    libs = args.libs.split(",") if args.libs else (QUICK_LIBS if args.quick else None)
    cells = args.cells.split(",") if args.cells else (QUICK_CELLS if args.quick else CELL_KINDS)
    report = run(
        shapes,
        tuple(cells),
        libs,
        repeats=3 if args.quick else REPEATS,
        warmup=1 if args.quick else WARMUP,
        warmup_s=0.0 if args.quick else WARMUP_SECONDS,
        memory_t=30 if args.quick else MEMORY_T,
        gemm_n=256 if args.quick else GEMM_N,
    )
    report["machine"]["malloc"] = malloc
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (f"memory_{args.prefix}" if args.memory_only else f"{args.prefix}_speed")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    if report["cases"]:
        plot(report, stem.with_suffix(".png"))
    print(f"wrote {stem}.json, .md" + (", .png" if report["cases"] else ""))
    return report


if __name__ == "__main__":
    main()
