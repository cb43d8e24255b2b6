"""Benchmark of `rnnjax.analysis.jacobian_norms`: LSTM, H = 256, B = 8, T = 1000, on the CPU.

Run with ``python benchmarks/bench_jacobian_norms.py``. Times the jitted call (median of
REPEATS runs after one warm-up run; compile time separately) for

- the default: both views (‖∂c_T/∂c_t‖ and ‖∂c_t/∂c_0‖) side by side, spectral norms by
  Lanczos (the native twin of the rounds, ``lanczos_cpu.cc``), the LSTM's closed-form Jacobian;
- the backward view alone (``forward=False``);
- both views with Frobenius norms (``ord="fro"``: the products alone, no Lanczos rounds);

then, on a shorter sequence (T = T_VARIANTS), the cost per step of the variants (the Lanczos
rounds in XLA, autodiff Jacobian, Frobenius norm) and the accuracy of the default against
float64 products of the per-step Jacobians with exact SVDs (NumPy). The floor is the
products' FLOPs over the GEMM rate measured in the same run (the faster of a measurement
before and one after the full-size calls). Writes
benchmarks/results/jacobian_norms.{json,md}.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

import rnnjax as rj
from rnnjax import analysis
from rnnjax.analysis import _lanczos_cpu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import describe_machine, gemm_rate  # the machine record and the GEMM rate

# ---- settings -------------------------------------------------------------------------------
H, B, T, D = 256, 8, 1000, 32  # hidden size, batch, sequence length, input features
REPEATS = 3  # timed runs of the full-size call (median reported)
T_VARIANTS = 50  # sequence length of the per-step comparison of variants
T_ACCURACY = 40  # steps of the float64 / SVD accuracy check (one example)
GEMM_N = 1024  # the GEMM rate is measured on an N x N x N float32 matmul
TARGET_SECONDS = 10.0
OUT = Path(__file__).resolve().parent / "results"


def timed(fn, *args, repeats: int) -> dict:
    """Compile time (first call) and the median wall / CPU time of ``repeats`` later calls."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_and_first = time.perf_counter() - start
    jax.block_until_ready(fn(*args))  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "first_call_s": compile_and_first,
        "median_s": statistics.median(walls),
        "runs_s": walls,
        "median_cpu_s": statistics.median(cpus),
    }


def reference_log_norms(cell, params, xs) -> np.ndarray:
    """log ‖∂c_T/∂c_t‖ of one example from float64 products of J_t and NumPy's exact SVD."""
    jacs = np.asarray(analysis.carry_jacobians(cell, params, xs), np.float64)  # (T, N, N)
    P, scale, out = np.eye(jacs.shape[-1]), 0.0, [0.0]
    for J in jacs[::-1]:
        P = P @ J
        s = np.linalg.norm(P)
        P, scale = P / s, scale + np.log(s)
        out.append(scale + np.log(np.linalg.norm(P, 2)))
    return np.array(out[::-1])


