"""Constructors of the benchmarked workloads: rnnjax backends and the peer libraries.

Importable by every benchmark script (CPU and GPU). Each constructor returns ``(fn, args)``:
``fn(*args)`` runs the workload once and returns arrays to block on. For JAX libraries ``fn``
is a ``jax.jit`` object, so ``fn.lower(*args).compile()`` gives compile time and
``memory_analysis()``; for PyTorch it is a plain callable (``is_jax(lib)`` tells which).

Workloads (float32, zero initial carry):

- ``make_train_step``: one training step — forward over the sequence, mean-squared loss on all
  outputs against a fixed random target, and BPTT to the gradients of every parameter.
- ``make_inference``: the forward pass alone, returning every output.

Libraries (``lib`` strings; ``competitors(cell_kind, platform)`` lists those available):

- ``"rnnjax:<backend>"`` or ``"rnnjax:<backend>:unroll=<k>"`` — `rnnjax.unroll` with any
  registered backend (input projection hoisted out of the loop).
- ``"flax.linen:OptimizedLSTMCell"``, ``"flax.linen:LSTMCell"``, ``"flax.linen:GRUCell"``,
  ``"flax.linen:SimpleCell"`` with ``nn.RNN``; ``"flax.nnx"`` (``nnx.RNN`` over
  ``OptimizedLSTMCell`` / ``GRUCell``).
- ``"haiku"``: ``hk.LSTM`` / ``hk.GRU`` with ``hk.dynamic_unroll``.
- ``"equinox"``: ``eqx.nn.LSTMCell`` / ``GRUCell``, vmapped over the batch inside ``lax.scan``.
- ``"jax.experimental.rnn"``: the cuDNN LSTM (GPU only, LSTM only).
- ``"torch"``: ``torch.nn.LSTM`` / ``torch.nn.GRU`` / ``torch.nn.RNN`` (oneDNN on CPU), when
  torch is installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax as rj
from rnnjax.kernels import BACKENDS, Problem

# (B, T, D, H): batch, time steps, input features, hidden units.
SHAPES: dict[str, tuple[int, int, int, int]] = {
    "S": (32, 100, 128, 256),
    "L": (128, 50, 256, 512),
    "latency": (1, 1000, 64, 128),
    "sweep": (20, 100, 2, 50),  # the long-range sweep's Simple RNN (Pascanu et al.'s settings)
}
CELL_KINDS = ("lstm", "gru", "simple_rnn")
GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}

PEERS = {
    "lstm": (
        "flax.linen:OptimizedLSTMCell",
        "flax.linen:LSTMCell",
        "flax.nnx",
        "haiku",
        "equinox",
        "jax.experimental.rnn",
        "torch",
        "torch:threads=1",
    ),
    "gru": ("flax.linen:GRUCell", "flax.nnx", "haiku", "equinox", "torch", "torch:threads=1"),
    "simple_rnn": ("flax.linen:SimpleCell", "torch", "torch:threads=1"),
}
# rnnjax variants benchmarked besides the plain backends.
RNNJAX_EXTRA = ("rnnjax:fused:unroll=4",)
# ... and measured in the memory table only: the time loop in chunks of 100 and 50 steps (the input
# projection and its gradient held one chunk at a time), and with each chunk recomputed.
RNNJAX_MEMORY_EXTRA = (
    "rnnjax:fused:chunk=100",
    "rnnjax:fused:chunk=50",
    "rnnjax:fused:chunk=100:remat=1",
    "rnnjax:fused_cpu:chunk=50",
)


# ---------------------------------------------------------------------------------------------
# Listing and bookkeeping
# ---------------------------------------------------------------------------------------------


def is_jax(lib: str) -> bool:
    """Whether ``lib``'s workload is a jitted JAX function (everything but torch)."""
    return not lib.startswith("torch")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def rnnjax_backends(cell_kind: str, platform: str) -> list[str]:
    """The registered rnnjax backends that run ``cell_kind`` on ``platform``."""
    cell = _rnnjax_cell(cell_kind, 8)
    problem = Problem(3, 2, jnp.dtype("float32"), platform)
    names = []
    for name, backend in BACKENDS.items():
        if name.startswith("pallas") and platform == "cpu":
            continue  # Pallas kernels compile for GPU / TPU only (interpret mode is a test aid)
        if backend.supports(cell, problem):  # a pure predicate: nothing is traced
            names.append(name)
    return names


