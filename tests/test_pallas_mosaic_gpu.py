"""The ``"pallas_mosaic_gpu"`` backend equals ``"scan"``: outputs, final carry and every gradient.

On CPU the kernels run in the Mosaic GPU interpreter (automatically), so shapes stay tiny;
the test marked ``gpu`` runs the compiled kernels at the latency shape and skips without a
Hopper GPU. A fixture registers the backend (and variants) afresh for each test. The kernels
use the Mosaic GPU kernel API of jax >= 0.10.2: on older jax the backend refuses with that
reason and these tests skip.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELL_FACTORIES
from test_pallas import check_backend, problem, rel_err, value_and_grads

import rnnjax as rj
from rnnjax.kernels import BACKENDS, Problem
from rnnjax.kernels.base import reverse_mode_only
from rnnjax.kernels.pallas import family_of, persistent_rnn, persistent_rnn_reference
from rnnjax.kernels.pallas_mosaic_gpu import (
    JAX_VERSION,
    MIN_JAX,
    MOSAIC_GPU,
    NAME,
    PALLAS_MOSAIC_GPU,
    gpu_plan_or_reason,
    make_gpu_plan,
    make_mosaic_gpu_backend,
)

ON_HOPPER = (
    jax.devices()[0].platform == "gpu"
    and str(getattr(jax.devices()[0], "compute_capability", "0")) >= "9"
)
hopper_only = pytest.mark.skipif(not ON_HOPPER, reason="needs a Hopper (sm_90+) GPU")
pytestmark = pytest.mark.skipif(JAX_VERSION < MIN_JAX, reason="the kernels need jax >= 0.10.2")


def _interpret_params(**options):
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

    return InterpretGPUParams(**options)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The backend (and a two-thread variant) in the table for this test; a fresh interpreter."""
    from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call

    interpret_pallas_call.reset_gpu_interpret_mode_state()
    monkeypatch.setitem(BACKENDS, NAME, reverse_mode_only(PALLAS_MOSAIC_GPU))
    two = make_mosaic_gpu_backend(
        name="mgpu_2threads",
        lanes=8,
        register_rows=2,
        interpret=_interpret_params(detect_races=True),
    )
    monkeypatch.setitem(BACKENDS, "mgpu_2threads", reverse_mode_only(two))


def with_lengths(key, B, T):
    """Seeded lengths in [0, T] with a zero and a full one among them."""
    lens = jax.random.randint(key, (B,), 0, T + 1)
    return lens.at[0].set(0).at[-1].set(T)


@pytest.mark.parametrize("name", ["lstm", "gru", "simple_rnn"])
def test_equals_scan_with_lengths(rng, name):
    cell = CELL_FACTORIES[name](8)
    params, xs, carry, _ = problem(rng, cell, B=3, T=3, D=3, lengths=False)
    lens = with_lengths(jax.random.fold_in(rng, 1), B=3, T=3)
    check_backend(cell, (params, xs, carry, lens), backend=NAME)


def test_equals_scan_without_lengths(rng):
    cell = rj.gru(5)
    params, xs, carry, _ = problem(rng, cell, B=2, T=2, D=2, lengths=False)
    check_backend(cell, (params, xs, carry, None), backend=NAME)


def test_two_threads_exchange_through_shared_memory(rng):
    """H=9 with 8 units per thread: two Pallas threads exchange h_t (forward) and dhw_t
    (backward) through shared memory, and W's first two rows sit in registers. The
    interpreter's race detector watches every shared-memory access of the two threads.

    Not under ``jax.jit``: in JAX 0.10's interpreter, a jitted program holding two kernels
    that each run several threads stops (a thread waits at a barrier for one that never
    starts), so the forward and backward kernels run as separate dispatches here.
    """
    from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call

    cell = rj.lstm(9, peephole=True)
    params, xs, carry, _ = problem(rng, cell, B=1, T=2, D=2, lengths=False)
    lens = jnp.array([1])

    def run(backend):
        def loss(params, xs, carry):
            final, ys = rj.unroll(cell, params, xs, carry, lengths=lens, backend=backend)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(final.c)), (final, ys)

        return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)

    (_, aux_k), grads_k = run("mgpu_2threads")(params, xs, carry)
    (_, aux_s), grads_s = jax.jit(run("scan"))(params, xs, carry)
    assert not interpret_pallas_call.get_races().races_found
    assert rel_err(aux_k, aux_s) <= 1e-5
    assert rel_err(grads_k, grads_s) <= 1e-5


