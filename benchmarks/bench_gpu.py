"""GPU benchmark: checks the "pallas" backend against "scan", then times every competitor.

One run does it all on the GPU at hand:

1. the card, the versions, and the two ceilings (a large float32 matmul at the default
   precision, a device-to-device copy);
2. correctness: pallas vs scan (outputs, final carry, gradients wrt params, inputs and
   initial carry) on fresh random inputs at every benchmark shape, with IEEE float32 matmuls
   (``jax.default_matmul_precision("highest")``) and at the default precision;
3. timing: one training step (forward + BPTT of the MSE on all outputs) and inference alone,
   LSTM and GRU, float32, shapes S / L / latency, for every rnnjax backend, the peers in
   `benchmarks.competitors`, ``jax.experimental.rnn`` (cuDNN) and PyTorch nn.LSTM / nn.GRU on
   CUDA (cuDNN). Medians of >= REPEATS timed calls after WARMUP calls.

Results: ``<out>/gpu_<card>.json`` and ``.md`` (the card is named in both).

    PYTHONPATH=. python benchmarks/bench_gpu.py --out DIR             # everything
    PYTHONPATH=. python benchmarks/bench_gpu.py --only check            # correctness only
    PYTHONPATH=. python benchmarks/bench_gpu.py --cells lstm --shapes S --libs pallas,torch
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave room for torch

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import competitors as comp

import rnnjax as rj
from rnnjax.kernels import BACKENDS
from rnnjax.kernels.pallas import make_pallas_backend

# ---- settings ---------------------------------------------------------------------------------
WARMUP = 3
REPEATS = 10  # at least; more while under MIN_SECONDS
MIN_SECONDS = 0.3
MAX_REPEATS = 50
SHAPES = {k: v for k, v in comp.SHAPES.items() if k != "sweep"}  # S, L, latency
CELLS = ("lstm", "gru")
# Extra pallas geometries timed besides the default plan: name -> make_pallas_backend options.
PALLAS_VARIANTS: dict[str, dict] = {}
# ------------------------------------------------------------------------------------------------


def card_name() -> str:
    return getattr(jax.devices()[0], "device_kind", jax.devices()[0].platform)


def median_time(fn, args, sync) -> dict:
    """Median wall time of fn(*args) (synchronised) after WARMUP calls."""
    for _ in range(WARMUP):
        sync(fn(*args))
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < REPEATS or (
        time.perf_counter() - start < MIN_SECONDS and len(times) < MAX_REPEATS
    ):
        t0 = time.perf_counter()
        sync(fn(*args))
        times.append(time.perf_counter() - t0)
    q = np.percentile(times, [10, 90])
    return dict(
        median_ms=1e3 * statistics.median(times),
        p10_ms=1e3 * q[0],
        p90_ms=1e3 * q[1],
        repeats=len(times),
    )


def ceilings() -> dict:
    """Measured float32 matmul rate (default precision = TF32 on Hopper) and copy bandwidth."""
    n = 8192
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    out = {}
    for prec in ("default", "highest"):
        f = jax.jit(lambda x, p=prec: jnp.dot(x, x, precision=p))
        t = median_time(f, (a,), jax.block_until_ready)["median_ms"] / 1e3
        out[f"f32_matmul_{prec}_tflops"] = 2 * n**3 / t / 1e12
    big = jax.random.normal(jax.random.key(2), (1 << 28,), jnp.float32)  # 1 GiB
    t = median_time(jax.jit(lambda x: x * 1.0), (big,), jax.block_until_ready)["median_ms"] / 1e3
    out["copy_tb_s"] = 2 * big.nbytes / t / 1e12
    return out


# ---- correctness --------------------------------------------------------------------------------


def rel_err(a, b) -> float:
    errs = [
        float(jnp.linalg.norm((x - y).ravel()) / (jnp.linalg.norm(y.ravel()) + 1e-30))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return max(errs)


def check(cell_kind: str, shape, backend: str, precision: str, lengths: bool, seed: int) -> dict:
    """Relative errors of outputs/final carry and of grads, ``backend`` vs scan."""
    B, T, D, H = shape
    cell = comp._rnnjax_cell(cell_kind, H)
    k = jax.random.split(jax.random.key(seed), 5)
    params = cell.init(k[0], D)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(k[1], p.shape), params)
    xs = jax.random.normal(k[2], (B, T, D))  # (B, T, D)
    carry = jax.tree.map(
        lambda c: 0.5 * jax.random.normal(k[3], c.shape), cell.initial_carry(params, (B,))
    )
    lens = jax.random.randint(k[4], (B,), 0, T + 1) if lengths else None

    def run(name):
        def loss(p, x, c):
            final, ys = rj.unroll(cell, p, x, c, lengths=lens, backend=name)
            w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
            return jnp.sum(w * ys) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree.leaves(final)), (
                final,
                ys,
            )

        f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
        with jax.default_matmul_precision(precision):
            return jax.block_until_ready(f(params, xs, carry))

    (_, out_b), g_b = run(backend)
    (_, out_s), g_s = run("scan")
    finite = bool(all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((out_b, g_b))))
    return dict(out_rel_err=rel_err(out_b, out_s), grad_rel_err=rel_err(g_b, g_s), finite=finite)


# ---- workloads ----------------------------------------------------------------------------------


def torch_cuda(cell_kind: str, shape, train: bool):
    """nn.LSTM / nn.GRU on CUDA (cuDNN), as `competitors._build_torch` but on the GPU."""
    import torch

    _, _, D, H = shape
    torch.manual_seed(0)
    model = (torch.nn.LSTM if cell_kind == "lstm" else torch.nn.GRU)(D, H, batch_first=True)
    model = model.cuda()
    xs, target = (torch.from_numpy(np.array(a)).cuda() for a in comp._data(shape))
    params = list(model.parameters())

    def step():
        ys, _ = model(xs)
        loss = torch.mean(torch.square(ys - target))
        return torch.autograd.grad(loss, params)

    def infer():
        with torch.inference_mode():
            return model(xs)[0]

    return (step if train else infer), ()


def build(lib: str, cell_kind: str, shape, train: bool):
    if lib == "torch":
        return torch_cuda(cell_kind, shape, train), "torch"
    maker = comp.make_train_step if train else comp.make_inference
    return maker(lib, cell_kind, shape), "jax"


def sync_for(kind: str):
    if kind == "torch":
        import torch

        return lambda out: torch.cuda.synchronize()
    return jax.block_until_ready


def time_one(lib: str, cell_kind: str, shape_name: str, train: bool) -> dict:
    shape = SHAPES[shape_name]
    rec = dict(lib=lib, cell=cell_kind, shape=shape_name, BTDH=list(shape))
    rec["mode"] = "train" if train else "inference"
    try:
        (fn, args), kind = build(lib, cell_kind, shape, train)
        t0 = time.perf_counter()
        sync_for(kind)(fn(*args))
        rec["first_call_s"] = time.perf_counter() - t0
        rec.update(median_time(fn, args, sync_for(kind)))
        rec["us_per_step"] = 1e3 * rec["median_ms"] / shape[1]
        flops = comp.matmul_flops(cell_kind, shape, train)
        rec["tflops"] = flops / (rec["median_ms"] / 1e3) / 1e12
    except Exception as e:  # a failing competitor must not stop the run
        rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        traceback.print_exc()
    return rec


def libs_for(cell_kind: str) -> list[str]:
    # torch runs on CUDA here (torch_cuda); the CPU-only torch variants are not GPU peers.
    libs = [lib for lib in comp.competitors(cell_kind, "gpu") if not lib.startswith("torch")]
    libs += [f"rnnjax:{name}" for name in PALLAS_VARIANTS if f"rnnjax:{name}" not in libs]
    return [*libs, "torch"]


# ---- report -------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    card = results["card"]
    lines = [
        f"# GPU benchmark on {card}",
        "",
        f"jax {results['versions']['jax']}, torch {results['versions'].get('torch')}, "
        f"cuDNN {results['versions'].get('cudnn')}; float32 storage, default matmul "
        f"precision everywhere (TF32 on this card for JAX and cuDNN). Median of >= {REPEATS} "
        f"calls after {WARMUP} warm-up calls; ms per call. Card: **{card}**.",
        "",
        f"Ceilings measured here: {json.dumps(results['ceilings'])}",
        "",
    ]
    for cell in CELLS:
        for mode in ("train", "inference"):
            rows = [r for r in results["timings"] if r["cell"] == cell and r["mode"] == mode]
            if not rows:
                continue
            shapes = [s for s in SHAPES if any(r["shape"] == s for r in rows)]
            lines += [f"## {cell.upper()} {mode} ({card})", ""]
            lines.append("| library | " + " | ".join(f"{s} {SHAPES[s]}" for s in shapes) + " |")
            lines.append("|---" * (len(shapes) + 1) + "|")
            for lib in dict.fromkeys(r["lib"] for r in rows):
                cells = []
                for s in shapes:
                    r = next((r for r in rows if r["lib"] == lib and r["shape"] == s), None)
                    if r is None:
                        cells.append("")
                    elif "error" in r:
                        cells.append("error")
                    else:
                        cells.append(f"{r['median_ms']:.3f}")
                lines.append(f"| {lib} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += targets(results)
    lines += ["## Correctness on the GPU (pallas vs scan, relative error)", ""]
    lines.append("| cell | shape | precision | lengths | outputs | grads | finite |")
    lines.append("|---|---|---|---|---|---|---|")
    for c in results["checks"]:
        if "error" in c:
            lines.append(f"| {c['cell']} | {c['shape']} | {c['precision']} | | error | | |")
            continue
        lines.append(
            f"| {c['cell']} | {c['shape']} | {c['precision']} | {c['lengths']} | "
            f"{c['out_rel_err']:.1e} | {c['grad_rel_err']:.1e} | {c['finite']} |"
        )
    return "\n".join(lines) + "\n"


FLAX = {"lstm": "flax.linen:OptimizedLSTMCell", "gru": "flax.linen:GRUCell"}


def targets(results: dict) -> list[str]:
    """The issue's targets: pallas vs PyTorch cuDNN (>= 1x) and vs flax's scan (>= 3x)."""
    rows = results["timings"]

    def ms(lib, cell, shape, mode):
        r = next((r for r in rows if (r["lib"], r["cell"], r["shape"], r["mode"]) ==
                  (lib, cell, shape, mode) and "error" not in r), None)  # fmt: skip
        return None if r is None else r["median_ms"]

    lines = [
        f"## Targets ({results['card']}): speed-up of rnnjax:pallas = other time / pallas time",
        "",
        "| cell | mode | shape | pallas ms | torch ms | x torch (>= 1) | flax ms | x flax (>= 3) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell in CELLS:
        for mode in ("train", "inference"):
            for s in SHAPES:
                p, t, f = (ms(lib, cell, s, mode) for lib in ("rnnjax:pallas", "torch", FLAX[cell]))
                if p is None:
                    continue
                xt = f"{t / p:.2f}" if t else ""
                xf = f"{f / p:.2f}" if f else ""
                lines.append(
                    f"| {cell} | {mode} | {s} | {p:.3f} | {t or float('nan'):.3f} | {xt} | "
                    f"{f or float('nan'):.3f} | {xf} |"
                )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--only", choices=("check", "time", "all"), default="all")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--modes", default="train,inference")
    parser.add_argument("--libs", default="", help="comma list of lib names to keep (all)")
    parser.add_argument("--variants", default="", help="name:bb=32:hs=16:w=4,... extra plans")
    parser.add_argument("--precisions", default="highest,default")
    parser.add_argument("--v1", action="store_true", help="also time pallas_v1 (on PYTHONPATH)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    cells, shapes = args.cells.split(","), args.shapes.split(",")
    if args.v1:  # the first kernel version, kept outside the package for comparison
        import pallas_v1  # type: ignore[import-not-found]

        PALLAS_VARIANTS["pallas_v1"] = {}
        BACKENDS["pallas_v1"] = pallas_v1.make_pallas_backend()
    for spec in filter(None, args.variants.split(",")):
        name, *opts = spec.split(":")
        keys = {"bb": "block_batch", "hs": "slice_size", "w": "num_warps"}
        PALLAS_VARIANTS[name] = {keys[k]: int(v) for k, v in (o.split("=") for o in opts)}
        BACKENDS[name] = make_pallas_backend(name=name, **PALLAS_VARIANTS[name])

    import torch

    card = card_name()
    results: dict = dict(card=card, host=platform.node(), checks=[], timings=[])
    results["versions"] = dict(
        jax=jax.__version__,
        torch=torch.__version__,
        cudnn=torch.backends.cudnn.version(),
        torch_cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        jax_default_matmul_precision=str(jax.config.jax_default_matmul_precision),
    )
    results["device"] = dict(kind=card, core_count=getattr(jax.devices()[0], "core_count", None))
    print(json.dumps(results["versions"]), json.dumps(results["device"]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"gpu_{card.replace(' ', '_')}{args.tag}"

    def save():
        stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
        stem.with_suffix(".md").write_text(markdown(results))

    results["ceilings"] = ceilings()
    print("ceilings", results["ceilings"], flush=True)

    if args.only in ("check", "all"):
        seed = int(np.random.SeedSequence().entropy % (2**31))
        for cell in cells:
            for s in shapes:
                for prec in args.precisions.split(","):
                    lengths = prec == "highest"  # lengths on one of the two runs
                    rec = dict(cell=cell, shape=s, precision=prec, lengths=lengths, seed=seed)
                    t0 = time.perf_counter()
                    try:
                        rec.update(check(cell, SHAPES[s], "pallas", prec, lengths, seed))
                    except Exception as e:
                        rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                        traceback.print_exc()
                    rec["seconds"] = time.perf_counter() - t0
                    print("check", rec, flush=True)
                    results["checks"].append(rec)
                    save()

    if args.only in ("time", "all"):
        keep = [k for k in args.libs.split(",") if k]
        for cell in cells:
            libs = [lib for lib in libs_for(cell) if not keep or lib in keep]
            for s in shapes:
                for mode in args.modes.split(","):
                    for lib in libs:
                        rec = time_one(lib, cell, s, mode == "train")
                        brief = {k: rec.get(k) for k in ("median_ms", "first_call_s", "error")}
                        print("time", cell, s, mode, lib, brief, flush=True)
                        results["timings"].append(rec)
                        save()
                    jax.clear_caches()
    save()
    print(markdown(results))


if __name__ == "__main__":
    main()