def memory_extras(libs: list[str]) -> list[str]:
    """The memory-only rnnjax variants whose backend is among ``libs``."""
    return [v for v in RNNJAX_MEMORY_EXTRA if ":".join(v.split(":")[:2]) in libs]


def competitors(cell_kind: str, platform: str | None = None) -> list[str]:
    """Every ``lib`` string that can run ``cell_kind`` here (rnnjax first)."""
    platform = platform or jax.default_backend()
    backends = rnnjax_backends(cell_kind, platform)
    libs = [f"rnnjax:{name}" for name in backends]
    libs += [v for v in RNNJAX_EXTRA if v.split(":")[1] in backends]
    for lib in PEERS[cell_kind]:
        module = lib.split(":")[0]
        if module == "jax.experimental.rnn" and platform != "gpu":
            continue  # cuDNN only
        if module in ("haiku", "equinox", "torch") and not _installed(module):
            continue
        libs.append(lib)
    return libs


def matmul_flops(cell_kind: str, shape: tuple[int, int, int, int], train: bool) -> float:
    """Matmul FLOPs of one inference pass or training step (the floor's numerator).

    Forward: 2·B·T·(D + H)·G (input and recurrent matmuls, G = gates·H). A training step adds
    dU = Σ xᵀ dg (2·B·T·D·G), dW = Σ hᵀ dg (2·B·T·H·G) and dh = dg Wᵀ (2·B·T·H·G); no input
    gradient is needed.
    """
    B, T, D, H = shape
    G = GATES[cell_kind] * H
    forward = 2.0 * B * T * (D + H) * G
    return forward + (2.0 * B * T * (D + 2 * H) * G if train else 0.0)


def _data(shape, key=0):
    B, T, D, H = shape
    k1, k2 = jax.random.split(jax.random.key(key))
    xs = jax.random.normal(k1, (B, T, D), jnp.float32)  # (B, T, D)
    target = jax.random.normal(k2, (B, T, H), jnp.float32)  # (B, T, H)
    return xs, target


def _mse(ys, target):
    return jnp.mean(jnp.square(ys - target))


def _jax_workloads(apply: Callable, params: Any, xs, target, train: bool):
    """Wraps ``apply(params, xs) -> ys`` (B, T, H) as a jitted train step or inference."""
    if train:

        def step(params, xs, target):
            return jax.value_and_grad(lambda p: _mse(apply(p, xs), target))(params)

        return jax.jit(step), (params, xs, target)
    return jax.jit(apply), (params, xs)


# ---------------------------------------------------------------------------------------------
# One builder per library: (cell_kind, shape, train) -> (fn, args)
# ---------------------------------------------------------------------------------------------


def _rnnjax_cell(cell_kind: str, H: int):
    return {"lstm": rj.lstm, "gru": rj.gru, "simple_rnn": rj.simple_rnn}[cell_kind](H)


def _build_rnnjax(lib: str, cell_kind: str, shape, train: bool):
    parts = lib.split(":")
    backend = parts[1]
    options = dict(p.split("=") for p in parts[2:])
    unroll = int(options.get("unroll", 1))
    chunk = int(options["chunk"]) if "chunk" in options else None
    remat = bool(int(options.get("remat", 0)))
    _, _, D, H = shape
    cell = _rnnjax_cell(cell_kind, H)
    params = cell.init(jax.random.key(0), D)
    xs, target = _data(shape)

    def apply(params, xs):
        return rj.unroll(
            cell, params, xs, backend=backend, unroll=unroll, chunk=chunk, remat=remat
        )[1]

    return _jax_workloads(apply, params, xs, target, train)


