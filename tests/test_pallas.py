"""The ``"pallas"`` backend equals ``"scan"``: outputs, final carry and every gradient.

On CPU the kernels run in Pallas interpret mode (automatically), so shapes stay tiny; the
tests marked ``gpu`` run the compiled Triton kernels at real sizes and skip without a GPU.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELL_FACTORIES, random_like

import rnnjax as rj
from rnnjax.kernels import BACKENDS, Problem
from rnnjax.kernels.pallas import (
    PALLAS,
    TRITON,
    family_of,
    make_pallas_backend,
    make_plan,
    persistent_rnn,
    persistent_rnn_reference,
)

ON_GPU = jax.devices()[0].platform == "gpu"
gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")


@pytest.fixture
def four_programs(monkeypatch):
    """Two slices of 16 units x two blocks of 16 rows: four programs exchanging h in
    interpret mode, registered for this test only."""
    monkeypatch.setitem(
        BACKENDS, "pallas_4prog", make_pallas_backend(name="pallas_4prog", block_batch=16)
    )


def rel_err(a, b) -> float:
    """Largest ‖a − b‖ / ‖b‖ over the leaves of two pytrees."""
    errs = [
        float(jnp.linalg.norm((x - y).ravel()) / (jnp.linalg.norm(y.ravel()) + 1e-30))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return max(errs)


def problem(key, cell, B, T, D, lengths=True, noise=None):
    """Fresh random params (no zero biases), inputs, initial carry and lengths.

    ``noise=None`` draws every parameter N(0, 0.25) (fine for tiny H); at GPU sizes that makes
    the dynamics chaotic (a 1e-6 change of the weights moves the outputs by 1e-2 at H=256), so
    there the parameters are the cell's own init plus N(0, noise²).
    """
    k_p, k_x, k_c, k_l = jax.random.split(key, 4)
    params = cell.init(k_p, input_size=D)
    if noise is None:
        params = random_like(k_p, params)
    else:
        params = jax.tree.map(lambda p, q: p + q, params, random_like(k_c, params, noise))
    xs = jax.random.normal(k_x, (B, T, D))  # (B, T, D)
    carry = random_like(k_c, cell.initial_carry(params, (B,)))
    lens = jax.random.randint(k_l, (B,), 0, T + 1) if lengths else None
    return params, xs, carry, lens


def value_and_grads(cell, backend, **options):
    """jit(fn(params, xs, carry, lengths) -> ((loss, (carry, ys)), grads wrt the first 3))."""

    def loss(params, xs, carry, lengths):
        final, ys = rj.unroll(cell, params, xs, carry, lengths=lengths, backend=backend, **options)
        w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)  # (B, T, H)
        total = jnp.sum(w * ys) + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(final))
        return total, (final, ys)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def check_backend(cell, args, backend="pallas", tol=1e-5, **options):
    (_, aux_p), grads_p = value_and_grads(cell, backend, **options)(*args)
    (_, aux_s), grads_s = value_and_grads(cell, "scan", **options)(*args)
    chex.assert_trees_all_equal_shapes(aux_p, aux_s)
    chex.assert_tree_all_finite((aux_p, grads_p))
    assert rel_err(aux_p, aux_s) <= tol, rel_err(aux_p, aux_s)
    assert rel_err(grads_p, grads_s) <= tol, rel_err(grads_p, grads_s)


@pytest.mark.parametrize("backend", ["pallas", "pallas_verified"])
@pytest.mark.parametrize("name", ["lstm", "lstm_peephole", "lstm_coupled", "gru", "simple_rnn"])
def test_equals_scan_with_lengths(rng, name, backend):
    cell = CELL_FACTORIES[name](8)
    check_backend(cell, problem(rng, cell, B=3, T=4, D=4), backend=backend)


def test_four_programs_exchange_state(rng, four_programs):
    """H=24 pads to 2 slices and B=20 to 2 batch blocks: all cross-program paths run."""
    cell = rj.lstm(24)
    check_backend(cell, problem(rng, cell, B=20, T=3, D=3), backend="pallas_4prog")


def test_reverse_without_lengths(rng):
    cell = rj.simple_rnn(8)
    params, xs, carry, _ = problem(rng, cell, B=2, T=4, D=3, lengths=False)
    check_backend(cell, (params, xs, carry, None), reverse=True)


def test_bidirectional_with_lengths(rng):
    layer = rj.bidirectional(rj.gru(8))
    k_p, k_x, k_l = jax.random.split(rng, 3)
    params = random_like(k_p, layer.init(k_p, input_size=3))
    xs = jax.random.normal(k_x, (2, 4, 3))  # (B, T, D)
    lens = jax.random.randint(k_l, (2,), 1, 5)

    def run(backend):
        def loss(params, xs):
            _, ys = layer.apply(params, xs, lengths=lens, backend=backend)
            return jnp.sum(jnp.sin(ys)), ys

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, xs)

    (_, ys_p), g_p = run("pallas")
    (_, ys_s), g_s = run("scan")
    assert rel_err(ys_p, ys_s) <= 1e-5
    assert rel_err(g_p, g_s) <= 1e-5


def test_bfloat16_compute(rng):
    cell = rj.lstm(8, dtype=jnp.bfloat16)
    check_backend(cell, problem(rng, cell, B=2, T=4, D=4), tol=1e-2)


def test_unbatched_sequence(rng):
    cell = rj.gru(8)
    params, xs, carry, _ = problem(rng, cell, B=1, T=4, D=3, lengths=False)
    xs, carry = xs[0], jax.tree.map(lambda c: c[0], carry)  # (T, D), (H,)
    got = jax.jit(lambda p, x, c: rj.unroll(cell, p, x, c, backend="pallas"))(params, xs, carry)
    want = rj.unroll(cell, params, xs, carry)
    chex.assert_trees_all_equal_shapes(got, want)
    assert rel_err(got, want) <= 1e-5


def test_kernel_equals_its_reference(rng):
    """`persistent_rnn` (padded arrays, kernel VJP) against the lax.scan reference's autodiff."""
    family, _ = family_of(rj.gru(16), rj.gru(16).init(rng, input_size=2))
    plan = make_plan(family, T=3, B=16, H=16, interpret=True, num_sms=None)
    k = jax.random.split(rng, 5)
    px = jax.random.normal(k[0], (3, 16, 48))  # (T, Bp, K·Hp)
    w = 0.3 * jax.random.normal(k[1], (16, 48))  # (Hp, K·Hp)
    h0 = jax.random.normal(k[2], (16, 16))  # (Bp, Hp)
    pv = jax.random.normal(k[3], (1, 16))  # (P, Hp)
    lens = jax.random.randint(k[4], (16,), 0, 4)

    def loss(fn):
        def f(px, w, h0, pv):
            hseq, _ = fn(plan, px, w, (h0,), pv, lens)
            return jnp.sum(jnp.tanh(hseq) * jnp.arange(16.0)[None, None, :]), hseq

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))(px, w, h0, pv)

    (_, h_k), g_k = loss(functools.partial(persistent_rnn, TRITON))
    (_, h_r), g_r = loss(persistent_rnn_reference)
    assert rel_err(h_k, h_r) <= 1e-5
    assert rel_err(g_k, g_r) <= 1e-5