def test_kernel_equals_its_reference(rng):
    """`persistent_rnn` on the Mosaic GPU kernel pair (padded arrays, kernel VJP) against the
    lax.scan reference."""
    cell = rj.gru(8)
    family, _ = family_of(cell, cell.init(rng, input_size=2))
    plan = make_gpu_plan(family, T=3, B=2, H=8, interpret=_interpret_params())
    Hp = plan.Hp
    k = jax.random.split(rng, 5)
    px = jax.random.normal(k[0], (3, 2, 3 * Hp))  # (T, B, K·Hp)
    w = 0.3 * jax.random.normal(k[1], (Hp, 3, Hp))  # (Hp, K, Hp)
    w = w.at[8:].set(0.0).at[:, :, 8:].set(0.0).reshape(Hp, 3 * Hp)  # (Hp, K·Hp)
    h0 = jax.random.normal(k[2], (2, Hp)).at[:, 8:].set(0.0)  # (B, Hp)
    pv = jax.random.normal(k[3], (1, Hp))  # (P, Hp)
    lens = jnp.array([3, 2], jnp.int32)
    weights = jnp.arange(Hp) < 8  # the padded units are not the function's outputs

    def loss(fn):
        def f(px, w, h0, pv):
            hseq, _ = fn(plan, px, w, (h0,), pv, lens)
            return jnp.sum(jnp.tanh(hseq) * weights[None, None, :]), hseq[..., :8]

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))(px, w, h0, pv)

    (_, h_k), g_k = loss(lambda *args: persistent_rnn(MOSAIC_GPU, *args))
    (_, h_r), g_r = loss(persistent_rnn_reference)
    assert rel_err(h_k, h_r) <= 1e-5

    def real(grads):  # the real units' entries (padding has no gradient)
        dpx, dw, dh0, dpv = grads
        gates = lambda x: x.reshape(*x.shape[:-1], 3, Hp)[..., :8]  # noqa: E731  (..., K, H)
        return gates(dpx), gates(dw[:8]), dh0[:, :8], dpv[:, :8]

    assert rel_err(real(g_k), real(g_r)) <= 1e-5


def lstm_family(H=8):
    cell = rj.lstm(H)
    return family_of(cell, cell.init(jax.random.key(0), input_size=2))[0]


def test_plan_of_the_latency_shape():
    """B=1, H=128: one warpgroup; the float32 LSTM keeps 30 rows of W in registers, the GRU
    none; a bfloat16 LSTM fits shared memory alone; H=256 does not fit one SM."""
    lstm = lstm_family()
    plan = make_gpu_plan(lstm, T=1000, B=1, H=128, interpret=None)
    assert (plan.threads, plan.register_rows) == (1, 30)
    gru = rj.gru(8)
    gru_family = family_of(gru, gru.init(jax.random.key(0), input_size=2))[0]
    assert make_gpu_plan(gru_family, T=1000, B=1, H=128, interpret=None).register_rows == 0
    bf16 = make_gpu_plan(lstm, 1000, 1, 128, jnp.bfloat16, interpret=None)
    assert bf16.register_rows == 0
    reason = gpu_plan_or_reason(lstm, T=10, B=1, H=256, interpret=None)
    assert isinstance(reason, str) and "keeps W on one SM" in reason
    reason = gpu_plan_or_reason(lstm, T=10, B=1, H=64, interpret=None, lanes=8)
    assert isinstance(reason, str) and "one hidden unit per lane" in reason