def _build_flax_linen(lib: str, cell_kind: str, shape, train: bool):
    import flax.linen as nn

    H = shape[3]
    cell_cls = getattr(nn, lib.split(":")[1])
    kinds = {nn.GRUCell: "gru", nn.SimpleCell: "simple_rnn"}
    if kinds.get(cell_cls, "lstm") != cell_kind:
        raise ValueError(f"{lib=} does not implement {cell_kind=}")
    model = nn.RNN(cell_cls(H))
    xs, target = _data(shape)
    params = model.init(jax.random.key(0), xs)
    return _jax_workloads(model.apply, params, xs, target, train)


def _gated_only(lib: str, cell_kind: str) -> None:
    """The builders below know the LSTM and the GRU only."""
    if cell_kind not in ("lstm", "gru"):
        raise ValueError(f"{lib=} is benchmarked for lstm and gru, not {cell_kind=}")


def _build_flax_nnx(lib: str, cell_kind: str, shape, train: bool):
    _gated_only(lib, cell_kind)
    from flax import nnx

    _, _, D, H = shape
    cell_cls = nnx.OptimizedLSTMCell if cell_kind == "lstm" else nnx.GRUCell
    model = nnx.RNN(cell_cls(D, H, rngs=nnx.Rngs(0)), rngs=False)
    graphdef, state = nnx.split(model)
    xs, target = _data(shape)

    def apply(state, xs):
        h = jnp.zeros((xs.shape[0], H), jnp.float32)  # (B, H)
        carry = (h, h) if cell_kind == "lstm" else h  # flax's LSTM carry is (c, h)
        return nnx.merge(graphdef, state)(xs, initial_carry=carry)

    return _jax_workloads(apply, state, xs, target, train)


def _build_haiku(lib: str, cell_kind: str, shape, train: bool):
    _gated_only(lib, cell_kind)
    import haiku as hk

    H = shape[3]

    def forward(xs):
        core = hk.LSTM(H) if cell_kind == "lstm" else hk.GRU(H)
        xs_tm = jnp.swapaxes(xs, 0, 1)  # (T, B, D)
        ys, _ = hk.dynamic_unroll(core, xs_tm, core.initial_state(xs.shape[0]), time_major=True)
        return jnp.swapaxes(ys, 0, 1)  # (B, T, H)

    model = hk.without_apply_rng(hk.transform(forward))
    xs, target = _data(shape)
    params = model.init(jax.random.key(0), xs)
    return _jax_workloads(model.apply, params, xs, target, train)


def _build_equinox(lib: str, cell_kind: str, shape, train: bool):
    _gated_only(lib, cell_kind)
    import equinox as eqx

    _, _, D, H = shape
    cell_cls = eqx.nn.LSTMCell if cell_kind == "lstm" else eqx.nn.GRUCell
    params, static = eqx.partition(cell_cls(D, H, key=jax.random.key(0)), eqx.is_array)
    xs, target = _data(shape)

    def apply(params, xs):
        cell = eqx.combine(params, static)
        h = jnp.zeros((xs.shape[0], H), jnp.float32)  # (B, H)
        carry0 = (h, h) if cell_kind == "lstm" else h

        def body(carry, x_t):
            carry = jax.vmap(cell)(x_t, carry)
            return carry, carry[0] if cell_kind == "lstm" else carry

        _, ys = jax.lax.scan(body, carry0, jnp.swapaxes(xs, 0, 1))  # (T, B, H)
        return jnp.swapaxes(ys, 0, 1)

    return _jax_workloads(apply, params, xs, target, train)