def main() -> None:
    machine = describe_machine()
    cell = rj.lstm(H)
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    results: dict = {"settings": dict(H=H, B=B, T=T, D=D, repeats=REPEATS), "machine": machine}
    rate_start = gemm_rate(GEMM_N, repeats=5)

    full = {}
    for name, kwargs in [
        ("both_views", {}),
        ("backward_only", {"forward": False}),
        ("both_views_frobenius", {"ord": "fro"}),
    ]:
        fn = jax.jit(lambda p, x, kw=kwargs: analysis.jacobian_norms(cell, p, x, **kw))
        full[name] = timed(fn, params, xs, repeats=REPEATS)
        print(name, json.dumps({k: v for k, v in full[name].items() if k != "runs_s"}))
    results["full_size"] = full
    # the machine's GEMM rate before and after the timed calls; the floor takes the faster
    rates = (rate_start, gemm_rate(GEMM_N, repeats=5))
    rate = max(rates)
    results["gemm_gflops"] = rate / 1e9
    results["gemm_gflops_start_end"] = [r / 1e9 for r in rates]
    # closed form: two (N×H)·(H×H) products per view, example and step
    flops_per_view = T * B * 2 * (2 * (2 * H) * H * H)
    results["floor_s"] = {
        "both_views": 2 * flops_per_view / rate,
        "backward_only": flops_per_view / rate,
        "both_views_frobenius": 2 * flops_per_view / rate,
    }
    results["naive_over_accumulated_products"] = (T - 1) / 2  # Σ_t (T − t) vs T products

    variants = {}
    xs_short = xs[:, :T_VARIANTS]
    native = _lanczos_cpu.available
    for name, kwargs in [
        ("default", {}),
        ("lanczos_in_xla", {}),
        ("autodiff_jacobian", {"jacobian": "autodiff"}),
        ("frobenius", {"ord": "fro"}),
    ]:
        # the Lanczos rounds' readable reference in XLA instead of the native twin
        _lanczos_cpu.available = (lambda dtype: False) if name == "lanczos_in_xla" else native
        fn = jax.jit(lambda p, x, kw=kwargs: analysis.jacobian_norms(cell, p, x, **kw))
        t = timed(fn, params, xs_short, repeats=REPEATS)
        variants[name] = {
            "ms_per_step": 1e3 * t["median_s"] / T_VARIANTS,
            "cpu_ms_per_step": 1e3 * t["median_cpu_s"] / T_VARIANTS,
        }
        print(name, variants[name])
    _lanczos_cpu.available = native
    results["per_step_variants"] = variants

    x1 = xs[0, :T_ACCURACY]
    got = np.asarray(analysis.jacobian_norms(cell, params, x1, forward=False).log_backward)
    want = reference_log_norms(cell, params, x1)
    results["accuracy"] = {
        "T": T_ACCURACY,
        "max_abs_log_error": float(np.max(np.abs(got - want))),
        "reference": "float64 products of carry_jacobians, numpy SVD",
    }
    machine["load_average_end"] = os.getloadavg()
    print(json.dumps(results["accuracy"]))

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "jacobian_norms.json").write_text(json.dumps(results, indent=1))
    (OUT / "jacobian_norms.md").write_text(markdown(results))
    print((OUT / "jacobian_norms.md").read_text())


def markdown(r: dict) -> str:
    m, full, floor = r["machine"], r["full_size"], r["floor_s"]
    v = r["per_step_variants"]
    lines = [
        "# jacobian_norms benchmark",
        "",
        f"LSTM H={H}, B={B}, T={T} (D={D}); jitted call, median of {REPEATS} runs after a "
        f"warm-up. Target: under {TARGET_SECONDS:g} s.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} CPUs ({m['device']}), {m['os']}, jax "
        f"{m['versions']['jax']}; load average {m['load_average_start'][0]:.1f} at start, "
        f"{m['load_average_end'][0]:.1f} at end (the benchmark's own threads count). "
        f"Measured GEMM rate: {r['gemm_gflops']:.0f} GFLOP/s (the faster of "
        f"{r['gemm_gflops_start_end'][0]:.0f} before and {r['gemm_gflops_start_end'][1]:.0f} "
        "after the full-size calls).",
        "",
        "| call | median wall (s) | median CPU (s) | first call incl. compile (s) | "
        "FLOP floor at the GEMM rate (s) |",
        "|---|---|---|---|---|",
    ]
    for name in full:
        t = full[name]
        lines.append(
            f"| {name.replace('_', ' ')} | {t['median_s']:.1f} | {t['median_cpu_s']:.1f} | "
            f"{t['first_call_s']:.1f} | {floor[name]:.1f} |"
        )
    lines += [
        "",
        f"Per step at T={T_VARIANTS} (both views, B={B}):",
        "",
        "| variant | wall ms/step | CPU ms/step |",
        "|---|---|---|",
    ]
    for name, x in v.items():
        lines.append(f"| {name} | {x['ms_per_step']:.1f} | {x['cpu_ms_per_step']:.1f} |")
    lines += [
        "",
        f"Accuracy (one example, T={r['accuracy']['T']}): max |log‖∂c_T/∂c_t‖ − reference| = "
        f"{r['accuracy']['max_abs_log_error']:.2g} against float64 products with exact SVDs.",
        "",
        "The naïve way (one product chain per t) would multiply "
        f"{r['naive_over_accumulated_products']:.0f}× as many Jacobians as the one accumulation.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