@pytest.mark.parametrize(
    ("cell_name", "problem_", "backend", "reason"),
    [
        ("lstm", Problem(3, 2, jnp.dtype("float32"), "tpu"), None, "Mosaic GPU kernels only"),
        ("lstm", Problem(3, 2, jnp.dtype("float32"), "cpu", remat=True), None, "remat=True"),
        ("lstm", Problem(3, 2, jnp.dtype("bfloat16"), "cpu"), None, "float32 carries"),
        ("gru_cho", Problem(3, 2, jnp.dtype("float32"), "cpu"), None, "structured form"),
        ("multiplicative_rnn", Problem(3, 2, jnp.dtype("float32"), "cpu"), None, ""),
        ("lstm", Problem(3, 2, jnp.dtype("float32"), "cpu"), "compiled", "kernels only"),
    ],
)
def test_supports_gives_reasons(cell_name, problem_, backend, reason):
    backend_ = make_mosaic_gpu_backend(interpret=False) if backend else PALLAS_MOSAIC_GPU
    support = backend_.supports(CELL_FACTORIES[cell_name](8), problem_)
    assert not support and reason in support.reason and NAME in support.reason


def test_supports_small_problems_on_cpu_and_refuses_large_h_on_gpu():
    assert PALLAS_MOSAIC_GPU.supports(rj.lstm(8), Problem(3, 2, jnp.dtype("float32"), "cpu"))
    compiled = make_mosaic_gpu_backend(interpret=False)
    support = compiled.supports(rj.lstm(512), Problem(10, 1, jnp.dtype("float32"), "gpu"))
    assert not support and "keeps W on one SM" in support.reason


def test_unsupported_cell_raises_from_unroll(rng):
    cell = CELL_FACTORIES["gru_cho"](8)
    params = cell.init(rng, input_size=3)
    with pytest.raises(ValueError, match=NAME):
        jax.eval_shape(lambda: rj.unroll(cell, params, jnp.ones((2, 3, 3)), backend=NAME))


@pytest.mark.parametrize("name", ["lstm", "gru", "simple_rnn"])
def test_lowers_for_cuda_on_cpu(name):
    """Mosaic GPU lowers both kernels for CUDA on a machine without a GPU (``jax.export``) at
    the latency shape's H=128 in float32: layouts, shared-memory budget (the LSTM's 30
    register rows included) and all. Nothing runs: the export stops before ptxas."""
    backend = make_mosaic_gpu_backend(interpret=False)
    cell = CELL_FACTORIES[name](128)
    params = cell.init(jax.random.key(0), input_size=4)
    T, B = 6, 2
    px = jnp.zeros((T, B, cell.structure.gates * 128))  # (T, B, K·H)
    carry = cell.initial_carry(params, (B,))
    lens = jnp.array([6, 3])

    def loss(params, px, carry):
        final, ys = backend.run(cell, params, px, carry, lens)
        return jnp.sum(ys) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(final))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    exported = jax.export.export(grad, platforms=["cuda"])(params, px, carry)
    assert exported.mlir_module().count("mosaic_gpu") >= 2  # the forward and backward kernels


@hopper_only
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_latency_shape_on_gpu(rng, name):
    """The compiled kernels at B=1, T=1000, D=64, H=128 equal "scan" (TF32-free: the kernel
    multiplies in float32, so "highest" precision for the reference)."""
    cell = CELL_FACTORIES[name](128)
    params, xs, carry, _ = problem(rng, cell, B=1, T=1000, D=64, lengths=False, noise=0.01)
    with jax.default_matmul_precision("highest"):
        (_, aux_k), grads_k = value_and_grads(cell, NAME)(params, xs, carry, None)
        (_, aux_s), grads_s = value_and_grads(cell, "scan")(params, xs, carry, None)
    assert rel_err(aux_k, aux_s) <= 1e-4
    assert rel_err(grads_k, grads_s) <= 1e-4
    np.testing.assert_array_equal(np.isfinite(aux_k[1]), True)