def _build_jax_experimental_rnn(lib: str, cell_kind: str, shape, train: bool):
    from jax.experimental import rnn

    if cell_kind != "lstm":
        raise ValueError(f"{lib=} implements only the LSTM, not {cell_kind=}")
    B, T, D, H = shape
    weights = rnn.init_lstm_weight(jax.random.key(0), D, H, 1, False)  # flat (P,)
    xs, target = _data(shape)
    seq_lengths = jnp.full((B,), T, jnp.int32)  # (B,)
    zeros = jnp.zeros((1, B, H), jnp.float32)  # (layers·directions, B, H)

    def apply(weights, xs):
        ys, _, _ = rnn.lstm(xs, zeros, zeros, weights, seq_lengths, D, H, 1, 0.0, False)
        return ys  # (B, T, H)

    return _jax_workloads(apply, weights, xs, target, train)


def _build_torch(lib: str, cell_kind: str, shape, train: bool):
    import torch

    _, _, D, H = shape
    # "torch:threads=1" runs single-threaded: on a loaded machine OpenMP's barriers can stall
    # for a scheduler slice, so PyTorch gets its better configuration of the two.
    threads = int(lib.split("threads=")[1]) if "threads=" in lib else torch.get_num_threads()
    torch.manual_seed(0)
    module_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "simple_rnn": torch.nn.RNN}
    model = module_cls[cell_kind](D, H, batch_first=True)  # nn.RNN: tanh, as rj.simple_rnn
    xs, target = (torch.from_numpy(np.array(a)) for a in _data(shape))
    params = list(model.parameters())

    if train:

        def step(xs, target):
            with _torch_threads(threads):
                ys, _ = model(xs)
                loss = torch.mean(torch.square(ys - target))
                return loss, torch.autograd.grad(loss, params)

        return step, (xs, target)

    def infer(xs):
        with torch.inference_mode(), _torch_threads(threads):
            return model(xs)[0]

    return infer, (xs,)


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


_BUILDERS: dict[str, Callable] = {
    "rnnjax": _build_rnnjax,
    "flax.linen": _build_flax_linen,
    "flax.nnx": _build_flax_nnx,
    "haiku": _build_haiku,
    "equinox": _build_equinox,
    "jax.experimental.rnn": _build_jax_experimental_rnn,
    "torch": _build_torch,
}


def _build(lib: str, cell_kind: str, shape, train: bool):
    if cell_kind not in CELL_KINDS:
        raise ValueError(f"unknown {cell_kind=}; choose one of {CELL_KINDS}")
    if isinstance(shape, str):
        shape = SHAPES[shape]
    module = lib.split(":")[0]
    if module not in _BUILDERS:
        raise ValueError(f"unknown {lib=}; known libraries: {tuple(_BUILDERS)}")
    return _BUILDERS[module](lib, cell_kind, tuple(shape), train)


def make_train_step(lib: str, cell_kind: str, shape) -> tuple[Callable, tuple]:
    """One training step (forward + BPTT of the MSE on all outputs) of ``lib``.

    Args:
        lib: e.g. ``"rnnjax:fused"``, ``"flax.linen:OptimizedLSTMCell"``, ``"torch"``.
        cell_kind: "lstm" or "gru".
        shape: (B, T, D, H) or a key of `SHAPES`.

    Returns:
        ``(fn, args)``; ``fn(*args)`` returns ``(loss, grads)``.
    """
    return _build(lib, cell_kind, shape, train=True)


def make_inference(lib: str, cell_kind: str, shape) -> tuple[Callable, tuple]:
    """The forward pass of ``lib`` alone; ``fn(*args)`` returns the outputs (B, T, H)."""
    return _build(lib, cell_kind, shape, train=False)


def block(out: Any) -> Any:
    """Waits for ``out`` (JAX arrays are asynchronous; torch results are ready)."""
    for leaf in jax.tree.leaves(out):
        if isinstance(leaf, jax.Array):
            leaf.block_until_ready()
    return out
