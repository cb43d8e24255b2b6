"""The LSTM training step at shape L against the machine's arithmetic, in ONE process.

Times, interleaved round-robin (medians): the float32 FMA peak of this CPU (a C++ loop of
independent multiply-adds as wide as its registers, one thread per core, compiled here with
``g++ -march=native``); XLA:CPU's matmul at a 2048³ square and at the step's own GEMM shapes
(the input projection [x, 1] [U; b], dW = Σ h_{t-1}ᵀ d z_t, [dU; db] = [x, 1]ᵀ d z); the
``fused_cpu`` forward and backward C++ loops; and the whole training step of rnnjax (``auto``)
and of PyTorch (``nn.LSTM``, default threads; with the ``bench`` extra). It prints each piece's
GFLOP/s and share of the FMA peak, and PyTorch's step against the sum of the step's matmuls
at XLA's rates::

    python benchmarks/gemm_ceiling_probe.py                 # shape L: (128, 50, 256, 512)
    python benchmarks/gemm_ceiling_probe.py --shape 32,100,128,256 --rounds 15

The question it answers: how far below PyTorch's step the matmuls that any float32 LSTM step
must do can take rnnjax on this machine, when each runs at the rate XLA:CPU reaches for it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import competitors as comp
import jax
import jax.numpy as jnp
from bench_speed import time_interleaved

import rnnjax.kernels.fused_cpu as fused_cpu
from rnnjax import allocator

# Independent multiply-adds on 12 register-wide accumulators (more than latency x pipes on
# current x86 cores), the accumulators as wide as the CPU's vectors (as in fused_cpu.cc).
PEAK_SOURCE = r"""
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float vreg __attribute__((vector_size(4 * kLanes)));
float run(long iters) {
  vreg a[12], b, c;
  for (int i = 0; i < 12; ++i) a[i] = vreg{} + 0.1f * i;
  b = vreg{} + 0.999f;
  c = vreg{} + 1e-4f;
  for (long n = 0; n < iters; ++n) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = a[i] * b + c;
  }
  float s = 0;
  for (int i = 0; i < 12; ++i) s += a[i][0];
  return s;
}
int main(int argc, char** argv) {
  const int threads = std::atoi(argv[1]);
  const long iters = 100000000;
  std::vector<float> sink(threads);
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> team;
  for (int p = 0; p < threads; ++p) team.emplace_back([&, p] { sink[p] = run(iters); });
  for (auto& t : team) t.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%.6e %g\n", threads * iters * 12.0 * kLanes * 2 / s, sink[0]);
}
"""


def fma_peak(binary: Path, threads: int) -> float:
    """FLOP/s of the compiled peak loop on ``threads`` threads."""
    out = subprocess.run([str(binary), str(threads)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


def workloads(B: int, T: int, D: int, H: int) -> tuple[dict, dict]:
    """{name: (fn, args)} and {name: FLOPs}: XLA's GEMMs, the C++ loops and both steps."""
    keys = jax.random.split(jax.random.key(0), 8)
    G, TN = 4 * H, T * B
    x1 = jax.random.normal(keys[0], (TN, D + 1))  # [x, 1]
    Ub = jax.random.normal(keys[1], (D + 1, G))  # [U; b]
    h_prev = jax.random.normal(keys[2], (TN, H))
    dz = jax.random.normal(keys[3], (TN, G))
    square = jax.random.normal(keys[4], (2048, 2048))
    px = jax.random.normal(keys[5], (T, B, G))
    W = 0.03 * jax.random.normal(keys[6], (H, G))
    h0 = jnp.zeros((B, H))
    lengths = jnp.full((B,), T, jnp.int32)
    dys = 0.01 * jax.random.normal(keys[7], (T, B, H))
    fused_cpu._register()
    forward = jax.jit(fused_cpu._forward)
    _, gates, c_prev, _, _ = forward(W, px, h0, h0, lengths)
    backward_out = fused_cpu._shapes((T, B, G), (B, H), (B, H), (T, B, H))
    backward = jax.jit(
        lambda *a: fused_cpu._call("RnnjaxLstmBackward", backward_out, fused_cpu.team_size(B, H))(
            *a
        )
    )
    rnnjax_step, rnnjax_args = comp.make_train_step("rnnjax:auto", "lstm", (B, T, D, H))
    fns = {
        "XLA matmul 2048³": (jax.jit(lambda a: a @ a), (square,)),
        "XLA projection [x, 1] [U; b]": (jax.jit(lambda a, b: a @ b), (x1, Ub)),
        "XLA dW = h_prevᵀ dz": (jax.jit(lambda a, d: a.T @ d), (h_prev, dz)),
        "XLA [dU; db] = [x, 1]ᵀ dz": (jax.jit(lambda a, d: a.T @ d), (x1, dz)),
        "C++ forward loop": (forward, (W, px, h0, h0, lengths)),
        "C++ backward loop": (backward, (W, gates, c_prev, dys, h0, h0, lengths, h0)),
        "rnnjax step (auto)": (rnnjax_step, rnnjax_args),
    }
    if comp._installed("torch"):  # the `bench` extra
        fns["PyTorch step"] = comp.make_train_step("torch", "lstm", (B, T, D, H))
    recurrent = 2.0 * TN * H * G
    flops = {
        "XLA matmul 2048³": 2.0 * 2048**3,
        "XLA projection [x, 1] [U; b]": 2.0 * TN * (D + 1) * G,
        "XLA dW = h_prevᵀ dz": recurrent,
        "XLA [dU; db] = [x, 1]ᵀ dz": 2.0 * TN * (D + 1) * G,
        "C++ forward loop": recurrent,
        "C++ backward loop": recurrent,
    }
    step = 3 * recurrent + 2 * 2.0 * TN * D * G  # forward, backward and dW; projection and dU
    flops["rnnjax step (auto)"] = flops["PyTorch step"] = step  # PyTorch's: when installed
    return fns, flops


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="128,50,256,512", help="B,T,D,H")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args(argv)
    B, T, D, H = (int(v) for v in args.shape.split(","))
    allocator.keep_freed_memory()  # as bench_speed.py
    fns, flops = workloads(B, T, D, H)
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp) / "peak.cc", Path(tmp) / "peak"
        source.write_text(PEAK_SOURCE)
        cmd = ["g++", "-O2", "-march=native", "-std=c++17", "-pthread", str(source)]
        subprocess.run([*cmd, "-o", str(binary)], check=True)
        cores = os.cpu_count() or 1
        load_start = os.getloadavg()[0]
        time_interleaved(fns, repeats=0, warmup=3)  # warm-up only
        times: dict = {name: [] for name in fns}
        peaks = []
        for _ in range(args.rounds):  # one round of bench_speed's at a time, the peak between
            peaks.append(fma_peak(binary, cores))
            for name, seconds in time_interleaved(fns, repeats=1, warmup=0).items():
                times[name] += seconds
    peak = statistics.median(peaks)
    rate = {name: flops[name] / statistics.median(v) for name, v in times.items()}
    print(f"LSTM (B, T, D, H) = ({B}, {T}, {D}, {H}); {args.rounds} interleaved rounds, medians")
    print(f"FMA peak, {cores} threads: {peak / 1e9:.0f} GFLOP/s")
    for name, v in times.items():
        print(
            f"  {name:30s} {1e3 * statistics.median(v):8.2f} ms  "
            f"{rate[name] / 1e9:5.0f} GFLOP/s  {rate[name] / peak:4.0%} of peak"
        )
    # the step's matmuls, each at the rate XLA reaches for its shape (the loops' at dW's)
    gemms = ("XLA projection [x, 1] [U; b]", "XLA dW = h_prevᵀ dz", "XLA [dU; db] = [x, 1]ᵀ dz")
    at_xla = sum(statistics.median(times[g]) for g in gemms)
    at_xla += 2 * statistics.median(times["XLA dW = h_prevᵀ dz"])  # forward, backward loops
    ours_ms = statistics.median(times["rnnjax step (auto)"])
    print(f"the step's matmuls at XLA's rates: {1e3 * at_xla:.2f} ms")
    if "PyTorch step" not in times:
        print("PyTorch is not installed (the bench extra): no ratio")
        return {"peak": peak, "times": times, "matmuls_at_xla": at_xla}
    torch_ms = statistics.median(times["PyTorch step"])
    print(
        f"rnnjax / PyTorch: {ours_ms / torch_ms:.3f}; those matmuls / PyTorch: "
        f"{at_xla / torch_ms:.3f}"
    )
    print(f"load average {load_start:.2f} -> {os.getloadavg()[0]:.2f}")
    return {"peak": peak, "times": times, "matmuls_at_xla": at_xla}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
