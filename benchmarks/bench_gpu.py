"""GPU benchmark: checks every persistent GPU kernel against "scan", then times every competitor.

``make bench-gpu`` runs it on the GPU at hand and writes the one results file the README cites:

1. provenance: the card, the versions, the commit, the command, the start and end times, and
   the two ceilings (a large float32 matmul at the default and the highest precision, a
   device-to-device copy);
2. correctness: each persistent GPU backend (``pallas``, ``pallas_verified`` and any other
   registered one whose name starts with "pallas" and that runs on GPU) vs ``scan`` (outputs,
   final carry, gradients wrt params, inputs and initial carry) on fresh random inputs with
   lengths at every benchmark shape, with IEEE float32 matmuls
   (``jax.default_matmul_precision("highest")``);
3. timing: one training step (forward + BPTT of the MSE on all outputs) and inference alone,
   LSTM and GRU, float32, shapes S / L / latency, for every rnnjax backend, the peers in
   `benchmarks.competitors`, ``jax.experimental.rnn`` (cuDNN) and PyTorch nn.LSTM / nn.GRU on
   CUDA (cuDNN). Medians of >= REPEATS timed calls after WARMUP calls.

The work is a list of items done in priority order (the checks of the kernel ``auto`` runs,
then the rows of the README's table: rnnjax, PyTorch, flax; then the other peers and
kernels), and the results file is written after each item. A run that must end within a
budget (``--budget-s``: a device lent for ten minutes a command) stops starting new items in
time and says which are missing; ``--resume`` runs only those, into the same file, and only
for the same card and commit (each invocation is recorded under ``runs``). Nothing is merged
by hand: the markdown and the README's table are rendered from the JSON alone
(``--render FILE.json`` re-renders both, ``--readme README.md`` rewrites the README's block
between its markers).

Results: ``<out>/gpu_<card>.json`` and ``.md`` (the card is named in both).

    PYTHONPATH=. python benchmarks/bench_gpu.py                      # everything, budget 540 s
    PYTHONPATH=. python benchmarks/bench_gpu.py --resume             # what a cut run left
    PYTHONPATH=. python benchmarks/bench_gpu.py --render benchmarks/results/gpu_X.json \\
        --readme README.md                                           # README from the JSON
    python benchmarks/bench_gpu.py --smoke --out /tmp/x              # CPU: tiny, interpret mode
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave room for torch

import argparse
import datetime
import json
import platform
import re
import statistics
import subprocess
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
from rnnjax.kernels import BACKENDS, Problem, choose_backend
from rnnjax.kernels.pallas import make_pallas_backend

REPO = Path(__file__).resolve().parent.parent

# ---- settings ---------------------------------------------------------------------------------
WARMUP = 3
REPEATS = 10  # at least; more while under MIN_SECONDS
MIN_SECONDS = 0.3
MAX_REPEATS = 50
SHAPES = {k: v for k, v in comp.SHAPES.items() if k != "sweep"}  # S, L, latency
SMOKE_SHAPES = {"S": (2, 3, 4, 16), "latency": (1, 4, 3, 16)}  # --smoke: CPU, interpret mode
CELLS = ("lstm", "gru")
MODES = ("train", "inference")
FLAX = {"lstm": "flax.linen:OptimizedLSTMCell", "gru": "flax.linen:GRUCell"}
README_PEERS = ("torch", "flax")  # the README table: best rnnjax / PyTorch cuDNN / flax linen
MARKERS = ("<!-- bench_gpu:start -->", "<!-- bench_gpu:end -->")
# Extra pallas geometries timed besides the default plan: name -> make_pallas_backend options.
PALLAS_VARIANTS: dict[str, dict] = {}
# ------------------------------------------------------------------------------------------------


def card_name() -> str:
    return getattr(jax.devices()[0], "device_kind", jax.devices()[0].platform)


def median_time(fn, args, sync, warmup: int = WARMUP, repeats: int = REPEATS) -> dict:
    """Median wall time of fn(*args) (synchronised) after ``warmup`` calls."""
    for _ in range(warmup):
        sync(fn(*args))
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (
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


def ceilings(n: int = 8192, copy_elems: int = 1 << 28) -> dict:
    """Measured float32 matmul rate (default precision = TF32 on Hopper) and copy bandwidth."""
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    out = {}
    for prec in ("default", "highest"):
        f = jax.jit(lambda x, p=prec: jnp.dot(x, x, precision=p))
        t = median_time(f, (a,), jax.block_until_ready)["median_ms"] / 1e3
        out[f"f32_matmul_{prec}_tflops"] = 2 * n**3 / t / 1e12
    big = jax.random.normal(jax.random.key(2), (copy_elems,), jnp.float32)  # 1 GiB by default
    t = median_time(jax.jit(lambda x: x * 1.0), (big,), jax.block_until_ready)["median_ms"] / 1e3
    out["copy_tb_s"] = 2 * big.nbytes / t / 1e12
    return out


def provenance(argv: list[str]) -> dict:
    """Commit (and whether the tree differs from it), command, host, time, driver."""

    def sh(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO).stdout.strip()
        except OSError:
            return ""

    return dict(
        commit=sh("git", "rev-parse", "HEAD"),
        tree_differs=bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
        command=" ".join(["python", "benchmarks/bench_gpu.py", *argv]),
        host=platform.node(),
        started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        driver=sh("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"),
    )


def versions() -> dict:
    import jaxlib

    out = dict(jax=jax.__version__, jaxlib=jaxlib.__version__)
    out["jax_default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    try:
        import torch
    except ImportError:
        return {**out, "torch": None}
    return {
        **out,
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


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

    if not torch.cuda.is_available():
        raise RuntimeError("PyTorch has no CUDA device here")
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


def time_one(lib: str, cell_kind: str, shape_name: str, mode: str, shapes, counts: dict) -> dict:
    shape = shapes[shape_name]
    rec = dict(lib=lib, cell=cell_kind, shape=shape_name, BTDH=list(shape), mode=mode)
    try:
        (fn, args), kind = build(lib, cell_kind, shape, mode == "train")
        t0 = time.perf_counter()
        sync_for(kind)(fn(*args))
        rec["first_call_s"] = time.perf_counter() - t0
        rec.update(median_time(fn, args, sync_for(kind), **counts))
        rec["us_per_step"] = 1e3 * rec["median_ms"] / shape[1]
        flops = comp.matmul_flops(cell_kind, shape, mode == "train")
        rec["tflops"] = flops / (rec["median_ms"] / 1e3) / 1e12
    except Exception as e:  # a failing competitor must not stop the run
        rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        traceback.print_exc()
    return rec


def gpu_kernels(cell_kind: str) -> list[str]:
    """The registered persistent GPU backends (names starting with "pallas") for this cell."""
    return [b for b in comp.rnnjax_backends(cell_kind, "gpu") if b.startswith("pallas")]


def libs_for(cell_kind: str) -> list[str]:
    # torch runs on CUDA here (torch_cuda); the CPU-only torch variants are not GPU peers.
    libs = [lib for lib in comp.competitors(cell_kind, "gpu") if not lib.startswith("torch")]
    libs += [f"rnnjax:{name}" for name in PALLAS_VARIANTS if f"rnnjax:{name}" not in libs]
    return [*libs, "torch"]


# ---- the work list ------------------------------------------------------------------------------


def runs_at(lib: str, cell: str, shape) -> bool:
    """Whether an rnnjax backend supports this cell and shape on a GPU (peers: always)."""
    if not lib.startswith("rnnjax:"):
        return True
    B, T, _, H = shape
    problem = Problem(T, B, jnp.dtype("float32"), "gpu")
    return bool(BACKENDS[lib.split(":")[1]].supports(comp._rnnjax_cell(cell, H), problem))


def work_items(cells, shapes: dict, modes, keep: list[str]) -> list[dict]:
    """Every check and timing of the run, most wanted first (see the module docstring); an
    rnnjax backend only where its support predicate accepts the shape (the Mosaic GPU kernel
    stops at H = 128, for one)."""
    checks, table, rest = [], [], []
    for cell in cells:
        auto = choose_backend(comp._rnnjax_cell(cell, 128), 32, 100, "gpu")[0]
        for backend in gpu_kernels(cell):
            for s in shapes:
                if not runs_at(f"rnnjax:{backend}", cell, shapes[s]):
                    continue
                item = dict(kind="check", backend=backend, cell=cell, shape=s)
                (checks if backend == auto else rest).append(item)
        for s in shapes:
            for mode in modes:
                for lib in libs_for(cell):
                    if (keep and lib not in keep) or not runs_at(lib, cell, shapes[s]):
                        continue
                    item = dict(kind="time", lib=lib, cell=cell, shape=s, mode=mode)
                    first = lib in (f"rnnjax:{auto}", "rnnjax:auto", "torch", FLAX[cell])
                    (table if first else rest).append(item)
    return checks + table + rest


def key_of(item: dict) -> str:
    fields = ("kind", "backend", "lib", "cell", "shape", "mode")
    return "/".join(str(item[f]) for f in fields if f in item)


def done_keys(results: dict) -> set[str]:
    return {r["key"] for r in results["checks"] + results["timings"]}


def run_item(item: dict, shapes, seed: int, counts: dict) -> dict:
    rec = dict(item, key=key_of(item))
    t0 = time.perf_counter()
    if item["kind"] == "check":
        rec.update(precision="highest", lengths=True, seed=seed)
        try:
            shape = shapes[item["shape"]]
            rec.update(check(item["cell"], shape, item["backend"], "highest", True, seed))
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            traceback.print_exc()
    else:
        rec.update(time_one(item["lib"], item["cell"], item["shape"], item["mode"], shapes, counts))
    rec["seconds"] = time.perf_counter() - t0
    return rec


# ---- report -------------------------------------------------------------------------------------


def _rows(results: dict, kind: str) -> list[dict]:
    return [r for r in results[kind] if "error" not in r]


def _ms(results: dict, lib: str, cell: str, shape: str, mode: str) -> float | None:
    for r in _rows(results, "timings"):
        if (r["lib"], r["cell"], r["shape"], r["mode"]) == (lib, cell, shape, mode):
            return r["median_ms"]
    return None


def best_rnnjax(results: dict, cell: str, shape: str, mode: str) -> tuple[str, float] | None:
    """The fastest rnnjax row of one case: (lib, ms)."""
    rows = [
        (r["median_ms"], r["lib"])
        for r in _rows(results, "timings")
        if (r["cell"], r["shape"], r["mode"]) == (cell, shape, mode)
        and r["lib"].startswith("rnnjax")
    ]
    if not rows:
        return None
    ms, lib = min(rows)
    return lib, ms


def targets(results: dict) -> list[str]:
    """The targets: best rnnjax vs PyTorch cuDNN (>= 1x) and vs flax's scan (>= 3x)."""
    lines = [
        f"## Targets ({results['card']}): speed-up = other library's time / best rnnjax time",
        "",
        "| cell | mode | shape | best rnnjax | ms | torch ms | x torch (>= 1) | flax ms | "
        "x flax (>= 3) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in CELLS:
        for mode in MODES:
            for s in results["shapes"]:
                best = best_rnnjax(results, cell, s, mode)
                if best is None:
                    continue
                lib, p = best
                t, f = _ms(results, "torch", cell, s, mode), _ms(results, FLAX[cell], cell, s, mode)
                xt = f"{t / p:.2f}" if t else ""
                xf = f"{f / p:.2f}" if f else ""
                lines.append(
                    f"| {cell} | {mode} | {s} | {lib} | {p:.3f} | {t or float('nan'):.3f} | "
                    f"{xt} | {f or float('nan'):.3f} | {xf} |"
                )
    return [*lines, ""]


def missing(results: dict) -> list[str]:
    return [k for k in results["planned"] if k not in done_keys(results)]


def readme_block(results: dict, json_path: str) -> str:
    """The README's GPU table, rendered from the results alone."""
    card, shapes = results["card"], results["shapes"]
    first, last = results["runs"][0], results["runs"][-1]
    v = results["versions"]
    head = " | ".join(f"{s} {tuple(results['shape_sizes'][s])}" for s in shapes)
    lines = [
        MARKERS[0],
        f"One {card} (jax {v['jax']}, PyTorch {v.get('torch')} + cuDNN {v.get('cudnn')}), "
        f"commit `{first['commit'][:7]}`, {first['started'][:10]}; "
        f"{len(results['runs'])} invocation(s) of `make bench-gpu`"
        + (" (`--resume`)" if len(results["runs"]) > 1 else "")
        + f", last ended {last.get('ended', '?')}; file: [`{json_path}`]({json_path}) "
        "and its `.md`. Milliseconds per call (median), best rnnjax / PyTorch cuDNN / flax "
        "linen (the best rnnjax backend in brackets):",
        "",
        f"| | {head} |",
        "|---" * (len(shapes) + 1) + "|",
    ]
    for cell in CELLS:
        for mode in MODES:
            cells = []
            for s in shapes:
                best = best_rnnjax(results, cell, s, mode)
                t, f = _ms(results, "torch", cell, s, mode), _ms(results, FLAX[cell], cell, s, mode)
                if best is None:
                    cells.append("not run")
                    continue
                lib, p = best
                cells.append(
                    f"{p:.2f} ({lib.split(':', 1)[1]}) / "
                    + " / ".join("–" if x is None else f"{x:.2f}" for x in (t, f))
                )
            lines.append(f"| {cell.upper()} {mode} | " + " | ".join(cells) + " |")
    todo = missing(results)
    checks = _rows(results, "checks")
    worst = max((max(c["out_rel_err"], c["grad_rel_err"]) for c in checks), default=None)
    lines += [
        "",
        "Correctness (IEEE float32, with lengths, every GPU kernel at every shape): "
        + (f"largest relative error vs `scan` {worst:.1e}" if worst is not None else "not run")
        + f"; {len(todo)} planned item(s) missing"
        + (f" ({', '.join(todo[:4])}{', ...' if len(todo) > 4 else ''})" if todo else "")
        + ".",
        MARKERS[1],
    ]
    return "\n".join(lines)


def markdown(results: dict) -> str:
    card, shapes, counts = results["card"], results["shapes"], results["counts"]
    lines = [
        f"# GPU benchmark on {card}",
        "",
        f"Written by `benchmarks/bench_gpu.py` from this file's JSON alone. Versions: "
        f"{json.dumps(results['versions'])}. Float32 storage, default matmul precision "
        f"everywhere (TF32 on Hopper for JAX and cuDNN). Median of >= {counts['repeats']} "
        f"calls after {counts['warmup']} warm-up calls; ms per call. Card: **{card}**.",
        "",
        "Invocations:",
        "",
        *[
            f"- `{r['command']}` at commit `{r['commit']}`"
            f"{' (tree differs)' if r.get('tree_differs') else ''}, {r['host']}, "
            f"{r['started']} → {r.get('ended', 'cut')}, driver {r.get('driver') or '?'}"
            for r in results["runs"]
        ],
        "",
        f"Ceilings measured here: {json.dumps(results['ceilings'])}",
        "",
    ]
    for cell in CELLS:
        for mode in MODES:
            rows = [r for r in results["timings"] if r["cell"] == cell and r["mode"] == mode]
            if not rows:
                continue
            lines += [f"## {cell.upper()} {mode} ({card})", ""]
            lines.append("| library | " + " | ".join(f"{s}" for s in shapes) + " |")
            lines.append("|---" * (len(shapes) + 1) + "|")
            for lib in dict.fromkeys(r["lib"] for r in rows):
                cells = []
                for s in shapes:
                    r = next((r for r in rows if r["lib"] == lib and r["shape"] == s), None)
                    cells.append(
                        "" if r is None else "error" if "error" in r else f"{r['median_ms']:.3f}"
                    )
                lines.append(f"| {lib} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += targets(results)
    lines += ["## Correctness on the GPU (kernel vs scan, relative error)", ""]
    lines.append("| backend | cell | shape | precision | lengths | outputs | grads | finite |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for c in results["checks"]:
        head = f"| {c['backend']} | {c['cell']} | {c['shape']} | {c['precision']} |"
        if "error" in c:
            lines.append(f"{head} | error: {c['error'][:80]} | | |")
            continue
        lines.append(
            f"{head} {c['lengths']} | {c['out_rel_err']:.1e} | {c['grad_rel_err']:.1e} | "
            f"{c['finite']} |"
        )
    todo = missing(results)
    lines += ["", f"Planned items missing: {len(todo)}" + (f": {', '.join(todo)}" if todo else "")]
    return "\n".join(lines) + "\n"


def render(json_path: Path, readme: Path | None) -> None:
    """Rewrites the markdown beside ``json_path`` and, if given, the README's GPU block."""
    results = json.loads(json_path.read_text())
    json_path.with_suffix(".md").write_text(markdown(results))
    if readme is None:
        return
    text = readme.read_text()
    pattern = re.escape(MARKERS[0]) + ".*?" + re.escape(MARKERS[1])
    if len(re.findall(pattern, text, flags=re.S)) != 1:
        raise ValueError(f"{readme} must hold exactly one {MARKERS[0]} ... {MARKERS[1]} block")
    try:
        shown = str(json_path.resolve().relative_to(readme.resolve().parent))
    except ValueError:
        shown = str(json_path)
    block = readme_block(results, shown)
    readme.write_text(re.sub(pattern, lambda _: block, text, flags=re.S))


# ---- main ---------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--shapes", default="")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--libs", default="", help="comma list of lib names to time (all)")
    parser.add_argument("--variants", default="", help="name:bb=32:hs=16:w=4,... extra plans")
    parser.add_argument("--budget-s", type=float, default=540.0, help="start nothing after")
    parser.add_argument("--resume", action="store_true", help="run only the missing items")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, CPU interpret mode")
    parser.add_argument("--render", default="", help="re-render FILE.json's md (and README)")
    parser.add_argument("--readme", default="", help="README whose GPU block to rewrite")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.render:
        render(Path(args.render), Path(args.readme) if args.readme else None)
        return None
    start = time.perf_counter()
    table = SMOKE_SHAPES if args.smoke else SHAPES
    shape_names = args.shapes.split(",") if args.shapes else list(table)
    shapes = {s: table[s] for s in shape_names}
    for spec in filter(None, args.variants.split(",")):
        name, *opts = spec.split(":")
        keys = {"bb": "block_batch", "hs": "slice_size", "w": "num_warps"}
        PALLAS_VARIANTS[name] = {keys[k]: int(v) for k, v in (o.split("=") for o in opts)}
        BACKENDS[name] = make_pallas_backend(name=name, **PALLAS_VARIANTS[name])

    card = card_name()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"gpu_{card.replace(' ', '_')}"
    run = provenance(argv)
    keep = [k for k in args.libs.split(",") if k]
    items = work_items(args.cells.split(","), shapes, args.modes.split(","), keep)
    if args.resume and stem.with_suffix(".json").exists():
        results = json.loads(stem.with_suffix(".json").read_text())
        if (results["card"], results["runs"][0]["commit"]) != (card, run["commit"]):
            raise SystemExit(
                f"--resume: {stem}.json is from {results['card']} at commit "
                f"{results['runs'][0]['commit'][:7]}, not {card} at {run['commit'][:7]}; "
                "start a fresh run (without --resume)"
            )
        results["runs"].append(run)
    else:
        results = dict(card=card, checks=[], timings=[], runs=[run], shapes=shape_names)
        results["shape_sizes"] = {s: list(v) for s, v in shapes.items()}
        smoke_counts = dict(warmup=1, repeats=2)
        results["counts"] = smoke_counts if args.smoke else dict(warmup=WARMUP, repeats=REPEATS)
        results["versions"] = versions()
        results["device"] = dict(
            kind=card, core_count=getattr(jax.devices()[0], "core_count", None)
        )
        size = dict(n=256, copy_elems=1 << 16) if args.smoke else {}
        results["ceilings"] = ceilings(**size)
    results["planned"] = list(dict.fromkeys([*results.get("planned", []), *map(key_of, items)]))
    print(json.dumps(results["versions"]), json.dumps(run), flush=True)

    def save():
        stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
        stem.with_suffix(".md").write_text(markdown(results))

    seed = int(np.random.SeedSequence().entropy % (2**31))
    done = done_keys(results)
    longest = 0.0
    for item in items:
        if key_of(item) in done:
            continue
        if time.perf_counter() - start + longest > args.budget_s:
            print("budget reached; run again with --resume for the rest", flush=True)
            break
        rec = run_item(item, shapes, seed, results["counts"])
        longest = max(longest, rec["seconds"])
        print(item["kind"], {k: rec.get(k) for k in ("key", "median_ms", "error")}, flush=True)
        (results["checks"] if item["kind"] == "check" else results["timings"]).append(rec)
        save()
    run["ended"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    save()
    if args.readme:
        render(stem.with_suffix(".json"), Path(args.readme))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