@pytest.mark.parametrize("name", ["multiplicative_rnn", "gru_cho"])
def test_unsupported_cells_raise(rng, name):
    cell = CELL_FACTORIES[name](8)
    params = cell.init(rng, input_size=3)
    with pytest.raises(ValueError, match="backend='pallas'"):
        jax.eval_shape(lambda: rj.unroll(cell, params, jnp.ones((2, 3, 3)), backend="pallas"))


def test_weights_that_do_not_fit_raise():
    family, _ = family_of(rj.lstm(8), rj.lstm(8).init(jax.random.key(0), input_size=2))
    with pytest.raises(ValueError, match="KiB of W per program"):
        make_plan(family, T=10, B=8, H=1024, interpret=False, num_sms=132)
    with pytest.raises(ValueError, match="programs > 132 SMs"):
        make_plan(family, T=10, B=1024, H=512, interpret=False, num_sms=132)
    # bfloat16 halves the resident block, so H=1024 fits there.
    plan = make_plan(
        family, T=10, B=8, H=1024, compute_dtype=jnp.bfloat16, interpret=False, num_sms=132
    )
    assert plan.n_slices * plan.n_blocks <= 132


@pytest.mark.parametrize(
    ("shape", "blocks"), [((32, 256), (16, 2)), ((128, 512), (32, 4)), ((1, 128), (8, 1))]
)
def test_plan_of_benchmark_shapes(shape, blocks):
    """The benchmark shapes fit an H100 (132 SMs): (slices, batch blocks) as documented."""
    B, H = shape
    family, _ = family_of(rj.lstm(8), rj.lstm(8).init(jax.random.key(0), input_size=2))
    plan = make_plan(family, T=10, B=B, H=H, interpret=False, num_sms=132)
    assert (plan.n_slices, plan.n_blocks) == blocks


def test_tpu_is_refused():
    support = PALLAS.supports(rj.lstm(8), Problem(3, 2, jnp.dtype("float32"), "tpu"))
    assert not support and "GPU (Triton) kernels only" in support.reason


# ---------------------------------------------------------------------------------------------
# GPU: the compiled kernels at real sizes (skipped without a GPU).
# ---------------------------------------------------------------------------------------------


@gpu_only
@pytest.mark.gpu
@pytest.mark.parametrize(
    ("name", "shape"),
    [("lstm", (70, 12, 8, 512)), ("gru", (5, 40, 8, 100)), ("lstm_peephole", (32, 30, 16, 256))],
)
def test_gpu_equals_scan_float32(rng, name, shape):
    B, T, D, H = shape
    cell = CELL_FACTORIES[name](H)
    with jax.default_matmul_precision("highest"):  # IEEE float32 on both sides
        check_backend(cell, problem(rng, cell, B=B, T=T, D=D, noise=0.05))


@gpu_only
@pytest.mark.gpu
def test_gpu_bfloat16_long_sequence(rng):
    cell = rj.lstm(128, dtype=jnp.bfloat16)
    check_backend(cell, problem(rng, cell, B=1, T=300, D=16, noise=0.05), tol=1e-2)


@gpu_only
@pytest.mark.gpu
def test_gpu_repeatable(rng):
    """Two runs on the same inputs agree bit for bit (a racy barrier would not)."""
    cell = rj.gru(256)
    params, xs, carry, lens = problem(rng, cell, B=64, T=50, D=32, noise=0.05)
    f = jax.jit(lambda *a: rj.unroll(cell, *a[:3], lengths=a[3], backend="pallas"))
    first, second = f(params, xs, carry, lens), f(params, xs, carry, lens)
    chex.assert_trees_all_equal(first, second)
    assert np.isfinite(np.asarray(first[1])).all()
